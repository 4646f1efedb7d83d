rule summarize:
    input:
        matches=model_matches,
        truth=summary_truth,
    output:
        table="results/summary/{model}.parquet",
        figure=report(
            "results/summary/{model}.png",
            caption="../report/cosine.rst",
            category="Matched cosine",
            labels={"model": "{model}"},
        ),
    log:
        "logs/summarize/{model}.log",
    benchmark:
        "benchmarks/summarize/{model}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/summarize.py"
