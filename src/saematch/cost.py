"""The SAE Match cost matrix, built in row chunks with torch (CUDA when present)."""

from __future__ import annotations

import logging
import mmap
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
    """Feature vectors X (F_src, p), Y (F_dst, p) on ``device``; their first d_model columns are the decoders."""
    check_pair(src, dst, weights)
    return feature_vectors(src, weights).to(device), feature_vectors(dst, weights).to(device)


def huge_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """np.empty of ``shape``, in anonymous memory advised to use transparent huge pages where the
    kernel offers them: writing a fresh 1 GiB cost matrix page by page costs about 2 s of page
    faults on 4 KiB pages, 0.4 s on 2 MiB ones (2 cores)."""
    count = int(np.prod(shape))
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes < 2**21 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def dense_cost(X: torch.Tensor, Y: torch.Tensor, chunk_size: int = 2048, on_block=None, split: int = 0):
    """Squared distances of rows, C[i, j] = ‖X_i − Y_j‖², in row chunks: (n_src, n_dst) float32 on the host.

    With ``on_block``, the product of the first ``split`` columns (the decoders) is computed on
    its own and handed over, ``on_block(rows, P)`` with P = X[rows, :split] Y[:, :split]ᵀ
    (chunk, n_dst) on the device, after it has been added to the cost block (the hook may
    overwrite it): whoever needs decoder cosines gets them from the same pass
    (saematch.verdict.neighbour_collector).

    Peak memory is the float32 cost matrix on the host (4·n_src·n_dst bytes) plus, on the
    device, the vectors and one (two with on_block) chunk_size × n_dst blocks.
    """
    x2, y2 = (X * X).sum(dim=1), (Y * Y).sum(dim=1)  # (n_src,), (n_dst,)
    n_src, n_dst = X.shape[0], Y.shape[0]
    cost = huge_empty((n_src, n_dst))
    cost_t = torch.from_numpy(cost)  # shares memory: CPU blocks are written in place
    on_cpu = X.device.type == "cpu"
    block = (min(chunk_size, n_src), n_dst)
    buffer = None if on_cpu else torch.empty(block, device=X.device)
    products = None if on_block is None else (
        torch.from_numpy(huge_empty(block)) if on_cpu else torch.empty(block, device=X.device))
    t0, last = time.perf_counter(), 0.0
    with torch.no_grad():
        for start in range(0, n_src, chunk_size):
            rows = slice(start, min(start + chunk_size, n_src))
            out = cost_t[rows] if on_cpu else buffer[: rows.stop - start]
            torch.add(x2[rows, None], y2[None, :], out=out)  # ‖x‖² + ‖y‖² − 2 x·y
            x, y = X[rows], Y
            if on_block is not None:
                P = torch.mm(x[:, :split], y[:, :split].T, out=products[: rows.stop - start])
                out.add_(P, alpha=-2.0)
                on_block(rows, P)
                x, y = x[:, split:], y[:, split:]
            out.addmm_(x, y.T, alpha=-2.0).clamp_min_(0.0)  # rounding can give tiny negatives
            if not on_cpu:
                cost_t[rows] = out.cpu()
            now = time.perf_counter() - t0
            if now - last > 5 or rows.stop == n_src:
                log.info("cost rows %d/%d (%.1f s)", rows.stop, n_src, now)
                last = now
    return cost


def dense_cost_bytes(n_src: int, n_dst: int, p: int, chunk_size: int = 2048, on_block=None) -> int:
    """Device memory of :func:`dense_cost`: X and Y (float32), their squared norms, one
    chunk_size × n_dst block (two with ``on_block``, plus its top-k), and 64 MiB of slack."""
    rows = min(chunk_size, n_src)
    return 4 * (n_src + n_dst) * (p + 1) + (2 if on_block else 1) * 4 * rows * n_dst + 2**26
