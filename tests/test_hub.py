"""The real hf_hub_download path, against a pre-filled Hugging Face cache, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saematch.demo import npz_bytes, write_hub_repo
from saematch.hub import fetch, resolve, resolve_files, sha256_file
from saematch.load import load_sae
from saematch.sae import SaeError
from conftest import gemma_arrays

FILE = "layer_3/width_16k/average_l0_50/params.npz"


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "hub"
    commit = write_hub_repo(cache, "google/gemma-scope-2b-pt-res", {FILE: npz_bytes(gemma_arrays())})
    return cache, commit


def blob_of(cache, commit):
    return Path(os.path.realpath(cache / "models--google--gemma-scope-2b-pt-res/snapshots" / commit / FILE))


def test_fetch_resolves_the_branch_to_its_commit_and_records_size_and_sha256(cache):
    cache, commit = cache
    p = fetch("google/gemma-scope-2b-pt-res", {"params": FILE}, "main", str(cache), local_files_only=True)
    assert p["commit"] == commit and p["revision"] == "main"
    assert p["files"]["params"]["sha256"] == sha256_file(blob_of(cache, commit))
    sae = load_sae({"format": "gemma-scope", **p})
    assert sae.n_features == 32 and sae.source["commit"] == commit


def test_fetch_honours_hf_hub_cache_and_hf_hub_offline(cache):
    """No cache_dir given: huggingface_hub must find the cache through the environment."""
    cache, commit = cache
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    code = (f"from saematch.hub import fetch; import json; "
            f"print(json.dumps(fetch('google/gemma-scope-2b-pt-res', {{'params': '{FILE}'}}, '{commit}')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1])["commit"] == commit


def test_fetch_rejects_a_truncated_download(cache):
    cache, commit = cache
    blob = blob_of(cache, commit)
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(SaeError, match=f"{FILE}: cached file .* corrupt or truncated"):
        fetch("google/gemma-scope-2b-pt-res", {"params": FILE}, "main", str(cache), local_files_only=True)


def test_fetch_names_a_file_that_is_not_there(cache):
    cache, _ = cache
    with pytest.raises(SaeError, match="layer_9/params.npz @ main: download failed"):
        fetch("google/gemma-scope-2b-pt-res", {"params": "layer_9/params.npz"}, "main", str(cache),
              local_files_only=True)


def test_resolve_rejects_a_file_changed_after_download(cache):
    cache, commit = cache
    p = fetch("google/gemma-scope-2b-pt-res", {"params": FILE}, "main", str(cache), local_files_only=True)
    blob = blob_of(cache, commit)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(SaeError, match="sha256 differs"):
        resolve(p, "params")
    blob.write_bytes(bytes(data[:-10]))
    with pytest.raises(SaeError, match="truncated or replaced"):
        resolve_files(p)
