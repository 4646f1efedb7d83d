"""Properties of the feature graph's trace and its exports (saematch.graph) that the other graph
tests leave open: found by the mutation run (docs/mutation.md). Every expected edge, end and
number is worked out by hand from the hand-built run of test_feature_graph (RES0, RES1, FLOW1,
FLOW2, MLP0), not computed by the code under test."""

import json

import networkx as nx
import numpy as np
import polars as pl
import pytest
from test_feature_graph import FLOW1, N, RES0, RES1, flow, matches, run  # noqa: F401  (run: the fixture)

from saematch import graph as fg
from saematch.write import write_flow, write_matches

F32 = lambda x: float(np.float32(x))  # noqa: E731  (a cut exactly at a stored float32 value)


def approx_end(end):
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in end.items()}


def test_layers_text_joins_consecutive_layers_into_ranges_and_names_a_lone_layer_alone():
    # the docstring's example, a lone layer, runs split by gaps, and nothing
    assert fg.layers_text([0, 1, 2, 3, 5]) == "0–3, 5"
    assert fg.layers_text([4]) == "4"
    assert fg.layers_text([2, 3, 7, 9, 10]) == "2–3, 7, 9–10"
    assert fg.layers_text([]) == "none"


def test_a_flow_trace_forward_names_a_lost_matches_file_instead_of_ending_quietly(run):
    _, root = run  # lifetimes/res.L0-2.parquet: the selection res, layers 0–2, made matches of pairs 0 and 1
    lost = root / "matches/site=res/layer=1/part-0.parquet"
    lost.unlink()
    with pytest.raises(fg.ResultsError) as e:
        fg.trace(fg.results_paths(root), "1/res/2", "forward", mode="flow")
    assert str(e.value) == f"{lost}: missing (part of the run's selection res.L0-2): rerun snakemake to rebuild it"


def test_graphml_keeps_the_traces_settings_as_they_are_and_its_ends_as_json(run, tmp_path):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/res/0", "both")
    fg.write_graphml(G, tmp_path / "g.graphml")
    H = nx.read_graphml(tmp_path / "g.graphml")
    assert {k: v for k, v in H.graph.items() if k not in ("ends", "node_default", "edge_default")} == {
        "root": "1/res/0", "direction": "both", "mode": "verdict", "res_cut": 0.5, "module_cut": 0.15, "cut": 0.5}
    # back: 0/res/1 (assignment, conf 0.3; Feature Flow s 0.6, conf 0.2) misses the cut;
    # forward: 2/res/0 by all three (conf 0.75, cosine 0.8), then the run has no layer 3
    assert [approx_end(e) for e in json.loads(H.graph["ends"])] == [
        {"at": "1/res/0", "direction": "back", "best": "0/res/1", "relations": "flow_res+match", "score": 0.6,
         "confidence": 0.3, "why": "missed confidence ≥ 0.5"},
        {"at": "2/res/0", "direction": "forward", "why": "no layer 3 in this run"}]
    # attributes without a value (r, s_att) are left out; the rest read back
    assert H.edges["1/res/0", "2/res/0"] == {"kind": "res", "relations": "flow_res+match+top1",
                                             "score": pytest.approx(0.8), "confidence": pytest.approx(0.75)}
    assert H.nodes["1/res/0"] == {"layer": 1, "site": "res", "index": 0, "s_res": pytest.approx(0.6),
                                  "s_mlp": pytest.approx(0.1), "case": "A"}


def test_module_predecessors_at_exactly_the_module_cut_are_kept_with_their_layer_site_and_index(run):
    _, root = run
    cols = flow(FLOW1, 1)  # layer 1 with attention scores: 1/res/1's att predecessor is 2 at s 0.5, its mlp 0 at 0.3
    att, s_att = np.array([3, 2, 1, 0], np.int32), np.array([0.1, 0.5, 0.2, 0.2], np.float32)
    cols.update(att=att, s_att=s_att, att_top=att[:, None], s_att_top=s_att[:, None])
    write_flow(root / "flow/res+mlp/layer=1.parquet", cols, 1, {"layer": 1})
    paths = fg.results_paths(root)
    G = fg.trace(paths, "1/res/1", "back", module_cut=F32(0.3))
    # back: 0/res/0 by all three (conf 0.95); no flow file of layer 0, so 0/res/0 has no modules
    assert set(G.edges) == {("0/res/0", "1/res/1"), ("1/mlp/0", "1/res/1"), ("1/att/2", "1/res/1")}
    assert G.edges["1/mlp/0", "1/res/1"] == {"score": pytest.approx(0.3), "kind": "mlp", "relations": "flow_mlp"}
    assert G.edges["1/att/2", "1/res/1"] == {"score": pytest.approx(0.5), "kind": "att", "relations": "flow_att"}
    assert G.nodes["1/mlp/0"] == {"layer": 1, "site": "mlp", "index": 0}
    assert G.nodes["1/att/2"] == {"layer": 1, "site": "att", "index": 2}
    assert G.nodes["1/res/1"] == {"layer": 1, "site": "res", "index": 1, "s_res": pytest.approx(0.9),
                                  "s_mlp": pytest.approx(0.3), "s_att": pytest.approx(0.5), "case": "A"}
    assert G.nodes["0/res/0"] == {"layer": 0, "site": "res", "index": 0}
    # just above the mlp's score only the attention predecessor stays; exactly at the att's it stays too
    G = fg.trace(paths, "1/res/1", "back", module_cut=F32(0.5))
    assert set(G.edges) == {("0/res/0", "1/res/1"), ("1/att/2", "1/res/1")} and "1/mlp/0" not in G
    G = fg.trace(paths, "1/res/1", "back", module_cut=0.51)
    assert set(G.edges) == {("0/res/0", "1/res/1")} and set(G.nodes) == {"0/res/0", "1/res/1"}


def test_walks_that_join_link_to_the_shared_feature_and_record_its_end_once(run):
    _, root = run
    # 1/mlp/0 feeds 1/res/1 and 1/res/2 (s 0.3 each); 1/res/1's top-1 is now 2/res/2 (conf 0.7, cosine 0.4);
    # 1/res/2 → 2/res/2 by all three (conf 0.9, cosine 0.85)
    write_flow(root / "flow/res+mlp/layer=1.parquet", flow(dict(FLOW1, s_mlp=[0.1, 0.3, 0.3, 0.2]), 1), 1, {"layer": 1})
    write_matches(root / "matches/site=res/layer=1/part-0.parquet",
                  matches(dict(RES1, top1=[0, 2, 2, 3], top1_conf=[0.7, 0.7, 0.9, 0.6])), {"site": "res", "layer": 1, "n_dst": N})
    G = fg.trace(fg.results_paths(root), "1/mlp/0", "forward")
    assert set(G.edges) == {("1/mlp/0", "1/res/1"), ("1/mlp/0", "1/res/2"), ("1/res/1", "2/res/2"), ("1/res/2", "2/res/2")}
    got = {(u, v): (a["relations"], round(a["score"], 3), round(a["confidence"], 3), a["r"])
           for u, v, a in G.edges(data=True) if a["kind"] == "res"}
    assert got == {("1/res/1", "2/res/2"): ("top1", 0.4, 0.7, None),
                   ("1/res/2", "2/res/2"): ("flow_res+match+top1", 0.85, 0.9, None)}
    # the first walk went on from 2/res/2 and ended there; the second joined it and stopped
    assert G.graph["ends"] == [{"at": "2/res/2", "direction": "forward", "why": "no layer 3 in this run"}]


def evaluation(root):
    """1/res/2's Pearson top-2 in layer 2: 2/res/0 (r 0.9, its activation partner), 2/res/2 (0.8)."""
    folder = root / "evaluation" / "text-abc" / "res.L0-2"
    folder.mkdir(parents=True)
    top, r = [[-1, -1]] * N, [[0.0, 0.0]] * N
    top[2], r[2] = [0, 2], [0.9, 0.8]
    pl.DataFrame({"site": ["res"] * N, "layer": [1] * N, "feature": list(range(N)), "active": [50] * N,
                  "r_match": [0.1] * N, "pearson_top": top, "pearson_r": r},
                 schema_overrides={"layer": pl.Int32, "feature": pl.Int32, "pearson_top": pl.Array(pl.Int32, 2),
                                   "pearson_r": pl.Array(pl.Float32, 2)}).write_parquet(folder / "features.parquet")


def test_a_flow_trace_edge_carries_the_verdict_relations_and_pearson_r_of_its_link(run):
    _, root = run
    evaluation(root)
    paths = fg.results_paths(root)
    # forward: 1/res/2's top-1 is 2/res/2 at cosine 0.85; the link is also its assignment and Feature Flow's (0.9);
    # 2/res/2 is second in 1/res/2's Pearson list (r 0.8)
    G = fg.trace(paths, "1/res/2", "forward", mode="flow")
    got = {(u, v): (a["relations"], round(a["score"], 3), round(a["confidence"], 3), round(a["r"], 3))
           for u, v, a in G.edges(data=True) if a["kind"] == "res"}
    assert got == {("1/res/2", "2/res/2"): ("flow_res+match+top1", 0.85, 0.9, 0.8)}
    # back from 2/res/2: s(R) 0.85 to 1/res/2 (r 0.8), then s(R) 0.75 to 0/res/3 (Feature Flow alone, conf 0.45, no r)
    G = fg.trace(paths, "2/res/2", "back", mode="flow")
    got = {(u, v): (a["relations"], round(a["score"], 3), round(a["confidence"], 3), a["r"] and round(a["r"], 3))
           for u, v, a in G.edges(data=True) if a["kind"] == "res"}
    assert got == {("1/res/2", "2/res/2"): ("flow_res+match+top1", 0.85, 0.9, 0.8),
                   ("0/res/3", "1/res/2"): ("flow_res", 0.75, 0.45, None)}
    assert G.graph["ends"] == [{"at": "0/res/3", "direction": "back", "why": "no layer -1 in this run"}]


def test_a_walk_that_finds_nothing_in_a_layer_the_run_has_says_no_candidate_not_no_layer(run):
    import shutil

    from test_feature_graph import FLOW2

    _, root = run
    shutil.rmtree(root / "lifetimes")  # no selection: the files removed below are not lost ones
    cols = flow(FLOW2, 2)  # layer 2 scored against its modules only: no residual predecessors
    cols.update({"res": None, "s_res": None, "res_top": None, "s_res_top": None, "res_confidence": None, "res_unjudged": None})
    write_flow(root / "flow/res+mlp/layer=2.parquet", cols, 1, {"layer": 2})
    no_candidate = [{"at": "2/res/0", "direction": "back", "why": "no candidate"}]
    # layer 1 known from its flow file alone (no matches files at all)
    shutil.rmtree(root / "matches")
    for mode in ("verdict", "flow"):
        assert fg.trace(fg.results_paths(root), "2/res/0", "back", mode=mode).graph["ends"] == no_candidate
    # layer 1 known only as the far side of pair 0 → 1 (no flow file of layer 1, no pair 1 → 2)
    (root / "flow/res+mlp/layer=1.parquet").unlink()
    write_matches(root / "matches/site=res/layer=0/part-0.parquet", matches(RES0), {"site": "res", "layer": 0, "n_dst": N})
    for mode in ("verdict", "flow"):
        assert fg.trace(fg.results_paths(root), "2/res/0", "back", mode=mode).graph["ends"] == no_candidate
    # and where the run truly has no layer 1
    (root / "matches/site=res/layer=0/part-0.parquet").unlink()
    assert fg.trace(fg.results_paths(root), "2/res/0", "back").graph["ends"] == [
        {"at": "2/res/0", "direction": "back", "why": "no layer 1 in this run"}]


def test_layout_puts_sites_in_columns_layers_in_rows_and_spreads_a_cells_features_on_a_diagonal_by_index():
    G = nx.DiGraph()
    for name in ("2/res/9", "2/res/1", "2/res/5", "2/mlp/7", "3/att/0", "0/res/4", "3/res/8", "3/res/2"):
        layer, site, index = fg.parse_node(name)
        G.add_node(name, layer=layer, site=site, index=index)
    pos = {n: pytest.approx(p) for n, p in fg.layout(G).items()}
    # (column, row): res 0, mlp 1, att 2; a cell's features in index order over ±0.2 of the column, ±0.25 of the row
    assert pos == {"2/res/1": (-0.2, 1.75), "2/res/5": (0.0, 2.0), "2/res/9": (0.2, 2.25),
                   "3/res/2": (-0.2, 2.75), "3/res/8": (0.2, 3.25),
                   "2/mlp/7": (1.0, 2.0), "3/att/0": (2.0, 3.0), "0/res/4": (0.0, 0.0)}
    assert fg.layout(nx.DiGraph()) == {}


def test_a_trace_goes_back_in_the_verdict_mode_unless_told_otherwise(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/res/2")
    assert (G.graph["direction"], G.graph["mode"], G.graph["cut"]) == ("back", "verdict", 0.5)
    # back only: 0/res/2 by match+top1 (0.8); the forward link to 2/res/2 (0.9) is not walked
    assert set(G.edges) == {("0/res/2", "1/res/2")}
    assert G.graph["ends"] == [{"at": "0/res/2", "direction": "back", "why": "no layer -1 in this run"}]


def test_a_node_whose_sae_has_no_recorded_neuronpedia_set_says_so(run):
    _, root = run
    paths = fg.results_paths(root)
    # 0/mlp/0: no flow file of layer 0 records mlp 0's set; 1/res/1's flow file records 0/res/0's SAE as its "res"
    G = fg.annotate(fg.trace(paths, "0/mlp/0", "forward"), paths)
    assert G.nodes["0/mlp/0"]["neuronpedia_note"] == "no Neuronpedia set recorded for this SAE"
    assert "url" not in G.nodes["0/mlp/0"]
    G = fg.annotate(fg.trace(paths, "1/res/1", "back"), paths)
    assert G.nodes["0/res/0"]["neuronpedia_id"] == "gemma-2-2b/0-gemmascope-res-16k/0"


def test_annotating_from_a_flow_file_without_its_provenance_names_that_file(run):
    _, root = run
    paths = fg.results_paths(root)
    G = fg.trace(paths, "1/res/1", "back")
    path = root / "flow/res+mlp/layer=1.parquet"
    pl.read_parquet(path).write_parquet(path)  # the same rows, without the provenance written beside them
    with pytest.raises(fg.ResultsError) as e:
        fg.annotate(G, paths)
    assert str(e.value).startswith(f"{path}: cannot be read (")
    assert str(e.value).endswith("): delete it and rerun snakemake to rebuild it")


def test_the_viewers_title_names_the_traced_feature_unless_given_and_is_escaped(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/res/2")
    assert "<title>saematch flow graph: 1/res/2</title>" in fg.to_html(G)
    assert "<title>a &lt;b&gt; &amp; c</title>" in fg.to_html(G, "a <b> & c")
    G = nx.DiGraph()  # a graph that is no trace: no root to name
    G.add_node("0/res/0", layer=0, site="res", index=0)
    assert "<title>saematch flow graph: </title>" in fg.to_html(G)


def test_expected_files_come_from_each_summarised_selections_sites_and_layer_runs(tmp_path):
    root = tmp_path / "results" / "model=toy" / "variant=v"
    for name in ("summary/res+mlp.L0-1_3.parquet", "summary/notes.parquet", "lifetimes/res.L0-3.parquet"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # only the names are read
    assert fg.selections(root) == [("res+mlp.L0-1_3", ["res", "mlp"], [0, 1, 3]), ("res.L0-3", ["res"], [0, 1, 2, 3])]
    m = lambda site, L: root / f"matches/site={site}/layer={L}/part-0.parquet"  # noqa: E731
    a, b = "res+mlp.L0-1_3", "res.L0-3"
    # res+mlp over layers 0, 1, 3: the pair 0 → 1 of each site; flow files: layer 0 from mlp 0 alone, layer 1 from
    # res 0 and mlp 1, layer 3 from mlp 3 alone (no res 2). res over 0–3: pairs 0, 1, 2; flow from res L − 1.
    # A file both selections made is named by the first (the summary's).
    assert fg.expected_files(root) == {
        m("res", 0): a, m("mlp", 0): a, root / "flow/mlp/layer=0.parquet": a, root / "flow/res+mlp/layer=1.parquet": a,
        root / "flow/mlp/layer=3.parquet": a,
        m("res", 1): b, m("res", 2): b, root / "flow/res/layer=1.parquet": b, root / "flow/res/layer=2.parquet": b,
        root / "flow/res/layer=3.parquet": b}


def test_the_last_module_layers_size_is_its_pairs_not_the_residual_flow_files(run):
    _, root = run
    # mlp 0 → 1 with a wider mlp 1 (6 features); layer 1's residual flow file has 4 rows
    write_matches(root / "matches/site=mlp/layer=0/part-0.parquet", matches(dict(RES0)), {"site": "mlp", "layer": 0, "n_dst": 6})
    paths = fg.results_paths(root)
    fg.check_feature(paths, 1, "mlp", 5)
    with pytest.raises(fg.ResultsError) as e:
        fg.check_feature(paths, 1, "mlp", 6)
    assert str(e.value) == "1/mlp/6: layer 1 has features 0–5"


def test_an_unreadable_file_that_sizes_a_layer_is_named_when_a_feature_is_checked(run):
    _, root = run
    mlp0 = root / "matches/site=mlp/layer=0/part-0.parquet"
    pl.read_parquet(mlp0).write_parquet(mlp0)  # the same rows without their provenance (n_dst)
    flow1 = root / "flow/res+mlp/layer=1.parquet"
    flow1.write_text("not parquet")
    paths = fg.results_paths(root)
    for feature, path in (("1/mlp/0", mlp0), ("1/res/0", flow1)):
        with pytest.raises(fg.ResultsError) as e:
            fg.trace(paths, feature)
        assert str(e.value).startswith(f"{path}: cannot be read (")
        assert str(e.value).endswith("): delete it and rerun snakemake to rebuild it")


def test_a_module_feature_traced_alone_is_a_node_with_its_layer_site_and_index(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/M/0", "back")  # Llama Scope's M for mlp; back: nothing to walk
    assert dict(G.nodes(data=True)) == {"1/mlp/0": {"layer": 1, "site": "mlp", "index": 0}}
    assert fg.layout(G) == {"1/mlp/0": (1.0, 1.0)}  # the viewer places it: mlp's column, layer 1's row


def test_a_name_that_is_not_layer_site_index_gets_one_line_naming_the_form():
    for name in ("12-res-4230", "res/12/4230", " 12/xyz/4 "):
        with pytest.raises(fg.ResultsError) as e:
            fg.parse_node(name)
        assert str(e.value) == (f"{name.strip()!r} is not a feature: expected LAYER/SITE/INDEX with SITE one of "
                                "res, mlp, att (or R, M, A), e.g. 12/res/4230")
    assert fg.parse_node(" 12/A/-3 ") == (12, "att", -3)  # a negative index parses, for the range check to name


def test_a_flow_file_that_records_no_neuronpedia_sets_gives_each_of_its_saes_the_note(run):
    _, root = run
    write_flow(root / "flow/res+mlp/layer=1.parquet", flow(FLOW1, 1), 1, {"layer": 1})  # no "neuronpedia" entry
    paths = fg.results_paths(root)
    note = {"note": "no Neuronpedia set recorded for this SAE"}
    # res 0 (layer 1's predecessor) and mlp 1 are recorded by layer 1's flow file alone; res 1, its target, is
    # found instead as layer 2's predecessor, and res 2 by layer 2's own record
    assert [fg.neuronpedia_where(paths, L, site) for L, site in ((0, "res"), (1, "mlp"))] == [note] * 2
    assert fg.neuronpedia_where(paths, 1, "res") == {"model": "gemma-2-2b", "set": "1-gemmascope-res-16k"}
    assert fg.neuronpedia_where(paths, 2, "res") == {"model": "gemma-2-2b", "set": "2-gemmascope-res-16k"}
    G = fg.annotate(fg.trace(paths, "1/res/1", "back", module_cut=F32(0.3)), paths)
    assert {n: a.get("neuronpedia_note", a.get("neuronpedia_id")) for n, a in G.nodes(data=True)} == {
        "0/res/0": note["note"], "1/mlp/0": note["note"], "1/res/1": "gemma-2-2b/1-gemmascope-res-16k/1"}
