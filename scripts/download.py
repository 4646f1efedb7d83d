"""Download one SAE's (or one model's) files into the Hugging Face cache; write the pointer.

A small local model's job (`download_local_*`) writes every pointer of the model in turn.
"""

import json
import sys

from saematch import hub, logs

with logs.job(snakemake):
    specs = getattr(snakemake.params, "specs", None) or [snakemake.params.spec]
    for spec, output in zip(specs, snakemake.output):
        pointer = hub.fetch(
            spec["repo_id"],
            spec["files"],
            revision=spec["revision"],
            cache_dir=spec["cache_dir"],
            local_files_only=spec["local_files_only"],
            repo_type=spec.get("repo_type", "model"),
        )
        with open(output, "w") as fh:
            json.dump({"format": spec["format"], **pointer}, fh, indent=2, sort_keys=True)
        if not hub.is_commit(spec["revision"]) and not spec["local_files_only"]:  # on the console too
            print("saematch: warning: " + hub.unpinned_warning(spec["repo_id"], spec["revision"], pointer["commit"]),
                  file=sys.__stderr__, flush=True)
