"""The verdict: calibrated on pairs with a known truth, silent on unrelated layers, and the
partial assignment exact."""

import itertools

import numpy as np
import pytest
import torch

from saematch.match import match_pair
from saematch.verdict import (_kappa, ambiguity_match, ambiguity_top1, directions, fit_lfdr, neighbours,
                              partial_assignment, row_competitor_scores, verdict)
from verdict_pairs import calibration_error, synthetic_pair


def judged(F=1000, d=256, **kw):
    src, dst, planted = synthetic_pair(F=F, d=d, **kw)
    cols, stats = match_pair(src, dst, device="cpu")
    return cols, stats, planted


@pytest.mark.parametrize("persist", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("cos_lo", [0.5, 0.3])
def test_confidence_is_calibrated_for_the_assignment_and_top1_at_any_share_of_persisting_features(persist, cos_lo):
    cols, _, planted = judged(persist=persist, cos_lo=cos_lo, seed=int(10 * persist + 100 * cos_lo))
    truth = (planted >= 0) & (cols["match"] == planted)
    top1_truth = (planted >= 0) & (cols["top1"] == planted)
    assert calibration_error(cols["confidence"], truth) <= 0.05
    assert calibration_error(cols["top1_confidence"], top1_truth) <= 0.05
    declared = cols["persists"]
    assert (truth & declared).sum() / declared.sum() >= 0.95  # precision
    assert (truth & declared).sum() / truth.sum() >= 0.95  # recall


def test_confidence_stays_calibrated_in_fewer_dimensions_where_weak_matches_hide_in_the_null():
    cols, _, planted = judged(d=96, persist=0.5, cos_lo=0.3, seed=7)
    truth = (planted >= 0) & (cols["match"] == planted)
    # 0.07 since the confidence is fitted on real SAEs too (README: Does a feature live on?)
    assert calibration_error(cols["confidence"], truth) <= 0.08
    assert (truth & cols["persists"]).sum() / cols["persists"].sum() >= 0.95  # precision holds, recall gives


@pytest.mark.parametrize("seed", [0, 1])
def test_independently_drawn_layers_are_almost_never_declared_persisting(seed):
    cols, stats, _ = judged(unrelated=True, seed=seed)
    assert cols["persists"].mean() <= 0.02 and cols["top1_persists"].mean() <= 0.02
    assert stats["verdict"]["pi0"] == 1.0


def test_a_forced_match_of_a_dying_feature_gets_low_confidence():
    cols, _, planted = judged(persist=0.5, seed=3)
    dying = planted < 0
    assert np.median(cols["confidence"][dying]) < 0.05 and cols["persists"][dying].mean() < 0.02


def test_without_encoders_the_verdict_uses_decoder_directions_and_still_rejects_unrelated_layers():
    src, dst, _ = synthetic_pair(F=800, d=256, unrelated=True, seed=4)
    U, _ = directions(src.W_dec, None)
    V, _ = directions(dst.W_dec, None)
    columns, stats = verdict(U, None, V, None, np.arange(800))
    assert not stats["encoders"] and columns["persists"].mean() <= 0.02


def test_lfdr_is_one_where_observed_scores_look_like_the_null_and_falls_with_the_score():
    rng = np.random.default_rng(0)
    null = rng.normal(0, 1, 4000)
    lfdr, pi0 = fit_lfdr(rng.normal(0, 1, 2000), null)
    assert pi0 > 0.9 and np.mean(lfdr(rng.normal(0, 1, 500))) > 0.8
    mixed = np.concatenate([rng.normal(0, 1, 1000), rng.normal(5, 1, 1000)])
    lfdr, pi0 = fit_lfdr(mixed, null)
    grid = np.linspace(-3, 8, 200)
    assert np.all(np.diff(lfdr(grid)) <= 1e-12) and lfdr(7.0) < 1e-3 and lfdr(-3.0) == 1.0
    assert 0.4 < pi0 < 0.65  # Storey's estimate of the null half (biased up)


def test_an_observed_score_beyond_every_null_draw_alone_is_no_certainty():
    """Where nothing persists, the best observed score exceeds all m null draws about half the
    time; that is no evidence of a real partner, so its lfdr stays well above 0."""
    rng = np.random.default_rng(1)
    null = rng.normal(0, 1, 2000)
    observed = rng.normal(0, 1, 1999)
    observed = np.append(observed[observed < null.max()], null.max() + 0.5)  # exactly one beyond
    lfdr, pi0 = fit_lfdr(observed, null)
    assert pi0 > 0.95 and lfdr(observed[-1]) > 0.4  # without the extra null score: 0
    lfdr, _ = fit_lfdr(np.concatenate([rng.normal(0, 1, 1000), rng.normal(8, 0.5, 1000)]), null)
    assert lfdr(8.0) < 1e-3  # many observations beyond the null: still near certain


def test_neighbours_are_each_rows_top_k_and_each_columns_nearest_holders_of_the_full_cosine_matrix():
    g = torch.Generator().manual_seed(0)
    U = torch.nn.functional.normalize(torch.randn(70, 16, generator=g), dim=1)
    V = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    nb = neighbours(U, V, k=5, chunk=16)
    D = (U @ V.T).numpy()
    np.testing.assert_array_equal(nb["row_top"], np.argsort(-D, axis=1, kind="stable")[:, :5])
    for j in range(50):  # each column's nearest rows among the rows that hold it in their own top 5
        holders = [i for i in range(70) if j in nb["row_top"][i]]
        expect = sorted(holders, key=lambda i: (-D[i, j], i))[:5]
        got = nb["col_top"][j]
        assert list(got[got >= 0]) == expect and (got[len(expect):] == -1).all()
        assert all(nb["row_top"][i, p] == j for i, p in zip(expect, nb["col_pos"][j]))
    np.testing.assert_array_equal(nb["top1"], D.argmax(1))
    np.testing.assert_allclose(nb["top1_cosine"], D.max(1), rtol=1e-6)


def full_scores_and_neighbours(seed, n_src=120, n_dst=140, d=24):
    """A small pair in tight clusters of 7 columns and 6 rows (so ambiguity matters, and a row's
    partner is often outside another row's 4 nearest): unit decoders and encoders, the full
    score matrix M = min(D, E) in float64, and the neighbours."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda A: torch.nn.functional.normalize(A, dim=1)  # noqa: E731
    centres = unit(torch.randn(n_dst // 7, 2 * d, generator=g))
    cols = unit(centres.repeat_interleave(7, 0) + 0.15 * torch.randn(n_dst, 2 * d, generator=g))
    rows = unit(centres.repeat_interleave(6, 0) + 0.15 * torch.randn(n_src, 2 * d, generator=g))
    U, E, V, W = unit(rows[:, :d]), unit(rows[:, d:]), unit(cols[:, :d]), unit(cols[:, d:])
    M = np.minimum((U.double() @ V.double().T).numpy(), (E.double() @ W.double().T).numpy())
    return U, E, V, W, M, neighbours(U, V, k=4, chunk=32)


@pytest.mark.parametrize("d_eff", [24.0, 300.0, 3000.0])  # κ small (nothing negligible) and large (most terms are)
@pytest.mark.parametrize("seed", range(3))
def test_the_assignments_ambiguity_is_the_sum_over_exchanges_computed_from_the_full_score_matrix(seed, d_eff):
    """Oracle: every exchange with the owner of one of row i's 4 nearest columns, scored from
    the full matrix M; the library reads most scores from the neighbours and bounds the rest."""
    U, E, V, W, M, nb = full_scores_and_neighbours(seed)
    rng = np.random.default_rng(seed)
    match = np.concatenate([7 * c + rng.permutation(7)[:6] for c in range(20)])  # within the cluster
    match[rng.random(120) < 0.2] = -1
    base = np.where(match >= 0, M[np.arange(120), np.maximum(match, 0)], -1.0)
    row_m = row_competitor_scores(E, W, nb)
    got = ambiguity_match(U, E, V, W, match, nb, d_eff, base, row_m)
    owner = {int(j): i for i, j in enumerate(match) if j >= 0}
    for i in range(120):
        if match[i] < 0:
            assert got[i] == 0.0
            continue
        p, z = match[i], 1.0
        kappa = _kappa(np.array([base[i]]), d_eff)[0]
        for j in nb["row_top"][i]:
            if j == p:
                continue
            o = owner.get(int(j))
            delta = M[i, p] - M[i, j] if o is None else M[i, p] + M[o, j] - M[i, j] - M[o, p]
            z += np.exp(min(-kappa * delta, 700))
        assert got[i] == pytest.approx(1 / z, rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_top1s_ambiguity_counts_row_rivals_and_the_columns_other_near_rows_from_the_full_score_matrix(seed):
    U, E, V, W, M, nb = full_scores_and_neighbours(seed)
    d_eff = 24.0
    top1 = nb["top1"].astype(np.int64)
    base = M[np.arange(120), top1]
    got = ambiguity_top1(top1, nb, d_eff, base, row_competitor_scores(E, W, nb))
    D = (U.double() @ V.double().T).numpy()
    for i in range(120):
        j = top1[i]
        kappa = _kappa(np.array([base[i]]), d_eff)[0]
        z = 1 + sum(np.exp(min(-kappa * (base[i] - M[i, c]), 700)) for c in np.argsort(-D[i])[:4] if c != j)
        holders = [r for r in range(120) if j in np.argsort(-D[r])[:4]]  # rows that hold j among their 4 nearest
        rivals = sorted(holders, key=lambda r: -D[r, j])[:4]
        z += sum(np.exp(min(-kappa * (base[i] - M[r, j]), 700)) for r in rivals if r != i)
        assert got[i] == pytest.approx(1 / z, rel=1e-3, abs=1e-9)


def brute_force_partial(C, tau_src, tau_dst):
    """The cheapest one-to-one partial matching, by enumerating every one."""
    ns, nd = C.shape
    best = np.inf
    for choice in itertools.product(range(-1, nd), repeat=ns):
        used = [j for j in choice if j >= 0]
        if len(used) != len(set(used)):
            continue
        total = sum(C[i, j] if j >= 0 else tau_src[i] for i, j in enumerate(choice))
        total += sum(tau_dst[j] for j in range(nd) if j not in used)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_the_partial_assignment_is_the_brute_force_optimum_and_certified(seed, shape):
    rng = np.random.default_rng(seed)
    C = rng.random(shape).astype(np.float32) * 4
    tau_src, tau_dst = (rng.random(n).astype(np.float32) * 2 for n in shape)
    match, matched_cost, cert = partial_assignment(C, tau_src, tau_dst)
    total = matched_cost.sum() + tau_src[match < 0].sum() + np.delete(tau_dst, match[match >= 0]).sum()
    assert total == pytest.approx(brute_force_partial(C, tau_src, tau_dst), rel=1e-6)
    assert cert["certified"] and len(set(match[match >= 0])) == (match >= 0).sum()


def test_partial_matching_leaves_dying_features_unmatched_and_keeps_persisting_ones():
    src, dst, planted = synthetic_pair(F=600, d=256, persist=0.5, seed=5)
    cols, stats = match_pair(src, dst, device="cpu", partial=True)
    persisting = planted >= 0
    assert stats["certificate"]["certified"] and 0 < stats["verdict"]["partial"]["r_cut"] < 1
    assert (cols["match"][persisting] == planted[persisting]).mean() >= 0.9
    assert (cols["match"][~persisting] == -1).mean() >= 0.6  # the full permutation: 0


def test_the_summarys_calibration_error_is_the_direct_one_and_the_same_on_every_call():
    import polars as pl

    from saematch.summary import calibration_error as grouped

    rng = np.random.default_rng(0)
    g, c = rng.integers(0, 3, 20000), rng.random(20000)
    ok = rng.random(20000) < c  # calibrated by construction
    df = pl.DataFrame({"g": g, "c": c, "ok": ok})
    runs = {tuple(grouped(df, "c", pl.col("ok"), ["g"]).sort("g")["c_ece"].to_list()) for _ in range(20)}
    assert len(runs) == 1  # summaries of the same matches are byte-identical (local and Slurm runs)
    np.testing.assert_allclose(next(iter(runs)), [calibration_error(c[g == k], ok[g == k]) for k in range(3)],
                               rtol=1e-12)


def test_the_logistic_fit_recovers_a_known_logistic_law():
    from saematch.calibrate import logistic_fit, logistic_predict

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40000, 2)) * [1.0, 3.0] + [0.5, -1.0]
    p = 1 / (1 + np.exp(-(1.5 * X[:, 0] - 0.7 * X[:, 1] + 0.3)))
    y = rng.random(len(p)) < p
    model = logistic_fit(X, y, ["a", "b"], l2=1e-6)
    coef = np.asarray(model["coef"]) / np.asarray(model["scale"])
    assert np.allclose(coef, [1.5, -0.7], atol=0.05)
    assert np.abs(logistic_predict(model, X) - p).max() < 0.03


def test_the_calibration_error_is_the_direct_sum_over_bins():
    from saematch.calibrate import ece

    rng = np.random.default_rng(1)
    conf, truth = rng.random(5000), rng.random(5000) < 0.3
    assert ece(conf, truth) == pytest.approx(calibration_error(conf, truth), abs=1e-12)


def test_a_duplicated_feature_is_named_unjudged_instead_of_guessed():
    from saematch.sae import Sae

    src, dst, planted = synthetic_pair(F=400, d=128, persist=0.5, seed=3)
    W_enc, W_dec = src.W_enc.clone(), src.W_dec.clone()
    W_enc[:, 1], W_dec[1] = W_enc[:, 0], W_dec[0]  # feature 1 is feature 0 again
    src = Sae(W_enc, src.b_enc, W_dec, src.b_dec, src.threshold, source={"where": "test"})
    cols, stats = match_pair(src, dst, device="cpu")
    assert cols["unjudged"][0].startswith("near-duplicate") and cols["unjudged"][1].startswith("near-duplicate")
    assert np.isnan(cols["confidence"][:2]).all() and not cols["persists"][:2].any()
    assert np.equal(cols["unjudged"][2:], None).mean() > 0.95  # the others are judged


def test_without_encoders_every_feature_is_named_decoder_only():
    src, dst, _ = synthetic_pair(F=300, d=96, persist=0.5, seed=4)
    U, _ = directions(src.W_dec, None)
    V, _ = directions(dst.W_dec, None)
    cols, stats = verdict(U, None, V, None, np.arange(300))
    assert all(u.startswith("decoder only") for u in cols["unjudged"])
    assert np.isnan(cols["confidence"]).all() and not cols["persists"].any() and not stats["encoders"]


@pytest.mark.parametrize("d", [48, 192])
def test_the_top1_margin_is_a_difference_of_scores_whatever_the_width(d):
    """Evidence column 4 of top1_evidence: m(i, top-1) minus the best m(i, j') over row i's other
    nearest columns by decoder cosine, in cosine units (not null standard deviations, which grow
    with √d); brute force over the whole score matrix, clipped at ±1."""
    from saematch.verdict import EVIDENCE, K_NEIGHBOURS
    src, dst, _ = synthetic_pair(F=300, d=d, persist=0.5, seed=11)
    U, E = directions(src.W_dec, src.W_enc)
    V, W = directions(dst.W_dec, dst.W_enc)
    cols, _ = verdict(U, E, V, W, np.arange(300))
    dec = (U @ V.T).numpy().astype(np.float64)
    m = np.minimum(dec, (E @ W.T).numpy())
    order = np.argsort(-dec, axis=1, kind="stable")[:, :K_NEIGHBOURS]
    rows = np.arange(300)[:, None]
    expected = np.clip(m[rows[:, 0], order[:, 0]] - m[rows, order[:, 1:]].max(1), -1, 1)
    assert EVIDENCE[4] == "margin"
    assert np.abs(cols["top1_evidence"][:, 4] - expected).max() < 1e-4


def test_dead_features_are_marked_never_persist_and_stay_out_of_the_null():
    """A feature whose decoder row is ~0 writes nothing: `dead`, unjudged, never persisting, and its
    (zero) scores are not drawn into the rotation null (which would drag chance cosines to 0)."""
    from saematch.verdict import DEAD_REASON, null_scores

    src, dst, planted = synthetic_pair(F=400, d=64, persist=0.8, seed=9)
    W_dec = src.W_dec.clone()
    gone = np.arange(0, 400, 4)  # a quarter of layer L's features die, persisting ones among them
    W_dec[gone] = 1e-9 * W_dec[gone]
    U, E = directions(W_dec, src.W_enc)
    V, W = directions(dst.W_dec, dst.W_enc)
    cols, stats = verdict(U, E, V, W, np.where(planted >= 0, planted, -1))  # the planted map as the assignment
    dead = np.zeros(400, bool)
    dead[gone] = True
    assert (cols["dead"] == dead).all() and stats["dead"] == 100 and stats["dead_dst"] == []
    assert not cols["persists"][dead].any() and not cols["top1_persists"][dead].any()
    assert np.isnan(cols["confidence"][dead]).all() and set(cols["unjudged"][dead]) == {DEAD_REASON}
    alive = np.flatnonzero(~dead)
    t_all, _ = null_scores(U, E, V, W, rows=300, seed=0)
    t_alive, _ = null_scores(U, E, V, W, rows=300, seed=0, among=alive)
    assert (t_all == 0).sum() >= 50 and (t_alive == 0).sum() == 0  # zero rows score 0 against everything
    assert stats["null_samples"] == 600
    # the living features keep their verdict: the persisting ones are still found
    right = (planted >= 0) & ~dead
    assert (cols["persists"] & right).sum() / right.sum() >= 0.9
