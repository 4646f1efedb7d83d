"""One pair of layers end to end: fold → cost → certified assignment → per-feature scores."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .certify import certify_dense
from .cost import dense_cost, pair_vectors, pick_device
from .fold import fold as fold_sae
from .sae import Sae, SaeError
from .solve import choose_solver, solve_lap
from .sparse import solve_sparse

log = logging.getLogger(__name__)

def assign(X, Y, U=None, V=None, path: str = "dense", k: int = 32, chunk_size: int = 2048, device=None):
    """Certified minimum-cost assignment of the rows of X (n_src, p) to those of Y (n_dst, p).

    Cost C_ij = ‖X_i − Y_j‖². Returns match (n_src,) int32 (−1 unmatched), matched cost per row
    (n_src,) float64 (0 where unmatched), the certificate, Feature Flow's (top1, top1_cosine)
    from the unit decoders U, V (None without them), and seconds per stage.
    """
    seconds = {}
    with torch.no_grad():
        if path == "dense":
            t = time.perf_counter()
            cost, top1, top1_cosine = dense_cost(X, Y, U, V, chunk_size)
            if not np.isfinite(cost).all():
                raise SaeError("cost matrix has NaN/Inf (parameter overflow after folding?)")
            seconds["cost"] = time.perf_counter() - t
            t = time.perf_counter()
            log.info("solving the %d × %d assignment with lapjv", *cost.shape)
            match, total, u, v = solve_lap(cost)
            seconds["solve"] = time.perf_counter() - t
            t = time.perf_counter()
            certificate = certify_dense(cost, total, u, v)
            seconds["certify"] = time.perf_counter() - t
            matched_cost = np.zeros(len(match))
            rows = np.nonzero(match >= 0)[0]
            matched_cost[rows] = cost[rows, match[rows]]
            return match, matched_cost, certificate, (top1, top1_cosine), seconds
        match, matched_cost, certificate, top, seconds = solve_sparse(X, Y, k=k, chunk=chunk_size, U=U, V=V,
                                                                        device=device)
        return match, matched_cost, certificate, top, seconds


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
) -> tuple[dict[str, np.ndarray], dict]:
    """Match the features of ``src`` (layer L) to those of ``dst`` (layer L+1).

    Returns
    -------
    columns : one entry per feature of src, in feature order
        feature (int32), match (int32, index in dst; -1 if dst has fewer features),
        top1 (int32, Feature Flow's top-1 decoder-cosine partner in dst),
        cosine (float32, decoder cosine of feature and match), mse (float32, mean squared
        difference of the matched (folded) parameters), top1_cosine (float32)
    stats : total_cost (float64 sum of the squared differences), n_params (per feature),
        the optimality certificate (saematch.certify), device, peak memory, seconds per stage
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = {}
    t = time.perf_counter()
    a, b = (fold_sae(src), fold_sae(dst)) if fold else (src, dst)
    seconds["fold"] = time.perf_counter() - t
    path = choose_solver(src.n_features, dst.n_features, solver, dense_max_gb)
    if path == "sparse" and src.n_features != dst.n_features:
        raise SaeError(f"{src.source.get('where')}: the sparse solver needs equal widths "
                       f"({src.n_features} vs {dst.n_features})")
    t = time.perf_counter()
    X, Y, U, V = pair_vectors(a, b, weights, dev)
    n_params = X.shape[1]
    seconds["vectors"] = time.perf_counter() - t
    match, matched_cost, certificate, (top1, top1_cosine), assign_seconds = assign(
        X, Y, U, V, path, k=k, chunk_size=chunk_size)
    del X, Y, U, V
    seconds.update(assign_seconds)
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
    u_dec = torch.nn.functional.normalize(src.W_dec[torch.from_numpy(rows)], dim=1)
    v_dec = torch.nn.functional.normalize(dst.W_dec[torch.from_numpy(cols.astype(np.int64))], dim=1)
    cosine[rows] = (u_dec * v_dec).sum(dim=1).numpy()
    seconds["scores"] = time.perf_counter() - t

    columns = {
        "feature": np.arange(src.n_features, dtype=np.int32),
        "match": match,
        "top1": top1,
        "cosine": cosine,
        "mse": mse,
        "top1_cosine": top1_cosine,
    }
    stats = {
        "total_cost": total,
        "n_params": int(n_params),
        "n_src": src.n_features,
        "n_dst": dst.n_features,
        "certificate": certificate,
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    return columns, stats
