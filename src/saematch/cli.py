"""``saematch``: ask a run's results about one feature, its flow graph, lifetimes and summary.

    saematch trace demo 4/res/0 --back --format html -o graph.html
    saematch show demo 4/res/0
    saematch lifetimes demo
    saematch summary demo
    saematch find demo --site res --case C --persists
    saematch sql demo "SELECT site, count(*) FROM feature_table WHERE persists GROUP BY site"

Reads the Parquet files under ``results/model=M/variant=V`` lazily (polars). Tables for
people, ``--format json`` (or its short form ``--json``, on every subcommand) for scripts.
A feature is LAYER/SITE/INDEX (SITE res, mlp, att or Llama Scope's R, M, A). Every error is
one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import polars as pl

from . import graph as flowgraph
from .config import SITE_ALIASES, SITES

FORMATS = ("table", "json", "graphml", "html", "png", "svg")
DEFAULT_EXPLANATIONS = "resources/neuronpedia"
# argparse takes '-1/res/1' for an option; a word with a space in it is always an argument to it
NEGATIVE_FEATURE = re.compile(r"-\d+/[A-Za-z]+/-?\d+")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


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


def _matches(paths: dict, site: str, layer: int) -> Path | None:
    """The matches file of pair layer → layer + 1; None where the run has none, CliError where
    it lost it (a summary of the run was made from it)."""
    path = flowgraph.matches_path(paths["root"], site, layer)
    if not path.exists():
        flowgraph.check_not_lost(paths, path)
        return None
    return path


def write_output(path: str, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then renamed to it: a failure is
    one line naming the file, and leaves nothing behind."""
    out = Path(path)
    if not out.parent.is_dir():
        raise CliError(f"-o {path}: no such folder {out.parent}")
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")  # the same suffix (graphml.gz stays gzip)
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise CliError(f"-o {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _text_writer(text: str):
    return lambda tmp: Path(tmp).write_text(text)


def _table_text(rows: list[dict]) -> str:
    if not rows:
        return "(nothing)"
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, float_precision=3):
        return str(pl.DataFrame(rows))


def _print_table(rows: list[dict]) -> None:
    print(_table_text(rows))


# an output file's suffix names its format when --format is not given (any other suffix: the table)
SUFFIX_FORMATS = {".json": "json", ".graphml": "graphml", ".html": "html", ".htm": "html", ".png": "png", ".svg": "svg"}


# --- subcommands --------------------------------------------------------------------------------

def cmd_trace(args) -> None:
    root = run_dir(args.results, args.model, args.variant)
    for f in args.feature:
        _feature(f)
    paths = flowgraph.results_paths(root)
    if not paths["flow"] and args.direction != "forward" and args.mode == "flow":
        raise CliError(f"{root}: no flow files (…/flow/MODULES/layer=L.parquet): run the pipeline with the res site selected")
    if len(args.feature) == 1:
        G = flowgraph.trace(paths, args.feature[0], args.direction, args.res_cut, args.module_cut, args.mode, args.cut)
    else:
        G = flowgraph.trace_set(paths, args.feature, args.direction, args.res_cut, args.module_cut, args.mode, args.cut)
    try:
        flowgraph.annotate(G, paths, _explanations(args))
    except ValueError as exc:  # an explanations file
        raise CliError(str(exc)) from None
    fmt = args.format or SUFFIX_FORMATS.get(Path(args.output or "").suffix.lower(), "table")
    if fmt in ("png", "svg", "graphml") and not args.output:
        raise CliError(f"--format {fmt} writes a file: give -o/--output")
    if fmt == "table":
        text = _table_text([{"from": u, "to": v, "relations": a.get("relations"), "score": a["score"],
                             "confidence": a.get("confidence"), "r on data": a.get("r")}
                            for u, v, a in sorted(G.edges(data=True), key=lambda e: (-G.nodes[e[1]]["layer"], e[0]))])
        text += "".join("\n" + end_line(e) for e in G.graph["ends"])
    elif fmt == "json":
        text = json.dumps(flowgraph.to_json(G), indent=1)
    elif fmt == "html":
        text = flowgraph.to_html(G)
    elif fmt == "graphml":
        write_output(args.output, lambda tmp: flowgraph.write_graphml(G, tmp))
        print(args.output)
        return
    else:
        from .figures import plot_trace

        write_output(args.output, lambda tmp: plot_trace(G, tmp, fmt))
        print(args.output)
        return
    if args.output:
        write_output(args.output, _text_writer(text))
        print(args.output)
    else:
        print(text)


def end_line(end: dict) -> str:
    """Why a trace stopped, in one line."""
    text = f"{end['direction']} walk ends at {end['at']}: {end['why']}"
    if "best" in end:
        conf = "–" if end["confidence"] is None else f"{end['confidence']:.3f}"
        text += f" (best candidate {end['best']} by {end['relations']}: cosine {end['score']:.3f}, confidence {conf})"
    return text


def show_feature(root: Path, layer: int, site: str, index: int, explanations: str | None = None) -> dict:
    """Everything the run knows about one feature: its partner in layer L+1, who points at it
    from layer L−1, (residual features) its Feature Flow scores and case, and its Neuronpedia
    link and explanations."""
    out: dict = {"feature": flowgraph.node_name(layer, site, index)}
    paths = flowgraph.results_paths(root)
    pairs = {int(p.parent.name.split("=")[1]) for p in (root / "matches" / f"site={site}").glob("layer=*/part-0.parquet")}
    pairs |= {int(p.parent.name.split("=")[1]) for p in paths["expected"] if p.parent.parent.name == f"site={site}"}
    known = pairs | {L + 1 for L in pairs}
    if layer not in known:
        raise CliError(f"{out['feature']}: layer {layer} is not in this run's results for site {site} ({root}): "
                       f"layers {flowgraph.layers_text(known)}")
    fwd, back = _matches(paths, site, layer), _matches(paths, site, layer - 1)
    flow = flowgraph.flow_path(paths, layer) if site == "res" else None
    n = n_features(fwd, back, flow)
    if not 0 <= index < n:
        raise CliError(f"{out['feature']}: layer {layer} has features 0–{n - 1}")
    out["pairs"] = sorted(pairs)  # the run's pairs L → L+1 of this site: is there one into this layer?
    cols = ["match", "cosine", "persists", "confidence", "top1", "top1_cosine", "top1_persists", "top1_confidence"]
    if fwd:
        with flowgraph.reading(fwd):
            scan = pl.scan_parquet(fwd)
            judged = ["unjudged"] if "unjudged" in scan.collect_schema().names() else []  # older files lack it
            row = scan.filter(pl.col("feature") == index).select(cols + judged).collect()
        out["next"] = row.row(0, named=True) if len(row) else None
    from .edges import edges_at, links

    out["forward"] = links(edges_at(paths, layer, site, index, "forward"), "forward")
    out["previous"] = links(edges_at(paths, layer, site, index, "back"), "back")
    if flow is not None:
        with flowgraph.reading(flow):
            row = (pl.scan_parquet(flow).filter(pl.col("feature") == index)
                   .select(["res", "s_res", "mlp", "s_mlp", "att", "s_att", "case"]).collect())
        out["flow"] = row.row(0, named=True) if len(row) else None
    out["on_data"] = on_data(root, layer, site, index)
    from .neuronpedia import annotate, load_explanations

    where = flowgraph.neuronpedia_where(paths, layer, site)
    try:
        found = load_explanations(explanations, where["model"], where["set"]) if explanations and "set" in where else None
    except ValueError as exc:  # an explanations file
        raise CliError(str(exc)) from None
    out["neuronpedia"] = annotate({}, where, index, found)
    return out


def n_features(fwd: Path | None, back: Path | None, flow: Path | None) -> int:
    """How many features the layer has: the rows of its pair into the next layer, else (the
    last layer) the width its pair from the previous one recorded (``n_dst``), else its flow
    file's rows, else one past the highest partner pointing into it."""
    if fwd is not None:
        with flowgraph.reading(fwd):
            return pl.scan_parquet(fwd).select(pl.len()).collect().item()
    with flowgraph.reading(back):
        from .write import read_provenance

        width = read_provenance(back).get("n_dst")
        if width is None and flow is None:
            return pl.scan_parquet(back).select(pl.max_horizontal(pl.col("match").max(), pl.col("top1").max())).collect().item() + 1
    if width is not None:
        return int(width)
    with flowgraph.reading(flow):
        return pl.scan_parquet(flow).select(pl.len()).collect().item()


EVALUATION_FILES = ("pairs.parquet", "features.parquet", "summary.tsv", "calibration.tsv", "evaluation.png")


def on_data(root: Path, layer: int, site: str, index: int) -> list[dict]:
    """The feature's row in each evaluation on activations of this run (saematch.evaluate):
    how often it fired, its partners' Pearson r and its Pearson top-k in layer L+1."""
    rows = []
    for folder in sorted({p.parent for p in root.glob("evaluation/*/*/*") if p.name in EVALUATION_FILES}):
        path = folder / "features.parquet"
        if not path.exists():  # its job was killed after the summary was made, or the file deleted
            raise CliError(f"{path}: missing (its evaluation's other files are there): rerun snakemake to rebuild it")
        with flowgraph.reading(path):
            row = (pl.scan_parquet(path).filter((pl.col("site") == site) & (pl.col("layer") == layer)
                                                & (pl.col("feature") == index))
                   .select(["active", "match", "r_match", "top1", "r_top1", "pearson_top", "pearson_r"]).collect())
        if len(row):
            d = row.row(0, named=True)
            rows.append({"data": f"{path.parent.parent.name}/{path.parent.name}", **d,
                         "pearson_top": [j for j in d["pearson_top"] if j >= 0],
                         "pearson_r": [round(r, 4) for j, r in zip(d["pearson_top"], d["pearson_r"]) if j >= 0],
                         "verdict": verdict_on_data(folder, layer, site, index)})
    return rows


VERDICT_COLUMNS = ["confidence", "persists", "how", "unjudged", "top1_confidence", "top1_persists", "top1_how",
                   "top1_unjudged"]


def verdict_on_data(folder: Path, layer: int, site: str, index: int) -> dict | None:
    """The feature's verdict re-fitted on an evaluation (saematch.verdict_data: verdict.parquet)
    and its site's held-out calibration (verdict.tsv); None where the evaluation has none yet."""
    table, sites = folder / "verdict.parquet", folder / "verdict.tsv"
    if not (table.exists() and sites.exists()):
        return None
    with flowgraph.reading(table):
        row = (pl.scan_parquet(table).filter((pl.col("site") == site) & (pl.col("layer") == layer)
                                             & (pl.col("feature") == index)).select(VERDICT_COLUMNS).collect())
    with flowgraph.reading(sites):
        site_row = pl.read_csv(sites, separator="\t").filter(pl.col("site") == site)
    if not len(row) or not len(site_row):
        return None
    s = site_row.row(0, named=True)
    return {**row.row(0, named=True), "tokens": s["tokens"], "data": s["data"],
            "held_out_ece": s["match_ece_after"], "data_free_ece": s["match_ece_before"],
            "top1_held_out_ece": s["top1_ece_after"], "top1_data_free_ece": s["top1_ece_before"]}


def verdict_line(v: dict) -> str:
    """``saematch show``'s line for a feature's verdict on data."""
    def text(pre: str, name: str) -> str:
        if v[f"{pre}unjudged"]:
            return f"{name}: not judged, {v[f'{pre}unjudged']}"
        if v[f"{pre}confidence"] is None:
            return f"{name}: –"
        return f"{name} {v[f'{pre}confidence']:.3f} ({'persists' if v[f'{pre}persists'] else 'dies'}, {v[f'{pre}how']})"
    def ece(pre: str) -> str:
        after, before = v[f"{pre}held_out_ece"], v[f"{pre}data_free_ece"]
        num = lambda x: "–" if x is None or x != x else f"{x:.3f}"  # noqa: E731
        return f"{num(after)} (data-free {num(before)})"
    ece_text = f"; the site's held-out ECE {ece('')}, top-1 {ece('top1_')}"
    return (f"verdict on data: {text('', 'confidence')}, {text('top1_', 'top-1')} — calibrated on {v['tokens']} "
            f"tokens of {v['data']}{ece_text}")


def cmd_show(args) -> None:
    layer, site, index = _feature(args.feature)
    info = show_feature(run_dir(args.results, args.model, args.variant), layer, site, index, _explanations(args))
    if args.format == "json":
        print(json.dumps(info, indent=1))
        return
    print(info["feature"])
    link_cols = ["layer", "site", "feature", "relations", "confidence", "score", "r"]
    if info.get("next"):
        print(f"\nto layer {layer + 1}: one row per partner, with the relations that propose it "
              f"(match: SAE Match, top1: nearest decoder, flow_res: Feature Flow's predecessor; docs/graph.md)")
        _print_table([{k: d[k] for k in link_cols} for d in info["forward"]])
        n = info["next"]
        print(f"SAE Match partner {n['match']}: {'persists' if n['persists'] else 'dies'}; top-1 {n['top1']}: "
              f"{'persists' if n['top1_persists'] else 'dies'} (verdict at confidence ≥ the cut)")
        if n.get("unjudged"):
            print(f"not judged from the weights: {n['unjudged']}")
    if info["previous"] or layer - 1 in info.get("pairs", []):
        print(f"\nfrom layer {layer - 1}: features linked to it, one row each, with the relations that propose them")
        _print_table([{k: d[k] for k in link_cols} for d in info["previous"]])
    if info.get("flow"):
        print("\nFeature Flow (where it comes from):")
        _print_table([info["flow"]])
    for row in info["on_data"]:
        print(f"\non data ({row['data']}): fired on {row['active']} tokens", end="")
        if not row["active"]:
            print(" (dead on this sample: no correlations)")
        else:
            r = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731
            print(f"; Pearson r with its partner {row['match']} {r(row['r_match'])}, with its top-1 {row['top1']} "
                  f"{r(row['r_top1'])}")
            print("Pearson top-k in layer L+1: " + (", ".join(f"{j} ({v:.3f})" for j, v in
                                                              zip(row["pearson_top"], row["pearson_r"])) or "none"))
        if row["verdict"]:
            print(verdict_line(row["verdict"]))
    np_info = info["neuronpedia"]
    print("\n" + (np_info["url"] if "url" in np_info else np_info.get("neuronpedia_note", "no Neuronpedia page")))
    if "explanation" in np_info:
        print(f"explanation: {np_info['explanation']}")


def cmd_lifetimes(args) -> None:
    from .lifetimes import births_deaths

    root = run_dir(args.results, args.model, args.variant)
    files = sorted((root / "lifetimes").glob("*.parquet"))
    if not files:
        raise CliError(f"{root}: no lifetimes (…/lifetimes/*.parquet): run the pipeline first")
    rows = {}
    for f in files:
        with flowgraph.reading(f):
            rows[f] = pl.scan_parquet(f).select(pl.len()).collect().item()
    widest = max(files, key=lambda f: rows[f])  # the widest selection summarised
    with flowgraph.reading(widest):
        chains = pl.read_parquet(widest, columns=["site", "chain", "layer", "feature"])
    if args.site:
        sites = chains["site"].unique(maintain_order=True).to_list()
        chains = chains.filter(pl.col("site") == args.site)
        if not chains.height:
            raise CliError(f"{widest}: no chains of site {args.site} (sites: {', '.join(sites) or 'none'})")
    longest = (chains.group_by("site", "chain")
               .agg(pl.len().alias("layers"), pl.col("layer").min().alias("from"), pl.col("layer").max().alias("to"),
                    pl.col("feature").sort_by("layer").alias("features"))
               .sort(["layers", "site", "chain"], descending=[True, False, False]).head(args.top))
    turnover = births_deaths(chains)
    if args.format == "json":
        print(json.dumps({"file": str(widest), "longest": longest.to_dicts(), "births_deaths": turnover.to_dicts()},
                         indent=1))
        return
    print(f"longest chains ({widest.name}):")
    _print_table([{**r, "features": " → ".join(map(str, r["features"]))} for r in longest.to_dicts()])
    print("\nbirths and deaths per layer: births, features with no persisting predecessor in layer L − 1; "
          "deaths, features that do not persist into layer L + 1 (links are one-to-one: a layer as wide as the "
          "one before has as many births as that one has deaths)")
    _print_table(turnover.to_dicts())


# the evaluation's summary columns `saematch summary` prints (all are in --json and the file)
EVALUATION_COLUMNS = ["site", "layer", "tokens", "features_evaluated", "matching_score", "matching_score_chance",
                      "agree_match", "agree_top1", "persists_correlated", "dies_correlated", "ev_permute_folded",
                      "dl_permute_folded"]
VERDICT_DATA_COLUMNS = ["site", "labelled", "dead", "match_ece_before", "match_ece_after", "top1_ece_before",
                        "top1_ece_after", "match_unjudged"]


def cmd_summary(args) -> None:
    root = run_dir(args.results, args.model, args.variant)
    tables = sorted((root / "summary").glob("*.tsv"))
    if not tables:
        raise CliError(f"{root}: no summary (…/summary/*.tsv): run the pipeline first")
    evaluated = sorted(root.glob("evaluation/*/*/summary.tsv")) + sorted(root.glob("evaluation/*/*/verdict.tsv"))
    read = {}
    for t in tables + evaluated:
        with flowgraph.reading(t):
            read[t] = pl.read_csv(t, separator="\t", infer_schema_length=None)
    name = lambda t: t.name if t in tables else str(t.relative_to(root))  # noqa: E731
    if args.format == "json":
        print(json.dumps({name(t): table.to_dicts() for t, table in read.items()}, indent=1))
        return
    for t, table in read.items():
        print(f"{name(t)}:")
        if t in evaluated:  # on data: the matching score against chance, agreement with the Pearson partner, ΔL
            cols = EVALUATION_COLUMNS if t.name == "summary.tsv" else VERDICT_DATA_COLUMNS
            _print_table(table.select([c for c in cols if c in table.columns]).to_dicts())
        elif t.name.endswith(".flow.tsv"):  # wide: the cases per layer, then the planted origins pooled
            _print_table(table.select("layer", "features", *(f"case_{c}" for c in "ABCD")).to_dicts())
            origins = [c[len("planted_"):] for c in table.columns if c.startswith("planted_")]
            if origins:
                print("planted origins recovered (demo; layers pooled):")
                _print_table([_pooled(table, o) for o in origins])
        else:  # the pairs' summary: the columns the run's own message shows
            from .summary import console_table

            print(console_table(table))
        print()


def _run_tables(args) -> tuple[dict, dict]:
    from .query import tables

    root = run_dir(args.results, args.model, args.variant)
    paths = flowgraph.results_paths(root)
    t = tables(paths)
    if "matches" not in t:
        raise CliError(f"{root}: no matches (…/matches/site=S/layer=L/part-0.parquet): run the pipeline first")
    return t, paths


def _print_frame(df: pl.DataFrame, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(df.to_dicts(), indent=1, default=str))
    else:
        print(_table_text(df.to_dicts()) + f"\n{df.height} rows")


def _range(text: str | None, name: str) -> tuple | None:
    """'0.2:0.8', '0.2:' or ':0.8' → (low, high)."""
    if text is None:
        return None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (float(lo) if lo else None, float(hi) if hi else None)
    except ValueError:
        raise CliError(f"--{name} {text!r}: give a range LOW:HIGH, either end may be left out (e.g. 0.9: or :0.2)") from None


def _layers(text: str | None) -> list[int] | None:
    """'3', '3-5' or '1,4-6' → layers."""
    if text is None:
        return None
    out = []
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            out += range(int(a), int(b or a) + 1)
    except ValueError:
        raise CliError(f"--layer {text!r}: give layers as 3, 3-5 or 1,4-6") from None
    return out


FIND_COLUMNS = ["site", "layer", "feature", "match", "confidence", "persists", "top1", "top1_confidence", "case",
                "chain_length", "active", "r_match", "unjudged", "explanation"]


def cmd_find(args) -> None:
    from .query import find

    if args.explanation is not None and _explanations(args) is None:
        raise CliError(f"--explanation needs a local copy of Neuronpedia's explanations: {args.explanations} "
                       "does not exist (see docs/flow.md, Neuronpedia)")
    t, paths = _run_tables(args)
    df = find(t, site=args.site, layers=_layers(args.layer), case=args.case, persists=args.persists,
              confidence=_range(args.confidence, "confidence"), min_chain=args.min_chain, r=_range(args.r, "r"),
              limit=args.limit, dead=args.dead, explanation=args.explanation, paths=paths,
              explanations_root=_explanations(args))
    if args.format != "json":  # the columns a person reads; --json has them all
        df = df.select([c for c in FIND_COLUMNS if c in df.columns])
    _print_frame(df, args.format)


def cmd_sql(args) -> None:
    from .query import sql

    t, _ = _run_tables(args)
    try:
        df = sql(t, args.query)
    except (pl.exceptions.PolarsError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CliError(f"{reason} (tables: {', '.join(sorted(t))})") from None
    _print_frame(df, args.format)


def _pooled(table: pl.DataFrame, origin: str) -> dict:
    n = table[f"planted_{origin}"].fill_null(0)
    row = {"origin": origin.replace("_", "+"), "features": int(n.sum())}
    for key in ("case_recovered", "source_recovered"):
        col = f"{key}_{origin}"
        if col in table.columns:
            row[key] = float((table[col].fill_null(0) * n).sum() / max(int(n.sum()), 1))
    return row



def _run_model(config_path: str, model: str):
    """(model, tokenizer, SAE format) from the pointer of the model's download (the pipeline's
    resources/hub/model/…): the config's catalog names its repo and revision."""
    import yaml

    from .config import pointer_path
    from .hub import resolve_files
    from .lm import load_lm

    try:
        config = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{config_path}: cannot read the config: {exc}") from None
    entry = ((config or {}).get("catalog") or {}).get(model)
    if not entry or "model" not in entry:
        raise CliError(f"{config_path}: catalog.{model}.model is not set: steering runs the model itself")
    pointer_file = Path(pointer_path({"format": "model", "repo_id": entry["model"]["repo_id"],
                                      "revision": entry["model"]["revision"]}))
    if not pointer_file.is_file():
        raise CliError(f"{pointer_file}: the model has not been downloaded; run the pipeline with evaluate.models "
                       f"including {model} (it downloads the model), or the rule download_model")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars between the command's own lines
    lm_, tokenizer = load_lm(resolve_files(json.loads(pointer_file.read_text())))
    return lm_, tokenizer, entry["format"]


def cmd_steer(args) -> None:
    from . import steer

    if (args.s is None) == (args.r is None):
        raise CliError("give one of --s (activate the theme) or --r (deactivate it)")
    if bool(args.seed) == bool(args.query):
        raise CliError("give the theme's seeds: --seed LAYER/SITE/INDEX (repeatable) or --query TEXT")
    root = run_dir(args.results, args.model, args.variant)
    paths = flowgraph.results_paths(root)
    if args.query:
        if _explanations(args) is None:
            raise CliError(f"--query needs a local copy of Neuronpedia's explanations: {args.explanations} "
                           "does not exist (flow.explanations: true downloads them; or give --explanations)")
        try:
            args.seed = steer.theme_seeds(paths, {"query": {"text": args.query, "layers": args.query_layer or [args.layer]}},
                                          _explanations(args))
        except ValueError as exc:
            raise CliError(str(exc)) from None
    for f in args.seed:
        _feature(f)
    theme = steer.feature_set(paths, args.seed, args.mode, args.cut)
    layers = steer.steered_layers(theme["layer"].to_list(), args.layer, args.cumulative)
    if not theme.filter(pl.col("layer").is_in(layers)).height:
        raise CliError(f"the theme of {', '.join(args.seed)} has no feature at layer{'s ≤' if args.cumulative else ''} "
                       f"{args.layer} (its layers: {flowgraph.layers_text(sorted(set(theme['layer'])))})")
    saes = steer.run_saes(paths, theme)
    model, tokenizer, fmt = _run_model(args.config, args.model)
    how, strength = ("activate", args.s) if args.s is not None else ("deactivate", args.r)
    try:
        edit = steer.steering_edits(theme, saes, layers, how, strength, args.schedule, fold=not args.no_fold)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    probe = theme.filter(pl.col("node").is_in([flowgraph.node_name(*_feature(s)) for s in args.seed]))
    rows = steer.compare(model, tokenizer, fmt, args.prompt, edit, probe, saes, args.max_tokens, args.sample_seed)
    setting = {"how": how, "strength": strength, "layers": layers, "schedule": args.schedule, "fold": not args.no_fold,
               "features": theme.filter(pl.col("layer").is_in(layers))["node"].to_list()}
    if args.format == "json":
        print(json.dumps({"setting": setting, "seeds": args.seed, "theme": theme["node"].to_list(), "generations": rows},
                         indent=1))
        return
    print(f"{how} {len(setting['features'])} features of the theme ({theme.height} in all) at layers "
          f"{flowgraph.layers_text(layers)}, {'s' if how == 'activate' else 'r'} = {strength:g}"
          + (f", {args.schedule} schedule" if how == "activate" else ""))
    print(f"seeds {', '.join(args.seed)}; steered {', '.join(setting['features'])}")
    print(_table_text([{k: r[k] for k in ("prompt", "unsteered", "steered")} for r in rows]))
    print(_table_text([{"prompt": r["prompt"], **{f"{w} {m}": r[f"{w}_{k}"] for m, k in
                        (("presence", "presence"), ("perplexity", "perplexity"), ("distinct-2", "distinct_2"))
                        for w in ("unsteered", "steered")}} for r in rows]))
    print("presence: the seeds' mean activation on the generated tokens; perplexity: the unsteered model's")

# --- the command line ---------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="saematch", description=__doc__.splitlines()[0].replace("``", ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="the pipeline's results folder (default: results)")
    ap.add_argument("--explanations", default=DEFAULT_EXPLANATIONS,
                    help="a local copy of Neuronpedia's export, v1/{model}/{set}/explanations/batch-*.jsonl.gz "
                         f"(default: {DEFAULT_EXPLANATIONS}, where it exists)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, fn, formats=("table", "json"), format_help="table (default) or json"):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("model", help="model name as in the config (e.g. gemma-2-2b, demo)")
        p.add_argument("--variant", help="results variant (default: the only one)")
        p.add_argument("--format", choices=formats, default=None if fn is cmd_trace else "table", help=format_help)
        p.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
        p.set_defaults(fn=fn)
        return p

    p = add("trace", "a feature's graph: where it comes from (--back) or goes (--forward), following the verdict "
                     "(default) or Feature Flow's cosine cuts (--mode flow)", cmd_trace,
            FORMATS, "table, json (node-link), graphml, html (a self-contained viewer), png or svg; default: from "
                     "-o's suffix (.json .graphml .html .png .svg), else table")
    p.add_argument("feature", nargs="+", help="LAYER/SITE/INDEX, e.g. 12/res/4230 (an mlp or att feature: forward into "
                                              "the residual features it feeds); several: the union of their graphs "
                                              "(a steering theme's set, with --both)")
    p.add_argument("--mode", choices=flowgraph.TRACE_MODES, default="verdict",
                   help="verdict (default): follow links whose confidence ≥ --cut, whichever relation proposes them; "
                        "flow: Feature Flow's rule, cosine ≥ --res-cut (the paper's graphs)")
    p.add_argument("--cut", type=float, default=0.5, help="verdict mode: the confidence a link needs, in [0, 1] "
                                                          "(0.5, the pipeline's match.cut default)")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--back", dest="direction", action="store_const", const="back", help="where it comes from (default)")
    way.add_argument("--forward", dest="direction", action="store_const", const="forward", help="where it goes")
    way.add_argument("--both", dest="direction", action="store_const", const="both", help="both walks")
    p.set_defaults(direction="back")
    p.add_argument("-o", "--output", help="write to this file (needed for graphml, png, svg)")
    p.add_argument("--res-cut", type=float, default=flowgraph.RES_CUT,
                   help="flow mode: stop the residual chain below this cosine, in [-1, 1] (0.5)")
    p.add_argument("--module-cut", type=float, default=flowgraph.MODULE_CUT,
                   help="drop MLP/attention nodes below this cosine, in [-1, 1] (0.15)")

    p = add("show", "one feature: its matches both ways, verdicts, Feature Flow scores and case", cmd_show)
    p.add_argument("feature", help="LAYER/SITE/INDEX, e.g. 12/res/4230")

    p = add("lifetimes", "the longest chains of persisting features and births/deaths per layer", cmd_lifetimes)
    p.add_argument("--site", type=lambda s: SITE_ALIASES.get(s, s), choices=SITES,
                   help="one site only (res, mlp, att; or R, M, A)")
    p.add_argument("--top", type=int, default=10, help="how many chains, at least 1 (10)")

    add("summary", "the run's summary tables (matches, verdict, Feature Flow cases)", cmd_summary)

    p = add("find", "features by property: site, layer, Feature Flow case, persists, confidence, chain length, "
                    "on-data r (one row per feature of the matched pairs)", cmd_find)
    p.add_argument("--site", type=lambda s: SITE_ALIASES.get(s, s), choices=SITES, help="res, mlp or att")
    p.add_argument("--layer", help="layers: 3, 3-5 or 1,4-6 (the pair's first layer)")
    p.add_argument("--case", choices=list("ABCD"), help="Feature Flow's case (res features): A translated, "
                                                        "B processed, C born in a module, D unexplained")
    p.add_argument("--persists", action="store_true", default=None, help="only features whose SAE Match partner persists")
    p.add_argument("--dies", dest="persists", action="store_false", help="only features whose partner does not")
    p.add_argument("--confidence", help="the verdict's confidence in a range LOW:HIGH (e.g. 0.9:)")
    p.add_argument("--min-chain", type=int, help="in a chain of persisting features at least this many layers long")
    p.add_argument("--r", help="on data: Pearson r with the SAE Match partner in a range LOW:HIGH (e.g. :0.2)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--explanation", help="text one of its Neuronpedia explanations contains (any case), from "
                                          "the local export (--explanations)")
    p.add_argument("--dead", action="store_true", help="list the dead features instead (decoder row ~0, or never "
                                                      "fired on an evaluation's text); left out otherwise")

    p = add("steer", "generate with a theme's flow-graph features switched on (--s) or off (--r) beside the "
                     "unsteered model, from the same random stream (docs/steering.md)", cmd_steer)
    p.add_argument("--seed", action="append", help="a seed feature LAYER/SITE/INDEX (repeatable); the "
                                                    "theme is every seed's trace both ways")
    p.add_argument("--query", help="or seeds by text: the residual features of --query-layer whose local Neuronpedia "
                                   "explanation contains it (any case; needs --explanations)")
    p.add_argument("--query-layer", type=int, action="append", help="a layer --query searches (repeatable; "
                                                                   "default: --layer)")
    p.add_argument("--layer", type=int, required=True, help="steer the theme's features of this layer")
    p.add_argument("--cumulative", action="store_true", help="and of every layer before it (default: this one only)")
    p.add_argument("--s", type=float, help="activate: add s × the features' folded decoder rows (θ·v) at every token")
    p.add_argument("--r", type=float, help="deactivate: rescale the features' own contribution by r (0 deletes it)")
    p.add_argument("--schedule", choices=("constant", "linear", "exponential"), default="constant",
                   help="how s changes over the theme's layers (constant)")
    p.add_argument("--no-fold", action="store_true", help="add s × v, not s × θ·v")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--max-tokens", type=int, default=36, help="tokens generated per prompt (36)")
    p.add_argument("--sample-seed", type=int, default=0, help="the sampling's random seed (0)")
    p.add_argument("--mode", choices=flowgraph.TRACE_MODES, default="verdict",
                   help="the theme's graph: verdict (default) or flow (the paper's cosine cuts)")
    p.add_argument("--cut", type=float, default=0.5, help="verdict mode: the confidence a link needs (0.5)")
    p.add_argument("--config", default="config/config.yaml", help="the pipeline's config, for the model's download "
                                                                  "(config/config.yaml)")

    p = add("sql", "a SQL query (polars SQL) over the run's tables: matches, flow, lifetimes, features, edges, "
                   "feature_table (docs/graph.md)", cmd_sql)
    p.add_argument("query", help='e.g. "SELECT relation, count(*) FROM edges GROUP BY relation"')
    return ap


def check_args(args) -> None:
    """Values argparse cannot check: cosine cuts in [-1, 1], a positive --top."""
    for option in ("res_cut", "module_cut"):
        value = getattr(args, option, None)
        if value is not None and not -1 <= value <= 1:  # NaN fails too
            raise CliError(f"--{option.replace('_', '-')} {value}: a cosine cut must lie in [-1, 1]")
    cut = getattr(args, "cut", None)
    if cut is not None and not 0 <= cut <= 1:
        raise CliError(f"--cut {cut}: a confidence cut must lie in [0, 1]")
    top = getattr(args, "top", None)
    if top is not None and top < 1:
        raise CliError(f"--top {top}: give how many chains to show, at least 1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args([f" {a}" if NEGATIVE_FEATURE.fullmatch(a) else a for a in argv])
    try:
        check_args(args)
        args.fn(args)
    except (CliError, flowgraph.ResultsError) as exc:
        print(f"saematch {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0
