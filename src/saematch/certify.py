"""Optimality certificates from dual potentials (LP duality of the assignment problem).

For costs C (n × n, padded with zeros if not square) and potentials u, v, the reduced costs
rc_ij = C_ij − u_i − v_j. If rc ≥ 0 everywhere, Σu + Σv is a lower bound on every assignment's
cost, so an assignment of that cost is optimal. In general, lowering each u_i by
max(0, −min_j rc_ij) makes the duals feasible, so

    optimum ≥ D = Σu + Σv + Σ_i min(0, min_j rc_ij),   gap to the optimum ≤ primal − D.

An entry counts as violated when rc_ij < −EPS · M, M the largest |C|, |u| or |v| of its row
block: the solvers work in float32, and their dual updates accumulate rounding of a few ulps of
the cost scale (lapjv at n = 16384: worst rc ≈ −1.4e-6 for M ≈ 40), far inside EPS · M. The
gap bound counts every negative reduced cost all the same. An assignment is certified when no
entry is violated and its gap bound is within GAP_EPS of its total (complementary slackness:
matched pairs have reduced cost 0).
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6
GAP_EPS = 1e-6


def block_stats(C: torch.Tensor, u: torch.Tensor, v: torch.Tensor, eps: float = EPS):
    """Per-row minimum reduced cost (float64) and the number of violated entries of a block.

    C (rows, n) float32 and ≥ 0; u (rows,), v (n,) float32 on the same device.
    """
    rc = (C - u[:, None]).sub_(v[None, :])
    violated = int((rc < -eps * violation_scale(C, u, v)).sum())
    return rc.min(dim=1).values.double(), violated


def violation_scale(C: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """M: the largest magnitude among the block's costs and potentials."""
    return max(float(C.max()), float(u.abs().max()), float(v.abs().max()), 1e-30)


def certificate(primal: float, u: np.ndarray, v: np.ndarray, row_min: np.ndarray, violated: int,
                solver: str, rounds: int, eps: float = EPS) -> dict:
    """The provenance record of one assignment's certificate (all sums in float64)."""
    dual = float(np.sum(u, dtype=np.float64) + np.sum(v, dtype=np.float64)
                 + np.minimum(row_min, 0).sum(dtype=np.float64))
    gap = max(0.0, primal - dual)
    return {
        "certified": violated == 0 and gap <= GAP_EPS * max(1.0, abs(primal)),
        "worst_reduced_cost": float(row_min.min()) if len(row_min) else 0.0,
        "violated_entries": int(violated),
        "tolerance_rel": eps,
        "dual_bound": dual,
        "gap_bound": gap,
        "solver": solver,
        "rounds": int(rounds),
    }


def certify_dense(cost: np.ndarray, primal: float, u: np.ndarray, v: np.ndarray,
                  solver: str = "lapjv", rounds: int = 1, chunk_rows: int = 2048, eps: float = EPS) -> dict:
    """Check every entry of a dense (n_rows, n_cols) cost matrix against duals of its padded square."""
    n_rows, n_cols = cost.shape
    n = max(n_rows, n_cols)
    u32, v32 = torch.from_numpy(u.astype(np.float32)), torch.from_numpy(v.astype(np.float32))
    row_min = np.empty(n)
    violated = 0
    C_all = torch.from_numpy(cost)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(start + chunk_rows, n))
        if n_rows == n_cols:
            C = C_all[rows]
        else:  # the zero padding of solve_lap
            C = torch.zeros(rows.stop - rows.start, n)
            real = slice(rows.start, min(rows.stop, n_rows))
            if real.start < real.stop:
                C[: real.stop - real.start, :n_cols] = C_all[real]
        row_min[rows], bad = block_stats(C, u32[rows], v32, eps)
        violated += bad
    return certificate(primal, u, v, row_min, violated, solver, rounds, eps)
