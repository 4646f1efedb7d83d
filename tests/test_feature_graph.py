"""The one feature graph (saematch.edges): show, trace, lifetimes, the viewer's data, the exports,
find and sql read the same edges, on a results folder built by hand where the relations
disagree. Every expected edge and link is written down here, not computed by the code."""

import json
import re

import networkx as nx
import numpy as np
import pytest

from saematch import graph as fg
from saematch.cli import main, show_feature
from saematch.edges import edge_table, edges_at, links
from saematch.lifetimes import chains_of_files
from saematch.query import find, sql, tables
from saematch.write import write_flow, write_matches

N = 4  # features per layer; res layers 0, 1, 2; mlp layers 0, 1

# pair 0 → 1 of res: the assignment, the top-1 and Feature Flow's predecessor disagree
RES0 = dict(match=[1, 0, 2, 3], conf=[0.9, 0.3, 0.8, 0.1], top1=[1, 2, 2, 0], top1_conf=[0.95, 0.6, 0.8, 0.05],
            cos=[0.9, 0.5, 0.7, 0.2], top1_cos=[0.9, 0.55, 0.7, 0.3])
# flow of layer 1 (res L predecessors in res 0): 1/res/0 ← 0/res/1, 1/res/1 ← 0/res/0, 1/res/2 ← 0/res/3 …
FLOW1 = dict(res=[1, 0, 3, 3], s_res=[0.6, 0.9, 0.75, 0.2], res_conf=[0.2, 0.85, 0.45, 0.1],
             mlp=[2, 0, 0, 1], s_mlp=[0.1, 0.3, 0.05, 0.2])
RES1 = dict(match=[0, 1, 2, 3], conf=[0.7, 0.2, 0.9, 0.6], top1=[0, 1, 2, 3], top1_conf=[0.7, 0.2, 0.9, 0.6],
            cos=[0.8, 0.4, 0.85, 0.6], top1_cos=[0.8, 0.4, 0.85, 0.6])
FLOW2 = dict(res=[0, 1, 2, 3], s_res=[0.8, 0.4, 0.85, 0.6], res_conf=[0.75, 0.1, 0.9, 0.55],
             mlp=[3, 3, 3, 3], s_mlp=[0.05, 0.05, 0.05, 0.05])
MLP0 = dict(match=[3, 2, 1, 0], conf=[0.9, 0.9, 0.1, 0.1], top1=[3, 2, 1, 0], top1_conf=[0.9, 0.9, 0.1, 0.1],
            cos=[0.9, 0.8, 0.2, 0.2], top1_cos=[0.9, 0.8, 0.2, 0.2], dead=[3])


def matches(p):
    conf, top1_conf = np.array(p["conf"], np.float32), np.array(p["top1_conf"], np.float32)
    dead = np.zeros(N, bool)
    dead[p.get("dead", [])] = True
    unjudged = np.full(N, None, object)
    unjudged[p.get("unjudged", [])] = "near-duplicate: test"
    return {"feature": np.arange(N, dtype=np.int32), "match": np.array(p["match"], np.int32),
            "top1": np.array(p["top1"], np.int32), "cosine": np.array(p["cos"], np.float32), "mse": np.zeros(N, np.float32),
            "top1_cosine": np.array(p["top1_cos"], np.float32), "persists": conf >= 0.5, "confidence": conf,
            "top1_persists": top1_conf >= 0.5, "top1_confidence": top1_conf, "unjudged": unjudged,
            "evidence": np.zeros((N, 7), np.float32), "top1_evidence": np.zeros((N, 7), np.float32), "dead": dead}


def flow(p, layer):
    cols = {"feature": np.arange(N, dtype=np.int32), "case": np.array(["A"] * N),
            "res": np.array(p["res"], np.int32), "s_res": np.array(p["s_res"], np.float32),
            "res_top": np.array(p["res"], np.int32)[:, None], "s_res_top": np.array(p["s_res"], np.float32)[:, None],
            "mlp": np.array(p["mlp"], np.int32), "s_mlp": np.array(p["s_mlp"], np.float32),
            "mlp_top": np.array(p["mlp"], np.int32)[:, None], "s_mlp_top": np.array(p["s_mlp"], np.float32)[:, None],
            "res_confidence": np.array(p["res_conf"], np.float32), "res_unjudged": np.full(N, None, object)}
    cols.update({"att": None, "s_att": None, "att_top": None, "s_att_top": None})
    return cols


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "results" / "model=toy" / "variant=v"
    for site, L, p in (("res", 0, RES0), ("res", 1, RES1), ("mlp", 0, MLP0)):
        write_matches(root / f"matches/site={site}/layer={L}/part-0.parquet", matches(p), {"site": site, "layer": L, "n_dst": N})
    for L, p in ((1, FLOW1), (2, FLOW2)):
        np_sets = {"target": {"model": "gemma-2-2b", "set": f"{L}-gemmascope-res-16k"},
                   "res": {"model": "gemma-2-2b", "set": f"{L - 1}-gemmascope-res-16k"},
                   "mlp": {"model": "gemma-2-2b", "set": f"{L}-gemmascope-mlp-16k"}}
        write_flow(root / "flow" / "res+mlp" / f"layer={L}.parquet", flow(p, L), 1, {"layer": L, "neuronpedia": np_sets})
    (root / "lifetimes").mkdir()
    chains_of_files([str(root / f"matches/site=res/layer={L}/part-0.parquet") for L in (0, 1)]).write_parquet(
        root / "lifetimes" / "res.L0-2.parquet")  # as the lifetimes rule writes it
    return tmp_path / "results", root


def test_links_group_the_relations_that_propose_each_neighbour_best_confidence_first(run):
    _, root = run
    paths = fg.results_paths(root)
    got = [(c["feature"], c["relations"], c["confidence"]) for c in links(edges_at(paths, 1, "res", 2, "back"), "back")]
    # into 1/res/2: 0/res/2 is its assignment (0.8) and top-1 (0.8); 0/res/1's top-1 (0.6); Feature Flow's 0/res/3 (0.45)
    assert got == [(2, "match+top1", pytest.approx(0.8)), (1, "top1", pytest.approx(0.6)), (3, "flow_res", pytest.approx(0.45))]
    got = [(c["feature"], c["relations"], c["confidence"]) for c in links(edges_at(paths, 1, "res", 1, "back"), "back")]
    assert got == [(0, "flow_res+match+top1", pytest.approx(0.95))]


def test_the_verdict_trace_takes_the_most_confident_relation_and_the_flow_trace_the_papers_cosine(run):
    _, root = run
    paths = fg.results_paths(root)
    G = fg.trace(paths, "2/res/2", "back")
    res_edges = {(u, v): a for u, v, a in G.edges(data=True) if a["kind"] == "res"}
    assert set(res_edges) == {("1/res/2", "2/res/2"), ("0/res/2", "1/res/2")}
    assert res_edges[("0/res/2", "1/res/2")]["relations"] == "match+top1"
    assert res_edges[("0/res/2", "1/res/2")]["confidence"] == pytest.approx(0.8)
    assert G.graph["ends"] == [{"at": "0/res/2", "direction": "back", "why": "no layer -1 in this run"}]
    # Feature Flow's rule takes the nearest decoder, 0/res/3 at s(R) 0.75, which the verdict doubts (0.45)
    F = fg.trace(paths, "2/res/2", "back", mode="flow")
    assert {(u, v) for u, v, a in F.edges(data=True) if a["kind"] == "res"} == {("1/res/2", "2/res/2"), ("0/res/3", "1/res/2")}
    assert F.edges["0/res/3", "1/res/2"]["confidence"] == pytest.approx(0.45)
    F = fg.trace(paths, "2/res/1", "back", mode="flow")  # s(R) 0.4 < 0.5
    (end,) = F.graph["ends"]
    assert end["at"] == "2/res/1" and end["best"] == "1/res/1" and end["score"] == pytest.approx(0.4)
    assert end["confidence"] == pytest.approx(0.2) and end["why"] == "missed cosine ≥ 0.5"


def test_a_trace_that_ends_says_which_candidate_missed_which_cut(run, capsys):
    results, root = run
    G = fg.trace(fg.results_paths(root), "1/res/0", "back")
    assert list(G.edges) == []
    (end,) = G.graph["ends"]
    # into 1/res/0: 0/res/1 by the assignment (0.3) and Feature Flow (0.2); 0/res/3 by its top-1 (0.05)
    assert (end["best"], end["relations"], end["confidence"]) == ("0/res/1", "flow_res+match", pytest.approx(0.3))
    assert main(["--results", str(results), "trace", "toy", "1/res/0"]) == 0
    out = capsys.readouterr().out
    assert "back walk ends at 1/res/0: missed confidence ≥ 0.5 (best candidate 0/res/1 by flow_res+match" in out


def test_an_mlp_feature_traces_forward_into_the_residual_features_it_feeds(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/mlp/0", "forward")
    # 1/mlp/0 is the top-1 mlp predecessor of 1/res/1 (0.3) and of 1/res/2 (0.05 < 0.15: dropped)
    assert ("1/mlp/0", "1/res/1") in G.edges and ("1/mlp/0", "1/res/2") not in G.edges
    # from 1/res/1 the walk goes on: its partner 2/res/1 has confidence 0.2 (top-1, match) / 0.1 (flow): it ends
    assert not any(u == "1/res/1" and G.nodes[v]["layer"] == 2 for u, v in G.edges)
    assert any(e["at"] == "1/res/1" and e["best"] == "2/res/1" for e in G.graph["ends"])


def test_show_trace_lifetimes_viewer_and_exports_give_the_same_edges(run, tmp_path):
    results, root = run
    paths = fg.results_paths(root)
    cut = 0.5
    # the links of every res feature of layer 1, back and forward, as show lists them
    shown = {i: show_feature(root, 1, "res", i) for i in range(N)}
    # trace (verdict) follows a link exactly where show's best candidate reaches the cut
    for i in range(N):
        G = fg.trace(paths, f"1/res/{i}", "both")
        back = [(u, a["relations"]) for u, v, a in G.in_edges(f"1/res/{i}", data=True) if a["kind"] == "res"]
        best = shown[i]["previous"][0]
        assert back == ([(f"0/res/{best['feature']}", best["relations"])] if best["confidence"] >= cut else [])
        fwd = [(v, a["relations"]) for u, v, a in G.out_edges(f"1/res/{i}", data=True)]
        best = shown[i]["forward"][0]
        assert fwd == ([(f"2/res/{best['feature']}", best["relations"])] if best["confidence"] >= cut else [])
        # the viewer's data and the exports carry the same edges
        data = fg.to_json(G)
        assert {(e["source"], e["target"]) for e in data["links"]} == set(G.edges)
        assert json.dumps(data["links"][0]["source"]) in fg.to_html(G) if data["links"] else True
        fg.write_graphml(G, tmp_path / "g.graphml")
        assert set(nx.read_graphml(tmp_path / "g.graphml").edges) == set(G.edges)
    # lifetimes chain a feature into its assignment partner exactly where the edge table's match edge persists
    long = chains_of_files([str(paths["sites"]["res"][L]) for L in (0, 1)])
    res = long.filter(long["site"] == "res")
    chained = set()
    for chain in res.partition_by("chain"):
        rows = sorted(zip(chain["layer"], chain["feature"]))
        chained |= {(a, b) for a, b in zip(rows, rows[1:])}
    edges = edge_table(paths).collect()
    persisting = {((r["src_layer"], r["src_feature"]), (r["dst_layer"], r["dst_feature"]))
                  for r in edges.iter_rows(named=True) if r["relation"] == "match" and r["src_site"] == "res"
                  and r["confidence"] >= cut}
    # written down: 0/0 → 1/1 (0.9), 0/2 → 1/2 (0.8), 1/0 → 2/0 (0.7), 1/2 → 2/2 (0.9), 1/3 → 2/3 (0.6)
    assert chained == persisting == {((0, 0), (1, 1)), ((0, 2), (1, 2)), ((1, 0), (2, 0)), ((1, 2), (2, 2)), ((1, 3), (2, 3))}


def test_the_edge_table_holds_every_relation_once_per_row_of_its_file(run):
    _, root = run
    edges = edge_table(fg.results_paths(root)).collect()
    counts = dict(zip(*np.unique(edges["relation"].to_numpy(), return_counts=True)))
    # match and top1: 4 rows × 3 matches files; flow_res and flow_mlp: 4 rows × 2 flow files; no att
    assert counts == {"match": 12, "top1": 12, "flow_res": 8, "flow_mlp": 8}
    row = edges.filter((edges["relation"] == "flow_res") & (edges["dst_layer"] == 1) & (edges["dst_feature"] == 2)).row(0, named=True)
    assert (row["src_layer"], row["src_site"], row["src_feature"]) == (0, "res", 3)
    assert row["score"] == pytest.approx(0.75) and row["confidence"] == pytest.approx(0.45)


def test_find_filters_by_property_and_sql_reads_the_named_tables(run, capsys):
    results, root = run
    t = tables(fg.results_paths(root))
    got = find(t, site="res", persists=True)
    assert sorted(zip(got["layer"], got["feature"])) == [(0, 0), (0, 2), (1, 0), (1, 2), (1, 3)]
    got = find(t, site="res", confidence=(0.25, 0.65))
    assert sorted(zip(got["layer"], got["feature"])) == [(0, 1), (1, 3)]
    # chains: 0/0 → 1/1 (2 layers); 0/2 → 1/2 → 2/2 (3 layers)
    got = find(t, site="res", min_chain=3)
    assert sorted(zip(got["layer"], got["feature"])) == [(0, 2), (1, 2)]
    n = sql(t, "SELECT count(*) AS n FROM edges WHERE relation = 'flow_res' AND confidence >= 0.5")
    assert n["n"][0] == 4  # 0.85 (layer 1); 0.75, 0.9, 0.55 (layer 2)
    assert main(["--results", str(results), "find", "toy", "--site", "mlp", "--persists", "--json"]) == 0
    assert [(r["layer"], r["feature"]) for r in json.loads(capsys.readouterr().out)] == [(0, 0), (0, 1)]
    # dead features are not features: 0/mlp/3 (marked dead) is left out unless asked for
    assert sorted(find(t, site="mlp")["feature"]) == [0, 1, 2] and find(t, site="mlp", dead=True)["feature"].to_list() == [3]
    query = "SELECT relation, count(*) AS n FROM edges WHERE relation = 'flow_res' GROUP BY relation"
    assert main(["--results", str(results), "sql", "toy", query, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"relation": "flow_res", "n": 8}]
    assert main(["--results", str(results), "sql", "toy", query]) == 0
    out = capsys.readouterr().out
    assert re.search(r"│ relation +┆ n +│", out) and re.search(r"│ flow_res +┆ 8 +│", out) and out.endswith("1 rows\n")
    assert main(["--results", str(results), "sql", "toy", "SELECT nope FROM edges"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saematch sql: ") and "tables: edges, feature_table, flow, lifetimes, matches" in err and "\n" not in err
    assert main(["--results", str(results), "find", "toy", "--confidence", "0.5"]) == 2
    assert "--confidence '0.5': give a range LOW:HIGH" in capsys.readouterr().err


def test_the_backward_predecessor_gets_a_calibrated_verdict_on_a_planted_pair():
    """saematch.flow: the verdict reversed (layer L's features as rows) on the planted inverse map."""
    from verdict_pairs import synthetic_pair

    from saematch.flow import flow_layer

    src, dst, planted = synthetic_pair(F=600, d=128, persist=0.5, seed=5)
    cols, stats = flow_layer(dst.W_dec, {"res": src.W_dec, "mlp": None, "att": None},
                             encoders={"target": dst.W_enc, "res": src.W_enc})
    inverse = np.full(600, -1)
    inverse[planted[planted >= 0]] = np.flatnonzero(planted >= 0)
    right = (inverse >= 0) & (cols["res"] == inverse)
    declared = cols["res_confidence"] >= 0.5
    assert (right & declared).sum() / declared.sum() >= 0.95  # precision
    assert (right & declared).sum() / right.sum() >= 0.9  # recall
    assert "res_verdict" in stats


def test_summary_shows_the_evaluations_tables_beside_the_runs(run, capsys):
    results, root = run
    (root / "summary").mkdir()
    (root / "summary" / "res.L0-2.flow.tsv").write_text("layer\tfeatures\tcase_A\tcase_B\tcase_C\tcase_D\n1\t4\t4\t0\t0\t0\n")
    folder = root / "evaluation" / "text-abc" / "res.L0-2"
    folder.mkdir(parents=True)
    (folder / "summary.tsv").write_text("site\tlayer\ttokens\tmatching_score\tmatching_score_chance\tagree_match\n"
                                        "res\t0\t8192\t0.517\t0.152\t0.2\n")
    (folder / "verdict.tsv").write_text("site\tlabelled\tdead\tmatch_ece_before\tmatch_ece_after\nres\t167\t89\t0.171\t0.04\n")
    assert main(["--results", str(results), "summary", "toy"]) == 0
    out = capsys.readouterr().out
    assert "evaluation/text-abc/res.L0-2/summary.tsv:" in out and "0.517" in out and "0.152" in out
    assert "evaluation/text-abc/res.L0-2/verdict.tsv:" in out and "0.171" in out
    assert main(["--results", str(results), "summary", "toy", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["evaluation/text-abc/res.L0-2/summary.tsv"][0]["matching_score"] == pytest.approx(0.517)


def test_dead_features_are_neither_born_nor_dying_and_stay_out_of_the_summarys_means(tmp_path):
    """0/res/3 is dead (its own row), 2/res/1 dead (pair 1→2's provenance: dead_dst)."""
    from saematch.lifetimes import births_deaths, survival
    from saematch.summary import summarize

    root = tmp_path / "results" / "model=toy" / "variant=v"
    p0 = dict(RES0, dead=[3])
    paths = []
    for L, p, dead_dst in ((0, p0, []), (1, RES1, [1])):
        path = root / f"matches/site=res/layer={L}/part-0.parquet"
        write_matches(path, matches(p), {"site": "res", "layer": L, "n_dst": N, "total_cost": 0.0,
                                         "certificate": {"certified": True, "gap_bound": 0.0, "solver": "x"},
                                         "verdict": {"dead_dst": dead_dst}})
        paths.append(str(path))
    long = chains_of_files(paths)
    assert sorted(long.filter(long["dead"])[["layer", "feature"]].iter_rows()) == [(0, 3), (2, 1)]
    bd = {r["layer"]: r for r in births_deaths(long).iter_rows(named=True)}
    # persisting links (confidence ≥ 0.5): 0/0 → 1/1, 0/2 → 1/2; 1/0 → 2/0, 1/2 → 2/2, 1/3 → 2/3
    assert (bd[0]["features"], bd[1]["features"], bd[2]["features"]) == (3, 4, 3)
    assert bd[0]["deaths"] == 1  # 0/1 (0/3 is dead: not a death)
    assert bd[1]["births"] == 2 and bd[1]["deaths"] == 1  # 1/0 and 1/3 born; 1/1 dies
    assert bd[2]["births"] == 0  # 2/1 is dead: not a birth
    s0 = survival(long).filter((survival(long)["site"] == "res") & (survival(long)["k"] == 0))
    assert s0["survival"][0] == pytest.approx(1.0)
    table = summarize(paths).sort("layer")
    assert table["n_dead"].to_list() == [1, 0] and table["n_features"].to_list() == [3, 4]
    # layer 0's mean cosine over its living features 0, 1, 2: (0.9 + 0.5 + 0.7) / 3
    assert table["cosine_mean"][0] == pytest.approx(0.7)


def test_find_by_explanation_text_reads_the_local_neuronpedia_export(run, tmp_path, capsys):
    import gzip

    results, root = run
    for set_id, rows in (("1-gemmascope-res-16k", [(0, "Wedding ceremonies"), (2, "legal contracts"), (3, "wedding cakes")]),
                         ("0-gemmascope-res-16k", [(1, "weddings and marriage")])):
        export = tmp_path / "np" / "v1" / "gemma-2-2b" / set_id / "explanations"
        export.mkdir(parents=True)
        with gzip.open(export / "batch-0.jsonl.gz", "wt") as fh:
            for i, text in rows:
                fh.write(json.dumps({"index": str(i), "description": text}) + "\n")
    t = tables(fg.results_paths(root))
    got = find(t, site="res", explanation="WEDDING", paths=fg.results_paths(root), explanations_root=tmp_path / "np")
    # layer 0's SAE is layer 1's flow file's "res" set; layer 1's its "target" set
    assert sorted(zip(got["layer"], got["feature"], got["explanation"])) == [
        (0, 1, "weddings and marriage"), (1, 0, "Wedding ceremonies"), (1, 3, "wedding cakes")]
    assert main(["--results", str(results), "--explanations", str(tmp_path / "np"), "find", "toy", "--explanation",
                 "contracts", "--json"]) == 0
    assert [(r["layer"], r["feature"]) for r in json.loads(capsys.readouterr().out)] == [(1, 2)]


def test_on_data_r_reaches_the_links_from_the_pearson_top_k(run):
    """1/res/2's Pearson top-k in layer 2: 2/res/0 (r 0.9, its activation partner), 2/res/2 (0.8)."""
    import polars as pl

    _, root = run
    folder = root / "evaluation" / "text-abc" / "res.L0-2"
    folder.mkdir(parents=True)
    top = [[-1, -1]] * N
    top[2] = [0, 2]
    r = [[0.0, 0.0]] * N
    r[2] = [0.9, 0.8]
    pl.DataFrame({"site": ["res"] * N, "layer": [1] * N, "feature": list(range(N)), "active": [50] * N,
                  "r_match": [0.1] * N, "pearson_top": top, "pearson_r": r},
                 schema_overrides={"layer": pl.Int32, "feature": pl.Int32, "pearson_top": pl.Array(pl.Int32, 2),
                                   "pearson_r": pl.Array(pl.Float32, 2)}).write_parquet(folder / "features.parquet")
    got = {c["feature"]: (c["relations"], c["r"]) for c in links(edges_at(fg.results_paths(root), 1, "res", 2, "forward"), "forward")}
    # 2/res/2: its assignment, top-1 (RES1) and Feature Flow successor (FLOW2), second in the Pearson list; 2/res/0 the activation partner
    assert got[2] == ("flow_res+match+top1", pytest.approx(0.8)) and got[0] == ("pearson", pytest.approx(0.9))
    G = fg.trace(fg.results_paths(root), "1/res/2", "forward")
    assert G.edges["1/res/2", "2/res/2"]["r"] == pytest.approx(0.8)


def test_a_link_the_verdict_did_not_judge_is_neither_a_death_nor_a_birth(tmp_path):
    """0/res/1's link onward is unjudged: it does not die at 0, and its partner 1/res/0 is not born at 1."""
    from saematch.lifetimes import births_deaths, survival

    root = tmp_path / "results" / "model=toy" / "variant=v"
    paths = []
    for L, p in ((0, dict(RES0, unjudged=[1], conf=[0.9, np.nan, 0.8, 0.1])), (1, RES1)):
        path = root / f"matches/site=res/layer={L}/part-0.parquet"
        write_matches(path, matches(p), {"site": "res", "layer": L, "n_dst": N})
        paths.append(str(path))
    long = chains_of_files(paths)
    bd = {r["layer"]: r for r in births_deaths(long).iter_rows(named=True)}
    assert bd[0]["deaths"] == 1  # 0/3 only (0/1 not judged)
    assert bd[1]["births"] == 1  # 1/3 only (1/0 is 0/1's partner, whose link was not judged)
    s1 = survival(long).filter(survival(long)["k"] == 1)["survival"][0]
    # k = 1: layer 0 without 0/1: 0/0, 0/2 live on, 0/3 dies (2/3); layer 1: 1/0, 1/2, 1/3 live on, 1/1 dies (3/4)
    assert s1 == pytest.approx((2 / 3 + 3 / 4) / 2)


def test_a_themes_feature_set_is_the_union_of_its_seeds_traces_both_ways(run):
    from saematch.steer import feature_set

    _, root = run
    paths = fg.results_paths(root)
    got = feature_set(paths, ["2/res/2", "1/mlp/0"])
    # 2/res/2 back along the verdict: 1/res/2, 0/res/2 (no module predecessor at s ≥ 0.15, no layer 3);
    # 1/mlp/0 forward: the residual feature it feeds, 1/res/1, whose onward link (0.2) fails
    assert got.rows() == [("0/res/2", 0, "res", 2, ["2/res/2"]), ("1/mlp/0", 1, "mlp", 0, ["1/mlp/0"]),
                          ("1/res/1", 1, "res", 1, ["1/mlp/0"]), ("1/res/2", 1, "res", 2, ["2/res/2"]),
                          ("2/res/2", 2, "res", 2, ["2/res/2"])]
    # the paper's rule: the nearest decoder, 0/res/3 at s(R) 0.75; a feature two seeds reach lists both
    got = feature_set(paths, ["2/res/2", "1/res/2"], mode="flow")
    assert got.rows() == [("0/res/3", 0, "res", 3, ["2/res/2", "1/res/2"]), ("1/res/2", 1, "res", 2, ["2/res/2", "1/res/2"]),
                          ("2/res/2", 2, "res", 2, ["2/res/2", "1/res/2"])]


def test_a_themes_set_is_what_trace_draws_for_its_seeds_in_the_table_and_the_viewer(run, capsys):
    from saematch.steer import feature_set

    results, root = run
    paths = fg.results_paths(root)
    seeds = ["2/res/2", "1/mlp/0"]
    G = fg.trace_set(paths, seeds, "both")
    assert sorted(G.nodes) == feature_set(paths, seeds)["node"].to_list()
    assert G.graph["seeds"] == seeds and G.graph["root"] == "2/res/2"
    one = [fg.trace(paths, s, "both") for s in seeds]
    assert set(G.edges) == set(one[0].edges) | set(one[1].edges)
    assert G.graph["ends"] == one[0].graph["ends"] + one[1].graph["ends"]
    assert main(["--results", str(results), "trace", "toy", *seeds, "--both", "--json"]) == 0
    assert sorted(n["id"] for n in json.loads(capsys.readouterr().out)["nodes"]) == sorted(G.nodes)
    html = fg.to_html(G)
    assert "saematch flow graph: 2/res/2, 1/mlp/0" in html and '"seeds": ["2/res/2", "1/mlp/0"]' in html


def test_a_themes_seeds_may_be_a_text_query_over_the_local_explanations(run, tmp_path):
    import gzip

    from saematch.steer import theme_seeds

    _, root = run
    export = tmp_path / "np" / "v1" / "gemma-2-2b" / "1-gemmascope-res-16k" / "explanations"
    export.mkdir(parents=True)
    with gzip.open(export / "batch-0.jsonl.gz", "wt") as fh:
        for i, text in ((0, "Wedding ceremonies"), (2, "legal contracts"), (3, "wedding cakes")):
            fh.write(json.dumps({"index": str(i), "description": text}) + "\n")
    paths = fg.results_paths(root)
    assert theme_seeds(paths, {"seeds": ["1/res/2"]}) == ["1/res/2"]
    assert theme_seeds(paths, {"query": {"text": "wedding", "layers": [1]}}, tmp_path / "np") == ["1/res/0", "1/res/3"]
    with pytest.raises(ValueError, match="no residual feature of layers \\[1\\] has an explanation containing 'tax'"):
        theme_seeds(paths, {"name": "t", "query": {"text": "tax", "layers": [1]}}, tmp_path / "np")


def test_a_jobs_graph_is_its_declared_files_only_not_older_files_beside_them(run):
    """Rule steer traces through exactly its inputs: a res-only selection does not pick up the
    mlp matches an earlier res+mlp run left in the same variant folder."""
    from saematch.steer import feature_set

    _, root = run
    everything = fg.results_paths(root)
    res_only = fg.files_paths(root, [everything["flow"][L] for L in (1, 2)],
                              [everything["sites"]["res"][L] for L in (0, 1)])
    assert res_only["sites"]["mlp"] == {} and res_only["sites"]["res"] == everything["sites"]["res"]
    assert res_only["flow"] == everything["flow"] and res_only["matches"] == everything["matches"]
    # the same files give the same graph
    assert feature_set(res_only, ["2/res/2"]).equals(feature_set(everything, ["2/res/2"]))
    # and a file not given is not read: without layer 2's flow file, 2/res/2 has no flow predecessors
    no_flow2 = fg.files_paths(root, [everything["flow"][1]], [everything["sites"]["res"][L] for L in (0, 1)])
    assert 2 not in no_flow2["flow"]
