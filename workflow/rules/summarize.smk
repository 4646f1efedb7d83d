# One summary per (model, variant, selection): it describes exactly the pairs its name lists,
# so a narrower run writes its own summary and never shrinks a wider one.


rule summarize:
    input:
        matches=summary_matches,
        truth=summary_truth,
        ablation=summary_ablation,
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


# Demo only: the planted matches recovered with and without folding, so the summary shows
# what folding does (the demo plants JumpReLU's scale symmetry between layers).
rule fold_ablation:
    input:
        unpack(ablation_input),
    output:
        "results/model={model}/variant={variant}/demo/fold-ablation.{selection}.parquet",
    log:
        "logs/fold_ablation/model={model}/variant={variant}/{selection}.log",
    benchmark:
        "benchmarks/fold_ablation/model={model}/variant={variant}/{selection}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        pairs=ablation_pairs,
        algo_version=saematch.ALGO_VERSION,
    script:
        "../../scripts/fold_ablation.py"
