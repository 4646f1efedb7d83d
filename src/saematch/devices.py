"""Which device a match job runs on.

Snakemake counts GPUs (the ``gpu`` resource) but never says which one a job should use, so
concurrent jobs on a multi-GPU workstation would all pick cuda:0. Each job therefore takes a
free GPU (among those CUDA_VISIBLE_DEVICES shows) by an exclusive ``fcntl`` lock on a
per-device file, held until the job ends. Under SLURM the job uses the GPU it was given.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / f"saematch-gpu-locks-{os.getuid()}"


@contextmanager
def gpu_lock(n_devices: int, lock_dir: str | Path = DEFAULT_LOCK_DIR, poll_seconds: float = 1.0,
             only: int | None = None):
    """Hold an exclusive lock on one of ``n_devices`` GPUs (or on GPU ``only``); yield its index.

    Waits (polling) while every device is held by another process. The lock is released when
    the block exits or the process dies, so a killed job never leaves a GPU marked busy.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in (range(n_devices) if only is None else [only]):
            fh = open(lock_dir / f"gpu{index}.lock", "w")  # noqa: SIM115 - held while in use
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if not waited:
            log.info("all %d GPUs are in use by other jobs; waiting", n_devices)
            waited = True
        time.sleep(poll_seconds)


def host_has_gpu() -> bool:
    """Whether this host shows an NVIDIA GPU to its processes (no torch import: the Snakefile
    asks this when deciding whether `device: auto` match jobs need the `gpu` resource)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def match_device_key(config: dict, site: str) -> str:
    """The config key that sets a site's match device: its per_site override, or match.device."""
    return f"match.per_site.{site}.device" if "device" in config["match"].get("per_site", {}).get(site, {}) \
        else "match.device"


def device_settings(config: dict, evaluate: dict[str, dict], steer: dict[str, dict] | None = None) -> dict[str, str]:
    """Config key → device, for this run's match sites, evaluated models (``evaluate``: model →
    saematch.config.evaluate_options) and steered models (``steer``: model → the themes it runs)."""
    out = {}
    for site in config["sites"]:
        key = match_device_key(config, site)
        out[key] = config["match"]["per_site"][site]["device"] if key != "match.device" else config["match"]["device"]
    for opts in evaluate.values():
        out["evaluate.device"] = opts["device"]
    if any((steer or {}).values()):
        out["steer.device"] = config["steer"]["device"]
    return out


def no_cuda_message(key: str, device: str, where: str = "this host") -> str:
    return (f"config: {key}={device} but {where} has no CUDA device (torch.cuda.is_available() is False); "
            "use auto or cpu")


def check_devices(devices: dict[str, str], local: bool, dryrun: bool = False) -> str | None:
    """Before any job: ``devices`` maps each config key (``match.device``, ``evaluate.device``,
    ``match.per_site.mlp.device``) to its value. Where jobs run on this host (``local``), an
    explicit ``cuda``/``cuda:N`` that this host cannot give is a ConfigError naming the key, and
    ``auto`` without CUDA returns the one console line saying those jobs run on the CPU. On a
    cluster the jobs run elsewhere: nothing to check here (:func:`job_device` checks there).
    A dry run cannot tell a cluster's plan from a local one (Snakemake plans both with its
    dry-run executor), so there the refusal is returned as a warning line instead.
    torch is imported only where a device is explicit or the host shows an NVIDIA GPU."""
    from .config import ConfigError

    if not local:
        return None
    explicit = {k: d for k, d in devices.items() if d.startswith("cuda")}
    auto = [k for k, d in devices.items() if d == "auto"]
    on_cpu = f"saematch: no CUDA device on this host: {', '.join(auto)} auto run on the CPU" if auto else None
    if not explicit and not (auto and host_has_gpu()):
        return on_cpu
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    refusals = []
    for key, device in explicit.items():
        if not count:
            refusals.append(no_cuda_message(key, device))
        elif device.startswith("cuda:") and int(device.split(":")[1]) >= count:
            refusals.append(f"config: {key}={device} but this host has {count} visible GPU(s)")
    if refusals and not dryrun:
        raise ConfigError(refusals[0])
    if refusals:
        return "\n".join(f"saematch: warning: {r.removeprefix('config: ')} (a run on this host will refuse it; "
                         "a cluster's GPU nodes may have one)" for r in refusals)
    return None if count else on_cpu


@contextmanager
def job_device(use_gpu: bool, device: str = "auto", key: str = "match.device"):
    """Yield the torch device string for a job: 'cpu', or a free 'cuda:N'.

    ``use_gpu`` False → cpu. True → a GPU when CUDA is available: ``device`` 'cuda:N' → that
    one (held by its lock while in use); inside a SLURM job the one it was allocated; otherwise
    a free one taken by lock. Without CUDA, ``auto`` runs on the CPU (logged) and an explicit
    'cuda'/'cuda:N' is a SaeError naming ``key`` (never a silent fallback).
    """
    import torch

    from .errors import SaeError

    if not use_gpu or device == "cpu":
        yield "cpu"
        return
    if not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise SaeError(no_cuda_message(key, device, "this job's host"))
        log.warning("a GPU was requested but CUDA is not available: running on the CPU")
        yield "cpu"
        return
    if device.startswith("cuda:"):
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise SaeError(f"config: {key}={device} but this job's host has "
                           f"{torch.cuda.device_count()} visible GPU(s)")
        with gpu_lock(1, only=index) as index:
            yield f"cuda:{index}"
        return
    if "SLURM_JOB_ID" in os.environ:  # Slurm sets CUDA_VISIBLE_DEVICES to the allocation
        yield "cuda:0"
        return
    with gpu_lock(torch.cuda.device_count()) as index:
        log.info("using cuda:%d (lock in %s)", index, DEFAULT_LOCK_DIR)
        yield f"cuda:{index}"
