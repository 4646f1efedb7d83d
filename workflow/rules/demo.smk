rule make_demo:
    output:
        hub="resources/demo/{model}/hub.json",
        truth="resources/demo/{model}/truth.parquet",
    log:
        "logs/make_demo/{model}.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        demo=demo_params,
    script:
        "../../scripts/make_demo.py"
