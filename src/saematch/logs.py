"""A job's log file, and what the console shows when the job fails.

Every script runs inside :func:`job`: logging, warnings, progress bars and tracebacks go to
the job's log; a failure prints one line to the console, ``saematch: error: <cause>`` (our
own :class:`~saematch.errors.SaeError` messages name the file and the problem, with no
traceback), and ends the log with the same line.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from .errors import SaeError

MARK = "saematch: error: "


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


def _input_error_record(log_path: str | Path) -> Path:
    return Path(f"{log_path}.input-error")


def failed_on_input(log_path: str | Path) -> bool:
    """Whether the last attempt of the job with this log failed on its input (not resources)."""
    return _input_error_record(log_path).exists()


@contextmanager
def job(snakemake):
    """Run a script's body as a job: log to its file, one-line cause on failure, exit 1.

    An input error (:class:`SaeError`) is recorded next to the log; a retry of the same job
    (Snakemake's ``attempt`` > 1) then stops at once with the same message instead of
    reading the inputs again, and the rule's resource functions do not grow its request.
    Any other error (out of memory, a bug) is retried as Snakemake is told to.
    """
    log_path = snakemake.log[0]
    record = _input_error_record(log_path)
    attempt = int(getattr(snakemake.resources, "attempt", 1) or 1)  # the rule's `attempt` resource
    to_file(log_path)
    if attempt > 1 and record.exists():
        failed = json.loads(record.read_text())
        logging.error("attempt %d failed on its input:\n%s", attempt - 1, failed.get("traceback", ""))
        _fail(f"{failed['message']} (input error on attempt {attempt - 1}: not retried)")
    record.unlink(missing_ok=True)
    try:
        yield
    except SaeError as exc:
        logging.error("input error", exc_info=True)
        record.write_text(json.dumps({"message": str(exc), "traceback": traceback.format_exc()}))
        _fail(str(exc))
    except BaseException as exc:  # noqa: BLE001 - the console gets one line, the log the rest
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        logging.error("job failed", exc_info=True)
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        _fail(f"{type(exc).__name__}: {exc}{where}; traceback in {log_path}")
    _finish()


def _finish() -> None:
    """End a job that succeeded without the interpreter's teardown: exit handlers run, logs
    and streams are flushed, then the process ends. Tearing down torch's modules costs about
    1 s per job on a 2-core machine (`import torch` alone: 2.7 s to exit normally, 1.9 s this
    way), which is most of a small pair's time."""
    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own, what a normal exit runs first
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


def _fail(message: str) -> None:
    line = MARK + message.replace("\n", " ")
    for stream in {sys.stderr, sys.__stderr__}:
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError):
            pass
    os._exit(1)  # no interpreter teardown noise after the one line


def failures_since(log_dir: str | Path, since: float) -> list[tuple[str, str]]:
    """(log path, cause) of every job log under ``log_dir`` written since ``since`` that
    ends in a failure line: what the end of a failed run prints."""
    out = []
    for p in sorted(Path(log_dir).rglob("*.log")):
        try:
            if p.stat().st_mtime < since:
                continue
            lines = p.read_text(errors="replace").splitlines()
        except OSError:
            continue
        causes = [ln[len(MARK):] for ln in lines if ln.startswith(MARK)]
        if causes:
            out.append((str(p), causes[-1]))
    return out
