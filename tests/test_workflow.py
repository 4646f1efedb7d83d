"""The Snakemake workflow, through its command line, in a pristine copy per test module."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save as save_safetensors

from saematch.demo import npz_bytes, write_hub_repo
from saematch.write import read_provenance
from conftest import gemma_arrays, llama_files

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "config", "workflow", "scripts", "envs", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def smk(workdir: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--snakefile",
           str(workdir / "Snakefile"), "--cores", "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def planned_jobs(workdir: Path, *args: str, env: dict | None = None) -> dict[str, int]:
    """Rule → number of jobs a dry-run plans."""
    out = smk(workdir, "-n", "--quiet", "rules", *args, env=env)
    table = (out.stdout + out.stderr).split("Job stats:")[-1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def mtimes(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for d in ("results", "resources/hub") for p in (workdir / d).rglob("*") if p.is_file()}


# --- dry-runs of the real configs -----------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("pristine"))


@pytest.mark.parametrize("args,expected", [
    (["models=[gemma-2-2b]"], {"download_sae": 78, "download_model": 1, "match_pair": 75, "summarize": 1}),
    (["models=[llama-3.1-8b]"], {"download_sae": 96, "match_pair": 93, "summarize": 1}),
    (["models=[llama-3.1-8b]", "catalog={llama-3.1-8b: {width: 32x}}"], {"download_sae": 96, "match_pair": 93}),
    (["models=[gemma-2-2b]", "sites=[res]", "layers=[10,11,12]"], {"download_sae": 3, "match_pair": 2}),
    (["models=[gemma-2-2b,llama-3.1-8b]", "sites=[att]", "layers=[0,1]"],
     {"download_sae": 4, "download_model": 1, "match_pair": 2, "summarize": 2}),
    (["models=[gemma-2-2b]", "sites=[res]", "layers=[11,12]",
      "catalog={gemma-2-2b: {width: 65k, sites: {res: {l0: {65k: [" + ",".join(["9"] * 26) + "]}}}}}"],
     {"download_sae": 2, "match_pair": 1}),
])
def test_dry_run_of_the_real_configs_works_offline(pristine, args, expected):
    jobs = planned_jobs(pristine, "--config", *args, env={"HF_HUB_OFFLINE": "1"})
    assert {k: jobs.get(k) for k in expected} == expected
    assert "make_demo" not in jobs


@pytest.mark.parametrize("args,message", [
    (["models=[gpt-5]"], "unknown model 'gpt-5'; known models: demo, gemma-2-2b, llama-3.1-8b"),
    (["sites=[resid]"], "'resid' is not one of"),
    (["models=[gemma-2-2b]", "layers=[25,26]"], r"model 'gemma-2-2b' has layers 0–25; unknown layer\(s\) \[26\]"),
    (["match={weights: everything}"], "'everything' is not one of"),
    (["models=[gemma-2-2b]", "catalog={gemma-2-2b: {width: 65k}}"], "has no l0 list for width 65k"),
])
def test_unknown_config_values_fail_before_anything_runs(pristine, args, message):
    out = smk(pristine, "-n", "--config", *args, check=False)
    assert out.returncode != 0
    assert re.search(message, out.stdout + out.stderr)


def test_workflow_passes_lint_and_snakefmt(pristine):
    out = smk(pristine, "--lint")
    assert "Congratulations" in out.stdout + out.stderr
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=pristine,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


# --- the real configs, run on small SAE files in the exact Hub layouts -------------------------

def fill_gemma_cache(cache: Path, layers=(12, 13)) -> None:
    entry = CONFIG["catalog"]["gemma-2-2b"]
    d_model, d_z = 8, 12
    for site, cfg in entry["sites"].items():
        files = {}
        for L in layers:
            a = gemma_arrays(d=d_z if site == "att" else d_model, F=24, seed=L)
            files[cfg["files"]["params"].format(layer=L, width="16k", l0=cfg["l0"]["16k"][L])] = npz_bytes(a)
        commit = cfg["revision"] if cfg["revision"] != "main" else None
        write_hub_repo(cache, cfg["repo_id"], files, commit)
    rng = np.random.default_rng(0)
    shards = {f: {} for f in entry["model"]["files"][1:]}
    for i, L in enumerate(layers):
        shard = entry["model"]["files"][1 + i]
        shards[shard][f"model.layers.{L}.self_attn.o_proj.weight"] = torch.from_numpy(rng.standard_normal((d_model, d_z)).astype(np.float32))
        shards[shard][f"model.layers.{L}.post_attention_layernorm.weight"] = torch.zeros(d_model)
    shards[entry["model"]["files"][-1]]["model.norm.weight"] = torch.ones(d_model)
    files = {name: save_safetensors(t) for name, t in shards.items()}
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {
        k: name for name, t in shards.items() for k in t}}).encode()
    write_hub_repo(cache, entry["model"]["repo_id"], files, entry["model"]["revision"])


def fill_llama_cache(cache: Path, tmp: Path, layers=(12, 13)) -> None:
    entry = CONFIG["catalog"]["llama-3.1-8b"]
    for site, cfg in entry["sites"].items():
        files = {}
        for L in layers:
            w, h, *_ = llama_files(tmp / f"{site}{L}", d=8, F=24, seed=L, dtype=torch.bfloat16)
            fmt = {"layer": L, "width": "8x"}
            files[cfg["files"]["weights"].format(**fmt)] = w.read_bytes()
            files[cfg["files"]["hyperparams"].format(**fmt)] = h.read_bytes()
        revision = cfg["revision"]["8x"] if isinstance(cfg["revision"], dict) else cfg["revision"]
        write_hub_repo(cache, cfg["repo_id"].format(width="8x"), files, None if revision == "main" else revision)


@pytest.mark.parametrize("model", ["gemma-2-2b", "llama-3.1-8b"])
def test_real_config_runs_on_a_prefilled_hub_cache_offline(tmp_path, model):
    workdir, cache = copy_workflow(tmp_path / "wf"), tmp_path / "hf-cache"
    fill_gemma_cache(cache) if model == "gemma-2-2b" else fill_llama_cache(cache, tmp_path)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    smk(workdir, "--config", f"models=[{model}]", "layers=[12,13]", env=env)
    for site in ("res", "mlp", "att"):
        path = workdir / f"results/matches/model={model}/site={site}/layer=12/part-0.parquet"
        df, prov = pl.read_parquet(path), read_provenance(path)
        assert df.height == 24 and df["match"].n_unique() == 24
        assert prov["src"]["files"] and prov["dst"]["commit"] and len(prov["src"]["commit"]) == 40
        if model == "gemma-2-2b" and site == "res":
            assert prov["src"]["commit"] == CONFIG["catalog"][model]["sites"]["res"]["revision"]
            assert prov["dst"]["files"]["params"]["filename"] == "layer_13/width_16k/average_l0_84/params.npz"
        if model == "llama-3.1-8b":
            assert prov["src"]["files"]["weights"]["filename"] == \
                f"Llama3_1-8B-Base-L12{dict(res='R', mlp='M', att='A')[site]}-8x/checkpoints/final.safetensors"
        assert prov["options"]["weights"] == ("dec" if (model, site) == ("gemma-2-2b", "att") else "enc+dec+benc")
    assert (workdir / f"results/summary/{model}.png").stat().st_size > 0


# --- the demo, end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    smk(workdir)
    return workdir


def test_demo_run_writes_every_pair_summary_and_figure(demo_run):
    matches = sorted(demo_run.glob("results/matches/model=demo/site=*/layer=*/part-0.parquet"))
    assert len(matches) == 15
    summary = pl.read_parquet(demo_run / "results/summary/demo.parquet")
    assert summary.height == 15 and summary["n_features"].to_list() == [1024] * 15
    recovered = (summary["planted_recovered"] * summary["n_planted"]).sum() / summary["n_planted"].sum()
    assert recovered > 0.98
    assert summary["certified"].all() and (summary["solver"] == "lapjv").all()
    assert (demo_run / "results/summary/demo.png").stat().st_size > 10_000
    assert (demo_run / "logs/match_pair/model=demo/site=att/layer=0.log").read_text()


def test_demo_provenance_names_both_saes_options_versions_and_timings(demo_run):
    prov = read_provenance(demo_run / "results/matches/model=demo/site=mlp/layer=3/part-0.parquet")
    assert prov["src"]["files"]["params"]["filename"] == "layer_3/width_1k/average_l0_46/params.npz"
    assert prov["dst"]["files"]["params"]["filename"] == "layer_4/width_1k/average_l0_44/params.npz"
    assert len(prov["src"]["files"]["params"]["sha256"]) == 64 and prov["src"]["revision"] == "main"
    assert prov["options"] == {"fold": True, "weights": "enc+dec+benc", "chunk_size": 2048,
                               "solver": "auto", "k": 32, "dense_max_gb": 6}
    cert = prov["certificate"]
    assert cert["certified"] and cert["solver"] == "lapjv" and cert["gap_bound"] < 1e-6 * prov["total_cost"]
    assert {"torch", "lapjv", "saematch"} <= set(prov["versions"]) and prov["device"] == "cpu"
    assert prov["total_cost"] > 0 and {"load", "cost", "solve", "total"} <= set(prov["seconds"])


def test_the_report_carries_the_summary_figure(demo_run):
    smk(demo_run, "--report", "report.html")
    assert "demo.png" in (demo_run / "report.html").read_text(errors="replace")


def test_a_corrupt_sae_file_fails_the_job_and_leaves_no_partial_output(demo_run):
    pointer = json.loads((demo_run / "resources/hub/model=demo/site=mlp/layer=4.json").read_text())
    snap = demo_run / "resources/demo/hf-cache/models--saematch-demo--gemma-scope-2b-pt-mlp/snapshots"
    blob = Path(os.path.realpath(snap / pointer["commit"] / pointer["files"]["params"]["filename"]))
    good = blob.read_bytes()
    out_file = demo_run / "results/matches/model=demo/site=mlp/layer=3/part-0.parquet"
    try:
        blob.write_bytes(good[: len(good) // 3])
        out = smk(demo_run, "--forcerun", str(out_file.relative_to(demo_run)), check=False)
        assert out.returncode != 0
        assert not out_file.exists()
        log = (demo_run / "logs/match_pair/model=demo/site=mlp/layer=3.log").read_text()
        assert "layer_4/width_1k/average_l0_44/params.npz" in log and "truncated" in log
    finally:
        blob.write_bytes(good)
