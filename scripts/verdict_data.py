"""The verdict re-fitted on the evaluation's labels (saematch.verdict_data): per feature of
every pair of the run, and per site its held-out calibration before and after."""

import logging

import polars as pl

from saematch import logs
from saematch.report import table_html
from saematch.verdict_data import read_matches, tokens_per_site, verdict_on_data

with logs.job(snakemake):
    matches = read_matches(list(snakemake.input.matches))
    features = pl.read_parquet(snakemake.input.features)
    tokens = tokens_per_site(pl.read_parquet(snakemake.input.pairs))
    table, summary = verdict_on_data(matches, features, snakemake.params.min_active, snakemake.params.cut,
                                     tokens, snakemake.wildcards.data)
    table.write_parquet(snakemake.output.table)
    summary.write_csv(snakemake.output.summary, separator="\t", float_precision=4)
    table_html(summary, snakemake.output.html, " · ".join(snakemake.wildcards) + ": the verdict re-fitted on data")
    logging.info("the verdict on data, per site:\n%s", summary)
