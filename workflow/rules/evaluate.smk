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
    script:
        "../../scripts/make_tiny.py"


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


rule verdict_data:
    input:
        matches=verdict_matches,
        pairs=f"{EVALUATION}/pairs.parquet",
        features=f"{EVALUATION}/features.parquet",
    output:
        table=f"{EVALUATION}/verdict.parquet",
        summary=report(
            f"{EVALUATION}/verdict.tsv",
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
        table=report(
            f"{EVALUATION}/summary.tsv",
            caption="../report/evaluation.rst",
            category="Evaluation on activations",
            labels={"model": "{model}", "variant": "{variant}", "data": "{data}"},
        ),
        calibration=f"{EVALUATION}/calibration.tsv",
        figure=report(
            f"{EVALUATION}/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation on activations",
            labels={"model": "{model}", "variant": "{variant}", "data": "{data}"},
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
