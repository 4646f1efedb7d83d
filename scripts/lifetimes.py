"""Chains of persisting matches across layers (long form), survival curves and chain lengths."""

import logging

from saematch import logs
from saematch.report import table_html

with logs.job(snakemake):
    from saematch.figures import plot_survival
    from saematch.lifetimes import chains_of_files, lengths, survival

    long = chains_of_files(list(snakemake.input.matches))
    long.write_parquet(snakemake.output.chains)
    surv = survival(long)
    surv.write_csv(snakemake.output.survival, separator="\t", float_precision=6)
    table_html(surv, snakemake.output.html, " · ".join(snakemake.wildcards) + ": survival")
    lengths(long).write_csv(snakemake.output.lengths, separator="\t")
    wc = snakemake.wildcards
    plot_survival(surv, snakemake.output.figure, f"{wc.model} · {wc.variant} · {wc.selection}: survival")
    logging.info("%d chains over %d features; survival:\n%s", long["chain"].n_unique(), long.height, surv)
