"""The certificate record field by field, on problems small enough to check by hand: every
reduced cost, bound and message below is worked out in the comments, not by the code."""

import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from saematch.certify import EPS, _Square, certify_dense, imprecise_features, precision_report, refine_duals
from saematch.certify import square_assignment
from saematch.solve import solve_lap

import torch

F32 = np.float32


def record(**fields):
    """A full certificate record: the certified defaults, with ``fields`` changed."""
    base = {"certified": True, "worst_reduced_cost": 0.0, "violated_entries": 0, "unslack_matched": 0,
            "worst_violation_rel": 0.0, "tolerance_rel": 1e-6, "dual_bound": 0.0, "gap_bound": 0.0,
            "dual_refinements": 0, "imprecise_src": [], "imprecise_src_count": 0, "imprecise_dst": [],
            "imprecise_dst_count": 0, "precision_limit": None, "reason": None, "solver": "lapjv", "rounds": 1}
    return base | fields


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_an_empty_problem_is_certified_and_its_gap_is_the_whole_primal(shape):
    cert = certify_dense(np.zeros(shape, F32), 2.5, np.zeros(0), np.zeros(0), np.full(shape[0], -1))
    assert cert == record(worst_violation_rel=None, gap_bound=2.5)
    # with feature norms and a tolerance of its own, the record says so
    norms = (np.ones(shape[0]), np.ones(shape[1]))
    cert = certify_dense(np.zeros(shape, F32), 0.0, np.zeros(0), np.zeros(0), np.full(shape[0], -1), norms=norms, eps=1e-3)
    assert cert == record(worst_violation_rel=None, tolerance_rel=1e-3, precision_limit=pytest.approx(16776.216))


def test_a_hand_checked_optimal_assignment_gives_the_exact_record_with_the_callers_solver_and_rounds():
    # C = [[1, 2], [3, 1]], u = (1, 1), v = (0, 0): rc = [[0, 1], [2, 0]] ≥ 0; D = 2 = primal
    C = np.array([[1, 2], [3, 1]], F32)
    u, v, match = np.ones(2), np.zeros(2), np.array([0, 1])
    assert certify_dense(C, 2.0, u, v, match) == record(dual_bound=2.0)
    assert certify_dense(C, 2.0, u, v, match, solver="sparse", rounds=3, eps=1e-3) == record(
        dual_bound=2.0, solver="sparse", rounds=3, tolerance_rel=1e-3)


def diagonal(scale=0.1):
    """4 × 4: diagonal 1, elsewhere 5 (× scale), optimal on the diagonal with u = scale, v = 0."""
    C = np.full((4, 4), 5 * scale, F32)
    np.fill_diagonal(C, scale)
    return C, np.full(4, scale), np.zeros(4), np.arange(4)


def test_a_violated_entry_is_named_with_its_row_column_and_share_of_its_own_scale():
    C, u, v, match = diagonal()
    C[3, 2] = 0.025  # rc = 0.025 − 0.1 = −0.075, scale 0.025 + 0.1 = 0.125: 0.6 of it
    cert = certify_dense(C, float(np.trace(C.astype(np.float64))), u, v, match, chunk_rows=2)
    assert cert["reason"] == ("1 entries have reduced cost below −tolerance (duals infeasible: some assignment "
                              "may be cheaper); worst violation at row 3, column 2: rc = -0.075, 0.6 of its "
                              "scale |C| + |u| + |v|")
    assert not cert["certified"] and cert["violated_entries"] == 1
    assert cert["worst_violation_rel"] == pytest.approx(0.6, rel=1e-6)
    # D = Σu + Σv + Σ_i min(0, min_j rc_ij) = 0.4 − 0.075; primal 0.4: gap 0.075
    assert cert["dual_bound"] == pytest.approx(0.325, rel=1e-6) and cert["gap_bound"] == pytest.approx(0.075, rel=1e-5)
    assert cert["worst_reduced_cost"] == pytest.approx(-0.075, rel=1e-6)


def test_violations_are_counted_over_every_row_block_and_the_first_of_equal_ones_is_named():
    C, u, v, match = diagonal()
    C[0, 1] = C[3, 2] = 0.025  # the same violation in row blocks 0–1 and 2–3
    cert = certify_dense(C, 0.4, u, v, match, chunk_rows=2)
    assert cert["violated_entries"] == 2 and "worst violation at row 0, column 1" in cert["reason"]


def test_an_entry_exactly_at_its_tolerance_is_not_a_violation():
    # eps = 0.5: C = 1, u = 3, v = 0 gives rc = −2 = −eps·(|C| + |u| + |v|) exactly
    cert = certify_dense(np.array([[1]], F32), 1.0, np.array([3.0]), np.array([0.0]), np.array([0]), eps=0.5)
    assert cert["violated_entries"] == 0 and cert["certified"]


def test_duals_given_in_float32_are_still_checked_in_float64():
    # float32 arithmetic gives rc = 3 − 2^25 + (2^25 − 4) = 0; exactly it is −1 (tolerance 6.7e-5)
    C = np.array([[3]], F32)
    u, v = np.array([2.0**25], F32), np.array([-(2.0**25 - 4)], F32)
    cert = certify_dense(C, 3.0, u, v, np.array([0]), eps=1e-12)
    assert cert["violated_entries"] == 1 and cert["worst_reduced_cost"] == -1.0


def test_a_matched_pair_above_tolerance_is_named_by_the_worst_row_with_its_own_tolerance():
    # v = (0.1, 0.1 + 1e-9): matched rc = 0.3 − 0.1 = 0.2 (row 0) and 0.4 − 0.1 = 0.3 (row 1),
    # tol(row 1) = 1e-6 · (0.4 + 0 + 0.1); entry (0, 1) is −1e-9, negative but within tolerance
    C = np.array([[0.3, 0.1], [0.2, 0.4]], F32)
    v = np.array([0.1, float(F32(0.1)) + 1e-9])
    cert = certify_dense(C, 0.7, np.zeros(2), v, np.array([0, 1]))
    assert cert["violated_entries"] == 0 and cert["unslack_matched"] == 2
    assert cert["reason"] == ("2 matched pairs have reduced cost above tolerance (complementary slackness fails: "
                              "the assignment is not optimal for these duals); e.g. row 1 → column 1: "
                              "rc = 0.3 > tol = 5e-07")


def test_duals_of_the_wrong_shape_are_refused_by_shape():
    with pytest.raises(ValueError, match=r"^duals must have shape \(3,\), got \(2,\) and \(3,\)$"):
        certify_dense(np.eye(3, dtype=F32), 0.0, np.zeros(2), np.zeros(3), np.arange(3))


def test_a_match_of_the_wrong_length_or_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"^match must have shape \(3,\), got \(2,\)$"):
        square_assignment(np.array([0, 1]), 3, 3)
    with pytest.raises(ValueError, match="not a maximal one-to-one"):
        square_assignment(np.array([2, 0]), 2, 2)  # column 2 does not exist


@pytest.mark.parametrize("chunk_rows", [None, 1, 2])
@pytest.mark.parametrize("shape", [(3, 4), (5, 7), (4, 3)])
def test_non_square_problems_are_certified_in_any_row_blocks_and_their_dual_bound_is_the_optimum(shape, chunk_rows):
    C = np.random.default_rng(sum(shape)).random(shape, dtype=F32)
    match, total, u, v = solve_lap(C)
    cert = certify_dense(C, total, u, v, match, chunk_rows=chunk_rows)
    r, c = linear_sum_assignment(C.astype(np.float64))
    assert cert["certified"] and cert["dual_bound"] == pytest.approx(C[r, c].astype(np.float64).sum(), rel=1e-6)


def test_refinement_that_fixes_the_duals_in_one_round_says_so():
    # v = (5, 5), u = (0, 0) is infeasible (rc = C − 5 < 0); refined u = C_{i,i} − 5 = −4 makes
    # rc = [[0, 1], [1, 0]] ≥ 0 with no column lowered: one round
    C = np.array([[1, 2], [2, 1]], F32)
    cert = certify_dense(C, 2.0, np.zeros(2), np.full(2, 5.0), np.array([0, 1]), refine=True)
    assert cert == record(dual_bound=2.0, dual_refinements=1)


def test_refinement_follows_a_chain_of_duals_one_column_per_round_until_certified():
    """Identity is optimal (C_ii = 1, C_{i,i+1} = 0.5, elsewhere 1000: any other permutation has
    a cycle through a 1000). Its exact duals are v_j = −j/2, u_i = 1 + i/2; given v_j + 0.1 for
    j ≥ 1, only entry (0, 1) is violated; lowering v_1 raises u_1, which violates (1, 2), and so
    on: n − 1 rounds that lower one column each, and a last one that finds nothing."""
    n = 120
    C = np.full((n, n), 1000, F32)
    np.fill_diagonal(C, 1)
    C[np.arange(n - 1), np.arange(1, n)] = 0.5
    v = -0.5 * np.arange(n) + np.where(np.arange(n) >= 1, 0.1, 0.0)
    u = 1 - v  # matched slack 0: only the one violation starts the refinement
    cert = certify_dense(C, float(n), u, v, np.arange(n), refine=True)
    assert cert["certified"] and cert["dual_refinements"] == n
    assert cert["dual_bound"] == pytest.approx(n, rel=1e-12)


def test_a_refinement_that_cannot_converge_says_why_and_stops_at_its_scan_budget():
    C = np.random.default_rng(3).random((6, 6), dtype=F32) * 10
    match, total, u, v = solve_lap(C)
    worse = np.roll(match, 1)
    cert = certify_dense(C, float(C[np.arange(6), worse].sum()), u, v, worse, refine=True)
    assert not cert["certified"]
    assert (f"the float64 dual refinement did not converge in {cert['dual_refinements']} rounds "
            "(a negative cycle: the assignment is not optimal)") in cert["reason"]
    sq, perm = _Square(C), square_assignment(worse, 6, 6)
    cm = sq.pairs(perm)
    # the first round scans all 6 rows: a budget of 6 stops there, one of 7 does not
    assert refine_duals(sq, perm, cm, torch.from_numpy(v.astype(np.float64)), EPS, 6, max_scans=6)[2:] == (1, False)
    assert refine_duals(sq, perm, cm, torch.from_numpy(v.astype(np.float64)), EPS, 6, max_scans=7)[2] >= 2


# --- the precision flag ------------------------------------------------------------------

def test_a_norm_exactly_at_the_limit_is_not_flagged_and_the_next_float_is():
    limit = 1e-3 * 2.0**24 - 1  # 2⁻²⁴(a + m) ≤ 1e-3·m with m = 1
    assert [len(f) for f in imprecise_features(np.array([limit]), np.ones(3))] == [0, 0]
    assert imprecise_features(np.array([np.nextafter(limit, np.inf)]), np.ones(3))[0].tolist() == [0]
    assert imprecise_features(np.array([16777.0]), np.ones(3))[0].tolist() == [0]  # (limit + 2m would pass)


def test_norms_given_in_float32_are_judged_in_float64():
    # 16776.216796875 is a float32 just above the float64 limit 16776.216, but equal to the
    # limit float32 arithmetic would give (1e-3 rounded to float32)
    x = np.array([1, 1, 1, 16776.216796875], F32)
    assert [f.tolist() for f in imprecise_features(x, x)] == [[3], [3]]


@pytest.mark.parametrize("other,flagged", [
    (np.zeros(4), [2]),  # all candidates alike: only the non-finite one
    (np.full(4, np.inf), [2]),  # no finite norm on the other side
    (np.full(4, 0.5), [1, 2]),  # a median below 1 still sets the scale: 1e6 > 16776 · 0.5
])
def test_the_other_sides_median_sets_the_scale_and_degenerate_sides_flag_only_non_finite_norms(other, flagged):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        assert imprecise_features(np.array([1.0, 1e6, np.nan]), other)[0].tolist() == flagged


def test_the_precision_report_names_the_worst_feature_on_each_side_and_its_ratio_to_the_other_median():
    nx = np.array([1, 1, 2e9, 1, 1, 1, 1, np.nan])  # two flagged; NaN counts as the worst
    ny = np.array([2, 2, 2, 2e12])  # median 2; dst 3 is 2e12 / median(nx) = 2e12 / 1
    rep = precision_report(nx, ny)
    assert rep["imprecise_src"] == [2, 7] and rep["imprecise_dst"] == [3]
    assert rep["precision_limit"] == pytest.approx(16776.216, abs=1e-9)
    assert rep["precision_reason"] == (
        "2 src feature(s) too large for float32 costs, e.g. src feature 7 with folded-vector norm nan = nan × the "
        "median dst norm 2 (limit 16776 ×): its costs' float32 rounding exceeds the differences between its "
        "candidates; 1 dst feature(s) too large for float32 costs, e.g. dst feature 3 with folded-vector norm "
        "2e+12 = 2e+12 × the median src norm 1 (limit 16776 ×): its costs' float32 rounding exceeds the "
        "differences between its candidates")
    ratio = precision_report(np.array([1, 1, 4e9]), np.array([2.0, 2.0]))["precision_reason"]
    assert "norm 4e+09 = 2e+09 × the median dst norm 2" in ratio


def test_the_precision_report_uses_the_relative_precision_it_is_given():
    nx = np.array([1.0, 1.0, 20.0])  # 20 × the median: fine at 1e-3, too large at 1e-6 (limit ≈ 15.8 ×)
    assert precision_report(nx, np.ones(3))["imprecise_src_count"] == 0
    rep = precision_report(nx, np.ones(3), rel=1e-6)
    assert rep["imprecise_src"] == [2] and rep["precision_limit"] == pytest.approx(1e-6 * 2**24 - 1)
