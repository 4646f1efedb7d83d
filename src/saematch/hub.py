"""Download from the Hugging Face Hub into its normal cache, and find files there again.

A download yields a *pointer*: a small JSON-able dict naming repo, pinned revision, resolved
commit and, per file, its path in the repo, size and sha256. Pipelines keep the pointer,
not a second copy of the file; :func:`resolve` finds the cached file again from it.
HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN are honoured by huggingface_hub itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from huggingface_hub import hf_hub_download, try_to_load_from_cache

from .errors import SaeError

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"snapshots/([0-9a-f]{40})/")
_FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _check_blob(path: str, repo_id: str, filename: str) -> dict:
    """Size and sha256 of a cached file; LFS blobs are named by their sha256, so check it."""
    real = os.path.realpath(path)
    size = os.path.getsize(real)
    digest = sha256_file(real)
    blob_name = os.path.basename(real)
    if _SHA256.match(blob_name) and blob_name != digest:
        raise SaeError(
            f"{repo_id}/{filename}: cached file {real} is corrupt or truncated "
            f"({size} bytes, sha256 {digest[:12]}… but the Hub's sha256 is {blob_name[:12]}…); "
            "delete it and download again"
        )
    return {"size": size, "sha256": digest}


RETRIES = 3  # attempts at a download that fails on the network
RETRY_SECONDS = 5.0


def is_transient(exc: BaseException) -> bool:
    """Network trouble worth another try (timeouts, dropped connections, HTTP 429 and 5xx);
    not a missing, gated or corrupt file, nor an offline cache miss."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is not None and (status == 429 or status >= 500)
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "TimeoutError", "ConnectTimeout", "ReadTimeout",
                         "RemoteProtocolError", "ChunkedEncodingError", "TimeoutException",
                         "NetworkError", "IncompleteRead"})


def is_commit(revision: str) -> bool:
    """Whether a revision is a full commit hash (anything else is a branch or tag that can move)."""
    return bool(_FULL_COMMIT.match(revision))


def unpinned_warning(repo_id: str, revision: str, commit: str | None) -> str:
    """What a download of a branch (not a commit) says: the commit it resolved to."""
    return (f"{repo_id} @ {revision} is a branch, not a commit: resolved to {commit} (recorded in the pointer "
            "and every result made from it); pin that commit in config/config.yaml to keep the run reproducible")


def token_is_set() -> bool:
    """Whether downloads carry a Hugging Face token: HF_TOKEN, or the token file `hf auth login`
    writes into the HF home. Never reads the token out, and never contacts the Hub."""
    from huggingface_hub import constants

    return bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
                or os.path.isfile(constants.HF_TOKEN_PATH))


def offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids every download."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def failure_reason(exc: BaseException, repo_id: str, local_files_only: bool) -> str:
    """Why a download failed and what to do, in one line (no token is ever shown)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    hub = f"https://huggingface.co/{repo_id}"
    login = "run `hf auth login` or set HF_TOKEN"
    if isinstance(exc, GatedRepoError):
        token = ("the token that is set has no access yet (accepted with the account of that token?)"
                 if token_is_set() else f"no token is set: {login}")
        return f"{repo_id} is gated: accept its licence at {hub}; {token}"
    if isinstance(exc, RepositoryNotFoundError):
        token = "" if token_is_set() else f"; if it is private or gated, {login}"
        return f"repository {repo_id} not found on the Hub (check repo_id in config/config.yaml){token}"
    if isinstance(exc, LocalEntryNotFoundError):
        if local_files_only or offline():
            why, fix = (("HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE") if offline() else
                        ("the catalog's hub.local_files_only", "set hub.local_files_only: false"))
            return (f"not in the Hugging Face cache and downloads are off ({why}): {fix} to download it, "
                    "or point HF_HOME / HF_HUB_CACHE at a cache that holds it")
        cause = _root_cause(exc)
        if cause is not exc:
            return (f"the Hugging Face Hub cannot be reached ({type(cause).__name__}: "
                    f"{' '.join(str(cause).split())}) and the file is not in the cache: check the network, "
                    "a proxy or HF_ENDPOINT, or fill the cache where the Hub is reachable and point HF_HOME at it")
    return "download failed: " + " ".join(str(exc).split())


def _download(repo_id, filename, revision, cache_dir, local_files_only, sleep=time.sleep,
              repo_type: str = "model") -> str:
    """hf_hub_download, retried on transient network errors only; SaeError naming the file."""
    for attempt in range(1, RETRIES + 1):
        try:
            return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only, repo_type=repo_type)
        except Exception as exc:  # huggingface_hub raises many types; name the file
            if attempt < RETRIES and is_transient(exc):
                log.warning("%s/%s: %s; retrying in %.0f s (attempt %d of %d)", repo_id, filename,
                            exc, RETRY_SECONDS * attempt, attempt + 1, RETRIES)
                sleep(RETRY_SECONDS * attempt)
                continue
            raise SaeError(f"{repo_id}/{filename} @ {revision}: "
                           f"{failure_reason(exc, repo_id, local_files_only)}") from exc
    raise AssertionError("unreachable")


def fetch(
    repo_id: str,
    files: dict[str, str],
    revision: str = "main",
    cache_dir: str | None = None,
    local_files_only: bool = False,
    repo_type: str = "model",
) -> dict:
    """Download ``files`` (role → path in repo) at ``revision``; return the pointer dict.

    Files already in the cache are not downloaded again. Every file's sha256 is checked
    against the Hub's LFS hash (the blob name) so a truncated download is an error. A branch
    (not a 40-hex commit) is warned about, with the commit it resolved to, unless
    ``local_files_only`` (the repos the pipeline writes itself).
    """
    pointer = {"repo_id": repo_id, "revision": revision, "commit": None, "files": {}}
    if repo_type != "model":  # a dataset: recorded, so that resolve looks in datasets--…
        pointer["repo_type"] = repo_type
    for role, filename in sorted(files.items()):
        log.info("fetching %s/%s @ %s", repo_id, filename, revision)
        path = _download(repo_id, filename, revision, cache_dir, local_files_only, repo_type=repo_type)
        m = _COMMIT.search(Path(path).as_posix())
        commit = m.group(1) if m else None
        if pointer["commit"] not in (None, commit):
            raise SaeError(f"{repo_id}: files resolved to two commits ({pointer['commit']}, {commit})")
        pointer["commit"] = commit
        pointer["files"][role] = {"filename": filename, **_check_blob(path, repo_id, filename)}
        log.info("  → %s (%d bytes, sha256 %s)", path, pointer["files"][role]["size"],
                 pointer["files"][role]["sha256"][:12])
    if not is_commit(revision) and not local_files_only:
        log.warning("%s", unpinned_warning(repo_id, revision, pointer["commit"]))
    if cache_dir is not None:
        pointer["cache_dir"] = str(cache_dir)
    return pointer


def resolve(pointer: dict, role: str, verify: bool = True) -> str:
    """Path of the cached file ``role`` of a pointer; check its size (and sha256)."""
    entry = pointer["files"].get(role)
    where = f"{pointer['repo_id']}@{pointer.get('commit') or pointer['revision']}"
    if entry is None:
        raise SaeError(f"{where}: pointer has no file for role {role!r} (has {sorted(pointer['files'])})")
    path = try_to_load_from_cache(
        pointer["repo_id"],
        entry["filename"],
        cache_dir=pointer.get("cache_dir"),
        revision=pointer.get("commit") or pointer["revision"],
        repo_type=pointer.get("repo_type", "model"),
    )
    if not isinstance(path, str):
        raise SaeError(
            f"{where}/{entry['filename']}: not in the Hugging Face cache any more "
            "(HF_HOME or HF_HUB_CACHE changed, or the cache was cleaned); download it again"
        )
    size = os.path.getsize(path)
    if size != entry["size"]:
        raise SaeError(f"{path}: {size} bytes, expected {entry['size']} (truncated or replaced)")
    if verify and sha256_file(path) != entry["sha256"]:
        raise SaeError(f"{path}: sha256 differs from the one recorded at download (file changed)")
    return path


def resolve_files(pointer: dict, verify: bool = True) -> dict[str, str]:
    """Role → local path for every file of a pointer (see :func:`resolve`)."""
    return {role: resolve(pointer, role, verify) for role in pointer["files"]}


def download_notice(downloads: list[dict], gated: set[str], token_set: bool, offline: bool) -> list[str]:
    """What a run will fetch from the Hub, said before any job: the lines to print.

    ``downloads``: the specs (repo_id, revision, files) whose pointers are missing; ``gated``:
    repos whose licence must be accepted on the Hub. Empty when nothing is to be fetched.
    """
    if not downloads:
        return []
    per_repo: dict[tuple[str, str], int] = {}
    for spec in downloads:
        key = (spec["repo_id"], spec["revision"])
        per_repo[key] = per_repo.get(key, 0) + len(spec["files"])
    n_files, repos = sum(per_repo.values()), sorted({repo for repo, _ in per_repo})
    lines = [f"saematch: {n_files} files from {len(repos)} Hugging Face repos are needed (taken from the "
             "Hugging Face cache where they are, else downloaded: the network is needed)"]
    for (repo, revision), n in sorted(per_repo.items()):
        shown = revision[:7] if is_commit(revision) else revision
        lines.append(f"  {repo} @ {shown} ({n} file{'s' if n != 1 else ''})")
    for repo in sorted(gated & set(repos)):
        token = "a token is set" if token_set else "no token is set (HF_TOKEN or `hf auth login`)"
        lines.append(f"  gated: {repo}: accept its licence on the Hub; {token}")
    for repo, revision in sorted(k for k in per_repo if not is_commit(k[1])):
        lines.append(f"  unpinned: {repo} @ {revision} is a branch; the commit it resolves to is recorded "
                     "in its pointer and results")
    if offline:
        lines.append("  HF_HUB_OFFLINE=1: nothing is downloaded; a file missing from the cache stops its job")
    return lines
