# One job per pair (L, L+1), site and variant. Retried once after a resource failure (an
# out-of-memory kill) with twice the memory; a second attempt after an input error stops at
# once (saematch.logs.job), without reading the inputs again or asking for more memory.


def match_options(wc):
    check_variant(wc)
    return options_of(wc.model, wc.site)


def match_device(wc):
    return cfg.site_options(config, wc.model, wc.site)["device"]


def match_gpu(wc):
    """1: the job needs a GPU of its own, on a cluster (unless `cpu`). Locally 0: match jobs share
    the host's GPUs, each holding memory on one only around its GPU stages
    (saematch.devices.gpu_sections), so the `gpu` cap does not serialise them."""
    return int(match_device(wc) != "cpu" and not workflow.local_exec)


def match_threads(wc):
    """One core for small pairs (the demo's run side by side), four for real widths."""
    return 1 if n_features(wc.model) < 8192 else 4


def match_mem_mb(wc, attempt):
    """Host memory of one pair (saematch.memory.match_memory_bytes, the formula
    bench/bench_memory.py checks against measured peaks), doubled on each retry after a resource
    failure (not after an input error, which is not worth more memory: saematch.logs.failed_on_input).
    """
    from saematch.memory import match_memory_bytes

    F, d = n_features(wc.model), config["catalog"][wc.model]["d_model"]
    opts = cfg.site_options(config, wc.model, wc.site)
    need = match_memory_bytes(
        F,
        d,
        config["catalog"][wc.model].get("format", "gemma-scope"),
        opts["solver"],
        opts["dense_max_gb"],
        opts["k"],
        opts["chunk_size"],
        opts["partial"],
        projects_att(wc.model, wc.site),
    )
    if saematch.logs.failed_on_input(MATCH_LOG.format(**wc)):
        attempt = 1
    return int(need / 1e6 * 2 ** (attempt - 1))


def match_runtime(wc, attempt):
    """Minutes: the CPU lapjv solve grows ≈ F^2.2 (about 6 s at 16k), plus loading."""
    if saematch.logs.failed_on_input(MATCH_LOG.format(**wc)):
        attempt = 1
    return int((10 + 5 * (n_features(wc.model) / 16384) ** 2.2) * 2 ** (attempt - 1))


def match_input(wc):
    inputs = {
        "src": pointer_path(sae_spec(wc.model, wc.site, int(wc.layer))),
        "dst": pointer_path(sae_spec(wc.model, wc.site, int(wc.layer) + 1)),
    }
    if projects_att(wc.model, wc.site):
        inputs["model"] = pointer_path(model_spec(wc.model))
    return inputs


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
