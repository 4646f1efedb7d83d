import numpy as np
import pytest
import torch

import saematch.solve
from saematch.match import match_pair
from saematch.solve import LAPJV_MAX_N, choose_solver, solve_lap
from saematch.sparse import solve_sparse
from conftest import random_sae


def total64(X, Y, match):
    X, Y = X.double(), Y.double()
    return float(((X - Y[torch.from_numpy(match.astype(np.int64))]) ** 2).sum())


def problems():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 12, generator=g) * torch.exp(0.5 * torch.randn(400, 1, generator=g))
    perm = torch.randperm(400, generator=g)
    yield "similar", X, (X + 0.3 * torch.randn(400, 12, generator=g))[perm]
    yield "low-similarity", X, torch.randn(400, 12, generator=g)
    yield "tie-heavy", torch.randint(0, 2, (400, 6), generator=g).float(), torch.randint(0, 2, (400, 6), generator=g).float()


@pytest.mark.parametrize("name,X,Y", list(problems()), ids=lambda p: p if isinstance(p, str) else "")
def test_sparse_path_equals_the_dense_optimum_with_k_too_small_for_one_round(name, X, Y):
    cost = torch.cdist(X.double(), Y.double()).pow(2).float().numpy()
    dense, *_ = solve_lap(cost)
    match, matched_cost, cert, _ = solve_sparse(X, Y, k=1, chunk=64)
    assert cert["certified"] and cert["rounds"] > 1  # the pricing loop did the work
    assert sorted(match.tolist()) == list(range(400))
    assert total64(X, Y, match) == pytest.approx(total64(X, Y, dense), rel=1e-6, abs=1e-6)
    assert cert["gap_bound"] <= 1e-6 * max(1.0, matched_cost.sum())


def test_auto_picks_dense_up_to_lapjvs_limit_and_memory_then_sparse():
    assert choose_solver(16384, 16384) == "dense"
    assert choose_solver(LAPJV_MAX_N + 1, LAPJV_MAX_N + 1, dense_max_gb=100) == "sparse"
    assert choose_solver(32768, 32768, dense_max_gb=2) == "sparse"
    with pytest.raises(ValueError, match="lapjv's limit"):
        choose_solver(65536, 65536, "dense")


@pytest.mark.slow  # minutes: left out of mutation runs (tools/mutation.py), run in CI
def test_a_width_above_lapjvs_limit_runs_through_the_sparse_path_without_lapjv(monkeypatch):
    def no_lapjv(*args, **kwargs):
        raise AssertionError("lapjv was called")

    monkeypatch.setattr(saematch.solve, "lapjv", no_lapjv)
    n = LAPJV_MAX_N + 60
    src = random_sae(d=3, F=n, seed=0)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(n, generator=g)
    dst = type(src)(W_enc=src.W_enc[:, perm] * 1.01, b_enc=src.b_enc[perm], W_dec=src.W_dec[perm] * 0.99,
                    b_dec=src.b_dec, threshold=src.threshold[perm])
    cols, stats = match_pair(src, dst, device="cpu", chunk_size=1024, k=4)
    cert = stats["certificate"]
    assert cert["solver"].startswith("sparse") and cert["certified"]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    assert (cols["match"] == inverse.numpy()).mean() > 0.999


@pytest.mark.parametrize("p", [7, 300, 4097])
def test_the_bf16_screen_bound_holds_for_every_pair(p):
    from saematch.sparse import _y_bf16, _y_bf16_buffers, prepare, screen_bound

    g = torch.Generator().manual_seed(p)
    X = torch.randn(300, p, generator=g) * torch.exp(2 * torch.randn(300, 1, generator=g))
    Y = torch.cat([X[:100] * 3 + 1e-3 * torch.randn(100, p, generator=g),  # near-parallel pairs
                   torch.randn(200, p, generator=g) * 1e-3])
    a, b = screen_bound(p)
    S = prepare(X, Y, torch.device("cpu"))
    Y = Y[S["order"]]  # pricing's internal column order
    G = (X.bfloat16() @ _y_bf16(S, slice(0, 300), _y_bf16_buffers(S, 8192)).T).double()  # what pricing computes
    exact = -2 * X.double() @ Y.double().T
    bound = 2 * a * X.double().norm(dim=1)[:, None] * Y.double().norm(dim=1)[None, :] + b * G.abs()
    assert ((G - exact).abs() <= bound).all()
    assert (G - exact).abs().max() > 0.05 * bound.max()  # bf16 rounding really is at work


def test_x_streamed_from_disk_gives_the_same_certified_optimum(tmp_path):
    from saematch.sparse import npy_rows

    g = torch.Generator().manual_seed(3)
    X = torch.randn(500, 20, generator=g) * torch.exp(0.5 * torch.randn(500, 1, generator=g))
    Y = (X + 0.5 * torch.randn(500, 20, generator=g))[torch.randperm(500, generator=g)]
    np.save(tmp_path / "X.npy", X.numpy())
    np.save(tmp_path / "Y.npy", Y.numpy())
    in_memory = solve_sparse(X, Y, k=2, chunk=64, col_chunk=128)
    streamed = solve_sparse(npy_rows(tmp_path / "X.npy"), npy_rows(tmp_path / "Y.npy"), k=2, chunk=64,
                            col_chunk=128)
    assert streamed[2]["certified"] and in_memory[2]["certified"]
    assert total64(X, Y, streamed[0]) == pytest.approx(total64(X, Y, in_memory[0]), rel=1e-9)


def test_row_files_that_are_not_float32_matrices_or_are_truncated_are_refused(tmp_path):
    from saematch.sparse import npy_rows, prepare

    np.save(tmp_path / "f64.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match="f64.npy.*float32"):
        npy_rows(tmp_path / "f64.npy")
    np.save(tmp_path / "X.npy", np.ones((40, 3), np.float32))
    rows = npy_rows(tmp_path / "X.npy")
    with open(tmp_path / "X.npy", "r+b") as f:
        f.truncate(rows.offset + 4 * 3 * 30)
    with pytest.raises(ValueError, match="X.npy: truncated"):
        prepare(rows, torch.ones(40, 3), torch.device("cpu"))


def test_pricing_selects_m_lowest_per_group_and_up_to_4m_where_that_many_are_negative():
    from saematch.sparse import _lowest

    group = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    rc = torch.cat([torch.arange(10.0), torch.arange(-10.0, 0.0), torch.tensor([5.0, -1.0, 2.0])])
    keep = _lowest(group, rc, m=2)
    assert keep[:10].tolist() == [True, True] + [False] * 8  # m = 2 lowest
    assert keep[10:20].tolist() == [True] * 8 + [False] * 2  # 10 negative: 4m = 8 lowest
    assert keep[20:].tolist() == [False, True, True]  # one negative: still m = 2


def outlier_vectors(theta):
    from test_certificate_outliers import folded64, sae_pair

    src, dst = sae_pair(theta, "src")
    return (src, dst), (torch.from_numpy(folded64(src)).float(), torch.from_numpy(folded64(dst)).float())


@pytest.mark.parametrize("theta,flagged", [(1.0, False), (1e6, True)])
def test_sparse_certificate_is_the_float64_optimum_or_flags_an_unresolvable_outlier(theta, flagged):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    _, (X, Y) = outlier_vectors(theta)
    match, _, cert, _ = solve_sparse(X, Y, k=4, chunk=128, col_chunk=256)
    assert cert["certified"] == (not flagged)
    assert cert["unslack_matched"] == 0 and cert["violated_entries"] == 0
    if flagged:
        assert cert["imprecise_src"] == [7] and "src feature 7 with folded-vector norm" in cert["reason"]
    else:
        C64 = cdist(X.double().numpy(), Y.double().numpy(), "sqeuclidean")
        r, c = linear_sum_assignment(C64)
        assert C64[r, match].sum() == pytest.approx(C64[r, c].sum(), rel=1e-9)


def test_the_sparse_path_never_certifies_an_unresolvable_outlier_and_names_it():
    from saematch.sae import SaeError

    (src, dst), _ = outlier_vectors(1e9)
    try:  # lapmod's float64 duals cannot resolve costs of 1e18 next to 30: refused (here) or flagged
        _, stats = match_pair(src, dst, device="cpu", solver="sparse", k=4, chunk_size=128)
    except SaeError as exc:
        message = str(exc)
        assert "sparse path refused" in message
    else:
        assert not stats["certificate"]["certified"]
        message = stats["certificate"]["reason"]
    assert "src feature 7 with folded-vector norm 9.89e+08" in message
    assert "/hub/layer_3/params.npz (layer L, src) feature 7 (threshold θ = 1e+09)" in message


def test_pricing_judges_each_pair_by_its_own_scale_not_its_blocks_largest():
    from saematch.sparse import edge_costs, prepare, price

    _, (X, Y) = outlier_vectors(1e9)  # row 7's costs ~1e18 share the (single) row block with the rest
    S = prepare(X, Y, torch.device("cpu"))
    n = len(X)
    rows, cols = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    C = edge_costs(S, rows, cols).reshape(n, n)  # the float32 costs pricing computes, internal columns
    u, v = np.zeros(n), C.min(axis=0)  # feasible: rc ≥ 0, = 0 at each column's minimum
    _, violated, _, _ = price(S, u, v, slack=1.0)
    assert violated == 0
    i = 3  # an ordinary row: push its lowest reduced cost to −2 × that entry's own tolerance
    rc = C[i] - v
    j = int(rc.argmin())
    u[i] += rc[j] + 2e-6 * (C[i, j] + abs(v[j])) / (1 - 2e-6)
    row_min, violated, _, worst = price(S, u, v, slack=1.0)
    assert violated == 1 and row_min[i] < 0 and 1e-6 < worst < 3e-6


def test_sparse_certificate_checks_complementary_slackness_pair_by_pair():
    from saematch.sparse import candidates, duals_from_matching, prepare, solve_candidates, sparse_certificate

    _, (X, Y) = outlier_vectors(1.0)
    S = prepare(X, Y, torch.device("cpu"))
    n = S["n"]
    rows, cols, costs = candidates(S, k=n)  # every pair: the candidate optimum is the optimum
    x = solve_candidates(n, rows, cols, costs)
    u, v = duals_from_matching(n, rows, cols, costs, x)
    C = np.full((n, n), np.nan)
    C[rows, cols] = costs
    ok = sparse_certificate(S, C[np.arange(n), x].sum(), u, v, x, C[np.arange(n), x], np.zeros(n), 0, 0.0, 1)
    assert ok["certified"] and ok["unslack_matched"] == 0
    worse = x.copy()
    worse[[0, 1]] = worse[[1, 0]]
    cost = C[np.arange(n), worse]
    bad = sparse_certificate(S, cost.sum(), u, v, worse, cost, np.zeros(n), 0, 0.0, 1)
    assert not bad["certified"] and bad["unslack_matched"] == 2


def test_sparse_path_takes_costs_beyond_lapmods_limit_of_1e6_from_ordinary_wide_threshold_spreads():
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist
    from test_certificate_outliers import folded64
    from test_certify import wide_threshold_pair

    src, dst = wide_threshold_pair()
    X, Y = (torch.from_numpy(folded64(s)).float() for s in (src, dst))
    C64 = cdist(X.double().numpy(), Y.double().numpy(), "sqeuclidean")
    assert C64.max() > 1e6  # lap.lapmod refuses costs ≥ 1e6 unless scaled
    match, _, cert, _ = solve_sparse(X, Y, k=4, chunk=128, col_chunk=256)
    assert cert["certified"] and cert["imprecise_src_count"] == cert["imprecise_dst_count"] == 0
    r, c = linear_sum_assignment(C64)
    assert C64[r, match].sum() == pytest.approx(C64[r, c].sum(), rel=1e-12)


def sq_costs64(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """‖x_i − y_j‖² in float64 from the float32 rows, by numpy (no saematch code), row blocks."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return np.concatenate([((X[s:s + 64, None, :] - Y[None]) ** 2).sum(axis=2) for s in range(0, len(X), 64)])


def near_parallel(family: str, seed: int, n: int = 300, p: int = 16):
    """Rows that bf16 cannot tell apart: a common offset o (norm 10 or 30) plus noise of norm ~1,
    so costs ~2 sit under cross terms −2x·y ~ −2‖o‖², whose bf16 rounding (median 0.26 at offset
    10, 2.2 at 30) dwarfs the gap between a row's two best partners (median 0.08); "norm-spread"
    scales each row by 1 … 30 (log-uniform): rounding ~7 against gaps ~4."""
    rng = np.random.default_rng(seed)
    o = rng.standard_normal(p)
    o *= (30.0 if family == "offset-30" else 10.0) / np.linalg.norm(o)
    X = o + rng.standard_normal((n, p)) / np.sqrt(p)
    Y = o + rng.standard_normal((n, p)) / np.sqrt(p)
    if family == "norm-spread":
        s = np.exp(rng.uniform(0.0, np.log(30.0), n))[:, None]
        X, Y = s * X, s[rng.permutation(n)] * Y
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize("family,seed", [("offset-10", 0), ("offset-10", 1), ("offset-30", 0), ("offset-30", 1),
                                         ("norm-spread", 0), ("norm-spread", 1), ("norm-spread", 2)])
def test_pricing_keeps_the_bf16_error_bound_so_a_certified_total_is_the_float64_optimum_where_bf16_decides(
        family, seed):
    """Pricing may clear a pair only by a rigorous lower bound on its reduced cost (bf16 estimate
    minus screen_bound's terms). Without those terms (the bare estimate rc̃) it clears violated
    pairs here and certifies totals above the optimum in 6 of these 7 cases (17 of seeds 0..5 ×
    3 families): by 8e-3 … 1.1e-2 (offset 10), 6e-2 … 8e-2 (offset 30), 0 … 1.8e-3 (norm spread)
    relative. The real pricing returned scipy's optimum exactly (difference 0.0) in all 18."""
    from scipy.optimize import linear_sum_assignment

    X, Y = near_parallel(family, seed)
    C = sq_costs64(X, Y)
    r, c = linear_sum_assignment(C)
    opt = float(C[r, c].sum())
    # bf16 decides: its rounding of −2x·y (torch's bf16 product) exceeds most rows' gap between
    # their best and second-best partner
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    err = 2 * np.abs((torch.from_numpy(X).bfloat16() @ torch.from_numpy(Y).bfloat16().T).double().numpy()
                     - X64 @ Y64.T)
    best = np.sort(C, axis=1)
    assert (err[np.arange(len(C)), C.argmin(axis=1)] > best[:, 1] - best[:, 0]).mean() > 0.5
    match, _, cert, _ = solve_sparse(torch.from_numpy(X), torch.from_numpy(Y), k=2, chunk=128, col_chunk=256)
    assert cert["certified"] and cert["rounds"] > 1  # not vacuous: certified, after pricing added pairs
    assert sorted(match.tolist()) == list(range(len(X)))
    # float32 costs could in principle pick another optimum than float64's; measured: the same one (0.0)
    assert abs(float(C[np.arange(len(X)), match].sum()) - opt) <= 1e-7 * opt


def exact_sparse_duals():
    """An ordinary pair (512 features) solved on every pair: optimal matching x (internal columns),
    float64 duals with rc = 0 on x, and the float32 costs C (as float64) pricing computes."""
    from saematch.sparse import candidates, duals_from_matching, prepare, solve_candidates

    _, (X, Y) = outlier_vectors(1.0)
    S = prepare(X, Y, torch.device("cpu"))
    n = S["n"]
    rows, cols, costs = candidates(S, k=n)
    x = solve_candidates(n, rows, cols, costs)
    u, v = duals_from_matching(n, rows, cols, costs, x)
    C = np.full((n, n), np.nan)
    C[rows, cols] = costs
    return X, Y, S, C, x, u, v


def violations(C, u, v, eps=1e-6):
    """The certificate's rule, in numpy: rc_ij < −eps·(|C_ij| + |u_i| + |v_j|)."""
    rc = C - u[:, None] - v[None, :]
    return int((rc < -eps * (np.abs(C) + np.abs(u)[:, None] + np.abs(v)[None, :])).sum())


@pytest.mark.parametrize("depth,certified", [(1.2, False), (0.3, True)])
def test_sparse_path_flags_an_entry_just_below_its_own_tolerance_and_certifies_one_at_a_third_of_it(
        depth, certified):
    from saematch.sparse import price, sparse_certificate

    _, _, S, C, x, u, v = exact_sparse_duals()
    n = S["n"]
    ar = np.arange(n)
    assert violations(C, u, v) == 0 and np.abs(C[ar, x] - u - v[x]).max() == 0  # exact duals
    i, j = 3, int(x[3])  # raise u_i: the matched entry's rc goes to −depth·tol, every other entry stays
    u = u.copy()
    u[i] += depth * 1e-6 * (C[i, j] + abs(u[i]) + abs(v[j]))
    rc = C[i, j] - u[i] - v[j]
    assert rc / (1e-6 * (C[i, j] + abs(u[i]) + abs(v[j]))) == pytest.approx(-depth, rel=1e-5)
    assert violations(C, u, v) == (0 if certified else 1)  # numpy's count: this entry, or none
    row_min, violated, _, worst = price(S, u, v, slack=1.0)
    assert violated == violations(C, u, v)
    assert row_min[i] == pytest.approx(rc, rel=1e-9) and worst == pytest.approx(depth * 1e-6, rel=1e-5)
    cert = sparse_certificate(S, C[ar, x].sum(), u, v, x, C[ar, x], row_min, violated, worst, 1)
    assert cert["certified"] == certified and cert["unslack_matched"] == 0  # decided by rule (a) alone
    assert cert["violated_entries"] == (0 if certified else 1)
    if not certified:
        assert "below −tolerance" in cert["reason"]


def test_sparse_dual_bound_takes_back_what_infeasible_duals_add():
    """Σu + Σv + Σ min(0, row min): with u[:5] raised by 3 the correction removes the 15, so the
    bound stays at (not 15 above) scipy's float64 optimum, and equals numpy's value of the formula."""
    from scipy.optimize import linear_sum_assignment
    from saematch.sparse import price, sparse_certificate

    X, Y, S, C, x, u, v = exact_sparse_duals()
    n, ar = S["n"], np.arange(S["n"])
    C64 = sq_costs64(X.numpy(), Y.numpy())  # columns in Y's order
    r, c = linear_sum_assignment(C64)
    opt = float(C64[r, c].sum())
    v_y = np.empty(n)
    v_y[S["order"].numpy()] = v  # internal column → Y's row
    tol = 1e-6 * opt  # float32 rounding of the costs behind the duals (measured 2.5e-8 relative)
    raised = u.copy()
    raised[:5] += 3
    rc64 = C64 - raised[:, None] - v_y[None, :]
    expected = raised.sum() + v_y.sum() + np.minimum(rc64.min(axis=1), 0).sum()
    assert expected == pytest.approx(opt, abs=tol)
    row_min, violated, _, worst = price(S, raised, v, slack=1.0)
    cert = sparse_certificate(S, C[ar, x].sum(), raised, v, x, C[ar, x], row_min, violated, worst, 1)
    assert not cert["certified"] and cert["violated_entries"] >= 5
    assert cert["worst_reduced_cost"] == pytest.approx(-3, abs=1e-9)
    assert cert["dual_bound"] == pytest.approx(expected, abs=tol) and cert["dual_bound"] <= opt + tol
    assert raised.sum() + v.sum() > opt + 15 - tol  # what the bound would be without the correction


def test_a_sparse_run_stopped_before_pricing_clears_every_pair_is_not_certified():
    _, X, Y = next(problems())  # "similar": k = 1 needs several pricing rounds
    match, matched_cost, cert, _ = solve_sparse(X, Y, k=1, chunk=64, max_rounds=1)
    assert not cert["certified"] and cert["rounds"] == 1
    assert cert["violated_entries"] > 0 and cert["unslack_matched"] == 0  # rule (a) alone decides
    assert "below −tolerance" in cert["reason"]
