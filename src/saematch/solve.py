"""Exact linear assignment with lapjv (Jonker–Volgenant), non-square by padding."""

from __future__ import annotations

import numpy as np
from lapjv import lapjv


def solve_lap(cost: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-cost one-to-one assignment of rows to columns.

    Parameters
    ----------
    cost : (n_rows, n_cols) float32 array

    Returns
    -------
    match : (n_rows,) int32, the column of each row, in row order; -1 for rows left
        unmatched when n_rows > n_cols.
    total : float, the summed cost of the matched pairs, in float64.

    Notes
    -----
    Minimises Σ_i cost[i, match[i]] over injective maps. A non-square matrix is padded to
    square with a constant (which adds the same amount to every assignment, so the optimum
    over real pairs is unchanged). lapjv works in float32 and is exact up to its rounding.

    Examples
    --------
    >>> match, total = solve_lap(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]], np.float32))
    >>> match.tolist(), total
    ([1, 0, 2], 5.0)
    """
    cost = np.asarray(cost)
    if cost.ndim != 2:
        raise ValueError(f"expected a 2-D cost matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix contains NaN or Inf")
    n_rows, n_cols = cost.shape
    if n_rows == 0:
        return np.empty(0, np.int32), 0.0
    n = max(n_rows, n_cols)
    if n_rows == n_cols:
        square = np.ascontiguousarray(cost, dtype=np.float32)
    else:
        square = np.zeros((n, n), dtype=np.float32)
        square[:n_rows, :n_cols] = cost
    row_to_col = lapjv(square)[0][:n_rows].astype(np.int32)  # lapjv returns (row→col, col→row, duals)
    row_to_col[row_to_col >= n_cols] = -1
    matched = row_to_col >= 0
    total = float(cost[np.nonzero(matched)[0], row_to_col[matched]].astype(np.float64).sum())
    return row_to_col, total
