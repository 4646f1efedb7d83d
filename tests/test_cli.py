"""The saematch command on broken or hostile results: missing and corrupt files, outputs that
cannot be written, out-of-range arguments, explanations with control characters or markup.
Results are hand-built here (test_graph's folder, and a two-site one for lifetimes)."""

import gzip
import json
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import polars as pl
import pytest
from test_graph import N, matches_columns, run  # noqa: F401  (run: the hand-built results fixture)

from saematch import graph as fg
from saematch.cli import main
from saematch.lifetimes import births_deaths, chains_of_files
from saematch.write import write_matches

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def call(capsys, *args):
    """(exit status, stdout, stderr) of the command, run in this process: a traceback fails the test."""
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"saematch {command}: "), err
    return lines[0]


def with_summary(root, name="res+mlp+att.L0-3"):
    """The run's summary file as summarize names it ({sites}.L{layers}): the pairs the run made."""
    (root / "summary").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"site": ["res"] * 3, "layer": [0, 1, 2]}).write_parquet(root / "summary" / f"{name}.parquet")


# --- missing and corrupt results files ------------------------------------------------------------

def test_show_and_trace_name_a_missing_matches_file_instead_of_printing_less(run, capsys):
    results, root = run
    with_summary(root)
    gone = root / "matches/site=res/layer=2/part-0.parquet"
    gone.unlink()
    status, out, err = call(capsys, "--results", results, "show", "toy", "2/res/1")
    assert status == 2 and out == ""
    line = one_line_error(err, "show")
    assert str(gone) in line and "missing" in line and "rerun snakemake" in line
    status, out, err = call(capsys, "--results", results, "trace", "toy", "1/res/0", "--forward")  # 1 → 2 → (2 → 3)
    assert status == 2 and out == "" and str(gone) in one_line_error(err, "trace")
    # the pair into layer 2 is gone for show 3/res/x (its previous layer)
    status, _, err = call(capsys, "--results", results, "show", "toy", "3/res/1")
    assert status == 2 and str(gone) in one_line_error(err, "show")
    # a walk that the cut stops before it needs the file still answers
    status, out, _ = call(capsys, "--results", results, "trace", "toy", "1/res/1", "--forward")
    assert status == 0


@pytest.mark.parametrize("kept", ["summary.tsv", "pairs.parquet"])
def test_show_names_a_missing_evaluation_file_instead_of_dropping_its_section(run, capsys, kept):
    """An evaluation whose per-feature table is gone (a killed evaluate job) is named, not skipped."""
    results, root = run
    folder = root / "evaluation/text-abc123/res+mlp+att.L0-3"
    folder.mkdir(parents=True)
    (folder / kept).write_text("what the evaluation left\n")
    status, out, err = call(capsys, "--results", results, "show", "toy", "2/res/1")
    line = one_line_error(err, "show")
    assert status == 2 and out == "" and str(folder / "features.parquet") in line and "rerun snakemake" in line


def test_the_backward_walk_names_a_missing_flow_file(run, capsys):
    results, root = run
    with_summary(root)
    gone = root / "flow/res+mlp+att/layer=2.parquet"
    gone.unlink()
    status, out, err = call(capsys, "--results", results, "trace", "toy", "3/res/2")  # 3/res/2 ← 2/res/1 needs layer 2
    assert status == 2 and out == "" and str(gone) in one_line_error(err, "trace")


def test_a_corrupt_parquet_file_is_named_with_how_to_rebuild_it(run, capsys):
    results, root = run
    bad = root / "matches/site=res/layer=2/part-0.parquet"
    bad.write_bytes(b"PAR1 this is not parquet" * 10)
    for args in (["show", "toy", "2/res/1"], ["show", "toy", "2/res/1", "--json"], ["trace", "toy", "1/res/0", "--forward"]):
        status, out, err = call(capsys, "--results", results, *args)
        line = one_line_error(err, args[0])
        assert status == 2 and out == "" and str(bad) in line and "delete it and rerun snakemake" in line
    bad = root / "flow/res+mlp+att/layer=3.parquet"
    bad.write_bytes(b"garbage")
    status, out, err = call(capsys, "--results", results, "trace", "toy", "3/res/2")
    assert status == 2 and str(bad) in one_line_error(err, "trace")


@pytest.mark.parametrize("fmt", ["html", "json", "graphml", "png", "svg"])
def test_an_output_into_a_missing_folder_is_one_line_and_writes_nothing(run, capsys, tmp_path, fmt):
    results, _ = run
    target = tmp_path / "nonexistent" / "dir" / f"g.{fmt}"
    status, out, err = call(capsys, "--results", results, "trace", "toy", "3/res/2", "--format", fmt, "-o", target)
    line = one_line_error(err, "trace")
    assert status == 2 and out == "" and str(target) in line and "no such folder" in line
    assert not (tmp_path / "nonexistent").exists()


def test_an_output_is_written_whole_in_the_format_asked_whatever_its_suffix(run, capsys, tmp_path):
    results, _ = run
    status, out, _ = call(capsys, "--results", results, "trace", "toy", "3/res/2", "--format", "png", "-o", tmp_path / "g.out")
    assert status == 0 and (tmp_path / "g.out").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


@pytest.mark.parametrize("suffix, magic", [(".html", b"<!DOCTYPE html>"), (".json", b"{"),
                                           (".graphml", b"<?xml"), (".png", b"\x89PNG"), (".txt", b"\xe2\x94\x8c")])
def test_an_output_file_is_never_ignored_its_format_read_from_its_suffix(run, capsys, tmp_path, suffix, magic):
    """-o without --format: the file's suffix names the format (a table for any other suffix);
    nothing is printed in place of writing it."""
    results, _ = run
    target = tmp_path / f"g{suffix}"
    status, out, _ = call(capsys, "--results", results, "trace", "toy", "3/res/2", "-o", target)
    assert status == 0 and out.strip() == str(target)
    assert target.read_bytes().lstrip()[:len(magic)] == magic


# --- arguments out of range ----------------------------------------------------------------------

def test_an_index_past_the_last_layers_features_is_a_range_error(run, capsys):
    results, _ = run  # layer 3 is the last: only the pair 2 → 3 reaches it
    status, out, err = call(capsys, "--results", results, "show", "toy", "3/res/99999")
    assert status == 2 and out == ""
    assert one_line_error(err, "show") == "saematch show: 3/res/99999: layer 3 has features 0–5"
    assert call(capsys, "--results", results, "show", "toy", "3/res/5")[0] == 0


@pytest.mark.parametrize("args", [["show", "toy", "-1/res/1"], ["show", "toy", "--", "-1/res/1"],
                                  ["trace", "toy", "-1/res/1"], ["show", "toy", "2/res/-1"]])
def test_a_negative_layer_or_index_is_a_range_error_naming_the_range(run, capsys, args):
    results, _ = run
    status, out, err = call(capsys, "--results", results, *args)
    line = one_line_error(err, args[0])
    assert status == 2 and out == ""
    assert ("layers 0–3" in line) if args[-1].startswith("-1") else line.endswith("layer 2 has features 0–5")


def test_llama_scope_site_names_are_accepted_like_in_the_config(run, capsys):
    results, _ = run
    assert call(capsys, "--results", results, "show", "toy", "2/R/1", "--json")[:2] == \
        call(capsys, "--results", results, "show", "toy", "2/res/1", "--json")[:2]
    status, out, _ = call(capsys, "--results", results, "trace", "toy", "3/R/2", "--format", "json")
    assert status == 0 and json.loads(out)["graph"]["root"] == "3/res/2"


@pytest.mark.parametrize("option,value", [("--res-cut", "2"), ("--res-cut", "-1.5"), ("--module-cut", "nan"),
                                          ("--module-cut", "7")])
def test_a_cut_outside_the_cosines_range_is_refused(run, capsys, option, value):
    results, _ = run
    status, out, err = call(capsys, "--results", results, "trace", "toy", "3/res/2", option, value)
    assert status == 2 and out == "" and "[-1, 1]" in one_line_error(err, "trace")


def test_argument_errors_are_one_line_too(run, capsys):
    results, _ = run
    with pytest.raises(SystemExit) as stop:
        main(["--results", str(results), "show", "toy"])
    assert stop.value.code == 2
    one_line_error(capsys.readouterr().err, "show")


# --- lifetimes -----------------------------------------------------------------------------------

# Two sites, layers 0–2, layer 2 wider (8 features) so that a layer's births differ from the
# previous layer's deaths. Persisting links per pair (feature → match):
LINKS = {("res", 0): {0: 1, 1: 0, 2: 3, 3: 2},  # 4 of 6 persist: layer 0 deaths 2, layer 1 births 2
         ("res", 1): {0: 6, 2: 4, 5: 5},        # 3 of 6: layer 1 deaths 3, layer 2 births 8 − 3 = 5
         ("mlp", 0): {0: 0},
         ("mlp", 1): {1: 1, 2: 2}}


@pytest.fixture
def two_sites(tmp_path):
    """res and mlp matches 0→1, 1→2, their lifetimes file (as the lifetimes rule writes it)
    and a summary with births and deaths per pair (as summarize joins them)."""
    root = tmp_path / "two" / "results" / "model=toy" / "variant=v"
    paths = []
    for (site, L), links in LINKS.items():
        width = 8 if L == 1 else N  # of layer L + 1
        free = [g for g in range(width) if g not in links.values()]  # the dying features' forced partners
        match = np.array([links[f] if f in links else free.pop(0) for f in range(N)], np.int32)
        conf = np.array([0.9 if f in links else 0.1 for f in range(N)])
        path = root / f"matches/site={site}/layer={L}/part-0.parquet"
        write_matches(path, matches_columns(match, np.full(N, 0.6), conf, match=match), {"site": site, "layer": L, "n_dst": width})
        paths.append(str(path))
    long = chains_of_files(paths)
    (root / "lifetimes").mkdir()
    long.write_parquet(root / "lifetimes" / "res+mlp.L0-2.parquet")
    (root / "summary").mkdir()
    births_deaths(long).filter(pl.col("layer") < 2).drop("features").write_parquet(root / "summary/res+mlp.L0-2.parquet")
    return tmp_path / "two" / "results", root


def hand_count(root, site):
    """Births and deaths per layer, counted from the matches files themselves."""
    m = {L: pl.read_parquet(root / f"matches/site={site}/layer={L}/part-0.parquet") for L in (0, 1)}
    width = {0: m[0].height, 1: m[1].height, 2: 8}
    linked_into = {L + 1: set(m[L].filter("persists")["match"]) for L in (0, 1)}
    return [{"site": site, "layer": L, "features": width[L],
             "births": None if L == 0 else width[L] - len(linked_into[L]),
             "deaths": None if L == 2 else int((~m[L]["persists"]).sum())} for L in (0, 1, 2)]


def test_lifetimes_per_site_gives_that_sites_births_of_each_layer_the_last_included(two_sites, capsys):
    results, root = two_sites
    status, out, _ = call(capsys, "--results", results, "lifetimes", "toy", "--site", "res", "--json")
    assert status == 0
    got = json.loads(out)
    assert got["births_deaths"] == hand_count(root, "res")
    assert [r["births"] for r in got["births_deaths"]] == [None, 2, 5]
    assert {r["site"] for r in got["longest"]} == {"res"}
    status, out, _ = call(capsys, "--results", results, "lifetimes", "toy", "--site", "res")
    assert status == 0 and not [line for line in out.splitlines() if line.startswith(("│ mlp", "│ att"))]
    rows = [[c.strip(" │") for c in line.split("┆")] for line in out.split("births and deaths")[1].splitlines()
            if line.startswith("│ res")]
    assert [r[1:] for r in rows] == [["0", "6", "null", "2"], ["1", "6", "2", "3"], ["2", "8", "5", "null"]]
    status, out, _ = call(capsys, "--results", results, "lifetimes", "toy", "--site", "M", "--format", "json")
    assert status == 0 and json.loads(out)["births_deaths"] == hand_count(root, "mlp")


@pytest.mark.parametrize("top", ["-3", "-1", "0"])
def test_lifetimes_top_must_be_a_positive_count(two_sites, capsys, top):
    results, _ = two_sites
    status, out, err = call(capsys, "--results", results, "lifetimes", "toy", "--top", top)
    assert status == 2 and out == "" and f"--top {top}" in one_line_error(err, "lifetimes")


def test_a_corrupt_lifetimes_file_is_named(two_sites, capsys):
    results, root = two_sites
    bad = root / "lifetimes" / "res+mlp.L0-2.parquet"
    bad.write_bytes(b"not parquet")
    status, out, err = call(capsys, "--results", results, "lifetimes", "toy")
    assert status == 2 and out == "" and str(bad) in one_line_error(err, "lifetimes")


# --- one convention for JSON ---------------------------------------------------------------------

def test_json_and_format_json_are_the_same_on_every_subcommand(run, two_sites, capsys):
    results, _ = run
    for args in (["show", "toy", "2/res/1"], ["trace", "toy", "3/res/2"]):
        a, b = call(capsys, "--results", results, *args, "--json"), call(capsys, "--results", results, *args, "--format", "json")
        assert a[0] == b[0] == 0 and a[1] == b[1] and json.loads(a[1])
    results, _ = two_sites
    for args in (["lifetimes", "toy"], ["summary", "toy"]):
        (results / "model=toy/variant=v/summary/res+mlp.L0-2.tsv").write_text("site\tlayer\nres\t0\n")
        a, b = call(capsys, "--results", results, *args, "--json"), call(capsys, "--results", results, *args, "--format", "json")
        assert a[0] == b[0] == 0 and a[1] == b[1] and json.loads(a[1])


# --- explanations: control characters and markup ---------------------------------------------------

HOSTILE = ["\x1b[31mred\x1b[0m wedding\x07 bells\x9b2J\x00", "<!--<script>", "</script><b>x</b>", "&amp; &lt;",
           "tab\there\nnewline \x1b]0;title\x07done"]


def with_explanations(tmp_path, layer, texts):
    export = tmp_path / "np" / "v1" / "gemma-2-2b" / f"{layer}-gemmascope-res-16k" / "explanations"
    export.mkdir(parents=True)
    with gzip.open(export / "batch-0.jsonl.gz", "wt") as fh:
        for index, text in texts.items():
            fh.write(json.dumps({"index": str(index), "description": text}) + "\n")
    return tmp_path / "np"


def test_explanations_reach_the_terminal_and_exports_without_control_characters(run, capsys, tmp_path):
    results, _ = run
    np_root = with_explanations(tmp_path, 3, {2: HOSTILE[0], 1: HOSTILE[4]})
    status, out, _ = call(capsys, "--results", results, "--explanations", np_root, "show", "toy", "3/res/2")
    assert status == 0 and "explanation: red wedding bells\n" in out
    assert not any(ord(c) < 32 and c not in "\n" or 0x7f <= ord(c) <= 0x9f for c in out), repr(out)
    status, out, _ = call(capsys, "--results", results, "--explanations", np_root, "show", "toy", "3/res/1", "--json")
    assert json.loads(out)["neuronpedia"]["explanation"] == "tab\there\nnewline done"
    status, out, _ = call(capsys, "--results", results, "--explanations", np_root, "trace", "toy", "3/res/2",
                          "--format", "graphml", "-o", tmp_path / "g.graphml")
    assert status == 0
    text = (tmp_path / "g.graphml").read_text()
    assert "\x1b" not in text and "\x07" not in text and "\x00" not in text
    assert nx.read_graphml(tmp_path / "g.graphml").nodes["3/res/2"]["explanation"] == "red wedding bells"


def test_the_viewers_embedded_json_escapes_markup():
    G = nx.DiGraph(root="0/res/0")
    G.add_node("0/res/0", layer=0, site="res", index=0, explanation=" | ".join(HOSTILE[1:4]))
    page = fg.to_html(G)
    data = page.split('<script id="graph-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert not set("<>&") & set(data)
    assert json.loads(data)["nodes"][0]["explanation"] == " | ".join(HOSTILE[1:4])


@pytest.mark.skipif(not BROWSER, reason="no chromium here")
def test_the_viewer_still_draws_its_nodes_with_hostile_explanations_in_a_real_browser(run, tmp_path):
    _, root = run
    paths = fg.results_paths(root)
    np_root = with_explanations(tmp_path, 3, {2: HOSTILE[1], 1: HOSTILE[2]})
    export = np_root / "v1" / "gemma-2-2b" / "2-gemmascope-res-16k" / "explanations"
    export.mkdir(parents=True)
    with gzip.open(export / "batch-0.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"index": "1", "description": HOSTILE[3]}) + "\n")
    G = fg.annotate(fg.trace(paths, "3/res/2", "both", res_cut=0.25, module_cut=0.05), paths, np_root)
    assert G.nodes["3/res/2"]["explanation"] == "<!--<script>"
    page = tmp_path / "graph.html"
    page.write_text(fg.to_html(G))
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri() + "#3/res/2"],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-nodes-drawn="{G.number_of_nodes()}"' in dom and 'data-error="' not in dom
    for n in G.nodes:
        assert f'data-id="{n}"' in dom
    info = dom.split('id="info">', 1)[1].split("</div>", 1)[0]
    assert "explanation: &lt;!--&lt;script&gt;" in info  # shown as text, not markup
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri() + "#2/res/1"],
                         capture_output=True, text=True, timeout=120).stdout
    assert "explanation: &amp;amp; &amp;lt;" in dom.split('id="info">', 1)[1]


def test_python_m_saematch_prints_one_line_for_a_bad_output_path(run, tmp_path):
    results, _ = run
    out = subprocess.run([sys.executable, "-m", "saematch", "--results", str(results), "trace", "toy", "3/res/2",
                          "--format", "html", "-o", str(tmp_path / "no" / "g.html")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr


# --- which run: models and variants ------------------------------------------------------------

def test_a_model_without_results_is_named_with_the_models_there(run, capsys):
    results, _ = run
    status, out, err = call(capsys, "--results", results, "summary", "gemma")
    assert status == 2 and out == ""
    assert one_line_error(err, "summary") == (f"saematch summary: no results for model 'gemma' under {results}/ "
                                              "(models there: toy; run the pipeline first)")


def test_with_two_variants_each_command_reads_the_one_asked_for(run, capsys):
    results, root = run
    (root / "summary").mkdir()
    (root / "summary/res.L0-3.tsv").write_text("site\tlayer\nres\t0\n")
    other = root.parent / "variant=w"
    shutil.copytree(root, other)
    (other / "summary/res.L0-3.tsv").write_text("site\tlayer\nmlp\t7\n")
    status, _, err = call(capsys, "--results", results, "summary", "toy")
    assert status == 2 and "2 variants (v, w); pick one with --variant" in err
    outs = {}
    for variant in ("v", "w"):
        status, outs[variant], _ = call(capsys, "--results", results, "summary", "toy", "--variant", variant, "--json")
        assert status == 0
    assert outs["v"] != outs["w"] and '"mlp"' in outs["w"] and '"mlp"' not in outs["v"]


def test_the_trace_table_names_its_columns(run, capsys):
    results, _ = run
    status, out, _ = call(capsys, "--results", results, "trace", "toy", "3/res/2")
    assert status == 0
    header = next(line for line in out.splitlines() if "from" in line)
    assert [c.strip() for c in header.strip("│ ").split("┆")] == ["from", "to", "relations", "score", "confidence", "r on data"]


def test_show_says_when_nothing_links_to_a_feature_from_the_previous_layer(two_sites, capsys):
    results, root = two_sites
    for made in ("summary", "lifetimes"):  # a run that made no flow files: none expected
        (root / made / "res+mlp.L0-2.parquet").unlink()
    # mlp layer 2 has 8 features; the pair 1 → 2 links 1, 2 (persisting) and 0, 3, 4, 5 (forced): none reaches 7
    status, out, err = call(capsys, "--results", results, "show", "toy", "2/mlp/7")
    assert status == 0, err
    assert "from layer 1: features linked to it" in out and "(nothing)" in out.split("from layer 1:")[1]
    status, out, _ = call(capsys, "--results", results, "show", "toy", "2/mlp/7", "--json")
    assert json.loads(out)["previous"] == [] and json.loads(out)["pairs"] == [0, 1]


def test_the_last_layers_width_without_a_recorded_one_is_one_past_the_highest_partner_either_way(tmp_path, capsys):
    root = tmp_path / "results/model=toy/variant=v"
    cols = matches_columns([4, 1, 0, 2, 3, 1], np.full(N, 0.6), np.full(N, 0.9), match=[0, 1, 2, 3, 1, 0])
    write_matches(root / "matches/site=res/layer=0/part-0.parquet", cols, {"site": "res", "layer": 0})  # no n_dst
    assert call(capsys, "--results", tmp_path / "results", "show", "toy", "1/res/4")[0] == 0  # top1 reaches 4
    status, _, err = call(capsys, "--results", tmp_path / "results", "show", "toy", "1/res/5")
    assert status == 2 and "1/res/5: layer 1 has features 0–4" in one_line_error(err, "show")
    (root / "matches/site=res/layer=0/part-0.parquet").write_bytes(b"PAR1 not parquet")
    status, _, err = call(capsys, "--results", tmp_path / "results", "show", "toy", "1/res/1")
    assert status == 2 and str(root / "matches/site=res/layer=0/part-0.parquet") in one_line_error(err, "show")
