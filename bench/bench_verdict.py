"""How well the verdict is calibrated, on synthetic pairs with a known truth; prints Markdown tables.

Pairs from the demo's planted generator (saematch.demo.planted_site: near-duplicates,
persisting features at cosines U(lo, 0.95) under JumpReLU's scale symmetry, dying features,
half of them with a born look-alike) at several shares of persisting features and cosine
floors, and pairs of independently drawn layers. For the assignment's partner and for top-1:
expected calibration error of `confidence` (10 bins), precision and recall of `persists`
(correct: the feature persists and the partner is its planted successor), the share declared
persisting; and agreement with the planted map (−1 for dying features) of the full
assignment, the assignment masked by `persists`, and the partial assignment.

    python bench/bench_verdict.py [--features 2000] [--d 256] [--seeds 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from saematch.demo import planted_pair
from saematch.match import match_pair


def ece(conf, ok, bins=10):
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return sum((b == k).mean() * abs(ok[b == k].mean() - conf[b == k].mean()) for k in range(bins) if (b == k).any())


def judge(conf, declared, ok):
    tp = (declared & ok).sum()
    return ece(conf, ok), tp / max(declared.sum(), 1), tp / max(ok.sum(), 1), declared.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=2000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"F = {args.features}, d = {args.d}, {args.seeds} seeds per row (mean)\n")
    print("| persist | cosines | match ECE | precision | recall | top1 ECE | precision | recall | declared "
          "| full agree | masked agree | partial agree | verdict s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    cases = [(p, lo, False) for p in (0.2, 0.5, 0.8) for lo in (0.5, 0.3)] + [(0.0, 0.3, True)]
    for persist, lo, unrelated in cases:
        rows = []
        for seed in range(args.seeds):
            src, dst, planted = planted_pair(args.features, args.d, persist, 1000 + seed, cos=(lo, 0.95),
                                             unrelated=unrelated)
            cols, stats = match_pair(src, dst, device="cpu")
            part, _ = match_pair(src, dst, device="cpu", partial=True)
            ok, ok1 = (planted >= 0) & (cols["match"] == planted), (planted >= 0) & (cols["top1"] == planted)
            masked = np.where(cols["persists"], cols["match"], -1)
            rows.append([*judge(cols["confidence"], cols["persists"], ok)[:3],
                         *judge(cols["top1_confidence"], cols["top1_persists"], ok1)[:3], cols["persists"].mean(),
                         (cols["match"] == planted).mean(), (masked == planted).mean(),
                         (part["match"] == planted).mean(), stats["seconds"]["verdict"]])
        r = np.mean(rows, axis=0)
        name = "unrelated" if unrelated else f"{persist:.1f}"
        print(f"| {name} | {lo:.1f}–0.95 | " + " | ".join(f"{x:.3f}" for x in r[:-1]) + f" | {r[-1]:.2f} |")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - t:.0f} s)")
