"""Which device a job runs on, and when it may use it.

Snakemake counts GPUs (the ``gpu`` resource) but never says which one a job should use, so
concurrent jobs on a multi-GPU workstation would all pick cuda:0. Jobs therefore take GPU
memory themselves, by ``fcntl`` locks on files in :data:`DEFAULT_LOCK_DIR`: each GPU's
memory budget is cut into :data:`SLOTS` equal slots, one lock file each. A match job takes
the slots it needs only around its GPU stages (:func:`gpu_section`: the cost products and the
verdict), so while one pair's lapjv runs on a CPU core the GPU serves the others' products;
the evaluation, steering and flow jobs take a whole GPU for their whole run
(:func:`job_device`). A lock vanishes with the process that held it, so a killed job never
leaves a GPU marked busy. Under SLURM the job uses the GPU it was given.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import tempfile
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / f"saematch-gpu-locks-{os.getuid()}"
SLOTS = 64  # a GPU's memory budget in this many equal slots (1.1 GiB each on an 80 GB card at 90%)
BUDGET_SHARE = 0.9  # of a GPU's memory, what sections may hold together (the rest: CUDA context, allocator)


def _try_slots(lock_dir: Path, index: int, count: int) -> list | None:
    """``count`` free slots of GPU ``index`` as open, locked files, or None (none kept)."""
    held = []
    for slot in range(SLOTS):
        fh = open(lock_dir / f"gpu{index}.slot{slot}", "w")  # noqa: SIM115 - held while in use
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        held.append(fh)
        if len(held) == count:
            return held
    for fh in held:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
    return None


@contextmanager
def gpu_slots(n_devices: int, need: float = 1.0, lock_dir: str | Path = DEFAULT_LOCK_DIR,
              poll_seconds: float = 0.2, only: int | None = None):
    """Hold ``need`` (a share of a GPU's budget, 0 < need ≤ 1) of one of ``n_devices`` GPUs (or of
    GPU ``only``); yield its index.

    The share is rounded up to whole slots (:data:`SLOTS`), all on one GPU, taken at once under
    that GPU's mutex file, so two jobs never hold half of what each needs; while no GPU has
    room, waits (polling). need=1 is the whole GPU: no other holder at the same time.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    count = min(SLOTS, max(1, math.ceil(need * SLOTS - 1e-9)))
    waited = False
    while True:
        for index in (range(n_devices) if only is None else [only]):
            with open(lock_dir / f"gpu{index}.mutex", "w") as mutex:
                fcntl.flock(mutex, fcntl.LOCK_EX)  # held for the few non-blocking tries below
                held = _try_slots(lock_dir, index, count)
            if held is None:
                continue
            with ExitStack() as stack:
                for fh in held:
                    stack.callback(fh.close)
                    stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
                yield index
            return
        if not waited:
            log.info("no GPU has %d/%d slots of its memory free; waiting", count, SLOTS)
            waited = True
        time.sleep(poll_seconds)


@contextmanager
def gpu_lock(n_devices: int, lock_dir: str | Path = DEFAULT_LOCK_DIR, poll_seconds: float = 1.0,
             only: int | None = None):
    """Hold one of ``n_devices`` GPUs (or GPU ``only``) whole; yield its index (see :func:`gpu_slots`)."""
    with gpu_slots(n_devices, 1.0, lock_dir, poll_seconds, only) as index:
        yield index


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


def fixed_device(device: str):
    """Sections that all run on ``device`` without any lock (the CPU, or a GPU of one's own)."""
    return lambda need_bytes, stage: nullcontext(device)


def slot_sections(n_devices: int, budget_bytes: float, device_of=lambda index: f"cuda:{index}",
                  lock_dir: str | Path = DEFAULT_LOCK_DIR, only: int | None = None, poll_seconds: float = 0.2):
    """``section(need_bytes, stage)``: a context manager that holds ``need_bytes`` of one GPU's
    ``budget_bytes`` (as slots, :func:`gpu_slots`) while the block runs and yields the device,
    ``device_of(index)``. A need above the budget takes the whole GPU (warned). On exit a CUDA
    device's cached blocks go back to the driver, so the next holder finds the memory free."""

    @contextmanager
    def section(need_bytes: int, stage: str):
        share = need_bytes / budget_bytes
        if share > 1:
            log.warning("%s needs %.2f GB, over a GPU's budget of %.2f GB: taking a whole GPU",
                        stage, need_bytes / 1e9, budget_bytes / 1e9)
        t = time.perf_counter()
        with gpu_slots(n_devices, min(share, 1.0), lock_dir, poll_seconds, only) as index:
            device = device_of(index)
            log.info("%s: holding %.2f GB of %s's %.2f GB (waited %.2f s)", stage, need_bytes / 1e9, device,
                     budget_bytes / 1e9, time.perf_counter() - t)
            try:
                yield device
            finally:
                if device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()
                log.info("%s: released %s", stage, device)

    return section


def gpu_sections(use_gpu: bool, device: str = "auto", key: str = "match.device"):
    """The sections of a job that uses a GPU only in some stages (saematch.match.match_pair's
    ``gpu``): :func:`slot_sections` over this host's GPUs, each section holding what it needs
    of one GPU's memory (:data:`BUDGET_SHARE` of the smallest card, in :data:`SLOTS` slots).
    ``device`` 'cuda:N' → that GPU only; inside a SLURM job the one it was allocated (no lock);
    the CPU when ``use_gpu`` is False, ``device`` is 'cpu', or ``auto`` finds no CUDA (logged);
    an explicit 'cuda'/'cuda:N' without CUDA is a SaeError naming ``key``."""
    import torch

    from .errors import SaeError

    if not use_gpu or device == "cpu":
        return fixed_device("cpu")
    if not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise SaeError(no_cuda_message(key, device, "this job's host"))
        log.warning("a GPU was requested but CUDA is not available: running on the CPU")
        return fixed_device("cpu")
    count = torch.cuda.device_count()
    only = None
    if device.startswith("cuda:"):
        only = int(device.split(":")[1])
        if only >= count:
            raise SaeError(f"config: {key}={device} but this job's host has {count} visible GPU(s)")
    elif "SLURM_JOB_ID" in os.environ:  # Slurm sets CUDA_VISIBLE_DEVICES to the allocation
        return fixed_device("cuda:0")
    budget = BUDGET_SHARE * min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
    return slot_sections(count, budget, only=only)
