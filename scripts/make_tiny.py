"""Write the tiny Gemma 2 model, its SAEs (trained on its activations) and its held-out text."""

from saematch import logs
from saematch.tiny import make_tiny

with logs.job(snakemake):
    make_tiny(**snakemake.params.tiny, text_path=snakemake.output.text, hub_path=snakemake.output.hub)
