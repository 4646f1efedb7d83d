"""The SAE Match cost matrix, built in row chunks with torch (CUDA when present)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .sae import Sae, SaeError

log = logging.getLogger(__name__)

WEIGHT_SETS = ("dec", "enc+dec", "enc+dec+benc")


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; or an explicit torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def feature_vectors(sae: Sae, weights: str) -> torch.Tensor:
    """Each feature's matched parameters as one row: (F, p) float32.

    dec: [W_dec[i]]; enc+dec: [W_dec[i], W_enc[:, i]]; enc+dec+benc: [..., b_enc[i]].
    Squared distances between rows are then the summed squared differences of the tensors.
    """
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}")
    parts = [sae.W_dec]
    if weights != "dec":
        if sae.W_enc is None:
            raise SaeError(f"{sae.source.get('where', 'SAE')}: weights={weights!r} needs an encoder "
                           "in the same space as the other layer's; this SAE has none (use 'dec')")
        parts.append(sae.W_enc.T)
    if weights == "enc+dec+benc":
        parts.append(sae.b_enc[:, None])
    return torch.cat(parts, dim=1)


def check_pair(src: Sae, dst: Sae, weights: str) -> None:
    """The two SAEs of a pair must live in the same spaces."""
    a, b = src.source.get("where", "layer L"), dst.source.get("where", "layer L+1")
    if src.d_out != dst.d_out:
        raise SaeError(f"{a} decodes to d_model={src.d_out} but {b} to d_model={dst.d_out}: "
                       "a pair must share the model width")
    if weights != "dec" and src.W_enc is not None and dst.W_enc is not None \
            and src.W_enc.shape[0] != dst.W_enc.shape[0]:
        raise SaeError(f"{a} encodes {src.W_enc.shape[0]}-d input but {b} {dst.W_enc.shape[0]}-d")


def pair_vectors(src: Sae, dst: Sae, weights: str, device: torch.device):
    """Feature vectors X (F_src, p), Y (F_dst, p) and unit decoders U (F_src, d), V (F_dst, d) on ``device``."""
    check_pair(src, dst, weights)
    X = feature_vectors(src, weights).to(device)
    Y = feature_vectors(dst, weights).to(device)
    U = torch.nn.functional.normalize(src.W_dec.to(device), dim=1)
    V = torch.nn.functional.normalize(dst.W_dec.to(device), dim=1)
    return X, Y, U, V


def dense_cost(X: torch.Tensor, Y: torch.Tensor, U: torch.Tensor | None = None,
               V: torch.Tensor | None = None, chunk_size: int = 2048):
    """Squared distances of rows, and optionally each row's top-1 cosine, in one chunked pass.

    Returns
    -------
    cost : (n_src, n_dst) float32 on the host, C[i, j] = ‖X_i − Y_j‖²
    top1 : (n_src,) int32, argmax_j U_i · V_j (unit decoders: Feature Flow, k = 1); or None
    top1_cosine : (n_src,) float32, that cosine; or None

    Notes
    -----
    Peak memory is the float32 cost matrix on the host (4·n_src·n_dst bytes) plus, on the
    device, the vectors and two chunk_size × n_dst blocks.
    """
    x2, y2 = (X * X).sum(dim=1), (Y * Y).sum(dim=1)  # (n_src,), (n_dst,)
    n_src, n_dst = X.shape[0], Y.shape[0]
    cost = np.empty((n_src, n_dst), dtype=np.float32)
    top1 = np.empty(n_src, dtype=np.int32) if U is not None else None
    top1_cos = np.empty(n_src, dtype=np.float32) if U is not None else None
    cost_t = torch.from_numpy(cost)  # shares memory: CPU blocks are written in place
    t0, last = time.perf_counter(), 0.0
    with torch.no_grad():
        for start in range(0, n_src, chunk_size):
            rows = slice(start, min(start + chunk_size, n_src))
            # ‖x‖² + ‖y‖² − 2 x·y in one fused product; rounding can give tiny negatives
            base = x2[rows, None] + y2[None, :]
            if X.device.type == "cpu":
                torch.addmm(base, X[rows], Y.T, alpha=-2.0, out=cost_t[rows]).clamp_min_(0.0)
            else:
                cost_t[rows] = torch.addmm(base, X[rows], Y.T, alpha=-2.0).clamp_min_(0.0).cpu()
            if U is not None:
                best = (U[rows] @ V.T).max(dim=1)
                top1[rows] = best.indices.cpu().numpy()
                top1_cos[rows] = best.values.cpu().numpy()
            now = time.perf_counter() - t0
            if now - last > 5 or rows.stop == n_src:
                log.info("cost rows %d/%d (%.1f s)", rows.stop, n_src, now)
                last = now
    return cost, top1, top1_cos
