"""Write the tiny Gemma 2 model, its SAEs (trained on its activations) and its held-out text."""

import json

from saematch import logs
from saematch.tiny import make_tiny

with logs.job(snakemake):
    manifest = make_tiny(**snakemake.params.tiny, text_path=snakemake.output.text)
    with open(snakemake.output.hub, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
