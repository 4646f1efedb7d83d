"""A certificate never lies, whatever the scales: one feature with an outlier threshold.

Oracles share no code with saematch's solver or certificate: float64 costs from the folded
parameters with scipy's cdist, optima from scipy's linear_sum_assignment, exact duals of the
float32 matrix from lapjv in float64 (force_doubles).
"""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from lapjv import lapjv
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from saematch.certify import certify_dense
from saematch.fold import fold
from saematch.match import match_pair
from saematch.sae import Sae
from conftest import random_sae

F, D, OUTLIER = 512, 32, 7
SCALES = [1.0, 1e3, 1e6, 1e9]
FLAGGED = {1.0: False, 1e3: False, 1e6: True, 1e9: True}  # float32 cannot resolve θ ≥ 1e6 here


def sae_pair(theta: float, side: str, seed: int = 0, F: int = F, D: int = D) -> tuple[Sae, Sae]:
    """A layer pair: 70% of src's features persist (perturbed, threshold jittered, permuted),
    the rest are fresh; feature OUTLIER of ``side`` gets threshold ``theta``."""
    src = random_sae(d=D, F=F, seed=seed)
    fresh = random_sae(d=D, F=F, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 100)
    perm = torch.randperm(F, generator=g)
    keep = torch.rand(F, generator=g) < 0.7
    W_dec = torch.where(keep[:, None], src.W_dec + 0.3 * torch.randn(F, D, generator=g) / D**0.5, fresh.W_dec)
    W_enc = torch.where(keep[None, :], src.W_enc + 0.3 * torch.randn(D, F, generator=g) / D**0.5, fresh.W_enc)
    b_enc = torch.where(keep, src.b_enc, fresh.b_enc)
    th = torch.where(keep, src.threshold * (1 + 0.2 * torch.rand(F, generator=g)), fresh.threshold)
    dst = Sae(W_enc=W_enc[:, perm], b_enc=b_enc[perm], W_dec=W_dec[perm], b_dec=src.b_dec, threshold=th[perm])
    saes = {"src": src, "dst": dst}
    t = saes[side].threshold.clone()
    t[OUTLIER] = theta
    s = saes[side]
    saes[side] = Sae(s.W_enc, s.b_enc, s.W_dec, s.b_dec, t)
    saes["src"] = dataclasses.replace(saes["src"], source={"where": "/hub/layer_3/params.npz"})
    saes["dst"] = dataclasses.replace(saes["dst"], source={"where": "/hub/layer_4/params.npz"})
    return saes["src"], saes["dst"]


def folded64(sae: Sae) -> np.ndarray:
    """[W_dec, W_enc.T, b_enc] of the folded SAE, float64."""
    f = fold(sae)
    return np.concatenate([f.W_dec.double().numpy(), f.W_enc.T.double().numpy(), f.b_enc.double().numpy()[:, None]],
                          axis=1)


def float64_costs(src: Sae, dst: Sae) -> np.ndarray:
    return cdist(folded64(src), folded64(dst), "sqeuclidean")


def exact_duals(C32: np.ndarray):
    """The optimum of the float32 matrix and its duals, in float64 (lapjv with doubles)."""
    x, _, (_, u, v) = lapjv(C32.astype(np.float64), force_doubles=True)
    return x.astype(np.int32), float(C32[np.arange(len(x)), x].astype(np.float64).sum()), u, v


@pytest.mark.parametrize("side", ["src", "dst"])
@pytest.mark.parametrize("theta", SCALES)
def test_a_certified_assignment_is_the_float64_optimum_and_unresolvable_outliers_are_flagged(theta, side, caplog):
    src, dst = sae_pair(theta, side)
    with caplog.at_level(logging.WARNING, logger="saematch.match"):
        cols, stats = match_pair(src, dst, device="cpu")
    cert = stats["certificate"]
    C64 = float64_costs(src, dst)
    r, c = linear_sum_assignment(C64)
    opt = C64[r, c].sum()
    ours = C64[np.arange(F), cols["match"]].sum()
    outlier_part = C64[OUTLIER, c[OUTLIER]] if side == "src" else C64[r[c == OUTLIER][0], OUTLIER]
    rest = opt - outlier_part  # the optimum's share of the ordinary rows
    assert cert["certified"] == (not FLAGGED[theta])
    if cert["certified"]:
        assert abs(ours - opt) <= 1e-9 * rest
        assert cert["reason"] is None and not caplog.records
    else:
        assert cert[f"imprecise_{side}"] == [OUTLIER] and cert[f"imprecise_{side}_count"] == 1
        other = "dst" if side == "src" else "src"
        assert cert[f"imprecise_{other}_count"] == 0
        norm = np.linalg.norm(folded64(src if side == "src" else dst)[OUTLIER])
        assert f"{side} feature {OUTLIER} with folded-vector norm {norm:.3g}" in cert["reason"]
        where = {"src": "/hub/layer_3/params.npz (layer L, src)",
                 "dst": "/hub/layer_4/params.npz (layer L+1, dst)"}[side]
        warning = " ".join(rec.getMessage() for rec in caplog.records)
        assert f"{where} feature {OUTLIER} (threshold θ = {theta:.3g})" in warning
        assert f"{where} feature {OUTLIER}" in cert["reason"]
    if theta >= 1e9:  # the flag is no false alarm: float32 costs really give a worse float64 total
        assert ours - opt > 1e-6 * rest


@pytest.mark.parametrize("theta", SCALES)
def test_two_ordinary_rows_swapped_are_not_certified_even_with_feasible_optimal_duals(theta):
    src, dst = sae_pair(theta, "src")
    C32 = float64_costs(src, dst).astype(np.float32)
    x, total, u, v = exact_duals(C32)
    assert certify_dense(C32, total, u, v, x)["certified"]  # the optimum with its duals: certified
    worse = x.copy()
    worse[[0, 1]] = worse[[1, 0]]  # ordinary rows (OUTLIER = 7)
    worse_total = float(C32[np.arange(F), worse].astype(np.float64).sum())
    loss = float(C32[[0, 1], x[[1, 0]]].astype(np.float64).sum() - C32[[0, 1], x[[0, 1]]].astype(np.float64).sum())
    assert loss > 1e-3  # a real loss, far above the rows' tolerances, however small next to the total
    cert = certify_dense(C32, worse_total, u, v, worse)
    assert not cert["certified"]
    assert cert["violated_entries"] == 0 and cert["unslack_matched"] == 2  # (b) alone catches it
    assert "complementary slackness" in cert["reason"]
    assert cert["gap_bound"] >= loss - 1e-6 * abs(total)  # the true gap is within the bound
    refined = certify_dense(C32, worse_total, u, v, worse, refine=True)  # no duals make it optimal
    assert not refined["certified"] and refined["violated_entries"] > 0


def test_infeasible_duals_give_a_dual_bound_at_or_below_the_optimum_and_are_not_certified():
    src, dst = sae_pair(1.0, "src")
    C32 = float64_costs(src, dst).astype(np.float32)
    r, c = linear_sum_assignment(C32.astype(np.float64))
    opt = float(C32[r, c].astype(np.float64).sum())
    x, total, u, v = exact_duals(C32)
    assert total == pytest.approx(opt, rel=1e-12)
    raised = u.copy()
    raised[:5] += 3  # rows 0..4 now have reduced cost −3 on their matched pair: infeasible
    cert = certify_dense(C32, total, raised, v, x)
    assert not cert["certified"] and cert["violated_entries"] >= 5
    assert cert["worst_reduced_cost"] == pytest.approx(-3, abs=1e-9)
    # Σu + 15 + Σv − 15: the correction Σ min(0, row min) takes back exactly what was added
    assert cert["dual_bound"] == pytest.approx(opt, rel=1e-12) and cert["dual_bound"] <= opt + 1e-9 * opt
    assert cert["dual_bound"] == pytest.approx(numpy_dual_bound(C32, raised, v), rel=1e-12)
    assert raised.sum() + v.sum() == pytest.approx(opt + 15, rel=1e-12)  # the bound without the correction
    lowered = u.copy()
    lowered[:5] -= 3  # feasible but loose: the bound drops by exactly 15, slackness fails on 5 pairs
    cert = certify_dense(C32, total, lowered, v, x)
    assert not cert["certified"] and cert["violated_entries"] == 0 and cert["unslack_matched"] == 5
    assert cert["dual_bound"] == pytest.approx(opt - 15, rel=1e-12)
    assert cert["gap_bound"] == pytest.approx(15, rel=1e-9)


def numpy_dual_bound(C32, u, v) -> float:
    """Σu + Σv + Σ_i min(0, min_j (C_ij − u_i − v_j)), in float64 numpy."""
    rc = C32.astype(np.float64) - u[:, None] - v[None, :]
    return float(u.sum() + v.sum() + np.minimum(rc.min(axis=1), 0).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_any_infeasible_duals_give_the_corrected_dual_bound_below_the_float64_optimum(seed):
    """Random raises of every u_i (up to 10 × the mean matched cost): the certificate's dual
    bound is numpy's Σu + Σv + Σ min(0, row min), at or below scipy's optimum, though Σu + Σv
    alone is far above it."""
    src, dst = sae_pair(1.0, "src", seed=seed)
    C32 = float64_costs(src, dst).astype(np.float32)
    r, c = linear_sum_assignment(C32.astype(np.float64))
    opt = float(C32[r, c].astype(np.float64).sum())
    x, total, u, v = exact_duals(C32)
    raised = u + np.random.default_rng(seed).uniform(0, 10 * opt / F, F)
    assert raised.sum() + v.sum() > opt + opt  # uncorrected: about 6 × the optimum
    cert = certify_dense(C32, total, raised, v, x)
    assert not cert["certified"] and cert["violated_entries"] >= F - 5
    expected = numpy_dual_bound(C32, raised, v)
    assert cert["dual_bound"] == pytest.approx(expected, rel=1e-12)
    assert expected <= opt + 1e-9 * opt and cert["dual_bound"] <= opt + 1e-9 * opt
    assert cert["gap_bound"] == pytest.approx(total - expected, rel=1e-9, abs=1e-9 * opt)


@pytest.mark.parametrize("theta", [1.0, 1e9])
def test_a_single_entry_below_its_own_tolerance_flips_the_certificate(theta):
    src, dst = sae_pair(theta, "src")
    C32 = float64_costs(src, dst).astype(np.float32)
    x, total, u, v = exact_duals(C32)
    i, j = 3, int(x[4])  # an ordinary, unmatched entry
    tol = 1e-6 * (abs(float(C32[i, j])) + abs(u[i]) + abs(v[j]))
    for depth, certified in ((3.0, False), (1.2, False), (0.3, True)):  # 1.2: just below −tol
        C = C32.copy()
        C[i, j] = np.float32(u[i] + v[j] - depth * tol)
        rc = float(C[i, j]) - u[i] - v[j]
        assert (rc < -1e-6 * (abs(float(C[i, j])) + abs(u[i]) + abs(v[j]))) == (not certified)
        cert = certify_dense(C, total, u, v, x)
        assert cert["certified"] == certified
        assert cert["violated_entries"] == (0 if certified else 1) and cert["unslack_matched"] == 0
