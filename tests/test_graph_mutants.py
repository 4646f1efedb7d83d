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
