# One summary per (model, variant, selection): it describes exactly the pairs its name lists,
# so a narrower run writes its own summary and never shrinks a wider one.


rule summarize:
    input:
        matches=summary_matches,
        truth=summary_truth,
        ablation=summary_ablation,
        chains=f"{LIFETIMES}.parquet",
    output:
        table=f"{SUMMARY}.parquet",
        text=report(
            f"{SUMMARY}.tsv",
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
        lengths=f"{LIFETIMES}.lengths.tsv",
        figure=report(
            f"{LIFETIMES}.survival.png",
            caption="../report/survival.rst",
            category="Lifetimes",
            labels={
                "model": "{model}",
                "variant": "{variant}",
                "pairs": "{selection}",
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


# Demo only: planted truth against folding (the demo plants JumpReLU's scale symmetry between
# layers), the verdict and the partial assignment (saematch.ablation).
rule ablation:
    input:
        unpack(ablation_input),
    output:
        "results/model={model}/variant={variant}/demo/ablation.{selection}.parquet",
    log:
        "logs/ablation/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/ablation/model={model}/variant={variant}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        pairs=ablation_pairs,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/ablation.py"
