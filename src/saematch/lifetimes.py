"""Feature lifetimes: each site's consecutive matches composed into chains across layers.

SAE Match §3.2 composes permutations, pi_AC = pi_BC[pi_AB]; here a link L → L+1 is followed
only where the verdict says the feature persists, so a chain ends where its feature dies and
a feature with no persisting predecessor starts a new chain (a birth). Every feature of every
selected layer is in exactly one chain. Layers that are not consecutive (a gap in the
selection) start new chains.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .config import layer_runs

SCHEMA = {"site": pl.String, "chain": pl.Int64, "layer": pl.Int32, "feature": pl.Int32, "confidence": pl.Float32}


def chains(pairs: dict[int, dict[str, np.ndarray]], n_features: dict[int, int], site: str = "res") -> pl.DataFrame:
    """Long-form chains of one site: one row per (chain, layer).

    pairs[L]: the matches of pair (L, L+1): match (n_L,) int (−1 none), persists (n_L,) bool,
    confidence (n_L,) float. n_features[L]: features of layer L, for every layer of the pairs
    and the layers after them. Returns columns site, chain (int64, numbered from 0 in order of
    start layer and feature), layer, feature, confidence (of the link into this layer; null
    where the chain starts).
    """
    layers = sorted(set(pairs) | {L + 1 for L in pairs})
    frames, next_id, current, prev_layer = [], 0, None, None
    for L in layers:
        n = n_features[L]
        ids, conf = np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
        if current is not None and prev_layer == L - 1 and (L - 1) in pairs:
            p = pairs[L - 1]
            link = np.asarray(p["persists"], bool) & (np.asarray(p["match"]) >= 0)
            to = np.asarray(p["match"])[link].astype(np.int64)
            ids[to] = current[link]
            conf[to] = np.asarray(p["confidence"], np.float32)[link]
        born = ids < 0
        ids[born] = np.arange(next_id, next_id + born.sum())
        next_id += int(born.sum())
        frames.append(pl.DataFrame({"site": site, "chain": ids, "layer": np.full(n, L, np.int32),
                                    "feature": np.arange(n, dtype=np.int32), "confidence": conf},
                                   schema=SCHEMA).with_columns(pl.col("confidence").fill_nan(None)))
        current, prev_layer = ids, L
    return pl.concat(frames).sort("chain", "layer") if frames else pl.DataFrame(schema=SCHEMA)


def alive(long: pl.DataFrame) -> pl.DataFrame:
    """The rows of features that are features: without the dead ones (column ``dead``, where
    :func:`chains_of_files` found any). A dead feature neither persists nor dies."""
    return long.filter(~pl.col("dead").fill_null(False)) if "dead" in long.columns else long


def _ends(long: pl.DataFrame) -> pl.DataFrame:
    """Per chain: its first and last layer, and whether its end is unknown (``open``: its last
    feature's link onward was not judged, column ``unjudged``: it may live on)."""
    last = pl.col("unjudged").sort_by("layer").last() if "unjudged" in long.columns else pl.lit(False)
    first = pl.col("unjudged_in").sort_by("layer").first() if "unjudged_in" in long.columns else pl.lit(False)
    return long.group_by("site", "chain").agg(start=pl.col("layer").min(), end=pl.col("layer").max(),
                                              open=last.fill_null(False), open_start=first.fill_null(False))


def births_deaths(long: pl.DataFrame) -> pl.DataFrame:
    """Per site and layer: features, births (chains starting there; null at the first layer of
    a run of consecutive layers, where nothing came before) and deaths (chains ending there;
    null at a run's last layer, where nothing follows). Dead features are left out; a chain
    whose end was not judged (``open``) is not a death, nor one whose start is the partner of
    a feature whose link was not judged a birth; a layer whose every feature went unjudged has
    no deaths (null), and the layer after it no births (null)."""
    long = alive(long)
    spans = _ends(long)
    rows = []
    for site in long["site"].unique(maintain_order=True):
        s = spans.filter(pl.col("site") == site)
        at_site = long.filter(pl.col("site") == site)
        layer_counts = at_site.group_by("layer").len()
        count = dict(zip(layer_counts["layer"].to_list(), layer_counts["len"].to_list()))
        judged = set(at_site.filter(~pl.col("unjudged").fill_null(False))["layer"].to_list()) \
            if "unjudged" in at_site.columns else set(count)
        for block in layer_runs(count):
            for L in block:
                rows.append({"site": site, "layer": L, "features": count[L],
                             "births": None if L == block[0] or L - 1 not in judged
                             else int(((s["start"] == L) & ~s["open_start"]).sum()),
                             "deaths": None if L == block[-1] or L not in judged
                             else int(((s["end"] == L) & ~s["open"]).sum())})
    return pl.DataFrame(rows, schema={"site": pl.String, "layer": pl.Int32, "features": pl.Int64,
                                      "births": pl.Int64, "deaths": pl.Int64})


def survival(long: pl.DataFrame) -> pl.DataFrame:
    """Per site and k ≥ 0: the share of layer-L features whose chain is still alive at L + k,
    averaged over the layers L with L + k in the same run of consecutive layers. Dead features
    are left out, and so is a feature whose chain ended before L + k at a link that was not
    judged (alive or not is unknown); a site with no such share for k has no row."""
    long = alive(long)
    df = long.join(_ends(long).drop("start"), on=["site", "chain"])
    rows = []
    for site in df["site"].unique(maintain_order=True):
        s = df.filter(pl.col("site") == site)
        for block in layer_runs(s["layer"].unique().to_list()):
            for k in range(len(block)):
                for L in block[: len(block) - k]:
                    at = s.filter((pl.col("layer") == L) & ~((pl.col("end") < L + k) & pl.col("open")))
                    if at.height:
                        rows.append({"site": site, "k": k, "alive": float((at["end"] >= L + k).mean())})
    if not rows:
        return pl.DataFrame(schema={"site": pl.String, "k": pl.Int32, "survival": pl.Float64, "layers": pl.Int64})
    return (pl.DataFrame(rows).group_by("site", "k").agg(survival=pl.col("alive").mean(), layers=pl.len())
            .with_columns(pl.col("k").cast(pl.Int32)).sort("site", "k"))


def lengths(long: pl.DataFrame) -> pl.DataFrame:
    """Per site: how many chains span 1, 2, … layers (chains that touch the first or last
    selected layer are cut off there: their length is a lower bound; dead features left out)."""
    return (alive(long).group_by("site", "chain").agg(length=pl.len()).group_by("site", "length")
            .agg(chains=pl.len()).sort("site", "length"))


def chains_of_files(paths: list[str]) -> pl.DataFrame:
    """:func:`chains` of every site in the given matches files (results/…/site=S/layer=L/…), with
    a ``dead`` column where any feature is dead (the matches' ``dead``; the last layer's from
    its pair's provenance, ``verdict.dead_dst``) and ``unjudged`` (its link onward was not
    judged: the matches' ``unjudged`` is set)."""
    from .edges import read_matches
    from .write import read_provenance

    rows = read_matches(paths)
    provenance = [read_provenance(p) for p in paths]
    n_dst = {(pv["site"], pv["layer"] + 1): pv["n_dst"] for pv in provenance}
    dead = set()  # (site, layer, feature): a layer's own dead rows, and the last layer's from its pair's provenance
    if "dead" in rows.columns:
        dead |= set(rows.filter(pl.col("dead").fill_null(False)).select("site", "layer", "feature").iter_rows())
    for pv in provenance:
        dead |= {(pv["site"], pv["layer"] + 1, i) for i in pv.get("verdict", {}).get("dead_dst", [])}
    frames = []
    for site in rows["site"].unique(maintain_order=True):
        s = rows.filter(pl.col("site") == site).sort("layer", "feature")
        pairs, n = {}, {}
        for (L,), g in s.group_by("layer", maintain_order=True):
            pairs[L] = {"match": g["match"].fill_null(-1).to_numpy(), "persists": g["persists"].to_numpy(),
                        "confidence": g["confidence"].to_numpy()}
            n[L] = g.height
        for (site_, L), count in n_dst.items():
            if site_ == site:
                n.setdefault(L, count)
        frames.append(chains(pairs, n, site))
    long = pl.concat(frames)
    if "unjudged" in rows.columns:  # a feature whose link onward the verdict did not judge, and its partner
        out = rows.filter(pl.col("unjudged").is_not_null())
        into = out.filter(pl.col("match").is_not_null()).select("site", layer=pl.col("layer") + 1,
                                                                 feature=pl.col("match").cast(pl.Int32))
        for col, marks in (("unjudged", out.select("site", "layer", "feature")), ("unjudged_in", into)):
            long = long.join(marks.unique().with_columns(**{col: pl.lit(True)}), on=["site", "layer", "feature"],
                             how="left").with_columns(pl.col(col).fill_null(False))
    if dead:
        marks = pl.DataFrame(list(dead), schema={"site": pl.String, "layer": pl.Int32, "feature": pl.Int32}, orient="row")
        long = long.join(marks.with_columns(dead=pl.lit(True)), on=["site", "layer", "feature"], how="left").with_columns(
            pl.col("dead").fill_null(False))
    return long
