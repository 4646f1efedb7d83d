"""Every figure the pipeline draws, from the tables the other modules compute: the summary's
matched cosines (saematch.summary), the survival curves (saematch.lifetimes), the evaluation
on data (saematch.evaluate), a traced graph as a picture (saematch.graph) and a steering
theme's grid (saematch.steer). Each ``plot_*``
saves its ``*_figure``, which returns the matplotlib Figure so that tests can inspect it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import networkx as nx
import numpy as np
import polars as pl

from .config import SITES
from .graph import layout


def _save(fig, path, dpi: int = 110, format: str | None = None) -> None:
    """Write ``fig`` to ``path`` (``format``: by default the suffix's) and free it, whatever happens."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=dpi, format=format)
    finally:
        plt.close(fig)


def plot_cosines(df: pl.DataFrame, out: str, title: str) -> None:
    """Save :func:`_cosines_figure` to ``out``."""
    _save(_cosines_figure(df, title), out)


# the summary figure's groups of features: label, colour
_GROUPS = {"persists": "#4c72b0", "dies": "#c44e52", "not judged": "#999999"}


def _group_of(df: pl.DataFrame) -> pl.Expr:
    """Each feature's group: 'not judged' (``unjudged`` holds why), else 'persists' or 'dies'."""
    judged = pl.col("unjudged").is_null() if "unjudged" in df.columns else pl.lit(True)
    return (pl.when(~judged).then(pl.lit("not judged"))
            .when(pl.col("persists").fill_null(False)).then(pl.lit("persists")).otherwise(pl.lit("dies")))


def _cosines_figure(df: pl.DataFrame, title: str):
    """One row per site (df: :func:`read_matches`): left, per pair L → L+1 the matched decoder
    cosine of the features the verdict declares persisting, of those it declares dying, and of
    those it did not judge (``unjudged``), side by side; right, how many features fall in each
    group (stacked). The legend gives each group's total over the pairs and why features were
    not judged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    df = df.with_columns(_group=_group_of(df))
    sites = sorted(df["site"].unique())
    fig, axes = plt.subplots(len(sites), 2, figsize=(13, 2.9 * len(sites)), squeeze=False, sharex=True,
                             width_ratios=(3, 2), layout="constrained")
    offset = {"persists": -0.27, "dies": 0.0, "not judged": 0.27}
    for (ax, bars), site in zip(axes, sites):
        sub = df.filter(pl.col("site") == site)
        layers = sorted(sub["layer"].unique())
        bottom = np.zeros(len(layers))
        handles, low = [], -0.1
        for group, colour in _GROUPS.items():
            g = sub.filter(pl.col("_group") == group)
            counts = np.array([g.filter(pl.col("layer") == L).height for L in layers])
            if not g.height:
                continue
            cos = g.filter(pl.col("cosine").is_not_null())
            data = [(L + offset[group], cos.filter(pl.col("layer") == L)["cosine"].to_numpy()) for L in layers]
            data = [(x, d) for x, d in data if len(d)]
            if data:
                ax.boxplot([d for _, d in data], positions=[x for x, _ in data], widths=0.24, showfliers=False,
                           patch_artist=True, boxprops=dict(facecolor=colour, alpha=0.6),
                           medianprops=dict(color="black"), manage_ticks=False)
                low = min(low, float(np.nanmin(np.concatenate([d for _, d in data]))))
            bars.bar(layers, counts, bottom=bottom, color=colour, alpha=0.8, width=0.7)
            bottom += counts
            label = f"{group} ({g.height})"
            if group == "not judged":
                why = g.group_by("unjudged", maintain_order=True).len()
                label = textwrap.fill("not judged: " + "; ".join(f"{str(w).split(' (')[0]} ({n})"
                                                                 for w, n in why.iter_rows()), 34)
            handles.append(Patch(facecolor=colour, alpha=0.7, label=label))
        ax.set_ylabel(f"{site}\nmatched cosine")
        ax.set_ylim(low, 1.02)
        ax.grid(alpha=0.3)
        bars.set_ylabel("features")
        bars.grid(alpha=0.3, axis="y")
        bars.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for ax in axes[-1]:
        ax.set_xlabel("layer L (pair L → L+1)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_title("matched cosine: persisting, dying, not judged")
    axes[0, 1].set_title("features per pair")
    fig.suptitle(title)
    return fig


def plot_survival(surv: pl.DataFrame, out: str, title: str) -> None:
    """Save :func:`_survival_figure` to ``out``."""
    _save(_survival_figure(surv, title), out)


def _survival_figure(surv: pl.DataFrame, title: str):
    """Survival curves, one line per site; whole numbers of layers on the k axis. A site with no
    survival beyond k = 0 (no link its verdict judged, e.g. the demo's att) is named in the legend
    as not judged instead of drawn as a lone point under the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for site in surv["site"].unique(maintain_order=True):
        s = surv.filter(pl.col("site") == site)
        if (s["k"] > 0).any():
            ax.plot(s["k"].to_numpy(), s["survival"].to_numpy(), marker="o", label=site)
        else:
            ax.plot([], [], " ", label=f"{site}: not judged (no link beyond k = 0)")
    ax.set_xlabel("k (layers later)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts layers: no 1.5
    ax.set_ylabel("share of layer-L features still alive")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_evaluation(table, calib, path: str, title: str, verdict=None, verdict_sites=None) -> None:
    """Save :func:`_evaluation_figure` to ``path``."""
    _save(_evaluation_figure(table, calib, title, verdict, verdict_sites), path)


# a reliability bin with fewer features than this is pooled with its neighbour in the figure
MIN_BIN_FEATURES = 5
_BINS_NOTE = f"numbers: features per bin;\nbins of fewer than {MIN_BIN_FEATURES} features are merged into a neighbour"


def _merged_bins(bins: list[dict], share: str, minimum: int = MIN_BIN_FEATURES) -> list[dict]:
    """Reliability bins (dicts with features, mean_confidence and ``share``) in confidence order,
    each pooled with the next until it holds ≥ ``minimum`` features; a short last run joins the
    bin before it. Pooled means are weighted by features, as if binned together."""
    def pool(run):
        n = sum(b["features"] for b in run)
        return {"features": n, "mean_confidence": sum(b["features"] * b["mean_confidence"] for b in run) / n,
                share: sum(b["features"] * b[share] for b in run) / n}

    out, run = [], []
    for b in sorted(bins, key=lambda b: b["mean_confidence"]):
        run.append(b)
        if sum(r["features"] for r in run) >= minimum:
            out.append(pool(run))
            run = []
    if run:
        out = out[:-1] + [pool(out[-1:] + run)]
    return out


def _reliability_curve(ax, bins: list[dict], share: str, style: str, colour, label: str, below: bool = False,
                       **kw) -> None:
    """One reliability curve of :func:`_merged_bins`, each point labelled with its features."""
    bins = _merged_bins(bins, share)
    x, y = [b["mean_confidence"] for b in bins], [b[share] for b in bins]
    ax.plot(x, y, style, color=colour, label=label, **kw)
    for b in bins:
        ax.annotate(str(b["features"]), (b["mean_confidence"], b[share]), xytext=(4, -9 if below else 4),
                    textcoords="offset points", fontsize=6, color=colour)


def _evaluation_figure(table, calib, title: str, verdict=None, verdict_sites=None):
    """Matching score and agreement per layer and site; EV of encode–permute–decode and the
    baselines on the residual site; the verdict's calibration on data; with ``verdict``
    (verdict.parquet) and ``verdict_sites`` (verdict.tsv), a fourth panel: the data-free
    verdict's reliability against the on-data label, and the re-fitted one's (held out).
    Reliability points give their bin's features; bins of fewer than :data:`MIN_BIN_FEATURES`
    features are pooled with a neighbour (:func:`_merged_bins`). Legends sit in a row below
    their panels, inside the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from .evaluate import METHODS  # lazily: saematch.evaluate imports torch

    panels = 3 + (verdict is not None)
    fig, (axes, keys) = plt.subplots(2, panels, figsize=(5 * panels, 6.6), height_ratios=(3.2, 1), layout="constrained")
    for key in keys:  # a row of its own for the legends: the layout keeps them inside the figure
        key.axis("off")
    colours = {"res": "C0", "mlp": "C1", "att": "C2"}
    styles = {"matching score": "o-", "… by chance": ":", "partner = Pearson top-1": "s--"}
    for (site,), f in table.group_by("site", maintain_order=True):
        c = colours.get(site)
        for column, style in zip(("matching_score", "matching_score_chance", "agree_match"), styles.values()):
            axes[0].plot(f["layer"], f[column], style, color=c)
    handles = [Line2D([], [], color="black", linestyle=st.lstrip("os"), marker=st[0] if st[0] in "os" else None,
                      label=name) for name, st in styles.items()]
    handles += [Line2D([], [], color=colours.get(s), linewidth=6, label=s) for s in table["site"].unique(maintain_order=True)]
    axes[0].set(xlabel="pair (L, L+1)", ylabel="share", ylim=(0, 1.02), title="matches on data")
    keys[0].legend(handles=handles, fontsize=7, loc="upper center", ncol=2)
    res = table.filter(table["site"] == "res")
    if len(res) and "ev_permute" in res.columns:
        for m, style in zip(METHODS, ("o-", "s--", "^-", "v:", "D-", "x--")):  # near-equal lines stay visible
            axes[1].plot(res["layer"], res[f"ev_{m}"].clip(-1, 1), style, label=m, markersize=6)
        axes[1].set(xlabel="pair (L, L+1)", ylabel="explained variance (clipped at −1)", ylim=(-1.05, 1.05),
                    title="residual: the replaced state's EV")
        keys[1].legend(*axes[1].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=2)
    else:
        axes[1].axis("off")
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for (site,), f in calib.group_by("site", maintain_order=True) if len(calib) else []:
        _reliability_curve(axes[2], f.to_dicts(), "share_correlated", "o-", colours.get(site), site)
    axes[2].plot([0, 1], [0, 1], ":", color="grey")
    axes[2].set(xlabel="verdict confidence (bin mean)\n" + _BINS_NOTE, ylabel="share with partner r ≥ corr_level",
                xlim=(-0.02, 1.08), ylim=(-0.02, 1.08), title="the verdict on data")
    keys[2].legend(*axes[2].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=3)
    if verdict is not None:
        plot_verdict_on_data(axes[3], verdict, verdict_sites, colours, keys[3])
    fig.suptitle(title)
    return fig


def plot_verdict_on_data(ax, verdict, sites, colours: dict, legend_ax=None) -> None:
    """Per site, on its labelled features: the data-free confidence's reliability (hollow,
    dashed) and the re-fitted, cross-fitted one's (filled), each point labelled with its bin's
    features (bins of fewer than :data:`MIN_BIN_FEATURES` pooled with a neighbour); a site not
    judged says why. The legend goes in ``legend_ax`` (by default ``ax``)."""
    import polars as pl

    from .calibrate import reliability

    for (site,), f in verdict.filter(pl.col("label").is_not_null()).group_by("site", maintain_order=True):
        row = sites.filter(pl.col("site") == site).row(0, named=True)
        free = f.filter(pl.col("data_free_confidence").is_not_null())  # null: not judged from the weights
        before = reliability(free["data_free_confidence"].to_numpy(), free["label"].to_numpy())
        c = colours.get(site)
        _reliability_curve(ax, before, "share_partner", "o--", c, f"{site} data-free: ECE {row['match_ece_before']:.3f}"
                           if free.height else f"{site} data-free: not judged from the weights",
                           below=True, mfc="none", alpha=0.7)
        judged = f.filter(pl.col("confidence").is_not_null())
        if row["match_unjudged"] or not judged.height:
            ax.plot([], [], " ", label=f"{site} on data: not judged ({(row['match_unjudged'] or '').split(' (')[0]})")
            continue
        after = reliability(judged["confidence"].to_numpy(), judged["label"].to_numpy())
        _reliability_curve(ax, after, "share_partner", "o-", c, f"{site} on data (held out): ECE {row['match_ece_after']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    tokens = sites["tokens"].max() if sites.height else 0
    ax.set(xlabel="confidence (bin mean)\n" + _BINS_NOTE, ylabel="share whose partner is its Pearson top-1",
           xlim=(-0.02, 1.08), ylim=(-0.02, 1.08), title=f"the verdict re-fitted on {tokens} tokens")
    (legend_ax or ax).legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=1)


def plot_trace(G: nx.DiGraph, path: str | Path, format: str | None = None) -> None:
    """Save :func:`_trace_figure` (``format`` png or svg; by default the suffix's)."""
    _save(_trace_figure(G), path, dpi=150, format=format)


def _trace_figure(G: nx.DiGraph):
    """The graph as a figure (:func:`saematch.graph.layout`): an arrow u → v per edge, its width by score;
    att → res arcs bend over the mlp column; residual labels on the left of their node, module
    labels on the right; labels, arcs and arrows inside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = layout(G)
    layers = sorted({a["layer"] for _, a in G.nodes(data=True)})
    crowd = max([sum(1 for m in pos.values() if m[0] == x and round(m[1]) == round(y)) for x, y in pos.values()] or [1])
    fig, ax = plt.subplots(figsize=(6.4, 1.4 + 0.6 * len(layers) * max(1.0, 0.5 * crowd)))
    colour = {"res": "#4c72b0", "mlp": "#dd8452", "att": "#55a868"}
    for u, v, a in G.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        bend = 0.15 if abs(y0 - y1) < 0.5 and abs(x1 - x0) > 1 else 0.0  # att → res arcs over the mlp node
        width = 0.5 + 4 * max(a["score"], 0)
        ax.annotate("", (x1, y1), (x0, y0), zorder=1, arrowprops=dict(
            arrowstyle="-|>", mutation_scale=8 + 2 * width, shrinkA=7, shrinkB=7, color="#888", lw=width,
            connectionstyle=f"arc3,rad={bend}"))
    for n, a in G.nodes(data=True):
        x, y = pos[n]
        ax.scatter([x], [y], s=140, color=colour[a["site"]], zorder=2, edgecolor="black" if n == G.graph.get("root") else "none")
        left = a["site"] == "res"  # edges reach a residual feature from above and from the right
        ax.annotate(n, (x, y), xytext=(-8 if left else 8, -3), textcoords="offset points", fontsize=7,
                    ha="right" if left else "left")
    ax.set_xticks(range(3), SITES)
    ax.set_yticks(layers)
    ax.set_ylabel("layer")
    ax.set_xlim(-0.85, 2.85)
    ax.set_ylim(layers[-1] + 0.6, layers[0] - 0.75)  # inverted: layer 0 at the top, room for the arcs above a row
    ax.set_title(f"{G.graph.get('root', '')} ({G.graph.get('direction', '')})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_steering(summary: pl.DataFrame, path: str, title: str) -> None:
    """Save :func:`_steering_figure` to ``path``."""
    _save(_steering_figure(summary, title), path)


def _steering_figure(summary: pl.DataFrame, title: str):
    """A theme's grid (saematch.steer.run_theme's summary) as Feature Flow's Figs. 9–11 draw it:
    one column per steered layer; top, the theme's score (keyword share where the theme has
    keywords, else the seeds' presence) against the strength (s or r), single-layer and
    cumulative steering as two lines per schedule, mean ± s.e., the unsteered value dashed;
    bottom, the unsteered model's perplexity of the same texts (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = summary.filter(pl.col("how") == "none").row(0, named=True)
    steered = summary.filter((pl.col("how") != "none") & (pl.col("n_features") > 0))
    metric = "keyword_share" if base.get("keyword_share") is not None else "presence"
    how = summary.filter(pl.col("how") != "none")["how"].first()
    layers = sorted(set(summary.filter(pl.col("how") != "none")["layer"].to_list()))
    fig, axes = plt.subplots(2, max(len(layers), 1), figsize=(3.4 * max(len(layers), 1) + 0.6, 5.6),
                             squeeze=False, sharex=True, sharey="row")
    styles = {"single": "-", "cumulative": "--"}
    colours = {None: "#4c72b0", "constant": "#4c72b0", "linear": "#55a868", "exponential": "#c44e52"}
    for j, L in enumerate(layers):
        top, bottom = axes[0, j], axes[1, j]
        for (scope, schedule), g in steered.filter(pl.col("layer") == L).group_by(
                "scope", "schedule", maintain_order=True):
            g = g.sort("value")
            label = scope + (f", {schedule}" if schedule else "")
            for ax, col in ((top, metric), (bottom, "perplexity")):
                se = g[f"{col}_se"].fill_null(0).to_numpy() if f"{col}_se" in g.columns else 0
                ax.errorbar(g["value"].to_numpy(), g[col].to_numpy(), yerr=se, ls=styles[scope],
                            color=colours[schedule], marker="o", ms=3, capsize=2, label=label)
        if steered.filter(pl.col("layer") == L).height == 0:
            top.text(0.5, 0.5, "no feature of the theme\nat these layers", ha="center", va="center",
                     transform=top.transAxes, color="#777777")
        for ax, col in ((top, metric), (bottom, "perplexity")):
            if base.get(col) is not None:
                ax.axhline(base[col], color="#777777", ls=":", lw=1, label="unsteered")
            ax.grid(alpha=0.3)
        top.set_title(f"layer {L}")
        bottom.set_yscale("log")
        bottom.set_xlabel("s (activation)" if how == "activate" else "r (deactivation)")
        if how == "deactivate" and steered.height and steered["value"].min() < -4:
            bottom.set_xscale("symlog", linthresh=1)  # the paper's r from 0 to −64
        elif how == "activate" and steered.height and steered["value"].min() > 0 and (
                steered["value"].max() >= 8 * steered["value"].min()):
            bottom.set_xscale("log", base=2)  # strengths that double
    axes[0, 0].set_ylabel("keyword share of the words" if metric == "keyword_share"
                          else "seeds' presence (mean activation)")
    axes[1, 0].set_ylabel("perplexity (unsteered model)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(len(seen), 5), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
