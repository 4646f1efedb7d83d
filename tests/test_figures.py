"""The figures and the viewer answer the question: persisting apart from dying features,
legends and labels inside the frame, reliability bins that hold enough features, integer layer
offsets, arrows that point u → v. Each figure is built from frames written here and inspected
as the matplotlib Figure that the plot function saves (the viewer: rendered by chromium)."""

import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from saematch import graph as fg  # noqa: E402
from saematch import figures  # noqa: E402
from saematch.evaluate import METHODS  # noqa: E402
from saematch.figures import _cosines_figure, _evaluation_figure, _survival_figure, _trace_figure  # noqa: E402


def texts(fig) -> list[str]:
    """Every visible non-empty text of the figure (legends, labels, annotations)."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def inside(frame_of, artist, renderer, slack: float = 1.0) -> bool:
    """The artist's extent lies in the figure's (or an Axes') box, give or take ``slack`` pixels."""
    frame = frame_of.bbox
    box = artist.get_window_extent(renderer)
    return (box.x0 >= frame.x0 - slack and box.y0 >= frame.y0 - slack
            and box.x1 <= frame.x1 + slack and box.y1 <= frame.y1 + slack)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --- summary ---------------------------------------------------------------------------------

def test_the_summary_figure_shows_persisting_and_dying_features_apart_and_names_the_unjudged():
    rows = []
    for L in (0, 1):
        rows += [{"site": "res", "layer": L, "feature": i, "cosine": 0.9, "persists": True, "unjudged": None} for i in range(6)]
        rows += [{"site": "res", "layer": L, "feature": 6 + i, "cosine": 0.1, "persists": False, "unjudged": None}
                 for i in range(4)]
        rows += [{"site": "att", "layer": L, "feature": i, "cosine": 0.5, "persists": False,
                  "unjudged": "no verdict model for this site"} for i in range(5)]
    fig = _cosines_figure(pl.DataFrame(rows), "toy")
    words = " ".join(texts(fig))
    assert re.search(r"persists \(12\)", words), words  # res: 6 per pair, two pairs
    assert re.search(r"dies \(8\)", words), words
    assert "not judged: no verdict model for this site (10)" in words.replace("\n", " "), words



def test_the_summary_figure_names_its_panels_lists_every_unjudged_reason_and_shows_cosines_down_to_minus_0_1():
    rows = [{"site": "res", "layer": 0, "feature": i, "cosine": 0.05 * i, "persists": i > 3,
             "unjudged": ("near-duplicate" if i == 1 else "dead (never fires)" if i == 2 else None)} for i in range(8)]
    fig = _cosines_figure(pl.DataFrame(rows), "toy")
    cos_ax, bars = fig.axes[0], fig.axes[1]
    assert cos_ax.get_title() == "matched cosine: persisting, dying, not judged" and bars.get_title() == "features per pair"
    labels = [t.get_text().replace("\n", " ") for t in bars.get_legend().get_texts()]
    # each reason up to its first parenthesis, with its count
    assert labels == ["persists (4)", "dies (2)", "not judged: near-duplicate (1); dead (1)"]
    assert cos_ax.get_ylim() == pytest.approx((-0.1, 1.02))  # every cosine ≥ 0 here: the axis still starts at −0.1
    rows[5]["cosine"] = -0.4
    assert _cosines_figure(pl.DataFrame(rows), "toy").axes[0].get_ylim()[0] == pytest.approx(-0.4)


@pytest.mark.parametrize("plot, frame", [
    ("plot_cosines", pl.DataFrame([{"site": "res", "layer": 0, "feature": 0, "cosine": 0.5, "persists": True, "unjudged": None}])),
    ("plot_survival", pl.DataFrame({"site": ["res", "res"], "k": [0, 1], "survival": [1.0, 0.5]})),
])
def test_each_plot_function_writes_its_figure_as_a_png_at_the_path_given(tmp_path, plot, frame):
    out = tmp_path / "f.png"
    getattr(figures, plot)(frame, str(out), "toy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # and frees it

# --- evaluation ------------------------------------------------------------------------------

def evaluation_inputs(small_bin: int = 2):
    """Three sites over two pairs (att not judged, with the long reason a real run gives);
    res calibration bins of 40, ``small_bin`` and 30 features; a res verdict whose confidences
    fill a bin of 40, one of 3 and one of 25."""
    table = []
    for site in ("att", "mlp", "res"):
        for L in (0, 1):
            table.append({"site": site, "layer": L, "matching_score": 0.6, "matching_score_chance": 0.1,
                          "agree_match": 0.5, **{f"ev_{m}": 0.5 for m in METHODS}})
    calib = pl.DataFrame([{"site": "res", "bin": "0.1–0.2", "features": 40, "mean_confidence": 0.15, "share_correlated": 0.2},
                          {"site": "res", "bin": "0.5–0.6", "features": small_bin, "mean_confidence": 0.55, "share_correlated": 1.0},
                          {"site": "res", "bin": "0.9–1.0", "features": 30, "mean_confidence": 0.95, "share_correlated": 0.9}])
    rng = np.random.default_rng(0)
    conf = np.r_[np.full(40, 0.05), np.full(3, 0.45), np.full(25, 0.95)]
    verdict = pl.DataFrame({"site": ["res"] * len(conf) + ["att"] * 10,
                            "label": np.r_[rng.random(len(conf)) < conf, np.zeros(10, bool)],
                            "data_free_confidence": np.r_[conf, np.full(10, np.nan)],
                            "confidence": np.r_[conf, np.full(10, np.nan)]}).with_columns(pl.col("^.*confidence$").fill_nan(None))
    sites = pl.DataFrame([{"site": "att", "tokens": 4096, "match_ece_before": None, "match_ece_after": 0.01,
                           "match_unjudged": "site at chance on data (held-out AUC 0.44 ≤ 0.71, chance + 2 s.e., on 182 features)"},
                          {"site": "res", "tokens": 4096, "match_ece_before": 0.05, "match_ece_after": 0.03,
                           "match_unjudged": None}], schema_overrides={"match_unjudged": pl.String, "match_ece_before": pl.Float64})
    return pl.DataFrame(table), calib, verdict, sites


def test_the_evaluation_figure_keeps_every_legend_inside_the_figure():
    table, calib, verdict, sites = evaluation_inputs()
    fig = _evaluation_figure(table, calib, "a long title · variant · data", verdict, sites)
    fig.set_dpi(110)  # as plot_evaluation saves it: text does not scale exactly with dpi
    fig.canvas.draw()  # legends take their place when drawn
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert len(legends) >= 4
    for lg in legends:
        assert inside(fig, lg, renderer), [t.get_text() for t in lg.get_texts()]


def test_the_reliability_panels_merge_bins_under_the_minimum_and_show_each_bins_features():
    table, calib, verdict, sites = evaluation_inputs()
    fig = _evaluation_figure(table, calib, "toy", verdict, sites)
    on_data, refit = fig.axes[2], fig.axes[3]
    # calib: 40 | 2 | 30 → the 2 joins a neighbour; two points, whose counts add up to 72
    counts = sorted(int(t.get_text()) for t in on_data.texts if t.get_text().isdigit())
    assert len(counts) == 2 and sum(counts) == 72 and min(counts) >= 5, counts
    points = [ln for ln in on_data.lines if len(ln.get_xdata()) > 0 and ln.get_linestyle() != ":"]
    assert all(len(ln.get_xdata()) == 2 for ln in points)
    # verdict: 40 | 3 | 25, two curves (data-free, on data) with two bins each
    counts = [int(t.get_text()) for t in refit.texts if t.get_text().isdigit()]
    assert len(counts) == 4 and sum(counts) == 2 * 68 and min(counts) >= 5, counts
    assert figures.MIN_BIN_FEATURES == 5 and f"bins of fewer than {figures.MIN_BIN_FEATURES} features are merged" in " ".join(texts(fig))



def test_merged_bins_pool_features_and_weight_their_means_by_features_by_hand():
    bins = [{"features": 2, "mean_confidence": 0.55, "share": 1.0}, {"features": 40, "mean_confidence": 0.15, "share": 0.2},
            {"features": 3, "mean_confidence": 0.62, "share": 0.0}, {"features": 1, "mean_confidence": 0.95, "share": 1.0}]
    got = figures._merged_bins(bins, "share", minimum=5)
    # in confidence order: 40 alone; then 2 + 3 = 5; the last run (1) joins the bin before it: 2 + 3 + 1 = 6
    assert got == [{"features": 40, "mean_confidence": pytest.approx(0.15), "share": pytest.approx(0.2)},
                   {"features": 6, "mean_confidence": pytest.approx((2 * 0.55 + 3 * 0.62 + 0.95) / 6),
                    "share": pytest.approx((2 * 1.0 + 0 + 1.0) / 6)}]


def test_the_evaluation_figure_names_its_axes_and_curves_draws_the_diagonal_and_puts_legends_below_the_panels():
    table, calib, verdict, sites = evaluation_inputs()
    fig = _evaluation_figure(table, calib, "toy", verdict, sites)
    panels, keys = fig.axes[:4], fig.axes[4:]
    assert panels[0].get_xlabel() == "pair (L, L+1)" and panels[0].get_ylim() == pytest.approx((0, 1.02))
    assert panels[0].get_title() == "matches on data"
    assert panels[3].get_xlabel().startswith("confidence (bin mean)\n")
    diagonal = [ln for ln in panels[2].lines if ln.get_linestyle() == ":"]
    assert [list(zip(ln.get_xdata(), ln.get_ydata())) for ln in diagonal] == [[(0, 0), (1, 1)]]
    legend_texts = [t.get_text() for t in keys[0].get_legend().get_texts()]
    assert {"matching score", "… by chance", "partner = Pearson top-1"} <= set(legend_texts)
    assert all(ax.get_legend() is None for ax in panels)  # every legend sits in the row below its panel
    assert keys[3].get_legend() is not None

# --- lifetimes -------------------------------------------------------------------------------

def test_the_survival_axis_counts_layers_in_whole_numbers():
    surv = pl.DataFrame({"site": ["res"] * 3 + ["mlp"] * 3, "k": [1, 2, 3] * 2, "survival": [0.8, 0.5, 0.3, 0.6, 0.3, 0.1]})
    fig = _survival_figure(surv, "toy")
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert all(re.fullmatch(r"−?\d+", t.get_text()) for t in ax.get_xticklabels() if t.get_text()), \
        [t.get_text() for t in ax.get_xticklabels()]



def test_a_site_without_survival_beyond_k_0_is_named_not_judged_and_not_drawn():
    surv = pl.DataFrame({"site": ["att", "res", "res", "res"], "k": [0, 0, 1, 2], "survival": [1.0, 1.0, 0.7, 0.4]})
    fig = _survival_figure(surv, "toy")
    ax = fig.axes[0]
    drawn = {ln.get_label(): len(ln.get_xdata()) for ln in ax.get_lines()}
    assert drawn == {"res": 3, "att: not judged (no link beyond k = 0)": 0}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["att: not judged (no link beyond k = 0)", "res"]

# --- trace graph -----------------------------------------------------------------------------

def trace_graph() -> nx.DiGraph:
    """5/res/58 traced both ways: res chain 4 → 5 → 6, an mlp and an att predecessor at 5 and an
    att one at the top layer 4 (att arcs bend over the mlp column), two res features at 6 (one
    cell), long indices at the right edge."""
    G = nx.DiGraph(root="5/res/58", direction="both")
    for name, case in (("4/res/16001", "A"), ("5/res/58", "D"), ("6/res/16383", None), ("6/res/7", None)):
        L, site, i = fg.parse_node(name)
        G.add_node(name, layer=L, site=site, index=i, **({"case": case, "s_res": 0.81, "s_mlp": 0.4} if case else {}))
    for name in ("5/mlp/16380", "5/att/16381", "4/att/16002"):
        L, site, i = fg.parse_node(name)
        G.add_node(name, layer=L, site=site, index=i)
    G.add_edge("4/res/16001", "5/res/58", kind="res", relations="match+top1", score=0.81, confidence=0.93, r=0.71)
    G.add_edge("5/res/58", "6/res/16383", kind="res", relations="top1", score=0.62, confidence=0.55, r=None)
    G.add_edge("5/res/58", "6/res/7", kind="res", relations="flow_res", score=0.3, confidence=None, r=None)
    G.add_edge("5/mlp/16380", "5/res/58", kind="mlp", relations="flow_mlp", score=0.4)
    G.add_edge("5/att/16381", "5/res/58", kind="att", relations="flow_att", score=0.2)
    G.add_edge("4/att/16002", "4/res/16001", kind="att", relations="flow_att", score=0.3)
    return G


def test_the_trace_figure_draws_arrowheads_and_keeps_every_label_and_edge_inside_the_frame():
    G = trace_graph()
    fig = _trace_figure(G)
    fig.set_dpi(150)  # as draw saves it
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    arrows = [t.arrow_patch for t in ax.texts if getattr(t, "arrow_patch", None)] + \
        [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == G.number_of_edges()
    styles = [type(p.get_arrowstyle()).__name__ for p in arrows]
    assert all(s != "Curve" for s in styles), styles  # ArrowStyle "-" is Curve: a line with no head
    for p in arrows:  # edges stay inside the axes' frame (att arcs do not cross it or the title)
        assert inside(ax, p, renderer), p
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip():
            assert inside(fig, t, renderer), t.get_text()
    labels = [t for t in ax.texts if t.get_text() in G]
    assert sorted(t.get_text() for t in labels) == sorted(G.nodes)
    for t in labels:
        assert inside(ax, t, renderer), t.get_text()
    boxes = [t.get_window_extent(renderer) for t in labels]  # two features in one cell do not overlap
    assert not any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1:])



def test_the_trace_figure_rings_the_root_alone_titles_root_and_direction_and_labels_no_arrow(tmp_path):
    G = trace_graph()
    fig = _trace_figure(G)
    (ax,) = fig.axes
    assert ax.get_title() == "5/res/58 (both)"
    pos = fg.layout(G)
    ringed = [tuple(c.get_offsets()[0]) for c in ax.collections
              if len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0]) == (0.0, 0.0, 0.0, 1.0)]
    assert ringed == [pos["5/res/58"]]
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None)]
    assert len(arrows) == G.number_of_edges() and all(t.get_text() == "" for t in arrows)
    figures.plot_trace(G, str(tmp_path / "g.svg"), "svg")
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")

# --- viewer ----------------------------------------------------------------------------------

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
const box = e => e.getBoundingClientRect();
const g = box(document.getElementById("graph")), i = box(document.getElementById("info"));
const overlap = g.left < i.right && i.left < g.right && g.top < i.bottom && i.top < g.bottom;
document.body.setAttribute("data-probe-overlap", String(overlap));
</script></body></html>"""


def rendered(page, hash: str = "", width: int = 800) -> str:
    """The page's DOM after its scripts ran, in a window ``width`` pixels wide."""
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                           "--dump-dom", page.as_uri() + hash], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(BROWSER is None, reason="no chromium here")
def test_the_viewer_names_the_site_columns_keeps_its_info_panel_beside_the_graph_and_shows_each_edges_verdict(tmp_path):
    G = trace_graph()
    html = fg.to_html(G)
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # one file, nothing fetched
    page = tmp_path / "g.html"
    page.write_text(html.replace("</body></html>", PROBE))
    dom = rendered(page, "#5/res/58")  # the info panel filled: a node described
    assert 'data-error="' not in dom and f'data-nodes-drawn="{G.number_of_nodes()}"' in dom
    for site in ("res", "mlp", "att"):
        assert re.search(rf'<text[^>]*class="site-header"[^>]*>{site}</text>', dom), site
    assert 'data-probe-overlap="false"' in dom
    # the edge with r shows it on the graph; every edge's tooltip gives its relations and confidence
    assert re.search(r"<text[^>]*class=\"edge-r\"[^>]*>r 0\.71</text>", dom)
    assert len(re.findall(r'class="edge-r"', dom)) == 1  # the others have no r
    assert "4/res/16001 → 5/res/58: match+top1, cosine 0.810, confidence 0.930, r 0.710" in dom
    assert "5/res/58 → 6/res/16383: top1, cosine 0.620, confidence 0.550, r none" in dom
    # a node opened from the hash shows its verdict: its case and each link's confidence
    info = dom.split('id="info">', 1)[1].split("</div>", 1)[0]
    assert info.startswith("5/res/58\ncase: D\ns_res: 0.810"), info
    assert "← 4/res/16001 (match+top1): confidence 0.930, r 0.710" in info, info
    assert "→ 6/res/16383 (top1): confidence 0.550, r none" in info, info
