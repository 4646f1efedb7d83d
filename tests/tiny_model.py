"""The tiny model and its SAEs as the pipeline writes them, read back through the Hub cache (the
evaluation's and the steering's tests build it once per test module)."""

from __future__ import annotations

from pathlib import Path

from saematch import hub, lm
from saematch.load import load_gemma_scope
from saematch.tiny import make_tiny

N_LAYERS, D, F = 3, 64, 128
SITES = ("res", "mlp", "att")


def build_tiny(root: Path) -> dict:
    paths = {s: [f"layer_{L}/width_2x/average_l0_10/params.npz" for L in range(N_LAYERS)] for s in SITES}
    repos = {s: f"t/scope-{s}" for s in SITES}
    manifest = make_tiny(root / "cache", "t/gemma-2", repos, paths, N_LAYERS, D, 4, F, root / "text.txt")
    pointer = hub.fetch("t/gemma-2", {f: f for f in manifest["repos"]["t/gemma-2"]["files"]},
                        cache_dir=root / "cache", local_files_only=True)
    model, tokenizer = lm.load_lm(hub.resolve_files(pointer))
    saes = {}
    for s in SITES:
        p = hub.fetch(repos[s], {f"L{L}": paths[s][L] for L in range(N_LAYERS)}, cache_dir=root / "cache",
                      local_files_only=True)
        saes[s] = {L: load_gemma_scope(hub.resolve(p, f"L{L}")) for L in range(N_LAYERS)}
    docs = lm.read_documents(str(root / "text.txt"))
    return {"model": model, "tokenizer": tokenizer, "saes": saes, "docs": docs, "manifest": manifest, "root": root}
