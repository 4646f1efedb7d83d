"""Properties of the verdict's parts (saematch.verdict) against oracles written out by hand: brute
force over small matrices, the formulas of the module docstring, and cases whose answer follows
from the definitions alone."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saematch.verdict import (BLOCK, NEAR_DUPLICATE, _similarity_null, dead_rows, directions, near_duplicates,
                              neighbours, null_scores, opt_out_costs, partial_assignment, random_rotation, unjudge,
                              verdict)
from verdict_pairs import synthetic_pair


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


# --- directions and dead rows -------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_dead_feature_is_one_whose_decoder_is_at_most_1e_6_of_the_median_rows_at_any_scale(scale):
    """A row at 1e-7 of the median norm is dead, one at 1e-5 alive, at any overall scale of the
    decoder; a dead feature's decoder row and encoder column are zero, the others unit vectors."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(9, 6, generator=g) * torch.linspace(0.5, 2, 9)[:, None]
    W_dec[0], W_dec[1] = 1e-7 * W_dec[0] / W_dec[0].norm(), 1e-5 * W_dec[1] / W_dec[1].norm()
    W_dec *= torch.linalg.vector_norm(W_dec, dim=1).median()  # the median row's norm is 1 before the scale
    W_enc = torch.randn(6, 9, generator=g)
    U, E = directions(scale * W_dec, W_enc)
    np.testing.assert_array_equal(dead_rows(U), [True] + [False] * 8)
    assert (U[0] == 0).all() and (E[0] == 0).all()
    np.testing.assert_allclose(torch.linalg.vector_norm(U[1:], dim=1).numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(E[1:].numpy(), torch.nn.functional.normalize(W_enc.T[1:], dim=1).numpy(), rtol=1e-6)
    U_only, none = directions(scale * W_dec, None)  # a decoder-only SAE with a dead feature
    assert none is None and torch.equal(U_only, U)


def test_a_decoder_row_of_exactly_1e_6_of_the_median_norm_is_dead():
    W_dec = torch.eye(6).repeat(2, 1)  # median norm exactly 1
    W_dec[0] = torch.tensor([1e-6, 0, 0, 0, 0, 0])
    norm = torch.linalg.vector_norm(W_dec, dim=1)
    assert norm[0] == 1e-6 * norm.median()  # the boundary itself (float32)
    U, _ = directions(W_dec, None)
    np.testing.assert_array_equal(dead_rows(U), [True] + [False] * 11)


def test_an_sae_without_features_has_no_directions_and_no_dead_rows():
    U, E = directions(torch.zeros(0, 6), torch.zeros(6, 0))
    assert U.shape == (0, 6) and E.shape == (0, 6)
    dead = dead_rows(U)
    assert dead.shape == (0,) and dead.dtype == bool and (~dead).shape == (0,)


# --- the rotation null ----------------------------------------------------------------------------

def test_a_random_rotation_is_the_q_of_the_generators_gaussian_with_rs_diagonal_made_positive():
    Q = random_rotation(5, torch.Generator().manual_seed(7))
    G = torch.randn(5, 5, generator=torch.Generator().manual_seed(7))
    assert Q.device.type == "cpu" and Q.dtype == torch.float32
    np.testing.assert_allclose((Q.T @ Q).numpy(), np.eye(5), atol=1e-5)
    R = (Q.T @ G).double().numpy()  # G = QR
    np.testing.assert_allclose(np.tril(R, -1), 0, atol=1e-5)
    assert (np.diag(R) > 0).all()


def verdict_inputs(F=200, d=48, seed=2, persist=0.8):
    src, dst, planted = synthetic_pair(F=F, d=d, persist=persist, seed=seed)
    U, E = directions(src.W_dec, src.W_enc)
    V, W = directions(dst.W_dec, dst.W_enc)
    return U, E, V, W, planted


@pytest.mark.parametrize("chunk", [1, 7, 2 * BLOCK])
def test_the_null_scores_are_the_same_whatever_the_chunk_size_and_the_global_random_state(chunk):
    U, E, V, W, _ = verdict_inputs()
    torch.manual_seed(1)
    t_ref, d_ref = null_scores(U, E, V, W, rows=50, draws=2, seed=3)
    torch.manual_seed(2)
    t, d_eff = null_scores(U, E, V, W, rows=50, draws=2, seed=3, chunk=chunk)
    assert t.shape == (100,)
    np.testing.assert_allclose(t, t_ref, rtol=1e-5)
    assert d_eff == pytest.approx(d_ref, rel=1e-6)


# --- near-duplicates ---------------------------------------------------------------------------------

def test_near_duplicates_need_both_decoder_and_encoder_scores_of_at_least_0_95():
    """Rows 0–1: decoder and encoder cosine exactly float32(0.95) (NEAR_DUPLICATE counts);
    rows 2–3: the same decoder, orthogonal encoders; row 4 alone. Every row's top-1 is column 0
    or 1, held by the pair."""
    c, s = np.float32(0.95), np.float32(np.sqrt(1 - 0.95**2))
    U = torch.tensor([[1, 0, 0], [c, s, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    E = torch.tensor([[1, 0, 0], [c, s, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    assert float((U[0] * U[1]).sum()) == c and float((E[0] * E[1]).sum()) == c
    V = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    nb = neighbours(U, V, k=4)
    top1 = nb["top1"].astype(np.int64)
    assert list(top1) == [0, 0, 1, 1, 2]
    np.testing.assert_array_equal(near_duplicates(U, E, nb, top1), [True, True, False, False, False])
    assert NEAR_DUPLICATE == 0.95  # the docstring's number, which the case above is built on


# --- neighbours ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 2 * BLOCK])
def test_neighbours_are_the_same_whatever_the_chunk_size(chunk):
    """Row blocks of any size (one row, a few, more than BLOCK allows) give the same neighbours."""
    U, V = unit_rows(40, 12, 0), unit_rows(30, 12, 1)
    got, ref = neighbours(U, V, k=4, chunk=chunk), neighbours(U, V, k=4, chunk=40)
    D = (U @ V.T).numpy()
    np.testing.assert_array_equal(got["row_top"], np.argsort(-D, axis=1, kind="stable")[:, :4])
    for key in ("row_top", "col_top", "col_pos", "top1"):
        np.testing.assert_array_equal(got[key], ref[key])
    np.testing.assert_allclose(got["row_cos"], ref["row_cos"], rtol=1e-6)


# --- unjudge ----------------------------------------------------------------------------------------

def test_unjudge_names_exactly_the_given_rows_with_no_confidence_and_not_persisting():
    src, dst, planted = synthetic_pair(F=200, d=64, persist=0.8, seed=2)
    from saematch.verdict import directions
    U, E = directions(src.W_dec, src.W_enc)
    V, W = directions(dst.W_dec, dst.W_enc)
    cols, _ = verdict(U, E, V, W, np.where(planted >= 0, planted, np.arange(200)), rows=128)
    assert cols["persists"].any() and cols["top1_persists"].any()  # something to take away
    before = {k: np.array(v, copy=True) for k, v in cols.items()}
    rows = np.zeros(200, bool)
    rows[::3] = True
    unjudge(cols, "because", rows)
    assert np.isnan(cols["confidence"][rows]).all() and np.isnan(cols["top1_confidence"][rows]).all()
    assert not cols["persists"][rows].any() and not cols["top1_persists"][rows].any()
    assert list(cols["unjudged"][rows]) == ["because"] * rows.sum()
    for k in ("confidence", "top1_confidence", "persists", "top1_persists", "unjudged"):  # the rest as they were
        np.testing.assert_array_equal(cols[k][~rows], before[k][~rows])
    unjudge(cols, "all of them")
    assert set(cols["unjudged"]) == {"all of them"} and not cols["persists"].any()


# --- the similarity null and the opt-out costs ------------------------------------------------------

def r_similarity(x, y):
    return 2 * x @ y / (x @ x + y @ y)


@pytest.mark.parametrize("chunk", [1, 3, 1024, 2 * BLOCK])
def test_the_similarity_null_in_one_dimension_is_each_rows_best_r_against_the_layer_whatever_the_sign(chunk):
    """With one decoder and one encoder dimension rotated by the same Q = ±1 (equal widths), and a
    layer L+1 that holds −y with every y, each row's null is max_j r(x, ±y_j) whatever Q is:
    every row once per draw. Separate signs for the two parts would give other values."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 2))
    half = rng.normal(size=(6, 2)) * [1.0, 0.2] + [0.0, 1.5]  # not symmetric under one coordinate's sign
    Y = np.concatenate([half, -half])
    expect = np.sort([max(r_similarity(x, y) for y in Y) for x in X])
    out = _similarity_null(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32), 1, 1,
                           rows=9, draws=4, seed=3, chunk=chunk)
    assert out.shape == (36,)
    for k in range(4):
        np.testing.assert_allclose(np.sort(out[9 * k:9 * (k + 1)]), expect, rtol=1e-5)
    assert np.all(out <= 1 + 1e-6)  # r ≤ 1: 2x·y ≤ ‖x‖² + ‖y‖²


def opt_out_problem(n=60, d_dec=32, d_enc=16, seed=0):
    """Random feature vectors (n, d_dec + d_enc) for both layers, matched i → i."""
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(n, d_dec + d_enc)), dtype=torch.float32)
    Y = torch.tensor(rng.normal(size=(n, d_dec + d_enc)), dtype=torch.float32)
    x2, y2 = (X.double() ** 2).sum(1).numpy(), (Y.double() ** 2).sum(1).numpy()
    return X, Y, np.arange(n), x2, y2


@pytest.mark.parametrize("widths", [(3, 1), (3, 2), (4, 4), (5, 0)])
def test_opt_out_costs_depend_on_the_seed_alone_not_on_the_global_random_state(widths):
    X, Y, match, x2, y2 = opt_out_problem(n=50, d_dec=widths[0], d_enc=widths[1])
    cost = ((X - Y).double() ** 2).sum(1).numpy()
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(opt_out_costs(X, Y, match, cost, *widths, rows=20, draws=2, seed=5))
    (ts1, td1, s1), (ts2, td2, s2) = runs
    np.testing.assert_array_equal(ts1, ts2)
    np.testing.assert_array_equal(td1, td2)
    assert s1 == s2
    nulls = [_similarity_null(X, Y, *widths, rows=20, draws=2, seed=5) for _ in range(2)]
    torch.manual_seed(3)
    nulls.append(_similarity_null(X, Y, *widths, rows=20, draws=2, seed=5))
    np.testing.assert_array_equal(nulls[0], nulls[1])
    np.testing.assert_array_equal(nulls[0], nulls[2])
    assert not np.array_equal(nulls[0], _similarity_null(X, Y, *widths, rows=20, draws=2, seed=6))


@pytest.mark.parametrize("rows, expect", [(20, 40), (500, 100)])
def test_the_opt_out_null_draws_rows_features_per_draw_at_most_all_of_layer_L(rows, expect):
    """null_samples = draws × min(rows, n_src), here with fewer columns (4) than rows."""
    X, Y, match, x2, y2 = opt_out_problem(n=50, d_dec=3, d_enc=1)
    cost = ((X - Y).double() ** 2).sum(1).numpy()
    _, _, stats = opt_out_costs(X, Y, match, cost, 3, 1, rows=rows, draws=2)
    assert set(stats) == {"r_cut", "pi0", "null_samples"}  # written to the provenance's verdict.partial
    assert stats["null_samples"] == expect


def costs_at(r, x2, y2):
    """The matched cost C = (1 − r)(‖x‖² + ‖y‖²) of a pair of similarity r."""
    return (1 - r) * (x2 + y2)


def test_where_every_partner_beats_every_null_draw_the_cut_is_the_lowest_partners_similarity():
    """All observed r (0.90 … 0.99; row 0 the lowest, and so the first to count) above the whole
    null (random vectors in 48 dimensions: r ≲ 0.6): p-values 1/(m + 1), π0 = 0, lfdr 0 from
    the lowest observed r up, 1 below: r* = the lowest observed r, τ = (1 − r*)·‖x‖²."""
    X, Y, match, x2, y2 = opt_out_problem()
    r = np.linspace(0.90, 0.99, 60)
    tau_src, tau_dst, stats = opt_out_costs(X, Y, match, costs_at(r, x2, y2), 32, 16, rows=60, draws=2)
    assert stats["pi0"] == 0.0 and stats["null_samples"] == 120
    assert stats["r_cut"] == pytest.approx(0.90, abs=1e-12)
    np.testing.assert_allclose(tau_src, 0.1 * x2, rtol=1e-6)
    np.testing.assert_allclose(tau_dst, 0.1 * y2, rtol=1e-6)
    null = _similarity_null(X, Y, 32, 16, rows=60, draws=2, seed=4)
    _, _, stats = opt_out_costs(X, Y, match, costs_at(r, x2, y2), 32, 16, rows=60, draws=2, seed=4, level=1.0)
    assert stats["r_cut"] == null.min()  # at level 1 every r passes (lfdr ≤ 1): r* is the lowest pooled


def test_where_no_partner_beats_chance_the_opt_out_costs_are_zero():
    """Observed r = −0.9 … −0.5, below every null draw (each row's best r over 60 columns):
    π0 = 1 and the fit pools into one block of q = 1/2, lfdr = 1 everywhere. No r has lfdr ≤
    0.5, so r* = 1 and τ = 0 (leaving a feature unmatched costs nothing)."""
    X, Y, match, x2, y2 = opt_out_problem(seed=1)
    r = np.linspace(-0.9, -0.5, 60)
    tau_src, tau_dst, stats = opt_out_costs(X, Y, match, costs_at(r, x2, y2), 32, 16, rows=60)
    assert stats["pi0"] == 1.0 and stats["r_cut"] == 1.0
    assert (tau_src == 0).all() and (tau_dst == 0).all()


# --- the partial assignment ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_the_partial_assignment_is_optimal_and_certified_where_lapjvs_float32_duals_fall_short(seed):
    """Costs spread over eight orders of magnitude (r⁸·10⁴): lapjv's float32 duals miss the
    certificate's tolerance, so it must recompute them; the optimum: scipy on the same square."""
    rng = np.random.default_rng(seed)
    C = (rng.random((40, 43)) ** 8 * 1e4).astype(np.float32)
    med = np.median(C)
    tau_src, tau_dst = (med * rng.random(40)).astype(np.float32), (med * rng.random(43)).astype(np.float32)
    match, matched_cost, cert = partial_assignment(C, tau_src, tau_dst)
    M = np.zeros((83, 83))
    M[:40, :43], M[:40, 43:], M[40:, :43] = C, tau_src[:, None], tau_dst[None, :]
    r, c = linear_sum_assignment(M)
    total = matched_cost.sum() + tau_src[match < 0].sum() + np.delete(tau_dst, match[match >= 0]).sum()
    assert total == pytest.approx(M[r, c].sum(), rel=1e-6)
    assert cert["certified"]


def test_the_partial_assignments_memory_is_one_float32_square_of_both_widths():
    """The docstring's bound: 4·(n_src + n_dst)² bytes (numpy's allocations, as tracemalloc
    counts them), not a float64 square nor a second copy for the solver."""
    import tracemalloc

    rng = np.random.default_rng(0)
    C = rng.random((300, 300)).astype(np.float32)
    tau_src, tau_dst = rng.random(300).astype(np.float32), rng.random(300).astype(np.float32)
    partial_assignment(C[:4, :4], tau_src[:4], tau_dst[:4])  # imports and first-call allocations
    tracemalloc.start()
    try:
        partial_assignment(C, tau_src, tau_dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * 4 * 600**2


# --- the evidence and the lfdr, from their formulas -------------------------------------------------

def test_the_evidence_columns_are_the_documented_transforms_of_their_inputs():
    """EVIDENCE: logit(1 − lfdr) with 1 − lfdr clipped to [1e-4, 1 − 1e-4], log a with a ≥ 1e-6,
    agree, mutual, margin clipped to ±1, mutual × max(margin, 0), column margin clipped to ±1."""
    from saematch.verdict import EVIDENCE, evidence

    lfdr = [0.0, 1.0, 0.5, 0.2, 0.9]
    a = [0.0, 1e-9, 0.3, 1.0, 2.0]
    agree = [True, False, True, False, True]
    mutual = [True, False, False, False, True]
    margin = [-2.0, -0.5, 0.3, 2.0, 0.25]
    column_margin = [np.inf, -np.inf, 0.2, -0.4, 3.0]
    got = evidence(lfdr, a, agree, mutual, margin, column_margin)
    logit = np.log(1e4 - 1)  # logit(1 − 1e-4)
    expect = np.array([
        [logit, np.log(1e-6), 1, 1, -1.0, 0.0, 1.0],
        [-logit, np.log(1e-6), 0, 0, -0.5, 0.0, -1.0],
        [0.0, np.log(0.3), 1, 0, 0.3, 0.0, 0.2],
        [np.log(0.8 / 0.2), 0.0, 0, 0, 1.0, 0.0, -0.4],
        [np.log(0.1 / 0.9), 0.0, 1, 1, 0.25, 0.25, 1.0]])
    assert EVIDENCE == ["lfdr_logit", "log_ambiguity", "agree", "mutual", "margin", "mutual_margin", "column_margin"]
    assert got.dtype == np.float32 and got.shape == (5, 7)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_the_lfdr_of_a_small_sample_is_the_hand_computed_isotonic_fit():
    """Null 0, 1, 2, 3 and observed 0.5, 2.5, 4, 5: p-values 4/5, 2/5, 1/5, 1/5, so π0 = 1/(0.5·4)
    = 0.5. With the extra null score at 5 and weights 1/4 (observed), 1/5 (null), the pooled
    adjacent violators give q = 0 at 0, 5/13 on 0.5–2, 5/9 on 2.5–3, 5/7 on 4–5; lfdr =
    π0(1 − q)/q = 1, 0.8, 0.4, 0.2, interpolated linearly, 1 below 0 and 0 above 5."""
    from saematch.verdict import fit_lfdr

    lfdr, pi0 = fit_lfdr(np.array([0.5, 2.5, 4.0, 5.0]), np.array([3.0, 0.0, 2.0, 1.0]))
    assert pi0 == 0.5
    t = np.array([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    np.testing.assert_allclose(lfdr(t), [1, 1, 0.9, 0.8, 0.8, 0.8, 0.6, 0.4, 0.4, 0.3, 0.2, 0.2, 0.0], atol=1e-12)
    lfdr, pi0 = fit_lfdr(np.array([]), np.array([0.0, 1.0, 2.0]))  # nothing observed: all null
    assert pi0 == 1.0 and (lfdr(np.array([-1.0, 0.0, 1.5, 2.0])) == 1.0).all()
    lfdr, pi0 = fit_lfdr(np.array([1.0, 1.2]), np.array([0.0, 0.5, 1.1, 2.0]))  # p = 3/5, 2/5: π0 = 1/(0.5·2) = 1
    assert pi0 == 1.0
    lfdr, pi0 = fit_lfdr(np.array([1.0, 1.2, 5.0]), np.array([0.0, 0.5, 1.1, 2.0]), lam=0.25)  # p > 0.25: 2 of 3
    assert pi0 == pytest.approx(2 / (0.75 * 3))


# --- the verdict as a whole, against brute force over the full score matrices ----------------------

def brute_force_neighbours(D, k=4, row_top=None):
    """Each row's k nearest columns by decoder cosine (unless given), and each column's k nearest
    rows among the rows that hold it in their own k nearest."""
    row_top = np.argsort(-D, axis=1, kind="stable")[:, :k] if row_top is None else row_top
    col_rows = {}
    for r in range(len(D)):
        for j in row_top[r]:
            col_rows.setdefault(int(j), []).append(r)
    col_near = {j: sorted(rs, key=lambda r: (-D[r, j], r))[:k] for j, rs in col_rows.items()}
    return row_top, col_near


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.9])
def test_the_verdicts_evidence_confidence_and_stats_follow_from_the_full_score_matrix(cut):
    """Brute force over M = min(decoder cosines, encoder cosines): the partner's score, its margin
    over the row's other 4 nearest columns, agreement with and mutuality of the top-1, the margin
    over the partner's other near rows, the lfdr fitted on the matched living rows against the
    null, the near-duplicates (another row nearest to the same top-1 column at M ≥ 0.95), dead
    rows in either layer; the confidence is the shipped logistic model of the evidence (0 where
    unmatched), persists = confidence ≥ cut, NaN and not persisting where unjudged."""
    from saematch.calibrate import load_model, logistic_predict
    from saematch.verdict import DEAD_REASON, ambiguity_match, fit_lfdr, row_competitor_scores

    src, dst, planted = synthetic_pair(F=160, d=48, persist=0.7, seed=6)
    W_dec_src, W_dec_dst = src.W_dec.clone(), dst.W_dec.clone()
    W_dec_src[5], W_dec_dst[7] = 0, 0  # a dead feature in each layer
    W_enc_src = src.W_enc.clone()
    W_dec_src[1], W_enc_src[:, 1] = 2 * W_dec_src[0], 0.5 * W_enc_src[:, 0]  # feature 1 is feature 0 again
    U, E = directions(W_dec_src, W_enc_src)
    V, W = directions(W_dec_dst, dst.W_enc)
    n = 160
    rng = np.random.default_rng(0)
    free = rng.permutation(np.setdiff1d(np.arange(n), planted[planted >= 0]))
    match = planted.copy()
    match[planted < 0] = free[:(planted < 0).sum()]
    match[rng.random(n) < 0.1] = -1  # some rows unmatched
    cols, stats = verdict(U, E, V, W, match, cut=cut, rows=64, draws=2)

    D = (U.double() @ V.double().T).numpy()
    M = np.minimum(D, (E.double() @ W.double().T).numpy())
    nb = neighbours(U, V)
    row_top, col_near = brute_force_neighbours(D)
    alive = np.ones(n, bool)
    alive[5] = False
    np.testing.assert_array_equal(nb["row_top"][alive], row_top[alive])
    row_top = nb["row_top"]  # the dead row's ties (all cosines 0) in the library's order
    _, col_near = brute_force_neighbours(D, row_top=row_top)
    top1 = row_top[:, 0]
    matched = match >= 0

    def rival_score(i, j):
        rs = [M[r, j] for r in col_near.get(int(j), []) if r != i]
        return max(rs) if rs else -np.inf

    t_match = np.where(matched, M[np.arange(n), np.maximum(match, 0)], -1.0)
    t_top1 = M[np.arange(n), top1]
    second = np.array([max([M[i, j] for j in row_top[i] if j != match[i]], default=-np.inf) for i in range(n)])
    second_top1 = np.array([max(M[i, j] for j in row_top[i][1:]) for i in range(n)])
    mutual_top1 = np.array([col_near[int(top1[i])][0] == i for i in range(n)])
    agree = match == top1
    col_match = np.array([rival_score(i, match[i]) if matched[i] else -np.inf for i in range(n)])
    col_top1 = np.array([rival_score(i, top1[i]) for i in range(n)])
    self_M = np.minimum((U.double() @ U.double().T).numpy(), (E.double() @ E.double().T).numpy())
    duplicate = np.array([any(self_M[i, r] >= 0.95 for r in col_near[int(top1[i])] if r != i) for i in range(n)])

    ev, ev1 = cols["evidence"].astype(np.float64), cols["top1_evidence"].astype(np.float64)
    ok = alive & matched
    np.testing.assert_array_equal(ev[:, 2], agree)
    np.testing.assert_array_equal(ev1[:, 2], agree)
    np.testing.assert_array_equal(ev[:, 3], agree & mutual_top1)
    np.testing.assert_array_equal(ev1[:, 3], mutual_top1)
    np.testing.assert_allclose(ev[ok, 4], np.clip(t_match - second, -1, 1)[ok], atol=1e-5)
    np.testing.assert_allclose(ev1[:, 4], np.clip(t_top1 - second_top1, -1, 1), atol=1e-5)
    np.testing.assert_allclose(ev[ok, 5], (agree & mutual_top1)[ok] * np.clip(t_match - second, 0, 1)[ok], atol=1e-5)
    np.testing.assert_allclose(ev1[:, 5], mutual_top1 * np.clip(t_top1 - second_top1, 0, 1), atol=1e-5)
    np.testing.assert_allclose(ev[ok, 6], np.clip(t_match - col_match, -1, 1)[ok], atol=1e-5)
    np.testing.assert_allclose(ev1[:, 6], np.clip(t_top1 - col_top1, -1, 1), atol=1e-5)

    # an unmatched row's evidence is that of the lowest score, m = −1: no partner, no agreement
    none = alive & ~matched
    assert none.any()
    np.testing.assert_allclose(ev[none, 0], -np.log(1e4 - 1), rtol=1e-5)
    np.testing.assert_allclose(ev[none, 1:4], np.tile([np.log(1e-6), 0, 0], (none.sum(), 1)), rtol=1e-5)
    np.testing.assert_allclose(ev[none, 4], np.clip(-1 - second[none], -1, 1), atol=1e-5)

    # the lfdr: fitted on the matched living rows (the assignment) or all living rows (top-1)
    t_null, d_eff = null_scores(U, E, V, W, rows=64, draws=2, seed=0, among=np.flatnonzero(alive))
    lfdr, pi0 = fit_lfdr(t_match[ok], t_null)
    lfdr1, pi0_1 = fit_lfdr(t_top1[alive], t_null)
    q = lambda x: np.clip(1 - x, 1e-4, 1 - 1e-4)  # noqa: E731
    np.testing.assert_allclose((1 / (1 + np.exp(-ev[:, 0])))[ok], q(lfdr(t_match))[ok], atol=2e-3)
    np.testing.assert_allclose(1 / (1 + np.exp(-ev1[:, 0])), q(lfdr1(t_top1)), atol=2e-3)
    a = ambiguity_match(U, E, V, W, match, nb, d_eff, t_match, row_competitor_scores(E, W, nb))
    np.testing.assert_allclose(np.exp(ev[ok, 1]), np.clip(a, 1e-6, 1)[ok], rtol=1e-3, atol=1e-6)

    # which rows are judged, their confidence, and the stats
    expect_unjudged = np.full(n, None, object)
    expect_unjudged[duplicate] = "near-duplicate: another feature of this SAE scores ≥ 0.95"
    expect_unjudged[~alive] = DEAD_REASON
    assert duplicate[alive].any() and list(cols["unjudged"]) == list(expect_unjudged)
    judged = np.equal(expect_unjudged, None)
    model = load_model()
    conf = np.where(matched, logistic_predict(model["match"], cols["evidence"]), 0.0)
    conf1 = logistic_predict(model["top1"], cols["top1_evidence"])
    np.testing.assert_allclose(cols["confidence"][judged], conf[judged], rtol=1e-5)
    np.testing.assert_allclose(cols["top1_confidence"][judged], conf1[judged], rtol=1e-5)
    assert np.isnan(cols["confidence"][~judged]).all() and np.isnan(cols["top1_confidence"][~judged]).all()
    np.testing.assert_array_equal(cols["persists"], judged & (conf >= cut))
    np.testing.assert_array_equal(cols["top1_persists"], judged & (conf1 >= cut))
    assert cols["persists"].any() and not cols["persists"].all()
    assert cols["confidence"].dtype == np.float32 and cols["top1_confidence"].dtype == np.float32
    np.testing.assert_array_equal(cols["dead"], ~alive)
    assert stats["pi0"] == pytest.approx(pi0) and stats["pi0_top1"] == pytest.approx(pi0_1)
    assert stats["null_samples"] == 128 and stats["d_eff"] == pytest.approx(d_eff, rel=1e-9)
    assert stats["dead"] == 1 and stats["dead_dst"] == [7] and stats["encoders"] is True and stats["cut"] == cut
    assert stats["share_persists"] == pytest.approx(cols["persists"].mean())
    assert stats["share_top1_persists"] == pytest.approx(cols["top1_persists"].mean())
    assert stats["share_unjudged"] == pytest.approx((~judged).mean())


@pytest.mark.parametrize("encoders", ["src only", "other widths"])
def test_encoders_not_in_one_space_leave_the_verdict_to_the_decoders_and_name_every_feature_decoder_only(encoders):
    U, E, V, W, planted = verdict_inputs(F=120)
    if encoders == "src only":
        W = None
    else:
        W = torch.nn.functional.normalize(torch.cat([W, W[:, :3]], dim=1), dim=1)
    cols, stats = verdict(U, E, V, W, np.arange(120), rows=64)
    ref, ref_stats = verdict(U, None, V, None, np.arange(120), rows=64)
    assert stats["encoders"] is False
    assert all(u.startswith("decoder only") for u in cols["unjudged"])
    np.testing.assert_array_equal(cols["evidence"], ref["evidence"])
    assert stats["d_eff"] == ref_stats["d_eff"]


def test_the_verdicts_defaults_are_the_configs_so_the_flows_predecessor_verdict_uses_the_default_null():
    """saematch.flow.predecessor_verdict passes no options: its null must be the one a default
    match run uses (config DEFAULT_OPTIONS: null_rows × null_draws samples, cut)."""
    from saematch.config import DEFAULT_OPTIONS

    F = DEFAULT_OPTIONS["null_rows"] + 76  # more features than the null draws from
    U, V, E, W = (unit_rows(F, 16, s) for s in range(4))
    _, stats = verdict(U, E, V, W, np.arange(F))
    assert stats["null_samples"] == DEFAULT_OPTIONS["null_rows"] * DEFAULT_OPTIONS["null_draws"]
    assert stats["cut"] == DEFAULT_OPTIONS["cut"]


def test_a_layer_whose_features_are_all_dead_is_judged_dead_throughout_without_error():
    U, E, V, W, _ = verdict_inputs(F=60)
    U, E = torch.zeros_like(U), torch.zeros_like(E)
    cols, stats = verdict(U, E, V, W, np.arange(60), rows=32)
    assert cols["dead"].all() and stats["dead"] == 60 and not cols["persists"].any()
    assert not cols["top1_persists"].any() and stats["pi0"] == 1.0 and stats["null_samples"] == 64


def test_the_verdict_reads_the_neighbours_it_is_given():
    """With each row's 2 nearest columns passed in, the top-1 margin is m(i, nearest) − m(i, next)."""
    U, E, V, W, _ = verdict_inputs(F=120)
    nb = neighbours(U, V, k=2)
    cols, _ = verdict(U, E, V, W, np.arange(120), nb=nb, rows=64)
    M = np.minimum((U.double() @ V.double().T).numpy(), (E.double() @ W.double().T).numpy())
    i = np.arange(120)
    expect = np.clip(M[i, nb["row_top"][:, 0]] - M[i, nb["row_top"][:, 1]], -1, 1)
    np.testing.assert_allclose(cols["top1_evidence"][:, 4], expect, atol=1e-5)


@pytest.mark.parametrize("rows, draws", [(30, 3), (500, 1)])
def test_the_verdicts_null_has_draws_times_rows_samples_of_the_living_features_and_follows_the_seed(rows, draws):
    """null_samples = draws × min(rows, living features of layer L); the stats' seconds are
    each stage's wall time."""
    import time

    U, E, V, W, _ = verdict_inputs(F=120, d=48)
    U = U.clone()
    U[:10] = 0  # 110 living features
    t = time.perf_counter()
    _, stats = verdict(U, E, V, W, np.arange(120), rows=rows, draws=draws)
    elapsed = time.perf_counter() - t
    assert stats["null_samples"] == draws * min(rows, 110)
    assert set(stats["seconds"]) == {"null", "scores"}
    assert all(0 <= s <= elapsed for s in stats["seconds"].values())
    _, other = verdict(U, E, V, W, np.arange(120), rows=rows, draws=draws, seed=1)
    assert other["d_eff"] != stats["d_eff"]


def pava(y, w):
    """Weighted increasing isotonic regression by pooling adjacent violators, written out."""
    blocks = []  # [value, weight, count]
    for yi, wi in zip(y, w):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([[v] * c for v, _, c in blocks])


@pytest.mark.parametrize("seed", range(4))
def test_the_lfdr_is_the_pooled_adjacent_violators_fit_of_observed_against_null(seed):
    """Oracle: p-values (1 + #{t0 ≥ t})/(m + 1), π0 = min(1, #{p > 0.5}/(0.5 n)); one more null
    score at the highest pooled score; PAVA of the label (observed 1, null 0; each class weighted
    to total 1); lfdr = π0(1 − q)/q at each distinct score (its first in sorted order), linear
    between. Null scores reach beyond the observed ones for even seeds."""
    from saematch.verdict import fit_lfdr

    rng = np.random.default_rng(seed)
    null = np.round(rng.normal(0, 1, 40), 2)
    obs = np.round(np.concatenate([rng.normal(0, 1, 15), rng.normal(2.0 if seed % 2 else -0.5, 0.7, 10)]), 2)
    if seed % 2 == 0:  # the null reaches beyond every observed score
        null = np.append(null, obs.max() + 0.5)
    else:  # an observed score beyond the null
        obs = np.append(obs, null.max() + 0.5)
    lfdr, pi0 = fit_lfdr(obs, null)
    m, n = len(null), len(obs)
    p = np.array([(1 + (null >= t).sum()) / (m + 1) for t in obs])
    assert pi0 == pytest.approx(min(1.0, (p > 0.5).sum() / (0.5 * n)), abs=1e-12)
    null_plus = np.append(null, max(obs.max(), null.max()))
    scores = np.concatenate([obs, null_plus])
    label = np.concatenate([np.ones(n), np.zeros(m + 1)])
    weight = np.concatenate([np.full(n, 1 / n), np.full(m + 1, 1 / (m + 1))])
    order = np.argsort(scores, kind="stable")
    q = pava(label[order], weight[order])
    x = np.unique(scores)
    first = np.searchsorted(scores[order], x)
    y = np.array([min(1.0, pi0 * (1 - v) / v) if v > 0 else 1.0 for v in q[first]])
    np.testing.assert_allclose(lfdr(x), y, atol=1e-9)
    mid = (x[:-1] + x[1:]) / 2
    np.testing.assert_allclose(lfdr(mid), (y[:-1] + y[1:]) / 2, atol=1e-9)
    assert lfdr(x[0] - 1) == 1.0 and lfdr(x[-1] + 1) == 0.0


def test_a_p_value_of_exactly_lambda_is_not_counted_as_null_and_pi0_is_at_most_1():
    from saematch.verdict import fit_lfdr

    assert fit_lfdr(np.array([1.5]), np.array([0.0, 1.0, 2.0]))[1] == 0.0  # p = (1 + 1)/4 = 0.5, not > 0.5
    assert fit_lfdr(np.array([-5.0, -4.0]), np.array([0.0, 1.0, 2.0]))[1] == 1.0  # p = 1: 2/(0.5·2) = 2, capped
    # one observation (weight 1) against 0, 1, 2 and the extra 2 (weights 1/4): π0 = 1 (p = 3/4), and
    # q = 1/1.75 = 4/7 from 0.5 up: lfdr = (3/7)/(4/7) = 0.75
    lfdr, pi0 = fit_lfdr(np.array([0.5]), np.array([0.0, 1.0, 2.0]))
    assert pi0 == 1.0 and lfdr(0.5) == pytest.approx(0.75) and lfdr(0.0) == 1.0


@pytest.mark.parametrize("encoders", [True, False])
def test_the_verdicts_log_line_reports_its_own_columns_shares_and_null(caplog, encoders):
    """The one line a job log shows: shares recomputed here from the returned columns."""
    import logging

    from saematch.verdict import verdict

    src, dst, _ = synthetic_pair(F=200, d=48, persist=0.5, seed=21)
    U, E = directions(src.W_dec, src.W_enc if encoders else None)
    V, W = directions(dst.W_dec, dst.W_enc if encoders else None)
    match = linear_sum_assignment(-(U @ V.T).numpy())[1]
    with caplog.at_level(logging.INFO, logger="saematch.verdict"):
        columns, stats = verdict(U, E, V, W, match, rows=64, draws=2)
    persists, top1 = 100 * np.mean(columns["persists"]), 100 * np.mean(columns["top1_persists"])
    unjudged = 100 * np.mean([u is not None for u in columns["unjudged"]])
    expected = (f"verdict: {persists:.1f}% of features persist (top1 {top1:.1f}%), {unjudged:.1f}% unjudged; "
                f"π0 {stats['pi0']:.3f}, null {2 * 64} samples, d_eff {stats['d_eff']:.0f}"
                + ("" if encoders else " (decoders only)"))
    assert [r.getMessage() for r in caplog.records if r.name == "saematch.verdict"] == [expected]


def test_the_neighbour_search_records_at_most_its_own_wall_time():
    import time

    from saematch.verdict import neighbours

    g = torch.Generator().manual_seed(3)
    U = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    V = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=1)
    t = time.perf_counter()
    nb = neighbours(U, V, chunk=64)
    wall = time.perf_counter() - t
    assert 0 < nb["seconds"] <= wall


def test_the_null_rotates_encoders_of_another_width_with_their_own_rotation():
    """An attention SAE's encoder lives in its own space (d_in ≠ d): the null draws a rotation of
    that width for it, and the draw is reproducible from the seed."""
    from saematch.verdict import null_scores

    g = torch.Generator().manual_seed(4)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=1)  # noqa: E731
    U, E, V, W = unit(40, 16), unit(40, 24), unit(30, 16), unit(30, 24)
    t0, d_eff = null_scores(U, E, V, W, rows=20, draws=2, seed=5)
    again, d_again = null_scores(U, E, V, W, rows=20, draws=2, seed=5)
    assert t0.shape == (40,) and np.isfinite(t0).all() and d_eff > 1
    np.testing.assert_array_equal(t0, again)
    assert d_eff == d_again


@pytest.mark.parametrize("F_src, F_dst", [(0, 5), (5, 0)])
def test_a_verdict_against_a_layer_without_features_is_refused_with_both_widths_named(F_src, F_dst):
    U, E = directions(torch.randn(F_src, 16), torch.randn(8, F_src))
    V, W = directions(torch.randn(F_dst, 16), torch.randn(8, F_dst))
    with pytest.raises(ValueError, match=f"layer L has {F_src} features and layer L\\+1 has {F_dst}"):
        verdict(U, E, V, W, np.full(F_src, -1), rows=8, draws=1)


@pytest.mark.parametrize("F_dst", [1, 2, 3])
def test_the_margins_over_a_layer_of_fewer_features_than_neighbours_are_over_all_its_other_features(F_dst):
    """Layer L+1 has fewer features than the 4 nearest columns kept per row: every row's second
    best is the best of all its other columns (none with one feature: the margin is the clip, 1)."""
    F = 30
    g = torch.Generator().manual_seed(F_dst)
    U, E = directions(torch.randn(F, 16, generator=g), torch.randn(8, F, generator=g))
    V, W = directions(torch.randn(F_dst, 16, generator=g), torch.randn(8, F_dst, generator=g))
    match = np.full(F, -1)
    match[:F_dst] = np.arange(F_dst)[::-1]
    cols, _ = verdict(U, E, V, W, match, rows=16, draws=1)
    D = (U.double() @ V.double().T).numpy()
    M = np.minimum(D, (E.double() @ W.double().T).numpy())
    top1 = D.argmax(1)

    def best_other(i, j):
        return max((M[i, c] for c in range(F_dst) if c != j), default=-np.inf)

    margin_top1 = [M[i, top1[i]] - best_other(i, top1[i]) for i in range(F)]
    np.testing.assert_allclose(cols["top1_evidence"][:, 4], np.clip(margin_top1, -1, 1), atol=1e-5)
    margin = [M[i, match[i]] - best_other(i, match[i]) for i in range(F_dst)]
    np.testing.assert_allclose(cols["evidence"][:F_dst, 4], np.clip(margin, -1, 1), atol=1e-5)
    if F_dst == 1:
        assert (cols["top1_evidence"][:, 4] == 1).all()


def test_the_verdict_names_a_feature_near_duplicate_only_where_its_encoder_agrees_too():
    """Feature 1 repeats feature 0's decoder with another encoder: a different feature, judged.
    Feature 3 repeats feature 2's decoder and encoder: the same feature twice, unjudged (both)."""
    U, E, V, W, planted = verdict_inputs(F=80)
    U, E = U.clone(), E.clone()
    U[1], E[1] = U[0], unit_rows(1, E.shape[1], 99)[0]
    U[3], E[3] = U[2], E[2]
    cols, _ = verdict(U, E, V, W, planted, rows=32)
    dup = [u is not None and u.startswith("near-duplicate") for u in cols["unjudged"]]
    assert not dup[0] and not dup[1] and dup[2] and dup[3]


@pytest.mark.parametrize("seed", range(5))
def test_the_isotonic_fit_is_scipys_pool_adjacent_violators(seed):
    """Oracle: scipy.optimize.isotonic_regression on the same labels and weights (ties, equal
    and unequal weights, long runs of violators)."""
    from scipy.optimize import isotonic_regression

    from saematch.verdict import isotonic_increasing

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    y = rng.integers(0, 2, n).astype(float) if seed % 2 else np.round(rng.normal(size=n), 1)
    w = rng.choice([0.25, 1.0, 3.0], n) if seed > 1 else np.ones(n)
    np.testing.assert_allclose(isotonic_increasing(y, w), isotonic_regression(y, weights=w, increasing=True).x,
                               rtol=1e-12, atol=1e-12)
