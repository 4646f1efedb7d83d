import dataclasses

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saematch.certify import certify_dense, imprecise_features, square_assignment
from saematch.cost import dense_cost, pair_vectors
from saematch.fold import fold
from saematch.solve import solve_lap
from test_certificate_outliers import float64_costs, sae_pair


@pytest.mark.parametrize("shape", [(200, 200), (150, 220), (220, 150)])
def test_an_optimal_assignment_is_certified(shape):
    cost = np.random.default_rng(0).random(shape, dtype=np.float32) * 50
    match, total, u, v = solve_lap(cost)
    cert = certify_dense(cost, total, u, v, match)
    assert cert["certified"] and cert["violated_entries"] == 0 and cert["unslack_matched"] == 0
    assert cert["gap_bound"] < 1e-6 * total and cert["worst_reduced_cost"] > -1e-4
    assert cert["reason"] is None


def test_a_suboptimal_assignment_is_not_certified_and_its_gap_is_bounded():
    cost = np.random.default_rng(1).random((100, 100), dtype=np.float32) * 10
    match, total, u, v = solve_lap(cost)
    worse = match.copy()
    worse[[0, 1]] = worse[[1, 0]]  # swap two partners
    worse_total = float(cost[np.arange(100), worse].astype(np.float64).sum())
    assert worse_total > total
    for refine in (False, True):
        cert = certify_dense(cost, worse_total, u, v, worse, refine=refine)
        assert not cert["certified"]
        assert cert["gap_bound"] >= worse_total - total - 1e-4  # the true gap is within the bound


def test_duals_that_are_not_feasible_fail_the_certificate():
    rng = np.random.default_rng(2)
    cost = rng.random((100, 100), dtype=np.float32)
    other = rng.random((100, 100), dtype=np.float32)  # duals of another problem
    match, _, u, v = solve_lap(other)
    total = float(cost[np.arange(100), match].astype(np.float64).sum())
    cert = certify_dense(cost, total, u, v, match)
    assert not cert["certified"] and cert["violated_entries"] > 0 and cert["worst_reduced_cost"] < 0


def test_a_suboptimal_assignment_stays_uncertified_when_its_duals_are_refined():
    cost = np.random.default_rng(3).random((80, 80), dtype=np.float32) * 10
    match, total, u, v = solve_lap(cost)
    worse = np.roll(match, 1)  # far from optimal: every refinement round finds a negative cycle
    worse_total = float(cost[np.arange(80), worse].astype(np.float64).sum())
    cert = certify_dense(cost, worse_total, u, v, worse, refine=True)
    assert not cert["certified"] and "did not converge" in cert["reason"]


def wide_threshold_pair(seed=0):
    """Ordinary SAEs whose thresholds spread over 1e-3..1e2 (folded norms over ~1..1e3)."""
    src, dst = sae_pair(1.0, "src", seed=seed, F=512, D=64)
    g = torch.Generator().manual_seed(seed)
    theta = [10 ** (-3 + 5 * torch.rand(512, generator=g)) for _ in range(2)]
    return dataclasses.replace(src, threshold=theta[0]), dataclasses.replace(dst, threshold=theta[1])


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_lapjv_float32_dual_noise_misses_per_entry_tolerances_on_wide_spreads_and_refined_duals_certify(scale):
    """At any cost scale: the tolerance and the refinement's cut are relative to each entry."""
    src, dst = wide_threshold_pair()
    X, Y = pair_vectors(fold(src), fold(dst), "enc+dec+benc", torch.device("cpu"))
    cost = dense_cost(X, Y)
    cost *= np.float32(scale)
    match, total, u, v = solve_lap(cost)
    norms = (X.double().norm(dim=1).numpy() * scale**0.5, Y.double().norm(dim=1).numpy() * scale**0.5)
    raw = certify_dense(cost, total, u, v, match, norms=norms)
    # lapjv's float32 duals carry rounding of the matrix's largest costs into small entries
    assert raw["violated_entries"] > 0 and raw["worst_violation_rel"] > 1e-6
    refined = certify_dense(cost, total, u, v, match, norms=norms, refine=True)
    assert refined["certified"] and refined["dual_refinements"] >= 1
    assert refined["worst_violation_rel"] <= 0.5e-6  # refinement relaxes everything beyond tol / 2
    assert refined["imprecise_src_count"] == refined["imprecise_dst_count"] == 0  # ordinary: never flagged
    C64 = float64_costs(src, dst) * scale
    r, c = linear_sum_assignment(C64)
    assert C64[r, match].sum() == pytest.approx(C64[r, c].sum(), rel=1e-12)  # and it is the optimum


def test_ordinary_norm_spreads_are_not_flagged_and_far_outliers_are():
    rng = np.random.default_rng(0)
    ordinary = np.exp(rng.uniform(0, np.log(1e3), 1000))  # norms over 1..1e3
    assert [len(f) for f in imprecise_features(ordinary, ordinary)] == [0, 0]
    for big in (1e6, 1e9, np.inf, np.nan):
        nx = ordinary.copy()
        nx[5] = big * np.median(ordinary)
        src, dst = imprecise_features(nx, ordinary)
        assert src.tolist() == [5] and len(dst) == 0


def test_a_non_square_assignment_is_completed_to_a_permutation_of_the_padded_square():
    perm = square_assignment(np.array([1, -1, 0]), 3, 2)  # row 1 unmatched: takes padding column 2
    assert perm.tolist() == [1, 2, 0]
    perm = square_assignment(np.array([3, 0]), 2, 4)  # padding rows take the free columns 1, 2
    assert perm.tolist() == [3, 0, 1, 2]
    with pytest.raises(ValueError, match="not a maximal one-to-one"):
        square_assignment(np.array([0, 0]), 2, 2)
