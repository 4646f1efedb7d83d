"""The feature graph: every relation the project computes between two features, as one table.

Nodes are features ``L/site/i``. An edge u → v says u comes before v (layer L before L+1, or a
module of layer L feeding the residual stream of layer L) and carries one ``relation``:

========  =========================  ========================================  =======================
relation  from → to                  score                                     confidence
========  =========================  ========================================  =======================
match     L/s/i → L+1/s/match(i)     decoder cosine (SAE Match's assignment)    the verdict's
top1      L/s/i → L+1/s/top1(i)      decoder cosine (forward top-1)             the verdict's (top-1)
flow_res  L−1/res/p → L/res/r        s(R), Feature Flow's backward top-1        the verdict, reversed
flow_mlp  L/mlp/m → L/res/r          s(M)                                       –
flow_att  L/att/a → L/res/r          s(A)                                       –
pearson   L/s/i → L+1/s/j            Pearson r of the codes on text (top-1)     –
pearson_k L/s/i → L+1/s/j            the same, ranks 2…k of the Pearson top-k    –
========  =========================  ========================================  =======================

The three residual relations (match, top1, flow_res) answer one question, "is this the same
feature one layer on?", each with the verdict's calibrated confidence (saematch.verdict; for
flow_res the same method with the layers' roles swapped, saematch.flow.predecessor_verdict).
They differ where a feature has no clear partner: the assignment is one-to-one, the top-1 and
Feature Flow's predecessor are each side's nearest. Their agreement is the ``relations`` of a
link (:func:`links`). ``show``, ``trace``, ``find``, ``sql`` and the exports all read these rows
(docs/graph.md).

Rows come from the run's files, read per file with predicate pushdown: :func:`edges_at` for one
node, :func:`edge_table` for a whole run.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

_KEYS = re.compile(r"model=([^/]+)/variant=([^/]+)/matches/site=([^/]+)/layer=(\d+)/")

RESIDUAL = ("match", "top1", "flow_res")  # the relations that say "the same feature, one layer on"
MODULE = ("flow_mlp", "flow_att")
ON_DATA = ("pearson", "pearson_k")  # the activation partner, and the rest of the Pearson top-k
SCHEMA = {"src_layer": pl.Int32, "src_site": pl.String, "src_feature": pl.Int32, "dst_layer": pl.Int32,
          "dst_site": pl.String, "dst_feature": pl.Int32, "relation": pl.String, "score": pl.Float32,
          "confidence": pl.Float32, "unjudged": pl.String}


def _frame(df: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    df = df.lazy() if isinstance(df, pl.DataFrame) else df
    return df.select([pl.col(c).cast(t) for c, t in SCHEMA.items()])


def read_matches(paths: list[str]) -> pl.DataFrame:
    """All rows of the given matches files, with model/variant/site/layer from the hive path."""
    if not paths:
        raise ValueError("no matches files to summarise")
    frames = []
    for p in paths:
        m = _KEYS.search(Path(p).as_posix())
        if m is None:
            raise ValueError(f"{p}: not a results/model=…/variant=…/matches/site=…/layer=…/ path")
        frames.append(pl.read_parquet(p).with_columns(
            model=pl.lit(m[1]), variant=pl.lit(m[2]), site=pl.lit(m[3]), layer=pl.lit(int(m[4]), pl.Int32)))
    return pl.concat(frames)


def match_edges(scan: pl.LazyFrame, site: str, layer: int) -> pl.LazyFrame:
    """The match and top1 rows of one matches file (pair layer → layer + 1 of ``site``)."""
    names = scan.collect_schema().names()
    unjudged = pl.col("unjudged") if "unjudged" in names else pl.lit(None, pl.String)
    base = dict(src_layer=pl.lit(layer), src_site=pl.lit(site), src_feature=pl.col("feature"),
                dst_layer=pl.lit(layer + 1), dst_site=pl.lit(site), unjudged=unjudged)
    match = scan.filter(pl.col("match") >= 0).with_columns(
        **base, dst_feature=pl.col("match"), relation=pl.lit("match"), score=pl.col("cosine"),
        confidence=pl.col("confidence"))
    top1 = scan.with_columns(**base, dst_feature=pl.col("top1"), relation=pl.lit("top1"), score=pl.col("top1_cosine"),
                             confidence=pl.col("top1_confidence"))
    return pl.concat([_frame(match), _frame(top1)])


def flow_edges(scan: pl.LazyFrame, layer: int) -> pl.LazyFrame:
    """The flow_res, flow_mlp and flow_att rows of one flow file (residual features of ``layer``);
    a module without scores (null) gives no rows."""
    names = scan.collect_schema().names()
    out = []
    for module in ("res", "mlp", "att"):
        src_layer = layer - 1 if module == "res" else layer
        conf = (pl.col("res_confidence") if module == "res" and "res_confidence" in names else pl.lit(None, pl.Float32))
        unjudged = (pl.col("res_unjudged") if module == "res" and "res_unjudged" in names else pl.lit(None, pl.String))
        out.append(_frame(scan.filter(pl.col(module).is_not_null()).with_columns(
            src_layer=pl.lit(src_layer), src_site=pl.lit(module), src_feature=pl.col(module), dst_layer=pl.lit(layer),
            dst_site=pl.lit("res"), dst_feature=pl.col("feature"), relation=pl.lit(f"flow_{module}"),
            score=pl.col(f"s_{module}"), confidence=conf, unjudged=unjudged)))
    return pl.concat(out)


def pearson_edges(scan: pl.LazyFrame) -> pl.LazyFrame:
    """The on-data rows of an evaluation's features.parquet: ``pearson`` to each feature's
    Pearson top-1 partner in the next layer (its activation partner), ``pearson_k`` to the rest
    of its Pearson top-k, each with its r (none where the list ends: index −1)."""
    k = scan.collect_schema()["pearson_top"].size
    rows = scan.select("layer", "site", "feature", dst=pl.col("pearson_top").arr.to_list(),
                       r=pl.col("pearson_r").arr.to_list(), rank=pl.lit(list(range(k)), pl.List(pl.Int32)))
    rows = rows.explode("dst", "r", "rank").filter(pl.col("dst") >= 0)
    return _frame(rows.with_columns(
        src_layer=pl.col("layer"), src_site=pl.col("site"), src_feature=pl.col("feature"), dst_layer=pl.col("layer") + 1,
        dst_site=pl.col("site"), dst_feature=pl.col("dst"),
        relation=pl.when(pl.col("rank") == 0).then(pl.lit("pearson")).otherwise(pl.lit("pearson_k")),
        score=pl.col("r"), confidence=pl.lit(None, pl.Float32), unjudged=pl.lit(None, pl.String)))


def evaluation_files(root: str | Path) -> list[Path]:
    """Each evaluation's features.parquet under a run (results/…/evaluation/DATA/SELECTION/)."""
    return sorted(Path(root).glob("evaluation/*/*/features.parquet"))


def edges_at(paths: dict, layer: int, site: str, index: int, direction: str) -> pl.DataFrame:
    """Every edge into (``direction`` 'back') or out of ('forward') feature layer/site/index,
    read from the files that can hold one (saematch.graph.results_paths). A file the run's
    summaries say it made but that is gone is named (saematch.graph.ResultsError)."""
    from .graph import check_not_lost, flow_path, matches_path, reading

    root = paths["root"]
    matches = paths.get("sites", {}).get(site, {})
    wanted = []  # (kind, layer of the file)
    if direction == "back":
        node = (pl.col("dst_layer") == layer) & (pl.col("dst_site") == site) & (pl.col("dst_feature") == index)
        wanted += [("matches", layer - 1)] + ([("flow", layer)] if site == "res" else [])
    else:
        node = (pl.col("src_layer") == layer) & (pl.col("src_site") == site) & (pl.col("src_feature") == index)
        wanted += [("matches", layer), ("flow", layer + 1 if site == "res" else layer)]
    frames = []
    for kind, L in wanted:
        path = matches.get(L) if kind == "matches" else flow_path(paths, L)  # flow_path names a lost file
        if path is None:
            if kind == "matches":
                check_not_lost(paths, matches_path(root, site, L))
            continue
        with reading(path):
            scan = pl.scan_parquet(path)
            scan = match_edges(scan, site, L) if kind == "matches" else flow_edges(scan, L)
            frames.append(scan.filter(node).collect())
    for path in evaluation_files(root):
        with reading(path):
            frames.append(pearson_edges(pl.scan_parquet(path)).filter(node).collect())
    return pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)


def edge_table(paths: dict) -> pl.LazyFrame:
    """Every edge of a run (all sites' matches, the flow files, the evaluations' Pearson
    partners), lazily: the table ``saematch sql`` calls ``edges``."""
    parts = [match_edges(pl.scan_parquet(p), site, L) for site, by_layer in paths.get("sites", {}).items()
             for L, p in sorted(by_layer.items())]
    parts += [flow_edges(pl.scan_parquet(p), L) for L, p in sorted(paths["flow"].items())]
    parts += [pearson_edges(pl.scan_parquet(p)) for p in evaluation_files(paths["root"])]
    return pl.concat(parts) if parts else pl.DataFrame(schema=SCHEMA).lazy()


def links(edges: pl.DataFrame, direction: str) -> list[dict]:
    """One candidate link per neighbour of a node from its residual relations (RESIDUAL) and
    its Pearson top-1 on data in ``edges`` (:func:`edges_at`): the neighbour, the relations that
    propose it, the best confidence among them (None where none has one), the decoder cosine
    (None for a Pearson partner alone), and its r on data where it is among the Pearson top-k
    (a neighbour only in ranks 2…k is not listed). Best first: confidence, then cosine."""
    other = ("src" if direction == "back" else "dst")
    key = [f"{other}_layer", f"{other}_site", f"{other}_feature"]
    res = edges.filter(pl.col("relation").is_in(RESIDUAL + ON_DATA))
    if not len(res):
        return []
    weights = ~pl.col("relation").is_in(ON_DATA)
    grouped = (res.sort("relation").group_by(key).agg(
        relations=pl.col("relation").filter(pl.col("relation") != "pearson_k"), confidence=pl.col("confidence").max(),
        score=pl.col("score").filter(weights).max(), unjudged=pl.col("unjudged").drop_nulls().first(),
        r=pl.col("score").filter(~weights).first())
        .filter(pl.col("relations").list.len() > 0)  # a neighbour only in the Pearson top-k is not a candidate
        .sort(["confidence", "score"], descending=True, nulls_last=True))
    return [{"layer": d[key[0]], "site": d[key[1]], "feature": d[key[2]], "relations": "+".join(d["relations"]),
             "confidence": d["confidence"], "score": d["score"], "r": d["r"], "unjudged": d["unjudged"]}
            for d in grouped.to_dicts()]
