"""Tests that kill the surviving mutants of the feature graph (saematch.edges, saematch.query,
the trace part of saematch.graph). Every expected edge, link and number is worked out by hand
from the hand-built run of test_feature_graph (RES0, RES1, FLOW1, FLOW2, MLP0), not computed by
the code under test."""

import numpy as np
import polars as pl
import pytest
from test_feature_graph import N, RES0, matches, run  # noqa: F401  (run: the fixture)

from saematch import graph as fg
from saematch.edges import SCHEMA, edge_table, edges_at, links, read_matches
from saematch.write import write_matches


def rows(df):
    """Edges as (src, dst, relation, score, confidence), scores rounded to 3 digits."""
    r3 = lambda x: None if x is None else round(x, 3)  # noqa: E731
    return {(f"{r['src_layer']}/{r['src_site']}/{r['src_feature']}", f"{r['dst_layer']}/{r['dst_site']}/{r['dst_feature']}",
             r["relation"], r3(r["score"]), r3(r["confidence"])) for r in df.iter_rows(named=True)}


# --- saematch.edges -----------------------------------------------------------------------------

def test_edges_into_a_residual_feature_come_from_the_pair_before_and_its_own_layers_flow_file(run):
    _, root = run
    got = edges_at(fg.results_paths(root), 1, "res", 2, "back")
    # RES0: match(2) = 2 (cos 0.7, conf 0.8); top1(1) = 2 (0.55, 0.6), top1(2) = 2 (0.7, 0.8);
    # FLOW1 row 2: res 3 (s 0.75, conf 0.45), mlp 0 (s 0.05, no confidence)
    assert rows(got) == {("0/res/2", "1/res/2", "match", 0.7, 0.8), ("0/res/1", "1/res/2", "top1", 0.55, 0.6),
                         ("0/res/2", "1/res/2", "top1", 0.7, 0.8), ("0/res/3", "1/res/2", "flow_res", 0.75, 0.45),
                         ("1/mlp/0", "1/res/2", "flow_mlp", 0.05, None)}
    assert got.schema == pl.Schema(SCHEMA)


def test_edges_out_of_a_residual_feature_go_to_the_next_pair_and_the_next_layers_flow_file(run):
    _, root = run
    got = edges_at(fg.results_paths(root), 1, "res", 2, "forward")
    # RES1 row 2: match 2 and top1 2 (cos 0.85, conf 0.9); FLOW2: 2/res/2's predecessor is 1/res/2 (s 0.85, conf 0.9)
    assert rows(got) == {("1/res/2", "2/res/2", "match", 0.85, 0.9), ("1/res/2", "2/res/2", "top1", 0.85, 0.9),
                         ("1/res/2", "2/res/2", "flow_res", 0.85, 0.9)}


def test_an_mlp_feature_links_back_only_to_its_own_site(run):
    _, root = run
    got = edges_at(fg.results_paths(root), 1, "mlp", 2, "back")
    # MLP0 row 1: match 2 and top1 2 (cos 0.8, conf 0.9); nothing from the flow files (they end in res features)
    assert rows(got) == {("0/mlp/1", "1/mlp/2", "match", 0.8, 0.9), ("0/mlp/1", "1/mlp/2", "top1", 0.8, 0.9)}


def test_a_feature_without_files_has_no_edges_and_the_empty_table_keeps_the_schema(run):
    _, root = run
    got = edges_at(fg.results_paths(root), 5, "res", 0, "forward")
    assert got.shape == (0, len(SCHEMA)) and got.schema == pl.Schema(SCHEMA)
    empty = edge_table(fg.results_paths(root / "nothing")).collect()
    assert empty.shape == (0, len(SCHEMA)) and empty.schema == pl.Schema(SCHEMA)


def test_a_lost_matches_or_flow_file_of_the_selection_is_named_not_read_as_no_edges(run):
    _, root = run  # lifetimes/res.L0-2.parquet: the selection res, layers 0–2
    (root / "matches/site=res/layer=1/part-0.parquet").unlink()
    with pytest.raises(fg.ResultsError) as e:
        edges_at(fg.results_paths(root), 1, "res", 0, "forward")
    assert str(e.value) == (f"{root}/matches/site=res/layer=1/part-0.parquet: missing (part of the run's selection "
                            "res.L0-2): rerun snakemake to rebuild it")
    (root / "flow/res+mlp/layer=1.parquet").unlink()
    with pytest.raises(fg.ResultsError) as e:  # the selection's flow file of layer 1 (res from layer 0)
        edges_at(fg.results_paths(root), 1, "res", 0, "back")
    assert str(e.value) == (f"{root}/flow/res/layer=1.parquet: missing (part of the run's selection res.L0-2): "
                            "rerun snakemake to rebuild it")


def test_unjudged_notes_reach_the_edges_and_old_files_without_the_column_give_none(run):
    _, root = run
    path = root / "matches/site=res/layer=0/part-0.parquet"
    write_matches(path, matches(dict(RES0, unjudged=[2])), {"site": "res", "layer": 0, "n_dst": N})
    got = edges_at(fg.results_paths(root), 1, "res", 2, "back")
    notes = {(r["src_feature"], r["relation"]): r["unjudged"] for r in got.iter_rows(named=True)}
    assert notes == {(2, "match"): "near-duplicate: test", (2, "top1"): "near-duplicate: test", (1, "top1"): None,
                     (3, "flow_res"): None, (0, "flow_mlp"): None}
    assert [(c["feature"], c["unjudged"]) for c in links(got, "back")] == [(2, "near-duplicate: test"), (1, None), (3, None)]
    pl.read_parquet(path).drop("unjudged").write_parquet(path)  # a file written before the column existed
    got = edges_at(fg.results_paths(root), 1, "res", 2, "back")
    assert got["unjudged"].null_count() == len(got) == 5


def test_attention_predecessors_are_flow_att_edges_and_an_old_flow_file_has_no_res_confidence(run):
    _, root = run
    path = root / "flow/res+mlp/layer=2.parquet"
    pl.DataFrame({"feature": [0, 1, 2, 3], "case": ["A"] * 4, "res": [0, 1, 2, 3], "s_res": [0.8, 0.4, 0.85, 0.6],
                  "mlp": [3, 3, 3, 3], "s_mlp": [0.05] * 4, "att": [2, 0, 1, 1], "s_att": [0.3, 0.35, 0.2, 0.1]},
                 schema_overrides={c: pl.Int32 for c in ("feature", "res", "mlp", "att")}).write_parquet(path)
    got = edges_at(fg.results_paths(root), 2, "res", 1, "back")
    # RES1 row 1: match 1 and top1 1 (cos 0.4, conf 0.2); the flow file: res 1 (0.4), mlp 3 (0.05), att 0 (0.35)
    assert rows(got) == {("1/res/1", "2/res/1", "match", 0.4, 0.2), ("1/res/1", "2/res/1", "top1", 0.4, 0.2),
                         ("1/res/1", "2/res/1", "flow_res", 0.4, None), ("2/mlp/3", "2/res/1", "flow_mlp", 0.05, None),
                         ("2/att/0", "2/res/1", "flow_att", 0.35, None)}
    fed = edges_at(fg.results_paths(root), 2, "att", 1, "forward")
    assert rows(fed) == {("2/att/1", "2/res/2", "flow_att", 0.2, None), ("2/att/1", "2/res/3", "flow_att", 0.1, None)}
    counts = edge_table(fg.results_paths(root)).collect()["relation"].value_counts()
    assert dict(zip(counts["relation"], counts["count"])) == {"match": 12, "top1": 12, "flow_res": 8, "flow_mlp": 8,
                                                              "flow_att": 4}


def edge(src, dst, relation, score, confidence=None, unjudged=None):
    (a, s, i), (b, t, j) = (x.split("/") for x in (src, dst))
    return dict(src_layer=int(a), src_site=s, src_feature=int(i), dst_layer=int(b), dst_site=t, dst_feature=int(j),
                relation=relation, score=score, confidence=confidence, unjudged=unjudged)


def test_links_rank_by_confidence_then_cosine_and_keep_r_apart_from_the_cosine():
    edges = pl.DataFrame([
        edge("1/res/0", "2/res/5", "match", 0.5, 0.7), edge("1/res/0", "2/res/5", "top1", 0.45, 0.6),
        edge("1/res/0", "2/res/5", "pearson_k", 0.95),
        edge("1/res/0", "2/res/6", "top1", 0.9, 0.7), edge("1/res/0", "2/res/6", "flow_res", 0.6, None, "near-duplicate"),
        edge("1/res/0", "2/res/6", "pearson", 0.3),
        edge("1/res/0", "2/res/7", "flow_res", 0.99), edge("1/res/0", "2/res/8", "pearson", 0.8),
        edge("1/res/0", "2/res/9", "pearson_k", 0.7), edge("1/mlp/4", "2/res/5", "flow_mlp", 0.99)], schema=SCHEMA)
    got = [(c["layer"], c["site"], c["feature"], c["relations"], c["confidence"], c["score"], c["r"], c["unjudged"])
           for c in links(edges, "forward")]
    # 2/res/6 and 2/res/5 tie at confidence 0.7: the higher cosine (0.9 over 0.5) first; 2/res/7 (no confidence,
    # cosine 0.99) before the Pearson partner 2/res/8 (neither); 2/res/9 is only in the Pearson top-k: no candidate;
    # the cosine is the best among the decoder relations, never the r (0.95 or 0.3)
    assert got == [(2, "res", 6, "flow_res+pearson+top1", pytest.approx(0.7), pytest.approx(0.9), pytest.approx(0.3),
                    "near-duplicate"),
                   (2, "res", 5, "match+top1", pytest.approx(0.7), pytest.approx(0.5), pytest.approx(0.95), None),
                   (2, "res", 7, "flow_res", None, pytest.approx(0.99), None, None),
                   (2, "res", 8, "pearson", None, None, pytest.approx(0.8), None)]
    into = pl.DataFrame([edge("1/res/0", "2/res/5", "match", 0.5, 0.7), edge("1/res/3", "2/res/5", "top1", 0.6, 0.8)],
                        schema=SCHEMA)  # back: the neighbour is the source
    assert [(c["layer"], c["site"], c["feature"], c["relations"]) for c in links(into, "back")] == [
        (1, "res", 3, "top1"), (1, "res", 0, "match")]
    assert links(edges.filter(pl.col("relation") == "flow_mlp"), "back") == []


def test_read_matches_takes_model_variant_site_and_layer_from_the_path(run):
    _, root = run
    df = read_matches([str(root / "matches/site=mlp/layer=0/part-0.parquet"),
                       str(root / "matches/site=res/layer=1/part-0.parquet")])
    keys = df.select("model", "variant", "site", "layer").unique(maintain_order=True).rows()
    assert keys == [("toy", "v", "mlp", 0), ("toy", "v", "res", 1)] and df.schema["layer"] == pl.Int32
    assert df["match"].to_list() == [3, 2, 1, 0, 0, 1, 2, 3]  # MLP0's then RES1's
    with pytest.raises(ValueError, match="^no matches files to summarise$"):
        read_matches([])
    bad = root / "elsewhere.parquet"
    with pytest.raises(ValueError) as e:
        read_matches([str(bad)])
    assert str(e.value) == f"{bad}: not a results/model=…/variant=…/matches/site=…/layer=…/ path"


# --- saematch.query -----------------------------------------------------------------------------

def evaluation(root, data, active, r_match):
    """An evaluation's features.parquet for res layers 0 and 1 (4 features each), no Pearson partners."""
    folder = root / "evaluation" / data / "res.L0-2"
    folder.mkdir(parents=True)
    pl.DataFrame({"site": ["res"] * 2 * N, "layer": [0] * N + [1] * N, "feature": list(range(N)) * 2, "active": active,
                  "r_match": r_match, "pearson_top": [[-1]] * 2 * N, "pearson_r": [[0.0]] * 2 * N},
                 schema_overrides={"layer": pl.Int32, "feature": pl.Int32, "active": pl.Int64, "r_match": pl.Float32,
                                   "pearson_top": pl.Array(pl.Int32, 1), "pearson_r": pl.Array(pl.Float32, 1)}
                 ).write_parquet(folder / "features.parquet")


def test_tables_name_each_source_and_leave_out_those_the_run_has_no_files_for(run, tmp_path):
    from saematch.query import tables

    _, root = run
    t = tables(fg.results_paths(root))
    assert set(t) == {"matches", "flow", "lifetimes", "edges", "feature_table"}
    m = t["matches"].collect()
    assert "evidence" not in m.columns and "top1_evidence" not in m.columns and len(m) == 3 * N
    assert sorted(set(zip(m["site"], m["layer"]))) == [("mlp", 0), ("res", 0), ("res", 1)]
    f = t["flow"].collect()
    assert f["layer"].to_list() == [1] * N + [2] * N and f["res"].to_list() == [1, 0, 3, 3, 0, 1, 2, 3]
    assert t["lifetimes"].collect()["selection"].unique().to_list() == ["res.L0-2"]
    evaluation(root, "text-abc", [1] * 2 * N, [0.5] * 2 * N)
    t = tables(fg.results_paths(root))
    assert t["features"].collect()["data"].unique().to_list() == ["text-abc/res.L0-2"]
    empty = tables(fg.results_paths(tmp_path / "nothing"))
    assert set(empty) == {"edges"} and len(empty["edges"].collect()) == 0


def test_the_feature_table_holds_each_features_partners_flow_case_and_chain(run):
    from saematch.query import tables

    _, root = run
    ft = tables(fg.results_paths(root))["feature_table"].collect()
    assert ft.select("site", "layer", "feature").rows() == (
        [("mlp", 0, i) for i in range(N)] + [("res", 0, i) for i in range(N)] + [("res", 1, i) for i in range(N)])
    row = {(r["site"], r["layer"], r["feature"]): r for r in ft.iter_rows(named=True)}
    # 0/res/1 (RES0): assignment 0 (cos 0.5, conf 0.3), top-1 2 (0.55, 0.6); no flow file of layer 0; a chain of its own
    a = row[("res", 0, 1)]
    assert (a["match"], a["persists"], a["top1"], a["top1_persists"], a["case"], a["chain_length"], a["dead"]) == (
        0, False, 2, True, None, 1, False)
    assert (a["cosine"], a["confidence"], a["top1_cosine"], a["top1_confidence"]) == pytest.approx((0.5, 0.3, 0.55, 0.6))
    # 1/res/2 (RES1): 2 both ways (0.85, 0.9); FLOW1's case A; the chain 0/res/2 → 1/res/2 → 2/res/2
    b = row[("res", 1, 2)]
    assert (b["match"], b["top1"], b["case"], b["chain_length"], b["active"], b["r_match"]) == (2, 2, "A", 3, None, None)
    # the flow case is the residual stream's: 0/mlp/0 has none; 0/mlp/3 is dead (its matches row)
    assert row[("mlp", 0, 0)]["case"] is None and row[("mlp", 0, 3)]["dead"] and not row[("mlp", 0, 0)]["dead"]
    assert [row[("res", L, i)]["chain_length"] for L in (0, 1) for i in range(N)] == [2, 1, 3, 1, 2, 2, 3, 2]


def test_the_feature_table_takes_the_first_selection_and_the_first_evaluation_and_text_can_kill(run):
    from saematch.lifetimes import chains_of_files
    from saematch.query import find, tables

    _, root = run
    chains_of_files([str(root / "matches/site=res/layer=0/part-0.parquet")]).write_parquet(root / "lifetimes/res.L0-1.parquet")
    evaluation(root, "text-xyz", [0] * 2 * N, [-1.0] * 2 * N)  # never read: text-abc comes first
    evaluation(root, "text-abc", [10, 0, 5, 7, 3, 3, 3, 3], [0.875, 0.125, 0.625, 0.25, 0.25, 0.375, 0.75, 0.5])
    t = tables(fg.results_paths(root))
    ft = t["feature_table"].filter(pl.col("site") == "res").collect()
    # res.L0-1 (before res.L0-2): 0/0 → 1/1 and 0/2 → 1/2 only, so 1/res/0 and 1/res/3 stand alone
    assert ft["chain_length"].to_list() == [2, 1, 2, 1, 1, 2, 2, 1]
    assert ft["active"].to_list() == [10, 0, 5, 7, 3, 3, 3, 3]
    assert ft["dead"].to_list() == [False, True] + [False] * 6  # 0/res/1 never fired on text-abc
    keys = lambda df: list(zip(df["layer"], df["feature"]))  # noqa: E731
    assert keys(find(t, site="res", r=(0.5, None))) == [(0, 0), (0, 2), (1, 2), (1, 3)]
    assert keys(find(t, site="res", r=(None, 0.25))) == [(0, 3), (1, 0)]  # 0/res/1 (0.125) is dead
    assert keys(find(t, site="res", dead=True)) == [(0, 1)]


def test_find_filters_by_layer_case_persistence_one_sided_ranges_and_limit(run):
    from saematch.query import find, sql, tables

    _, root = run
    t = tables(fg.results_paths(root))
    at = lambda df: list(zip(df["site"], df["layer"], df["feature"]))  # noqa: E731
    # layer 0 of both sites, sorted by site: 0/mlp/3 is dead
    assert at(find(t, layers=[0])) == [("mlp", 0, 0), ("mlp", 0, 1), ("mlp", 0, 2)] + [("res", 0, i) for i in range(N)]
    assert at(find(t, case="A")) == [("res", 1, i) for i in range(N)]  # only layer 1 has a flow file among the pairs
    assert find(t, case="B").is_empty()
    assert at(find(t, site="res", persists=False)) == [("res", 0, 1), ("res", 0, 3), ("res", 1, 1)]
    assert at(find(t, site="res", confidence=(0.85, None))) == [("res", 0, 0), ("res", 1, 2)]
    assert at(find(t, site="res", confidence=(None, 0.25))) == [("res", 0, 3), ("res", 1, 1)]
    assert at(find(t, site="res", limit=2)) == [("res", 0, 0), ("res", 0, 1)]
    assert at(find(t, site="res", min_chain=2, layers=[1])) == [("res", 1, 0), ("res", 1, 1), ("res", 1, 2), ("res", 1, 3)]
    got = sql(t, "SELECT layer, feature FROM feature_table WHERE site = 'mlp' AND dead ORDER BY feature")
    assert isinstance(got, pl.DataFrame) and got.rows() == [(0, 3)]


# --- saematch.graph: trace, _walk, _flow_candidate, check_feature, results_paths -----------------

F32 = lambda x: float(np.float32(x))  # noqa: E731  (a cut exactly at a stored float32 value)


def test_results_paths_lists_each_sites_pairs_the_widest_flow_file_and_the_selections_files(run):
    _, root = run
    narrow = root / "flow/res/layer=1.parquet"  # scored against res only: res+mlp's file of layer 1 is preferred
    narrow.parent.mkdir()
    narrow.write_bytes((root / "flow/res+mlp/layer=1.parquet").read_bytes())
    wide = root / "flow/res+mlp+att/layer=2.parquet"
    wide.parent.mkdir()
    wide.write_bytes((root / "flow/res+mlp/layer=2.parquet").read_bytes())
    m = lambda site, L: root / f"matches/site={site}/layer={L}/part-0.parquet"  # noqa: E731
    assert fg.results_paths(root) == {
        "root": root, "flow": {1: root / "flow/res+mlp/layer=1.parquet", 2: wide},
        "matches": {0: m("res", 0), 1: m("res", 1)}, "sites": {"res": {0: m("res", 0), 1: m("res", 1)}, "mlp": {0: m("mlp", 0)}, "att": {}},
        "expected": {m("res", 0): "res.L0-2", m("res", 1): "res.L0-2", root / "flow/res/layer=1.parquet": "res.L0-2",
                     root / "flow/res/layer=2.parquet": "res.L0-2"}}


def test_check_feature_names_the_layers_the_run_has_and_the_range_of_indices(run):
    _, root = run
    paths = fg.results_paths(root)
    for layer, site, index in ((0, "res", 3), (1, "res", 0), (2, "res", 3), (0, "mlp", 3), (1, "mlp", 0)):
        fg.check_feature(paths, layer, site, index)  # res 0–2 (flow 1, 2; pairs 0, 1), mlp 0–1, four features each
    bad = {(3, "res", 0): f"3/res/0: layer 3 is not in this run's results for site res ({root}): layers 0–2",
           (2, "mlp", 0): f"2/mlp/0: layer 2 is not in this run's results for site mlp ({root}): layers 0–1",
           (0, "att", 0): f"0/att/0: layer 0 is not in this run's results for site att ({root}): layers none",
           (1, "res", 4): "1/res/4: layer 1 has features 0–3", (0, "res", -1): "0/res/-1: layer 0 has features 0–3",
           (0, "mlp", 4): "0/mlp/4: layer 0 has features 0–3", (1, "mlp", 4): "1/mlp/4: layer 1 has features 0–3",
           (1, "mlp", -1): "1/mlp/-1: layer 1 has features 0–3"}
    for (layer, site, index), message in bad.items():
        with pytest.raises(fg.ResultsError) as e:
            fg.check_feature(paths, layer, site, index)
        assert str(e.value) == message
    # the last layer's size comes from its pair's provenance; without n_dst any index is taken
    write_matches(root / "matches/site=mlp/layer=0/part-0.parquet", matches(dict(RES0)), {"site": "mlp", "layer": 0})
    fg.check_feature(fg.results_paths(root), 1, "mlp", 99)


def test_a_trace_records_its_settings_and_walks_both_ways_to_the_ends_of_the_run(run):
    _, root = run
    G = fg.trace(fg.results_paths(root), "1/res/2", "both")
    assert {k: v for k, v in G.graph.items() if k != "ends"} == {
        "root": "1/res/2", "direction": "both", "mode": "verdict", "res_cut": 0.5, "module_cut": 0.15, "cut": 0.5}
    # back: 0/res/2 by match+top1 (0.8); forward: 2/res/2 by all three (0.9, cosine 0.85); no module above 0.15
    assert set(G.edges) == {("0/res/2", "1/res/2"), ("1/res/2", "2/res/2")}
    e = G.edges["1/res/2", "2/res/2"]
    assert (e["kind"], e["relations"], e["r"]) == ("res", "flow_res+match+top1", None)
    assert (e["score"], e["confidence"]) == pytest.approx((0.85, 0.9))
    assert G.graph["ends"] == [{"at": "0/res/2", "direction": "back", "why": "no layer -1 in this run"},
                               {"at": "2/res/2", "direction": "forward", "why": "no layer 3 in this run"}]
    assert G.nodes["2/res/2"] == {"layer": 2, "site": "res", "index": 2, "s_res": pytest.approx(0.85),
                                  "s_mlp": pytest.approx(0.05), "case": "A"}


def test_an_end_names_the_best_candidate_with_its_cosine_and_a_cut_exactly_at_its_confidence_is_met(run):
    _, root = run
    paths = fg.results_paths(root)
    (end,) = fg.trace(paths, "1/res/0", "back").graph["ends"]
    # into 1/res/0: 0/res/1 by match (cos 0.5, conf 0.3) and flow_res (s 0.6, conf 0.2): cosine 0.6, confidence 0.3
    assert end == {"at": "1/res/0", "direction": "back", "best": "0/res/1", "relations": "flow_res+match",
                   "score": pytest.approx(0.6), "confidence": pytest.approx(0.3), "why": "missed confidence ≥ 0.5"}
    G = fg.trace(paths, "1/res/0", "back", cut=F32(0.3))
    assert list(G.edges) == [("0/res/1", "1/res/0")]
    assert G.graph["ends"] == [{"at": "0/res/1", "direction": "back", "why": "no layer -1 in this run"}]


def test_a_module_feature_is_traced_only_forward_into_what_it_feeds(run):
    _, root = run
    paths = fg.results_paths(root)
    G = fg.trace(paths, "1/mlp/0", "back")
    assert list(G.nodes) == ["1/mlp/0"] and G.graph["ends"] == []
    # both: forward only; 1/res/1 (fed at s 0.3) is not walked back to 0/res/0 (its 0.95 link)
    G = fg.trace(paths, "1/mlp/0", "both")
    assert set(G.edges) == {("1/mlp/0", "1/res/1")}
    assert G.graph["ends"] == [{"at": "1/res/1", "direction": "forward", "best": "2/res/1", "relations": "flow_res+match+top1",
                                "score": pytest.approx(0.4), "confidence": pytest.approx(0.2),
                                "why": "missed confidence ≥ 0.5"}]
    # a module cut exactly at s 0.3 keeps 1/res/1; above it nothing is fed
    assert ("1/mlp/0", "1/res/1") in fg.trace(paths, "1/mlp/0", "forward", module_cut=F32(0.3)).edges
    G = fg.trace(paths, "1/mlp/0", "forward", module_cut=0.31)
    assert list(G.nodes) == ["1/mlp/0"]
    assert G.graph["ends"] == [{"at": "1/mlp/0", "direction": "forward", "why": "feeds no residual feature at s ≥ 0.31"}]
    G = fg.trace(paths, "0/mlp/2", "forward")  # no flow file of layer 0
    assert G.graph["ends"] == [{"at": "0/mlp/2", "direction": "forward", "why": "feeds no residual feature at s ≥ 0.15"}]


def test_the_flow_mode_follows_the_top1_forward_with_the_relations_that_agree(run):
    _, root = run
    paths = fg.results_paths(root)
    G = fg.trace(paths, "0/res/1", "forward", mode="flow", res_cut=F32(0.55))
    # 0/res/1's top-1 is 1/res/2 at cosine 0.55 (exactly the cut), proposed by top1 alone (0.6);
    # 1/res/2's top-1 is 2/res/2 at 0.85, proposed by all three (0.9)
    got = {(u, v): (a["relations"], round(a["score"], 3), round(a["confidence"], 3)) for u, v, a in G.edges(data=True)}
    assert got == {("0/res/1", "1/res/2"): ("top1", 0.55, 0.6), ("1/res/2", "2/res/2"): ("flow_res+match+top1", 0.85, 0.9)}
    assert G.graph["ends"] == [{"at": "2/res/2", "direction": "forward", "why": "no layer 3 in this run"}]
    with pytest.raises(fg.ResultsError, match="trace mode 'nope': expected one of verdict, flow"):
        fg.trace(paths, "0/res/1", mode="nope")


def test_the_flow_mode_says_no_candidate_where_a_layer_has_no_predecessor_scores(run):
    from saematch.write import write_flow
    from test_feature_graph import FLOW2, flow

    _, root = run
    cols = flow(FLOW2, 2)
    cols.update({"res": None, "s_res": None, "res_top": None, "s_res_top": None, "res_confidence": None, "res_unjudged": None})
    write_flow(root / "flow/res+mlp/layer=2.parquet", cols, 1, {"layer": 2})
    G = fg.trace(fg.results_paths(root), "2/res/0", "back", mode="flow")
    assert G.graph["ends"] == [{"at": "2/res/0", "direction": "back", "why": "no candidate"}]


def test_two_walks_from_one_module_feature_that_join_keep_both_links(run):
    from saematch.write import write_flow
    from test_feature_graph import FLOW1, RES1, flow

    _, root = run
    # 1/mlp/0 feeds 1/res/1 and 1/res/2 (s 0.3 each); 1/res/1's top-1 is now 2/res/2 (0.7), 1/res/2's link too (0.9)
    write_flow(root / "flow/res+mlp/layer=1.parquet", flow(dict(FLOW1, s_mlp=[0.1, 0.3, 0.3, 0.2]), 1), 1, {"layer": 1})
    write_matches(root / "matches/site=res/layer=1/part-0.parquet",
                  matches(dict(RES1, top1=[0, 2, 2, 3], top1_conf=[0.7, 0.7, 0.9, 0.6])), {"site": "res", "layer": 1, "n_dst": N})
    G = fg.trace(fg.results_paths(root), "1/mlp/0", "forward")
    assert {("1/mlp/0", "1/res/1"), ("1/mlp/0", "1/res/2"), ("1/res/1", "2/res/2")} <= set(G.edges)
    assert ("1/res/2", "2/res/2") in G.edges


def test_the_edge_table_holds_each_evaluations_pearson_partners(run):
    _, root = run
    folder = root / "evaluation" / "text-abc" / "res.L0-2"
    folder.mkdir(parents=True)
    top, r = [[-1, -1]] * N, [[0.0, 0.0]] * N
    top[2], r[2] = [0, 2], [0.9, 0.8]  # 1/res/2's Pearson top-2 in layer 2
    pl.DataFrame({"site": ["res"] * N, "layer": [1] * N, "feature": list(range(N)), "pearson_top": top, "pearson_r": r},
                 schema_overrides={"layer": pl.Int32, "feature": pl.Int32, "pearson_top": pl.Array(pl.Int32, 2),
                                   "pearson_r": pl.Array(pl.Float32, 2)}).write_parquet(folder / "features.parquet")
    edges = edge_table(fg.results_paths(root)).collect()
    assert rows(edges.filter(pl.col("relation").is_in(["pearson", "pearson_k"]))) == {
        ("1/res/2", "2/res/0", "pearson", 0.9, None), ("1/res/2", "2/res/2", "pearson_k", 0.8, None)}


def test_an_mlp_features_edges_back_do_not_need_the_residual_flow_file(run):
    _, root = run
    (root / "flow/res+mlp/layer=1.parquet").unlink()  # lost: the selection's flow file of layer 1
    got = edges_at(fg.results_paths(root), 1, "mlp", 2, "back")
    assert rows(got) == {("0/mlp/1", "1/mlp/2", "match", 0.8, 0.9), ("0/mlp/1", "1/mlp/2", "top1", 0.8, 0.9)}


def test_an_unreadable_results_file_is_named_when_a_features_edges_are_read(run):
    _, root = run
    path = root / "matches/site=res/layer=1/part-0.parquet"
    path.write_text("not parquet")
    with pytest.raises(fg.ResultsError) as e:
        edges_at(fg.results_paths(root), 1, "res", 2, "forward")
    assert str(e.value).startswith(f"{path}: cannot be read (")
    assert str(e.value).endswith("): delete it and rerun snakemake to rebuild it")
    folder = root / "evaluation" / "text-abc" / "res.L0-2"
    folder.mkdir(parents=True)
    (folder / "features.parquet").write_text("not parquet either")
    with pytest.raises(fg.ResultsError) as e:
        edges_at(fg.results_paths(root), 0, "mlp", 0, "forward")
    assert str(e.value).startswith(f"{folder / 'features.parquet'}: cannot be read (")


def test_the_reversed_verdicts_unjudged_note_reaches_only_the_flow_res_edge(run):
    from saematch.write import write_flow
    from test_feature_graph import FLOW1, flow

    _, root = run
    cols = flow(FLOW1, 1)
    cols["res_unjudged"] = np.array([None, None, "near-duplicate: flow", None], object)
    write_flow(root / "flow/res+mlp/layer=1.parquet", cols, 1, {"layer": 1})
    got = edges_at(fg.results_paths(root), 1, "res", 2, "back")
    notes = {(r["src_site"], r["src_feature"], r["relation"]): r["unjudged"] for r in got.iter_rows(named=True)}
    # FLOW1 row 2: res 3 (its note), mlp 0 (none: the note is the residual verdict's); RES0's rows have none
    assert notes == {("res", 2, "match"): None, ("res", 1, "top1"): None, ("res", 2, "top1"): None,
                     ("res", 3, "flow_res"): "near-duplicate: flow", ("mlp", 0, "flow_mlp"): None}


def test_the_feature_table_reads_older_files_and_runs_without_flow_or_lifetimes(run):
    import shutil

    from saematch.query import find, tables

    _, root = run
    path = root / "matches/site=mlp/layer=0/part-0.parquet"
    pl.read_parquet(path).drop("unjudged", "dead").write_parquet(path)  # written before those columns existed
    t = tables(fg.results_paths(root))
    assert find(t, site="mlp")["feature"].to_list() == [0, 1, 2, 3]  # no dead column: none dead
    ft = t["feature_table"].collect()
    assert ft.filter(pl.col("site") == "mlp")["unjudged"].null_count() == N
    shutil.rmtree(root / "flow")
    shutil.rmtree(root / "lifetimes")
    t = tables(fg.results_paths(root))
    assert set(t) == {"matches", "edges", "feature_table"}
    ft = t["feature_table"].collect()
    assert ft["case"].null_count() == ft["chain_length"].null_count() == ft["chain"].null_count() == 3 * N
    assert find(t, case="A").is_empty() and find(t, min_chain=1).is_empty()
    assert len(find(t, site="res")) == 2 * N


def test_features_without_an_evaluation_row_keep_their_own_dead_flag(run):
    from saematch.query import find, tables

    _, root = run
    evaluation(root, "text-abc", [1] * 2 * N, [0.5] * 2 * N)  # res rows only
    t = tables(fg.results_paths(root))
    assert find(t, site="mlp")["feature"].to_list() == [0, 1, 2]  # 0/mlp/3 dead by its matches row only
    assert find(t, site="mlp", dead=True)["feature"].to_list() == [3]


def test_an_explanation_search_without_an_export_or_features_finds_nothing_and_keeps_the_column(run):
    from saematch.query import find, tables

    _, root = run
    paths = fg.results_paths(root)
    t = tables(paths)
    for got in (find(t, site="res", explanation="wedding", paths=paths, explanations_root=None),
                find(t, site="att", explanation="wedding", paths=paths, explanations_root=root / "np")):
        assert got.is_empty() and "explanation" in got.columns and got.schema["explanation"] == pl.String


def test_the_flow_table_reads_an_older_flow_file_beside_a_new_one_and_selections_keep_their_whole_name(run):
    import shutil

    from saematch.query import tables

    _, root = run
    path = root / "flow/res+mlp/layer=2.parquet"
    pl.read_parquet(path).drop("res_confidence", "res_unjudged").write_parquet(path)  # written before the reversed verdict
    shutil.copy(root / "lifetimes/res.L0-2.parquet", root / "lifetimes/res.L0-1_2.parquet")
    t = tables(fg.results_paths(root))
    f = t["flow"].collect()
    assert f["layer"].to_list() == [1] * N + [2] * N and f["res_confidence"].null_count() == N
    assert sorted(t["lifetimes"].collect()["selection"].unique().to_list()) == ["res.L0-1_2", "res.L0-2"]
