"""A run's results as named tables, and questions over them: ``saematch find`` and ``saematch sql``.

Tables (polars LazyFrames over the run's Parquet files; one engine, polars SQL):

- ``matches``: every pair's matches, all sites (site, layer, feature, match, cosine, persists,
  confidence, top1, …; the pair is layer → layer + 1);
- ``flow``: Feature Flow's scores and case per residual feature (layer, feature, res, s_res, …);
- ``lifetimes``: the chains, long form (selection, site, chain, layer, feature, confidence);
- ``features``: per evaluation, each feature's activity and Pearson partners on text (data, site,
  layer, feature, active, r_match, r_top1, …);
- ``edges``: the feature graph (saematch.edges), every relation between two features;
- ``feature_table``: one row per feature of the matched pairs, what :func:`find` filters: the
  matches' columns, the flow case, its chain's length, and on data its activity and r.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .edges import edge_table, evaluation_files


def _matches(paths: dict) -> pl.LazyFrame | None:
    parts = [pl.scan_parquet(p).with_columns(site=pl.lit(site), layer=pl.lit(L, pl.Int32))
             for site, by_layer in paths["sites"].items() for L, p in sorted(by_layer.items())]
    if not parts:
        return None
    parts = [p.select([c for c in p.collect_schema().names() if c not in ("evidence", "top1_evidence")]) for p in parts]
    return pl.concat(parts, how="diagonal_relaxed")


def _flow(paths: dict) -> pl.LazyFrame | None:
    parts = [pl.scan_parquet(p).with_columns(layer=pl.lit(L, pl.Int32)) for L, p in sorted(paths["flow"].items())]
    return pl.concat(parts, how="diagonal_relaxed") if parts else None


def _lifetimes(root: Path) -> pl.LazyFrame | None:
    parts = [pl.scan_parquet(p).with_columns(selection=pl.lit(p.name[: -len(".parquet")]))
             for p in sorted(Path(root).glob("lifetimes/*.parquet"))]
    return pl.concat(parts) if parts else None


def _features(root: Path) -> pl.LazyFrame | None:
    parts = [pl.scan_parquet(p).with_columns(data=pl.lit(f"{p.parent.parent.name}/{p.parent.name}"))
             for p in evaluation_files(root)]
    return pl.concat(parts) if parts else None


def tables(paths: dict) -> dict[str, pl.LazyFrame]:
    """The run's named tables (module docstring); a table the run has no files for is absent."""
    root = paths["root"]
    out = {"matches": _matches(paths), "flow": _flow(paths), "lifetimes": _lifetimes(root),
           "features": _features(root), "edges": edge_table(paths)}
    out = {k: v for k, v in out.items() if v is not None}
    if "matches" in out:
        out["feature_table"] = feature_table(out)
    return out


def feature_table(t: dict[str, pl.LazyFrame]) -> pl.LazyFrame:
    """One row per (site, layer, feature) of the matches: its partners and verdict, the flow
    case (res), the length in layers of its chain (``chain_length``; lifetimes of the first
    selection that holds it) and, from the first evaluation that holds it, ``active`` tokens
    and ``r_match`` (Pearson r with its SAE Match partner). ``dead``: its decoder row is ~0
    (the matches' ``dead``) or it never fired on the evaluation's text."""
    keys = ["site", "layer", "feature"]
    names = t["matches"].collect_schema().names()
    df = t["matches"].select(*keys, "match", "cosine", "persists", "confidence", "top1", "top1_cosine",
                             "top1_persists", "top1_confidence", *(["unjudged"] if "unjudged" in names else []),
                             dead=pl.col("dead").fill_null(False) if "dead" in names else pl.lit(False))
    if "flow" in t:
        df = df.join(t["flow"].select("layer", "feature", "case").with_columns(site=pl.lit("res")), on=keys, how="left")
    else:
        df = df.with_columns(case=pl.lit(None, pl.String))
    if "lifetimes" in t:
        lt = t["lifetimes"]
        first = lt.select(pl.col("selection").min()).collect().item()
        lt = lt.filter(pl.col("selection") == first)
        length = lt.group_by("site", "chain").agg(chain_length=pl.len())
        df = df.join(lt.select("site", "chain", "layer", "feature").join(length, on=["site", "chain"]), on=keys, how="left")
    else:
        df = df.with_columns(chain=pl.lit(None, pl.Int64), chain_length=pl.lit(None, pl.UInt32))
    if "features" in t:
        f = t["features"]
        first = f.select(pl.col("data").min()).collect().item()
        df = df.join(f.filter(pl.col("data") == first).select(*keys, "active", "r_match"), on=keys, how="left")
        df = df.with_columns(dead=pl.col("dead") | (pl.col("active") == 0).fill_null(False))  # never fires on the text
    else:
        df = df.with_columns(active=pl.lit(None, pl.Int64), r_match=pl.lit(None, pl.Float32))
    return df.sort(keys)


def find(t: dict[str, pl.LazyFrame], site: str | None = None, layers: list[int] | None = None,
         case: str | None = None, persists: bool | None = None, confidence: tuple | None = None,
         min_chain: int | None = None, r: tuple | None = None, limit: int | None = None,
         dead: bool = False, explanation: str | None = None, paths: dict | None = None,
         explanations_root: str | Path | None = None) -> pl.DataFrame:
    """Rows of :func:`feature_table` that meet every filter given: ``confidence`` and ``r``
    are (low, high) ranges, either end None for open; ``min_chain`` a chain length in layers;
    ``explanation``: text that one of the feature's Neuronpedia explanations contains (any
    case), from the local export under ``explanations_root`` for the SAE the run recorded
    (saematch.graph.neuronpedia_where, needs ``paths``), given in a column ``explanation``.
    Dead features are not features: left out, unless ``dead`` (then only they are listed)."""
    df = t["feature_table"]
    conds = [pl.col("dead") == dead]
    if site is not None:
        conds.append(pl.col("site") == site)
    if layers is not None:
        conds.append(pl.col("layer").is_in(layers))
    if case is not None:
        conds.append(pl.col("case") == case)
    if persists is not None:
        conds.append(pl.col("persists") == persists)
    for col, rng in (("confidence", confidence), ("r_match", r)):
        if rng is not None:
            lo, hi = rng
            if lo is not None:
                conds.append(pl.col(col) >= lo)
            if hi is not None:
                conds.append(pl.col(col) <= hi)
    if min_chain is not None:
        conds.append(pl.col("chain_length") >= min_chain)
    for c in conds:
        df = df.filter(c)
    out = df.collect()
    if explanation is not None:
        out = _explained(out, explanation, paths, explanations_root)
    return out.head(limit) if limit else out


def _explained(df: pl.DataFrame, text: str, paths: dict, root) -> pl.DataFrame:
    """The rows of ``df`` with an explanation containing ``text``, and that explanation."""
    from .graph import neuronpedia_where
    from .neuronpedia import load_explanations

    want, keep = text.casefold(), []
    for (site, layer), g in df.group_by("site", "layer", maintain_order=True):
        where = neuronpedia_where(paths, layer, site)
        found = load_explanations(root, where["model"], where["set"]) if root and "set" in where else {}
        hits = {i: next((e for e in found.get(i, []) if want in e.casefold()), None) for i in g["feature"].to_list()}
        keep.append(g.with_columns(explanation=pl.Series([hits[i] for i in g["feature"].to_list()], dtype=pl.String))
                    .filter(pl.col("explanation").is_not_null()))
    return pl.concat(keep) if keep else df.with_columns(explanation=pl.lit(None, pl.String)).clear()


def sql(t: dict[str, pl.LazyFrame], query: str) -> pl.DataFrame:
    """Run a polars SQL query over the named tables."""
    return pl.SQLContext(frames=t).execute(query, eager=True)
