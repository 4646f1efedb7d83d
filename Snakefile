# saematch: match SAE features across consecutive layers (SAE Match, ICLR 2025).
# Usage: snakemake --cores 8 --config models=[gemma-2-2b] sites=[res] layers=[10,11,12]


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/match.smk"
include: "workflow/rules/summarize.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,
    make_demo,
    download_sae,
    download_model,


rule all:
    default_target: True
    input:
        all_targets(),
