"""A whole model's match jobs on one GPU: each pair's stages, and all pairs sharing the GPU.

One Gemma-2-2B-shaped pair (16384 features, d 2304, planted persisting features; bench_pair's
files) runs the match job's own path (load → match_pair → write) with the GPU taken only around
its GPU stages (saematch.devices.gpu_sections). From its stage times the table projects all
``--pairs`` pairs (75: Gemma 2 2B's 3 sites × 25) run by ``--cores`` concurrent jobs sharing one
GPU: host stages run side by side, one core each; GPU stages one at a time (a conservative bound:
the slots let several hold the GPU at once, but they then share its compute). With ``--measure``
it also runs them: ``--pairs`` real job processes, ``--cores`` at a time, on the same files.

    python bench/bench_model.py [--n-features 16384] [--d-model 2304] [--pairs 75] [--cores 16] [--measure]
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench_pair import write_pair

GPU_STAGES = ("cost", "verdict")  # held inside sections (match_pair's gpu); the rest is host work


def one_job(args: tuple) -> dict:
    """The match job's path on one pair; seconds per stage, GPU-held seconds, peak GPU memory."""
    tmp, device, threads = args
    torch.set_num_threads(threads)
    from saematch.devices import gpu_sections
    from saematch.load import load_gemma_scope
    from saematch.match import match_pair
    from saematch.write import write_matches

    t0 = time.perf_counter()
    src, dst = load_gemma_scope(str(Path(tmp) / "layer_0.npz")), load_gemma_scope(str(Path(tmp) / "layer_1.npz"))
    load = time.perf_counter() - t0
    gpu = gpu_sections(device != "cpu" and (device != "auto" or torch.cuda.is_available()), device)
    columns, stats = match_pair(src, dst, gpu=gpu)
    t = time.perf_counter()
    out = Path(tmp) / f"part-{mp.current_process().pid}.parquet"
    write_matches(out, columns, {"benchmark": True})
    out.unlink()
    s = dict(stats["seconds"], load=load, write=time.perf_counter() - t)
    s["total"] = time.perf_counter() - t0
    return {"seconds": s, "device": stats["device"], "sections": stats["gpu_sections"],
            "end": time.time(), "start": time.time() - s["total"]}


def project(seconds: dict, pairs: int, cores: int) -> float:
    """Makespan of ``pairs`` jobs, ``cores`` at once; each job host → GPU → host → GPU → host,
    host stages on a core of their own, GPU stages one job at a time (list scheduling)."""
    pre = seconds["load"] + seconds.get("fold", 0) + seconds.get("vectors", 0)
    mid = seconds["solve"] + seconds.get("certify", 0)
    post = seconds.get("scores", 0) + seconds["write"]
    phases = [("host", pre), ("gpu", seconds["cost"]), ("host", mid), ("gpu", seconds["verdict"]), ("host", post)]
    gpu_free, now = 0.0, 0.0
    running = []  # (time its current phase ends, job, phase index)
    waiting, done = list(range(pairs)), 0
    for _ in range(min(cores, pairs)):
        running.append((phases[0][1], waiting.pop(0), 0))
    heapq.heapify(running)
    while running:
        now, job, k = heapq.heappop(running)
        k += 1
        if k == len(phases):
            done += 1
            if waiting:
                heapq.heappush(running, (now + phases[0][1], waiting.pop(0), 0))
            continue
        kind, length = phases[k]
        if kind == "gpu":
            start = max(now, gpu_free)
            gpu_free = start + length
            heapq.heappush(running, (gpu_free, job, k))
        else:
            heapq.heappush(running, (now + length, job, k))
    return now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-features", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=2304)
    ap.add_argument("--pairs", type=int, default=75)
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--device", default="auto", help="auto (CUDA where there is one) | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job (the host stages use one core)")
    ap.add_argument("--measure", action="store_true", help="also run all --pairs jobs, --cores at a time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        child = mp.get_context("spawn").Process(target=write_pair, args=(Path(tmp), args.n_features, args.d_model,
                                                                          0.7, 0))
        child.start()
        child.join()
        with mp.get_context("spawn").Pool(1) as pool:  # a fresh process, like a job
            one = pool.apply(one_job, ((tmp, args.device, args.threads),))
        measured = None
        if args.measure:
            t = time.perf_counter()
            with mp.get_context("spawn").Pool(args.cores) as pool:
                jobs = pool.map(one_job, [(tmp, args.device, args.threads)] * args.pairs, chunksize=1)
            measured = time.perf_counter() - t
    s = one["seconds"]
    gpu_held = sum(s[k] for k in GPU_STAGES)
    print(f"Machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} cores; one pair "
          f"{args.n_features} × {args.d_model} on {one['device']}, {args.threads} torch thread(s) per job\n")
    print("| stage | " + " | ".join(s) + " |\n|---|" + "---|" * len(s))
    print("| seconds | " + " | ".join(f"{v:.2f}" for v in s.values()) + " |")
    print("\n| section | GB asked | peak GB on the device |\n|---|---|---|")
    for stage, r in one["sections"].items():
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e9:.2f}"
        print(f"| {stage} | {r['need_bytes'] / 1e9:.2f} | {peak} |")
    print(f"\n| pairs | cores | GPU-held s per pair | host s per pair | projected min | measured min |\n"
          "|---|---|---|---|---|---|")
    proj = project(s, args.pairs, args.cores)
    meas = "-" if measured is None else f"{measured / 60:.2f}"
    print(f"| {args.pairs} | {args.cores} | {gpu_held:.2f} | {s['total'] - gpu_held:.2f} | {proj / 60:.2f} | {meas} |")
    if measured is not None:
        waits = [j["seconds"]["total"] for j in jobs]
        print(f"\nmeasured: {len(jobs)} jobs, per job {min(waits):.1f}–{max(waits):.1f} s "
              f"(sections wait for the GPU; the target is ≤ 2 min for 75 pairs on one H100-class GPU, 16 cores)")


if __name__ == "__main__":
    main()
