"""The tiny model's build (saematch.tiny) is byte-for-byte reproducible and its SAEs are healthy.

Two builds run in separate processes at once, with different thread settings (as CI and users
differ), each into its own folder; every file they write must have the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BUILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from saematch.tiny import make_tiny
root = sys.argv[1]
sites = ("res", "mlp", "att")
paths = {s: [f"layer_{L}/width_2x/average_l0_10/params.npz" for L in range(3)] for s in sites}
make_tiny(root + "/cache", "t/gemma-2", {s: f"t/scope-{s}" for s in sites}, paths, 3, 64, 4, 128,
          root + "/text.txt", hub_path=root + "/hub.json")
"""


def _contents(root: Path) -> dict[str, str]:
    """Each file under ``root`` (relative path) → sha256 of its bytes, or a symlink's target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The tiny model built twice at once: one process set to 1 thread, one to 8 (at 8, without
    make_tiny's own one-thread setting, even the model's weights differ)."""
    roots, procs = [], []
    for threads in (1, 8):
        root = tmp_path_factory.mktemp(f"tiny-{threads}-threads")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(threads)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        roots.append(root)
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    return roots


def test_two_builds_with_different_thread_counts_write_identical_files(two_builds):
    one, two = (_contents(root) for root in two_builds)
    assert sorted(one) == sorted(two)
    assert len(one) > 20 and (two_builds[0] / "hub.json").is_file()
    assert [f for f in one if one[f] != two[f]] == []


def test_every_tiny_sae_feature_has_a_unit_norm_decoder_row(two_builds):
    decoders = sorted(two_builds[0].glob("cache/models--t--scope-*/snapshots/*/layer_*/*/*/params.npz"))
    assert len(decoders) == 9
    for path in decoders:
        norms = np.linalg.norm(np.load(path)["W_dec"].astype(np.float64), axis=1)
        assert np.abs(norms - 1).max() < 1e-5, (path, norms.min(), norms.max())
