# One summary per (model, variant, selection): it describes exactly the pairs its name lists,
# so a narrower run writes its own summary and never shrinks a wider one.


rule summarize:
    input:
        matches=summary_matches,
        truth=summary_truth,
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
