"""Write the demo SAEs and stand-in model into a local Hugging Face cache, with the truth:
planted matches per site, and Feature Flow's planted origins of the residual features."""

import json

import polars as pl

from saematch import logs
from saematch.demo import make_demo

with logs.job(snakemake):
    manifest, truth, origins = make_demo(**snakemake.params.demo)
    pl.DataFrame([
        {"site": site, "layer": L, "feature": i, "planted": int(j)}
        for site, maps in truth.items()
        for L, planted in enumerate(maps)
        for i, j in enumerate(planted)
    ], schema={"site": pl.String, "layer": pl.Int32, "feature": pl.Int32, "planted": pl.Int32}
    ).write_parquet(snakemake.output.truth)
    pl.DataFrame([
        {"layer": L + 1, "feature": i, "origin": str(o), "source": int(j), "res_source": int(r)}
        for L, layer in enumerate(origins)
        for i, (o, j, r) in enumerate(zip(layer["origin"], layer["source"], layer["res_source"]))
    ], schema={"layer": pl.Int32, "feature": pl.Int32, "origin": pl.String, "source": pl.Int32,
               "res_source": pl.Int32}).write_parquet(snakemake.output.origins)
    with open(snakemake.output.hub, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
