# One job per pair (L, L+1), site and variant; a small model's pairs (SAEs narrower than
# group_below) one job per site instead: every pair of the model, whatever the layers selected,
# in one process, the same files.
# Retried once after a resource failure (an out-of-memory kill) with twice the memory; a second
# attempt after an input error stops at once (saematch.logs.job), without reading the inputs
# again or asking for more memory.


def match_options(wc):
    check_variant(wc)
    return options_of(wc.model, wc.site)


def match_gpu(wc):
    """1: the job needs a GPU of its own, on a cluster (unless `cpu`). Locally 0: match jobs share
    the host's GPUs, each holding memory on one only around its GPU stages
    (saematch.devices.gpu_sections), so the `gpu` cap does not serialise them."""
    device = cfg.site_options(config, wc.model, wc.site)["device"]
    return int(device != "cpu" and not workflow.local_exec)


def match_threads(wc):
    return pair_threads(wc.model)


def pair_threads(model):
    """One core for small pairs (the demo's run side by side), four for real widths."""
    return 1 if n_features(model) < 8192 else 4


def match_mem_mb(wc, attempt):
    return pair_mem_mb(wc.model, wc.site, MATCH_LOG.format(**wc), attempt)


def pair_mem_mb(model, site, log, attempt):
    """Host memory of one pair (saematch.memory.match_memory_bytes, the formula
    bench/bench_memory.py checks against measured peaks; a site job's pairs run one after
    another), doubled on each retry after a resource failure (not after an input error, which
    is not worth more memory: saematch.logs.failed_on_input).
    """
    from saematch.memory import match_memory_bytes

    F, d = n_features(model), config["catalog"][model]["d_model"]
    opts = cfg.site_options(config, model, site)
    need = match_memory_bytes(
        F,
        d,
        config["catalog"][model].get("format", "gemma-scope"),
        opts["solver"],
        opts["dense_max_gb"],
        opts["k"],
        opts["chunk_size"],
        opts["partial"],
        projects_att(model, site),
    )
    if saematch.logs.failed_on_input(log):
        attempt = 1
    return int(need / 1e6 * 2 ** (attempt - 1))


def match_runtime(wc, attempt):
    return pair_runtime(wc.model, MATCH_LOG.format(**wc), attempt)


def pair_runtime(model, log, attempt, pairs=1):
    """Minutes: the CPU lapjv solve grows ≈ F^2.2 (about 6 s at 16k), plus loading."""
    if saematch.logs.failed_on_input(log):
        attempt = 1
    F = n_features(model)
    return int((10 + 5 * pairs * (F / 16384) ** 2.2) * 2 ** (attempt - 1))


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
    wildcard_constraints:
        model=any_of(m for m in config["catalog"] if not grouped(m)),
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


def match_site_input(model, site):
    """A site job's SAE pointers (one per layer of the model, params.sae_layers) and the model's
    files."""
    inputs = {
        "saes": [pointer_path(sae_spec(model, site, L)) for L in all_layers(model)]
    }
    if projects_att(model, site):
        inputs["model"] = pointer_path(model_spec(model))
    return inputs


MATCH_SITE_LOG = "logs/match_site/model={model}/variant={variant}/site={site}.log"


for _model in [
    m for m in config["models"] if grouped(m) and cfg.pair_layers(config, m)
]:
    _where = {"model": _model, "variant": VARIANT[_model], "site": "{site}"}

    rule:
        name:
            rule_of("match_site", _model)
        input:
            unpack(lambda wc, m=_model: match_site_input(m, wc.site)),
        output:
            [MATCHES.format(**_where, layer=L) for L in all_layers(_model)[:-1]],
        log:
            MATCH_SITE_LOG.format(**_where),
        benchmark:
            "benchmarks/match_site/model={model}/variant={variant}/site={site}.tsv".format(
                **_where
            )
        retries: 1
        conda:
            "../../envs/pipeline.yaml"
        threads: pair_threads(_model)
        resources:
            gpu=0,  # SAEs this small take seconds on a CPU: no GPU queue on a cluster
            mem_mb=lambda wc, attempt, m=_model: pair_mem_mb(
                m,
                wc.site,
                MATCH_SITE_LOG.format(model=m, variant=VARIANT[m], site=wc.site),
                attempt,
            ),
            runtime=lambda wc, attempt, m=_model: pair_runtime(
                m,
                MATCH_SITE_LOG.format(model=m, variant=VARIANT[m], site=wc.site),
                attempt,
                pairs=len(all_layers(m)) - 1,
            ),
            attempt=lambda wc, attempt: attempt,
        params:
            model=_model,
            variant=VARIANT[_model],
            layers=all_layers(_model)[:-1],
            sae_layers=all_layers(_model),
            options=lambda wc, m=_model: options_of(m, wc.site),
            algo_version=saematch.ALGO_VERSION,
        script:
            "../../scripts/match_pair.py"
