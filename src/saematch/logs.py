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
