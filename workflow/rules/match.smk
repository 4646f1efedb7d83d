rule match_pair:
    input:
        unpack(match_input),
    output:
        "results/matches/model={model}/site={site}/layer={layer}/part-0.parquet",
    log:
        "logs/match_pair/model={model}/site={site}/layer={layer}.log",
    benchmark:
        "benchmarks/match_pair/model={model}/site={site}/layer={layer}.tsv"
    retries: 1
    conda:
        "../../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=match_gpu,
        mem_mb=match_mem_mb,
        runtime=match_runtime,
    params:
        options=match_options,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/match_pair.py"
