"""The demo DAG through --profile profiles/slurm on a real single-node Slurm.

Slurm comes from Debian's packages (.ci/run installs slurmctld, slurmd and slurm-client). The
fixture writes a one-node cluster with partitions `cpu` and `gpu` (the placeholders of
profiles/slurm) and a fake `a100` GPU (gres on /dev/null), starts both daemons, and stops them
by PID afterwards. Skipped, saying why, only where Slurm is not installed or not startable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from test_workflow import copy_workflow, smk

pytestmark = pytest.mark.workflow
CONF_DIR = Path("/etc/slurm")  # the jobstep strips SLURM_CONF: only the default path works


def _slurm_conf(state: Path) -> tuple[str, str]:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 1024 * 0.8)
    conf = f"""ClusterName=saematch-test
SlurmctldHost={host}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} Gres=gpu:a100:1 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
"""
    gres = f"AutoDetect=off\nNodeName={host} Name=gpu Type=a100 File=/dev/null\n"
    return conf, gres


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if not shutil.which(b)]
    if missing:
        pytest.skip(f"Slurm is not installed here (missing {missing}; "
                    "apt-get install slurmctld slurmd slurm-client, as .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        pytest.skip("a slurmctld is already running on this machine; not touching it")
    state = tmp_path_factory.mktemp("slurm")
    for sub in ("ctld", "spool"):
        (state / sub).mkdir()
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    backups = {}
    for name, text in zip(("slurm.conf", "gres.conf"), _slurm_conf(state)):
        path = CONF_DIR / name
        if path.exists():
            backups[path] = path.read_bytes()
        path.write_text(text)
    pids = []
    try:
        subprocess.run(["slurmctld", "-c", "-i"], check=True)
        pids.append(_wait_pid(state / "slurmctld.pid"))
        subprocess.run(["slurmd"], check=True)
        pids.append(_wait_pid(state / "slurmd.pid"))
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
            if time.time() > deadline:
                pytest.fail("the Slurm node never became idle:\n" + (state / "slurmctld.log").read_text()[-3000:])
            time.sleep(1)
        yield state
    finally:
        for pid in reversed(pids):
            _stop(pid)
        for name in ("slurm.conf", "gres.conf"):
            path = CONF_DIR / name
            path.write_bytes(backups[path]) if path in backups else path.unlink(missing_ok=True)


def _wait_pid(pidfile: Path) -> int:
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.1)
    raise RuntimeError(f"{pidfile} never appeared")


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def slurm_jobs() -> list[dict[str, str]]:
    """Every job Slurm still remembers (MinJobAge keeps finished ones), as key=value dicts."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def test_demo_on_real_slurm_equals_a_local_run_and_only_match_jobs_get_a_gpu(slurm, tmp_path):
    config = ["--config", "models=[demo]", "layers=[0,1,2]", "group_below=0"]  # one job per pair
    local = copy_workflow(tmp_path / "local")
    smk(local, *config)
    cluster = copy_workflow(tmp_path / "cluster")
    out = smk(cluster, "--profile", "profiles/slurm", *config, "--slurm-status-command", "squeue",
              "--seconds-between-status-checks", "1", "--slurm-init-seconds-before-status-checks", "1",
              "--verbose")
    log = out.stdout + out.stderr
    sbatch = [line.strip().split(" --wrap=")[0] for line in log.splitlines() if line.strip().startswith("sbatch call")]
    print("\n".join(sbatch))  # shown with pytest -s
    assert len(sbatch) == 13  # 6 pairs, 3 flow layers, the flow summary, the demo's ablation, the lifetimes, the summary
    for line in sbatch:
        gpu_job = "--comment rule_match_pair_" in line
        assert ("--gpus=a100:1" in line) == gpu_job and (" -p gpu " in line) == gpu_job, line

    matches = sorted(p.relative_to(local) for p in local.glob("results/model=demo/variant=1k/matches/**/*.parquet"))
    assert len(matches) == 6
    flows = sorted(p.relative_to(local) for p in local.glob("results/model=demo/variant=1k/flow/*/*.parquet"))
    assert len(flows) == 3
    for rel in flows:
        assert pl.read_parquet(cluster / rel).equals(pl.read_parquet(local / rel)), rel
    for rel in matches:
        assert pl.read_parquet(cluster / rel).equals(pl.read_parquet(local / rel)), rel
    summary = "results/model=demo/variant=1k/summary/res+mlp+att.L0-2.parquet"
    assert pl.read_parquet(cluster / summary).equals(pl.read_parquet(local / summary))

    jobs = [j for j in slurm_jobs() if str(cluster) in j.get("WorkDir", "")]
    by_rule = {}
    for j in jobs:
        rule = re.search(r"rule_(\w+?)_wildcards|rule_(\w+)", j.get("Comment", ""))
        by_rule.setdefault(next(g for g in rule.groups() if g), []).append(j)
    assert sorted((r, len(js)) for r, js in by_rule.items()) == [
        ("ablation", 1), ("flow", 3), ("flow_summary", 1), ("lifetimes", 1), ("match_pair", 6), ("summarize", 1)]
    for j in by_rule["match_pair"]:
        assert "gpu:a100" in j.get("TresPerJob", "") and j["Partition"] == "gpu", j
    for j in by_rule["summarize"] + by_rule["ablation"] + by_rule["lifetimes"] + by_rule["flow"] + by_rule["flow_summary"]:
        assert "gpu" not in j.get("TresPerJob", "") and j["Partition"] == "cpu", j
    assert all(j["JobState"] == "COMPLETED" for j in jobs)
