"""Per-variant summary table (Parquet, TSV for the report) and per-layer cosine figure."""

import logging

import polars as pl

from saematch import logs
from saematch.edges import read_matches
from saematch.figures import plot_cosines
from saematch.report import table_html
from saematch.summary import console_table, summarize

with logs.job(snakemake):
    truth = pl.read_parquet(snakemake.input.truth) if snakemake.input.truth else None
    matches = list(snakemake.input.matches)
    rows = read_matches(matches)
    ablation = pl.read_parquet(snakemake.input.ablation) if snakemake.input.ablation else None
    lifetimes = pl.read_parquet(snakemake.input.chains)
    table = summarize(matches, truth, rows, ablation, lifetimes)
    table.write_parquet(snakemake.output.table)
    table.write_csv(snakemake.output.text, separator="\t", float_precision=6)
    table_html(table, snakemake.output.html, " · ".join(snakemake.wildcards) + ": summary")
    logging.info("summary of %s:\n%s", snakemake.output.table, console_table(table))
    wc = snakemake.wildcards
    plot_cosines(rows, snakemake.output.figure, f"{wc.model} · {wc.variant} · {wc.selection}")
