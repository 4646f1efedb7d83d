"""Download one SAE's (or one model's) files into the Hugging Face cache; write the pointer."""

import json

from saematch import hub, logs

with logs.job(snakemake):
    spec = snakemake.params.spec
    pointer = hub.fetch(
        spec["repo_id"],
        spec["files"],
        revision=spec["revision"],
        cache_dir=spec["cache_dir"],
        local_files_only=spec["local_files_only"],
        repo_type=spec.get("repo_type", "model"),
    )
    with open(snakemake.output[0], "w") as fh:
        json.dump({"format": spec["format"], **pointer}, fh, indent=2, sort_keys=True)
