rule make_demo:
    output:
        hub="resources/demo/{model}/hub.json",
        truth="resources/demo/{model}/truth.parquet",
    log:
        "logs/make_demo/{model}.log",
    params:
        demo=demo_params,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../../scripts/make_demo.py"
