"""Time the demo workflow from a clean copy: wall time, and per rule the jobs' summed seconds.

    python bench/bench_demo.py [--cores 2] [--repeat 1]

Copies Snakefile, config, workflow, scripts, envs and profiles into a temporary directory
(no results, no Hub cache) and runs `snakemake --cores N` there, as `make demo` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(cores: int) -> tuple[float, dict[str, tuple[int, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        for item in ("Snakefile", "config", "workflow", "scripts", "envs", "profiles"):
            src = ROOT / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], cwd=wd, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        rules = {}
        for tsv in (wd / "benchmarks").rglob("*.tsv"):
            rule = tsv.relative_to(wd / "benchmarks").parts[0]
            seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
            n, total = rules.get(rule, (0, 0.0))
            rules[rule] = (n + 1, total + seconds)
        return wall, rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} before the run")
    runs = [run_once(args.cores) for _ in range(args.repeat)]
    order = ("make_demo", "make_tiny", "download_sae", "download_model", "match_pair", "flow", "flow_summary",
             "lifetimes", "ablation", "summarize", "evaluate", "evaluation_summary")
    seen = {r for _, times in runs for r in times}
    rules = [r for r in order if r in seen] + sorted(seen - set(order))
    print("| run | wall s | " + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for i, (wall, times) in enumerate(runs):
        cells = [f"{times[r][0]} jobs, {times[r][1]:.1f} s" if r in times else "" for r in rules]
        print(f"| {i + 1} | {wall:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
