"""Send a job's logging, warnings, progress bars and traceback to its log file."""

from __future__ import annotations

import logging
import sys


def to_file(path: str) -> None:
    """Point stderr (tqdm download progress, tracebacks) and logging at ``path``."""
    sys.stderr = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the results, for provenance."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("saematch", "torch", "numpy", "lapjv", "huggingface_hub", "safetensors", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def peak_rss_bytes() -> int:
    """This process's own peak resident memory (bytes).

    Linux's VmHWM: getrusage's ru_maxrss would also count the parent's memory at fork, which
    survives exec (a spawned child "peaks" at its parent's size).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
