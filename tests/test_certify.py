import numpy as np
import pytest

from saematch.certify import certify_dense
from saematch.solve import solve_lap


@pytest.mark.parametrize("shape", [(200, 200), (150, 220), (220, 150)])
def test_an_optimal_assignment_is_certified(shape):
    cost = np.random.default_rng(0).random(shape, dtype=np.float32) * 50
    match, total, u, v = solve_lap(cost)
    cert = certify_dense(cost, total, u, v)
    assert cert["certified"] and cert["violated_entries"] == 0
    assert cert["gap_bound"] < 1e-6 * total and cert["worst_reduced_cost"] > -1e-4


def test_a_suboptimal_assignment_is_not_certified_and_its_gap_is_bounded():
    cost = np.random.default_rng(1).random((100, 100), dtype=np.float32) * 10
    match, total, u, v = solve_lap(cost)
    worse = match.copy()
    worse[[0, 1]] = worse[[1, 0]]  # swap two partners
    worse_total = float(cost[np.arange(100), worse].astype(np.float64).sum())
    assert worse_total > total
    cert = certify_dense(cost, worse_total, u, v)
    assert not cert["certified"]
    assert cert["gap_bound"] >= worse_total - total - 1e-4  # the true gap is within the bound


def test_duals_that_are_not_feasible_fail_the_certificate():
    rng = np.random.default_rng(2)
    cost = rng.random((100, 100), dtype=np.float32)
    other = rng.random((100, 100), dtype=np.float32)  # duals of another problem
    match, _, u, v = solve_lap(other)
    total = float(cost[np.arange(100), match].astype(np.float64).sum())
    cert = certify_dense(cost, total, u, v)
    assert not cert["certified"] and cert["violated_entries"] > 0 and cert["worst_reduced_cost"] < 0
