"""Exact assignment beyond dense reach: candidates, sparse LAP, pricing until certified.

Memory O(n·k): the n × n cost matrix is never stored. Each full pass computes blocks of
C_ij = ‖x_i‖² + ‖y_j‖² − 2‖x_i‖‖y_j‖·cos(x_i, y_j) from the feature vectors, on the GPU when
present. Round 1 keeps, per row and per column, the k partners of highest cosine (ranking by
cost or inner product loses true partners when norms vary; lap_solvers.md) plus the diagonal
(so a perfect matching always exists), and solves that sparse problem exactly (lap.lapmod).
Dual potentials follow from shortest paths on the candidate graph. A pricing pass then checks
every pair's reduced cost against them; violating pairs join the candidates and the problem is
solved again, until a pass finds none: that pass is the optimality certificate.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .certify import EPS, block_stats, certificate, violation_scale

log = logging.getLogger(__name__)


def _blocks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def _prepared(X: torch.Tensor, Y: torch.Tensor):
    nx, ny = X.norm(dim=1), Y.norm(dim=1)
    Xh = X / nx.clamp_min(1e-30)[:, None]
    Yh = Y / ny.clamp_min(1e-30)[:, None]
    return Xh, Yh, nx, ny, nx * nx, ny * ny


def _cost_block(G, nx_b, ny, x2_b, y2):
    """C from cosines G (rows, n): one formula for candidates and pricing alike."""
    return (x2_b[:, None] + y2[None, :] - 2.0 * (nx_b[:, None] * ny[None, :]) * G).clamp_min_(0.0)


def candidates(prepared, k: int, chunk: int = 2048, U=None, V=None):
    """One pass: top-k by cosine per row and per column, plus the diagonal.

    ``prepared`` is :func:`_prepared` of X, Y. Returns (rows, cols, costs) int64/int64/float64
    (unique pairs) and, when the unit decoders U (n, d), V (n, d) are given, Feature Flow's
    top-1 (index, cosine) per row.
    """
    Xh, Yh, nx, ny, x2, y2 = prepared
    n, device = Xh.shape[0], Xh.device
    k = min(k, n)
    row_r, row_c, row_v = [], [], []
    col_cos = torch.full((k, n), -2.0, device=device)
    col_row = torch.zeros((k, n), dtype=torch.long, device=device)
    col_cost = torch.zeros((k, n), device=device)
    top1 = np.empty(n, np.int32)
    top1_cos = np.empty(n, np.float32)
    for rows in _blocks(n, chunk):
        G = Xh[rows] @ Yh.T  # (b, n) cosines
        C = _cost_block(G, nx[rows], ny, x2[rows], y2)
        best = G.topk(k, dim=1)
        row_r.append(torch.arange(rows.start, rows.stop, device=device).repeat_interleave(k))
        row_c.append(best.indices.reshape(-1))
        row_v.append(C.gather(1, best.indices).reshape(-1))
        kb = min(k, rows.stop - rows.start)
        cb = G.topk(kb, dim=0)  # (kb, n) best rows of this block per column
        all_cos = torch.cat([col_cos, cb.values])
        all_row = torch.cat([col_row, cb.indices + rows.start])
        all_cost = torch.cat([col_cost, C.gather(0, cb.indices)])
        keep = all_cos.topk(k, dim=0).indices
        col_cos, col_row, col_cost = all_cos.gather(0, keep), all_row.gather(0, keep), all_cost.gather(0, keep)
        if U is not None:
            b1 = (U[rows] @ V.T).max(dim=1)
            top1[rows], top1_cos[rows] = b1.indices.cpu().numpy(), b1.values.cpu().numpy()
    diag = torch.arange(n, device=device)
    diag_cost = (x2 + y2 - 2.0 * (nx * ny) * (Xh * Yh).sum(dim=1)).clamp_min(0.0)  # _cost_block's formula
    rows = torch.cat([*row_r, col_row.reshape(-1), diag]).cpu().numpy()
    cols = torch.cat([*row_c, torch.arange(n, device=device).repeat(k), diag]).cpu().numpy()
    costs = torch.cat([*row_v, col_cost.reshape(-1), diag_cost]).double().cpu().numpy()
    rows, cols, costs = _unique_edges(n, rows, cols, costs)
    return (rows, cols, costs), (top1, top1_cos)


def _unique_edges(n, rows, cols, costs):
    key = rows.astype(np.int64) * n + cols
    key, first = np.unique(key, return_index=True)  # sorted by (row, col), as lapmod needs
    return key // n, key % n, costs[first]


def solve_candidates(n: int, rows, cols, costs) -> np.ndarray:
    """Exact minimum-cost perfect matching restricted to the candidate edges (lap.lapmod)."""
    from lap import lapmod

    starts = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
    _, x, _ = lapmod(n, costs.astype(np.float64), starts, cols.astype(np.int32))
    if (x < 0).any():
        raise RuntimeError("the candidate graph has no perfect matching")
    return x.astype(np.int64)


def duals_from_matching(n: int, rows, cols, costs, x, max_iter: int | None = None):
    """Potentials (u, v) with c_ij − u_i − v_j ≥ 0 on every candidate edge, = 0 on x.

    v are shortest-path distances over arcs x_i → j of weight c_ij − c_{i,x_i} (Bellman–Ford,
    vectorised); u_i = c_{i,x_i} − v_{x_i}. A negative cycle would mean x is not optimal.
    """
    on_match = cols == x[rows]
    c_match = np.empty(n)
    c_match[rows[on_match]] = costs[on_match]
    src, w = x[rows], costs - c_match[rows]
    v = np.zeros(n)
    for _ in range(max_iter or n + 1):
        new = v.copy()
        np.minimum.at(new, cols, v[src] + w)
        if np.array_equal(new, v):
            break
        v = new
    else:
        raise RuntimeError("no potentials: the matching is not optimal on its candidates")
    return c_match - v[x], v


def price(prepared, u, v, chunk: int = 2048, per_row: int = 16, eps: float = EPS):
    """Full pass over all n² pairs: per-row min reduced cost, count and the worst violators.

    Returns row_min (n,) float64, violated (int) and up to ``per_row`` most negative
    violating pairs of each row as (rows, cols, costs).
    """
    Xh, Yh, nx, ny, x2, y2 = prepared
    n, device = Xh.shape[0], Xh.device
    u32 = torch.from_numpy(u.astype(np.float32)).to(device)
    v32 = torch.from_numpy(v.astype(np.float32)).to(device)
    row_min = np.empty(n)
    violated = 0
    new_r, new_c, new_v = [], [], []
    for rows in _blocks(n, chunk):
        C = _cost_block(Xh[rows] @ Yh.T, nx[rows], ny, x2[rows], y2)
        rmin, bad = block_stats(C, u32[rows], v32, eps)
        row_min[rows] = rmin.cpu().numpy()
        violated += bad
        if bad:
            rc = C - u32[rows, None] - v32[None, :]
            worst = (-rc).topk(min(per_row, n), dim=1)
            ok = (-worst.values) < -eps * violation_scale(C, u32[rows], v32)
            r = torch.arange(rows.start, rows.stop, device=device)[:, None].expand_as(ok)
            new_r.append(r[ok])
            new_c.append(worst.indices[ok])
            new_v.append(C.gather(1, worst.indices)[ok])
    if new_r:
        return row_min, violated, (torch.cat(new_r).cpu().numpy(), torch.cat(new_c).cpu().numpy(),
                                   torch.cat(new_v).double().cpu().numpy())
    return row_min, violated, None


def solve_sparse(X, Y, k: int = 32, chunk: int = 2048, U=None, V=None, max_rounds: int = 100,
                 eps: float = EPS):
    """Exact, certified assignment of the rows of X to the rows of Y (square, n × p each).

    Returns match (n,) int32, costs of the matched pairs (n,) float64, the certificate dict,
    Feature Flow's (top1, top1_cosine), and seconds per stage.
    """
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"the sparse solver needs equal widths, got {n} and {Y.shape[0]}")
    seconds = {"candidates": 0.0, "solve": 0.0, "duals": 0.0, "pricing": 0.0}
    t = time.perf_counter()
    prepared = _prepared(X, Y)
    (rows, cols, costs), top = candidates(prepared, k, chunk, U, V)
    seconds["candidates"] = time.perf_counter() - t
    log.info("sparse: %d candidate edges (k=%d, %.1f per row)", len(rows), k, len(rows) / n)
    for rounds in range(1, max_rounds + 1):
        t = time.perf_counter()
        x = solve_candidates(n, rows, cols, costs)
        seconds["solve"] += time.perf_counter() - t
        t = time.perf_counter()
        u, v = duals_from_matching(n, rows, cols, costs, x)
        seconds["duals"] += time.perf_counter() - t
        t = time.perf_counter()
        row_min, violated, extra = price(prepared, u, v, chunk, eps=eps)
        seconds["pricing"] += time.perf_counter() - t
        matched_cost = costs[np.searchsorted(rows * n + cols, np.arange(n) * n + x)]
        primal = float(matched_cost.sum())
        log.info("sparse round %d: total %.10g, %d violated pairs, worst reduced cost %.3g",
                 rounds, primal, violated, row_min.min())
        if violated == 0:
            cert = certificate(primal, u, v, row_min, 0, "sparse lapmod + pricing", rounds, eps)
            return x.astype(np.int32), matched_cost, cert, top, seconds
        rows, cols, costs = _unique_edges(n, np.concatenate([rows, extra[0]]),
                                          np.concatenate([cols, extra[1]]), np.concatenate([costs, extra[2]]))
    cert = certificate(primal, u, v, row_min, violated, "sparse lapmod + pricing", rounds, eps)
    log.warning("sparse: not certified after %d rounds", rounds)
    return x.astype(np.int32), matched_cost, cert, top, seconds
