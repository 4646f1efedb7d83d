rule match_pair:
    input:
        unpack(match_input),
    output:
        "results/matches/model={model}/site={site}/layer={layer}/part-0.parquet",
    log:
        "logs/match_pair/model={model}/site={site}/layer={layer}.log",
    params:
        options=match_options,
        algo_version=saematch.ALGO_VERSION,
    threads: 2
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/match_pair.py"
