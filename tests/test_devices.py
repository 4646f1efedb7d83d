import multiprocessing as mp
import time

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
