# One job per pair (L, L+1), site and variant. Retried once after a resource failure (an
# out-of-memory kill) with twice the memory; a second attempt after an input error stops at
# once (saematch.logs.job), without reading the inputs again or asking for more memory.


rule match_pair:
    input:
        unpack(match_input),
    output:
        MATCHES,
    log:
        MATCH_LOG,
    benchmark:
        "benchmarks/match_pair/model={model}/variant={variant}/site={site}/layer={layer}.tsv"
    retries: 1
    conda:
        "../../envs/pipeline.yaml"
    threads: match_threads
    resources:
        gpu=match_gpu,
        mem_mb=match_mem_mb,
        runtime=match_runtime,
        attempt=lambda wc, attempt: attempt,
    params:
        options=match_options,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/match_pair.py"
