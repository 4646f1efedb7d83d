"""Demo only: planted truth against folding, the verdict and the partial assignment, per site and pair."""

import json
from pathlib import Path

from saematch import logs

with logs.job(snakemake):
    import polars as pl

    from saematch.ablation import planted_ablation
    from saematch.load import load_pair

    read = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    truth = pl.read_parquet(snakemake.input.truth)
    model = read(snakemake.input.model) if snakemake.input.model else None
    rows = []
    for pair in snakemake.params.pairs:
        saes = load_pair(read(pair["src"]), read(pair["dst"]), pair["layer"],
                         model if pair["project_att"] else None, where=(pair["src"], pair["dst"]))
        planted = truth.filter(site=pair["site"], layer=pair["layer"]).sort("feature")["planted"].to_numpy()
        rows.append({"site": pair["site"], "layer": pair["layer"],
                     **planted_ablation(*saes, planted, pair["options"])})
    pl.DataFrame(rows, schema_overrides={"layer": pl.Int32}).write_parquet(snakemake.output[0])
