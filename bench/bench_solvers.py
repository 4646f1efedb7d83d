"""Assignment solvers side by side on the same SAE-like pairs: one Markdown table.

For each n, writes folded-parameter vectors of two layers to .npy files, block by block (a
share `--persist` of the features persisting at cosine U(0.6, 0.95) with log-normal norms, the
rest fresh; less similar pairs are slower to solve), and runs each solver in its own process
(peak RSS is that process's) on the same pair:

  pipeline   "solver path" rows: saematch.match.assign, the pipeline's solver path (dense
             lapjv or sparse, as `solver: auto` picks) on the prebuilt folded vectors: its
             cost build, solve and optimality certificate over all n² pairs. NOT the rest of
             match_pair (fold, feature vectors, Feature Flow's top-1 product, scores, write):
             bench/bench_pair.py times that whole path. The sparse path streams X from its
             file and holds only Y (float32 unit rows) and the edges
  sparse     the solver path's sparse branch forced (candidates + lapmod + pricing), on request
  lapjv      plain dense lapjv.lapjv on the prebuilt matrix
  scipy      scipy.optimize.linear_sum_assignment on the prebuilt matrix

A solver that cannot run at a size, or exceeds --cap seconds, gets the reason instead. Peak
RSS is the solver process's own high-water mark (VmHWM), measured after the pair is written.

    python bench/bench_solvers.py                       # n = 4096 16384 32768, d = 2304
    python bench/bench_solvers.py --n 131072 --d 4096 --solvers pipeline --cap 7200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import tempfile
import time

import numpy as np
import torch

from saematch.logs import peak_rss_bytes
from saematch.solve import LAPJV_MAX_N


def sae_like_pair(n: int, p: int, persist: float, seed: int, out: str, block: int = 8192) -> None:
    """Write X.npy, Y.npy (n, p) float32 to ``out``, block by block (memory O(block·p)).

    Rows of X: random directions with log-normal norms. Y: a share ``persist`` of X's rows
    persisting at cosine U(0.6, 0.95) (norms jittered), the rest fresh, rows permuted.
    """
    g = torch.Generator().manual_seed(seed)
    unit = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    X = np.lib.format.open_memmap(f"{out}/X.npy", mode="w+", dtype=np.float32, shape=(n, p))
    Y = np.lib.format.open_memmap(f"{out}/Y.npy", mode="w+", dtype=np.float32, shape=(n, p))
    where = torch.randperm(n, generator=g).numpy()  # row i of the unpermuted Y goes to where[i]
    for start in range(0, n, block):
        b = min(block, n - start)
        x = unit(torch.randn(b, p, generator=g)) * torch.exp(torch.randn(b, 1, generator=g) * 0.5)
        y = unit(torch.randn(b, p, generator=g)) * torch.exp(torch.randn(b, 1, generator=g) * 0.5)
        keep = torch.rand(b, generator=g) < persist
        m = int(keep.sum())
        cos = 0.6 + 0.35 * torch.rand(m, 1, generator=g)
        a = unit(x[keep])
        noise = torch.randn(m, p, generator=g)
        noise = unit(noise - (noise * a).sum(1, keepdim=True) * a)
        y[keep] = (cos * a + (1 - cos**2).sqrt() * noise) * x[keep].norm(dim=1, keepdim=True) \
            * torch.exp(torch.randn(m, 1, generator=g) * 0.2)
        X[start:start + b] = x.numpy()
        Y[where[start:start + b]] = y.numpy()
    X.flush()
    Y.flush()
    del X, Y


def _peak_rss() -> float:
    return peak_rss_bytes() / 2**30


def run_pipeline(tmp: str, k: int, chunk: int, dense_max_gb: float, device: str, solver: str = "auto") -> dict:
    from saematch.match import assign
    from saematch.solve import choose_solver
    from saematch.sparse import npy_rows

    X, Y = npy_rows(f"{tmp}/X.npy"), npy_rows(f"{tmp}/Y.npy")
    path = choose_solver(X.n, Y.n, solver, dense_max_gb)
    if path == "dense":  # the sparse path streams X from disk and loads Y itself
        X, Y = (torch.from_numpy(np.load(f"{tmp}/{name}.npy")).to(device) for name in "XY")
    t = time.perf_counter()
    match, matched_cost, cert, seconds = assign(X, Y, path=path, k=k, chunk_size=chunk,
                                                   device=torch.device(device))
    return {"path": f"solver path ({cert['solver']})", "seconds": seconds, "total": time.perf_counter() - t,
            "cost": float(matched_cost.sum()), "certified": cert["certified"], "rounds": cert["rounds"],
            "rss": _peak_rss()}


def run_lapjv(tmp: str) -> dict:
    from lapjv import lapjv

    C = np.load(f"{tmp}/C.npy")
    t = time.perf_counter()
    x = lapjv(C)[0]
    s = time.perf_counter() - t
    return {"path": "lapjv (dense)", "seconds": {"solve": s}, "total": s,
            "cost": float(C[np.arange(len(C)), x].astype(np.float64).sum()), "certified": None, "rss": _peak_rss()}


def run_scipy(tmp: str) -> dict:
    from scipy.optimize import linear_sum_assignment

    C = np.load(f"{tmp}/C.npy")
    t = time.perf_counter()
    r, c = linear_sum_assignment(C)
    s = time.perf_counter() - t
    return {"path": "scipy linear_sum_assignment", "seconds": {"solve": s}, "total": s,
            "cost": float(C[r, c].astype(np.float64).sum()), "certified": None, "rss": _peak_rss()}


def _child(fn, args, queue):
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # progress on stderr
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    try:
        queue.put(fn(*args))
    except Exception as exc:  # reported in the table
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def in_child(fn, args, cap: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    proc.join(cap)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": f"> {cap:.0f} s (cap)"}
    if queue.empty():
        return {"error": f"crashed (exit {proc.exitcode})"}
    return queue.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--d", type=int, default=2304, help="model width; vectors have 2d+1 entries")
    ap.add_argument("--persist", type=float, default=0.7)
    ap.add_argument("--solvers", nargs="+", default=["pipeline", "lapjv", "scipy"])
    ap.add_argument("--cap", type=float, default=120.0, help="seconds per solver and size")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--dense-max-gb", type=float, default=6.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    p = 2 * args.d + 1
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, torch "
          f"{torch.__version__}, device {args.device}; persist {args.persist}; cap {args.cap:.0f} s\n")
    print("| solver path | n | d | cost s | solve s | certify s | total s | peak RSS GiB | total cost | certified |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            sae_like_pair(n, p, args.persist, args.seed, tmp)
            dense_ok = 4 * n * n <= 0.45 * mem_gb * 2**30
            others = [s for s in args.solvers if s in ("lapjv", "scipy")]
            if others and dense_ok:  # the matrix lapjv and scipy get, built once
                from saematch.cost import dense_cost

                X, Y = (torch.from_numpy(np.load(f"{tmp}/{name}.npy")) for name in "XY")
                C = dense_cost(X, Y, chunk_size=args.chunk)
                np.save(f"{tmp}/C.npy", C)
                del C, X, Y
            for solver in args.solvers:
                if solver in ("pipeline", "sparse"):
                    mode = "auto" if solver == "pipeline" else "sparse"
                    r = in_child(run_pipeline, (tmp, args.k, args.chunk, args.dense_max_gb, args.device, mode),
                                 args.cap)
                elif not dense_ok:
                    r = {"error": f"dense {4 * n * n / 2**30:.0f} GiB matrix does not fit"}
                elif solver == "lapjv" and n > LAPJV_MAX_N:
                    r = {"error": f"n > {LAPJV_MAX_N}: lapjv's int32 index overflows (segfault)"}
                else:
                    r = in_child({"lapjv": run_lapjv, "scipy": run_scipy}[solver], (tmp,), args.cap)
                if "error" in r:
                    name = {"pipeline": "solver path", "sparse": "solver path (sparse, forced)", "lapjv": "lapjv (dense)",
                            "scipy": "scipy linear_sum_assignment"}[solver]
                    print(f"| {name} | {n} | {args.d} | {r['error']} | | | | | | |", flush=True)
                    continue
                s = r["seconds"]
                cost_s = s.get("cost", s.get("candidates"))
                solve_s = s.get("solve", 0) + s.get("duals", 0)
                cert_s = s.get("certify", s.get("pricing"))
                fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
                cert = "" if r["certified"] is None else ("yes" if r["certified"] else "NO") + \
                    (f" ({r['rounds']} rounds)" if r.get("rounds", 1) > 1 else "")
                print(f"| {r['path']} | {n} | {args.d} | {fmt(cost_s)} | {fmt(solve_s)} | {fmt(cert_s)} "
                      f"| {r['total']:.2f} | {r['rss']:.2f} | {r['cost']:.8g} | {cert} |", flush=True)


if __name__ == "__main__":
    main()
