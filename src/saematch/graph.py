"""Feature graphs: where a feature comes from, where it goes (SAE Match, Feature Flow).

Nodes are ``L/site/index``; an edge u → v says u flows into v. Its ``relations`` are the ones
of saematch.edges that propose it (match, top1, flow_res for residual links; flow_mlp,
flow_att for a module feeding a residual feature), with ``score`` (the decoder cosine),
``confidence`` (the verdict's, the best among the relations) and ``r`` (Pearson r on text,
where an evaluation has this link as the Pearson top-1).

- **mode 'verdict'** (default): a residual link is followed while the verdict's confidence ≥
  the cut (match.cut, 0.5), whichever relation proposes it: one method both ways.
- **mode 'flow'**: Feature Flow's rule (Laptev et al., ICML 2025, §3.3, App. B.2): backward
  along the top-1 predecessor in res L − 1 while s(R) ≥ 0.5, forward along the top-1 partner
  while its cosine ≥ 0.5.
- Either way each residual node gets its top-1 predecessors in the MLP and attention SAEs of
  its layer where s ≥ ``module_cut`` (0.15), and a trace records where and why it ended.

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
from .edges import MODULE, edges_at, links

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
    sites = {site: {int(p.parent.name.split("=")[1]): p
                    for p in (root / "matches" / f"site={site}").glob("layer=*/part-0.parquet")} for site in SITES}
    return {"root": root, "flow": flow, "matches": sites["res"], "sites": sites, "expected": expected_files(root)}


def files_paths(root: str | Path, flow_files, matches_files) -> dict:
    """:func:`results_paths` of exactly these files (a job's declared inputs), not of whatever
    else lies in the run's folder: flow files …/flow/MODULES/layer=L.parquet and matches files
    …/matches/site=S/layer=L/part-0.parquet."""
    flow = {int(Path(p).stem.split("=")[1]): Path(p) for p in flow_files}
    sites = {site: {} for site in SITES}
    for p in map(Path, matches_files):
        sites[p.parent.parent.name.split("=")[1]][int(p.parent.name.split("=")[1])] = p
    return {"root": Path(root), "flow": flow, "matches": sites["res"], "sites": sites, "expected": {}}


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
            G.add_edge(pred, name, score=float(row[f"s_{site}"]), kind=site, relations=f"flow_{site}")
    return row


def check_feature(paths: dict, layer: int, site: str, index: int) -> None:
    """A clear error for a feature the run has no results for."""
    matches = paths["sites"][site]
    known = sorted((set(paths["flow"]) if site == "res" else set()) | set(matches) | {L + 1 for L in matches})
    if layer not in known:
        raise ResultsError(f"{layer}/{site}/{index}: layer {layer} is not in this run's results for site {site} "
                           f"({paths['root']}): layers {layers_text(known)}")
    if site == "res" and layer in paths["flow"]:
        path = paths["flow"][layer]
    elif layer in matches:
        path = matches[layer]
    else:  # the last layer: the features its pair from the layer before recorded
        from .write import read_provenance

        with reading(matches[layer - 1]):
            n = read_provenance(matches[layer - 1]).get("n_dst")
        if n is None or 0 <= index < n:
            return
        raise ResultsError(f"{layer}/{site}/{index}: layer {layer} has features 0–{n - 1}")
    with reading(path):
        n = pl.scan_parquet(path).select(pl.len()).collect().item()
    if not 0 <= index < n:
        raise ResultsError(f"{layer}/{site}/{index}: layer {layer} has features 0–{n - 1}")


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


TRACE_MODES = ("verdict", "flow")


def trace(paths: dict, feature: str, direction: str = "back", res_cut: float = RES_CUT,
          module_cut: float = MODULE_CUT, mode: str = "verdict", cut: float = 0.5) -> nx.DiGraph:
    """The graph of ``feature`` ('L/site/i'): direction 'back', 'forward' or 'both'.

    mode 'verdict' (default): a residual link is followed where the verdict's confidence ≥
    ``cut`` (match.cut), whichever residual relation proposes it (saematch.edges.links: match,
    top1, flow_res; the edge lists those that agree). mode 'flow': Feature Flow's rule, the
    top-1 cosine ≥ ``res_cut`` (backward: s(R); forward: the top-1 partner). Module
    predecessors (mlp, att of a residual node's layer) are kept where s ≥ ``module_cut``. An
    mlp or att feature traced forward feeds the residual features whose top-1 predecessor it
    is (s ≥ module_cut); the walk goes on from each. ``G.graph["ends"]``: where and why each
    walk stopped (the best candidate, its score and confidence, and the cut it missed)."""
    if mode not in TRACE_MODES:
        raise ResultsError(f"trace mode {mode!r}: expected one of {', '.join(TRACE_MODES)}")
    layer, site, index = parse_node(feature)
    check_feature(paths, layer, site, index)
    root = node_name(layer, site, index)
    G = nx.DiGraph(root=root, direction=direction, mode=mode, res_cut=res_cut, module_cut=module_cut, cut=cut, ends=[])
    G.add_node(root, layer=layer, site=site, index=index)
    starts = [(layer, index)] if site == "res" else []
    if site != "res":
        fed = edges_at(paths, layer, site, index, "forward")
        fed = fed.filter(pl.col("relation").is_in(MODULE) & (pl.col("score") >= module_cut)) if direction != "back" else fed.clear()
        for d in fed.to_dicts():
            _add_residual(G, paths, layer, d["dst_feature"], module_cut)
            starts.append((layer, d["dst_feature"]))
        if direction != "back" and not starts:
            G.graph["ends"].append({"at": root, "direction": "forward", "why": f"feeds no residual feature at s ≥ {module_cut}"})
    else:
        _add_residual(G, paths, layer, index, module_cut)
    for way in (["back"] if direction == "back" else ["forward"] if direction == "forward" else ["back", "forward"]):
        if way == "back" and site != "res":
            continue
        for L, i in starts:
            _walk(G, paths, L, i, way, mode, cut, res_cut, module_cut)
    return G


def trace_set(paths: dict, features: list[str], direction: str = "both", res_cut: float = RES_CUT,
              module_cut: float = MODULE_CUT, mode: str = "verdict", cut: float = 0.5) -> nx.DiGraph:
    """The union of :func:`trace` from each of ``features`` (a steering theme's seeds:
    saematch.steer.feature_set reads its nodes). ``G.graph``: root, the first feature; seeds, all
    of them in order; ends, every walk's."""
    graphs = [trace(paths, f, direction, res_cut, module_cut, mode, cut) for f in features]
    G = nx.compose_all(graphs)
    G.graph.update(graphs[0].graph, seeds=[g.graph["root"] for g in graphs],
                   ends=[e for g in graphs for e in g.graph["ends"]])
    return G


def _walk(G, paths, L, i, way, mode, cut, res_cut, module_cut) -> None:
    """Follow residual links from L/res/i in one direction until the rule fails; record why."""
    step = -1 if way == "back" else 1
    while True:
        here = node_name(L, "res", i)
        if mode == "verdict":
            candidates = links(edges_at(paths, L, "res", i, way), way)
            best = candidates[0] if candidates else None
            ok = best is not None and best["confidence"] is not None and best["confidence"] >= cut
            rule = f"confidence ≥ {cut}"
        else:
            best = _flow_candidate(paths, L, i, way)
            if best is not None:  # the same link as proposed by any relation: its relations and best confidence
                same = [c for c in links(edges_at(paths, L, "res", i, way), way)
                        if (c["layer"], c["feature"]) == (best["layer"], best["feature"])]
                if same:
                    best.update(relations=same[0]["relations"], confidence=same[0]["confidence"], r=same[0]["r"])
            ok = best is not None and best["score"] >= res_cut
            rule = f"cosine ≥ {res_cut}"
        if not ok:
            end = {"at": here, "direction": way}
            if best is None:
                end["why"] = f"no layer {L + step} in this run" if (L + step) not in _res_layers(paths) else "no candidate"
            else:
                end.update(best=node_name(best["layer"], "res", best["feature"]), relations=best.get("relations"),
                           score=best["score"], confidence=best["confidence"], why=f"missed {rule}")
            G.graph["ends"].append(end)
            return
        nxt = node_name(best["layer"], "res", best["feature"])
        joined = nxt in G  # another walk of this trace got there first: link to it, then stop
        if not joined:
            _add_residual(G, paths, best["layer"], best["feature"], module_cut)
        u, v = (nxt, here) if way == "back" else (here, nxt)
        G.add_edge(u, v, kind="res", relations=best.get("relations"), score=best["score"],
                   confidence=best["confidence"], r=best.get("r"))
        if joined:
            return
        L, i = best["layer"], best["feature"]


def _res_layers(paths: dict) -> set[int]:
    m = paths["sites"]["res"]
    return set(paths["flow"]) | set(m) | {L + 1 for L in m}


def _flow_candidate(paths: dict, L: int, i: int, way: str) -> dict | None:
    """Feature Flow's next residual link: backward the top-1 predecessor and s(R), forward the
    top-1 partner and its cosine."""
    if way == "back":
        path = flow_path(paths, L)
        row = _row(path, i, ["res", "s_res"]) if path else None
        if not row or row["res"] is None:
            return None
        return {"layer": L - 1, "feature": int(row["res"]), "score": float(row["s_res"]), "confidence": None,
                "relations": "flow_res"}
    path = _res_matches(paths, L)
    m = _row(path, i, ["top1", "top1_cosine"]) if path else None
    if not m:
        return None
    return {"layer": L + 1, "feature": int(m["top1"]), "score": float(m["top1_cosine"]), "confidence": None,
            "relations": "top1"}


# --- exports ------------------------------------------------------------------------------------

def to_json(G: nx.DiGraph) -> dict:
    """Node-link form, as networkx writes it: ``nodes`` and ``links``."""
    return nx.node_link_data(G, edges="links")


def write_graphml(G: nx.DiGraph, path: str | Path) -> None:
    """GraphML (networkx); attributes without a value are left out (GraphML has no null), and
    the graph's list of ends is written as JSON text."""
    H = nx.DiGraph(**{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in G.graph.items() if v is not None})
    H.add_nodes_from((n, {k: v for k, v in a.items() if v is not None}) for n, a in G.nodes(data=True))
    H.add_edges_from((u, v, {k: x for k, x in a.items() if x is not None}) for u, v, a in G.edges(data=True))
    nx.write_graphml(H, path)


def layout(G: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """(column, row): sites as columns (res, mlp, att), layers as rows (0 at the top); features
    of one site and layer spread on a diagonal over ±0.2 of their column and ±0.25 of their row,
    in index order."""
    cells: dict[tuple[str, int], list[str]] = {}
    for n, a in sorted(G.nodes(data=True), key=lambda na: na[1]["index"]):
        cells.setdefault((a["site"], a["layer"]), []).append(n)
    pos = {}
    for (site, layer), names in cells.items():
        for j, n in enumerate(names):
            t = j / (len(names) - 1) - 0.5 if len(names) > 1 else 0.0
            pos[n] = (SITES.index(site) + 0.4 * t, layer + 0.5 * t)
    return pos


def to_html(G: nx.DiGraph, title: str | None = None) -> str:
    """A self-contained viewer (one file: inline SVG drawing code and the graph as JSON with
    :func:`layout`'s positions; no network): sites as headed columns, layers as rows, an arrow
    per edge (width by score, dashed below the verdict's cut, its Pearson r on text where it has
    one), the info panel beside the graph. Hovering an edge shows its relations, cosine,
    confidence and r; hovering a node its flow scores, case, links with their confidence and r,
    where the trace ended there, its explanation and Neuronpedia link."""
    graph = to_json(G) | {"layout": layout(G)}
    # <, > and & as \u escapes: nothing in an explanation can end or reopen the script block
    data = json.dumps(graph).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(title or f"saematch flow graph: {', '.join(G.graph.get('seeds') or [G.graph.get('root', '')])}")
    return _VIEWER.replace("__TITLE__", title).replace("__DATA__", data)


_VIEWER = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 12px; color: #222; }
#main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
svg { border: 1px solid #ddd; background: #fff; flex: none; }
.node circle { stroke: #222; stroke-width: 0.5; cursor: pointer; }
.node.root circle { stroke-width: 2.5; }
.node text { font-size: 10px; }
.site-header { font-size: 13px; font-weight: bold; fill: #444; }
.link { stroke: #888; fill: none; }
.link.weak { stroke-dasharray: 5 3; }
.hit { stroke: transparent; stroke-width: 12; fill: none; cursor: pointer; }
.edge-r { font-size: 10px; fill: #a33; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
#info { flex: 0 0 340px; position: sticky; top: 12px; padding: 8px; border: 1px solid #ccc;
        background: #fafafa; white-space: pre-wrap; overflow-wrap: anywhere; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div>layers as rows, sites as columns; an arrow u → v: u flows into v; width: decoder cosine;
dashed: the verdict's confidence below the cut; red: Pearson r on text; hover a node or an edge</div>
<div id="main">
<svg id="graph"></svg>
<div id="info">hover a node or an edge</div>
</div>
<script id="graph-data" type="application/json">__DATA__</script>
<script>
"use strict";
window.addEventListener("error", e => document.body.setAttribute("data-error", String(e.message)));
const graph = JSON.parse(document.getElementById("graph-data").textContent);
const SITES = ["res", "mlp", "att"], COLOUR = {res: "#4c72b0", mlp: "#dd8452", att: "#55a868"};
const svg = document.getElementById("graph"), NS = "http://www.w3.org/2000/svg";
const cut = graph.graph.cut != null ? graph.graph.cut : 0.5;
const layers = [...new Set(graph.nodes.map(n => n.layer))].sort((a, b) => a - b);
// positions from saematch.graph.layout: [column, row]; features sharing a cell sit on a diagonal
const X = c => 110 + 190 * c, Y = r => 70 + 70 * (layers.indexOf(Math.round(r)) + r - Math.round(r));
const at = n => graph.layout[n.id];
svg.setAttribute("width", X(2) + 150);
svg.setAttribute("height", Y(layers[layers.length - 1]) + 60);
const byId = Object.fromEntries(graph.nodes.map(n => [n.id, n]));
const num = v => v == null ? "none" : v.toFixed(3);
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}
const marker = el("marker", {id: "head", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9,
                             markerUnits: "userSpaceOnUse", orient: "auto"}, el("defs", {}, svg));
el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#666"}, marker);
SITES.forEach((s, c) => { el("text", {class: "site-header", x: X(c), y: 22, "text-anchor": "middle"}, svg).textContent = s; });
for (const l of layers) el("text", {x: 8, y: Y(l) + 4, "font-size": 11, fill: "#666"}, svg).textContent = "L" + l;
const info = document.getElementById("info");
function edgeText(link) {
  return `${link.source} → ${link.target}: ${link.relations || link.kind}, cosine ${num(link.score)}, ` +
    `confidence ${num(link.confidence)}, r ${num(link.r)}`;
}
for (const link of graph.links) {
  const [x1, y1] = at(byId[link.source]).map((v, i) => i ? Y(v) : X(v));
  const [x2, y2] = at(byId[link.target]).map((v, i) => i ? Y(v) : X(v));
  const bend = Math.abs(y1 - y2) < 30 && Math.abs(x2 - x1) > 200 ? 40 : 0;  // att → res arcs over the mlp node
  const [cx, cy] = [(x1 + x2) / 2, (y1 + y2) / 2 - bend];
  const ends = (ax, ay, bx, by, r) => { const d = Math.hypot(bx - ax, by - ay) || 1; return [ax + (bx - ax) * r / d, ay + (by - ay) * r / d]; };
  const [sx, sy] = ends(x1, y1, cx, cy, 10), [tx, ty] = ends(x2, y2, cx, cy, 12);  // clear of the circles
  const d = `M${sx},${sy} Q${cx},${cy} ${tx},${ty}`;
  const g = el("g", {class: "edge", "data-edge": `${link.source}>${link.target}`}, svg);
  el("path", {class: "link" + (link.confidence != null && link.confidence < cut ? " weak" : ""), d,
              "stroke-width": 0.5 + 6 * Math.max(link.score, 0), "marker-end": "url(#head)"}, g);
  el("path", {class: "hit", d}, g);
  el("title", {}, g).textContent = edgeText(link);
  if (link.r != null) {  // the on-data Pearson r, beside the curve's midpoint
    const t = el("text", {class: "edge-r", x: (x1 + 2 * cx + x2) / 4 + 6, y: (y1 + 2 * cy + y2) / 4 - 4}, g);
    t.textContent = "r " + link.r.toFixed(2);
  }
  g.addEventListener("mouseenter", () => {
    info.textContent = [`${link.source} → ${link.target}`, `relations: ${link.relations || link.kind}`,
      `cosine: ${num(link.score)}`, `confidence (verdict): ${num(link.confidence)}`,
      `Pearson r on text: ${num(link.r)}`].join("\\n");
  });
}
function links(n) {
  const out = [];
  for (const l of graph.links) {
    const way = l.target === n.id ? "← " + l.source : l.source === n.id ? "→ " + l.target : null;
    if (way) out.push(`${way} (${l.relations || l.kind}): confidence ${num(l.confidence)}, r ${num(l.r)}, cosine ${num(l.score)}`);
  }
  return out;
}
function describe(n) {
  const lines = [n.id];
  for (const k of ["case", "s_res", "s_mlp", "s_att"]) if (n[k] != null) lines.push(`${k}: ${typeof n[k] === "number" ? n[k].toFixed(3) : n[k]}`);
  lines.push(n.explanation ? `explanation: ${n.explanation}` : "explanation: none");
  lines.push(...links(n));
  for (const e of graph.graph.ends || []) if (e.at === n.id) lines.push(`ends ${e.direction}: ${e.why}` + (e.best ? ` (best ${e.best}, confidence ${num(e.confidence)})` : ""));
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
  const [c, r] = at(n), left = n.site === "res";  // edges reach a residual feature from above and the right
  const g = el("g", {class: "node" + ((graph.graph.seeds || [graph.graph.root]).includes(n.id) ? " root" : ""), "data-id": n.id}, svg);
  el("circle", {cx: X(c), cy: Y(r), r: 9, fill: COLOUR[n.site]}, g);
  const t = el("text", {x: X(c) + (left ? -13 : 13), y: Y(r) + 4, "text-anchor": left ? "end" : "start"}, g);
  t.textContent = n.id;
  el("title", {}, g).textContent = n.id + (n.case != null ? " · case " + n.case : "");
  g.addEventListener("mouseenter", () => describe(n));
}
const start = decodeURIComponent(location.hash.slice(1));  // viewer.html#12/res/4230 opens with that node described
if (byId[start]) describe(byId[start]);
document.body.setAttribute("data-nodes-drawn", String(svg.querySelectorAll("g.node").length));
</script></body></html>
"""
