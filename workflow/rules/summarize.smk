# One summary per (model, variant, selection): it describes exactly the pairs its name lists,
# so a narrower run writes its own summary and never shrinks a wider one.


def summary_truth(wc):
    if is_demo(wc.model):
        return f"resources/demo/{wc.model}/truth.parquet"
    return []


def summary_ablation(wc):
    if is_demo(wc.model):
        return f"results/model={wc.model}/variant={wc.variant}/demo/ablation.{wc.selection}.parquet"
    return []


rule summarize:
    input:
        matches=summary_matches,
        truth=summary_truth,
        ablation=summary_ablation,
        chains=f"{LIFETIMES}.parquet",
    output:
        table=f"{SUMMARY}.parquet",
        text=f"{SUMMARY}.tsv",
        html=report(
            f"{SUMMARY}.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "pairs": "{selection}",
            },
        ),
        figure=report(
            f"{SUMMARY}.png",
            caption="../report/cosine.rst",
            category="Matched cosine",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "pairs": "{selection}",
            },
        ),
    log:
        "logs/summarize/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/summarize/model={model}/variant={variant}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/summarize.py"


# Lifetimes: the matches composed into chains along persisting links (saematch.lifetimes).
rule lifetimes:
    input:
        matches=summary_matches,
    output:
        chains=f"{LIFETIMES}.parquet",
        survival=f"{LIFETIMES}.survival.tsv",
        html=report(
            f"{LIFETIMES}.survival.html",
            caption="../report/survival.rst",
            category="Lifetimes",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "pairs": "{selection}",
                "view": "table",
            },
        ),
        lengths=f"{LIFETIMES}.lengths.tsv",
        figure=report(
            f"{LIFETIMES}.survival.png",
            caption="../report/survival.rst",
            category="Lifetimes",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "pairs": "{selection}",
                "view": "figure",
            },
        ),
    log:
        "logs/lifetimes/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/lifetimes/model={model}/variant={variant}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/lifetimes.py"


def ablation_pairs(wc):
    """Demo: every selected pair's pointers and options, for the ablation."""
    check_variant(wc)
    return [
        {
            "site": site,
            "layer": L,
            "src": pointer_path(sae_spec(wc.model, site, L)),
            "dst": pointer_path(sae_spec(wc.model, site, L + 1)),
            "project_att": projects_att(wc.model, site),
            "options": options_of(wc.model, site),
        }
        for site in config["sites"]
        for L in cfg.pair_layers(config, wc.model)
    ]


def ablation_input(wc):
    pairs = ablation_pairs(wc)
    att = any(p["project_att"] for p in pairs)
    return {
        "pointers": sorted({p[side] for p in pairs for side in ("src", "dst")}),
        "model": pointer_path(model_spec(wc.model)) if att else [],
        "truth": f"resources/demo/{wc.model}/truth.parquet",
    }


# Demo only: planted truth against folding (the demo plants JumpReLU's scale symmetry between
# layers), the verdict and the partial assignment (saematch.ablation). It reads the SAEs, not
# the matches, so it starts early (priority) instead of ending the run alone.
rule ablation:
    input:
        unpack(ablation_input),
    output:
        "results/model={model}/variant={variant}/demo/ablation.{selection}.parquet",
    log:
        "logs/ablation/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/ablation/model={model}/variant={variant}/{selection}.tsv"
    priority: 1
    conda:
        "../../envs/pipeline.yaml"
    params:
        pairs=ablation_pairs,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/ablation.py"
