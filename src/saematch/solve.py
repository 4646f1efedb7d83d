"""Exact linear assignment with lapjv (Jonker–Volgenant), non-square by padding."""

from __future__ import annotations

import numpy as np
from lapjv import lapjv

# lapjv 1.3.x indexes with int i * int dim: it segfaults from n = 46342 (lap_solvers.md).
LAPJV_MAX_N = 46340
SOLVERS = ("auto", "dense", "sparse")


def choose_solver(n_src: int, n_dst: int, solver: str = "auto", dense_max_gb: float = 6.0) -> str:
    """'dense' (lapjv on the full cost matrix) while it fits lapjv and ``dense_max_gb``, else 'sparse'."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    n = max(n_src, n_dst)
    fits = n <= LAPJV_MAX_N and 4 * n * n <= dense_max_gb * 2**30
    if solver == "dense" and n > LAPJV_MAX_N:
        raise ValueError(f"solver 'dense' cannot take n = {n} > {LAPJV_MAX_N} (lapjv's limit)")
    return solver if solver != "auto" else ("dense" if fits else "sparse")


def solve_lap(cost: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows to columns.

    Parameters
    ----------
    cost : (n_rows, n_cols) float32 array, max(n_rows, n_cols) ≤ LAPJV_MAX_N

    Returns
    -------
    match : (n_rows,) int32, the column of each row, in row order; -1 for rows left
        unmatched when n_rows > n_cols.
    total : float, the summed cost of the matched pairs, in float64.
    u, v : (n,) float64 dual potentials of the square problem padded to n = max(n_rows,
        n_cols) with zero costs: cost − u_i − v_j ≥ 0 everywhere, = 0 on matched pairs, up to
        float32 rounding; they certify the optimum (saematch.certify).

    Notes
    -----
    Minimises Σ_i cost[i, match[i]] over injective maps. Padding with a constant adds the
    same amount to every assignment, so the optimum over real pairs is unchanged.

    Examples
    --------
    >>> match, total, u, v = solve_lap(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]], np.float32))
    >>> match.tolist(), total
    ([1, 0, 2], 5.0)
    """
    cost = np.asarray(cost)
    if cost.ndim != 2:
        raise ValueError(f"expected a 2-D cost matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix contains NaN or Inf")
    n_rows, n_cols = cost.shape
    n = max(n_rows, n_cols)
    if n > LAPJV_MAX_N:
        raise ValueError(f"lapjv cannot solve n = {n} > {LAPJV_MAX_N}: use the sparse solver")
    if n_rows == 0:
        return np.empty(0, np.int32), 0.0, np.empty(0), np.empty(0)
    if n_rows == n_cols:
        square = np.ascontiguousarray(cost, dtype=np.float32)
    else:
        square = np.zeros((n, n), dtype=np.float32)
        square[:n_rows, :n_cols] = cost
    row_to_col, _, (_, u, v) = lapjv(square)  # (row→col, col→row, (float32 total, u, v))
    match = row_to_col[:n_rows].astype(np.int32)
    match[match >= n_cols] = -1
    matched = match >= 0
    total = float(cost[np.nonzero(matched)[0], match[matched]].astype(np.float64).sum())
    return match, total, u.astype(np.float64), v.astype(np.float64)
