# Steering along flow graphs (Feature Flow §3.5, §5.3; saematch.steer, docs/steering.md): one
# job per model and theme runs the theme's grid (layers × scopes × schedules × values) on the
# run's feature graph, with the model and the SAEs the matches were made from.


def steering_folder(model, theme):
    return STEERING.format(
        model=model, variant=VARIANT[model], selection=SELECTION[model], theme=theme
    )


def steer_targets():
    return [
        f"{steering_folder(m, t)}/{f}"
        for m in STEER
        for t in STEER[m]
        for f in STEER_FILES
    ]


STEER_FILES = (
    "features.parquet",
    "generations.parquet",
    "summary.parquet",
    "summary.tsv",
    "figure.png",
    "graph.html",
)


def _theme(wc):
    check_variant(wc)
    if wc.selection != SELECTION[wc.model]:
        raise ValueError(
            f"{STEERING.format(**wc)}: this run selects {SELECTION[wc.model]}, not {wc.selection}"
        )
    if wc.model not in STEER or wc.theme not in STEER[wc.model]:
        raise ValueError(
            f"{STEERING.format(**wc)}: no theme {wc.theme!r} of {wc.model} in steer.models / the catalog's themes"
        )
    return STEER[wc.model][wc.theme]


def steer_input(wc):
    """The run's feature graph (every pair's matches, every flow file), the SAE pointers, the
    model, the evaluation's text (ΔL) where the model is evaluated, and the local Neuronpedia
    explanations where the theme's seeds are a query."""
    theme = _theme(wc)
    inputs = {
        "matches": matches_of(wc.model, wc.variant),
        "flow": [flow_path(wc.model, L) for L in cfg.flow_layers(config, wc.model)],
        "saes": [
            pointer_path(sae_spec(wc.model, site, L))
            for site in config["sites"]
            for L in read_layers(wc.model, site)
        ],
        "model": pointer_path(model_spec(wc.model)),
    }
    if wc.model in EVALUATE and config["steer"]["loss_tokens"]:
        data = EVALUATE[wc.model]["data"]
        dataset = cfg.dataset_spec(data)
        inputs["data"] = pointer_path(dataset) if dataset else data["path"]
    if "query" in theme:
        inputs["explanations"] = explanation_targets()
    return inputs


def steer_params(wc):
    """What changes a theme's results, and only that (the device does not; ΔL's text only for
    an evaluated model with loss_tokens; fold only for activation)."""
    opts, theme = config["steer"], _theme(wc)
    loss = wc.model in EVALUATE and opts["loss_tokens"] > 0
    return {
        "theme": theme,
        "format": config["catalog"][wc.model]["format"],
        "mode": opts["mode"],
        "cut": opts["cut"],
        "dtype": opts["dtype"],
        "judge": opts["judge"],
        "fold": opts["fold"] if theme["how"] == "activate" else True,
        "loss_tokens": opts["loss_tokens"] if loss else 0,
        "data": EVALUATE[wc.model]["data"] if loss else None,
        "context": EVALUATE[wc.model]["context"] if loss else None,
    }


def steer_gpu(wc):
    """1: the job runs the model on a GPU (auto: locally where there is one; on a cluster, for a
    model large enough to need one: saematch.config.steer_resources)."""
    device = config["steer"]["device"]
    if device == "auto" and workflow.local_exec:
        return int(saematch.devices.host_has_gpu())
    return cfg.steer_resources(config, wc.model, _theme(wc))["gpu"]


def steer_runtime(wc):
    return cfg.steer_resources(config, wc.model, _theme(wc))["runtime"]


rule steer:
    input:
        unpack(steer_input),
    output:
        features=f"{STEERING}/features.parquet",
        generations=f"{STEERING}/generations.parquet",
        summary=f"{STEERING}/summary.parquet",
        table=f"{STEERING}/summary.tsv",
        graph=f"{STEERING}/graph.html",
        figure=report(
            f"{STEERING}/figure.png",
            caption="../report/steer.rst",
            category="Steering",
            labels={"model": "{model}", "variant": "{variant}", "theme": "{theme}"},
        ),
    log:
        "logs/steer/model={model}/variant={variant}/{selection}/{theme}.log",
    benchmark:
        "benchmarks/steer/model={model}/variant={variant}/{selection}/{theme}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    resources:
        gpu=steer_gpu,
        mem_mb=evaluate_mem_mb,
        runtime=steer_runtime,
    params:
        options=steer_params,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/steer.py"
