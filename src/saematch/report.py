"""What the end of a run prints: where the results are and what they say, or why it failed."""

from __future__ import annotations

from pathlib import Path

from .logs import failures_since


def results_message(summaries: dict[str, str], evaluations: dict[str, str] | None = None,
                    steering: dict[str, list[str]] | None = None) -> str:
    """model → summary path prefix (…/summary/{selection}); the tables, read back from disk;
    evaluations: model → its evaluation folder (…/evaluation/{data}/{selection}); steering:
    model → its themes' folders (…/steer/{selection}/{theme})."""
    import polars as pl

    from .summary import console_table

    out = []
    for model, prefix in summaries.items():
        table_path = Path(f"{prefix}.parquet")
        run_dir = table_path.parent.parent
        out.append(f"\nsaematch: {model}: results in {run_dir}/")
        out.append(f"  matches  {run_dir}/matches/site=*/layer=*/part-0.parquet (one file per pair)")
        out.append(f"  summary  {table_path} (and .tsv), figure {prefix}.png")
        selection = Path(prefix).name
        out.append(f"  chains   {run_dir}/lifetimes/{selection}.parquet (features followed while they persist), "
                   f"survival {run_dir}/lifetimes/{selection}.survival.tsv|.png")
        if Path(f"{prefix}.flow.tsv").exists():
            out.append(f"  flow     {run_dir}/flow/*/layer=*.parquet (Feature Flow: where each residual feature comes "
                       f"from), cases {prefix}.flow.tsv")
            out.append(f"  ask      saematch trace {model} L/res/INDEX | saematch show {model} L/SITE/INDEX "
                       "(saematch --help)")
        folder = (evaluations or {}).get(model)
        if folder and Path(folder, "summary.tsv").exists():
            out.append(f"  on data  {folder}/summary.tsv (matching score, Pearson partners, EV and ΔL), figure "
                       f"evaluation.png, the verdict on data calibration.tsv, re-fitted on data verdict.tsv|.parquet")
            out += short_sample_lines(folder)
        folders = [Path(f) for f in (steering or {}).get(model, []) if Path(f, "summary.tsv").exists()]
        if folders:
            themes = ",".join(sorted(f.name for f in folders))
            out.append(f"  steer    {folders[0].parent}/{{{themes}}}/summary.tsv (each setting's keyword share, "
                       "presence, perplexity, ΔL), figure.png, graph.html, generations.parquet")
        if table_path.exists():
            table = pl.read_parquet(table_path)
            out.append(console_table(table))
            uncertified = table.filter(~pl.col("certified"))
            if uncertified.height:
                out.append(f"  {uncertified.height} pair(s) NOT certified optimal: see the 'certificate' "
                           "in their files' provenance (saematch.write.read_provenance)")
    return "\n".join(out)


def short_sample_lines(folder: str) -> list[str]:
    """One line when the evaluation in ``folder`` read fewer tokens than it asked for."""
    import polars as pl

    path = Path(folder, "pairs.parquet")
    if not path.exists():
        return []
    pairs = pl.read_parquet(path)
    if "short_sample" not in pairs.columns or not pairs["short_sample"].any():
        return []
    return [f"  SHORT SAMPLE: the text gave {pairs['tokens'].min()} valid tokens of the {pairs['tokens_asked'].max()} "
            f"asked (evaluate.n_tokens); {folder}/summary.tsv rests on those (column short_sample)"]


def failures_message(log_dir: str, since: float) -> str:
    failures = failures_since(log_dir, since)
    if not failures:
        return "saematch: the run failed (see Snakemake's messages above)"
    lines = [f"saematch: {len(failures)} job(s) failed:"]
    lines += [f"  {cause}\n    (log: {path})" for path, cause in failures]
    return "\n".join(lines)


def table_html(table, path: str, title: str) -> None:
    """A table as one self-contained HTML page (no scripts, no network), for the Snakemake
    report, which shows HTML inline but offers a TSV only as a download. Floats with 4
    significant digits, nulls as '–'; every value escaped."""
    import html

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in table.iter_rows())
    Path(path).write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font:13px system-ui,sans-serif;margin:12px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}"
        "th{background:#f0f0f0;position:sticky;top:0}td:first-child,th:first-child{text-align:left}"
        f"</style></head><body><h3>{html.escape(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>\n"
        f"{body}\n</tbody></table></body></html>\n")
