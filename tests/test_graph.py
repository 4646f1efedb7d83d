"""Flow graphs, the viewer, Neuronpedia annotations and the saematch command, on a results
folder built by hand: every expected edge is written down here, not computed by the code."""

import gzip
import json
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import polars as pl
import pytest

from saematch import graph as fg
from saematch.figures import plot_trace
from saematch.cli import main
from saematch.neuronpedia import load_explanations, set_for
from saematch.write import write_flow, write_matches

N = 6  # features per layer, layers 0–3


def flow_columns(res, s_res, mlp, s_mlp, att, s_att, case):
    cols = {"feature": np.arange(N, dtype=np.int32), "case": np.array(case)}
    for name, idx, s in (("res", res, s_res), ("mlp", mlp, s_mlp), ("att", att, s_att)):
        if idx is None:
            cols.update({name: None, f"s_{name}": None, f"{name}_top": None, f"s_{name}_top": None})
        else:
            cols.update({name: np.array(idx, np.int32), f"s_{name}": np.array(s, np.float32),
                         f"{name}_top": np.array(idx, np.int32)[:, None], f"s_{name}_top": np.array(s, np.float32)[:, None]})
    return cols


def matches_columns(top1, top1_cos, top1_conf, match=None, conf=None):
    match = np.array(top1 if match is None else match, np.int32)
    return {"feature": np.arange(N, dtype=np.int32), "match": match, "top1": np.array(top1, np.int32),
            "cosine": np.array(top1_cos, np.float32), "mse": np.zeros(N, np.float32),
            "top1_cosine": np.array(top1_cos, np.float32),
            "persists": np.array(top1_conf) >= 0.5, "confidence": np.array(top1_conf if conf is None else conf, np.float32),
            "top1_persists": np.array(top1_conf) >= 0.5, "top1_confidence": np.array(top1_conf, np.float32),
            "unjudged": np.full(N, None, object), "evidence": np.zeros((N, 7), np.float32),
            "top1_evidence": np.zeros((N, 7), np.float32)}


NP = {"target": {"model": "gemma-2-2b", "set": "{L}-gemmascope-res-16k"}, "res": {"model": "gemma-2-2b", "set": "{P}-gemmascope-res-16k"},
      "mlp": {"note": "L0 99 is not the canonical L0 (60): Neuronpedia has no page for this SAE"}, "att": {"model": "gemma-2-2b", "set": "{L}-gemmascope-att-16k"}}


@pytest.fixture
def run(tmp_path):
    """results/model=toy/variant=v: flow files for layers 1–3, res matches 0→1, 1→2, 2→3.

    Backward from 3/res/2: res 2 (0.9) ← res 1 at layer 2 (0.7) ← stops (layer 2's res score 0.3 < 0.5).
    Layer 3 feature 2: mlp 4 at 0.6, att 5 at 0.1 (dropped below 0.15).
    Forward from 1/res/0: top1 → 2/res/3 (0.8) → 3/res/1 (0.4 < 0.5: stop).
    """
    root = tmp_path / "results" / "model=toy" / "variant=v"
    ar = np.arange(N)
    for L in (1, 2, 3):
        res, s_res = ar.copy(), np.full(N, 0.2)
        mlp, s_mlp, att, s_att = ar.copy(), np.full(N, 0.05), ar.copy(), np.full(N, 0.05)
        if L == 3:
            res[2], s_res[2], mlp[2], s_mlp[2], att[2], s_att[2] = 1, 0.9, 4, 0.6, 5, 0.1
        if L == 2:
            res[1], s_res[1] = 3, 0.3
        cases = ["D"] * N
        np_sets = {k: {kk: vv.format(L=L, P=L - 1) for kk, vv in v.items()} for k, v in NP.items()}
        write_flow(root / "flow" / "res+mlp+att" / f"layer={L}.parquet", flow_columns(res, s_res, mlp, s_mlp, att, s_att, cases), 1,
                   {"layer": L, "neuronpedia": np_sets})
    write_matches(root / "matches/site=res/layer=0/part-0.parquet",
                  matches_columns(ar, np.full(N, 0.1), np.zeros(N)), {})
    top1 = ar.copy(); top1[0] = 3
    cos = np.full(N, 0.1); cos[0] = 0.8
    write_matches(root / "matches/site=res/layer=1/part-0.parquet", matches_columns(top1, cos, np.where(ar == 0, 0.97, 0.0)), {})
    top1 = ar.copy(); top1[3], top1[1] = 1, 2
    cos = np.full(N, 0.1); cos[3], cos[1] = 0.4, 0.7
    write_matches(root / "matches/site=res/layer=2/part-0.parquet", matches_columns(top1, cos, np.where(ar == 1, 0.88, 0.0)), {})
    return tmp_path / "results", root


def test_the_flow_mode_backward_walk_follows_residual_predecessors_until_the_cut_and_keeps_modules_above_theirs(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "3/res/2", "back", mode="flow")
    assert set(G.edges) == {("2/res/1", "3/res/2"), ("3/mlp/4", "3/res/2")}
    assert G.edges["2/res/1", "3/res/2"]["score"] == pytest.approx(0.9)
    assert G.edges["2/res/1", "3/res/2"]["confidence"] == pytest.approx(0.88)  # 2/res/1's top-1 is 3/res/2
    assert G.nodes["3/res/2"]["case"] == "D" and G.nodes["3/mlp/4"]["site"] == "mlp"
    low = fg.trace(fg.results_paths(root), "3/res/2", "back", res_cut=0.25, module_cut=0.05, mode="flow")
    assert ("1/res/3", "2/res/1") in low.edges and ("3/att/5", "3/res/2") in low.edges


def test_the_flow_mode_forward_walk_follows_top1_partners_while_the_cosine_holds(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/res/0", "forward", module_cut=0.5, mode="flow")
    assert set(G.edges) == {("1/res/0", "2/res/3")}
    assert G.edges["1/res/0", "2/res/3"]["confidence"] == pytest.approx(0.97)


def test_exports_are_node_link_json_and_graphml_that_read_back_as_the_same_graph(run, tmp_path):
    _, root = run
    G = fg.trace(fg.results_paths(root), "3/res/2", "both")
    data = fg.to_json(G)
    assert {"nodes", "links"} <= set(data) and {n["id"] for n in data["nodes"]} == set(G.nodes)
    assert nx.node_link_graph(data, edges="links").edges == G.edges
    fg.write_graphml(G, tmp_path / "g.graphml")
    H = nx.read_graphml(tmp_path / "g.graphml")
    assert set(H.edges) == set(G.edges) and float(H.edges["2/res/1", "3/res/2"]["score"]) == pytest.approx(0.9)
    plot_trace(G, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nodes_carry_neuronpedia_links_only_for_canonical_saes_and_their_explanations(run, tmp_path):
    _, root = run
    export = tmp_path / "np" / "v1" / "gemma-2-2b" / "3-gemmascope-res-16k" / "explanations"
    export.mkdir(parents=True)
    rows = [{"index": "2", "description": "weddings", "modelId": "gemma-2-2b"},
            {"index": "2", "description": "marriage ceremonies"}, {"index": "10", "description": "other"}]
    with gzip.open(export / "batch-0.jsonl.gz", "wt") as fh:  # sorted on index as text, like the export
        fh.write("\n".join(json.dumps(r) for r in sorted(rows, key=lambda r: r["index"])) + "\n")
    paths = fg.results_paths(root)
    G = fg.annotate(fg.trace(paths, "3/res/2", "back"), paths, tmp_path / "np")
    node = G.nodes["3/res/2"]
    assert node["url"] == "https://www.neuronpedia.org/gemma-2-2b/3-gemmascope-res-16k/2"
    assert node["neuronpedia_id"] == "gemma-2-2b/3-gemmascope-res-16k/2"
    assert node["explanation"] == "weddings | marriage ceremonies"
    assert G.nodes["2/res/1"]["url"].endswith("/2-gemmascope-res-16k/1") and "explanation" not in G.nodes["2/res/1"]
    assert "url" not in G.nodes["3/mlp/4"] and "not the canonical L0" in G.nodes["3/mlp/4"]["neuronpedia_note"]
    assert load_explanations(tmp_path / "np", "gemma-2-2b", "3-gemmascope-res-16k") == {
        2: ["weddings", "marriage ceremonies"], 10: ["other"]}


def test_a_set_id_comes_from_the_catalog_and_a_non_canonical_l0_has_none():
    entry = {"width": "16k", "sites": {"res": {"l0": {"16k": [105, 102, 141]}}, "mlp": {"l0": {"16k": [1, 2, 3]}}},
             "neuronpedia": {"model": "gemma-2-2b", "sets": {"res": "{layer}-gemmascope-res-{width}"}}}
    assert set_for(entry, "res", 2, 141) == {"model": "gemma-2-2b", "set": "2-gemmascope-res-16k"}
    assert "not the canonical" in set_for(entry, "res", 2, 59)["note"]
    assert "no Neuronpedia set known for mlp" in set_for(entry, "mlp", 0, 1)["note"]
    llama = {"width": "8x", "sites": {"res": {}}, "neuronpedia": {"model": "llama3.1-8b", "sets": {
        "res": {"8x": "{layer}-llamascope-res-32k", "32x": "{layer}-llamascope-res-131k"}}}}
    assert set_for(llama, "res", 12, None)["set"] == "12-llamascope-res-32k"
    assert set_for({"width": "1k", "sites": {}}, "res", 0)["note"] == "no Neuronpedia pages for this model"


def test_the_command_traces_shows_and_answers_errors_with_a_clear_line(run, capsys, tmp_path):
    results, _ = run
    assert main(["--results", str(results), "trace", "toy", "3/res/2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {(e["source"], e["target"]) for e in data["links"]} == {("2/res/1", "3/res/2"), ("3/mlp/4", "3/res/2")}
    assert main(["--results", str(results), "trace", "toy", "3/res/2"]) == 0
    assert "2/res/1" in capsys.readouterr().out
    assert main(["--results", str(results), "show", "toy", "2/res/1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # into 2/res/1: 1/res/1 by match and top-1 (cosine 0.1), 1/res/3 by Feature Flow's predecessor (s(R) 0.3)
    assert shown["next"]["top1"] == 2 and {(r["feature"], r["relations"]) for r in shown["previous"]} == {
        (1, "match+top1"), (3, "flow_res")}
    assert shown["flow"]["res"] == 3 and shown["flow"]["s_res"] == pytest.approx(0.3)
    assert shown["neuronpedia"]["url"] == "https://www.neuronpedia.org/gemma-2-2b/2-gemmascope-res-16k/1"
    assert main(["--results", str(results), "trace", "toy", "3/res/99"]) == 2
    assert capsys.readouterr().err.strip() == "saematch trace: 3/res/99: layer 3 has features 0–5"
    assert main(["--results", str(results), "trace", "toy", "9/res/1"]) == 2
    assert "layer 9 is not in this run's results" in capsys.readouterr().err
    assert main(["--results", str(results), "show", "nope", "1/res/1"]) == 2
    assert "no results for model 'nope'" in capsys.readouterr().err
    assert main(["--results", str(results), "show", "toy", "1/xyz/1"]) == 2
    assert "expected LAYER/SITE/INDEX" in capsys.readouterr().err
    assert main(["--results", str(results), "trace", "toy", "3/res/2", "--format", "png"]) == 2
    assert "give -o/--output" in capsys.readouterr().err


def test_show_gives_a_features_partners_on_data_from_each_evaluation(run, capsys):
    from saematch.evaluate import features_frame
    from saematch.write import write_frame

    results, root = run
    cols = {"active": np.arange(N) * 10, "pearson_top": np.tile([[3, -1]], (N, 1)),
            "pearson_r": np.tile([[0.8, np.nan]], (N, 1)), "r_match": np.full(N, 0.25),
            "coactive_match": np.arange(N), "r_top1": np.full(N, 0.5), "coactive_top1": np.arange(N)}
    matches = pl.read_parquet(root / "matches/site=res/layer=2/part-0.parquet")
    write_frame(root / "evaluation/text-abc123/res.L0-3/features.parquet",
                features_frame("res", 2, cols, matches), {})
    assert main(["--results", str(results), "show", "toy", "2/res/1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["on_data"]
    assert row == {"data": "text-abc123/res.L0-3", "active": 10, "match": int(matches["match"][1]),
                   "r_match": 0.25, "top1": 2, "r_top1": 0.5, "pearson_top": [3], "pearson_r": [0.8],
                   "verdict": None}  # no verdict.parquet beside this evaluation: no on-data verdict
    assert main(["--results", str(results), "show", "toy", "2/res/1"]) == 0
    assert "Pearson top-k in layer L+1: 3 (0.800)" in capsys.readouterr().out
    assert main(["--results", str(results), "show", "toy", "1/res/1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["on_data"] == []  # no evaluation of layer 1


def test_every_subcommand_has_help_and_python_m_runs_the_same_command():
    for sub in ("trace", "show", "lifetimes", "summary"):
        out = subprocess.run([sys.executable, "-m", "saematch", sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(f"usage: saematch {sub}")


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no chromium here")
def test_the_viewer_loads_in_a_real_browser_without_errors_and_draws_every_node(run, tmp_path):
    _, root = run
    G = fg.trace(fg.results_paths(root), "3/res/2", "both", res_cut=0.25, module_cut=0.05)
    page = tmp_path / "graph.html"
    page.write_text(fg.to_html(G))
    assert "http://" not in page.read_text().replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-nodes-drawn="{G.number_of_nodes()}"' in dom and 'data-error="' not in dom
    for n in G.nodes:
        assert f'data-id="{n}"' in dom
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri() + "#3/res/2"],
                         capture_output=True, text=True, timeout=120).stdout  # opens with that node described
    info = dom.split('id="info">', 1)[1].split("</div>", 1)[0]
    assert info.startswith("3/res/2\ncase: D\ns_res: 0.900\ns_mlp: 0.600") and "explanation: none" in info


def test_the_summary_command_pools_the_planted_origins_over_layers_weighted_by_their_counts(tmp_path, capsys):
    root = tmp_path / "results" / "model=toy" / "variant=v" / "summary"
    root.mkdir(parents=True)
    (root / "res.L0-2.flow.tsv").write_text(
        "layer\tfeatures\tcase_A\tcase_B\tcase_C\tcase_D\tplanted_res\tplanted_mlp\tcase_recovered_res\t"
        "case_recovered_mlp\tsource_recovered_mlp\n"
        "0\t10\t0\t0\t2\t8\t\t\t\t\t\n"
        "1\t10\t6\t1\t2\t1\t6\t2\t0.5\t1.0\t0.5\n"
        "2\t10\t5\t1\t3\t1\t2\t2\t1.0\t0.5\t1.0\n")
    assert main(["--results", str(tmp_path / "results"), "summary", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["res.L0-2.flow.tsv"][1]["case_A"] == 6
    assert main(["--results", str(tmp_path / "results"), "summary", "toy"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("┆")[0].strip("│ "): [c.strip(" │") for c in line.split("┆")[1:]]
            for line in out.splitlines() if line.startswith("│ res ") or line.startswith("│ mlp ")}
    assert rows["res"] == ["8", "0.625", "null"]  # (6·0.5 + 2·1.0) / 8
    assert rows["mlp"] == ["4", "0.750", "0.750"]


def test_show_says_why_the_weights_cannot_judge_a_feature(run, capsys):
    results, root = run
    ar = np.arange(N)
    cols = matches_columns(ar, np.full(N, 0.5), np.full(N, 0.7))
    cols["unjudged"][4], cols["confidence"][4], cols["top1_confidence"][4] = "near-duplicate: test", np.nan, np.nan
    write_matches(root / "matches/site=res/layer=2/part-0.parquet", cols, {})
    assert main(["--results", str(results), "show", "toy", "2/res/4"]) == 0
    assert "not judged from the weights: near-duplicate: test" in capsys.readouterr().out
    assert main(["--results", str(results), "show", "toy", "2/res/4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["next"]["unjudged"] == "near-duplicate: test"
    assert main(["--results", str(results), "show", "toy", "2/res/3"]) == 0
    assert "not judged" not in capsys.readouterr().out
