"""Exact assignment beyond dense reach: candidates, sparse LAP, pricing until certified.

The cost is C_ij = ‖x_i‖² + ‖y_j‖² − 2‖x_i‖‖y_j‖·cos(x_i, y_j), float32; the n × n matrix is
never stored. Memory: Y as float32 unit rows (4 bytes per entry; each column tile's bf16 copy is
made on the fly), X streamed from disk when given as a :class:`RowFile`, plus O(n·(k + m))
edges and pricing additions: 4.0 GiB + those for a 131072 × 8193 pair (docs/solver.md). Given
X and Y as saematch.fold.FeatureRows (what saematch.match passes), the rows are made block by
block from the SAEs' tensors or files (saematch.sae.StoredSae), bitwise the same float32 rows:
Y's unit rows are then the only (n, p) float32 matrix.

1. Candidates, in one pass: per row and per column the k partners of highest cosine (ranking
   by cost or inner product loses true partners when norms vary; lap_solvers.md), plus the
   diagonal (so a perfect matching always exists).
2. Solve that sparse problem exactly (lap.lapmod); dual potentials follow from shortest paths
   on the candidate graph.
3. Price all n² pairs against the duals: if none has a reduced cost below −tolerance, the pass
   is the optimality certificate; else, for each row and each column, the lowest reduced costs
   below a small slack join the candidates (m of them, up to 4m where that many are negative),
   and back to 2.

Full passes run in tiles as one bf16 product (2.5× the float32 rate on CPUs with AVX512-BF16,
more on GPUs) with a rigorous error bound (:func:`screen_bound`): a pair is cleared when the
bound proves its reduced cost ≥ the slack, and recomputed in float32 otherwise. Every cost
that enters the LAP, the totals or the certificate is computed in float32 from the float32
rows, like the dense path's.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import numpy as np
import torch

from .certify import EPS, certificate, precision_report

log = logging.getLogger(__name__)

BF16_UNIT_ROUNDOFF = 2.0**-8


class ImpreciseFeatures(ValueError):
    """The sparse path failed on features flagged as too large for float32 costs (``precision``:
    saematch.certify.precision_report); dense lapjv would return an uncertified assignment."""

    def __init__(self, message: str, precision: dict):
        super().__init__(message)
        self.precision = precision


class RowFile(NamedTuple):
    """Float32 rows (n, p), C order, in ``path`` from byte ``offset`` (e.g. the data of an .npy)."""

    path: str
    n: int
    p: int
    offset: int = 0


def npy_rows(path: str) -> RowFile:
    """The rows of a 2-D float32 .npy file, without loading it."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if len(shape) != 2 or fortran or dtype != np.float32:
        raise ValueError(f"{path}: expected a C-order 2-D float32 array, got {dtype} {shape}")
    return RowFile(str(path), shape[0], shape[1], offset)


def _n_p(X) -> tuple[int, int]:
    return (X.n, X.p) if isinstance(X, RowFile) else tuple(X.shape)


def _made(X) -> bool:
    """X makes its rows on demand (saematch.fold.FeatureRows: ``rows(idx, device)``)."""
    return hasattr(X, "rows") and not isinstance(X, (RowFile, torch.Tensor))


def _read(X, rows: slice, device) -> torch.Tensor:
    """Rows of X as float32 on ``device`` (read from disk for a RowFile: pread, not mmap; made
    from the SAE's tensors for a FeatureRows)."""
    if _made(X):
        return X.rows(rows, device)
    if isinstance(X, RowFile):
        count = (rows.stop - rows.start) * X.p
        a = np.fromfile(X.path, dtype=np.float32, count=count, offset=X.offset + 4 * rows.start * X.p)
        if a.size != count:
            raise ValueError(f"{X.path}: truncated, expected {X.n} rows of {X.p} float32")
        return torch.from_numpy(a).view(-1, X.p).to(device)
    return X[rows].to(device, torch.float32)


def _blocks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def screen_bound(p: int) -> tuple[float, float]:
    """(a, b): |bf16 cosine estimate G̃ − float32-exact cosine| ≤ a + b·|G̃| for unit rows of length p.

    Rounding each input to bf16 (unit roundoff u = 2⁻⁸) moves each product by ≤ (2u + u²)|x_k y_k|;
    float32 accumulation adds ≤ γ_p Σ|x̃_k ỹ_k| (γ_p = p·2⁻²⁴ / (1 − p·2⁻²⁴)); Σ|x_k y_k| ≤ 1 for
    unit rows; rounding the output to bf16 adds ≤ u/(1 − u)·|G̃|. The 1.01 covers the second-order
    terms (unit rows are unit to float32 precision).
    """
    u, g = BF16_UNIT_ROUNDOFF, p * 2.0**-24 / (1 - p * 2.0**-24)
    return 1.01 * (2 * u + u * u + g * (1 + u) ** 2) + 1e-30, u / (1 - u)


def prepare(X, Y, device, chunk: int = 1024) -> dict:
    """Norms of X (streamed); Y's rows sorted by norm, as float32 unit rows.

    Sorting Y by norm keeps the norms within a column tile alike, so the tile's bf16 error
    bound stays tight; ``order`` maps the internal column index to Y's row.
    """
    n, p = _n_p(X)
    if _n_p(Y) != (n, p):
        raise ValueError(f"the sparse solver needs equal shapes, got {(n, p)} and {_n_p(Y)}")
    nx = torch.cat([_read(X, rows, device).norm(dim=1) for rows in _blocks(n, chunk)])
    ny = torch.cat([_read(Y, rows, device).norm(dim=1) for rows in _blocks(n, chunk)])
    for name, norms in (("X (src)", nx), ("Y (dst)", ny)):
        bad = (~torch.isfinite(norms)).nonzero().flatten()
        if len(bad):
            raise ValueError(f"feature vectors have NaN/Inf: row {int(bad[0])} of {name} has norm "
                             f"{float(norms[bad[0]])} in float32 ({len(bad)} such rows; folded parameters "
                             "overflowing float32?)")
    ny, order = ny.sort()
    where = torch.empty_like(order)
    where[order] = torch.arange(n, device=device)
    Yh = torch.empty((n, p), device=device)
    for rows in _blocks(n, chunk):
        Yh[where[rows]] = _unit(_read(Y, rows, device), ny[where[rows]])
    return {"X": X, "n": n, "p": p, "device": device, "nx": nx, "ny": ny, "x2": nx * nx, "y2": ny * ny,
            "Yh": Yh, "order": order, "where": where, "bound": screen_bound(p)}


def _y_bf16_buffers(S: dict, col_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reused buffers for :func:`_y_bf16`: a bf16 column tile and a 1024-row float32 step."""
    rows = min(col_chunk, S["n"])
    Yh = S["Yh"]
    return (torch.empty((rows, S["p"]), dtype=torch.bfloat16, device=Yh.device),
            torch.empty((min(1024, rows), S["p"]), device=Yh.device))


def _y_bf16(S: dict, cols: slice, buffers) -> torch.Tensor:
    """bf16(−2·y) of the (internal) columns cols, in the first rows of buffers[0], made through
    buffers[1] (:func:`_y_bf16_buffers`) in 1024-row float32 steps.

    −2·ny·(y/ny) differs from −2·y by float32 rounding (2⁻²³ relative), inside screen_bound's 1.01.
    Converting a column tile costs about 4% of its product with a 2048-row block (and no
    resident bf16 copy of Y: 2 bytes per entry saved).
    """
    Yh, ny = S["Yh"], S["ny"]
    out, tmp = buffers
    for step in _blocks(cols.stop - cols.start, len(tmp)):
        c = slice(cols.start + step.start, cols.start + step.stop)
        m = step.stop - step.start
        torch.mul(Yh[c], (-2.0 * ny[c])[:, None], out=tmp[:m])
        out[step].copy_(tmp[:m])
    return out[: cols.stop - cols.start]


def _unit(rows: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return rows / norms.clamp_min(1e-30)[:, None]


def _x_unit(S: dict, rows: slice) -> torch.Tensor:
    return _unit(_read(S["X"], rows, S["device"]), S["nx"][rows])


def _pair_costs(S: dict, xh: torch.Tensor, li: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Float32 costs of pairs (i, j); xh holds the unit rows of X with i = offset + li.

    Gathers into two reused buffers (fresh tensors per step would cost a page fault per page).
    """
    out = torch.empty(len(j), device=xh.device)
    step = min(len(j), max(256, 2**24 // S["p"]))
    buf_x, buf_y = (torch.empty((step, S["p"]), device=xh.device) for _ in range(2))
    for e in _blocks(len(j), step):
        m = e.stop - e.start
        torch.index_select(xh, 0, li[e], out=buf_x[:m])
        torch.index_select(S["Yh"], 0, j[e], out=buf_y[:m])
        dots = buf_x[:m].mul_(buf_y[:m]).sum(dim=1)
        ii, jj = i[e], j[e]
        out[e] = (S["x2"][ii] + S["y2"][jj] - 2.0 * (S["nx"][ii] * S["ny"][jj]) * dots).clamp_min(0.0)
    return out


def edge_costs(S: dict, rows: np.ndarray, cols: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Float32-exact costs (as float64) of the pairs (rows, cols), one sequential sweep over X."""
    device = S["device"]
    order = np.argsort(rows, kind="stable")
    r_sorted = rows[order]
    out = np.empty(len(rows))
    for block in _blocks(S["n"], chunk):
        lo, hi = np.searchsorted(r_sorted, [block.start, block.stop])
        if lo == hi:
            continue
        sel = order[lo:hi]
        i = torch.from_numpy(rows[sel]).to(device)
        j = torch.from_numpy(cols[sel]).to(device)
        out[sel] = _pair_costs(S, _x_unit(S, block), i - block.start, i, j).double().cpu().numpy()
    return out


def _merge_top(vals, idx, new_vals, new_idx, k, dim):
    """Keep the k largest values along dim of the concatenation."""
    v, i = torch.cat([vals, new_vals], dim), torch.cat([idx, new_idx], dim)
    keep = v.topk(k, dim=dim).indices
    return v.gather(dim, keep), i.gather(dim, keep)


def candidates(S: dict, k: int, chunk: int = 1024, col_chunk: int = 8192):
    """One bf16 pass: top-k by cosine per row and per column, plus the diagonal.

    Returns (rows, cols, costs) int64/int64/float64 unique pairs sorted by (row, col), with
    float32-exact costs (cols are internal: see :func:`prepare`).
    """
    n, device, ny = S["n"], S["device"], S["ny"]
    k = min(k, n)
    yb = _y_bf16_buffers(S, col_chunk)
    col_val = torch.full((k, n), -float("inf"), device=device)
    col_row = torch.zeros((k, n), dtype=torch.long, device=device)
    row_parts = []
    for rows in _blocks(n, chunk):
        xb = _x_unit(S, rows).to(torch.bfloat16)
        b = rows.stop - rows.start
        best_val = torch.full((b, k), -float("inf"), device=device)
        best_idx = torch.zeros((b, k), dtype=torch.long, device=device)
        for cols in _blocks(n, col_chunk):
            G = (xb @ _y_bf16(S, cols, yb).T).float()  # −2·ny_j·cos_ij: per column, cosine order reversed
            c = G.topk(min(k, b), dim=0, largest=False)
            col_val[:, cols], col_row[:, cols] = _merge_top(col_val[:, cols], col_row[:, cols], -c.values,
                                                            c.indices + rows.start, k, 0)
            G /= ny[None, cols].clamp_min(1e-30)  # −2·cos
            t = G.topk(min(k, G.shape[1]), dim=1, largest=False)
            best_val, best_idx = _merge_top(best_val, best_idx, -t.values, t.indices + cols.start, k, 1)
        row_parts.append((torch.arange(rows.start, rows.stop, device=device).repeat_interleave(k),
                          best_idx.reshape(-1)))
    diag = S["where"]  # the pairs (i, i) in internal columns
    r = torch.cat([*(p[0] for p in row_parts), col_row.reshape(-1), torch.arange(n, device=device)]).cpu().numpy()
    c = torch.cat([*(p[1] for p in row_parts), torch.arange(n, device=device).repeat(k), diag]).cpu().numpy()
    r, c = _unique_pairs(n, r, c)
    return r, c, edge_costs(S, r, c, chunk)


def _unique_pairs(n, rows, cols):
    key = np.unique(rows.astype(np.int64) * n + cols)  # sorted by (row, col), as lapmod needs
    return key // n, key % n


def _add_edges(S: dict, edges, new, chunk: int):
    """The union of the edges (rows, cols, costs) and the pairs new (rows, cols), both sorted."""
    n = S["n"]
    rows, cols, costs = edges
    key, new_key = rows * n + cols, new[0] * n + new[1]
    new_key = new_key[~np.isin(new_key, key, assume_unique=True)]
    r, c = new_key // n, new_key % n
    key = np.concatenate([key, new_key])
    order = np.argsort(key, kind="stable")
    return key[order] // n, key[order] % n, np.concatenate([costs, edge_costs(S, r, c, chunk)])[order]


LAPMOD_LARGE = 1e6  # lap.lapmod's "infinity": it refuses costs ≥ 1e6


def solve_candidates(n: int, rows, cols, costs) -> np.ndarray:
    """Exact minimum-cost perfect matching restricted to the candidate edges (lap.lapmod).

    Costs from LAPMOD_LARGE / 8 up are scaled by a power of two (exact in float64, the same
    optimum) so that lapmod accepts them and its intermediate values stay below its infinity.
    """
    from lap import lapmod

    costs = np.asarray(costs, dtype=np.float64)
    top = float(costs.max()) if len(costs) else 0.0
    if top >= LAPMOD_LARGE / 8:
        costs = costs * 2.0 ** -np.ceil(np.log2(top / (LAPMOD_LARGE / 8)))
    starts = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
    total, x, _ = lapmod(n, costs, starts, cols.astype(np.int32))
    if (x < 0).any() or not np.isfinite(total):  # lapmod returns an infinite total, not −1, when none exists
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


def _lowest(a: torch.Tensor, rc: torch.Tensor, m: int) -> torch.Tensor:
    """Mask of the lowest rc within each group of a (1-D): m per group, more (up to 4m) where
    that many of the group's rc are negative."""
    keep = torch.zeros(len(rc), dtype=torch.bool, device=rc.device)
    if len(rc) == 0:
        return keep
    a = a.long()
    by_rc = rc.argsort()
    order = by_rc[a[by_rc].sort(stable=True).indices]  # by a, then by rc
    a_sorted = a[order]
    rank = torch.arange(len(order), device=rc.device) - torch.searchsorted(a_sorted, a_sorted)
    cap = torch.bincount(a[rc < 0], minlength=int(a_sorted[-1]) + 1).clamp(m, 4 * m)
    keep[order[rank < cap[a_sorted]]] = True
    return keep


def price(S: dict, u, v, slack: float, m: int = 32, chunk: int = 1024, col_chunk: int = 8192,
          eps: float = EPS):
    """Full pass over all n² pairs against the duals (u, v) (u by row of X, v by internal column).

    A pair is violated when its reduced cost rc = C − u − v < −eps·(|C| + |u| + |v|), its own
    scale (saematch.certify: the dense path's rule; a cleared pair has rc ≥ slack ≥ 0). Each
    tile's bf16 estimate gives a lower bound rc̃ − b·|G̃| − 2a·nx·ny on rc (:func:`screen_bound`,
    plus 16 ulps for the float32 sums); every pair whose bound is ≥ slack is cleared, and the
    rest (about 50–250 per row on SAE-like pairs) are recomputed in float32 (costs) and float64
    (duals): those decide violations and each row's minimum.

    Returns row_min (n,) float64 (min(0, min_j rc_ij): exact where negative), the number of
    violated pairs, new pairs (rows, cols) sorted unique: per row and per column the lowest rc
    below ``slack`` (:func:`_lowest`), and the worst −rc / (|C| + |u| + |v|) (0 if none is
    negative). Rows are complete within a block, so their selection is final there; columns
    keep a pool, cut to its per-column selection whenever it outgrows 2·m·n pairs, so memory
    stays O(m·n).
    """
    n, device = S["n"], S["device"]
    a, b_rel = S["bound"]
    nx, ny, x2, y2 = S["nx"], S["ny"], S["x2"], S["y2"]
    u64, v64 = torch.from_numpy(u).to(device), torch.from_numpy(v).to(device)
    w_col = (y2 - v64).float()
    w_col_max = float(w_col.abs().max())
    row_min = torch.zeros(n, dtype=torch.float64, device=device)
    yb = _y_bf16_buffers(S, col_chunk)
    violated = n_hits = n_below = 0
    worst = 0.0
    by_row, pool, pool_len, pool_max = [], [], 0, 2 * m * n
    for rows in _blocks(n, chunk):
        x = _read(S["X"], rows, device)
        xb = x.to(torch.bfloat16)
        nx_r = nx[rows]
        xh = _unit(x, nx_r)
        del x
        w_row = (x2[rows] - u64[rows]).float()[:, None]
        # float32 rounding of the sums that form r, 16 ulps of their largest term
        margin = 2.0**-20 * (float(w_row.abs().max()) + w_col_max + 2.0 * float(nx_r.max()) * float(ny.max()))
        hits = []
        for cols in _blocks(n, col_chunk):
            G = (xb @ _y_bf16(S, cols, yb).T).float()  # −2 x·y, estimated
            r = G.abs().mul_(-b_rel)
            r += G
            r += w_row
            r += w_col[None, cols]
            r.addr_(nx_r, ny[cols], alpha=-2 * a)  # rc̃ − b·|G̃| − 2a·nx·ny ≤ rc (+ margin)
            del G
            li, lj = (r < slack + margin).nonzero(as_tuple=True)
            hits.append((li, lj + cols.start))
            del r
        li, j = (torch.cat(h) for h in zip(*hits))
        del hits
        i = li + rows.start
        c = _pair_costs(S, xh, li, i, j).double()  # float32 costs, float64 duals
        rc = c - u64[i] - v64[j]
        n_hits += len(rc)
        scale = c.abs_().add_(u64[i].abs()).add_(v64[j].abs())  # tolerance eps·scale, per pair
        violated += int((rc < -eps * scale).sum())
        if len(rc):
            worst = max(worst, -float((rc / scale.clamp_min(1e-300)).min()))
        row_min[rows] = row_min[rows].scatter_reduce(0, li, rc.clamp_max(0.0), "amin")
        below = rc < slack
        i, j, rc = i[below].int(), j[below].int(), rc[below]
        n_below += len(rc)
        keep = _lowest(i, rc, m)
        by_row.append((i[keep], j[keep]))
        pool.append((i, j, rc))
        pool_len += len(rc)
        if pool_len > pool_max:
            pool = [_column_cut(pool, m)]
            pool_len = len(pool[0][2])
            pool_max = max(pool_max, 2 * pool_len)
    i, j, _ = _column_cut(pool, m)
    i, j = (torch.cat([*(t[s] for t in by_row), x]) for s, x in ((0, i), (1, j)))
    new = _unique_pairs(n, i.cpu().numpy(), j.cpu().numpy())
    log.info("pricing: %d pairs (%.1f per row) not cleared by the bf16 screen, recomputed in float32; "
             "%d below the slack, %d selected", n_hits, n_hits / n, n_below, len(new[0]))
    return row_min.cpu().numpy(), violated, new, worst


def _column_cut(pool, m: int):
    """The pool's pairs (i, j, rc) that :func:`_lowest` selects per column."""
    i, j, rc = (torch.cat(t) for t in zip(*pool))
    keep = _lowest(j, rc, m)
    return i[keep], j[keep], rc[keep]


def solve_sparse(X, Y, k: int = 32, chunk: int = 1024, max_rounds: int = 100,
                 eps: float = EPS, m: int = 32, slack_rel: float = 0.003, col_chunk: int = 8192,
                 device=None):
    """Exact, certified assignment of the rows of X to the rows of Y (square, n × p each).

    X, Y are float32 tensors or :class:`RowFile` s (X is then streamed from disk each pass).
    ``slack_rel`` · (mean matched cost) is the reduced-cost slack below which pricing adds
    pairs. Returns match (n,) int32, costs of the matched pairs (n,) float64, the certificate
    dict, and seconds per stage.
    """
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) or _made(X) else torch.device("cpu")
    seconds = {"candidates": 0.0, "solve": 0.0, "duals": 0.0, "pricing": 0.0}
    t = time.perf_counter()
    S = prepare(X, Y, device, chunk)
    n, order = S["n"], S["order"].cpu().numpy()
    precision = precision_report(S["nx"].double().cpu().numpy(), S["ny"][S["where"]].double().cpu().numpy())
    if precision["precision_reason"]:
        log.warning("sparse: %s", precision["precision_reason"])
    edges = candidates(S, k, chunk, col_chunk)
    seconds["candidates"] = time.perf_counter() - t
    log.info("sparse: %d candidate edges (k=%d, %.1f per row) in %.1f s", len(edges[0]), k,
             len(edges[0]) / n, seconds["candidates"])
    for rounds in range(1, max_rounds + 1):
        rows, cols, costs = edges
        t = time.perf_counter()
        x = solve_candidates(n, rows, cols, costs)
        seconds["solve"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            u, v = duals_from_matching(n, rows, cols, costs, x)
        except RuntimeError as exc:  # float64 rounding of costs at an outlier's scale
            if precision["precision_reason"]:
                raise ImpreciseFeatures(f"sparse path refused: {exc}; {precision['precision_reason']}",
                                        precision) from exc
            raise
        seconds["duals"] += time.perf_counter() - t
        matched_cost = costs[np.searchsorted(rows * n + cols, np.arange(n) * n + x)]
        primal = float(matched_cost.sum())
        t = time.perf_counter()
        row_min, violated, extra, worst = price(S, u, v, slack_rel * primal / n, m, chunk, col_chunk, eps)
        seconds["pricing"] += time.perf_counter() - t
        log.info("sparse round %d: total %.10g on %d edges, %d violated pairs, worst reduced cost %.3g, "
                 "%.0f s so far (%s)", rounds, primal, len(rows), violated, row_min.min(), sum(seconds.values()),
                 ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
        if violated == 0:
            break
        t = time.perf_counter()
        edges = _add_edges(S, edges, extra, chunk)
        seconds["pricing"] += time.perf_counter() - t
    else:
        log.warning("sparse: not certified after %d rounds", rounds)
    cert = sparse_certificate(S, primal, u, v, x, matched_cost, row_min, violated, worst, rounds, eps, precision)
    return order[x].astype(np.int32), matched_cost, cert, seconds


def sparse_certificate(S: dict, primal: float, u, v, x, matched_cost, row_min, violated: int, worst: float,
                       rounds: int, eps: float = EPS, precision: dict | None = None) -> dict:
    """The certificate of the sparse path, by the dense path's criteria (saematch.certify):
    violations from the last pricing pass, complementary slackness per matched pair (x in
    internal columns), and the precision flag from the feature norms (dst in Y's row order)."""
    rc = matched_cost - u - v[x]
    unslack = int((rc > eps * (np.abs(matched_cost) + np.abs(u) + np.abs(v[x]))).sum())
    if precision is None:
        nx = S["nx"].double().cpu().numpy()
        ny = S["ny"][S["where"]].double().cpu().numpy()  # sorted norms back in Y's row order
        precision = precision_report(nx, ny)
    return certificate(primal, u, v, row_min, violated, "sparse lapmod + pricing", rounds, eps, unslack=unslack,
                       precision=precision, worst_violation_rel=worst)


def sparse_device_bytes(X, Y, k: int = 32, chunk: int = 1024, col_chunk: int = 8192) -> int:
    """Device memory of :func:`solve_sparse`: Y's float32 unit rows, a bf16 column tile and its
    float32 step, a chunk × col_chunk block of products (float32, three at once while screening),
    X's rows of one chunk, and 256 MiB for norms, candidates and slack."""
    n, p = _n_p(Y)
    return 4 * n * p + 6 * col_chunk * p + 12 * chunk * col_chunk + 4 * chunk * p + 2**28
