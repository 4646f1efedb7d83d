# Feature Flow: one job per residual layer L, scoring its features against res L−1, mlp L and
# att L (whichever are selected). Its params are its own slice of the config, so a rerun
# recomputes only the layers whose SAEs or flow options changed.


rule flow:
    input:
        unpack(flow_input),
    output:
        FLOW,
    log:
        "logs/flow/model={model}/variant={variant}/layer={layer}.log",
    benchmark:
        "benchmarks/flow/model={model}/variant={variant}/layer={layer}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: lambda wc: 1 if n_features(wc.model) < 8192 else 4
    resources:
        gpu=flow_gpu,
        mem_mb=lambda wc: 1024 + 4 * 4 * n_features(wc.model) * config["catalog"][wc.model]["d_model"] // 2**20,
    params:
        options=flow_options,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/flow.py"
