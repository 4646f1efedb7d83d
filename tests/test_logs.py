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
