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


class _Flaky:
    """hf_hub_download stand-in: raises the given errors in turn, then returns a path."""

    def __init__(self, *errors, path="/cache/file"):
        self.errors, self.calls, self.path = list(errors), 0, path

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.path


def test_a_download_is_retried_on_network_errors_only(monkeypatch):
    import saematch.hub as hub

    flaky = _Flaky(ConnectionError("reset by peer"), TimeoutError("read timed out"))
    monkeypatch.setattr(hub, "hf_hub_download", flaky)
    waits = []
    assert hub._download("r/x", "f.npz", "main", None, False, sleep=waits.append) == "/cache/file"
    assert flaky.calls == 3 and len(waits) == 2


@pytest.mark.parametrize("error", ["missing", "offline"])
def test_a_missing_file_is_not_retried(monkeypatch, error):
    import saematch.hub as hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    exc = EntryNotFoundError("404 Client Error: Entry Not Found") if error == "missing" else \
        LocalEntryNotFoundError("offline and not in the cache")
    flaky = _Flaky(exc, exc, exc)
    monkeypatch.setattr(hub, "hf_hub_download", flaky)
    with pytest.raises(SaeError, match="r/x/f.npz @ main: download failed"):
        hub._download("r/x", "f.npz", "main", None, False, sleep=lambda s: None)
    assert flaky.calls == 1


def test_network_errors_that_persist_fail_after_three_attempts_naming_the_file(monkeypatch):
    import saematch.hub as hub

    flaky = _Flaky(*[ConnectionError("down")] * 5)
    monkeypatch.setattr(hub, "hf_hub_download", flaky)
    with pytest.raises(SaeError, match="r/x/f.npz @ main: download failed: down"):
        hub._download("r/x", "f.npz", "main", None, False, sleep=lambda s: None)
    assert flaky.calls == hub.RETRIES == 3
