"""The verdict re-fitted on data: where an evaluation has run, its labels calibrate the verdict.

The data-free verdict (saematch.verdict, saematch.calibrate) is fitted once, on other models'
SAEs; on a given model it can be over- or under-confident. An evaluation on the model's own
activations (saematch.evaluate) gives each feature a label, and this module refits the
verdict to those labels.

**Label and level.** For the assigned partner (``match``) a feature of layer L is labelled
when it fired on at least ``min_active`` of the evaluation's tokens (``evaluate.min_active``)
and has a Pearson partner; its label is ``match == pearson_top[0]``: the assignment's partner
is its activation partner, the next-layer feature of highest Pearson r of the JumpReLU codes
on the text (top-1 level; Balcells et al.). For the decoder top-1 partner likewise with
``top1``. The confidence on data estimates P(label) for each feature.

**Model.** A logistic model (saematch.calibrate.logistic_fit) of the label on the verdict's
evidence (:func:`evidence_matrix`: logit of the data-free confidence, and the verdict's own
evidence columns where the matches carry them), one indicator per site and its product with
the logit: one model across every layer and site of the evaluation, each site with its own
intercept and slope.

**Cross-fitting.** The labelled features are split at random into 5 folds (seeded); each
feature's confidence comes from the model fitted on the other folds, so its own label never
sets its own confidence, and its held-out ECE and precision/recall are honest. A model fitted
on all labelled features gives the rest a confidence ("fitted"): features alive on the
evaluation's tokens without a label, and the pairs of the run that the evaluation did not read.

**Not judged** (null confidence, the reason named in ``unjudged`` / ``top1_unjudged``):
a feature dead or nearly dead on the evaluation's tokens (active < min_active), and every
feature of a site whose held-out fit is at chance (held-out AUC within two null standard
errors of 0.5, Hanley–McNeil) or that has too few labels to tell (fewer than
:data:`MIN_CLASS` features with, or without, their activation partner).

``persists`` = confidence ≥ the site's cut (``match.cut``, 0.5), as for the data-free verdict.
A data-free confidence the verdict left null enters the evidence as 0.5; the "before" numbers
count only the features the data-free verdict judged.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from . import calibrate

PARTNERS = {"match": ("match", "confidence", "evidence"), "top1": ("top1", "top1_confidence", "top1_evidence")}
PREFIX = {"match": "", "top1": "top1_"}
MIN_CLASS = 5  # fewer labelled features with (or without) the partner than this: too few to judge a site
FOLDS = 5


def evidence_matrix(frame: pl.DataFrame, partner: str) -> tuple[np.ndarray, list[str]]:
    """The evidence the refit uses for ``partner`` ("match" or "top1"): logit of the data-free
    confidence (clipped to [1e-4, 1 − 1e-4]), then the matches' own evidence columns
    (``evidence`` / ``top1_evidence``, saematch.calibrate.evidence) where every row has them.
    Returns (n, k) float64 and the column names."""
    _, conf_col, ev_col = PARTNERS[partner]
    conf = np.clip(frame[conf_col].fill_null(0.5).to_numpy().astype(np.float64), 1e-4, 1 - 1e-4)
    columns, names = [np.log(conf / (1 - conf))], [f"logit_{conf_col}"]
    if ev_col in frame.columns and frame[ev_col].null_count() == 0 and len(frame):
        ev = np.nan_to_num(calibrate.evidence(frame, partner))
        columns += list(ev.T)
        names += [f"{ev_col}_{i}" for i in range(ev.shape[1])]
    return np.column_stack(columns), names


def design(frame: pl.DataFrame, partner: str, sites: list[str]) -> tuple[np.ndarray, list[str]]:
    """Evidence plus, per site, its indicator and the indicator times the logit of the
    confidence: one model across layers and sites, each site its own intercept and slope (a
    site at chance does not flatten the others' slope)."""
    X, names = evidence_matrix(frame, partner)
    site = frame["site"].to_numpy()
    cols, extra = [X], []
    for s in sites:
        ind = (site == s).astype(np.float64)
        cols += [ind[:, None], (ind * X[:, 0])[:, None]]
        extra += [f"site_{s}", f"site_{s}_x_{names[0]}"]
    return np.column_stack(cols), names + extra


def labels(frame: pl.DataFrame, partner: str, min_active: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, label): labelled where the feature fired on ≥ ``min_active`` tokens and has a
    Pearson partner; label: its ``partner`` is its Pearson top-1 (module docstring)."""
    active = frame["active"].fill_null(-1).to_numpy()
    best = frame["pearson_top"].list.first() if frame["pearson_top"].dtype == pl.List else frame["pearson_top"].arr.first()
    best = best.fill_null(-1).to_numpy()
    labelled = (active >= min_active) & (best >= 0)
    return labelled, labelled & (frame[PARTNERS[partner][0]].fill_null(-1).to_numpy() == best)


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties halved); NaN without both classes."""
    p, y = np.asarray(p, np.float64), np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    _, start, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    ranks[order] = np.repeat(start + (counts + 1) / 2, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def site_verdict(p: np.ndarray, y: np.ndarray) -> tuple[float, str | None]:
    """(held-out AUC, why the site cannot be judged or None) from a site's held-out p and labels."""
    n1, n0 = int(y.sum()), int((~y).sum())
    if min(n1, n0) < MIN_CLASS:
        return auc(p, y), (f"too few labels on data ({n1 + n0} labelled, {n1} with their activation partner; "
                           f"{MIN_CLASS} of each needed)")
    a = auc(p, y)
    level = 0.5 + 2 * np.sqrt((n1 + n0 + 1) / (12 * n1 * n0))  # AUC under no signal: 0.5 ± this s.e.
    if a <= level:
        return a, f"site at chance on data (held-out AUC {a:.2f} ≤ {level:.2f}, chance + 2 s.e., on {n1 + n0} features)"
    return a, None


def _cut_of(cut: float | dict, sites: np.ndarray) -> np.ndarray:
    return np.array([cut[s] if isinstance(cut, dict) else cut for s in sites], np.float64)


def refit(frame: pl.DataFrame, partner: str, min_active: int, cut: float | dict, sites: list[str],
          folds: int = FOLDS, seed: int = 0) -> tuple[dict, list[dict]]:
    """One partner's refit over ``frame`` (matches joined with the evaluation's features).
    Returns per-row columns (confidence, persists, how, unjudged, label) and per-site stats."""
    n = len(frame)
    labelled, y = labels(frame, partner, min_active)
    X, names = design(frame, partner, sites)
    p = np.full(n, np.nan)
    how = np.full(n, None, object)
    if labelled.any():
        p[labelled] = calibrate.cross_fit(X[labelled], y[labelled], names, folds=folds, seed=seed)
        how[labelled] = "cross-fitted"
        rest = ~labelled
        if rest.any():
            p[rest] = calibrate.logistic_predict(calibrate.logistic_fit(X[labelled], y[labelled], names), X[rest])
            how[rest] = "fitted"
    site = frame["site"].to_numpy()
    active = frame["active"].to_numpy()
    evaluated = ~frame["active"].is_null().to_numpy()
    unjudged = np.full(n, None, object)
    dead = evaluated & (np.nan_to_num(active.astype(np.float64), nan=-1) < min_active)
    for i in np.flatnonzero(dead):
        unjudged[i] = f"dead on data (active {int(active[i])} < min_active {min_active})"
    before = frame[PARTNERS[partner][1]].fill_null(np.nan).to_numpy().astype(np.float64)
    said = np.isfinite(before)  # the data-free verdict judged it (saematch.verdict may not)
    cuts = _cut_of(cut, site)
    stats = []
    for s in sites:
        in_site = site == s
        m = in_site & labelled
        a, why = site_verdict(p[m], y[m])
        if why:
            unjudged[in_site & ~dead] = why
        b = m & said
        row = {"labelled": int(m.sum()), "label_rate": float(y[m].mean()) if m.any() else float("nan"),
               "auc": a, "ece_before": calibrate.ece(before[b], y[b]), "ece_after": calibrate.ece(p[m], y[m])}
        for when, q, rows in (("before", before, b), ("after", p, m)):
            pk = calibrate.precision_kept(q[rows] >= cuts[rows], y[rows])
            row.update({f"{k}_{when}": v for k, v in pk.items()})
        row["unjudged"] = why
        stats.append(row)
    judged = unjudged == None  # noqa: E711 (object array)
    confidence = np.where(judged, p, np.nan)
    how = np.where(judged, how, None)
    persists = np.where(judged & np.isfinite(confidence), confidence >= cuts, None)
    return ({"confidence": confidence, "persists": persists, "how": how, "unjudged": unjudged,
             "label": np.where(labelled, y, None)}, stats)


def verdict_on_data(matches: pl.DataFrame, features: pl.DataFrame, min_active: int, cut: float | dict = 0.5,
                    tokens: dict | None = None, data: str = "", folds: int = FOLDS,
                    seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The verdict re-fitted on one evaluation (module docstring).

    ``matches``: every pair of the run (site, layer, feature, match, top1, confidence,
    top1_confidence, optionally evidence / top1_evidence); ``features``: the evaluation's
    features.parquet (site, layer, feature, active, pearson_top). ``tokens``: site → tokens the
    evaluation read; ``data``: its data label. Returns the per-feature table and the per-site
    summary (before: the data-free verdict, after: the refit; held-out, on labelled features)."""
    keys = ["site", "layer", "feature"]
    frame = (matches.with_columns(pl.col("layer").cast(pl.Int32), pl.col("feature").cast(pl.Int32))
             .join(features.select(*keys, "active", "pearson_top")
                   .with_columns(pl.col("layer").cast(pl.Int32), pl.col("feature").cast(pl.Int32)),
                   on=keys, how="left")
             .sort(keys))
    sites = list(dict.fromkeys(frame["site"].to_list()))
    cols, summary = {}, {s: {} for s in sites}
    for partner in PARTNERS:
        out, stats = refit(frame, partner, min_active, cut, sites, folds, seed)
        pre = PREFIX[partner]
        cols.update({f"{pre}{k}": v for k, v in out.items()})
        for s, row in zip(sites, stats):
            summary[s]["labelled"] = row.pop("labelled")  # the same features for both partners
            summary[s].update({f"{partner}_{k}": v for k, v in row.items()})
    table = frame.select(*keys, "active", pl.col("confidence").alias("data_free_confidence"),
                         pl.col("top1_confidence").alias("top1_data_free_confidence")).with_columns(
        pl.Series("confidence", cols["confidence"], pl.Float32, nan_to_null=True),
        pl.Series("top1_confidence", cols["top1_confidence"], pl.Float32, nan_to_null=True),
        pl.Series("persists", list(cols["persists"]), pl.Boolean),
        pl.Series("top1_persists", list(cols["top1_persists"]), pl.Boolean),
        pl.Series("how", list(cols["how"]), pl.String),
        pl.Series("top1_how", list(cols["top1_how"]), pl.String),
        pl.Series("unjudged", list(cols["unjudged"]), pl.String),
        pl.Series("top1_unjudged", list(cols["top1_unjudged"]), pl.String),
        pl.Series("label", list(cols["label"]), pl.Boolean),
        pl.Series("top1_label", list(cols["top1_label"]), pl.Boolean),
    )
    site_col = frame["site"].to_numpy()
    active = frame["active"].fill_null(-1).to_numpy()
    rows = [{"site": s, "data": data, "tokens": (tokens or {}).get(s), "features": int((site_col == s).sum()),
             "evaluated": int(((site_col == s) & (active >= 0)).sum()),
             "dead": int(((site_col == s) & (active >= 0) & (active < min_active)).sum()),
             "min_active": min_active, **summary[s]} for s in sites]
    return table, pl.DataFrame(rows, infer_schema_length=None)


def read_matches(paths: list[str]) -> pl.DataFrame:
    """Every pair's matches (saematch.edges.read_matches: site and layer from the path), the
    columns the refit reads."""
    from .edges import read_matches as read_all

    wanted = ["site", "layer", "feature", "match", "top1", "confidence", "top1_confidence", "evidence", "top1_evidence"]
    df = read_all(paths)
    return df.select([c for c in wanted if c in df.columns])


def tokens_per_site(pairs: pl.DataFrame) -> dict[str, int]:
    """The tokens each site's evaluation read (pairs.parquet)."""
    return {s: int(t) for s, t in pairs.group_by("site").agg(pl.col("tokens").max()).iter_rows()}

