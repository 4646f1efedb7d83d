rule make_demo:
    output:
        hub="resources/demo/{model}/hub.json",
        truth="resources/demo/{model}/truth.parquet",
        origins="resources/demo/{model}/origins.parquet",
    log:
        "logs/make_demo/{model}.log",
    benchmark:
        "benchmarks/make_demo/{model}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        demo=demo_params,
    script:
        "../../scripts/make_demo.py"
