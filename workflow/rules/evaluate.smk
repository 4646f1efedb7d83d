# The matches checked on the model's own activations (saematch.evaluate). One job per model and
# variant streams the text sample through the model once, reading every selected site and
# encoding with every selected layer's SAE; the verdict is re-fitted to the evaluation's labels
# (verdict_data); a summary makes the table, the verdict's calibration on data and a figure
# (their cuts are their own params: changing them does not rerun the model).


rule make_tiny:
    output:
        hub="resources/tiny/{model}/hub.json",
        text="resources/tiny/{model}/text.txt",
    log:
        "logs/make_tiny/{model}.log",
    benchmark:
        "benchmarks/make_tiny/{model}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        tiny=tiny_params,
        version=cfg.TINY_VERSION,
    script:
        "../../scripts/make_tiny.py"


def dataset_download_spec(wc):
    return _download(wc, "dataset")


rule download_dataset:
    output:
        "resources/hub/dataset/{repo}/{revision}/{key}.json",
    log:
        "logs/download_dataset/{repo}/{revision}/{key}.log",
    benchmark:
        "benchmarks/download_dataset/{repo}/{revision}/{key}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        hf_download=1,
    params:
        spec=dataset_download_spec,
    script:
        "../../scripts/download.py"


def evaluate_input(wc):
    """Per selected site its matches (one file per pair) and SAE pointers (one per layer), the
    model's files and the text sample."""
    layers, pairs = _evaluated(wc)
    data = EVALUATE[wc.model]["data"]
    dataset = cfg.dataset_spec(data)
    inputs = {
        "model": pointer_path(model_spec(wc.model)),
        "data": pointer_path(dataset) if dataset else data["path"],
    }
    for site in config["sites"]:
        inputs[f"matches_{site}"] = [
            MATCHES.format(model=wc.model, variant=wc.variant, site=site, layer=L)
            for L in pairs
        ]
        inputs[f"saes_{site}"] = [
            pointer_path(sae_spec(wc.model, site, L)) for L in layers
        ]
    return inputs


def evaluate_params(wc):
    """What changes an evaluation's numbers (batch size and device do not: read at run time)."""
    layers, pairs = _evaluated(wc)
    opts = EVALUATE[wc.model]
    keep = ("data", "n_tokens", "loss_tokens", "context", "top_k", "dtype")
    return {
        "sites": list(config["sites"]),
        "layers": layers,
        "pairs": pairs,
        "format": config["catalog"][wc.model]["format"],
        **{k: opts[k] for k in keep},
    }


def evaluate_gpu(wc):
    """1: the job runs the model on a GPU (auto: locally where there is one; on a cluster,
    for a model large enough to need one: saematch.config.evaluate_resources)."""
    device = EVALUATE[wc.model]["device"]
    if device == "cpu":
        return 0
    if device == "auto":
        if workflow.local_exec:
            return int(saematch.devices.host_has_gpu())
        return int(cfg.evaluate_resources(config, wc.model)["gpu_on_cluster"])
    return 1


def evaluate_threads(wc):
    return cfg.evaluate_resources(config, wc.model)["threads"]


def evaluate_runtime(wc):
    """Minutes, estimated from the model's size and the tokens it passes."""
    return cfg.evaluate_resources(config, wc.model)["runtime"]


def evaluate_mem_mb(wc):
    """Host memory: the model's weights loaded in float32 twice over (≈ 12·L·d² + 300k·d
    parameters), plus 2 GB."""
    entry = config["catalog"][wc.model]
    params = 12 * entry["n_layers"] * entry["d_model"] ** 2 + 300_000 * entry["d_model"]
    return int(8 * params / 1e6) + 2000


rule evaluate:
    input:
        unpack(evaluate_input),
    output:
        pairs=f"{EVALUATION}/pairs.parquet",
        features=f"{EVALUATION}/features.parquet",
    log:
        "logs/evaluate/model={model}/variant={variant}/{data}/{selection}.log",
    benchmark:
        "benchmarks/evaluate/model={model}/variant={variant}/{data}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: evaluate_threads
    resources:
        gpu=evaluate_gpu,
        mem_mb=evaluate_mem_mb,
        runtime=evaluate_runtime,
    params:
        options=evaluate_params,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/evaluate.py"


def verdict_matches(wc):
    """Every pair of the run's selection (the evaluation reads them all): the refit's inputs."""
    _evaluated(wc)
    return matches_of(wc.model, wc.variant)


def verdict_cuts(wc):
    """Per site the verdict's cut (match.cut): persists on data = confidence ≥ it."""
    return {site: options_of(wc.model, site)["cut"] for site in config["sites"]}


rule verdict_data:
    input:
        matches=verdict_matches,
        pairs=f"{EVALUATION}/pairs.parquet",
        features=f"{EVALUATION}/features.parquet",
    output:
        table=f"{EVALUATION}/verdict.parquet",
        summary=f"{EVALUATION}/verdict.tsv",
        html=report(
            f"{EVALUATION}/verdict.html",
            caption="../report/evaluation.rst",
            category="Evaluation on activations",
            subcategory="The verdict re-fitted on data",
            labels={"model": "{model}", "variant": "{variant}", "data": "{data}"},
        ),
    log:
        "logs/verdict_data/model={model}/variant={variant}/{data}/{selection}.log",
    benchmark:
        "benchmarks/verdict_data/model={model}/variant={variant}/{data}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        min_active=lambda wc: EVALUATE[wc.model]["min_active"],
        cut=verdict_cuts,
    script:
        "../../scripts/verdict_data.py"


rule evaluation_summary:
    input:
        pairs=f"{EVALUATION}/pairs.parquet",
        features=f"{EVALUATION}/features.parquet",
        verdict=f"{EVALUATION}/verdict.parquet",
        verdict_sites=f"{EVALUATION}/verdict.tsv",
    output:
        table=f"{EVALUATION}/summary.tsv",
        html=report(
            f"{EVALUATION}/summary.html",
            caption="../report/evaluation.rst",
            category="Evaluation on activations",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "data": "{data}",
                "view": "table",
            },
        ),
        calibration=f"{EVALUATION}/calibration.tsv",
        figure=report(
            f"{EVALUATION}/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation on activations",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "data": "{data}",
                "view": "figure",
            },
        ),
    log:
        "logs/evaluation_summary/model={model}/variant={variant}/{data}/{selection}.log",
    benchmark:
        "benchmarks/evaluation_summary/model={model}/variant={variant}/{data}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        min_active=lambda wc: EVALUATE[wc.model]["min_active"],
        corr_level=lambda wc: EVALUATE[wc.model]["corr_level"],
    script:
        "../../scripts/evaluation_summary.py"
