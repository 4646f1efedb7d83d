"""What reruns when: each case inspects what Snakemake plans and what it rebuilt.

One demo workdir, started on layers 0–4 and sites res, mlp; the tests run in file order and
each leaves the workdir complete for the next.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from saematch.write import read_provenance
from test_results_kept import read_only
from test_workflow import ROOT, copy_workflow, match_path, mtimes, planned_jobs, smk, summary_path

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("reruns"))
    # one job per pair, as for real widths (the demo's pairs are grouped per site by default)
    edit_config(workdir, lambda c: c.update(models=["demo"], layers=[0, 1, 2, 3, 4], sites=["res", "mlp"],
                                            group_below=0))
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


def matches(site: str, *layers: int, variant: str = "1k") -> list[str]:
    return [match_path("demo", variant, site, L) for L in layers]


def flows(layers: dict[int, str], variant: str = "1k") -> list[str]:
    """Flow files: layer → the predecessor modules it is scored against."""
    return [f"results/model=demo/variant={variant}/flow/{m}/layer={L}.parquet" for L, m in layers.items()]


FLOWS = {0: "mlp", 1: "res+mlp", 2: "res+mlp", 3: "res+mlp", 4: "res+mlp"}


def summary(selection: str = "res+mlp.L0-4", variant: str = "1k") -> list[str]:
    """A selection's summary files (Feature Flow's cases too), its lifetimes and, the demo's, its ablation."""
    lifetimes = f"results/model=demo/variant={variant}/lifetimes/{selection}"
    return sorted([*(summary_path("demo", variant, selection, ext) for ext in ("parquet", "png", "tsv", "html")),
                   *(summary_path("demo", variant, selection, ext) for ext in ("flow.parquet", "flow.tsv", "flow.html")),
                   *(f"{lifetimes}{ext}" for ext in (".parquet", ".survival.tsv", ".survival.html", ".lengths.tsv",
                                                     ".survival.png")),
                   f"results/model=demo/variant={variant}/demo/ablation.{selection}.parquet"])


def pointer(site: str, layer: int, l0: int) -> str:
    return (f"resources/hub/sae/saematch-demo--gemma-scope-2b-pt-{site}/main/"
            f"layer_{layer}/width_1k/average_l0_{l0}/params.npz.json")


SUMMARY = summary()
ALL_MATCHES = [*matches("mlp", 0, 1, 2, 3), *matches("res", 0, 1, 2, 3)]


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
    assert nothing_to_do(wf, "--config", "match={device: cuda:0}")  # a dry run warns (test_devices)


def test_a_new_algo_version_reruns_every_match_job_and_nothing_else(wf, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "src/saematch", lib / "saematch")
    init = lib / "saematch/__init__.py"
    init.write_text(init.read_text().replace('ALGO_VERSION = "', 'ALGO_VERSION = "new-'))
    env = {"PYTHONPATH": f"{lib}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    assert planned_jobs(wf, env=env) == {"match_pair": 8, "flow": 5, "flow_summary": 1, "ablation": 1, "lifetimes": 1,
                                         "summarize": 1, "all": 1}


def test_a_new_revision_for_one_layer_is_a_new_variant_beside_the_old(wf):
    edit_config(wf, lambda c: site_cfg(c, "res").update(per_layer={2: {"revision": "1234567890abcdef" * 2 + "12345678"}}))
    out = smk(wf, "-n", "--quiet", "rules")
    assert "variant=1k_res-L2-revision-" in smk(wf, "-n").stdout
    assert planned_jobs(wf) == {"download_sae": 1, "match_pair": 8, "flow": 5, "flow_summary": 1, "ablation": 1,
                                "lifetimes": 1, "summarize": 1, "all": 1}, out.stdout
    edit_config(wf, lambda c: site_cfg(c, "res").pop("per_layer"))
    assert nothing_to_do(wf)


def test_another_l0_for_one_layer_lands_in_its_own_variant_and_touches_nothing_else(wf):
    before = {p: (wf / p).read_bytes() for p in [*ALL_MATCHES, *SUMMARY]}
    edit_config(wf, lambda c: site_cfg(c, "res").update(per_layer={2: {"l0": 90}}))
    variant = "1k_res-L2-l0-90"
    rebuilt = rebuilt_by_run(wf)
    assert rebuilt == sorted([pointer("res", 2, 90), *matches("mlp", 0, 1, 2, 3, variant=variant),
                              *matches("res", 0, 1, 2, 3, variant=variant), *flows(FLOWS, variant),
                              *summary(variant=variant)])
    # Feature Flow: only layers 2 (its res SAE) and 3 (res 2 is its predecessor) are computed
    for L, path in zip(FLOWS, flows(FLOWS, variant)):
        assert ("reused_from" in read_provenance(wf / path)) == (L not in (2, 3)), L
    assert all((wf / p).read_bytes() == b for p, b in before.items())  # the first variant, intact
    new = pl.read_parquet(wf / matches("res", 1, variant=variant)[0])
    assert not new.equals(pl.read_parquet(wf / matches("res", 1)[0]))  # other SAEs, other matches
    # pairs whose SAE files are unchanged are copied from the first variant, not recomputed
    for site, L in [("res", 0), ("res", 3), ("mlp", 0), ("mlp", 2)]:
        copy, first = wf / matches(site, L, variant=variant)[0], wf / matches(site, L)[0]
        assert read_provenance(copy)["reused_from"] == str(first.relative_to(wf))
        assert read_provenance(copy)["variant"] == variant
        assert pl.read_parquet(copy).equals(pl.read_parquet(first))
    for L in (1, 2):
        assert "reused_from" not in read_provenance(wf / matches("res", L, variant=variant)[0])
    edit_config(wf, lambda c: site_cfg(c, "res").pop("per_layer"))
    assert nothing_to_do(wf)


def test_another_folding_option_for_one_site_is_its_own_variant(wf):
    edit_config(wf, lambda c: c["match"].update(per_site={"mlp": {"fold": False}}))
    assert planned_jobs(wf) == {"match_pair": 8, "flow": 5, "flow_summary": 1, "ablation": 1, "lifetimes": 1,
                                "summarize": 1, "all": 1}
    rebuilt = rebuilt_by_run(wf)
    assert rebuilt == sorted([*matches("mlp", 0, 1, 2, 3, variant="1k_mlp-nofold"),
                              *matches("res", 0, 1, 2, 3, variant="1k_mlp-nofold"), *flows(FLOWS, "1k_mlp-nofold"),
                              *summary(variant="1k_mlp-nofold")])
    reused = {m for m in rebuilt if "/matches/" in m and "reused_from" in read_provenance(wf / m)}
    assert reused == set(matches("res", 0, 1, 2, 3, variant="1k_mlp-nofold"))
    assert all("reused_from" in read_provenance(wf / f) for f in flows(FLOWS, "1k_mlp-nofold"))  # same SAEs
    nofold = read_provenance(wf / matches("mlp", 0, variant="1k_mlp-nofold")[0])
    assert nofold["options"]["fold"] is False
    edit_config(wf, lambda c: c["match"].update(per_site={}))
    assert nothing_to_do(wf)


def test_changing_a_variants_saes_in_place_is_refused_before_any_job(wf):
    before = mtimes(wf)
    edit_config(wf, lambda c: site_cfg(c, "res")["l0"].__setitem__(2, 90))  # the catalog itself
    out = smk(wf, check=False)
    console = out.stdout + out.stderr
    assert out.returncode != 0 and "Nothing was run" in console
    assert re.search(r"variant=1k/matches/site=res/layer=1/part-0.parquet: dst files .*average_l0_35.* → "
                     r".*average_l0_90", console)
    assert "--config variant=NAME" in console
    assert mtimes(wf) == before
    assert planned_jobs(wf, "--config", "variant=catalog-l0-90")["match_pair"] == 8  # named: its own place
    edit_config(wf, lambda c: site_cfg(c, "res")["l0"].__setitem__(2, 35))
    assert nothing_to_do(wf)


def test_an_unreadable_result_stops_the_run_naming_the_file_and_how_to_remove_it(wf):
    rel = matches("res", 1)[0]
    path, before = wf / rel, mtimes(wf)
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(original[: len(original) // 2])  # a copy cut short
    try:
        out = smk(wf, check=False)
        console = out.stdout + out.stderr
        assert out.returncode != 0 and "other SAEs or options" not in console, console
        assert re.search(rf"^{re.escape(rel)}: cannot be read \(.*Parquet", console, re.M), console
        assert f"Nothing was run. Remove it and run again to rebuild: rm {rel}" in console
        assert {k: v for k, v in mtimes(wf).items() if k != rel} == {k: v for k, v in before.items() if k != rel}
        path.unlink()  # what the message says: the pair is then rebuilt
        assert planned_jobs(wf)["match_pair"] == 1
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert nothing_to_do(wf)


def test_a_read_only_results_folder_stops_the_run_in_one_line_before_any_job(wf):
    """A result to rebuild in a folder made read-only (here: its matches deleted first)."""
    path = wf / matches("res", 2)[0]
    original, stat = path.read_bytes(), path.stat()
    path.unlink()
    before = mtimes(wf)
    try:
        with read_only(path.parent):
            out = smk(wf, check=False)
        console = out.stdout + out.stderr
        lines = [ln for ln in console.splitlines() if "not writable" in ln]
        assert out.returncode != 0 and len(lines) == 1, console
        assert lines[0].startswith(f"saematch: error: {path.parent.relative_to(wf)}: not writable"), console
        assert "Traceback" not in console and "rule match_pair" not in console, console
        assert mtimes(wf) == before  # no job ran, no result deleted
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert nothing_to_do(wf)


def test_another_cost_option_for_one_site_is_its_own_variant(wf):
    assert "variant=1k_res-w-dec/" in smk(wf, "-n", "--config", "match={per_site: {res: {weights: dec}}}").stdout


def test_adding_a_layer_runs_only_the_new_jobs_and_keeps_the_narrower_summary(wf):
    old_summary = {p: (wf / p).read_bytes() for p in SUMMARY}
    edit_config(wf, lambda c: c.update(layers=[0, 1, 2, 3, 4, 5]))
    assert planned_jobs(wf) == {"download_sae": 2, "match_pair": 2, "flow": 1, "flow_summary": 1, "ablation": 1,
                                "lifetimes": 1, "summarize": 1, "all": 1}
    assert rebuilt_by_run(wf) == sorted([pointer("mlp", 5, 42), pointer("res", 5, 41), *matches("mlp", 4),
                                         *matches("res", 4), *flows({5: "res+mlp"}), *summary("res+mlp.L0-5")])
    assert all((wf / p).read_bytes() == b for p, b in old_summary.items())
    assert pl.read_parquet(wf / summary("res+mlp.L0-5")[0]).height == 10


def test_a_narrower_run_writes_its_own_summary_and_leaves_the_wider_one(wf):
    wider = {p: (wf / p).read_bytes() for p in summary("res+mlp.L0-5")}
    assert rebuilt_by_run(wf, "--config", "layers=[1,2,3]", "sites=[res]") == sorted(
        [*flows({2: "res", 3: "res"}), *summary("res.L1-3")])  # scored against res alone: files of their own
    assert pl.read_parquet(wf / summary("res.L1-3")[0]).height == 2
    assert all((wf / p).read_bytes() == b for p, b in wider.items())


def test_adding_a_site_runs_only_the_new_jobs(wf):
    edit_config(wf, lambda c: c.update(sites=["res", "mlp", "att"]))
    assert planned_jobs(wf) == {"download_sae": 6, "download_model": 1, "match_pair": 5, "flow": 6, "flow_summary": 1,
                                "ablation": 1, "lifetimes": 1, "summarize": 1, "all": 1}
    rebuilt = rebuilt_by_run(wf)
    assert [r for r in rebuilt if "/matches/" in r] == matches("att", 0, 1, 2, 3, 4)
    assert all("site=att" in r or "pt-att" in r or "resources/hub/model/" in r or "/summary/" in r
               or "/demo/ablation." in r or "/lifetimes/" in r or "/flow/mlp+att/" in r or "/flow/res+mlp+att/" in r
               for r in rebuilt)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill-process-group"])
def test_an_interrupted_run_resumes_without_cleanup_and_equals_an_uninterrupted_one(wf, sig):
    targets = [wf / m for m in matches("res", 0, 1, 2)]
    reference = {t: pl.read_parquet(t) for t in targets}
    for t in [*targets, *(wf / s for s in summary("res+mlp+att.L0-5"))]:  # pending work for the next run
        t.unlink()
    logs = [wf / f"logs/match_pair/model=demo/variant=1k/site=res/layer={L}.log" for L in (0, 1, 2)]
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


def test_an_interrupted_forced_rerun_rebuilds_missing_matches_in_a_plain_run(wf):
    """kill -9 of `--forcerun match_pair` right after Snakemake deleted a pair's old matches
    (it does so before the job runs): the next plain run rebuilds them."""
    every = sorted(wf.glob("results/model=demo/variant=1k/matches/site=*/layer=*/part-0.parquet"))
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(wf), "--snakefile", str(wf / "Snakefile"),
           "--cores", "2", "--forcerun", "match_pair"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while all(p.exists() for p in every):
            assert proc.poll() is None and time.time() < deadline, "no match job started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lost = [p for p in every if not p.exists()]
    assert lost
    smk(wf, "--unlock")
    smk(wf)
    assert [p for p in every if not p.exists()] == []
    assert nothing_to_do(wf)


def test_one_job_per_site_and_per_model_write_the_same_files_as_one_job_per_pair_and_layer(wf):
    """group_below: the demo's pairs in one process per site and its flow layers in one (the
    default) give the very tables the pair and layer jobs gave; only timings differ."""
    for other in wf.glob("results/model=demo/variant=1k_*"):  # no copies from other variants: all computed
        shutil.rmtree(other)
    every = sorted(wf.glob("results/model=demo/variant=1k/matches/site=*/layer=*/part-0.parquet"))
    every += sorted(wf.glob("results/model=demo/variant=1k/flow/res+mlp+att/layer=*.parquet"))
    every += sorted(wf.glob("results/model=demo/variant=1k/flow/mlp+att/layer=0.parquet"))
    before = {p: pl.read_parquet(p) for p in every}
    sites = {p.parent.parent.name.removeprefix("site=") for p in every if "/matches/" in str(p)}
    assert sites == {"res", "mlp", "att"} and len(every) == 15 + 6
    edit_config(wf, lambda c: c.update(group_below=4096))
    try:
        jobs = planned_jobs(wf)
        assert jobs.get("match_site_demo") == 3 and jobs.get("flow_layers_demo") == 1
        assert "match_pair" not in jobs and "flow" not in jobs
        smk(wf)
        for p in every:
            assert pl.read_parquet(p).equals(before[p]), p
            assert "reused_from" not in read_provenance(p), p
        assert all((wf / f"logs/match_site/model=demo/variant=1k/site={s}.log").exists() for s in sites)
        assert nothing_to_do(wf)
    finally:
        edit_config(wf, lambda c: c.update(group_below=0))
