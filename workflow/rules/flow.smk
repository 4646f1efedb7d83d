# Feature Flow: one job per residual layer L, scoring its features against res L−1, mlp L and
# att L (whichever are selected). Its params are its own slice of the config, so a rerun
# recomputes only the layers whose SAEs or flow options changed. A small model's layers
# (group_below) are one job: every layer, whatever the selection, in one process, the same
# files (a changed flow option reruns that job: seconds).


def flow_input(wc):
    """The residual SAE of layer L (``target``) and each predecessor module's SAE."""
    L = int(wc.layer)
    inputs = {"target": pointer_path(sae_spec(wc.model, "res", L))}
    for module in wc.modules.split("+"):
        layer = L - 1 if module == "res" else L
        inputs[module] = pointer_path(sae_spec(wc.model, module, layer))
        if projects_att(wc.model, module):
            inputs["model"] = pointer_path(model_spec(wc.model))
    return inputs


def flow_options(wc):
    check_variant(wc)
    over = {int(k): v for k, v in config["flow"].get("per_layer", {}).items()}.get(
        int(wc.layer), {}
    )
    high = {
        **config["flow"]["high"],
        **over.get("high", {}),
    }  # what changes the flow files
    return {
        "top_k": config["flow"]["top_k"],
        "high": high,
    }  # the device is a resource, not a param


def flow_neuronpedia(wc):
    """Each SAE's Neuronpedia set (or why it has none): target (res L), res (L − 1), mlp, att."""
    from saematch.neuronpedia import set_for

    L, entry = int(wc.layer), config["catalog"][wc.model]
    where = {"target": ("res", L)}
    where.update({m: (m, L - 1 if m == "res" else L) for m in wc.modules.split("+")})
    return {
        key: set_for(entry, site, layer, sae_l0(wc.model, site, layer), model=wc.model)
        for key, (site, layer) in where.items()
    }


def flow_gpu(wc):
    """1: a flow job uses a GPU. Locally where the host has one (auto) or one is named (cuda);
    on a cluster never: a layer is three F × F products, minutes on a node's CPUs at most, not
    worth a GPU queue (profiles/slurm sends only match_pair to the GPU partition)."""
    device = config["match"]["device"]
    if device == "cpu" or not workflow.local_exec:
        return 0
    return int(saematch.devices.host_has_gpu()) if device == "auto" else 1


def flow_mem_mb(wc):
    return flow_model_mem_mb(wc.model)


def flow_model_mem_mb(model):
    """A layer's four float32 F × d decoders, plus 1 GB."""
    return 1024 + 16 * n_features(model) * config["catalog"][model]["d_model"] // 2**20


rule flow:
    input:
        unpack(flow_input),
    output:
        FLOW,
    log:
        "logs/flow/model={model}/variant={variant}/{modules}/layer={layer}.log",
    benchmark:
        "benchmarks/flow/model={model}/variant={variant}/{modules}/layer={layer}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: match_threads
    resources:
        gpu=flow_gpu,
        mem_mb=flow_mem_mb,
    params:
        options=flow_options,
        neuronpedia=flow_neuronpedia,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/flow.py"


def flow_layer_job(model, L, modules):
    """One layer's part of a small model's flow job: what the layer's own job would get."""
    from types import SimpleNamespace

    wc = SimpleNamespace(
        model=model, variant=VARIANT[model], modules=modules, layer=str(L)
    )
    return {
        "layer": L,
        "modules": wc.modules,
        "inputs": flow_input(wc),
        "options": flow_options(wc),
        "neuronpedia": flow_neuronpedia(wc),
    }


# A small model's flow files for every layer, scored against the selected sites (the files of
# a run with all layers selected); a narrower selection's own files (another predecessor set,
# e.g. layer 1 without res 0) come from `flow`, which this rule outranks where both could.
for _model in [
    m for m in config["models"] if grouped(m) and cfg.flow_layers(config, m)
]:
    _layers = [flow_layer_job(_model, L, m) for L, m in grouped_flow_layers(_model)]

    rule:
        name:
            rule_of("flow_layers", _model)
        input:
            sorted({p for job in _layers for p in job["inputs"].values()}),
        output:
            [
                FLOW.format(
                    model=_model,
                    variant=VARIANT[_model],
                    modules=job["modules"],
                    layer=job["layer"],
                )
                for job in _layers
            ],
        log:
            f"logs/flow/model={_model}/variant={VARIANT[_model]}/all-layers.log",
        benchmark:
            f"benchmarks/flow/model={_model}/variant={VARIANT[_model]}/all-layers.tsv"
        conda:
            "../../envs/pipeline.yaml"
        threads: pair_threads(_model)
        resources:
            gpu=flow_gpu,
            mem_mb=flow_model_mem_mb(_model),
        params:
            model=_model,
            variant=VARIANT[_model],
            layers=_layers,
            algo_version=saematch.ALGO_VERSION,
        script:
            "../../scripts/flow.py"

    workflow.ruleorder(rule_of("flow_layers", _model), "flow")


def flow_files(wc):
    check_variant(wc)
    return [flow_path(wc.model, L) for L in cfg.flow_layers(config, wc.model)]


def flow_origins(wc):
    return f"resources/demo/{wc.model}/origins.parquet" if is_demo(wc.model) else []


# Cases per layer for a selection, and on the demo the planted origins recovered.
rule flow_summary:
    input:
        flow=flow_files,
        origins=flow_origins,
    output:
        table=f"{SUMMARY}.flow.parquet",
        text=f"{SUMMARY}.flow.tsv",
        html=report(
            f"{SUMMARY}.flow.html",
            caption="../report/flow.rst",
            category="Feature Flow",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "layers": "{selection}",
            },
        ),
    log:
        "logs/flow_summary/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/flow_summary/model={model}/variant={variant}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/flow_summary.py"


# Neuronpedia's explanations of one set, from its public export (flow.explanations: true).
rule neuronpedia_explanations:
    output:
        "resources/neuronpedia/v1/{np_model}/{np_set}/explanations.json",
    log:
        "logs/neuronpedia/{np_model}/{np_set}.log",
    retries: 2
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/neuronpedia_explanations.py"
