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
    with pytest.raises(SaeError, match="layer_9/params.npz @ main: not in the Hugging Face cache and downloads "
                                       r"are off \(the catalog's hub.local_files_only\)"):
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


# --- branches, an unreachable Hub, gated repos, and the notice before a run ---------------------

def _fetch_in_a_subprocess(cache, revision, env=None):
    """fetch in a fresh interpreter (huggingface_hub reads HF_* at import), logging to stderr."""
    code = ("import json, logging; logging.basicConfig(level=logging.WARNING); from saematch.hub import fetch; "
            f"print(json.dumps(fetch('google/gemma-scope-2b-pt-res', {{'params': '{FILE}'}}, '{revision}')))")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_fetching_a_branch_warns_and_records_the_commit_it_resolved_to(cache):
    cache, commit = cache
    out = _fetch_in_a_subprocess(cache, "main")
    assert json.loads(out.stdout.splitlines()[-1])["commit"] == commit
    assert f"google/gemma-scope-2b-pt-res @ main is a branch, not a commit: resolved to {commit}" in out.stderr
    pinned = _fetch_in_a_subprocess(cache, commit)
    assert pinned.returncode == 0 and "branch" not in pinned.stderr


def test_an_offline_run_missing_a_file_says_so_in_one_line_with_what_to_do(tmp_path):
    out = _fetch_in_a_subprocess(tmp_path / "empty-cache", "main")
    line = [m for m in out.stderr.splitlines() if "SaeError" in m][-1]
    assert (f"google/gemma-scope-2b-pt-res/{FILE} @ main: not in the Hugging Face cache and downloads are off "
            "(HF_HUB_OFFLINE=1)") in line
    assert "unset HF_HUB_OFFLINE" in line


def _unreachable():
    import httpx2 as httpx
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub ... "
                                      "Please check your connection") from httpx.ConnectError(
            "[Errno -2] Name or service not known")
    except LocalEntryNotFoundError as exc:
        return exc


def test_an_unreachable_hub_is_named_with_the_repo_the_file_and_what_to_do(monkeypatch):
    import saematch.hub as hub

    monkeypatch.setattr(hub, "hf_hub_download", _Flaky(_unreachable()))
    with pytest.raises(SaeError) as err:
        hub._download("google/gemma-2-2b", "config.json", "c5eb", None, False, sleep=lambda s: None)
    message = str(err.value)
    assert message.startswith("google/gemma-2-2b/config.json @ c5eb: the Hugging Face Hub cannot be reached")
    assert "Name or service not known" in message and "HF_ENDPOINT" in message and "\n" not in message


@pytest.mark.parametrize("token", [None, "hf_not_a_real_token_0123456789"])
def test_a_gated_repo_says_to_accept_the_licence_and_log_in(monkeypatch, tmp_path, token):
    import httpx2 as httpx
    import saematch.hub as hub
    from huggingface_hub.errors import GatedRepoError

    response = httpx.Response(401, request=httpx.Request("HEAD", "https://huggingface.co/google/gemma-2-2b"))
    gated = GatedRepoError("401 Client Error. Access to model google/gemma-2-2b is restricted.", response=response)
    monkeypatch.setattr(hub, "hf_hub_download", _Flaky(gated))
    from huggingface_hub import constants

    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(SaeError) as err:
        hub._download("google/gemma-2-2b", "config.json", "c5eb", None, False, sleep=lambda s: None)
    message = str(err.value)
    assert message.startswith("google/gemma-2-2b/config.json @ c5eb: google/gemma-2-2b is gated: accept its licence "
                              "at https://huggingface.co/google/gemma-2-2b")
    assert ("no token is set: run `hf auth login` or set HF_TOKEN" if token is None else
            "the token that is set has no access yet") in message
    assert "\n" not in message and "hf_not_a_real" not in message


def test_the_notice_before_a_run_lists_downloads_gated_repos_the_token_and_unpinned_branches():
    from saematch.hub import download_notice

    downloads = [
        {"repo_id": "google/gemma-scope-2b-pt-res", "revision": "fd57" * 10, "files": {"params": "a"}},
        {"repo_id": "google/gemma-scope-2b-pt-res", "revision": "fd57" * 10, "files": {"params": "b"}},
        {"repo_id": "google/gemma-scope-2b-pt-mlp", "revision": "main", "files": {"params": "a"}},
        {"repo_id": "google/gemma-2-2b", "revision": "c5eb" * 10, "files": {"a": "a", "b": "b", "c": "c"}},
    ]
    lines = download_notice(downloads, gated={"google/gemma-2-2b"}, token_set=False, offline=False)
    text = "\n".join(lines)
    assert lines[0] == ("saematch: 6 files from 3 Hugging Face repos are needed (taken from the Hugging Face "
                        "cache where they are, else downloaded: the network is needed)")
    assert "google/gemma-scope-2b-pt-res @ fd57fd5 (2 files)" in text
    assert "gated: google/gemma-2-2b: accept its licence on the Hub; no token is set (HF_TOKEN or `hf auth login`)" in text
    assert "unpinned: google/gemma-scope-2b-pt-mlp @ main is a branch" in text
    assert "offline" not in text
    quiet = download_notice(downloads[:1], gated={"google/gemma-2-2b"}, token_set=True, offline=True)
    assert "gated" not in "\n".join(quiet) and "HF_HUB_OFFLINE=1" in "\n".join(quiet)
    assert download_notice([], gated=set(), token_set=False, offline=False) == []


@pytest.mark.parametrize("where", ["token file", "HF_TOKEN", "none"])
def test_a_token_in_the_environment_or_the_hf_home_counts_and_is_never_shown(tmp_path, where):
    home = tmp_path / "hf-home"
    home.mkdir()
    secret = "hf_SecretTokenNeverShown0123456789"
    if where == "token file":
        (home / "token").write_text(secret)
    env = dict(os.environ, HF_HOME=str(home), HF_TOKEN=secret if where == "HF_TOKEN" else "")
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    code = ("from saematch.hub import token_is_set, download_notice; "
            "print(token_is_set()); print(*download_notice([{'repo_id': 'google/gemma-2-2b', 'revision': 'main', "
            "'files': {'c': 'config.json'}}], {'google/gemma-2-2b'}, token_is_set(), False), sep='\\n')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0] == str(where != "none")
    assert ("a token is set" in out.stdout) == (where != "none") and "SecretToken" not in out.stdout + out.stderr
