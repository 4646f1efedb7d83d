"""The tiny model and its SAEs as the pipeline writes them, read back through the Hub cache (the
evaluation's and the steering's tests build it once per test module).

With ``SAEMATCH_TINY_CACHE`` set to a folder (tools/mutation.py sets it: every mutant runs its
tests in a fresh process), the files are built once into it and read from there; the folder's
name holds a hash of the sources that write them (saematch.tiny, demo, lm), so a change there
builds afresh. Unset (CI, ``make test``), every test module builds its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from saematch import hub, lm
from saematch.load import load_gemma_scope
from saematch.tiny import make_tiny

N_LAYERS, D, F = 3, 64, 128
SITES = ("res", "mlp", "att")


def build_tiny(root: Path) -> dict:
    cache = os.environ.get("SAEMATCH_TINY_CACHE")
    if cache:
        root = _cached(Path(cache))
    return _read(root) if (root / "done").exists() else _read(_write(root))


def _cached(cache: Path) -> Path:
    import saematch.demo
    import saematch.lm
    import saematch.tiny

    key = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (saematch.tiny, saematch.demo, saematch.lm)))
    root = cache / f"tiny-{key.hexdigest()[:16]}"
    if not (root / "done").exists():
        cache.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(dir=cache, prefix="part-"))
        _write(part)
        try:
            part.rename(root)  # atomic: a process that lost the race keeps the winner's copy
        except OSError:
            shutil.rmtree(part, ignore_errors=True)
    return root


PATHS = {s: [f"layer_{L}/width_2x/average_l0_10/params.npz" for L in range(N_LAYERS)] for s in SITES}
REPOS = {s: f"t/scope-{s}" for s in SITES}


def _write(root: Path) -> Path:
    make_tiny(root / "cache", "t/gemma-2", REPOS, PATHS, N_LAYERS, D, 4, F, root / "text.txt",
              hub_path=root / "manifest.json")
    (root / "done").touch()
    return root


def _read(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    pointer = hub.fetch("t/gemma-2", {f: f for f in manifest["repos"]["t/gemma-2"]["files"]},
                        cache_dir=root / "cache", local_files_only=True)
    model, tokenizer = lm.load_lm(hub.resolve_files(pointer))
    saes = {}
    for s in SITES:
        p = hub.fetch(REPOS[s], {f"L{L}": PATHS[s][L] for L in range(N_LAYERS)}, cache_dir=root / "cache",
                      local_files_only=True)
        saes[s] = {L: load_gemma_scope(hub.resolve(p, f"L{L}")) for L in range(N_LAYERS)}
    docs = lm.read_documents(str(root / "text.txt"))
    return {"model": model, "tokenizer": tokenizer, "saes": saes, "docs": docs, "manifest": manifest, "root": root}
