"""``saematch``: ask a run's results about one feature, its flow graph, lifetimes and summary.

    saematch trace demo 4/res/0 --back --format html -o graph.html
    saematch show demo 4/res/0
    saematch lifetimes demo
    saematch summary demo

Reads the Parquet files under ``results/model=M/variant=V`` lazily (polars). Tables for
people, ``--json`` (or ``--format json``) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from . import graph as flowgraph

FORMATS = ("table", "json", "graphml", "html", "png", "svg")
DEFAULT_EXPLANATIONS = "resources/neuronpedia"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def run_dir(results: str, model: str, variant: str | None) -> Path:
    """results/model=M/variant=V; the only variant when none is given."""
    base = Path(results) / f"model={model}"
    if not base.is_dir():
        found = sorted(p.name.split("=", 1)[1] for p in Path(results).glob("model=*"))
        raise CliError(f"no results for model {model!r} under {results}/ "
                       f"(models there: {', '.join(found) or 'none'}; run the pipeline first)")
    variants = sorted(p.name.split("=", 1)[1] for p in base.glob("variant=*"))
    if variant is None:
        if len(variants) != 1:
            raise CliError(f"{base}: {len(variants)} variants ({', '.join(variants) or 'none'}); pick one with --variant")
        variant = variants[0]
    elif variant not in variants:
        raise CliError(f"{base}: no variant {variant!r} (variants: {', '.join(variants) or 'none'})")
    return base / f"variant={variant}"


def _feature(text: str) -> tuple[int, str, int]:
    try:
        return flowgraph.parse_node(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _explanations(args) -> str | None:
    root = args.explanations
    if root and not Path(root).is_dir():
        if root != DEFAULT_EXPLANATIONS:
            raise CliError(f"--explanations {root}: no such folder")
        return None
    return root


def _matches(root: Path, site: str, layer: int) -> Path | None:
    path = root / "matches" / f"site={site}" / f"layer={layer}" / "part-0.parquet"
    return path if path.exists() else None


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("(nothing)")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, float_precision=3):
        print(pl.DataFrame(rows))


# --- subcommands --------------------------------------------------------------------------------

def cmd_trace(args) -> None:
    root = run_dir(args.results, args.model, args.variant)
    _feature(args.feature)
    paths = flowgraph.results_paths(root)
    if not paths["flow"] and args.direction != "forward":
        raise CliError(f"{root}: no flow files (…/flow/MODULES/layer=L.parquet): run the pipeline with the res site selected")
    try:
        G = flowgraph.trace(paths, args.feature, args.direction, args.res_cut, args.module_cut)
        flowgraph.annotate(G, paths, _explanations(args))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    fmt = args.format
    if fmt in ("png", "svg", "graphml") and not args.output:
        raise CliError(f"--format {fmt} writes a file: give -o/--output")
    if fmt == "table":
        _print_table([{"from": u, "to": v, "kind": a["kind"], "score": a["score"], "confidence": a.get("confidence")}
                      for u, v, a in sorted(G.edges(data=True), key=lambda e: (-G.nodes[e[1]]["layer"], e[0]))])
        return
    if fmt == "json":
        text = json.dumps(flowgraph.to_json(G), indent=1)
    elif fmt == "html":
        text = flowgraph.to_html(G)
    elif fmt == "graphml":
        flowgraph.write_graphml(G, args.output)
        print(args.output)
        return
    else:
        flowgraph.draw(G, args.output)
        print(args.output)
        return
    if args.output:
        Path(args.output).write_text(text)
        print(args.output)
    else:
        print(text)


def show_feature(root: Path, layer: int, site: str, index: int, explanations: str | None = None) -> dict:
    """Everything the run knows about one feature: its partner in layer L+1, who points at it
    from layer L−1, (residual features) its Feature Flow scores and case, and its Neuronpedia
    link and explanations."""
    out: dict = {"feature": flowgraph.node_name(layer, site, index)}
    fwd, back = _matches(root, site, layer), _matches(root, site, layer - 1)
    if fwd is None and back is None:
        raise CliError(f"{root}: no matches for site {site} at layer {layer} (neither {layer}→{layer + 1} "
                       f"nor {layer - 1}→{layer})")
    n = pl.scan_parquet(fwd or back).select(pl.len() if fwd else pl.col("match").max()).collect().item()
    if fwd and not 0 <= index < n:
        raise CliError(f"{out['feature']}: layer {layer} has features 0–{n - 1}")
    cols = ["match", "cosine", "persists", "confidence", "top1", "top1_cosine", "top1_persists", "top1_confidence"]
    if fwd:
        row = pl.scan_parquet(fwd).filter(pl.col("feature") == index).select(cols).collect()
        out["next"] = row.row(0, named=True) if len(row) else None
    if back:
        rows = (pl.scan_parquet(back).filter((pl.col("match") == index) | (pl.col("top1") == index))
                .select(["feature", *cols]).collect())
        out["previous"] = rows.to_dicts()
    paths = flowgraph.results_paths(root)
    flow = paths["flow"].get(layer)
    if site == "res" and flow is not None:
        row = (pl.scan_parquet(flow).filter(pl.col("feature") == index)
               .select(["res", "s_res", "mlp", "s_mlp", "att", "s_att", "case"]).collect())
        out["flow"] = row.row(0, named=True) if len(row) else None
    out["on_data"] = on_data(root, layer, site, index)
    from .neuronpedia import annotate, load_explanations

    where = flowgraph.neuronpedia_where(paths, layer, site)
    found = load_explanations(explanations, where["model"], where["set"]) if explanations and "set" in where else None
    out["neuronpedia"] = annotate({}, where, index, found)
    return out


def on_data(root: Path, layer: int, site: str, index: int) -> list[dict]:
    """The feature's row in each evaluation on activations of this run (saematch.evaluate):
    how often it fired, its partners' Pearson r and its Pearson top-k in layer L+1."""
    rows = []
    for path in sorted(root.glob("evaluation/*/*/features.parquet")):
        row = (pl.scan_parquet(path).filter((pl.col("site") == site) & (pl.col("layer") == layer)
                                            & (pl.col("feature") == index))
               .select(["active", "match", "r_match", "top1", "r_top1", "pearson_top", "pearson_r"]).collect())
        if len(row):
            d = row.row(0, named=True)
            rows.append({"data": f"{path.parent.parent.name}/{path.parent.name}", **d,
                         "pearson_top": [j for j in d["pearson_top"] if j >= 0],
                         "pearson_r": [round(r, 4) for j, r in zip(d["pearson_top"], d["pearson_r"]) if j >= 0]})
    return rows


def cmd_show(args) -> None:
    layer, site, index = _feature(args.feature)
    info = show_feature(run_dir(args.results, args.model, args.variant), layer, site, index, _explanations(args))
    if args.json:
        print(json.dumps(info, indent=1))
        return
    print(info["feature"])
    if "next" in info and info["next"]:
        print(f"\nnext layer ({layer} → {layer + 1}):")
        _print_table([info["next"]])
    if "previous" in info:
        print(f"\nfrom the previous layer ({layer - 1} → {layer}): features matched or top-1 to it")
        _print_table(info["previous"])
    if info.get("flow"):
        print("\nFeature Flow (where it comes from):")
        _print_table([info["flow"]])
    for row in info["on_data"]:
        print(f"\non data ({row['data']}): fired on {row['active']} tokens", end="")
        if not row["active"]:
            print(" (dead on this sample: no correlations)")
            continue
        r = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731
        print(f"; Pearson r with its partner {row['match']} {r(row['r_match'])}, with its top-1 {row['top1']} "
              f"{r(row['r_top1'])}")
        print("Pearson top-k in layer L+1: " + (", ".join(f"{j} ({v:.3f})" for j, v in
                                                          zip(row["pearson_top"], row["pearson_r"])) or "none"))
    np_info = info["neuronpedia"]
    print("\n" + (np_info["url"] if "url" in np_info else np_info.get("neuronpedia_note", "no Neuronpedia page")))
    if "explanation" in np_info:
        print(f"explanation: {np_info['explanation']}")


def cmd_lifetimes(args) -> None:
    root = run_dir(args.results, args.model, args.variant)
    files = sorted((root / "lifetimes").glob("*.parquet"))
    if not files:
        raise CliError(f"{root}: no lifetimes (…/lifetimes/*.parquet): run the pipeline first")
    chains = pl.scan_parquet(files[-1])
    if args.site:
        chains = chains.filter(pl.col("site") == args.site)
    longest = (chains.group_by("site", "chain")
               .agg(pl.len().alias("layers"), pl.col("layer").min().alias("from"), pl.col("layer").max().alias("to"),
                    pl.col("feature").sort_by("layer").alias("features"))
               .sort(["layers", "site", "chain"], descending=[True, False, False]).head(args.top).collect())
    summary = sorted((root / "summary").glob("*.L*.parquet"))
    turnover = (pl.scan_parquet(summary[-1]).select("site", "layer", "births", "deaths").sort("site", "layer").collect()
                if summary and "births" in pl.read_parquet_schema(summary[-1]) else None)
    if args.json:
        print(json.dumps({"longest": longest.to_dicts(),
                          "births_deaths": None if turnover is None else turnover.to_dicts()}, indent=1))
        return
    print(f"longest chains ({files[-1].name}):")
    _print_table([{**r, "features": " → ".join(map(str, r["features"]))} for r in longest.to_dicts()])
    if turnover is not None:
        print("\nbirths and deaths per layer (pair L → L+1):")
        _print_table(turnover.to_dicts())


def cmd_summary(args) -> None:
    root = run_dir(args.results, args.model, args.variant)
    tables = sorted((root / "summary").glob("*.tsv"))
    if not tables:
        raise CliError(f"{root}: no summary (…/summary/*.tsv): run the pipeline first")
    if args.json:
        print(json.dumps({t.name: pl.read_csv(t, separator="\t").to_dicts() for t in tables}, indent=1))
        return
    for t in tables:
        table = pl.read_csv(t, separator="\t")
        print(f"{t.name}:")
        if t.name.endswith(".flow.tsv"):  # wide: the cases per layer, then the planted origins pooled
            _print_table(table.select("layer", "features", *(f"case_{c}" for c in "ABCD")).to_dicts())
            origins = [c[len("planted_"):] for c in table.columns if c.startswith("planted_")]
            if origins:
                print("planted origins recovered (demo; layers pooled):")
                _print_table([_pooled(table, o) for o in origins])
        else:  # the pairs' summary: the columns the run's own message shows
            from .summary import console_table

            print(console_table(table))
        print()


def _pooled(table: pl.DataFrame, origin: str) -> dict:
    n = table[f"planted_{origin}"].fill_null(0)
    row = {"origin": origin.replace("_", "+"), "features": int(n.sum())}
    for key in ("case_recovered", "source_recovered"):
        col = f"{key}_{origin}"
        if col in table.columns:
            row[key] = float((table[col].fill_null(0) * n).sum() / max(int(n.sum()), 1))
    return row


# --- the command line ---------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="saematch", description=__doc__.splitlines()[0].replace("``", ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="the pipeline's results folder (default: results)")
    ap.add_argument("--explanations", default=DEFAULT_EXPLANATIONS,
                    help="a local copy of Neuronpedia's export, v1/{model}/{set}/explanations/batch-*.jsonl.gz "
                         f"(default: {DEFAULT_EXPLANATIONS}, where it exists)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, fn):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("model", help="model name as in the config (e.g. gemma-2-2b, demo)")
        p.add_argument("--variant", help="results variant (default: the only one)")
        p.set_defaults(fn=fn)
        return p

    p = add("trace", "a feature's Feature Flow graph: where it comes from (--back) or goes (--forward)", cmd_trace)
    p.add_argument("feature", help="LAYER/res/INDEX, e.g. 12/res/4230")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--back", dest="direction", action="store_const", const="back", help="where it comes from (default)")
    way.add_argument("--forward", dest="direction", action="store_const", const="forward", help="where it goes")
    way.add_argument("--both", dest="direction", action="store_const", const="both", help="both walks")
    p.set_defaults(direction="back")
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), json (node-link), graphml, "
                   "html (a self-contained viewer), png or svg")
    p.add_argument("-o", "--output", help="write to this file (needed for graphml, png, svg)")
    p.add_argument("--res-cut", type=float, default=flowgraph.RES_CUT, help="stop the residual chain below this cosine (0.5)")
    p.add_argument("--module-cut", type=float, default=flowgraph.MODULE_CUT, help="drop MLP/attention nodes below this (0.15)")

    p = add("show", "one feature: its matches both ways, verdicts, Feature Flow scores and case", cmd_show)
    p.add_argument("feature", help="LAYER/SITE/INDEX, e.g. 12/res/4230")
    p.add_argument("--json", action="store_true", help="JSON out")

    p = add("lifetimes", "the longest chains of persisting features and births/deaths per layer", cmd_lifetimes)
    p.add_argument("--site", choices=flowgraph.SITES, help="one site only")
    p.add_argument("--top", type=int, default=10, help="how many chains (10)")
    p.add_argument("--json", action="store_true", help="JSON out")

    p = add("summary", "the run's summary tables (matches, verdict, Feature Flow cases)", cmd_summary)
    p.add_argument("--json", action="store_true", help="JSON out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "format", None) == "json":
        args.json = True
    try:
        args.fn(args)
    except CliError as exc:
        print(f"saematch {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0
