"""What reruns when: each case inspects what Snakemake plans and what it rebuilt.

One demo workdir, started on layers 0–4 and sites res, mlp; the tests run in file order and
each leaves the workdir complete for the next.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from test_workflow import ROOT, copy_workflow, mtimes, planned_jobs, smk

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("reruns"))
    edit_config(workdir, lambda c: c.update(layers=[0, 1, 2, 3, 4], sites=["res", "mlp"]))
    smk(workdir)
    return workdir


def edit_config(workdir: Path, change) -> None:
    path = workdir / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def site_cfg(cfg, site):
    return cfg["catalog"]["demo"]["sites"][site]


def rebuilt_by_run(workdir: Path, *args: str, env: dict | None = None) -> list[str]:
    before = mtimes(workdir)
    smk(workdir, *args, env=env)
    after = mtimes(workdir)
    return sorted(k for k in after if after[k] != before.get(k))


def nothing_to_do(workdir: Path, *args: str, env: dict | None = None) -> bool:
    out = smk(workdir, "-n", *args, env=env)
    return "Nothing to be done" in out.stdout + out.stderr


def matches(site: str, *layers: int) -> list[str]:
    return [f"results/matches/model=demo/site={site}/layer={L}/part-0.parquet" for L in layers]


SUMMARY = ["results/summary/demo.parquet", "results/summary/demo.png"]


def test_a_second_run_has_nothing_to_do(wf):
    assert nothing_to_do(wf)


def test_touching_or_checking_out_unchanged_code_reruns_nothing(wf):
    for path in [wf / "Snakefile", *wf.glob("scripts/*.py"), *wf.glob("workflow/**/*.*"), *wf.glob("config/*")]:
        path.write_bytes(path.read_bytes())  # what `git checkout` of an unchanged file does
    assert nothing_to_do(wf)


def test_redownloading_identical_files_reruns_nothing_downstream(wf):
    smk(wf, "--forcerun", "download_sae", "--until", "download_sae")
    assert nothing_to_do(wf)


def test_moving_between_cpu_and_gpu_reruns_nothing(wf):
    assert nothing_to_do(wf, "--config", "match={device: cpu}")


def test_a_new_algo_version_reruns_every_match_job_and_nothing_else(wf, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "src/saematch", lib / "saematch")
    init = lib / "saematch/__init__.py"
    init.write_text(init.read_text().replace('ALGO_VERSION = "', 'ALGO_VERSION = "new-'))
    env = {"PYTHONPATH": f"{lib}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    assert planned_jobs(wf, env=env) == {"match_pair": 8, "summarize": 1, "all": 1}


def test_a_new_revision_for_one_layer_reruns_its_download_and_two_pairs(wf):
    edit_config(wf, lambda c: site_cfg(c, "res").update(per_layer={2: {"revision": "0" * 40}}))
    assert planned_jobs(wf) == {"download_sae": 1, "match_pair": 2, "summarize": 1, "all": 1}
    edit_config(wf, lambda c: site_cfg(c, "res").pop("per_layer"))
    assert nothing_to_do(wf)


def test_another_file_for_the_first_layer_reruns_its_download_and_one_pair(wf):
    other = {"params": "layer_0/width_1k/average_l0_90/params.npz"}
    edit_config(wf, lambda c: site_cfg(c, "mlp").update(per_layer={0: {"files": other}}))
    assert planned_jobs(wf) == {"download_sae": 1, "match_pair": 1, "summarize": 1, "all": 1}
    edit_config(wf, lambda c: site_cfg(c, "mlp").pop("per_layer"))


def test_another_l0_for_one_layer_rebuilds_only_that_layer_and_the_summary(wf):
    edit_config(wf, lambda c: site_cfg(c, "res").update(per_layer={2: {"l0": 90}}))
    assert rebuilt_by_run(wf) == ["resources/hub/model=demo/site=res/layer=2.json",
                                  *matches("res", 1, 2), *SUMMARY]


def test_another_folding_option_for_one_site_rebuilds_only_that_sites_pairs(wf):
    edit_config(wf, lambda c: c["match"].update(per_site={"mlp": {"fold": False}}))
    assert planned_jobs(wf) == {"match_pair": 4, "summarize": 1, "all": 1}
    assert rebuilt_by_run(wf) == [*matches("mlp", 0, 1, 2, 3), *SUMMARY]


def test_another_cost_option_for_one_site_rebuilds_only_that_sites_pairs(wf):
    edit_config(wf, lambda c: c["match"]["per_site"].update(res={"weights": "dec"}))
    assert rebuilt_by_run(wf) == [*matches("res", 0, 1, 2, 3), *SUMMARY]


def test_adding_a_layer_runs_only_the_new_jobs(wf):
    edit_config(wf, lambda c: c.update(layers=[0, 1, 2, 3, 4, 5]))
    assert planned_jobs(wf) == {"download_sae": 2, "match_pair": 2, "summarize": 1, "all": 1}
    assert rebuilt_by_run(wf) == ["resources/hub/model=demo/site=mlp/layer=5.json",
                                  "resources/hub/model=demo/site=res/layer=5.json",
                                  *matches("mlp", 4), *matches("res", 4), *SUMMARY]


def test_adding_a_site_runs_only_the_new_jobs(wf):
    edit_config(wf, lambda c: c.update(sites=["res", "mlp", "att"]))
    assert planned_jobs(wf) == {"download_sae": 6, "download_model": 1, "match_pair": 5, "summarize": 1, "all": 1}
    rebuilt = rebuilt_by_run(wf)
    assert [r for r in rebuilt if "results/matches" in r] == matches("att", 0, 1, 2, 3, 4)
    assert all("site=att" in r or "model.json" in r or r in SUMMARY for r in rebuilt)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill-process-group"])
def test_an_interrupted_run_resumes_without_cleanup_and_equals_an_uninterrupted_one(wf, sig):
    targets = [wf / m for m in matches("res", 0, 1, 2)]
    reference = {t: pl.read_parquet(t) for t in targets}
    for t in [*targets, *(wf / s for s in SUMMARY)]:  # pending work for the next run
        t.unlink()
    logs = [wf / f"logs/match_pair/model=demo/site=res/layer={L}.log" for L in (0, 1, 2)]
    started = time.time()
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(wf), "--snakefile", str(wf / "Snakefile"),
           "--cores", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # wait until a match job has started, then interrupt the whole process group
        deadline = time.time() + 120
        while not any(p.exists() and p.stat().st_mtime > started for p in logs):
            assert proc.poll() is None and time.time() < deadline, "no match job started"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not all(t.exists() for t in targets)  # it was interrupted before finishing
    if sig == signal.SIGKILL:  # a killed Snakemake leaves its lock: the one documented step
        smk(wf, "--unlock")
    smk(wf)
    for t in targets:
        assert pl.read_parquet(t).equals(reference[t]), t
    assert not list(wf.glob("results/**/.*tmp-*"))
    assert nothing_to_do(wf)
