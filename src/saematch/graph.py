"""Feature Flow graphs (Laptev et al., ICML 2025, §3.3): where a feature comes from, where it goes.

Nodes are ``L/site/index``; an edge u → v says u flows into v, with ``score`` (the decoder
cosine) and, for residual links, the verdict's ``confidence`` that the link is a real
persisting feature (:mod:`saematch.verdict`; null where the link is not the verdict's partner).

- **Backward walk** from residual feature r of layer L: its top-1 predecessors in the MLP and
  attention SAEs of layer L (kept where s ≥ ``module_cut``) and in the residual SAE of layer
  L − 1; the walk goes on from that residual predecessor while s(R) ≥ ``res_cut``.
- **Forward walk**: from r to its top-1 partner in layer L + 1 while that cosine ≥ ``res_cut``,
  each residual node with its own module predecessors.

Pruning defaults are Feature Flow's (App. B.2): t(R) = 0.5, modules below 0.15 dropped.
Inputs are the run's Parquet files, read lazily (polars): one row per lookup.
"""

from __future__ import annotations

import html
import json
import re
from contextlib import contextmanager
from pathlib import Path

import networkx as nx
import polars as pl

from .config import SITE_ALIASES, SITES, layer_runs, predecessor_modules

RES_CUT = 0.5
MODULE_CUT = 0.15
# a summary or lifetimes file's name: the sites and layers of the selection it covers (config.selection_label)
SELECTION = re.compile(r"^(?P<sites>[A-Za-z]+(?:\+[A-Za-z]+)*)\.L(?P<layers>\d+(?:-\d+)?(?:_\d+(?:-\d+)?)*)\.parquet$")


class ResultsError(ValueError):
    """A feature the run has no results for, or a results file that is missing or unreadable:
    the message names the feature or the file."""


def node_name(layer: int, site: str, index: int) -> str:
    return f"{layer}/{site}/{index}"


def parse_node(name: str) -> tuple[int, str, int]:
    """'12/res/4230' → (12, 'res', 4230) (Llama Scope's R, M, A for res, mlp, att; negative
    numbers parse, for the range check to name the range); ResultsError otherwise."""
    m = re.fullmatch(r"\s*(-?\d+)/([A-Za-z]+)/(-?\d+)\s*", name)
    site = SITE_ALIASES.get(m[2], m[2]) if m else None
    if site not in SITES:
        raise ResultsError(f"{name.strip()!r} is not a feature: expected LAYER/SITE/INDEX with SITE one of "
                           f"{', '.join(SITES)} (or {', '.join(SITE_ALIASES)}), e.g. 12/res/4230")
    return int(m[1]), site, int(m[3])


def layers_text(layers) -> str:
    """[0, 1, 2, 3, 5] → '0–3, 5'."""
    return ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in layer_runs(layers)) or "none"


@contextmanager
def reading(path):
    """Turn a failure to read a results file into one line naming it and how to rebuild it."""
    try:
        yield
    except (pl.exceptions.PolarsError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ResultsError):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResultsError(f"{path}: cannot be read ({reason}): delete it and rerun snakemake to rebuild it") from None


def matches_path(root: Path, site: str, layer: int) -> Path:
    return Path(root) / "matches" / f"site={site}" / f"layer={layer}" / "part-0.parquet"


def selections(root: str | Path) -> list[tuple[str, list[str], list[int]]]:
    """(name, sites, layers) of each selection the run summarised: its summary and lifetimes
    files are named by their sites and layers ('res+mlp+att.L0-5', 'res.L3_5-7')."""
    out = []
    for p in [*sorted(Path(root).glob("summary/*.parquet")), *sorted(Path(root).glob("lifetimes/*.parquet"))]:
        m = SELECTION.match(p.name)
        if m:
            layers = []
            for part in m["layers"].split("_"):
                a, _, b = part.partition("-")
                layers += range(int(a), int(b or a) + 1)
            out.append((p.name[: -len(".parquet")], m["sites"].split("+"), layers))
    return out


def expected_files(root: str | Path) -> dict[Path, str]:
    """Every matches and flow file of a selection the run summarised → that selection's name:
    pair L → L+1 of each site with both layers selected, and Feature Flow's
    file of each residual layer with a predecessor module (config.flow_modules)."""
    root, out = Path(root), {}
    for name, sites, layers in selections(root):
        for L in layers:
            for site in sites:
                if L + 1 in layers:
                    out.setdefault(matches_path(root, site, L), name)
            modules = predecessor_modules(sites, layers, L)
            if modules:
                out.setdefault(root / "flow" / "+".join(modules) / f"layer={L}.parquet", name)
    return out


def check_not_lost(paths: dict, path: Path) -> None:
    """ResultsError where ``path`` (absent) is a file the run's summaries say it made."""
    name = paths.get("expected", {}).get(Path(path))
    if name is not None:
        raise ResultsError(f"{path}: missing (part of the run's selection {name}): rerun snakemake to rebuild it")


def results_paths(root: str | Path) -> dict:
    """The files of one run (``results/model=M/variant=V``): flow per layer (the one scored
    against the most modules) and res matches per layer, as {layer: path}, and the files its
    summaries were made from (:func:`expected_files`)."""
    root = Path(root)
    flow = {}  # per layer, the file scored against the most modules (flow/res+mlp+att/layer=L.parquet)
    for p in sorted((root / "flow").glob("*/layer=*.parquet"), key=lambda p: (len(p.parent.name.split("+")), p.parent.name)):
        flow[int(p.stem.split("=")[1])] = p
    matches = {int(p.parent.name.split("=")[1]): p
               for p in (root / "matches" / "site=res").glob("layer=*/part-0.parquet")}
    return {"root": root, "flow": flow, "matches": matches, "expected": expected_files(root)}


def _row(path, index: int, columns: list[str]) -> dict | None:
    with reading(path):
        rows = pl.scan_parquet(path).filter(pl.col("feature") == index).select(columns).collect()
    return rows.row(0, named=True) if len(rows) else None


def flow_path(paths: dict, layer: int) -> Path | None:
    """Layer's flow file; None where the run has none (ResultsError where it lost it)."""
    path = paths["flow"].get(layer)
    if path is None:
        for lost in paths.get("expected", {}):
            if lost.parent.parent.name == "flow" and lost.name == f"layer={layer}.parquet":
                check_not_lost(paths, lost)
    return path


def _res_matches(paths: dict, layer: int) -> Path | None:
    """The res matches of pair layer → layer + 1; None where the run has none (ResultsError
    where it lost them)."""
    path = paths["matches"].get(layer)
    if path is None:
        check_not_lost(paths, matches_path(paths["root"], "res", layer))
    return path


def _link_confidence(paths: dict, layer: int, src: int, dst: int) -> float | None:
    """The verdict on the residual link src (layer) → dst (layer + 1): top1_confidence where dst
    is src's top-1 partner, confidence where it is its assignment partner, else None."""
    path = _res_matches(paths, layer)
    if path is None:
        return None
    row = _row(path, src, ["match", "top1", "confidence", "top1_confidence"])
    if row is None:
        return None
    if row["top1"] == dst:
        return float(row["top1_confidence"])
    if row["match"] == dst:
        return float(row["confidence"])
    return None


def _add_residual(G: nx.DiGraph, paths: dict, layer: int, index: int, module_cut: float) -> dict | None:
    """Add residual node layer/res/index with its flow scores and its module predecessors;
    return its flow row (None where layer has no flow file)."""
    name = node_name(layer, "res", index)
    path = flow_path(paths, layer)
    row = _row(path, index, ["res", "s_res", "mlp", "s_mlp", "att", "s_att", "case"]) if path else None
    attrs = {"layer": layer, "site": "res", "index": index}
    if row:
        attrs.update({k: row[k] for k in ("s_res", "s_mlp", "s_att", "case") if row[k] is not None})
    G.add_node(name, **attrs)
    for site in ("mlp", "att"):
        if row and row[site] is not None and row[f"s_{site}"] >= module_cut:
            pred = node_name(layer, site, row[site])
            G.add_node(pred, layer=layer, site=site, index=int(row[site]))
            G.add_edge(pred, name, score=float(row[f"s_{site}"]), kind=site)
    return row


def check_feature(paths: dict, layer: int, site: str, index: int) -> None:
    """A clear error for a feature the run has no results for."""
    if site != "res":
        raise ResultsError(f"{layer}/{site}/{index}: flow graphs start from residual features (site res)")
    known = sorted(set(paths["flow"]) | set(paths["matches"]))
    if layer not in known:
        raise ResultsError(f"layer {layer} is not in this run's results ({paths['root']}): layers {layers_text(known)}")
    path = paths["flow"].get(layer) or paths["matches"][layer]
    with reading(path):
        n = pl.scan_parquet(path).select(pl.len()).collect().item()
    if not 0 <= index < n:
        raise ResultsError(f"{layer}/res/{index}: layer {layer} has features 0–{n - 1}")


def neuronpedia_where(paths: dict, layer: int, site: str, read=None) -> dict:
    """This SAE's Neuronpedia set (or a note why it has none), from a flow file's provenance:
    layer L's names res L (target), res L − 1, mlp L and att L; a residual SAE without a flow
    file of its own layer is found as layer L + 1's predecessor. ``read(L)``: layer L's
    recorded sets (memoised by :func:`annotate`)."""
    read = read or (lambda L: _provenance(paths["flow"][L]).get("neuronpedia", {}))
    tries = [(layer, "target" if site == "res" else site)] + ([(layer + 1, "res")] if site == "res" else [])
    for L, key in tries:
        if L in paths["flow"] and key in read(L):
            return read(L)[key]
    return {"note": "no Neuronpedia set recorded for this SAE"}


def annotate(G: nx.DiGraph, paths: dict, explanations_root: str | Path | None = None) -> nx.DiGraph:
    """Add each node's Neuronpedia id and link (or a note why it has none) and its explanations
    (from a local copy of Neuronpedia's export under ``explanations_root``). Reads only the
    flow files of the nodes' layers."""
    from functools import lru_cache

    from .neuronpedia import annotate as np_annotate, load_explanations

    read = lru_cache(maxsize=None)(lambda L: _provenance(paths["flow"][L]).get("neuronpedia", {}))
    explanations = lru_cache(maxsize=None)(lambda model, set_id: load_explanations(explanations_root, model, set_id))
    for n, a in G.nodes(data=True):
        where = neuronpedia_where(paths, a["layer"], a["site"], read)
        found = explanations(where["model"], where["set"]) if explanations_root and "set" in where else None
        G.nodes[n].update(np_annotate({}, where, a["index"], found))
    return G


def _provenance(path) -> dict:
    from .write import read_provenance

    with reading(path):
        return read_provenance(path)


def trace(paths: dict, feature: str, direction: str = "back", res_cut: float = RES_CUT,
          module_cut: float = MODULE_CUT) -> nx.DiGraph:
    """The flow graph of ``feature`` ('L/res/i'): direction 'back', 'forward' or 'both'."""
    layer, site, index = parse_node(feature)
    check_feature(paths, layer, site, index)
    G = nx.DiGraph(root=node_name(layer, site, index), direction=direction, res_cut=res_cut, module_cut=module_cut)
    row = _add_residual(G, paths, layer, index, module_cut)
    if direction in ("back", "both"):
        L, i = layer, index
        while row and row["res"] is not None and row["s_res"] >= res_cut:
            pred = int(row["res"])
            row_next = _add_residual(G, paths, L - 1, pred, module_cut)
            G.add_edge(node_name(L - 1, "res", pred), node_name(L, "res", i), score=float(row["s_res"]), kind="res",
                       confidence=_link_confidence(paths, L - 1, pred, i))
            L, i, row = L - 1, pred, row_next
    if direction in ("forward", "both"):
        L, i = layer, index
        while (path := _res_matches(paths, L)) is not None:
            m = _row(path, i, ["top1", "top1_cosine", "top1_confidence"])
            if m is None or m["top1_cosine"] < res_cut:
                break
            nxt = int(m["top1"])
            _add_residual(G, paths, L + 1, nxt, module_cut)
            G.add_edge(node_name(L, "res", i), node_name(L + 1, "res", nxt), score=float(m["top1_cosine"]),
                       kind="res", confidence=float(m["top1_confidence"]))
            L, i = L + 1, nxt
    return G


# --- exports ------------------------------------------------------------------------------------

def to_json(G: nx.DiGraph) -> dict:
    """Node-link form, as networkx writes it: ``nodes`` and ``links``."""
    return nx.node_link_data(G, edges="links")


def write_graphml(G: nx.DiGraph, path: str | Path) -> None:
    """GraphML (networkx); attributes without a value are left out (GraphML has no null)."""
    H = nx.DiGraph(**{k: v for k, v in G.graph.items() if v is not None})
    H.add_nodes_from((n, {k: v for k, v in a.items() if v is not None}) for n, a in G.nodes(data=True))
    H.add_edges_from((u, v, {k: x for k, x in a.items() if x is not None}) for u, v, a in G.edges(data=True))
    nx.write_graphml(H, path)


def layout(G: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Layers as rows (0 at the top), sites as columns (res, mlp, att)."""
    return {n: (SITES.index(a["site"]), a["layer"]) for n, a in G.nodes(data=True)}


def draw(G: nx.DiGraph, path: str | Path, format: str | None = None) -> None:
    """The graph as a figure (``format`` png or svg; by default the suffix's): layers as rows,
    sites as columns, edge width by score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = layout(G)
    layers = sorted({a["layer"] for _, a in G.nodes(data=True)})
    fig, ax = plt.subplots(figsize=(6, 1 + 0.6 * len(layers)))
    colour = {"res": "#4c72b0", "mlp": "#dd8452", "att": "#55a868"}
    for u, v, a in G.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        bend = 0.25 if y0 == y1 and abs(x1 - x0) > 1 else 0.0  # att → res arcs over the mlp node
        ax.annotate("", (x1, y1), (x0, y0), zorder=1, arrowprops=dict(
            arrowstyle="-", color="#888", lw=0.5 + 4 * max(a["score"], 0), connectionstyle=f"arc3,rad={bend}"))
    for n, a in G.nodes(data=True):
        x, y = pos[n]
        ax.scatter([x], [y], s=140, color=colour[a["site"]], zorder=2, edgecolor="black" if n == G.graph.get("root") else "none")
        ax.annotate(n, (x, y), xytext=(8, -3), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(3), SITES)
    ax.set_yticks(layers)
    ax.set_ylabel("layer")
    ax.set_xlim(-0.5, 2.9)
    ax.invert_yaxis()
    ax.set_title(f"{G.graph.get('root', '')} ({G.graph.get('direction', '')})", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=150, format=format)
    finally:
        plt.close(fig)


def to_html(G: nx.DiGraph, title: str | None = None) -> str:
    """A self-contained viewer (one file: inline SVG drawing code and the graph as JSON; no
    network): layers as rows, sites as columns, edge width by score; hovering a node shows its
    scores, explanation and Neuronpedia link."""
    # <, > and & as \u escapes: nothing in an explanation can end or reopen the script block
    data = json.dumps(to_json(G)).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(title or f"saematch flow graph: {G.graph.get('root', '')}")
    return _VIEWER.replace("__TITLE__", title).replace("__DATA__", data)


_VIEWER = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 12px; color: #222; }
svg { border: 1px solid #ddd; background: #fff; }
.node circle { stroke: #222; stroke-width: 0.5; cursor: pointer; }
.node.root circle { stroke-width: 2.5; }
.node text { font-size: 10px; }
.link { stroke: #999; fill: none; }
#info { position: fixed; right: 12px; top: 12px; width: 320px; padding: 8px; border: 1px solid #ccc;
        background: #fafafa; white-space: pre-wrap; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div>layers as rows, sites as columns (res · mlp · att); edge width: decoder cosine; hover a node</div>
<svg id="graph"></svg>
<div id="info">hover a node</div>
<script id="graph-data" type="application/json">__DATA__</script>
<script>
"use strict";
window.addEventListener("error", e => document.body.setAttribute("data-error", String(e.message)));
const graph = JSON.parse(document.getElementById("graph-data").textContent);
const SITES = ["res", "mlp", "att"], COLOUR = {res: "#4c72b0", mlp: "#dd8452", att: "#55a868"};
const svg = document.getElementById("graph"), NS = "http://www.w3.org/2000/svg";
const layers = [...new Set(graph.nodes.map(n => n.layer))].sort((a, b) => a - b);
const X = s => 80 + 170 * SITES.indexOf(s), Y = l => 40 + 60 * layers.indexOf(l);
svg.setAttribute("width", 80 + 170 * 3 + 60);
svg.setAttribute("height", 40 + 60 * layers.length);
const byId = Object.fromEntries(graph.nodes.map(n => [n.id, n]));
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}
for (const l of layers) {
  const t = el("text", {x: 8, y: Y(l) + 4, "font-size": 11, fill: "#666"}, svg);
  t.textContent = "L" + l;
}
for (const link of graph.links) {
  const a = byId[link.source], b = byId[link.target];
  const [x1, y1, x2, y2] = [X(a.site), Y(a.layer), X(b.site), Y(b.layer)];
  const bend = y1 === y2 && Math.abs(x2 - x1) > 200 ? 28 : 0;  // att → res arcs over the mlp node
  const line = el("path", {class: "link", d: `M${x1},${y1} Q${(x1 + x2) / 2},${(y1 + y2) / 2 - bend} ${x2},${y2}`,
                           "stroke-width": 0.5 + 6 * Math.max(link.score, 0)}, svg);
  const tip = el("title", {}, line);
  tip.textContent = `${link.source} → ${link.target}: cosine ${link.score.toFixed(3)}` +
    (link.confidence != null ? `, confidence ${link.confidence.toFixed(3)}` : "");
}
const info = document.getElementById("info");
function describe(n) {
  const lines = [n.id];
  for (const k of ["case", "s_res", "s_mlp", "s_att"]) if (n[k] != null) lines.push(`${k}: ${typeof n[k] === "number" ? n[k].toFixed(3) : n[k]}`);
  lines.push(n.explanation ? `explanation: ${n.explanation}` : "explanation: none");
  info.textContent = lines.join("\\n") + "\\n";
  if (n.url) {
    const a = document.createElement("a");
    a.href = n.url; a.textContent = "Neuronpedia: " + n.neuronpedia_id; a.target = "_blank";
    info.appendChild(a);
  } else {
    info.appendChild(document.createTextNode(n.neuronpedia_note || "no Neuronpedia page"));
  }
}
for (const n of graph.nodes) {
  const g = el("g", {class: "node" + (n.id === graph.graph.root ? " root" : ""), "data-id": n.id}, svg);
  el("circle", {cx: X(n.site), cy: Y(n.layer), r: 9, fill: COLOUR[n.site]}, g);
  const t = el("text", {x: X(n.site) + 13, y: Y(n.layer) + 4}, g);
  t.textContent = n.id;
  g.addEventListener("mouseenter", () => describe(n));
}
const start = decodeURIComponent(location.hash.slice(1));  // viewer.html#12/res/4230 opens with that node described
if (byId[start]) describe(byId[start]);
document.body.setAttribute("data-nodes-drawn", String(svg.querySelectorAll("g.node").length));
</script></body></html>
"""
