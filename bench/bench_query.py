"""How fast the ``saematch`` command answers on a Gemma-sized result set.

Writes, in a temporary folder, what a full Gemma Scope run leaves: 75 matches files (3 sites
× 25 pairs) and 25 flow files, 16384 rows each, in the pipeline's own formats; residual
features chained so that a backward trace walks all 25 layers. Then times each query in
process (the library path) and as a fresh ``python -m saematch`` process (what a user waits
for, interpreter start included). Prints one Markdown table.

    python bench/bench_query.py [--features 16384] [--layers 26] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saematch.cli import main
from saematch.write import write_flow, write_matches


def write_run(root: Path, F: int, n_layers: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ar = np.arange(F, dtype=np.int32)
    for site in ("res", "mlp", "att"):
        for L in range(n_layers - 1):
            perm = rng.permutation(F).astype(np.int32)
            cos = rng.uniform(0.3, 0.95, F).astype(np.float32)
            conf = rng.random(F).astype(np.float32)
            write_matches(root / f"matches/site={site}/layer={L}/part-0.parquet",
                          {"feature": ar, "match": perm, "top1": perm, "cosine": cos, "mse": cos, "top1_cosine": cos,
                           "persists": conf >= 0.5, "confidence": conf, "top1_persists": conf >= 0.5,
                           "top1_confidence": conf}, {"benchmark": True})
    k = 5
    for L in range(1, n_layers):
        cols = {"feature": ar, "case": np.full(F, "A")}
        for m in ("res", "mlp", "att"):
            top = rng.integers(0, F, (F, k)).astype(np.int32)
            s = np.sort(rng.uniform(0.1, 0.9, (F, k)).astype(np.float32), axis=1)[:, ::-1].copy()
            if m == "res":
                s[:, 0] = 0.9  # every residual link above the cut: the backward walk reaches layer 0
            cols.update({m: top[:, 0], f"s_{m}": s[:, 0], f"{m}_top": top, f"s_{m}_top": s})
        write_flow(root / f"flow/res+mlp+att/layer={L}.parquet", cols, k, {"benchmark": True, "neuronpedia": {}})


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        t = time.perf_counter()
        write_run(results / "model=gemma-2-2b" / "variant=16k", args.features, args.layers)
        print(f"wrote {3 * (args.layers - 1)} matches + {args.layers - 1} flow files of {args.features} rows "
              f"in {time.perf_counter() - t:.0f} s; {platform.processor() or platform.machine()}\n")
        last = args.layers - 1
        queries = {
            f"trace --back {last}/res/4230 (all {last} layers)": ["trace", "gemma-2-2b", f"{last}/res/4230", "--format", "json"],
            f"trace --forward 0/res/4230": ["trace", "gemma-2-2b", "0/res/4230", "--forward", "--format", "json"],
            "show 12/res/4230": ["show", "gemma-2-2b", "12/res/4230", "--json"],
            "show 12/res/99999 (an unknown feature: the error)": ["show", "gemma-2-2b", "12/res/99999", "--json"],
        }
        print("| query | in process s (best of %d) | fresh `python -m saematch` s |" % args.repeat)
        print("|---|---|---|")
        import contextlib
        import io

        for name, argv in queries.items():
            full = ["--results", str(results), *argv]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                inproc = timed(lambda: main(full), args.repeat)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "saematch", *full], capture_output=True)
            fresh = time.perf_counter() - t
            print(f"| {name} | {inproc:.3f} | {fresh:.2f} |")


if __name__ == "__main__":
    main_bench()
