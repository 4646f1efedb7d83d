# Downloads run on the submitting node (localrules) into the normal Hugging Face cache.
# Their outputs are small JSON pointers (repo, commit, size, sha256), named by repo, revision
# and file, so every variant that uses an SAE shares its pointer and downstream jobs rerun
# only when a file's content or pinned revision changes, never on a mere re-run. No Snakemake
# retries: saematch.hub retries transient network errors itself and never a bad file.


rule download_sae:
    input:
        download_input,
    output:
        "resources/hub/sae/{repo}/{revision}/{key}.json",
    log:
        "logs/download_sae/{repo}/{revision}/{key}.log",
    benchmark:
        "benchmarks/download_sae/{repo}/{revision}/{key}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        hf_download=1,
    params:
        spec=download_spec,
    script:
        "../../scripts/download.py"


rule download_model:
    input:
        download_input,
    output:
        "resources/hub/model/{repo}/{revision}.json",
    log:
        "logs/download_model/{repo}/{revision}.log",
    benchmark:
        "benchmarks/download_model/{repo}/{revision}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        hf_download=1,
    params:
        spec=download_spec,
    script:
        "../../scripts/download.py"


# A small local model's pointers (the demo's, the tiny model's: files the pipeline wrote into
# its own Hub cache) in one job, every file of the model whatever the selection; it outranks
# the per-file rules for them.
for _model in LOCAL_GROUPED:
    _pointers = sorted(p for p, spec in DOWNLOADS.items() if spec.get("demo") == _model)

    rule:
        name:
            rule_of("download_local", _model)
        input:
            local_hub(_model),
        output:
            _pointers,
        log:
            f"logs/download_local/{_model}.log",
        benchmark:
            f"benchmarks/download_local/{_model}.tsv"
        conda:
            "../../envs/pipeline.yaml"
        params:
            specs=[
                {k: v for k, v in DOWNLOADS[p].items() if k != "demo"}
                for p in _pointers
            ],
        script:
            "../../scripts/download.py"

    for _rule in ("download_sae", "download_model"):
        workflow.ruleorder(rule_of("download_local", _model), _rule)
