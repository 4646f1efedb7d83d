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
