"""One pair of layers end to end: fold → cost → certified assignment → per-feature scores."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from .certify import certify_dense
from .cost import dense_cost, dense_cost_bytes, pair_vectors, pick_device
from .fold import fold as fold_sae
from .fold import pair_rows
from .devices import fixed_device
from .sae import Sae, SaeError, StoredSae, materialize
from .solve import choose_solver, solve_lap
from .sparse import ImpreciseFeatures, solve_sparse, sparse_device_bytes
from .verdict import (directions, finish_neighbours, neighbour_collector, neighbours, opt_out_costs, partial_assignment,
                      stored_directions, unjudge, verdict)

log = logging.getLogger(__name__)

F32_MAX = float(np.finfo(np.float32).max)


def _default_describe(side: str, i: int) -> str:
    return f"{side} feature {i}"


def feature_norms(X: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """‖X_i‖ in float64 (no overflow), computed in row chunks."""
    return torch.cat([torch.linalg.vector_norm(X[s:s + chunk].double(), dim=1).cpu()
                      for s in range(0, X.shape[0], chunk)] or [torch.empty(0, dtype=torch.float64)]).numpy()


def _overflow_message(side: str, i: int, norm: float, describe) -> str:
    return (f"{describe(side, i)} has a folded parameter vector of norm {norm:.3g}: its float32 costs "
            f"‖x‖² + ‖y‖² − 2x·y overflow (float32 max {F32_MAX:.3g}) to Inf/NaN; "
            "likely cause: folding by the threshold θ (W_dec·θ, W_enc/θ, b_enc/θ) with θ far off the "
            "other features'")


def check_norms(nx: np.ndarray, ny: np.ndarray, describe=_default_describe) -> None:
    """Refuse features whose float32 costs may not be finite: a NaN/Inf parameter, or ‖x‖² ≥ float32
    max / 4 (below it, (‖x‖ + ‖y‖)² stays finite)."""
    for side, norms in (("src", nx), ("dst", ny)):
        bad = np.flatnonzero(~(norms * norms < F32_MAX / 4))
        if len(bad):
            more = f" ({len(bad)} such features, first listed)" if len(bad) > 1 else ""
            raise SaeError(_overflow_message(side, int(bad[0]), float(norms[bad[0]]), describe) + more)


def explain_nonfinite(cost: np.ndarray, nx: np.ndarray, ny: np.ndarray, describe=_default_describe) -> str:
    """Why the cost matrix has NaN/Inf: the first bad entry and the feature behind it."""
    bad_rows = np.flatnonzero(~np.isfinite(cost).all(axis=1))
    i = int(bad_rows[0])
    j = int(np.flatnonzero(~np.isfinite(cost[i]))[0])
    side, k, norm = ("src", i, nx[i]) if nx[i] >= ny[j] else ("dst", j, ny[j])
    return (f"cost matrix has NaN/Inf, first at row {i} ({describe('src', i)}), column {j} "
            f"({describe('dst', j)}): " + _overflow_message(side, k, float(norm), describe))


def assign(X, Y, path: str = "dense", k: int = 32, chunk_size: int = 2048, device=None, describe=None,
           on_block=None, split: int = 0, section=None):
    """Certified minimum-cost assignment of the rows of X (n_src, p) to those of Y (n_dst, p).

    Cost C_ij = ‖X_i − Y_j‖². Returns match (n_src,) int32 (−1 unmatched), matched cost per row
    (n_src,) float64 (0 where unmatched), the certificate, and seconds per stage.
    ``on_block``, ``split``: see :func:`saematch.cost.dense_cost` (dense path only).

    ``describe(side, i)`` ('src' or 'dst', feature index) names a feature in error messages
    (file, layer, threshold: match_pair passes one). Features whose float32 costs overflow are
    refused (SaeError); those too large for float32 to resolve their candidates are flagged in
    the certificate (saematch.certify.imprecise_features), which is then not certified.

    ``section(need_bytes, stage)`` (saematch.devices.gpu_sections) holds the device for the
    stages that use it and yields it: the dense path's products (X and Y are copied there and
    freed after), or the whole sparse solve; lapjv and the certificate run outside it, on the
    host. Default: ``device`` (None: where X and Y are) for every stage.
    """
    describe = describe or _default_describe
    section = section or (lambda need_bytes, stage: nullcontext(device))
    seconds = {}
    with torch.no_grad():
        nx = ny = None
        if isinstance(X, torch.Tensor) and isinstance(Y, torch.Tensor):  # RowFiles: sparse.prepare checks
            nx, ny = feature_norms(X), feature_norms(Y)
            check_norms(nx, ny, describe)
        elif hasattr(X, "norms") and hasattr(Y, "norms"):  # FeatureRows: one streamed pass per side
            check_norms(X.norms(), Y.norms(), describe)
        if path == "dense":
            t = time.perf_counter()
            with section(dense_cost_bytes(len(X), len(Y), X.shape[1], chunk_size, on_block), "products") as dev:
                cost = dense_cost(X.to(dev) if dev else X, Y.to(dev) if dev else Y, chunk_size, on_block, split)
            if not np.isfinite(cost).all():
                raise SaeError(explain_nonfinite(cost, nx, ny, describe))
            seconds["cost"] = time.perf_counter() - t
            t = time.perf_counter()
            log.info("solving the %d × %d assignment with lapjv", *cost.shape)
            match, total, u, v = solve_lap(cost)
            seconds["solve"] = time.perf_counter() - t
            t = time.perf_counter()
            certificate = certify_dense(cost, total, u, v, match, norms=None if nx is None else (nx, ny),
                                        refine=True)
            seconds["certify"] = time.perf_counter() - t
            matched_cost = np.zeros(len(match))
            rows = np.nonzero(match >= 0)[0]
            matched_cost[rows] = cost[rows, match[rows]]
            return match, matched_cost, certificate, seconds
        try:
            with section(sparse_device_bytes(X, Y, k, chunk_size), "sparse solve") as dev:
                return solve_sparse(X, Y, k=k, chunk=chunk_size, device=dev)
        except ImpreciseFeatures as exc:
            named = [describe(side, i) for side in ("src", "dst") for i in exc.precision[f"imprecise_{side}"]]
            raise SaeError(f"{exc}; features: " + "; ".join(named)) from exc


def match_pair(
    src: Sae,
    dst: Sae,
    fold: bool = True,
    weights: str = "enc+dec+benc",
    device: str = "auto",
    chunk_size: int = 2048,
    solver: str = "auto",
    k: int = 32,
    dense_max_gb: float = 6.0,
    cut: float = 0.5,
    null_rows: int = 1024,
    null_draws: int = 2,
    partial: bool = False,
    gpu=None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Match the features of ``src`` (layer L) to those of ``dst`` (layer L+1).

    Returns
    -------
    columns : one entry per feature of src, in feature order
        feature (int32), match (int32, index in dst; -1 if dst has fewer features),
        top1 (int32, Feature Flow's top-1 decoder-cosine partner in dst),
        cosine (float32, decoder cosine of feature and match), mse (float32, mean squared
        difference of the matched (folded) parameters), top1_cosine (float32), and the
        verdict (:mod:`saematch.verdict`): persists, confidence, top1_persists, top1_confidence
    With ``partial``, the assignment may leave a feature unmatched (match −1) where that costs
    less than its opt-out cost (:func:`saematch.verdict.opt_out_costs`); dense path only.
    stats : total_cost (float64 sum of the squared differences), n_params (per feature),
        the optimality certificate (saematch.certify), device, peak memory, seconds per stage

    ``gpu``: ``section(need_bytes, stage)`` → a context manager yielding the device to use
    (saematch.devices.gpu_sections), taken only around the stages that use it: the cost
    products and the verdict (the sparse path: its whole solve); folding, lapjv, the
    certificate and the scores run on the host in between, holding no GPU. Default: every
    stage on ``device``. ``stats["gpu_sections"]`` gives what each section asked for and used.
    """
    section, needs = _sections(gpu or fixed_device(str(pick_device(device))))
    seconds = {}
    t = time.perf_counter()
    path = choose_solver(src.n_features, dst.n_features, solver, dense_max_gb)
    if path == "dense":  # a StoredSae (saematch.load.load_pair: widths beyond lapjv's) as float32
        src, dst = materialize(src), materialize(dst)
    # the sparse path folds row blocks as it streams them (saematch.fold.FeatureRows)
    a, b = (fold_sae(src), fold_sae(dst)) if fold and path == "dense" else (src, dst)
    seconds["fold"] = time.perf_counter() - t
    if path == "sparse" and src.n_features != dst.n_features:
        raise SaeError(f"{src.source.get('where')}: the sparse solver needs equal widths "
                       f"({src.n_features} vs {dst.n_features})")
    if partial and path != "dense":
        raise SaeError(f"{src.source.get('where', 'layer L')}: match.partial needs the dense solver (it solves "
                       f"one (n_src + n_dst)² problem); this pair of {src.n_features} features takes the sparse path")
    t = time.perf_counter()
    X, Y = pair_vectors(a, b, weights, torch.device("cpu")) if path == "dense" \
        else pair_rows(src, dst, weights, fold)  # dense: copied to the device by its section
    n_params = X.shape[1]
    seconds["vectors"] = time.perf_counter() - t
    where = {"src": src.source.get("where", "layer L"), "dst": dst.source.get("where", "layer L+1")}
    saes = {"src": src, "dst": dst}

    def describe(side: str, i: int) -> str:
        layer = "layer L, src" if side == "src" else "layer L+1, dst"
        return (f"{where[side]} ({layer}) feature {i} (threshold θ = {float(saes[side].threshold[i]):.3g}"
                f"{'' if fold else ', not folded'})")

    d = a.d_out  # X's first d columns are the decoders: their cosines come from the cost pass
    on_block, nb = neighbour_collector(feature_norms(X[:, :d]), feature_norms(Y[:, :d])) \
        if path == "dense" else (None, None)
    match, matched_cost, certificate, assign_seconds = assign(
        X, Y, path, k=k, chunk_size=chunk_size, describe=describe, on_block=on_block, split=d, section=section)
    seconds.update(assign_seconds)
    t = time.perf_counter()
    partial_stats = None
    if partial:  # opt-out costs and the (n_src + n_dst)² costs on the device, their LAP on the host
        d_enc = 0 if weights == "dec" else a.W_enc.shape[0]
        with section(dense_cost_bytes(len(X), len(Y), n_params, chunk_size), "partial products") as dev:
            Xd, Yd = (X, Y) if dev is None else (X.to(dev), Y.to(dev))
            tau_src, tau_dst, partial_stats = opt_out_costs(Xd, Yd, match, matched_cost, a.d_out, d_enc,
                                                            rows=null_rows, draws=null_draws)
            cost = dense_cost(Xd, Yd, chunk_size=chunk_size)
            del Xd, Yd
        match, matched_cost, certificate = partial_assignment(cost, tau_src, tau_dst)
        del cost
    del X, Y
    d_in = min(_encoder_width(src), _encoder_width(dst))
    with section(verdict_bytes(src.n_features, dst.n_features, d, d_in), "verdict") as dev:
        t_dir = time.perf_counter()
        (Ud, Ed), (Vd, Wd) = (directions(s.W_dec.to(dev), None if s.W_enc is None else s.W_enc.to(dev))
                              if path == "dense" else stored_directions(s, dev)  # sparse: rows made on demand
                              for s in (src, dst))
        verdict_seconds = {"directions": time.perf_counter() - t_dir}
        collected = 0.0
        if nb is None:
            nb = neighbours(Ud, Vd, chunk=chunk_size)
        else:  # the collector's seconds were spent inside the cost pass: count them here
            nb = finish_neighbours(nb)
            collected = nb["seconds"]
            seconds["cost"] -= collected
            t -= collected
        verdict_seconds["neighbours"] = time.perf_counter() - t_dir - verdict_seconds["directions"] + collected
        verdict_columns, verdict_stats = verdict(Ud, Ed, Vd, Wd, match, nb, cut=cut, rows=null_rows,
                                                 draws=null_draws)
        del Ud, Ed, Vd, Wd
    top1, top1_cosine = nb["top1"], nb["top1_cosine"]
    if src.source.get("projected") or dst.source.get("projected"):
        unjudge(verdict_columns, "attention SAE mapped through W_O: its encoder is a pseudo-inverse, not the "
                                 "residual stream's (saematch.load.project_att); no calibrated verdict")
    verdict_stats["seconds"] = {**{k: round(v, 4) for k, v in verdict_seconds.items()}, **verdict_stats["seconds"]}
    if partial_stats:
        verdict_stats["partial"] = partial_stats
    seconds["verdict"] = time.perf_counter() - t
    _report_imprecise(certificate, describe)
    total = float(matched_cost.sum())
    rows = np.nonzero(match >= 0)[0]
    log.info("assignment (%s): total cost %.10g, certified %s, gap ≤ %.3g, worst reduced cost %.3g",
             certificate["solver"], total, certificate["certified"], certificate["gap_bound"],
             certificate["worst_reduced_cost"])

    t = time.perf_counter()
    cols = match[rows]
    mse = np.full(src.n_features, np.nan, dtype=np.float32)
    mse[rows] = matched_cost[rows] / n_params
    cosine = np.full(src.n_features, np.nan, dtype=np.float32)
    cosine[rows] = decoder_cosines(src, dst, rows, cols)
    seconds["scores"] = time.perf_counter() - t

    columns = {
        "feature": np.arange(src.n_features, dtype=np.int32),
        "match": match,
        "top1": top1,
        "cosine": cosine,
        "mse": mse,
        "top1_cosine": top1_cosine,
        **verdict_columns,
    }
    stats = {
        "total_cost": total,
        "n_params": int(n_params),
        "n_src": src.n_features,
        "n_dst": dst.n_features,
        "certificate": certificate,
        "verdict": verdict_stats,
        "device": needs["verdict"]["device"],
        "peak_gpu_memory_bytes": max((r["peak_bytes"] for r in needs.values() if r["peak_bytes"] is not None),
                                     default=None),
        "gpu_sections": needs,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    return columns, stats


def verdict_bytes(n_src: int, n_dst: int, d: int, d_in: int) -> int:
    """Device memory of the verdict: unit decoders and encoders of both SAEs (float32), the copy
    of one SAE's weights they are made from, the null's blocks of scores and its rotations."""
    from .verdict import BLOCK

    per_feature = 4 * (d + d_in)
    return per_feature * (n_src + n_dst + max(n_src, n_dst)) + 16 * BLOCK + 8 * (d * d + d_in * d_in) + 2**26


def _sections(section):
    """``section`` (see :func:`match_pair`'s ``gpu``) that also records, per stage, the device it
    yielded, the bytes it asked for and (CUDA) the peak bytes allocated while it was held."""
    record = {}

    @contextmanager
    def recorded(need_bytes: int, stage: str):
        with section(need_bytes, stage) as dev:
            cuda = dev is not None and torch.device(dev).type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            try:
                yield dev
            finally:
                record[stage] = {
                    "device": f"{dev} ({torch.cuda.get_device_name(dev)})" if cuda else str(dev),
                    "need_bytes": int(need_bytes),
                    "peak_bytes": int(torch.cuda.max_memory_allocated(dev)) if cuda else None}

    return recorded, record


def _encoder_width(sae) -> int:
    """d_in of the SAE's encoder, 0 without one (a Sae or a StoredSae)."""
    if isinstance(sae, StoredSae):
        return sae.d_in
    return 0 if sae.W_enc is None else sae.W_enc.shape[0]


def decoder_cosines(src, dst, rows: np.ndarray, cols: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """cos(W_dec[rows[k]] of src, W_dec[cols[k]] of dst) (float32), in blocks of pairs (each row
    normalised on its own, as F.normalize of the gathered rows: the same numbers as all at once)."""
    def dec(sae, idx):
        return sae.dec_rows(idx) if isinstance(sae, StoredSae) else sae.W_dec[idx]

    out = np.empty(len(rows), np.float32)
    rows, cols = torch.from_numpy(np.asarray(rows, np.int64)), torch.from_numpy(np.asarray(cols, np.int64))
    for s in range(0, len(rows), chunk):
        u = torch.nn.functional.normalize(dec(src, rows[s:s + chunk]), dim=1)
        v = torch.nn.functional.normalize(dec(dst, cols[s:s + chunk]), dim=1)
        out[s:s + chunk] = (u * v).sum(dim=1).numpy()
    return out


def _report_imprecise(certificate: dict, describe) -> None:
    """Warn about features flagged as imprecise, naming file, layer, index and threshold, and
    add the same to the certificate's reason."""
    named = []
    for side in ("src", "dst"):
        count, listed = certificate[f"imprecise_{side}_count"], certificate[f"imprecise_{side}"]
        if count:
            more = f" and {count - len(listed)} more" if count > len(listed) else ""
            named.append(f"{count} {side} feature(s): " + "; ".join(describe(side, i) for i in listed) + more)
    if named:
        message = ("folded parameters too large for float32 costs to resolve these features' candidates "
                   "(their matches are not meaningful; the assignment is not certified): " + " | ".join(named))
        log.warning(message)
        certificate["reason"] = f"{certificate['reason']}; {message}" if certificate["reason"] else message

