# Feature Flow: one job per residual layer L, scoring its features against res L−1, mlp L and
# att L (whichever are selected). Its params are its own slice of the config, so a rerun
# recomputes only the layers whose SAEs or flow options changed.


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
    threads: lambda wc: 1 if n_features(wc.model) < 8192 else 4
    resources:
        gpu=flow_gpu,
        mem_mb=lambda wc: 1024
        + 4
        * 4
        * n_features(wc.model)
        * config["catalog"][wc.model]["d_model"]
        // 2**20,
    params:
        options=flow_options,
        neuronpedia=flow_neuronpedia,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/flow.py"


# Cases per layer for a selection, and on the demo the planted origins recovered.
rule flow_summary:
    input:
        flow=flow_files,
        origins=flow_origins,
    output:
        table=f"{SUMMARY}.flow.parquet",
        text=report(
            f"{SUMMARY}.flow.tsv",
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
