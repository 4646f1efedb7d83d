"""One pair of layers end to end: fold → cost → assignment → per-feature scores."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .cost import feature_vectors, pair_matrices, pick_device
from .fold import fold as fold_sae
from .sae import Sae
from .solve import solve_lap

log = logging.getLogger(__name__)


def match_pair(
    src: Sae,
    dst: Sae,
    fold: bool = True,
    weights: str = "enc+dec+benc",
    device: str = "auto",
    chunk_size: int = 2048,
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
        device, peak memory and seconds per stage
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = {}
    t = time.perf_counter()
    a, b = (fold_sae(src), fold_sae(dst)) if fold else (src, dst)
    seconds["fold"] = time.perf_counter() - t

    t = time.perf_counter()
    cost, top1, top1_cosine = pair_matrices(a, b, weights=weights, device=device, chunk_size=chunk_size)
    seconds["cost"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("solving the %d × %d assignment with lapjv", *cost.shape)
    match, total = solve_lap(cost)
    seconds["solve"] = time.perf_counter() - t
    log.info("assignment: total cost %.6g (%.1f s)", total, seconds["solve"])

    t = time.perf_counter()
    n_params = feature_vectors(a, weights).shape[1]
    rows = np.nonzero(match >= 0)[0]
    cols = match[rows]
    mse = np.full(src.n_features, np.nan, dtype=np.float32)
    mse[rows] = cost[rows, cols] / n_params
    cosine = np.full(src.n_features, np.nan, dtype=np.float32)
    u = torch.nn.functional.normalize(src.W_dec[torch.from_numpy(rows)], dim=1)
    v = torch.nn.functional.normalize(dst.W_dec[torch.from_numpy(cols.astype(np.int64))], dim=1)
    cosine[rows] = (u * v).sum(dim=1).numpy()
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
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    return columns, stats
