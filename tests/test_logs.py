import multiprocessing as mp

import numpy as np

from saematch.logs import peak_rss_bytes


def _peaks(queue, touch_bytes):
    before = peak_rss_bytes()
    block = np.ones(touch_bytes // 8)
    queue.put((before, peak_rss_bytes()))
    del block


def in_spawned_child(touch_bytes):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peaks, args=(queue, touch_bytes))
    child.start()
    peaks = queue.get()
    child.join()
    return peaks


def test_peak_rss_rises_with_touched_memory():
    before, after = in_spawned_child(256 * 2**20)
    assert after >= before + 200 * 2**20


def test_a_spawned_child_reports_its_own_peak_not_its_parents():
    parent_block = np.ones(2**27)  # 1 GiB in the parent at spawn time
    before, _ = in_spawned_child(0)
    assert before < 0.5 * parent_block.nbytes


JOB = """
import atexit, logging, sys
from pathlib import Path
from types import SimpleNamespace

from saematch import logs

class Teardown:
    def __del__(self):
        Path({teardown!r}).write_text("torn down")

kept = Teardown()  # a module global: the interpreter's teardown would delete it
snakemake = SimpleNamespace(log=[{log!r}], resources=SimpleNamespace(attempt=1))
with logs.job(snakemake):
    atexit.register(lambda: Path({handler!r}).write_text("ran"))
    logging.info("work done")
    print("no newline", end="")
    {body}
"""


def run_job(tmp_path, body="pass"):
    import subprocess
    import sys

    paths = {k: str(tmp_path / k) for k in ("log", "teardown", "handler")}
    code = JOB.format(body=body, **paths)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return proc, {k: tmp_path / k for k in paths}


def test_a_job_that_succeeds_exits_0_with_its_log_output_and_exit_handlers_but_no_teardown(tmp_path):
    proc, paths = run_job(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "no newline"
    assert "work done" in paths["log"].read_text()
    assert paths["handler"].read_text() == "ran"
    assert not paths["teardown"].exists()  # torch's teardown (about 1 s) is skipped


def test_a_job_that_fails_exits_1_with_one_console_line(tmp_path):
    proc, paths = run_job(tmp_path, body="raise ValueError('bad value')")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("saematch: error: ValueError: bad value")
    assert "Traceback" in paths["log"].read_text()
