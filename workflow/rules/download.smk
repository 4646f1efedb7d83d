# Downloads run on the submitting node (localrules) into the normal Hugging Face cache.
# Their outputs are small JSON pointers (repo, commit, size, sha256), so downstream jobs
# rerun only when a file's content or pinned revision changes, never on a mere re-run.


rule download_sae:
    input:
        demo_input,
    output:
        "resources/hub/model={model}/site={site}/layer={layer}.json",
    log:
        "logs/download_sae/model={model}/site={site}/layer={layer}.log",
    benchmark:
        "benchmarks/download_sae/model={model}/site={site}/layer={layer}.tsv"
    retries: 2
    conda:
        "../../envs/pipeline.yaml"
    resources:
        hf_download=1,
    params:
        spec=download_sae_params,
    script:
        "../../scripts/download.py"


rule download_model:
    input:
        demo_input,
    output:
        "resources/hub/model={model}/model.json",
    log:
        "logs/download_model/model={model}.log",
    benchmark:
        "benchmarks/download_model/model={model}.tsv"
    retries: 2
    conda:
        "../../envs/pipeline.yaml"
    resources:
        hf_download=1,
    params:
        spec=download_model_params,
    script:
        "../../scripts/download.py"
