# Config validation, wildcard constraints, per-layer param functions and targets.
# Each rule gets only its own slice of the config, so editing one layer's or one site's
# settings reruns only the jobs that use them (snakemake_notes.md §4). The rules of naming
# (variants, summaries) and of reading command-line values live in saematch.config.
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

import saematch
import saematch.devices
import saematch.logs
from saematch import config as cfg
from saematch.solve import choose_solver

min_version("9.0")

SCHEMA = "../schemas/config.schema.yaml"
# --config values arrive as strings: read them as the schema's types before validating. A
# config error at parse time stops the run in one line naming the key (cfg.stop_in_one_line).
# libyaml's loader where PyYAML has it: the schema in 0.04 s instead of 0.3 s, at every start
with open(Path(workflow.current_basedir) / SCHEMA) as _fh:
    _schema = yaml.load(_fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    config.update(cfg.coerce(config, _schema))
with cfg.stop_in_one_line():
    config.update(cfg.normalise(config))
    validate(config, SCHEMA)
    cfg.check_selection(config)

SITES = cfg.SITES
with cfg.stop_in_one_line():
    VARIANT = {model: cfg.variant_name(config, model) for model in config["models"]}
    SELECTION = {
        model: cfg.selection_label(config, model) for model in config["models"]
    }
MATCHES = "results/model={model}/variant={variant}/matches/site={site}/layer={layer}/part-0.parquet"
SUMMARY = "results/model={model}/variant={variant}/summary/{selection}"
LIFETIMES = "results/model={model}/variant={variant}/lifetimes/{selection}"
# a layer's flow file is named by the predecessor modules it was scored against (res: L − 1,
# mlp, att: L), so a run with other sites selected writes its own file beside the others
FLOW = "results/model={model}/variant={variant}/flow/{modules}/layer={layer}.parquet"
# one text sample and size ({data}: saematch.config.data_label) per folder, one file per site
EVALUATION = "results/model={model}/variant={variant}/evaluation/{data}/{selection}"
# one steering theme's grid (saematch.steer): its feature set, generations, summary and figure
STEERING = "results/model={model}/variant={variant}/steer/{selection}/{theme}"
MATCH_LOG = (
    "logs/match_pair/model={model}/variant={variant}/site={site}/layer={layer}.log"
)


wildcard_constraints:
    model="|".join(re.escape(m) for m in config["catalog"]),
    variant=cfg.NAME.pattern[1:-1],
    site="|".join(SITES),
    layer=r"\d+",
    selection=r"[a-z+]+\.L[0-9_-]+",
    modules=r"(res|mlp|att)(\+(mlp|att))*",
    repo=r"[^/]+",
    revision=r"[^/]+",
    key=r"[^=]+",
    data=r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{6}",
    theme=cfg.NAME.pattern[1:-1],


def catalog_l0(model, site, layer):
    """The catalog's L0 folder for a layer (no per_layer override; the demo writes these)."""
    entry = config["catalog"][model]
    table = entry["sites"][site]["l0"]
    if isinstance(table, dict):  # width → per-layer list
        if entry["width"] not in table:
            raise cfg.ConfigError(
                f"config: {model} {site} has no l0 list for width {entry['width']}"
            )
        table = table[entry["width"]]
    if int(layer) >= len(table):
        raise cfg.ConfigError(
            f"config: {l0_key(model, site, layer)} is missing: the list has {len(table)} "
            f"L0s for the model's {entry['n_layers']} layers"
        )
    return table[int(layer)]


def l0_key(model, site, layer):
    """The config key a layer's L0 comes from, named where its value breaks a path."""
    base = f"catalog.{model}.sites.{site}"
    if "l0" in per_layer(model, site, layer):
        return f"{base}.per_layer.{int(layer)}.l0"
    entry = config["catalog"][model]
    if isinstance(entry["sites"][site].get("l0"), dict):
        return f"{base}.l0.{entry['width']}[{int(layer)}]"
    return f"{base}.l0[{int(layer)}]"


def per_layer(model, site, layer):
    """A site's per_layer overrides for one layer ({} without any)."""
    site_cfg = config["catalog"][model]["sites"][site]
    return {int(k): v for k, v in site_cfg.get("per_layer", {}).items()}.get(
        int(layer), {}
    )


def sae_l0(model, site, layer):
    """The L0 a run uses for one SAE: the per_layer override, else the catalog's; None where
    the format has no L0 choice (Llama Scope)."""
    site_cfg = config["catalog"][model]["sites"][site]
    default = catalog_l0(model, site, layer) if "l0" in site_cfg else None
    return per_layer(model, site, layer).get("l0", default)


def sae_spec(model, site, layer):
    """Repo, pinned revision and files of one SAE, templates and per-layer overrides resolved:
    each a path checked by saematch.config.fill, which names the key at fault."""
    entry = config["catalog"][model]
    site_cfg = entry["sites"][site]
    layer = int(layer)
    over = per_layer(model, site, layer)
    spec = {k: site_cfg[k] for k in ("repo_id", "revision", "files") if k in site_cfg}
    spec.update(over)
    site_key = f"catalog.{model}.sites.{site}"
    key = {
        k: f"{site_key}.per_layer.{layer}.{k}" if k in over else f"{site_key}.{k}"
        for k in spec
    }
    if isinstance(spec["revision"], dict):
        if entry["width"] not in spec["revision"]:
            raise cfg.ConfigError(
                f"config: {key['revision']} has no revision for width {entry['width']}"
            )
        spec["revision"] = spec["revision"][entry["width"]]
        key["revision"] = f"{key['revision']}.{entry['width']}"
    fields = {"layer": layer, "l0": sae_l0(model, site, layer), "width": entry["width"]}
    sources = {"l0": l0_key(model, site, layer), "width": f"catalog.{model}.width"}
    hub = entry.get("hub", {})
    return {
        "format": entry["format"],
        "repo_id": cfg.fill(spec["repo_id"], fields, key["repo_id"], sources),
        "revision": cfg.fill(spec["revision"], {}, key["revision"]),
        "files": {
            role: cfg.fill(path, fields, f"{key['files']}.{role}", sources)
            for role, path in spec["files"].items()
        },
        "cache_dir": hub.get("cache_dir"),
        "local_files_only": hub.get("local_files_only", False),
        "demo": is_local(model) and model,
    }


def is_local(model):
    """A model whose Hub repos the pipeline writes itself (the demo, the tiny model)."""
    return "demo" in config["catalog"][model] or "tiny" in config["catalog"][model]


def model_spec(model):
    """The model's repo, revision and files, each a path checked by saematch.config.fill."""
    entry = config["catalog"][model]
    hub = entry.get("hub", {})
    key = f"catalog.{model}.model"
    files = [cfg.fill(f, {}, f"{key}.files") for f in entry["model"]["files"]]
    return {
        "format": "model",
        "repo_id": cfg.fill(entry["model"]["repo_id"], {}, f"{key}.repo_id"),
        "revision": cfg.fill(entry["model"]["revision"], {}, f"{key}.revision"),
        "files": {f: f for f in files},
        "cache_dir": hub.get("cache_dir"),
        "local_files_only": hub.get("local_files_only", False),
        "demo": is_local(model) and model,
    }


pointer_path = cfg.pointer_path


def n_features(model):
    """Features per SAE from the width label: 16k → 16384, 1m → 1048576, 8x → 8·d_model."""
    entry = config["catalog"][model]
    num, unit = int(entry["width"][:-1]), entry["width"][-1]
    return num * {"k": 1024, "m": 1024 * 1024, "x": entry["d_model"]}[unit]


def grouped(model):
    """Whether a model's pairs run one job per site and its flow one job for all layers: its SAEs
    have fewer features than config group_below. Such a job covers every layer of the model,
    whatever the selection, so that a narrower run finds its files made and remakes none.
    """
    return n_features(model) < config.get("group_below", 0)


def all_layers(model):
    return list(range(config["catalog"][model]["n_layers"]))


def grouped_flow_layers(model):
    """(layer, modules) of a small model's flow job: every layer, scored against the selected
    sites as when all layers are selected."""
    out = []
    for L in all_layers(model):
        modules = cfg.predecessor_modules(config["sites"], all_layers(model), L)
        if modules:
            out.append((L, "+".join(modules)))
    return out


def rule_of(kind, model):
    """The rule of one small model's grouped jobs, e.g. match_site_demo (names are identifiers)."""
    return f"{kind}_{re.sub('[^0-9A-Za-z_]', '_', model)}"


def any_of(names):
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def read_layers(model, site):
    """The layers whose SAE of this site a job reads: both layers of each pair, and Feature
    Flow's residual targets and their predecessor modules (a selected layer in neither is not
    downloaded); every layer of a small model, whose grouped jobs cover them all (group_below).
    """
    if grouped(model):
        return all_layers(model)
    used = {layer for L in cfg.pair_layers(config, model) for layer in (L, L + 1)}
    for L in cfg.flow_layers(config, model):
        modules = cfg.flow_modules(config, model, L)
        if site == "res":
            used.add(L)
        if site in modules:
            used.add(modules[site])
    return sorted(used)


def _downloads():
    """Pointer path → spec for every SAE and model file set this run's jobs read."""
    table = {}
    for model in config["models"]:
        specs = [
            sae_spec(model, site, L)
            for site in config["sites"]
            for L in read_layers(model, site)
        ]
        if (
            any(projects_att(model, s) for s in config["sites"])
            or model in EVALUATE
            or STEER.get(model)
        ):
            specs.append(model_spec(model))
        if model in LOCAL_GROUPED:  # every file of the model, whatever the selection
            specs = [
                *(
                    sae_spec(model, s, L)
                    for s in config["catalog"][model]["sites"]
                    for L in all_layers(model)
                ),
                model_spec(model),
            ]
        if model in EVALUATE and cfg.dataset_spec(EVALUATE[model]["data"]):
            specs.append(cfg.dataset_spec(EVALUATE[model]["data"]))
        for spec in specs:
            path = pointer_path(spec)
            same = {k: v for k, v in spec.items() if k != "demo"}
            seen = table.setdefault(path, spec)
            if {k: v for k, v in seen.items() if k != "demo"} != same:
                raise ValueError(
                    f"config: two different downloads map to {path}: {seen} and {spec}"
                )
    return table


# evaluate.* typed with --config wins over the catalog's per-model values (a --configfile is a
# config like config/config.yaml: its catalog keeps its own)
with cfg.stop_in_one_line():
    config.update(cfg.command_line_wins(config, dict(workflow.config_settings.config)))
    EVALUATE = {m: cfg.evaluate_options(config, m) for m in cfg.evaluate_models(config)}
    DATA = {m: cfg.data_label(config, m) for m in EVALUATE}
    STEER = {m: cfg.steer_themes(config, m) for m in cfg.steer_models(config)}
    for _m in STEER:
        for _name, _why in cfg.skipped_themes(config, _m).items():
            print(
                f"saematch: steering theme {_m}.{_name} left out: {_why}",
                file=sys.stderr,
            )


def no_local_rate_limit():
    """Jobs run on this host start without Snakemake's submission rate limiter (100 jobs/s by
    default, for cluster queues). Its 1 s re-check timer re-arms after every scheduling round,
    so each finished job adds a chain of rounds that re-evaluate every waiting job's resources
    (snakemake/snakemake#3744); no command-line value turns it off. Cluster runs keep it.
    """
    if workflow.local_exec and hasattr(workflow.scheduler, "job_rate_limiter"):
        workflow.scheduler.job_rate_limiter = None


# cuda asked of a host without it: an error before any job, auto on the CPU: one line. Only
# onstart knows whether jobs run here or on a cluster; a dry run (which cannot tell) warns.
def check_run_devices(dryrun=False):
    with cfg.stop_in_one_line():
        line = saematch.devices.check_devices(
            saematch.devices.device_settings(config, EVALUATE, STEER),
            workflow.local_exec,
            dryrun,
        )
    if line:
        print(line, flush=True)


if workflow.is_main_process and workflow.output_settings.dryrun:
    check_run_devices(dryrun=True)


def projects_att(model, site):
    return config["catalog"][model]["sites"][site].get("project_att", False)


# small models whose Hub repos the pipeline writes itself: one job writes all their pointers
LOCAL_GROUPED = [m for m in config["models"] if grouped(m) and is_local(m)]

with cfg.stop_in_one_line():
    DOWNLOADS = _downloads()


def _download(wc, kind=None):
    """The spec behind a pointer path; kind: sae (with {key}) or model, or dataset."""
    kind = kind or ("sae" if "key" in wc.keys() else "model")
    if kind == "model":
        path = f"resources/hub/model/{wc.repo}/{wc.revision}.json"
    else:
        path = f"resources/hub/{kind}/{wc.repo}/{wc.revision}/{wc.key}.json"
    spec = DOWNLOADS.get(path)
    if spec is None:
        raise ValueError(
            f"{path}: no SAE, model or dataset of this run's config downloads here"
        )
    return spec


def download_spec(wc):
    return {k: v for k, v in _download(wc).items() if k != "demo"}


def download_input(wc):
    """Demo and tiny models are first written into their local Hub cache."""
    spec = _download(wc)
    return local_hub(spec["demo"]) if spec.get("demo") else []


def local_hub(model):
    """The record the demo or tiny writer leaves once a local model's Hub cache is written."""
    kind = "tiny" if "tiny" in config["catalog"][model] else "demo"
    return f"resources/{kind}/{model}/hub.json"


def check_variant(wc):
    if VARIANT.get(wc.model) != wc.variant:
        raise ValueError(
            f"results/model={wc.model}/variant={wc.variant}: this run's config makes variant "
            f"{VARIANT.get(wc.model)!r} of {wc.model}; ask for its paths or set --config variant={wc.variant}"
        )


def options_of(model, site):
    """The options of this site's pairs (params: changing them reruns its pairs).

    The device is not among them: it is the `gpu` resource, so moving a run between CPU and
    GPU reruns nothing.
    """
    opts = cfg.site_options(config, model, site)
    del opts["device"]
    return opts


def flow_path(model, L):
    modules = "+".join(cfg.flow_modules(config, model, L))
    return FLOW.format(model=model, variant=VARIANT[model], modules=modules, layer=L)


def local_repos(model):
    """The Hub cache and repos that the demo and tiny writers write: paths in the working
    directory, checked by saematch.config.fill."""
    entry = config["catalog"][model]
    key, fields = f"catalog.{model}", {"width": entry["width"]}
    return {
        "cache_dir": cfg.fill(
            entry.get("hub", {}).get("cache_dir") or "", {}, f"{key}.hub.cache_dir"
        ),
        "model_repo": cfg.fill(entry["model"]["repo_id"], {}, f"{key}.model.repo_id"),
        "site_repos": {
            s: cfg.fill(c["repo_id"], fields, f"{key}.sites.{s}.repo_id")
            for s, c in entry["sites"].items()
        },
    }


def local_params_path(model, site, layer, l0=None, l0_source=None):
    """One params.npz path that the demo or tiny writer writes (default: at the catalog's L0),
    checked by saematch.config.fill."""
    entry = config["catalog"][model]
    if l0 is None:
        l0, l0_source = catalog_l0(model, site, layer), l0_key(model, site, layer)
    return cfg.fill(
        entry["sites"][site]["files"]["params"],
        {"layer": layer, "l0": l0, "width": entry["width"]},
        f"catalog.{model}.sites.{site}.files.params",
        {"l0": l0_source, "width": f"catalog.{model}.width"},
    )


def demo_params(wc):
    """What the demo writer needs: sizes, repos and every params.npz path per site and layer."""
    entry = config["catalog"][wc.model]
    demo, extra = entry["demo"], f"catalog.{wc.model}.demo.extra_l0"
    paths = {
        site: [
            [
                local_params_path(wc.model, site, L),
                *(
                    local_params_path(wc.model, site, L, l0, f"{extra}[{i}]")
                    for i, l0 in enumerate(demo.get("extra_l0", []))
                ),
            ]
            for L in range(entry["n_layers"])
        ]
        for site in entry["sites"]
    }
    return {
        **local_repos(wc.model),
        "paths": paths,
        "n_layers": entry["n_layers"],
        "d_model": entry["d_model"],
        **{k: v for k, v in demo.items() if k != "extra_l0"},
    }


def matches_of(model, variant):
    return [
        MATCHES.format(model=model, variant=variant, site=site, layer=L)
        for site in config["sites"]
        for L in cfg.pair_layers(config, model)
    ]


def summary_matches(wc):
    check_variant(wc)
    if wc.selection != SELECTION[wc.model]:
        raise ValueError(
            f"{SUMMARY.format(**wc)}: this run selects {SELECTION[wc.model]}, not {wc.selection}"
        )
    return matches_of(wc.model, wc.variant)


def is_demo(model):
    return "demo" in config["catalog"][model]


def summary_prefix(model):
    return SUMMARY.format(
        model=model, variant=VARIANT[model], selection=SELECTION[model]
    )


def all_targets():
    """Every file the default run makes, each its own target: Snakemake rebuilds a missing
    intermediate file only when something downstream of it is out of date, so a result lost
    after its summary was written (an interrupted forced rerun deletes a job's old outputs
    before the job runs) would otherwise stay missing."""
    files = {
        *DOWNLOADS,
        *explanation_targets(),
        *evaluation_targets(),
        *steer_targets(),
    }
    for model in config["models"]:
        files.update(result_files(model))
        if is_local(model):
            files.update(local_resources(model))
    return sorted(files)


def local_resources(model):
    """The local Hub repo the demo or tiny writer makes (with its truth, origins or text)."""
    if is_demo(model):
        return [
            f"resources/demo/{model}/{f}"
            for f in ("hub.json", "truth.parquet", "origins.parquet")
        ]
    return [f"resources/tiny/{model}/{f}" for f in ("hub.json", "text.txt")]


def result_files(model):
    """One model's results: each pair's matches, each layer's flow file, the summaries,
    lifetimes, the demo's ablation and the evaluation's tables."""
    prefix = summary_prefix(model)
    lifetimes = LIFETIMES.format(
        model=model, variant=VARIANT[model], selection=SELECTION[model]
    )
    files = [
        *matches_of(model, VARIANT[model]),
        *(f"{prefix}.{ext}" for ext in ("parquet", "png", "tsv", "html")),
        *(
            f"{lifetimes}{ext}"
            for ext in (
                ".parquet",
                ".survival.tsv",
                ".survival.html",
                ".lengths.tsv",
                ".survival.png",
            )
        ),
    ]
    if cfg.flow_layers(config, model):
        files += [flow_path(model, L) for L in cfg.flow_layers(config, model)]
        files += [f"{prefix}.flow.{ext}" for ext in ("parquet", "tsv", "html")]
    if grouped(model):  # its grouped jobs make every layer's files, each a target too
        variant = VARIANT[model]
        if cfg.pair_layers(config, model):
            files += [
                MATCHES.format(model=model, variant=variant, site=s, layer=L)
                for s in config["sites"]
                for L in all_layers(model)[:-1]
            ]
        if cfg.flow_layers(config, model):
            files += [
                FLOW.format(model=model, variant=variant, modules=m, layer=L)
                for L, m in grouped_flow_layers(model)
            ]
    if is_demo(model):
        files.append(
            f"results/model={model}/variant={VARIANT[model]}/demo/ablation.{SELECTION[model]}.parquet"
        )
    if model in EVALUATE:
        folder = evaluation_prefix(model)
        files += [
            f"{folder}/{name}"
            for name in (
                "pairs.parquet",
                "features.parquet",
                "summary.tsv",
                "summary.html",
                "calibration.tsv",
                "evaluation.png",
                "verdict.parquet",
                "verdict.tsv",
                "verdict.html",
            )
        ]
    return files


def explanation_targets():
    """flow.explanations: one marker per Neuronpedia set of the selected SAEs it hosts."""
    if not config["flow"].get("explanations", False):
        return []
    from saematch.neuronpedia import set_for

    wanted = set()
    for model in config["models"]:
        entry = config["catalog"][model]
        for site in config["sites"]:
            for L in cfg.selected_layers(config, model):
                where = set_for(entry, site, L, sae_l0(model, site, L), model=model)
                if "set" in where:
                    wanted.add(
                        f"resources/neuronpedia/v1/{where['model']}/{where['set']}/explanations.json"
                    )
    return sorted(wanted)


def check_nothing_is_overwritten():
    """Stop before any job when a planned matches file exists but was made from other SAEs or
    options: a variant's results are never silently replaced (saematch.config). One that
    cannot be read (cut short, not ours) is named as such, with the command that removes it.
    """
    from saematch.write import read_provenance

    clashes, unreadable = [], {}
    for model in config["models"]:
        for site in config["sites"]:
            opts = options_of(model, site)
            for L in cfg.pair_layers(config, model):
                path = MATCHES.format(
                    model=model, variant=VARIANT[model], site=site, layer=L
                )
                if not os.path.exists(path):
                    continue
                expected = {
                    "src": sae_spec(model, site, L),
                    "dst": sae_spec(model, site, L + 1),
                    "options": opts,
                }
                try:
                    change = cfg.describe_change(read_provenance(path), expected)
                except Exception as exc:  # damaged, or not a saematch matches file
                    unreadable[path] = unreadable_reason(exc)
                    continue
                if change:
                    clashes.append(f"  {path}: {change}")
    if unreadable:
        raise cfg.ConfigError(
            "\n".join(f"{p}: cannot be read ({why})" for p, why in unreadable.items())
            + "\nNothing was run. Remove "
            + ("it" if len(unreadable) == 1 else "them")
            + " and run again to rebuild: rm "
            + " ".join(shlex.quote(p) for p in unreadable)
        )
    if clashes:
        raise cfg.ConfigError(
            f"{len(clashes)} existing result(s) of variant {', '.join(sorted(set(VARIANT.values())))} "
            "were made from other SAEs or options than this run's config:\n"
            + "\n".join(clashes[:5])
            + ("\n  …" if len(clashes) > 5 else "")
            + "\nNothing was run. Give this configuration its own variant "
            "(--config variant=NAME, config/README.md 'Variants'), or move the old results away."
        )


def unreadable_reason(exc):
    """A short why for a results file that cannot be read back."""
    if isinstance(exc, (KeyError, TypeError)):
        return "no saematch provenance in it: not a matches file of this pipeline"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def unwritable_folder(path):
    """The nearest existing folder of a file to be written, where this process cannot write
    (None where it can)."""
    folder = os.path.dirname(path) or "."
    while not os.path.exists(folder):
        folder = os.path.dirname(folder) or "."
    return None if os.access(folder, os.W_OK) else folder


def check_outputs_writable(jobs):
    """Stop before any job when a planned job would write into a folder this process cannot
    write (results made read-only, during an earlier run or by hand): one line naming it;
    nothing is run and nothing deleted. (An existing result that is itself read-only is
    refused by Snakemake, before any job too.)"""
    for job in jobs:
        files = [*job.output, *job.log, *([job.benchmark] if job.benchmark else [])]
        for path in map(str, files):
            folder = unwritable_folder(path)
            if folder:
                sys.exit(
                    f"saematch: error: {folder}: not writable, and this run's {job.rule.name} job "
                    f"writes {path} there. Nothing was run or deleted: make it writable "
                    f"(chmod -R u+w {shlex.quote(folder)}) and run again"
                )


if workflow.is_main_process:
    with cfg.stop_in_one_line():
        check_nothing_is_overwritten()
    # Before any job (dry runs too): what is fetched from the Hub, gated repos, the token.
    import saematch.hub

    notice = saematch.hub.download_notice(
        [
            s
            for p, s in DOWNLOADS.items()
            if not s.get("demo") and not os.path.exists(p)
        ],
        {
            e["model"]["repo_id"]
            for e in config["catalog"].values()
            if e.get("model", {}).get("gated")
        },
        saematch.hub.token_is_set(),
        saematch.hub.offline(),
    )
    if notice:
        print("\n".join(notice), flush=True)


# --- evaluation on the model's activations (saematch.evaluate) ---------------------------------


def tiny_params(wc):
    """What the tiny-model writer needs: sizes, repos and each SAE's params.npz path."""
    entry = config["catalog"][wc.model]
    paths = {
        site: [local_params_path(wc.model, site, L) for L in range(entry["n_layers"])]
        for site in entry["sites"]
    }
    return {
        **local_repos(wc.model),
        "paths": paths,
        "n_layers": entry["n_layers"],
        "d_model": entry["d_model"],
        "n_features": n_features(wc.model),
        **entry["tiny"],
    }


def evaluation_prefix(model):
    return EVALUATION.format(
        model=model,
        variant=VARIANT[model],
        data=DATA[model],
        selection=SELECTION[model],
    )


def _evaluated(wc):
    """The layers of this evaluation's SAEs and pairs; a path this config does not make is an error."""
    check_variant(wc)
    if wc.model not in EVALUATE:
        raise ValueError(
            f"{EVALUATION.format(**wc)}: {wc.model} is not in this run's evaluate.models"
        )
    if (wc.data, wc.selection) != (DATA[wc.model], SELECTION[wc.model]):
        raise ValueError(
            f"{EVALUATION.format(**wc)}: this run reads {DATA[wc.model]} for {SELECTION[wc.model]}"
        )
    pairs = cfg.pair_layers(config, wc.model)
    return sorted(set(pairs) | {L + 1 for L in pairs}), pairs


def evaluation_targets():
    return [f"{evaluation_prefix(m)}/summary.tsv" for m in EVALUATE]


# --- nothing is read or written outside the working directory -----------------------------------


def check_paths():
    """Every path the selected models' catalog entries make, filled and checked before any job
    or log (saematch.config.fill): the selected SAEs, the model, the Neuronpedia sets, and all
    that the demo and tiny writers write (every site and layer)."""
    from types import SimpleNamespace

    from saematch.neuronpedia import set_for

    for model in config["models"]:
        entry = config["catalog"][model]
        for site in config["sites"]:
            for L in cfg.selected_layers(config, model):
                sae_spec(model, site, L)
                set_for(entry, site, L, model=model)
        if "model" in entry:
            model_spec(model)
        if is_local(model):
            writer = tiny_params if "tiny" in entry else demo_params
            writer(SimpleNamespace(model=model))


with cfg.stop_in_one_line():
    check_paths()
