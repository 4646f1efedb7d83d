"""Peak host memory of the match job at Llama Scope widths, against what the Snakemake rule requests.

For each width F (d = 4096 by default) it writes a synthetic pair in the real Llama Scope layout
(bf16 ``checkpoints/final.safetensors`` + ``hyperparams.json``, as a cached Hub repo with
download pointers; written in blocks by a child process), then runs the job's own path in a
fresh child process per width, so peaks do not mix: load_pair (pointers) → match_pair →
write_matches. The child's peak RSS (saematch.logs.peak_rss_bytes, ru_maxrss) is compared with
saematch.memory.match_memory_bytes, the formula workflow/rules/match.smk requests as mem_mb.
Prints one Markdown table.

    python bench/bench_memory.py --sizes 16384 32768 131072 --d 4096 --workdir /tmp/bench_memory

``--stop-after candidates`` (the default for widths on the sparse path, where the full solve
takes hours on 2 CPU cores) ends the child once the sparse solver's candidate pass is done
(saematch.sparse.candidates returned): the table says so; ``--full`` runs every width to the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import struct
import time
from pathlib import Path

import numpy as np


def _bf16_bytes(a: np.ndarray) -> bytes:
    """float32 → bf16 (round to nearest even) as little-endian bytes."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()


def write_llama_pair(folder: Path, F: int, d: int, persist: float = 0.7, seed: int = 0, block: int = 4096):
    """Two Llama Scope SAE folders layer_0, layer_1 (bf16 safetensors + hyperparams.json): layer 1's
    feature i is a perturbed copy of layer 0's feature i for a share ``persist`` of features,
    fresh otherwise; decoder column norms vary. Written block by block of features (encoder
    rows appended, decoder columns written in place): memory O(block·d)."""
    names = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
    shapes = {"encoder.weight": [F, d], "encoder.bias": [F], "decoder.weight": [d, F], "decoder.bias": [d]}
    header, at = {}, 0
    for k in names:
        size = 2 * int(np.prod(shapes[k]))
        header[k] = {"dtype": "BF16", "shape": shapes[k], "data_offsets": [at, at + size]}
        at += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    base = 8 + len(head)
    paths = []
    for L in (0, 1):
        path = folder / f"layer_{L}" / "checkpoints" / "final.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(head)) + head)
            fh.truncate(base + at)
        paths.append(path)
        (folder / f"layer_{L}" / "hyperparams.json").write_text(json.dumps({
            "d_model": d, "d_sae": F, "act_fn": "jumprelu", "jump_relu_threshold": 0.05 + 0.05 * L,
            "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": 8.0 + L, "out": 9.0 + L},
            "sparsity_include_decoder_norm": True, "top_k": 50}))
    with open(paths[0], "r+b") as f0, open(paths[1], "r+b") as f1:
        _write_blocks((f0, f1), F, d, persist, seed, block, header, base, names)


def _write_blocks(files, F, d, persist, seed, block, header, base, names):
    off = {k: base + header[k]["data_offsets"][0] for k in names}
    for s in range(0, F, block):
        b = min(block, F - s)
        rng = np.random.default_rng([seed, s])
        enc0 = rng.standard_normal((b, d), np.float32) / np.sqrt(d)
        dec0 = rng.standard_normal((b, d), np.float32) * (0.5 + rng.random((b, 1), np.float32))
        keep = rng.random(b) < persist
        enc1 = np.where(keep[:, None], enc0 + 0.6 * rng.standard_normal((b, d), np.float32) / np.sqrt(d),
                        rng.standard_normal((b, d), np.float32) / np.sqrt(d))
        dec1 = np.where(keep[:, None], dec0 + 0.6 * rng.standard_normal((b, d), np.float32),
                        rng.standard_normal((b, d), np.float32) * (0.5 + rng.random((b, 1), np.float32)))
        for fh, enc, dec in ((files[0], enc0, dec0), (files[1], enc1, dec1)):
            os.pwrite(fh.fileno(), _bf16_bytes(enc), off["encoder.weight"] + 2 * s * d)
            os.pwrite(fh.fileno(), _bf16_bytes(0.1 * rng.standard_normal(b, np.float32)), off["encoder.bias"] + 2 * s)
            cols = _bf16_bytes(dec.T)  # (d, b): row r goes to decoder row r, columns s..s+b
            for r in range(d):
                os.pwrite(fh.fileno(), cols[2 * b * r: 2 * b * (r + 1)], off["decoder.weight"] + 2 * (r * F + s))
    for fh in files:
        os.pwrite(fh.fileno(), _bf16_bytes(np.zeros(d, np.float32)), off["decoder.bias"])


def hub_pointers(folder: Path, cache: Path) -> list[dict]:
    """Each layer folder as one commit of a cached Hub repo (files moved into its snapshot) and
    the download pointer (saematch.hub) that names it, size and sha256 included."""
    pointers = []
    for L in (0, 1):
        repo, commit = f"bench/llama-{L}", f"{L:040d}"
        snap = cache / f"models--bench--llama-{L}" / "snapshots" / commit
        files = {}
        for role, name in (("weights", "checkpoints/final.safetensors"), ("hyperparams", "hyperparams.json")):
            target = snap / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / f"layer_{L}" / name, target)
            digest = hashlib.sha256()
            with open(target, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    digest.update(chunk)
            files[role] = {"filename": name, "size": target.stat().st_size, "sha256": digest.hexdigest()}
        (snap.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
        (snap.parents[1] / "refs" / "main").write_text(commit)
        pointers.append({"format": "llama-scope", "repo_id": repo, "revision": "main", "commit": commit,
                         "cache_dir": str(cache), "files": files})
    return pointers


class _Stop(Exception):
    pass


def run_job(pointers: list[dict], out: str, stop_after: str, threads: int, queue, solver: str = "auto") -> None:
    """The match job's path in this (fresh) process; puts (peak RSS bytes, path, stage, info)."""
    import torch

    from saematch import sparse
    from saematch.load import load_pair
    from saematch.logs import peak_rss_bytes
    from saematch.match import match_pair
    from saematch.write import write_matches

    torch.set_num_threads(threads)
    info = {}
    if stop_after == "candidates":
        done = sparse.candidates

        def candidates_then_stop(*a, **kw):
            edges = done(*a, **kw)
            info["edges"] = len(edges[0])
            raise _Stop
        sparse.candidates = candidates_then_stop
    t = time.perf_counter()
    src, dst = load_pair(pointers[0], pointers[1], 0, where=("layer 0", "layer 1"),
                         stored=True if solver == "sparse" else None)
    info["load_s"] = time.perf_counter() - t
    info["held"] = type(src).__name__
    stage = "write"
    try:
        columns, stats = match_pair(src, dst, device="cpu", solver=solver)
        write_matches(out, columns, {"benchmark": True, **stats})
        info["certified"] = stats["certificate"]["certified"]
        info["solver"] = stats["certificate"]["solver"]
    except _Stop:
        stage = "candidates"
    info["total_s"] = time.perf_counter() - t
    queue.put((peak_rss_bytes(), stage, info))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 32768, 131072])
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--workdir", default="/tmp/bench_memory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="run sparse widths to the end too")
    ap.add_argument("--solver", default="auto", choices=["auto", "sparse"],
                    help="sparse: force the sparse path (SAEs held as stored) at every width")
    args = ap.parse_args()
    from saematch.memory import match_memory_bytes
    from saematch.solve import choose_solver

    ctx = mp.get_context("spawn")
    rows = []
    for F in args.sizes:
        work = Path(args.workdir) / f"F{F}_d{args.d}"
        if not (work / "pointers.json").exists():
            writer = ctx.Process(target=write_llama_pair, args=(work, F, args.d))
            writer.start()
            writer.join()
            (work / "pointers.json").write_text(json.dumps(hub_pointers(work, work / "hub")))
        pointers = json.loads((work / "pointers.json").read_text())
        path = choose_solver(F, F, args.solver)
        stop = "none" if path == "dense" or args.full else "candidates"
        queue = ctx.Queue()
        job = ctx.Process(target=run_job, args=(pointers, str(work / "part-0.parquet"), stop, args.threads, queue,
                                                 args.solver))
        job.start()
        peak, stage, info = queue.get()
        job.join()
        request = match_memory_bytes(F, args.d, "llama-scope", args.solver,
                                     stored=True if args.solver == "sparse" else None)
        rows.append((F, path, stage, peak, request, info))
        print(f"F={F}: {path}, to {stage}, peak {peak / 2**30:.2f} GiB, requested {request / 2**30:.2f} GiB, "
              f"{info}", flush=True)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} torch threads, CPU\n")
    print("| n | d | format (held as) | solver path | measured to | peak RSS GiB | mem_mb requested | "
          "requested / peak | job s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for F, path, stage, peak, request, info in rows:
        to = "write (whole job)" if stage == "write" else f"end of candidates ({info.get('edges')} edges)"
        print(f"| {F} | {args.d} | Llama Scope bf16 ({info['held']}) | {path} | {to} | {peak / 2**30:.2f} "
              f"| {int(request / 1e6)} ({request / 2**30:.2f} GiB) | {request / peak:.2f} | {info['total_s']:.0f} |")


if __name__ == "__main__":
    main()
