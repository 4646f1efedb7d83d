"""Per-model summary table (polars) and figure from the per-pair matches files."""

from __future__ import annotations


import polars as pl

from .calibrate import ece
from .edges import read_matches
from .write import read_provenance


def calibration_error(df: pl.DataFrame, confidence: str, correct: pl.Expr, by: list[str],
                      bins: int = 10) -> pl.DataFrame:
    """Expected calibration error per group: Σ_b (n_b / n)·|share correct − mean confidence| over
    ``bins`` equal-width bins of confidence (the last bin includes 1), over the features the
    verdict judged (null confidence: unjudged). Computed with numpy per group: polars' grouped
    sums vary in the last bit between runs."""
    rows = []
    for key, g in df.with_columns(_ok=correct).group_by(*by, maintain_order=True):
        g = g.filter(pl.col(confidence).is_not_null())
        if not len(g):
            rows.append(dict(zip(by, key)) | {f"{confidence}_ece": None})
            continue
        rows.append(dict(zip(by, key)) | {f"{confidence}_ece": ece(g[confidence].to_numpy(), g["_ok"].to_numpy(), bins)})
    return pl.DataFrame(rows, schema={**{k: df.schema[k] for k in by}, f"{confidence}_ece": pl.Float64})


def summarize(paths: list[str], truth: pl.DataFrame | None = None, df: pl.DataFrame | None = None,
              ablation: pl.DataFrame | None = None, lifetimes: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (site, layer): n, cosine and mse statistics, top-1 agreement, total cost,
    and the assignment's certificate (certified, gap bound, solver).

    The verdict: share of features declared persisting (assignment and top-1) and the mean
    confidence. With ``truth`` (columns site, layer, feature, planted; planted = -1 for
    features that die), also the share of planted matches that were recovered (assignment,
    top-1), the precision and recall of ``persists`` and ``top1_persists`` (a feature is
    correctly declared when it persists and its partner is the planted one) and the expected
    calibration error of ``confidence`` and ``top1_confidence`` over 10 bins; with ``ablation``
    (:mod:`saematch.ablation`), its columns; with ``lifetimes`` (:func:`saematch.lifetimes.chains`),
    births and deaths per layer.
    ``df``: the rows of ``paths`` when already read (:func:`read_matches`).
    """
    df = read_matches(paths) if df is None else df
    if truth is not None:
        df = df.join(truth, on=["site", "layer", "feature"], how="left")
    keys = ["model", "variant", "site", "layer"]
    dead = pl.col("dead").fill_null(False) if "dead" in df.columns else pl.lit(False)
    n_dead = df.group_by(*keys).agg(n_dead=dead.sum().cast(pl.Int64))
    df = df.filter(~dead)  # dead features are not features: out of every count and mean below
    aggs = [
        pl.len().alias("n_features"),
        pl.col("match").is_not_null().sum().alias("n_matched"),
        pl.col("cosine").mean().alias("cosine_mean"),
        pl.col("cosine").median().alias("cosine_median"),
        (pl.col("cosine") > 0.5).mean().alias("share_cosine_gt_0_5"),
        pl.col("mse").mean().alias("mse_mean"),
        (pl.col("top1") == pl.col("match")).mean().alias("top1_agreement"),
        pl.col("top1_cosine").mean().alias("top1_cosine_mean"),
        pl.col("persists").mean().alias("share_persists"),
        pl.col("top1_persists").mean().alias("share_top1_persists"),
        pl.col("confidence").mean().alias("confidence_mean"),
    ]
    if "unjudged" in df.columns:
        aggs.append(pl.col("unjudged").is_not_null().mean().alias("share_unjudged"))
    def correct(partner: str) -> pl.Expr:  # the feature persists and its partner is the planted one
        return (pl.col("planted") >= 0) & (pl.col(partner) == pl.col("planted")).fill_null(False)

    if truth is not None:
        persists = pl.col("planted") >= 0
        aggs += [
            persists.sum().alias("n_planted"),
            # an unmatched planted feature (partial assignment: match null) was not recovered
            (pl.col("match") == pl.col("planted")).fill_null(False).filter(persists).mean().alias("planted_recovered"),
            (pl.col("top1") == pl.col("planted")).fill_null(False).filter(persists).mean().alias("planted_top1"),
        ]
        for prefix, partner in (("", "match"), ("top1_", "top1")):
            right, declared = correct(partner), pl.col(f"{prefix}persists")
            aggs += [(right & declared).sum().truediv(declared.sum()).alias(f"{prefix}persists_precision"),
                     (right & declared).sum().truediv(right.sum()).alias(f"{prefix}persists_recall")]
    out = df.group_by(*keys).agg(aggs).join(n_dead, on=keys, how="left")
    if truth is not None:
        for prefix, partner in (("", "match"), ("top1_", "top1")):
            out = out.join(calibration_error(df, f"{prefix}confidence", correct(partner), keys), on=keys, how="left")
    out = out.sort(pl.col("site").replace_strict({"res": 0, "mlp": 1, "att": 2}, default=3), "layer")
    provenance = [read_provenance(p) for p in paths]
    totals = pl.DataFrame([
        {"site": pv["site"], "layer": pv["layer"], "total_cost": pv["total_cost"],
         "certified": pv["certificate"]["certified"], "gap_bound": pv["certificate"]["gap_bound"],
         "solver": pv["certificate"]["solver"]} for pv in provenance
    ], schema={"site": pl.String, "layer": pl.Int32, "total_cost": pl.Float64, "certified": pl.Boolean,
               "gap_bound": pl.Float64, "solver": pl.String})
    out = out.join(totals, on=["site", "layer"], how="left")
    if ablation is not None:
        out = out.join(ablation, on=["site", "layer"], how="left")
    if lifetimes is not None:
        from .lifetimes import births_deaths

        out = out.join(births_deaths(lifetimes).drop("features"), on=["site", "layer"], how="left")
    return out


def console_table(table: pl.DataFrame) -> str:
    """The summary for people: per site and pair, matched cosine, top-1 agreement, certified."""
    cols = [pl.col("site"), pl.format("{}→{}", "layer", pl.col("layer") + 1).alias("pair"),
            pl.col("n_features").alias("features"), pl.col("cosine_mean").round(3).alias("cosine"),
            pl.col("top1_agreement").round(3).alias("top1_agree"), pl.col("certified")]
    if "planted_recovered" in table.columns:
        cols.append(pl.col("planted_recovered").round(4).alias("planted_recovered"))
    if "planted_recovered_unfolded" in table.columns:
        cols.append(pl.col("planted_recovered_unfolded").round(4).alias("unfolded"))
    cols.append(pl.col("share_persists").round(3).alias("persists"))
    if "share_unjudged" in table.columns:
        cols.append(pl.col("share_unjudged").round(3).alias("unjudged"))
    if "persists_precision" in table.columns:
        cols += [pl.col("persists_precision").round(3).alias("precision"),
                 pl.col("persists_recall").round(3).alias("recall"), pl.col("confidence_ece").round(3).alias("ece")]
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        return str(table.select(cols))
