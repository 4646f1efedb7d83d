"""The Snakemake workflow, through its command line, in a pristine copy per test module."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
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


def match_path(model: str, variant: str, site: str, layer: int) -> str:
    return f"results/model={model}/variant={variant}/matches/site={site}/layer={layer}/part-0.parquet"


def summary_path(model: str, variant: str, selection: str, ext: str = "parquet") -> str:
    return f"results/model={model}/variant={variant}/summary/{selection}.{ext}"


DEMO = "1k"  # the demo's variant: its width, nothing overridden


def mtimes(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for d in ("results", "resources/hub") for p in (workdir / d).rglob("*") if p.is_file()}


# --- dry-runs of the real configs -----------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("pristine"))


@pytest.mark.parametrize("args,expected", [
    (["models=[gemma-2-2b]"], {"download_sae": 78, "download_model": 1, "match_pair": 75, "summarize": 1, "flow": 26,
                               "flow_summary": 1}),
    (["models=[llama-3.1-8b]"], {"download_sae": 96, "match_pair": 93, "summarize": 1, "flow": 32}),
    (["models=[llama-3.1-8b]", "catalog={llama-3.1-8b: {width: 32x}}"], {"download_sae": 96, "match_pair": 93}),
    (["models=[gemma-2-2b]", "sites=[res]", "layers=[10,11,12]"], {"download_sae": 3, "match_pair": 2, "flow": 2}),
    (["models=[gemma-2-2b,llama-3.1-8b]", "sites=[att]", "layers=[0,1]"],
     {"download_sae": 4, "download_model": 1, "match_pair": 2, "summarize": 2}),
    (["models=[gemma-2-2b]", "sites=[res]", "layers=[11,12]",
      "catalog={gemma-2-2b: {width: 65k, sites: {res: {l0: {65k: [" + ",".join(["9"] * 26) + "]}}}}}"],
     {"download_sae": 2, "match_pair": 1}),
    (["models=[gemma-2-2b]", "sites=[res,mlp]", "layers=[10,11]",
      "evaluate={models: [gemma-2-2b], data: {repo_id: org/texts, revision: abc123, file: data/part-0.parquet}}"],
     {"download_sae": 4, "download_model": 1, "download_dataset": 1, "match_pair": 2, "evaluate": 1,
      "verdict_data": 1, "evaluation_summary": 1}),
    (["models=[llama-3.1-8b]", "sites=[res]", "layers=[3,4]", "evaluate={models: [llama-3.1-8b], data: {path: Snakefile}}"],
     {"download_sae": 2, "download_model": 1, "evaluate": 1}),
])
def test_dry_run_of_the_real_configs_works_offline(pristine, args, expected):
    jobs = planned_jobs(pristine, "--config", *args, env={"HF_HUB_OFFLINE": "1"})
    assert {k: jobs.get(k) for k in expected} == expected
    assert "make_demo" not in jobs


@pytest.mark.parametrize("args,message", [
    (["models=[gpt-5]"], "unknown model 'gpt-5'; known models: demo, gemma-2-2b, llama-3.1-8b, tiny"),
    (["sites=[resid]"], "'resid' is not one of"),
    (["models=[gemma-2-2b]", "layers=[25,26]"], r"model 'gemma-2-2b' has layers 0–25; unknown layer\(s\) \[26\]"),
    (["match={weights: everything}"], "'everything' is not one of"),
    (["match={k: many}"], "'many' is not of type 'integer'"),
    (["match={device: gpu2}"], "'gpu2' does not match"),
    (["flow={high: {res: q1.5, mlp: 0.25, att: 0.25}}"], "'q1.5' is not valid"),
    (["flow={top_k: 0}"], "0 is less than the minimum of 1"),
    (["models=[gemma-2-2b]", "catalog={gemma-2-2b: {width: 65k}}"], "has no l0 list for width 65k"),
    (["layers=[3,5]"], r"layers=\[3, 5\] contain no consecutive pair \(L, L\+1\) for model 'demo': nothing to match"),
    (["layers=[3]"], r"layers=\[3\]: a pair needs two consecutive layers"),
    (["catalog={../../../escaped: {format: gemma-scope}}"], "'../../../escaped' does not match"),
    (["models=[../../x]"], "'../../x' does not match"),
    (["variant=../x"], r"'../x' is not valid"),
    (["catalog={demo: {sites: {res: {per_layer: {1: {revision: ../../escaped}}}}}}"], "'../../escaped' does not match"),
    (["catalog={demo: {sites: {res: {files: {params: ../../../escaped.npz}}}}}"], "'../../../escaped.npz' does not match"),
])
def test_bad_config_values_fail_before_any_job_with_the_reason(pristine, args, message):
    out = smk(pristine, "--config", *args, check=False)
    assert out.returncode != 0
    assert re.search(message, out.stdout + out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    if not re.search(r"is not|does not match|less than", message):  # ours, not the schema's: one line, no frames
        assert '  File "' not in out.stdout + out.stderr, out.stderr[-2000:]
    assert not (pristine / "logs").exists() and not (pristine / "results").exists()
    assert not (pristine / "../../../escaped").resolve().exists()


@pytest.mark.parametrize("args,variant", [
    (["match={fold: false}"], "1k_nofold"),
    (["match={fold: false, weights: dec}"], "1k_nofold_w-dec"),
    (["match={chunk_size: 512, k: 8, dense_max_gb: 1.5, per_site: {mlp: {k: 4, fold: no}}}"], "1k_mlp-nofold"),
    (["match={device: cpu}"], "1k"),
    (["variant=my-sweep"], "my-sweep"),
    (["flow={top_k: 10}"], "1k_flow-k10"),
    (["flow={high: {res: q0.9, mlp: 0.3, att: 0.25}}"], "1k_flow-high-"),
    (["flow={explanations: false}"], "1k"),
    (["flow={per_layer: {3: {high: {res: q0.5}}}}"], "1k_flow-layers-"),
])
def test_every_documented_key_can_be_set_on_the_command_line(pristine, args, variant):
    out = smk(pristine, "-n", "--config", *args)
    assert f"results/model=demo/variant={variant}" in out.stdout
    if "flow" not in args[0]:
        assert f"results/model=demo/variant={variant}/matches/site=res/layer=0/part-0.parquet" in out.stdout
    else:
        assert re.search(f"results/model=demo/variant={re.escape(variant)}[0-9a-f]*/flow/res\\+mlp\\+att/layer=3.parquet",
                         out.stdout)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has CUDA")
@pytest.mark.parametrize("args, key", [(["match={device: cuda:1}"], "match.device=cuda:1"),
                                       (["match={per_site: {mlp: {device: cuda}}}"], "match.per_site.mlp.device=cuda"),
                                       (["evaluate={device: cuda}"], "evaluate.device=cuda")])
def test_a_cuda_device_this_host_lacks_is_refused_before_any_job_naming_the_key(pristine, args, key):
    out = smk(pristine, "--config", *args, check=False)  # a real run: refused before any job
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert not (pristine / "results").exists() and not (pristine / "logs").exists()
    assert f"config: {key} but this host has no CUDA device (torch.cuda.is_available() is False); use auto or cpu" \
        in out.stdout + out.stderr
    auto = smk(pristine, "-n", "--config", "sites=[res]", "layers=[0,1]")
    assert auto.stdout.count("saematch: no CUDA device on this host: match.device, evaluate.device auto run on the CPU") == 1
    # the tiny model's steering themes use layer 2: left out of this selection, said once
    assert auto.stderr.count("saematch: steering theme tiny.sea left out: it uses layers [2], not selected") == 1


def test_evaluate_values_typed_on_the_command_line_win_over_the_catalogs(pristine):
    from saematch.config import data_label

    out = smk(pristine, "-n", "--config", "models=[tiny]", "evaluate={n_tokens: 5}")
    config = yaml.safe_load((pristine / "config/config.yaml").read_text())
    config["models"], config["catalog"]["tiny"]["evaluate"]["n_tokens"] = ["tiny"], 5
    assert f"evaluation/{data_label(config, 'tiny')}/" in out.stdout  # 5 tokens, not the catalog's 8192


def test_a_config_file_given_with_configfile_keeps_the_catalogs_evaluate_values(pristine):
    """--configfile is a config, not a value typed for this run: the catalog's per-model values stay."""
    from saematch.config import data_label

    out = smk(pristine, "-n", "--configfile", "config/config.yaml", "--config", "models=[tiny]")
    config = yaml.safe_load((pristine / "config/config.yaml").read_text())
    config["models"] = ["tiny"]
    assert f"evaluation/{data_label(config, 'tiny')}/" in out.stdout  # the catalog's 8192 tokens


def evaluate_job_resources(workdir, *args):
    """The evaluate job's resources as a dry run plans them: {name: value}."""
    out = smk(workdir, "-n", "--config", "sites=[res]", "layers=[0,1]", *args).stdout
    block = out.split("rule evaluate:")[1].split("\n[")[0]
    return dict(kv.split("=") for kv in re.search(r"resources: (.*)", block)[1].split(", "))


def test_the_evaluate_job_is_sized_from_the_model_not_from_a_catalog_key(pristine, tmp_path):
    """A small model of one's own (no `tiny` key) gets minutes, like the tiny model; a real one hours."""
    sample = tmp_path / "sample.txt"
    sample.write_text("a short text of our own\n" * 50)
    evaluate = f"evaluate={{models: [gemma-2-2b], data: {{path: {sample}}}}}"
    small = evaluate_job_resources(pristine, "models=[gemma-2-2b]", evaluate,
                                   "catalog={gemma-2-2b: {n_layers: 3, d_model: 64}}")
    real = evaluate_job_resources(pristine, "models=[gemma-2-2b]", evaluate)
    assert int(small["runtime"]) <= 15 and small["gpu"] == "0"
    assert int(real["runtime"]) > 2 * int(small["runtime"])


def test_llama_scopes_site_names_r_m_a_are_accepted(pristine):
    jobs = planned_jobs(pristine, "--config", "models=[llama-3.1-8b]", "sites=[R,A]", "layers=[3,4]",
                        env={"HF_HUB_OFFLINE": "1"})
    assert jobs["match_pair"] == 2 and jobs["download_sae"] == 4


def test_a_dry_run_says_what_it_will_download_which_repos_are_gated_and_whether_a_token_is_set(pristine, tmp_path):
    """Before any job, also in a dry run: the Hub files to fetch, gated repos, the token."""
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "", "HF_HUB_OFFLINE": "1"}
    out = smk(pristine, "-n", "--config", "models=[demo,gemma-2-2b]", "sites=[res,att]", "layers=[1,2]", env=env)
    console = out.stdout + out.stderr
    lines = console.splitlines()
    start = next(i for i, line in enumerate(lines) if "Hugging Face repos are needed" in line)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    notice = lines[start:end]
    assert notice[0] == "saematch: 12 files from 3 Hugging Face repos are needed (taken from the Hugging Face " \
                        "cache where they are, else downloaded: the network is needed)"
    assert "  google/gemma-2-2b @ c5ebcd4 (8 files)" in notice and "  google/gemma-scope-2b-pt-att @ main (2 files)" in notice
    assert "  gated: google/gemma-2-2b: accept its licence on the Hub; no token is set (HF_TOKEN or `hf auth login`)" in notice
    assert any(line.startswith("  unpinned: google/gemma-scope-2b-pt-att @ main is a branch") for line in notice)
    assert any(line.startswith("  HF_HUB_OFFLINE=1") for line in notice)
    assert "saematch-demo" not in "\n".join(notice)  # the demo's repos are written locally, not downloaded
    assert console.index("Hugging Face repos are needed") < console.index("Job stats")  # before the plan


def test_cpu_only_hosts_do_not_serialise_match_jobs_on_a_gpu_resource(pristine):
    out = smk(pristine, "-n", "--config", "layers=[0,1]", "sites=[res]", "group_below=0")  # one job per pair
    assert re.search(r"rule match_pair:(.|\n)*?resources: .*gpu=0", out.stdout)  # this host has no GPU


# Snakemake's linter asks for every function in common.smk; the project keeps a rule's own input
# and params functions beside it (the style of PyPSA-Eur), so that one lint is expected, no other.
EXPECTED_LINTS = {"Mixed rules and functions in same snakefile."}


def test_workflow_passes_lint_and_snakefmt(pristine):
    out = smk(pristine, "--lint", check=False)  # exit status 1 on any lint, the expected one too
    text = out.stdout + out.stderr
    lints = set(re.findall(r"^\s*\* (.+?):$", text, flags=re.M))
    assert "Congratulations" in text or (lints and lints <= EXPECTED_LINTS), text
    assert "Lints for snakefile" not in text or "common.smk:" not in text  # the shared file holds no rules
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
    shard_names = [f for f in entry["model"]["files"] if f.endswith(".safetensors")]
    shards = {f: {} for f in shard_names}
    for i, L in enumerate(layers):
        shard = shard_names[i]
        shards[shard][f"model.layers.{L}.self_attn.o_proj.weight"] = torch.from_numpy(rng.standard_normal((d_model, d_z)).astype(np.float32))
        shards[shard][f"model.layers.{L}.post_attention_layernorm.weight"] = torch.zeros(d_model)
    shards[shard_names[-1]]["model.norm.weight"] = torch.ones(d_model)
    files = {name: save_safetensors(t) for name, t in shards.items()}
    files.update({f: b"{}" for f in entry["model"]["files"] if f.endswith(".json")})  # config, tokenizer
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
    out = smk(workdir, "--config", f"models=[{model}]", "layers=[12,13]", env=env)
    unpinned = {"gemma-2-2b": "google/gemma-scope-2b-pt-mlp", "llama-3.1-8b": "fnlp/Llama3_1-8B-Base-LXM-8x"}[model]
    assert f"saematch: warning: {unpinned} @ main is a branch, not a commit: resolved to " in out.stdout + out.stderr
    for site in ("res", "mlp", "att"):
        variant = {"gemma-2-2b": "16k", "llama-3.1-8b": "8x"}[model]
        path = workdir / match_path(model, variant, site, 12)
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
    assert (workdir / summary_path(model, variant, "res+mlp+att.L12-13", "png")).stat().st_size > 0


# --- the demo, end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_console(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    out = smk(workdir)
    return workdir, out.stdout  # what a run prints at its end (Snakemake's own messages are on stderr)


@pytest.fixture(scope="module")
def demo_run(demo_console):
    return demo_console[0]


def test_the_end_of_a_run_says_where_the_results_are_and_what_they_show(demo_console):
    workdir, console = demo_console
    tail = console
    assert f"saematch: demo: results in results/model=demo/variant={DEMO}/" in tail
    assert summary_path("demo", DEMO, "res+mlp+att.L0-5") in tail
    columns = ("site", "pair", "features", "cosine", "top1_agree", "certified", "planted_recovered", "unfolded",
               "persists", "unjudged", "precision", "recall", "ece")
    header = re.search(r"\| " + r" +\| ".join(columns) + r" +\|", tail)
    assert header
    assert len(re.findall(r"\| (res|mlp|att) +\| \d→\d +\| 1024 ", tail)) == 15
    assert "  steer    results/model=tiny/variant=2x/steer/res+mlp+att.L0-2/{forest-off,sea}/summary.tsv" in tail


def test_demo_run_writes_every_pair_summary_and_figure(demo_run):
    matches = sorted(demo_run.glob(f"results/model=demo/variant={DEMO}/matches/site=*/layer=*/part-0.parquet"))
    assert len(matches) == 15
    summary = pl.read_parquet(demo_run / summary_path("demo", DEMO, "res+mlp+att.L0-5"))
    assert summary.height == 15 and summary["n_features"].to_list() == [1024] * 15
    recovered = (summary["planted_recovered"] * summary["n_planted"]).sum() / summary["n_planted"].sum()
    assert recovered > 0.98
    # the verdict on the demo's planted truth: the targets hold per pair at res and mlp; att's
    # SAEs, mapped through W_O (saematch.load.project_att), are named unjudged, not guessed at
    judged = summary.filter(pl.col("site") != "att")
    assert (judged["persists_precision"] >= 0.95).all() and (judged["persists_recall"] >= 0.95).all()
    assert (judged["confidence_ece"] <= 0.05).all()
    att = summary.filter(pl.col("site") == "att")
    assert (att["share_unjudged"] == 1).all() and (att["share_persists"] == 0).all()
    # Feature Flow on the planted origins: born in a module, found there (case C and the index)
    flow = pl.read_csv(demo_run / summary_path("demo", DEMO, "res+mlp+att.L0-5", "flow.tsv"), separator="\t")
    assert flow["layer"].to_list() == list(range(6)) and (flow["features"] == 1024).all()
    for origin in ("mlp", "att"):
        for key in ("case_recovered", "source_recovered"):
            pooled = (flow[f"{key}_{origin}"] * flow[f"planted_{origin}"]).sum() / flow[f"planted_{origin}"].sum()
            assert pooled >= 0.85, (origin, key, pooled)
    assert (flow["source_recovered_res"].drop_nulls() >= 0.99).all()  # persisting: the planted predecessor
    chains = pl.read_parquet(demo_run / f"results/model=demo/variant={DEMO}/lifetimes/res+mlp+att.L0-5.parquet")
    assert chains.height == 3 * 6 * 1024 and chains.select("site", "layer", "feature").is_duplicated().sum() == 0


def test_the_demo_summary_shows_what_folding_does(demo_run):
    """The demo plants JumpReLU's scale symmetry: folded matching recovers, raw matching does not."""
    summary = pl.read_parquet(demo_run / summary_path("demo", DEMO, "res+mlp+att.L0-5"))
    weight = summary["n_planted"] / summary["n_planted"].sum()
    folded = (summary["planted_recovered_folded"] * weight).sum()
    unfolded = (summary["planted_recovered_unfolded"] * weight).sum()
    assert folded > 0.98 and unfolded < 0.95, (folded, unfolded)
    # the ablation's folded run is the pipeline's own (fold: true is the demo's variant)
    assert (summary["planted_recovered_folded"] == summary["planted_recovered"]).all()
    assert summary["certified"].all() and (summary["solver"] == "lapjv").all()
    assert (demo_run / summary_path("demo", DEMO, "res+mlp+att.L0-5", "png")).stat().st_size > 10_000
    assert (demo_run / f"logs/match_site/model=demo/variant={DEMO}/site=att.log").read_text()  # one job per site


def test_demo_provenance_names_both_saes_options_versions_and_timings(demo_run):
    prov = read_provenance(demo_run / match_path("demo", DEMO, "mlp", 3))
    assert prov["src"]["files"]["params"]["filename"] == "layer_3/width_1k/average_l0_46/params.npz"
    assert prov["dst"]["files"]["params"]["filename"] == "layer_4/width_1k/average_l0_44/params.npz"
    assert len(prov["src"]["files"]["params"]["sha256"]) == 64 and prov["src"]["revision"] == "main"
    assert prov["options"] == {"fold": True, "weights": "enc+dec+benc", "chunk_size": 2048, "solver": "auto",
                               "k": 32, "dense_max_gb": 6, "cut": 0.5, "null_rows": 1024, "null_draws": 2,
                               "partial": False}
    assert prov["verdict"]["null_samples"] == 2048 and 0 < prov["verdict"]["share_persists"] < 1
    cert = prov["certificate"]
    assert cert["certified"] and cert["solver"] == "lapjv" and cert["gap_bound"] < 1e-6 * prov["total_cost"]
    assert {"torch", "lapjv", "saematch"} <= set(prov["versions"]) and prov["device"] == "cpu"
    assert prov["total_cost"] > 0 and {"load", "cost", "solve", "total"} <= set(prov["seconds"])


@pytest.mark.parametrize("options,variant", [
    ("{fold: false, weights: dec}", "1k_nofold_w-dec"),
    ("{fold: true, weights: enc+dec}", "1k_w-enc+dec"),
])
def test_the_pipelines_matches_are_the_librarys_for_the_same_options(demo_run, options, variant, monkeypatch):
    """Each match option reaches the job and changes the result exactly as match_pair says."""
    from saematch.hub import resolve_files
    from saematch.load import load_att_projection, load_sae, project_att
    from saematch.match import match_pair

    smk(demo_run, "--config", "models=[demo]", "layers=[1,2]", "sites=[res,att]", f"match={options}")
    monkeypatch.chdir(demo_run)  # the demo's pointers name a cache relative to the workdir
    opts = yaml.safe_load(options)
    for site in ("res", "att"):
        path = demo_run / match_path("demo", variant, site, 1)
        prov = read_provenance(path)
        saes = [load_sae(prov[side]) for side in ("src", "dst")]
        site_opts = dict(opts, weights="dec") if site == "att" else opts
        if site == "att":
            model = resolve_files(prov["model_files"])
            saes = [project_att(s, *load_att_projection(model, L)) for s, L in zip(saes, (1, 2))]
        columns, _ = match_pair(*saes, device="cpu", **site_opts)
        table = pl.read_parquet(path)
        assert prov["options"]["fold"] == opts["fold"] and prov["options"]["weights"] == site_opts["weights"]
        assert np.array_equal(table["match"].to_numpy(), columns["match"])
        np.testing.assert_allclose(table["mse"].to_numpy(), columns["mse"], rtol=1e-6)
        assert np.array_equal(table["persists"].to_numpy(), columns["persists"])
        np.testing.assert_allclose(table["confidence"].to_numpy(), columns["confidence"], rtol=1e-6)
        default = pl.read_parquet(demo_run / match_path("demo", DEMO, site, 1))
        if site == "res":  # the option changed something, or this test could not fail
            assert not np.allclose(table["mse"].to_numpy(), default["mse"].to_numpy())


def report_results(html: str) -> tuple[dict, dict]:
    """The Snakemake report's categories ({category: {subcategory: [paths]}}) and results
    ({path: entry with mime_type, labels, data_uri}), as its page embeds them."""
    categories = json.loads(re.search(r"categories = (\{.*?\});?\n", html)[1])
    results = {}
    for m in re.finditer(r'"([^"]+)": (\{"name": )', html):
        entry, _ = json.JSONDecoder().raw_decode(html, m.start(2))
        results[m[1]] = entry
    return categories, results


def test_the_report_shows_every_table_as_a_table_and_reaches_every_figure(demo_run):
    """The report offers a TSV only as a download and shows one result per distinct set of
    labels in a category: every table is an HTML page, and no two results share their labels."""
    smk(demo_run, "--report", "report.html")
    categories, results = report_results((demo_run / "report.html").read_text(errors="replace"))
    assert all(not p.endswith((".tsv", ".csv")) for p in results), "a table offered as a download"
    for category, subs in categories.items():
        for paths in subs.values():
            labels = [json.dumps(results[p]["labels"], sort_keys=True) for p in paths]
            assert len(set(labels)) == len(labels), (category, paths)
    figures = {p for p, r in results.items() if r["mime_type"] == "image/png"}
    assert any(p.endswith("evaluation.png") for p in figures) and any(p.endswith("L0-5.survival.png") for p in figures)
    assert {p.split("/")[-2] for p in figures if p.endswith("figure.png") and "/steer/" in p} == {"sea", "forest-off"}
    # the summary table itself is in the report, as a table
    (summary,) = [p for p in results if p.endswith("model=demo/variant=1k/summary/res+mlp+att.L0-5.html")]
    assert results[summary]["mime_type"] == "text/html"
    page = base64.b64decode(results[summary]["data_uri"].split("base64,")[1]).decode()
    table = pl.read_csv(demo_run / "results/model=demo/variant=1k/summary/res+mlp+att.L0-5.tsv", separator="\t")
    assert page.count("<tr>") == table.height + 1 and all(f"<th>{c}</th>" in page for c in table.columns)
    assert {"site", "layer", "cosine_mean", "persists_precision", "confidence_ece", "births", "n_dead"} <= set(table.columns)


def test_the_tiny_models_matches_are_checked_on_its_activations_in_the_same_run(demo_run):
    from saematch.config import data_label

    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    folder = demo_run / f"results/model=tiny/variant=2x/evaluation/{data_label(config, 'tiny')}/res+mlp+att.L0-2"
    pairs, prov = pl.read_parquet(folder / "pairs.parquet"), read_provenance(folder / "pairs.parquet")
    assert pairs.height == 6 and set(pairs["site"]) == {"res", "mlp", "att"}
    assert (pairs["tokens"] == 8192).all() and pairs["matching_score"].is_between(0, 1).all()
    res = pairs.filter(pl.col("site") == "res")
    assert (res["ev_encode_decode_current"] > 0.95).all()  # the SAEs were trained on these activations
    assert (res["loss_tokens"] >= 4096).all() and res["dl_layer_drop"].is_not_null().all()
    assert max(prov["hook_errors"].values()) < 1e-5 and prov["options"]["n_tokens"] == 8192
    features = pl.read_parquet(folder / "features.parquet")
    assert features.height == 3 * 2 * 128 and features["pearson_top"].dtype == pl.Array(pl.Int32, 5)
    table = pl.read_csv(folder / "summary.tsv", separator="\t")
    assert table.height == 6 and {"agree_match", "persists_correlated", "ev_permute_folded"} <= set(table.columns)
    assert (folder / "calibration.tsv").stat().st_size > 0 and (folder / "evaluation.png").stat().st_size > 0


def test_the_demo_steers_the_tiny_models_planted_topics_along_their_graphs(demo_run):
    """Rule steer on the tiny model's two themes: the set is the seeds' traced graph, the grid
    ran in full, and the planted topic moved as the issue asks (sea up, forest down)."""
    from saematch import graph, steer

    root = demo_run / "results/model=tiny/variant=2x"
    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    for name, theme in config["catalog"]["tiny"]["themes"].items():
        folder = root / "steer" / "res+mlp+att.L0-2" / name
        features = pl.read_parquet(folder / "features.parquet")
        assert features.equals(steer.feature_set(graph.results_paths(root), theme["seeds"]))
        summary = pl.read_parquet(folder / "summary.parquet")
        assert summary.height == 1 + len(theme["layers"]) * 2 * len(theme["values"])
        prov = read_provenance(folder / "summary.parquet")
        assert prov["theme"]["seeds"] == theme["seeds"] and prov["options"]["mode"] == "verdict"
        generations = pl.read_parquet(folder / "generations.parquet")
        ran = summary.filter((pl.col("n_features") > 0) | (pl.col("how") == "none"))  # the baseline steers none
        assert generations.height == ran.height * theme["samples"] and ran.height == summary.height
        assert (summary["delta_loss"] == 0).to_list()[0] and summary["delta_loss"].is_not_null().all()
        assert (folder / "figure.png").stat().st_size > 0 and "seeds" in (folder / "graph.html").read_text()
        base = summary.row(0, named=True)["keyword_share"]
        best = summary.filter(pl.col("scope") == "cumulative")["keyword_share"]
        if theme["how"] == "activate":
            assert base < 0.05 and best.max() > 0.5
        else:
            assert base > 0.1 and best.min() == 0


def test_the_tiny_models_verdict_is_refitted_on_its_evaluation_and_shown(demo_run):
    """verdict_data on the tiny model: every feature of every pair, dead ones and the attention
    site named instead of guessed at, a judged site calibrated held out; saematch show says so."""
    from saematch.config import data_label

    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    data = data_label(config, "tiny")
    folder = demo_run / f"results/model=tiny/variant=2x/evaluation/{data}/res+mlp+att.L0-2"
    sites = pl.read_csv(folder / "verdict.tsv", separator="\t")
    assert sites["site"].to_list() == ["att", "mlp", "res"] and (sites["tokens"] == 8192).all()
    assert (sites["data"] == data).all() and (sites["labelled"] > 50).all()
    att, res = (sites.filter(pl.col("site") == s).row(0, named=True) for s in ("att", "res"))
    assert att["match_unjudged"] and att["top1_unjudged"]  # its layers share almost nothing
    assert res["top1_unjudged"] is None and res["top1_ece_after"] < res["top1_ece_before"]
    table = pl.read_parquet(folder / "verdict.parquet")
    assert table.height == 3 * 2 * 128
    dead = table.filter(pl.col("active") < 10)
    assert dead.height and dead["unjudged"].str.starts_with("dead on data (active ").all()
    assert dead["confidence"].null_count() == dead.height
    judged = table.filter(pl.col("top1_confidence").is_not_null() & (pl.col("site") == "res"))
    assert judged.height and (judged["top1_how"] == "cross-fitted").all()
    feature = judged["feature"][0]
    out = subprocess.run([sys.executable, "-m", "saematch", "--results", str(demo_run / "results"), "show", "tiny",
                          f"{judged['layer'][0]}/res/{feature}"], capture_output=True, text=True, check=True).stdout
    assert f"calibrated on 8192 tokens of {data}; the site's held-out ECE" in out


def test_another_text_sample_size_goes_to_its_own_folder(demo_run):
    out = smk(demo_run, "-n", "--config", "models=[tiny]", "catalog={tiny: {evaluate: {n_tokens: 4096}}}")
    planned = re.findall(r"evaluation/(text-[0-9a-f]{6})/", out.stdout)
    before = {p.name for p in (demo_run / "results/model=tiny/variant=2x/evaluation").iterdir()}
    assert planned and set(planned).isdisjoint(before)  # a new folder; the 8192-token one stays
    assert "rule match_pair" not in out.stdout  # the matches are not recomputed


def test_evaluation_settings_rerun_only_what_they_change(demo_run):
    for args in (["catalog={tiny: {evaluate: {batch_size: 4}}}"], ["evaluate={device: cpu, dense_max_gb: 0.001}"]):
        out = smk(demo_run, "-n", "--config", *args)
        assert "Nothing to be done" in out.stdout + out.stderr, args  # memory and device: not results
    assert planned_jobs(demo_run, "--config", "evaluate={min_active: 5, corr_level: 0.3}") == \
        {"verdict_data": 1, "evaluation_summary": 1, "all": 1}  # the summary's cuts: the model does not run again
    matches = demo_run / match_path("tiny", "2x", "mlp", 1)
    original, before = matches.read_bytes(), matches.stat()
    table = pq.read_table(matches)  # one site's matches rewritten, one confidence changed
    conf = table["confidence"].to_numpy().copy()
    conf[0] = 1 - conf[0]
    pq.write_table(table.set_column(table.schema.get_field_index("confidence"), "confidence",
                                    pa.array(conf, pa.float32())), matches)
    try:
        assert planned_jobs(demo_run) == {"evaluate": 1, "verdict_data": 1, "evaluation_summary": 1, "summarize": 1,
                                          "lifetimes": 1, "steer": 2,  # the themes' graph reads every matches file
                                          "all": 1}
    finally:
        matches.write_bytes(original)
        os.utime(matches, ns=(before.st_atime_ns, before.st_mtime_ns))


def demo_blob(workdir: Path, site: str, layer: int, l0: int) -> Path:
    pointer = json.loads((workdir / f"resources/hub/sae/saematch-demo--gemma-scope-2b-pt-{site}/main/"
                                    f"layer_{layer}/width_1k/average_l0_{l0}/params.npz.json").read_text())
    snap = workdir / f"resources/demo/hf-cache/models--saematch-demo--gemma-scope-2b-pt-{site}/snapshots"
    return Path(os.path.realpath(snap / pointer["commit"] / pointer["files"]["params"]["filename"]))


def test_a_narrower_run_of_a_small_model_remakes_none_of_its_grouped_files(demo_run):
    """The demo's site and flow jobs (group_below) cover every layer whatever the selection: a
    narrower run finds their files made, adds only its own (layer 1 scored without res 0), and
    the full run after it has nothing to do."""
    narrow = ["--config", "models=[demo]", "layers=[1,2,3]"]
    jobs = planned_jobs(demo_run, *narrow)
    assert jobs.get("flow") == 1
    assert not {"match_site_demo", "flow_layers_demo", "match_pair"} & set(jobs), jobs
    smk(demo_run, *narrow)
    out = smk(demo_run, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_a_failed_job_says_why_on_the_console_is_not_retried_and_leaves_no_partial_output(demo_run):
    blob = demo_blob(demo_run, "mlp", 4, 44)
    good = blob.read_bytes()
    out_file = demo_run / match_path("demo", DEMO, "mlp", 3)
    log_file = demo_run / f"logs/match_site/model=demo/variant={DEMO}/site=mlp.log"
    try:
        blob.write_bytes(good[: len(good) // 3])
        out = smk(demo_run, "--forcerun", str(out_file.relative_to(demo_run)), check=False)
    finally:
        blob.write_bytes(good)
    console = out.stdout + out.stderr
    assert out.returncode != 0
    assert not out_file.exists()
    cause = re.compile(r"saematch: error: \S*layer_4/width_1k/average_l0_44/params.npz: \d+ bytes, "
                       r"expected \d+ \(truncated or replaced\)")
    assert cause.search(console), console[-3000:]  # the one-line cause, on the console
    assert "Traceback" not in console
    assert re.search(r"saematch: 1 job\(s\) failed:\n  \S*average_l0_44/params.npz", console)  # at the end
    assert "not retried" in console
    # Snakemake's retry stopped at once: same memory request, and the first attempt's traceback kept
    resources = re.findall(r"resources: .*mem_mb=(\d+)", console)
    assert len(resources) == 2 and resources[0] == resources[1]
    log = log_file.read_text()
    assert "Traceback" in log and cause.search(log)
