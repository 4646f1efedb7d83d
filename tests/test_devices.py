import multiprocessing as mp
import time

import numpy as np
import pytest

from saematch.devices import gpu_lock, job_device


def hold(lock_dir, n, seconds, queue):
    with gpu_lock(n, lock_dir, poll_seconds=0.05) as index:
        queue.put((index, time.monotonic()))
        time.sleep(seconds)


def test_concurrent_jobs_get_different_gpus(tmp_path):
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=hold, args=(tmp_path, 3, 1.0, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=10)[0] for _ in procs)
    for p in procs:
        p.join()
    assert got == [0, 1, 2]


def test_a_job_waits_while_every_gpu_is_busy_and_gets_the_freed_one(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    first = ctx.Process(target=hold, args=(tmp_path, 1, 0.8, q))
    first.start()
    i0, t0 = q.get(timeout=10)
    second = ctx.Process(target=hold, args=(tmp_path, 1, 0.0, q))
    second.start()
    i1, t1 = q.get(timeout=10)
    first.join(), second.join()
    assert i0 == i1 == 0 and t1 - t0 > 0.5


def test_a_killed_job_releases_its_gpu(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=hold, args=(tmp_path, 1, 60, q))
    p.start()
    q.get(timeout=10)
    p.kill()
    p.join()
    with gpu_lock(1, tmp_path) as index:
        assert index == 0


@pytest.mark.parametrize("use_gpu", [False, True])
def test_without_cuda_a_job_runs_on_the_cpu(use_gpu):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with job_device(use_gpu) as device:
        assert device == "cpu"


NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")


@NO_CUDA
@pytest.mark.parametrize("key, device", [("match.device", "cuda:0"), ("match.device", "cuda"),
                                         ("evaluate.device", "cuda:1")])
def test_an_explicit_cuda_device_on_a_host_without_cuda_is_refused_naming_the_key(key, device):
    from saematch.config import ConfigError
    from saematch.devices import check_devices

    with pytest.raises(ConfigError) as err:
        check_devices({key: device, "evaluate.device": "auto"} if key != "evaluate.device" else {key: device},
                      local=True)
    assert str(err.value) == (f"config: {key}={device} but this host has no CUDA device "
                              "(torch.cuda.is_available() is False); use auto or cpu")


@NO_CUDA
def test_on_a_cluster_the_job_itself_refuses_a_cuda_device_it_does_not_have():
    """The submit host may have no GPU while jobs run on GPU nodes: only the job can tell."""
    from saematch.devices import check_devices
    from saematch.errors import SaeError

    assert check_devices({"match.device": "cuda:0"}, local=False) is None
    # a dry run plans a cluster's run and a local one alike: it warns, the run itself refuses
    assert check_devices({"match.device": "cuda:0"}, local=True, dryrun=True) == (
        "saematch: warning: match.device=cuda:0 but this host has no CUDA device (torch.cuda.is_available() is "
        "False); use auto or cpu (a run on this host will refuse it; a cluster's GPU nodes may have one)")
    with pytest.raises(SaeError) as err:
        with job_device(True, "cuda:0", key="match.device"):
            pytest.fail("ran on the CPU")
    assert str(err.value) == ("config: match.device=cuda:0 but this job's host has no CUDA device "
                              "(torch.cuda.is_available() is False); use auto or cpu")


@NO_CUDA
def test_auto_falling_back_to_the_cpu_says_so_in_one_line():
    from saematch.devices import check_devices

    line = check_devices({"match.device": "auto", "match.per_site.mlp.device": "auto", "evaluate.device": "auto"},
                         local=True)
    assert line == ("saematch: no CUDA device on this host: match.device, match.per_site.mlp.device, "
                    "evaluate.device auto run on the CPU")
    assert check_devices({"match.device": "cpu"}, local=True) is None
    assert check_devices({"match.device": "auto"}, local=False) is None  # a cluster's jobs run on its GPU nodes


# --- sharing a GPU: sections around the GPU stages only -------------------------------------

def test_a_match_job_holds_the_gpu_only_around_its_products_and_its_verdict(tmp_path, caplog, monkeypatch):
    """The lock (real slot files, here handing out the CPU) is taken for the cost products,
    released before lapjv and the certificate, and taken again for the verdict: the log's order,
    and lapjv and the certificate find every slot free (checked as they are called)."""
    import logging

    from conftest import random_sae

    import saematch.match
    from saematch.devices import SLOTS, _try_slots, slot_sections
    from saematch.match import match_pair

    free_when = {}

    def spy(name, real):
        def call(*args, **kwargs):
            held = _try_slots(tmp_path, 0, SLOTS)  # all slots, or None while a section holds some
            free_when[name] = free_when.get(name, True) and held is not None
            for fh in held or []:
                fh.close()
            return real(*args, **kwargs)
        return call

    for name in ("solve_lap", "certify_dense"):
        monkeypatch.setattr(saematch.match, name, spy(name, getattr(saematch.match, name)))
    src, dst = random_sae(d=16, F=96, seed=0), random_sae(d=16, F=96, seed=1)
    gpu = slot_sections(1, 2**30, device_of=lambda index: "cpu", lock_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        _, stats = match_pair(src, dst, gpu=gpu)
    assert free_when == {"solve_lap": True, "certify_dense": True}
    def event(message: str) -> str | None:
        for start, label in (("products: holding", "take"), ("products: released", "release"),
                             ("solving the", "lapjv"), ("verdict: holding", "take"), ("verdict: released", "release"),
                             ("verdict: ", "verdict")):
            if message.startswith(start):
                return label
        return None

    events = [e for e in map(event, caplog.messages) if e]
    assert events == ["take", "release", "lapjv", "take", "verdict", "release"]
    assert set(stats["gpu_sections"]) == {"products", "verdict"}
    assert all(r["device"] == "cpu" and r["need_bytes"] > 0 for r in stats["gpu_sections"].values())


def take_sections(lock_dir, budget, needs, queue):
    from saematch.devices import slot_sections

    section = slot_sections(1, budget, device_of=lambda index: "cpu", lock_dir=lock_dir, poll_seconds=0.01)
    for need in needs:
        with section(need, "test"):
            start = time.monotonic()
            time.sleep(0.15)
            queue.put((start, time.monotonic(), need))


def test_gpu_sections_of_several_jobs_overlap_but_never_beyond_the_budget(tmp_path):
    """Four processes take sections of 0.2–0.6 of the budget: at no moment do the held sections
    add up to more than the budget (slots are whole: a need rounds up), and some do run at once."""
    from saematch.devices import SLOTS

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    budget = 64 * 2**20
    rng = np.random.default_rng(0)
    jobs = [rng.uniform(0.2, 0.6, 4) * budget for _ in range(4)]
    procs = [ctx.Process(target=take_sections, args=(tmp_path, budget, list(n), q)) for n in jobs]
    for p in procs:
        p.start()
    held = [q.get(timeout=60) for _ in range(16)]
    for p in procs:
        p.join()
    slots = lambda need: np.ceil(need / budget * SLOTS) / SLOTS  # noqa: E731
    peak, overlapped = 0.0, False
    for start, _, _ in held:  # the load is highest just after some section starts
        now = [h for h in held if h[0] <= start + 1e-4 and h[1] > start + 1e-4]
        peak = max(peak, sum(slots(h[2]) for h in now))
        overlapped |= len(now) > 1
    assert peak <= 1.0 and overlapped


def test_a_section_needing_more_than_the_budget_takes_the_whole_gpu(tmp_path, caplog):
    import logging

    from saematch.devices import slot_sections

    section = slot_sections(1, 1000, device_of=lambda index: "cpu", lock_dir=tmp_path)
    with caplog.at_level(logging.WARNING), section(5000, "products") as device:
        assert device == "cpu"
        with pytest.raises(TimeoutError), _timeout(0.5):  # no slot is left for anyone else
            with gpu_lock(1, tmp_path, poll_seconds=0.05):
                pass
    assert "needs 0.00 GB, over a GPU's budget" in caplog.text


class _timeout:
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM; the main thread only)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def fire(*_):
            raise TimeoutError

        signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.setitimer(signal.ITIMER_REAL, 0)
        return False
