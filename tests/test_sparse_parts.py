"""The sparse path part by part, each against a dense float64 computation or a hand-worked
value: candidates, pricing's selection and counts, the bf16 tiles, the bound, the record, the
errors, and what the path reports (log lines and per-stage seconds, on a fake clock)."""

import itertools
import logging
import re

import numpy as np
import pytest
import torch

import saematch.sparse as sp
from saematch.sparse import (_lowest, _y_bf16, _y_bf16_buffers, candidates, duals_from_matching, npy_rows,
                             prepare, price, screen_bound, solve_candidates, solve_sparse, sparse_certificate)

CPU = torch.device("cpu")


def problem(n=200, p=12, seed=0, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g) * torch.exp(spread * torch.randn(n, 1, generator=g))
    perm = torch.randperm(n, generator=g)
    return X, (X + 0.3 * torch.randn(n, p, generator=g))[perm]


def internal_costs64(S, X, Y):
    """C_ij = ‖x_i − y_j‖² in float64, columns in the solver's internal (norm-sorted) order."""
    X64, Y64 = X.double().numpy(), Y.double().numpy()[S["order"].numpy()]
    return (X64**2).sum(1)[:, None] + (Y64**2).sum(1)[None, :] - 2 * X64 @ Y64.T


def fake_clock(monkeypatch):
    clock = itertools.count(100.0, 1.0)
    monkeypatch.setattr(sp.time, "perf_counter", lambda: next(clock))


# --- what the path reports --------------------------------------------------------------

@pytest.mark.parametrize("max_rounds", [1, 100])
def test_the_sparse_path_logs_every_stage_and_round_and_times_each_on_its_own(monkeypatch, caplog, max_rounds):
    """A clock that moves 1 s per reading: each stage spans one reading per round (pricing two
    in a round that goes on to add pairs), so the seconds are exact counts."""
    fake_clock(monkeypatch)
    X, Y = problem()
    n = len(X)
    with caplog.at_level(logging.INFO, logger="saematch.sparse"):
        match, matched_cost, cert, seconds = solve_sparse(X, Y, k=1, chunk=64, max_rounds=max_rounds)
    R, done = cert["rounds"], cert["certified"]
    assert done == (max_rounds == 100) and (R == 1 if max_rounds == 1 else R > 1)
    assert isinstance(cert["worst_violation_rel"], float) and cert["worst_violation_rel"] >= 0
    assert seconds == {"candidates": 1.0, "solve": R, "duals": R, "pricing": 2 * R - done}
    lines = [r.getMessage() for r in caplog.records]
    first = re.fullmatch(r"sparse: (\d+) candidate edges \(k=1, ([\d.]+) per row\) in 1\.0 s", lines[0])
    assert first and first[2] == f"{int(first[1]) / n:.1f}"
    rounds = [m for m in (re.fullmatch(
        r"sparse round (\d+): total (\S+) on (\d+) edges, (\d+) violated pairs, worst reduced cost (\S+), "
        r"(\d+) s so far \(candidates 1 s, solve (\d+) s, duals (\d+) s, pricing (\d+) s\)", s) for s in lines) if m]
    assert [int(m[1]) for m in rounds] == list(range(1, R + 1))
    for r, m in enumerate(rounds, 1):
        assert (m[6], m[7], m[8], m[9]) == (str(4 * r), str(r), str(r), str(2 * r - 1))
    assert rounds[0][3] == first[1] and int(rounds[-1][4]) == cert["violated_entries"]
    assert rounds[-1][2] == f"{matched_cost.sum():.10g}" and float(rounds[-1][5]) == pytest.approx(
        cert["worst_reduced_cost"], rel=1e-2)
    pricing = [m for m in (re.fullmatch(r"pricing: (\d+) pairs \(([\d.]+) per row\) not cleared by the bf16 "
                                        r"screen, recomputed in float32; (\d+) below the slack, (\d+) selected", s)
                           for s in lines) if m]
    assert len(pricing) == R and all(m[2] == f"{int(m[1]) / n:.1f}" and int(m[3]) <= int(m[1]) for m in pricing)
    assert ("sparse: not certified after 1 rounds" in lines) == (not done)


def test_an_unresolvable_outlier_is_warned_about_before_solving(caplog):
    from test_sparse import outlier_vectors

    _, (X, Y) = outlier_vectors(1e6)
    with caplog.at_level(logging.WARNING, logger="saematch.sparse"):
        solve_sparse(X, Y, k=4, chunk=128, col_chunk=256)
    assert caplog.records[0].getMessage().startswith("sparse: 1 src feature(s) too large for float32 costs")


# --- candidates and pricing against dense float64 ---------------------------------------

@pytest.mark.parametrize("scale", [1.0, 0.05])  # 0.05: norms below 1 (ranking is by cosine, not norm)
def test_candidates_hold_each_rows_and_columns_nearest_by_cosine_the_diagonal_and_their_exact_costs(scale):
    X, Y = problem(n=150, spread=1.0)
    X, Y = X * scale, Y * scale
    S = prepare(X, Y, CPU)
    k = 4
    r, c, costs = candidates(S, k, chunk=16, col_chunk=24)
    got = set(zip(r.tolist(), c.tolist()))
    Yi = Y.double().numpy()[S["order"].numpy()]
    cos = (X.double().numpy() / np.linalg.norm(X.double().numpy(), axis=1, keepdims=True)) @ (
        Yi / np.linalg.norm(Yi, axis=1, keepdims=True)).T
    rows = {(i, int(j)) for i in range(150) for j in np.argsort(-cos[i])[:k]}
    cols = {(int(i), j) for j in range(150) for i in np.argsort(-cos[:, j])[:k]}
    assert len(rows & got) >= 0.97 * len(rows) and len(cols & got) >= 0.97 * len(cols)  # bf16 may swap near-ties
    assert {(i, int(S["where"][i])) for i in range(150)} <= got  # (i, i): a perfect matching exists
    C64 = internal_costs64(S, X, Y)
    scale = (S["x2"].double().numpy()[r] + S["y2"].double().numpy()[c])  # float32 costs: 2⁻²⁴ of it
    assert np.all(np.abs(costs - C64[r, c]) <= 1e-6 * scale)


def priced(chunk, col_chunk, slack, m=1, scale=1.0, shift=0.0):
    X, Y = problem(n=120, seed=3)
    X, Y = X * scale, Y * scale
    S = prepare(X, Y, CPU)
    r, c, costs = candidates(S, 1, chunk=32)
    x = solve_candidates(S["n"], r, c, costs)
    u, v = duals_from_matching(S["n"], r, c, costs, x)
    u, v = u - shift, v + shift
    return S, X, Y, u, v, price(S, u, v, slack, m=m, chunk=chunk, col_chunk=col_chunk)


@pytest.mark.parametrize("scale", [1.0, 0.03])  # 0.03: every pair's scale |C| + |u| + |v| below 1
def test_pricing_adds_only_pairs_below_the_slack_and_every_rows_lowest_ones(scale):
    S, X, Y, u, v, (row_min, violated, new, worst) = priced(chunk=16, col_chunk=24, slack=2.0 * scale**2, m=2,
                                                            scale=scale)
    rc = internal_costs64(S, X, Y) - u[:, None] - v[None, :]
    pairs = set(zip(new[0].tolist(), new[1].tolist()))
    slack, tiny = 2.0 * scale**2, 1e-4 * scale**2
    assert all(rc[i, j] < slack + tiny for i, j in pairs)
    for i in range(len(rc)):  # each row's 2 lowest below the slack (clear of float32 near-ties)
        low = [int(j) for j in np.argsort(rc[i])[:2] if rc[i, j] < slack - 10 * tiny]
        assert {(i, j) for j in low} <= pairs
    np.testing.assert_allclose(row_min, np.minimum(rc.min(1), 0), atol=tiny)
    u[5] += scale**2  # row 5's duals now infeasible wherever its reduced cost was below scale²
    row_min, violated, _, worst = price(S, u, v, slack, m=2, chunk=16, col_chunk=24)
    rc[5] -= scale**2
    assert violated == int((rc[5] < -tiny).sum()) > 0 and row_min[5] == pytest.approx(rc[5].min(), abs=tiny)
    assert worst == pytest.approx(-(rc[5] / (np.abs(rc[5] + u[5] + v) + abs(u[5]) + np.abs(v))).min(), rel=1e-3)


def test_pricing_gives_the_same_selection_counts_and_bounds_in_any_row_and_column_blocks(caplog):
    with caplog.at_level(logging.INFO, logger="saematch.sparse"):
        *_, whole = priced(chunk=120, col_chunk=120, slack=5.0)
        *_, blocks = priced(chunk=7, col_chunk=11, slack=5.0)
    np.testing.assert_array_equal(whole[0], blocks[0])
    assert whole[1] == blocks[1] and whole[3] == blocks[3]
    np.testing.assert_array_equal(whole[2][0], blocks[2][0])
    np.testing.assert_array_equal(whole[2][1], blocks[2][1])
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pricing:")]
    assert len(logged) == 2 and logged[0] == logged[1]


@pytest.mark.filterwarnings("error")  # the reused buffers are never resized
def test_pricing_depends_on_the_duals_only_through_u_i_plus_v_j():
    """(u − δ, v + δ) gives every pair the same reduced cost: the same rows' minima and selection."""
    *_, base = priced(chunk=16, col_chunk=24, slack=5.0, m=2)
    *_, shifted = priced(chunk=16, col_chunk=24, slack=5.0, m=2, shift=50.0)
    np.testing.assert_allclose(shifted[0], base[0], atol=1e-9)
    assert shifted[1] == base[1] == 0
    np.testing.assert_array_equal(shifted[2][0], base[2][0])
    np.testing.assert_array_equal(shifted[2][1], base[2][1])


def test_a_sparse_run_judges_violations_by_the_tolerance_it_is_given():
    X, Y = problem(n=150, seed=5)
    _, _, tight, _ = solve_sparse(X, Y, k=1, chunk=64, max_rounds=1)
    _, _, loose, _ = solve_sparse(X, Y, k=1, chunk=64, max_rounds=1, eps=0.5)
    assert 0 < loose["violated_entries"] < tight["violated_entries"] and loose["tolerance_rel"] == 0.5


def test_a_sparse_pair_gets_its_top1_from_its_own_decoder_pass():
    """The sparse path's cost pass has no decoder products: match_pair takes top-1 from
    saematch.verdict.neighbours, each row's argmax decoder cosine."""
    from saematch.match import match_pair
    from conftest import random_sae

    src, dst = random_sae(F=40, seed=6), random_sae(F=40, seed=7)
    cols, stats = match_pair(src, dst, device="cpu", solver="sparse", k=4, chunk_size=16)
    u = torch.nn.functional.normalize(src.W_dec, dim=1)
    v = torch.nn.functional.normalize(dst.W_dec, dim=1)
    D = (u @ v.T).numpy()
    assert stats["certificate"]["solver"].startswith("sparse")
    np.testing.assert_array_equal(cols["top1"], D.argmax(1))
    np.testing.assert_allclose(cols["top1_cosine"], D.max(1), rtol=1e-5)
    assert cols["top1"].dtype == np.int32 and cols["top1_cosine"].dtype == np.float32


def test_a_bf16_column_tile_longer_than_one_conversion_step_is_minus_two_y_in_bf16():
    X, Y = problem(n=2500, p=8)
    S = prepare(X, Y, CPU)
    buffers = _y_bf16_buffers(S, 2100)
    got = _y_bf16(S, slice(300, 2400), buffers)  # two 1024-row steps and a short one
    want = (-2.0 * Y[S["order"][300:2400]]).to(torch.bfloat16)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), rtol=2**-7)


def test_the_screen_bound_has_the_documented_value():
    # a = 1.01·(2u + u² + g(1 + u)²), u = 2⁻⁸, g = p·2⁻²⁴/(1 − p·2⁻²⁴); b = u/(1 − u); worked out exactly
    assert screen_bound(16) == (pytest.approx(0.007907007128722313, rel=1e-12), pytest.approx(1 / 255, rel=1e-12))
    assert screen_bound(2304)[0] == pytest.approx(0.008045843698017611, rel=1e-12)


def test_lowest_counts_only_negative_reduced_costs_towards_the_wider_cap():
    group = torch.tensor([0, 0, 0, 0, 1])
    keep = _lowest(group, torch.tensor([-1.0, 0.0, 0.5, 0.7, 3.0]), m=1)
    assert keep.tolist() == [True, False, False, False, True]  # one negative: cap m = 1; a lone pair stays
    assert _lowest(torch.tensor([4]), torch.tensor([-2.0]), m=1).tolist() == [True]


# --- the record and the errors ----------------------------------------------------------

def test_the_sparse_record_checks_each_matched_pair_against_its_own_tolerance():
    # rc = 3 − 1 − 0 = 2 = eps·(|3| + |1| + |0|) at eps = 0.5: on the tolerance, not above it;
    # rc = 0.15 with v = 0.35 is within 0.1·(1 + 0.5 + 0.35) but not within 0.1·(1 + 0.5 − 0.35)
    none = {"imprecise_src": [], "imprecise_src_count": 0, "imprecise_dst": [], "imprecise_dst_count": 0,
            "precision_limit": None, "precision_reason": None}
    at = sparse_certificate(None, 3.0, np.array([1.0]), np.array([0.0]), np.array([0]), np.array([3.0]), np.zeros(1),
                            0, 0.25, 2, eps=0.5, precision=none)
    assert at["certified"] and at["solver"] == "sparse lapmod + pricing" and at["rounds"] == 2
    assert at["worst_violation_rel"] == 0.25 and at["tolerance_rel"] == 0.5
    near = sparse_certificate(None, 1.0, np.array([0.5]), np.array([0.35]), np.array([0]), np.array([1.0]),
                              np.zeros(1), 0, 0.0, 1, eps=0.1, precision=none)
    assert near["unslack_matched"] == 0


def test_the_sparse_record_flags_outliers_from_the_norms_when_not_given_them():
    from test_sparse import outlier_vectors

    _, (X, Y) = outlier_vectors(1e9)
    S = prepare(X, Y, CPU)
    n = S["n"]
    rec = sparse_certificate(S, 0.0, np.zeros(n), np.zeros(n), np.arange(n), np.zeros(n), np.zeros(n), 0, 0.0, 1)
    assert rec["imprecise_src"] == [7] and not rec["certified"]


def test_prepare_names_the_shapes_and_the_first_bad_row_and_side():
    with pytest.raises(ValueError, match=r"^the sparse solver needs equal shapes, got \(5, 3\) and \(4, 3\)$"):
        prepare(torch.ones(5, 3), torch.ones(4, 3), CPU)
    Y = torch.ones(6, 3)
    Y[2, 0], Y[4, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^feature vectors have NaN/Inf: row 2 of Y \(dst\) has norm nan in float32 "
                                         r"\(2 such rows; folded parameters overflowing float32\?\)$"):
        prepare(torch.ones(6, 3), Y, CPU)
    X = torch.ones(6, 3)
    X[5, 2] = float("inf")
    with pytest.raises(ValueError, match=r"row 5 of X \(src\) has norm inf"):
        prepare(X, torch.ones(6, 3), CPU)


def test_row_files_in_npy_version_2_are_read_and_other_layouts_refused(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    rows = npy_rows(tmp_path / "v2.npy")
    assert (rows.n, rows.p) == (6, 4)
    np.testing.assert_array_equal(sp._read(rows, slice(2, 5), CPU).numpy(), a[2:5])
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(a))
    for name in ("cube", "fortran"):
        with pytest.raises(ValueError, match=f"{name}.npy: expected a C-order 2-D float32 array"):
            npy_rows(tmp_path / f"{name}.npy")


def test_a_candidate_graph_without_a_perfect_matching_or_a_matching_without_potentials_is_refused():
    rows, cols = np.array([0, 1, 2]), np.array([0, 0, 0])
    with pytest.raises(RuntimeError, match="^the candidate graph has no perfect matching$"):
        solve_candidates(3, rows, cols, np.ones(3))
    # every pair of 2 × 2; x = identity costs 2, the swap 0: identity has a negative cycle
    r, c = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="^no potentials: the matching is not optimal on its candidates$"):
        duals_from_matching(2, r, c, np.array([1.0, 0.0, 0.0, 1.0]), np.array([0, 1]))


def test_potentials_follow_a_chain_of_n_minus_1_arcs():
    """x = identity; arcs i → i+1 lower each next column by 1 after the last: Bellman–Ford needs
    n − 1 relaxing sweeps and one to see nothing change."""
    n = 12
    r = np.concatenate([np.arange(n), np.arange(n - 1)])
    c = np.concatenate([np.arange(n), np.arange(1, n)])
    order = np.lexsort((c, r))
    r, c = r[order], c[order]
    costs = np.where(r == c, 1.0, 0.5)  # C_ii = 1, C_{i,i+1} = 0.5: potentials v_j = −j/2
    u, v = duals_from_matching(n, r, c, costs, np.arange(n))
    np.testing.assert_allclose(v, -0.5 * np.arange(n))
    np.testing.assert_allclose(u, 1 + 0.5 * np.arange(n))
