# saematch: match SAE features across consecutive layers (SAE Match, ICLR 2025).
# Usage: snakemake --cores 8 --config models=[gemma-2-2b] sites=[res] layers=[10,11,12]
import time


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/match.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/steer.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,
    make_demo,
    download_sae,
    download_model,
    neuronpedia_explanations,
    make_tiny,
    download_dataset,


STARTED = time.time()


onstart:
    no_local_rate_limit()
    check_run_devices()
    check_outputs_writable(workflow.dag.needrun_jobs())


onsuccess:
    from saematch.report import results_message

    print(
        results_message(
            {m: summary_prefix(m) for m in config["models"]},
            {m: evaluation_prefix(m) for m in EVALUATE},
            {m: [steering_folder(m, t) for t in STEER[m]] for m in STEER},
        ),
        flush=True,
    )


onerror:
    from saematch.report import failures_message

    print(failures_message("logs", STARTED), flush=True)


rule all:
    default_target: True
    input:
        all_targets(),
