"""Time and peak memory of one pair, end to end: load → fold → cost → lapjv → verdict → scores → write.

Generates two Gemma-Scope-like SAEs with planted persisting features (saematch.demo), writes
them as params.npz, and runs the pipeline's own path on them. Prints one Markdown table.

    python bench/bench_pair.py --n-features 16384 --d-model 2304 [--device cuda]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saematch.demo import npz_bytes, planted_site
from saematch.load import load_gemma_scope
from saematch.logs import peak_rss_bytes
from saematch.match import match_pair
from saematch.write import write_matches


def write_pair(tmp: Path, n_features: int, d_model: int, persist: float, seed: int) -> None:
    """Two layers' params.npz and the planted map; run in a child so its memory is not counted."""
    rng = np.random.default_rng(seed)
    layers, planted, _ = planted_site(2, n_features, d_model, persist, rng)
    for L, st in enumerate(layers):
        p = tmp / f"layer_{L}.npz"
        p.write_bytes(npz_bytes({
            "W_enc": (st["enc_dir"] * st["enc_gain"][:, None]).T.astype(np.float32),
            "W_dec": st["dec_dir"].astype(np.float32),
            "threshold": st["threshold"].astype(np.float32),
            "b_enc": st["b_enc"].astype(np.float32),
            "b_dec": np.zeros(d_model, np.float32),
        }))
    np.save(tmp / "planted.npy", planted[0])


def bare_products(src, dst, device: str, chunk: int) -> float:
    """Seconds of the one unavoidable product alone, folded vectors X Yᵀ (the decoder cosines that
    top-1 and the verdict need come from its decoder part)."""
    from saematch.cost import pair_vectors, pick_device
    from saematch.fold import fold

    dev = pick_device(device)
    X, Y = pair_vectors(fold(src), fold(dst), "enc+dec+benc", dev)
    out = torch.empty(chunk, len(Y), device=dev)
    t = time.perf_counter()
    for start in range(0, len(X), chunk):
        rows = slice(start, min(start + chunk, len(X)))
        torch.mm(X[rows], Y.T, out=out[: rows.stop - rows.start])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bare_verdict_products(n_src: int, n_dst: int, d: int, device: str, rows: int = 1024, draws: int = 2) -> float:
    """Seconds of the verdict's own products alone, as its null computes them (saematch.verdict.null_scores):
    per draw, ``rows`` decoder and encoder rows times a d × d rotation, then times the other
    layer's unit decoders and encoders. Random matrices of those shapes (the rotations' QR is not
    a product, and not counted)."""
    from saematch.cost import pick_device

    dev = pick_device(device)
    g = torch.Generator().manual_seed(0)
    U, E, Q = (torch.randn(rows, d, generator=g).to(dev), torch.randn(rows, d, generator=g).to(dev),
               torch.randn(d, d, generator=g).to(dev))
    V, W = torch.randn(n_dst, d, generator=g).to(dev), torch.randn(n_dst, d, generator=g).to(dev)
    t = time.perf_counter()
    for _ in range(draws):
        torch.minimum((U @ Q) @ V.T, (E @ Q) @ W.T)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-features", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=2304)
    ap.add_argument("--persist", type=float, default=0.7)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--chunk-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        child = mp.get_context("spawn").Process(
            target=write_pair, args=(tmp, args.n_features, args.d_model, args.persist, args.seed))
        child.start()
        child.join()
        p0, p1, planted = tmp / "layer_0.npz", tmp / "layer_1.npz", np.load(tmp / "planted.npy")
        t0 = time.perf_counter()
        src, dst = load_gemma_scope(str(p0)), load_gemma_scope(str(p1))
        t_load = time.perf_counter() - t0
        columns, stats = match_pair(src, dst, device=args.device, chunk_size=args.chunk_size)
        t = time.perf_counter()
        write_matches(tmp / "part-0.parquet", columns, {"benchmark": True, **stats})
        t_write = time.perf_counter() - t
        total = time.perf_counter() - t0
        peak_rss = peak_rss_bytes()
        products = bare_products(src, dst, args.device, args.chunk_size)
        verdict_products = bare_verdict_products(src.n_features, dst.n_features, args.d_model, args.device)
    unavoidable = products + verdict_products + stats["seconds"]["solve"]  # sparse: its lapmod solves
    keep = planted >= 0
    recovered = float((columns["match"][keep] == planted[keep]).mean())
    s = {**dict.fromkeys(("fold", "cost", "solve", "certify", "verdict", "scores"), 0.0), **stats["seconds"]}
    gpu = stats["peak_gpu_memory_bytes"]
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {stats['device']}\n")
    cert = stats["certificate"]
    print("| n | d | device | load s | fold s | cost s | solve s | certify s | verdict s | scores s | write s "
          "| total s | verdict / rest | bare products s | verdict's products s | unavoidable s | total / unavoidable "
          "| peak RSS GiB | peak GPU GiB "
          "| total cost | certified | planted recovered |")
    print("|---" * 22 + "|")
    vs = stats["verdict"]["seconds"]
    print(f"| {args.n_features} | {args.d_model} | {stats['device']} | {t_load:.2f} | {s['fold']:.2f} "
          f"| {s['cost']:.2f} | {s['solve']:.2f} | {s['certify']:.2f} | {s['verdict']:.2f} | {s['scores']:.2f} "
          f"| {t_write:.2f} | {total:.2f} | {s['verdict'] / (total - s['verdict']):.1%} "
          f"| {products:.2f} | {verdict_products:.2f} | {unavoidable:.2f} | {total / unavoidable:.2f} "
          f"| {peak_rss / 2**30:.2f} | {'-' if gpu is None else f'{gpu / 2**30:.2f}'} "
          f"| {stats['total_cost']:.6g} | {'yes' if cert['certified'] else 'NO'} | {recovered:.4f} |")
    print("\nverdict, s: " + ", ".join(f"{k} {v:.2f}" for k, v in vs.items()))
    print("unavoidable: the bare products X Yᵀ, the verdict's own products (its null) and lapjv's solve; "
          "total: load to write, in this process")


if __name__ == "__main__":
    main()
