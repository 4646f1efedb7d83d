"""Feature Flow's cases per layer, and on the demo the planted origins the scores recover."""

from saematch import logs
from saematch.report import table_html

with logs.job(snakemake):
    import polars as pl

    from saematch.flow import summarize

    origins = pl.read_parquet(snakemake.input.origins) if snakemake.input.get("origins") else None
    table = summarize(list(snakemake.input.flow), origins)
    table.write_parquet(snakemake.output.table)
    table.write_csv(snakemake.output.text, separator="\t", float_precision=4)
    table_html(table, snakemake.output.html, " · ".join(snakemake.wildcards) + ": Feature Flow cases")
