# Config validation, wildcard constraints, per-layer param functions and targets.
# Each rule gets only its own slice of the config, so editing one layer's or one site's
# settings reruns only the jobs that use them (snakemake_notes.md §4).
import re

from snakemake.utils import min_version, validate

import saematch
from saematch.solve import choose_solver

min_version("9.0")

validate(config, "../schemas/config.schema.yaml")
if config["layers"] != "all":  # --config layers=[10,11] arrives as strings
    config["layers"] = [int(L) for L in config["layers"]]

SITES = ("res", "mlp", "att")


def _check_selection():
    """Unknown model, site or layer: a clear error before any job runs."""
    catalog = config["catalog"]
    for model in config["models"]:
        if model not in catalog:
            raise ValueError(
                f"config: unknown model {model!r}; known models: {', '.join(sorted(catalog))}"
            )
        for site in config["sites"]:
            if site not in catalog[model]["sites"]:
                raise ValueError(
                    f"config: model {model!r} has no site {site!r}; it has {', '.join(catalog[model]['sites'])}"
                )
        n = catalog[model]["n_layers"]
        if config["layers"] != "all":
            bad = [L for L in config["layers"] if L >= n]
            if bad:
                raise ValueError(
                    f"config: model {model!r} has layers 0–{n - 1}; unknown layer(s) {bad}"
                )


_check_selection()


wildcard_constraints:
    model="|".join(re.escape(m) for m in config["catalog"]),
    site="|".join(SITES),
    layer=r"\d+",


def selected_layers(model):
    n = config["catalog"][model]["n_layers"]
    return range(n) if config["layers"] == "all" else sorted(set(config["layers"]))


def pair_layers(model):
    """Source layers L of the pairs (L, L+1) to match: both layers selected."""
    layers = set(selected_layers(model))
    return [L for L in sorted(layers) if L + 1 in layers]


def catalog_l0(model, site, layer):
    """The catalog's L0 folder for a layer (no per_layer override; the demo writes these)."""
    entry = config["catalog"][model]
    table = entry["sites"][site]["l0"]
    if isinstance(table, dict):  # width → per-layer list
        if entry["width"] not in table:
            raise ValueError(
                f"config: {model} {site} has no l0 list for width {entry['width']}"
            )
        table = table[entry["width"]]
    return table[int(layer)]


def sae_spec(model, site, layer):
    """Repo, pinned revision and files of one SAE, with templates and per-layer overrides resolved."""
    entry = config["catalog"][model]
    site_cfg = entry["sites"][site]
    layer = int(layer)
    over = {int(k): v for k, v in site_cfg.get("per_layer", {}).items()}.get(layer, {})
    spec = {k: site_cfg[k] for k in ("repo_id", "revision", "files") if k in site_cfg}
    spec.update(over)
    default_l0 = catalog_l0(model, site, layer) if "l0" in site_cfg else None
    l0 = over.get("l0", default_l0)
    if isinstance(spec["revision"], dict):
        spec["revision"] = spec["revision"][entry["width"]]
    fields = {"layer": layer, "l0": l0, "width": entry["width"]}
    hub = entry.get("hub", {})
    return {
        "format": entry["format"],
        "repo_id": spec["repo_id"].format(**fields),
        "revision": spec["revision"],
        "files": {role: path.format(**fields) for role, path in spec["files"].items()},
        "cache_dir": hub.get("cache_dir"),
        "local_files_only": hub.get("local_files_only", False),
    }


def download_sae_params(wc):
    return sae_spec(wc.model, wc.site, wc.layer)


def download_model_params(wc):
    entry = config["catalog"][wc.model]
    hub = entry.get("hub", {})
    return {
        "format": "model",
        "repo_id": entry["model"]["repo_id"],
        "revision": entry["model"]["revision"],
        "files": {f: f for f in entry["model"]["files"]},
        "cache_dir": hub.get("cache_dir"),
        "local_files_only": hub.get("local_files_only", False),
    }


def demo_input(wc):
    """Demo models are first written into their local Hub cache."""
    if "demo" in config["catalog"][wc.model]:
        return f"resources/demo/{wc.model}/hub.json"
    return []


def projects_att(model, site):
    return config["catalog"][model]["sites"][site].get("project_att", False)


def site_match_config(wc):
    """config["match"] with this site's per_site overrides applied."""
    opts = {k: v for k, v in config["match"].items() if k != "per_site"}
    opts.update(config["match"].get("per_site", {}).get(wc.site, {}))
    return opts


def match_options(wc):
    """The options that shape this site's results (params: changing them reruns its pairs).

    Projected attention SAEs match on decoder terms only. The device is not among them: it
    is the `gpu` resource, so moving a run between CPU and GPU reruns nothing.
    """
    opts = site_match_config(wc)
    del opts["device"]
    if projects_att(wc.model, wc.site):
        opts["weights"] = "dec"
    return opts


def n_features(model):
    """Features per SAE from the width label: 16k → 16384, 1m → 1048576, 8x → 8·d_model."""
    entry = config["catalog"][model]
    num, unit = int(entry["width"][:-1]), entry["width"][-1]
    return num * {"k": 1024, "m": 1024 * 1024, "x": entry["d_model"]}[unit]


def match_gpu(wc):
    return 0 if site_match_config(wc)["device"] == "cpu" else 1


def match_mem_mb(wc, attempt):
    """Host memory of one pair, doubled on each retry (README, "Speed and memory")."""
    F, d = n_features(wc.model), config["catalog"][wc.model]["d_model"]
    opts = site_match_config(wc)
    dense = choose_solver(F, F, opts["solver"], opts["dense_max_gb"]) == "dense"
    matrix = (
        4 * F * F if dense else 40 * F * opts["k"] + 8 * F * d
    )  # dense costs, or candidate edges + the sparse solver's float32 copy of Y
    need = matrix + 48 * F * d + 8 * opts["chunk_size"] * F + 2**30
    return int(1.25 * need / 1e6 * 2 ** (attempt - 1))


def match_runtime(wc, attempt):
    """Minutes: the CPU lapjv solve grows ≈ F^2.2 (about 6 s at 16k), plus loading."""
    return int((10 + 5 * (n_features(wc.model) / 16384) ** 2.2) * 2 ** (attempt - 1))


def match_input(wc):
    sae = "resources/hub/model={model}/site={site}/layer={layer}.json"
    inputs = {
        "src": sae.format(model=wc.model, site=wc.site, layer=wc.layer),
        "dst": sae.format(model=wc.model, site=wc.site, layer=int(wc.layer) + 1),
    }
    if projects_att(wc.model, wc.site):
        inputs["model"] = f"resources/hub/model={wc.model}/model.json"
    return inputs


def demo_params(wc):
    """What the demo writer needs: sizes, repos and every params.npz path per site and layer."""
    entry = config["catalog"][wc.model]
    demo = entry["demo"]
    paths = {}
    for site, site_cfg in entry["sites"].items():
        template = site_cfg["files"]["params"]
        paths[site] = [
            [
                template.format(layer=L, l0=l0, width=entry["width"])
                for l0 in [catalog_l0(wc.model, site, L), *demo.get("extra_l0", [])]
            ]
            for L in range(entry["n_layers"])
        ]
    return {
        "cache_dir": entry["hub"]["cache_dir"],
        "model_repo": entry["model"]["repo_id"],
        "site_repos": {s: c["repo_id"] for s, c in entry["sites"].items()},
        "paths": paths,
        "n_layers": entry["n_layers"],
        "d_model": entry["d_model"],
        **{k: v for k, v in demo.items() if k != "extra_l0"},
    }


def model_matches(wc):
    return [
        f"results/matches/model={wc.model}/site={site}/layer={L}/part-0.parquet"
        for site in config["sites"]
        for L in pair_layers(wc.model)
    ]


def summary_truth(wc):
    return demo_input(wc) and f"resources/demo/{wc.model}/truth.parquet"


def all_targets():
    return [
        f"results/summary/{model}.{ext}"
        for model in config["models"]
        for ext in ("parquet", "png")
    ]
