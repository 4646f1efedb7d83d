"""Optimality certificates from dual potentials (LP duality of the assignment problem).

The certificate is about the float32 cost matrix C the solver solved (n × n, padded with zeros
if not square). For potentials u, v the reduced costs are rc_ij = C_ij − u_i − v_j, computed
here with C cast to float64 and float64 potentials, so the check itself adds no float32
rounding. If rc ≥ 0 everywhere, Σu + Σv bounds every assignment's cost from below. In general,
lowering each u_i by max(0, −min_j rc_ij) makes the duals feasible, so (rigorous, float64 sums)

    optimum ≥ D = Σu + Σv + Σ_i min(0, min_j rc_ij),   gap to the optimum ≤ primal − D.

Per-entry tolerance. Entry (i, j) is judged against its own scale,

    tol_ij = EPS · (|C_ij| + |u_i| + |v_j|),

never against a block or matrix maximum: one feature with huge costs (a threshold θ = 1e9
folds into a vector of norm ~1e9, costs ~1e18) widens only its own row's (or column's)
tolerances. An assignment x is **certified** when

  (a) no entry is violated: rc_ij ≥ −tol_ij for all (i, j);
  (b) complementary slackness holds pair by pair: rc_{i,x(i)} ≤ tol_{i,x(i)} for every matched
      pair of the padded square (a swapped or otherwise suboptimal assignment fails here even
      when the duals are feasible and its total is dominated by an outlier);
  (c) no feature is flagged as imprecise (:func:`imprecise_features`).

What (a) + (b) promise: for every other assignment π,
cost(π) ≥ cost(x) − Σ_{i: π(i) ≠ x(i)} (tol_{i,π(i)} + tol_{i,x(i)}), i.e. no exchange among
any set of rows gains more than the tolerances of the entries it touches, each measured on its
own scale. dual_bound and gap_bound are reported as well (rigorous float64 sums); they are
not part of the decision, since with an outlier they are dominated by its row.

Measured float32 dual noise of lapjv: the worst −rc_ij / (|C_ij| + |u_i| + |v_j|) over all n²
entries with lapjv's own duals (x86-64, 2 cores, lapjv 1.3.29), and what refinement did:

  ==============================================  ==============  ========  ==============  =========
  pair (float32 costs of folded vectors)          lapjv duals      violated  refinement      refined
                                                  worst −rc/scale  at 1e-6   rounds          worst
  ==============================================  ==============  ========  ==============  =========
  bench_solvers.py, n = 4096, p = 2304,           4.1e-08 …        0         0               –
  persist 0 / 0.4 / 0.7 / 0.95 (5 pairs)          9.3e-07
  bench_solvers.py, n = 16384, p = 256,           4.6e-07,         0, 1      0, 3            4.9e-07
  persist 0.7 / 0.4                               1.0e-06
  tests' random_sae pairs, F = 512 … 8192         7.1e-08 …        0 … 19    0 … 15          5.0e-07
                                                  1.8e-06
  θ log-uniform over 1e-3..1e2 (folded norms      2.6e-07 …        0 … 597   0 … 60          5.0e-07
  ~1..1e3, costs up to 3e6), F = 512 … 4096       2.5e-03
  ==============================================  ==============  ========  ==============  =========

Matched pairs' slack is within 3e-08 (lapjv sets u_i = C_{i,x(i)} − v_{x(i)} in float32), but
elsewhere its float32 duals carry the rounding of its shortest-path values, whose scale is the
matrix's largest costs, not the entry's: an entry of scale 8 was off by 2.7e-4 where costs
reach 3e6, which no per-entry EPS can absorb, while the assignment itself was optimal in every
case (identical to scipy's on the float64 matrix). So EPS = 1e-6 (16 float32 ulps of the
entry's own scale, finer than the float32 costs themselves are accurate) and, when lapjv's
duals miss it, certify_dense(refine=True) recomputes the duals in float64 for the given
assignment (:func:`refine_duals`): u_i = C_{i,x(i)} − v_{x(i)} (matched slack 0) and
Bellman–Ford relaxations v_j ← C_ij − u_i over the entries below −tol/2, re-scanning only the
rows whose u changed, until none is left; every pair above then certified with worst
−rc/scale ≤ 5.0e-07. A suboptimal assignment has a negative cycle: refinement does not
converge and the assignment stays uncertified. Cost: one full float64 pass (n = 16384: 2.1 s,
the former float32 check 2.0 s); with refinement ≈ 3 passes (6.4 s, against lapjv's 8–21 s).

Precision. Folding multiplies W_dec by θ and divides W_enc, b_enc by θ. A float32 cost entry
‖x‖² + ‖y‖² − 2x·y carries rounding ≈ 2⁻²⁴ (‖x_i‖ + ‖y_j‖)², while the differences that decide
between feature i's candidates are ≈ (‖x_i‖ + m)·m, m the median norm on the other side.
Feature i is flagged when the first exceeds PRECISION_REL = 1e-3 of the second, i.e. when
‖x_i‖ > (PRECISION_REL · 2²⁴ − 1) · m ≈ 16776 · m: its matches are decided by rounding.
Measured on tests' SAE pairs (median norm ≈ 3.4): float32 optima equal float64 ones up to
θ = 1e6 and differ from θ = 1e7 (some seeds) on; thresholds over 1e-3..1e2 give norms at most
~60 × the median (not flagged), θ = 1e6 gives ~3e5 × (flagged), θ = 1e9 ~3e8 × (flagged).
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6
REFINE_AT = 0.5  # refinement relaxes entries with rc < −REFINE_AT · tol
U32 = 2.0**-24  # float32 unit roundoff
PRECISION_REL = 1e-3
NORM_RATIO_LIMIT = PRECISION_REL / U32 - 1  # ≈ 16776
LISTED = 20  # feature indices listed in a certificate (the count is complete)


def imprecise_features(nx, ny, rel: float = PRECISION_REL) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the src and dst features whose float32 costs cannot resolve their candidates.

    nx (n_src,), ny (n_dst,): norms of the (folded) feature vectors. Feature i of one side is
    flagged when 2⁻²⁴·(‖x_i‖ + m)² > rel·(‖x_i‖ + m)·m, m the median norm of the other side
    (module docstring); a NaN or Inf norm is always flagged.
    """
    nx, ny = np.asarray(nx, np.float64), np.asarray(ny, np.float64)

    def side(a: np.ndarray, other: np.ndarray) -> np.ndarray:
        finite = other[np.isfinite(other)]
        m = float(np.median(finite)) if finite.size else 0.0
        if not m > 0:  # the other side is all zero: its candidates are all alike
            return np.flatnonzero(~np.isfinite(a))
        return np.flatnonzero(~(U32 * (a + m) <= rel * m))

    return side(nx, ny), side(ny, nx)


def precision_report(nx, ny, rel: float = PRECISION_REL) -> dict:
    """The certificate's precision fields for feature norms nx (src) and ny (dst)."""
    nx, ny = np.asarray(nx, np.float64), np.asarray(ny, np.float64)
    bad_src, bad_dst = imprecise_features(nx, ny, rel)
    parts = []
    for name, other, bad, norms, others in (("src", "dst", bad_src, nx, ny), ("dst", "src", bad_dst, ny, nx)):
        if len(bad):
            worst = int(bad[np.argmax(np.nan_to_num(norms[bad], nan=np.inf))])
            m = float(np.median(others[np.isfinite(others)]))
            parts.append(f"{len(bad)} {name} feature(s) too large for float32 costs, e.g. {name} feature {worst} "
                         f"with folded-vector norm {norms[worst]:.3g} = {norms[worst] / m:.3g} × the median "
                         f"{other} norm {m:.3g} (limit {(rel / U32 - 1):.0f} ×): its costs' float32 rounding "
                         "exceeds the differences between its candidates")
    return {
        "imprecise_src": [int(i) for i in bad_src[:LISTED]], "imprecise_src_count": int(len(bad_src)),
        "imprecise_dst": [int(i) for i in bad_dst[:LISTED]], "imprecise_dst_count": int(len(bad_dst)),
        "precision_limit": rel / U32 - 1,
        "precision_reason": "; ".join(parts) or None,
    }


def certificate(primal: float, u: np.ndarray, v: np.ndarray, row_min: np.ndarray, violated: int,
                solver: str, rounds: int, eps: float = EPS, *, unslack: int = 0, precision: dict | None = None,
                worst_violation_rel: float | None = None, refinements: int = 0,
                details: list[str] | None = None) -> dict:
    """The provenance record of one assignment's certificate (all sums in float64).

    violated: entries with rc < −tol; unslack: matched pairs with rc > tol; precision: from
    :func:`precision_report` (None: not checked); details: extra reasons (e.g. where the worst
    violation is), reported only when not certified.
    """
    dual = float(np.sum(u, dtype=np.float64) + np.sum(v, dtype=np.float64)
                 + np.minimum(row_min, 0).sum(dtype=np.float64))
    gap = max(0.0, primal - dual)
    precision = precision or {"imprecise_src": [], "imprecise_src_count": 0, "imprecise_dst": [],
                              "imprecise_dst_count": 0, "precision_limit": None, "precision_reason": None}
    reasons = []
    if violated:
        reasons.append(f"{violated} entries have reduced cost below −tolerance (duals infeasible: "
                       "some assignment may be cheaper)")
    if unslack:
        reasons.append(f"{unslack} matched pairs have reduced cost above tolerance (complementary "
                       "slackness fails: the assignment is not optimal for these duals)")
    if reasons and details:
        reasons.extend(details)
    if precision["precision_reason"]:
        reasons.append(precision["precision_reason"])
    return {
        "certified": not reasons,
        "worst_reduced_cost": float(row_min.min()) if len(row_min) else 0.0,
        "violated_entries": int(violated),
        "unslack_matched": int(unslack),
        "worst_violation_rel": None if worst_violation_rel is None else float(worst_violation_rel),
        "tolerance_rel": eps,
        "dual_bound": dual,
        "gap_bound": gap,
        "dual_refinements": int(refinements),
        "imprecise_src": precision["imprecise_src"],
        "imprecise_src_count": precision["imprecise_src_count"],
        "imprecise_dst": precision["imprecise_dst"],
        "imprecise_dst_count": precision["imprecise_dst_count"],
        "precision_limit": precision["precision_limit"],
        "reason": "; ".join(reasons) or None,
        "solver": solver,
        "rounds": int(rounds),
    }


def square_assignment(match: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """The permutation of the zero-padded n × n square (n = max(n_rows, n_cols)) behind ``match``.

    Real rows keep their columns; rows left unmatched (−1) take the padding columns and
    padding rows the real columns left over, in order (every such pairing costs 0).
    """
    match = np.asarray(match, np.int64)
    n = max(n_rows, n_cols)
    if match.shape != (n_rows,):
        raise ValueError(f"match must have shape ({n_rows},), got {match.shape}")
    used = match[match >= 0]
    if (used >= n_cols).any() or len(np.unique(used)) != len(used) or len(used) != min(n_rows, n_cols):
        raise ValueError(f"match is not a maximal one-to-one assignment of {n_rows} rows to {n_cols} columns")
    perm = np.empty(n, np.int64)
    perm[:n_rows] = match
    taken = np.zeros(n, bool)
    taken[used] = True
    perm[np.concatenate([np.flatnonzero(match < 0), np.arange(n_rows, n)])] = np.flatnonzero(~taken)
    return perm


class _Square:
    """Row blocks of the zero-padded square of a cost matrix (the matrix's dtype where no
    padding is needed, else float64)."""

    def __init__(self, cost: np.ndarray):
        self.C = torch.from_numpy(np.ascontiguousarray(cost))
        self.n_rows, self.n_cols = cost.shape
        self.n = max(self.n_rows, self.n_cols)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.n_cols == self.n and bool((idx < self.n_rows).all()):
            return self.C[idx]
        out = torch.zeros((len(idx), self.n), dtype=torch.float64)
        real = idx < self.n_rows
        if real.any():
            out[real, : self.n_cols] = self.C[idx[real]].double()
        return out

    def block(self, start: int, stop: int) -> torch.Tensor:
        if stop <= self.n_rows and self.n_cols == self.n:
            return self.C[start:stop]  # a view
        return self.rows(torch.arange(start, stop))

    def pairs(self, perm: np.ndarray) -> torch.Tensor:
        """C_{i, perm(i)} for all rows of the square (0 on padding), float64."""
        rows = np.arange(self.n)
        real = (rows < self.n_rows) & (perm < self.n_cols)
        out = np.zeros(self.n)
        out[real] = self.C.numpy()[rows[real], perm[real]]
        return torch.from_numpy(out)


def _negatives(c: torch.Tensor, u_r: torch.Tensor, v: torch.Tensor, buf: torch.Tensor):
    """rc = c − u_r − v of a row block in float64 (into buf; a float32 c is promoted exactly),
    and its negative entries: rows, columns, rc, and scale |C| + |u| + |v|."""
    rc = torch.sub(c, u_r[:, None], out=buf[: len(c)]).sub_(v[None, :])
    ii, jj = (rc < 0).nonzero(as_tuple=True)
    r = rc[ii, jj]
    scale = c[ii, jj].double().abs_().add_(u_r[ii].abs()).add_(v[jj].abs())
    return rc, ii, jj, r, scale


def _full_pass(sq: _Square, u: torch.Tensor, v: torch.Tensor, eps: float, chunk: int):
    """Row minima of rc, the number of violated entries, the worst −rc/scale and where it is.

    A first pass takes each row's minimum of C − v (float64); only the rows where that minus
    u_i comes near 0 or below (about one in eight after lapjv) get rc = C − u − v computed
    entry by entry, as :func:`_negatives` does, with their negatives; the other rows' minima
    are positive by a margin far above float64 rounding. 16384²: about half the passes over
    the matrix that computing rc everywhere takes.
    """
    n = sq.n
    row_min = torch.empty(n, dtype=torch.float64)
    buf = torch.empty((min(chunk, n), n), dtype=torch.float64)
    v_max = float(v.abs().max()) if n else 0.0
    violated, worst, where = 0, 0.0, None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        c, u_r = sq.block(start, stop), u[start:stop]
        m = torch.sub(c, v[None, :], out=buf[: stop - start]).amin(dim=1).sub_(u_r)  # ≈ min_j rc_ij
        row_min[start:stop] = m
        # (C − v) − u and (C − u) − v differ by float64 rounding, ≤ 4 ulps of |C| + |u| + |v|
        near = (m <= 1e-12 * (m.abs() + u_r.abs() + v_max + 1.0)).nonzero().flatten()
        if not len(near):
            continue
        rc, ii, jj, r, scale = _negatives(c[near], u_r[near], v, buf)
        row_min[start + near] = rc.amin(dim=1)
        if len(r):
            violated += int((r < -eps * scale).sum())
            rel = r / scale.clamp_min(1e-300)
            k = int(rel.argmin())
            if -float(rel[k]) > worst:
                worst, where = -float(rel[k]), (start + int(near[ii[k]]), int(jj[k]), float(r[k]))
    return row_min.numpy(), violated, worst, where


def _slackness(perm: np.ndarray, cm: torch.Tensor, u: torch.Tensor, v: torch.Tensor, eps: float):
    """Matched pairs with rc above tolerance: their number and the worst (row, rc, tol)."""
    p = torch.from_numpy(perm)
    rc = cm - u - v[p]
    tol = eps * (cm.abs() + u.abs() + v[p].abs())
    over = rc - tol
    k = int(over.argmax()) if len(over) else 0
    count = int((over > 0).sum())
    return count, ((k, float(rc[k]), float(tol[k])) if count else None)


def refine_duals(sq: _Square, perm: np.ndarray, cm: torch.Tensor, v: torch.Tensor, eps: float, chunk: int,
                 max_scans: int | None = None):
    """Float64 duals for the assignment perm, from the column potentials v (Bellman–Ford).

    u_i = C_{i,perm(i)} − v_{perm(i)}; every entry with rc < −REFINE_AT·tol lowers its column's
    v to C_ij − u_i; the rows matched to lowered columns get their new u and are scanned
    again. Returns (u, v, rounds, converged); stops unconverged after ``max_scans`` row scans
    (default 8n): an assignment that is not optimal has a negative cycle.
    """
    n = sq.n
    p = torch.from_numpy(perm)
    inv = torch.empty_like(p)
    inv[p] = torch.arange(n)
    v = v.clone()
    u = cm - v[p]
    frontier = torch.arange(n)
    buf = torch.empty((min(chunk, n), n), dtype=torch.float64)
    scans, max_scans = 0, max_scans or 8 * n
    for it in range(1, 10**9):
        cand = torch.full((n,), float("inf"), dtype=torch.float64)
        for s in range(0, len(frontier), chunk):
            idx = frontier[s:s + chunk]
            _, ii, jj, r, scale = _negatives(sq.rows(idx), u[idx], v, buf)
            relax = r < -REFINE_AT * eps * scale
            if relax.any():  # C_ij − u_i = rc_ij + v_j
                cand.scatter_reduce_(0, jj[relax], r[relax] + v[jj[relax]], "amin")
        scans += len(frontier)
        lowered = cand < v
        if not lowered.any():
            return u, v, it, True
        v = torch.where(lowered, cand, v)
        frontier = inv[lowered]
        u[frontier] = cm[frontier] - v[p[frontier]]
        if scans >= max_scans:
            return u, v, it, False
    raise AssertionError("unreachable")  # pragma: no cover


def certify_dense(cost: np.ndarray, primal: float, u: np.ndarray, v: np.ndarray, match: np.ndarray, *,
                  norms: tuple | None = None, refine: bool = False, solver: str = "lapjv", rounds: int = 1,
                  chunk_rows: int | None = None, eps: float = EPS) -> dict:
    """Certificate of the assignment ``match`` for a dense (n_rows, n_cols) cost matrix.

    u, v: duals of the padded square (n = max(n_rows, n_cols) each); match (n_rows,), −1 for
    unmatched rows (as :func:`saematch.solve.solve_lap` returns). norms: (‖x_i‖, ‖y_j‖) of the
    feature vectors behind the costs, for the precision flag (None: not checked). refine: when
    the given duals fail (a) or (b), recompute them in float64 (:func:`refine_duals`) and
    certify those. Every entry is checked; memory O(chunk_rows · n) float64 beyond ``cost``.
    """
    n_rows, n_cols = cost.shape
    precision = precision_report(*norms) if norms is not None else None
    if n_rows == 0 or n_cols == 0:  # nothing to assign
        return certificate(primal, np.zeros(0), np.zeros(0), np.zeros(0), 0, solver, rounds, eps, precision=precision)
    sq = _Square(cost)
    n = sq.n
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    if u.shape != (n,) or v.shape != (n,):
        raise ValueError(f"duals must have shape ({n},), got {u.shape} and {v.shape}")
    perm = square_assignment(match, n_rows, n_cols)
    chunk = chunk_rows or max(1, 2**22 // max(n, 1))
    cm = sq.pairs(perm)
    ut, vt = torch.from_numpy(u.copy()), torch.from_numpy(v.copy())
    row_min, violated, worst, where = _full_pass(sq, ut, vt, eps, chunk)
    unslack, slack_at = _slackness(perm, cm, ut, vt, eps)
    refinements, details = 0, []
    if refine and (violated or unslack):
        ut, vt, refinements, converged = refine_duals(sq, perm, cm, vt, eps, chunk)
        row_min, violated, worst, where = _full_pass(sq, ut, vt, eps, chunk)
        unslack, slack_at = _slackness(perm, cm, ut, vt, eps)
        if not converged:
            details.append(f"the float64 dual refinement did not converge in {refinements} rounds "
                           "(a negative cycle: the assignment is not optimal)")
    if violated and where is not None:
        i, j, rc = where
        details.append(f"worst violation at row {i}, column {j}: rc = {rc:.6g}, "
                       f"{worst:.3g} of its scale |C| + |u| + |v|")
    if unslack:
        i, rc, tol = slack_at
        details.append(f"e.g. row {i} → column {int(perm[i])}: rc = {rc:.6g} > tol = {tol:.3g}")
    return certificate(primal, ut.numpy(), vt.numpy(), row_min, violated, solver, rounds, eps,
                       unslack=unslack, precision=precision, worst_violation_rel=worst,
                       refinements=refinements, details=details)
