"""Demo only: planted matches recovered with and without folding, per site and pair."""

import json
from pathlib import Path

from saematch import logs

with logs.job(snakemake):
    import polars as pl

    from saematch.ablation import fold_ablation
    from saematch.hub import resolve_files
    from saematch.load import load_att_projection, load_sae, project_att

    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    truth = pl.read_parquet(snakemake.input.truth)
    model_files = resolve_files(read(snakemake.input.model)) if snakemake.input.model else None
    rows = []
    for pair in snakemake.params.pairs:
        saes = []
        for side, layer in (("src", pair["layer"]), ("dst", pair["layer"] + 1)):
            sae = load_sae(read(pair[side]))
            if pair["project_att"]:
                sae = project_att(sae, *load_att_projection(model_files, layer), where=pair[side])
            saes.append(sae)
        planted = truth.filter(site=pair["site"], layer=pair["layer"]).sort("feature")["planted"].to_numpy()
        rows.append({"site": pair["site"], "layer": pair["layer"],
                     **fold_ablation(*saes, planted, pair["options"])})
    pl.DataFrame(rows, schema_overrides={"layer": pl.Int32}).write_parquet(snakemake.output[0])
