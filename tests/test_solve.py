import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from saematch.solve import solve_lap


def scipy_total(cost):
    r, c = linear_sum_assignment(cost.astype(np.float64))
    return cost[r, c].astype(np.float64).sum()


def check_is_assignment(match, n_rows, n_cols):
    assert match.dtype == np.int32 and match.shape == (n_rows,)
    used = match[match >= 0]
    assert len(set(used.tolist())) == len(used) and (used < n_cols).all()
    assert len(used) == min(n_rows, n_cols)


@pytest.mark.parametrize("n,seed", [(1, 0), (5, 1), (64, 2), (300, 3)])
def test_solve_total_equals_scipy_on_random_problems(n, seed):
    cost = np.random.default_rng(seed).random((n, n), dtype=np.float32)
    match, total, *_ = solve_lap(cost)
    check_is_assignment(match, n, n)
    assert total == pytest.approx(scipy_total(cost), rel=1e-5)
    assert total == pytest.approx(cost[np.arange(n), match].astype(np.float64).sum())


@pytest.mark.parametrize("seed", range(5))
def test_solve_total_equals_scipy_on_tie_heavy_problems(seed):
    cost = np.random.default_rng(seed).integers(0, 3, (120, 120)).astype(np.float32)
    match, total, *_ = solve_lap(cost)
    check_is_assignment(match, 120, 120)
    assert total == scipy_total(cost)


@pytest.mark.parametrize("shape", [(40, 70), (70, 40), (1, 9), (9, 1)])
def test_solve_total_equals_scipy_on_non_square_problems(shape):
    cost = np.random.default_rng(7).random(shape, dtype=np.float32) * 10
    match, total, *_ = solve_lap(cost)
    check_is_assignment(match, *shape)
    assert (match == -1).sum() == max(0, shape[0] - shape[1])
    assert total == pytest.approx(scipy_total(cost), rel=1e-5)


def test_solve_recovers_a_planted_permutation():
    rng = np.random.default_rng(0)
    perm = rng.permutation(200)
    cost = rng.random((200, 200), dtype=np.float32) + 1.0
    cost[np.arange(200), perm] = rng.random(200, dtype=np.float32) * 0.1
    match, *_ = solve_lap(cost)
    assert np.array_equal(match, perm)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_solve_rejects_nan_and_inf(bad):
    cost = np.ones((4, 4), np.float32)
    cost[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve_lap(cost)


def test_solve_rejects_a_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        solve_lap(np.ones(3, np.float32))


def test_solve_rejects_nan_naming_the_problem_exactly():
    cost = np.ones((3, 3), np.float32)
    cost[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^cost matrix contains NaN or Inf$"):
        solve_lap(cost)


def test_an_empty_problem_has_an_empty_int32_match_and_zero_total():
    match, total, u, v = solve_lap(np.empty((0, 3), np.float32))
    assert match.shape == (0,) and match.dtype == np.int32 and total == 0.0 and type(total) is float
    assert u.shape == (0,) and v.shape == (0,)


def test_duals_and_total_are_float64_whatever_the_cost_dtype():
    rng = np.random.default_rng(0)
    for cost in (rng.random((5, 5)), rng.random((4, 6)), rng.random((6, 4))):
        match, total, u, v = solve_lap(cost)  # float64 in: solved as float32, returned as float64
        assert u.dtype == np.float64 and v.dtype == np.float64 and len(u) == len(v) == max(cost.shape)
        rows = np.nonzero(match >= 0)[0]
        assert total == float(cost[rows, match[rows]].sum())


def test_the_total_is_summed_in_float64():
    """Summed in float32 the total would lose the small costs next to a large one."""
    cost = np.full((3, 3), 1e8, np.float32)
    np.fill_diagonal(cost, [1e8, 1.0, 1.0])
    _, total, _, _ = solve_lap(cost)
    assert total == 1e8 + 2.0


def test_lapjvs_limit_is_its_largest_safe_size_exactly():
    from saematch.solve import LAPJV_MAX_N
    with pytest.raises(ValueError, match=rf"^lapjv cannot solve n = {LAPJV_MAX_N + 1} > {LAPJV_MAX_N}: use the sparse solver$"):
        solve_lap(np.zeros((LAPJV_MAX_N + 1, 1), np.float32))


@pytest.mark.parametrize("n,solver,dense_max_gb,expected", [
    (46340, "auto", 8.0, "dense"),        # lapjv's limit itself is still dense
    (46341, "auto", 8.0, "sparse"),
    (32768, "auto", 4.0, "dense"),        # 4·n² = exactly 4 GiB: fits
    (32769, "auto", 4.0, "sparse"),
    (40132, "auto", 6.0, "dense"),        # the default 6 GiB: 4·40132² < 6 GiB < 4·40133²
    (40133, "auto", 6.0, "sparse"),
    (100, "sparse", 6.0, "sparse"),       # an explicit choice is kept
    (100, "dense", 6.0, "dense"),
    (46340, "dense", 1.0, "dense"),
])
def test_the_auto_solver_is_dense_exactly_while_it_fits(n, solver, dense_max_gb, expected):
    from saematch.solve import choose_solver
    assert choose_solver(n, n, solver, dense_max_gb) == expected


def test_the_default_dense_budget_is_6_gib():
    from saematch.solve import choose_solver
    assert choose_solver(40132, 40132) == "dense" and choose_solver(40133, 40133) == "sparse"


def test_a_dense_solve_above_lapjvs_limit_and_an_unknown_solver_are_refused_with_the_reason():
    from saematch.solve import choose_solver
    with pytest.raises(ValueError, match=r"^solver 'dense' cannot take n = 46341 > 46340 \(lapjv's limit\)$"):
        choose_solver(46341, 10, "dense")
    with pytest.raises(ValueError, match=r"^solver must be one of \('auto', 'dense', 'sparse'\), got 'fast'$"):
        choose_solver(10, 10, "fast")
