"""Per-model summary table and per-layer cosine figure."""

import logging

import polars as pl

from saematch import logs
from saematch.summary import plot_cosines, read_matches, summarize

logs.to_file(snakemake.log[0])
truth = pl.read_parquet(snakemake.input.truth) if snakemake.input.truth else None
matches = list(snakemake.input.matches)
rows = read_matches(matches)
table = summarize(matches, truth, rows)
table.write_parquet(snakemake.output.table)
with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, float_precision=4):
    logging.info("summary of %s:\n%s", snakemake.wildcards.model, table)
plot_cosines(rows, snakemake.output.figure, snakemake.wildcards.model)
