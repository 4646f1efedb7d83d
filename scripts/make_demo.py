"""Write the demo SAEs and stand-in model into a local Hugging Face cache, with the truth."""

import json

import polars as pl

from saematch import logs
from saematch.demo import make_demo

with logs.job(snakemake):
    manifest, truth = make_demo(**snakemake.params.demo)
    pl.DataFrame([
        {"site": site, "layer": L, "feature": i, "planted": int(j)}
        for site, maps in truth.items()
        for L, planted in enumerate(maps)
        for i, j in enumerate(planted)
    ], schema={"site": pl.String, "layer": pl.Int32, "feature": pl.Int32, "planted": pl.Int32}
    ).write_parquet(snakemake.output.truth)
    with open(snakemake.output.hub, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
