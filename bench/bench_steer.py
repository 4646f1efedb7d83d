"""How fast steering generates, and at what memory, on the tiny model (saematch.steer).

Builds the tiny model (saematch.tiny, the evaluation's stand-in for Gemma 2 2B: Gemma 2
layout, 3 layers, d 64, 128-feature SAEs per site) in a temporary folder, then samples
``--prompts`` continuations of ``--tokens`` tokens each (top-p 0.7, T 1.27) unsteered, with
single-layer and with cumulative activation of a 12-feature set (4 per layer, res, mlp, att),
and with deactivation of its residual features; then ``--prompts`` samples of one prompt in one
batch, as rule steer generates them. Prints one Markdown table: generated tokens per second
(generation only, model in memory; the fastest of ``--repeats`` runs), the peak resident memory
of the process, the device.

    python bench/bench_steer.py [--prompts 8] [--tokens 36] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from saematch.sae import to_device
from saematch.steer import generate, steered_layers, steering_edits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_model import build_tiny  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=36)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is shown")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny(Path(tmp))
    model = tiny["model"].to(args.device)
    saes = {s: {L: to_device(sae, args.device) for L, sae in by_layer.items()} for s, by_layer in tiny["saes"].items()}
    rows = [(L, s, i) for L in range(3) for s in ("res", "mlp", "att") for i in (3, 17, 40, 90)][:12]
    feats = pl.DataFrame({"node": [f"{L}/{s}/{i}" for L, s, i in rows], "layer": [L for L, _, _ in rows],
                          "site": [s for _, s, _ in rows], "feature": [i for _, _, i in rows]},
                         schema={"node": pl.String, "layer": pl.Int32, "site": pl.String, "feature": pl.Int64})
    prompts = [" ".join(d.split()[:3]) for d in tiny["docs"][:args.prompts]]
    settings = {
        "unsteered": None,
        "activate, single layer 1, s 8": steering_edits(feats, saes, [1], "activate", 8.0),
        "activate, cumulative 0–2, s 8 exponential": steering_edits(
            feats, saes, steered_layers([0, 1, 2], 2, True), "activate", 8.0, "exponential"),
        "deactivate res, cumulative 0–2, r 0": steering_edits(
            feats.filter(pl.col("site") == "res"), saes, [0, 1, 2], "deactivate", 0.0),
    }
    generate(model, tiny["tokenizer"], prompts[:1], "gemma-scope", max_new_tokens=4)  # warm-up
    print(f"tiny model (3 layers, d 64, 128 features per SAE), {args.prompts} prompts × {args.tokens} tokens, "
          f"{args.device}, {platform.machine()}, torch threads 1\n")
    print("| setting | tokens/s | seconds | peak RSS (MiB) |")
    print("|---|---|---|---|")
    runs = [(name, edit, prompts, 1) for name, edit in settings.items()]
    # rule steer's way: each prompt's samples in one batch (here one prompt, as many samples)
    runs.append((f"unsteered, {args.prompts} samples of one prompt in one batch", None, prompts[:1], args.prompts))
    runs.append((f"cumulative 0–2, s 8, {args.prompts} samples in one batch", settings[
        "activate, cumulative 0–2, s 8 exponential"], prompts[:1], args.prompts))
    for name, edit, batch, samples in runs:
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = generate(model, tiny["tokenizer"], batch, "gemma-scope", edit, max_new_tokens=args.tokens,
                           samples=samples)
            best = min(best, time.perf_counter() - t)
        print(f"| {name} | {sum(map(len, out)) / best:.0f} | {best:.2f} | {peak_rss_mib():.0f} |")


if __name__ == "__main__":
    main()
