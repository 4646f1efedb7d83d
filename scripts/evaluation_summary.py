"""Join the sites' evaluations: a table per pair (TSV, the report), the verdict's calibration
on data, and a figure (with the verdict re-fitted on data, verdict.parquet)."""

import logging

import polars as pl

from saematch import logs
from saematch.evaluate import summarize_evaluation
from saematch.figures import plot_evaluation
from saematch.report import table_html

with logs.job(snakemake):
    pairs = pl.read_parquet(snakemake.input.pairs)
    features = pl.read_parquet(snakemake.input.features)
    table, calib = summarize_evaluation(pairs, features, snakemake.params.min_active, snakemake.params.corr_level)
    table.write_csv(snakemake.output.table, separator="\t", float_precision=4)
    table_html(table, snakemake.output.html, " · ".join(snakemake.wildcards) + ": on activations")
    calib.write_csv(snakemake.output.calibration, separator="\t", float_precision=4)
    logging.info("evaluation on data:\n%s\ncalibration:\n%s", table, calib)
    wc = snakemake.wildcards
    verdict = pl.read_parquet(snakemake.input.verdict)
    verdict_sites = pl.read_csv(snakemake.input.verdict_sites, separator="\t")
    plot_evaluation(table, calib, snakemake.output.figure, f"{wc.model} · {wc.variant} · {wc.data}", verdict,
                    verdict_sites)
