"""Lifetimes from matches files in the real format, against chains written down by hand: the
chains follow the assignment (not the decoder top-1), and `saematch lifetimes` lists the
longest chains first."""

import json

import numpy as np
import polars as pl

from saematch.cli import main
from saematch.lifetimes import SCHEMA, chains_of_files
from saematch.write import write_matches

N = 3
# res, layers 0–2, three features each. 0→1: f0→1, f1→0 persist, f2 dies (forced match 2).
# 1→2: f0→2, f2→0 persist, f1 dies. The decoder top-1 points elsewhere every time.
PAIRS = {0: {"match": [1, 0, 2], "top1": [0, 2, 1], "confidence": [0.9, 0.8, 0.1]},
         1: {"match": [2, 1, 0], "top1": [1, 0, 1], "confidence": [0.7, 0.2, 0.95]}}
# (chain, layer, feature), numbered by start layer then feature, by hand from the links above.
CHAINS = [(0, 0, 0), (0, 1, 1),            # breaks: 1.f1 dies
          (1, 0, 1), (1, 1, 0), (1, 2, 2),  # lives through all three layers
          (2, 0, 2),                        # dies at once: its forced match is not followed
          (3, 1, 2), (3, 2, 0),             # born at layer 1
          (4, 2, 1)]                        # born at layer 2


def write_pairs(root, extra=None):
    """The pairs as matches files; ``extra[L]``: columns that replace or add to layer L's."""
    paths = []
    for L, p in PAIRS.items():
        conf = np.array(p["confidence"], np.float32)
        cols = {"feature": np.arange(N, dtype=np.int32), "match": np.array(p["match"], np.int32),
                "top1": np.array(p["top1"], np.int32), "cosine": np.full(N, 0.6, np.float32),
                "mse": np.zeros(N, np.float32), "top1_cosine": np.full(N, 0.7, np.float32),
                "persists": conf >= 0.5, "confidence": conf, "top1_persists": np.ones(N, bool),
                "top1_confidence": np.full(N, 0.9, np.float32), "unjudged": np.full(N, None, object),
                "evidence": np.zeros((N, 7), np.float32), "top1_evidence": np.zeros((N, 7), np.float32),
                **(extra or {}).get(L, {})}
        path = root / f"matches/site=res/layer={L}/part-0.parquet"
        write_matches(path, cols, {"site": "res", "layer": L, "n_dst": N})
        paths.append(str(path))
    return paths


def test_chains_of_files_follow_the_assignments_persisting_links_not_the_top1(tmp_path):
    paths = write_pairs(tmp_path / "results/model=toy/variant=v")
    long = chains_of_files(paths)
    assert long.select("chain", "layer", "feature").rows() == CHAINS
    assert long["site"].unique().to_list() == ["res"]


def test_the_lifetimes_command_lists_the_longest_chains_first(tmp_path, capsys):
    root = tmp_path / "results/model=toy/variant=v"
    (root / "lifetimes").mkdir(parents=True)
    chain, layer, feature = zip(*CHAINS)
    pl.DataFrame({"site": ["res"] * len(CHAINS), "chain": chain, "layer": layer, "feature": feature,
                  "confidence": [None] * len(CHAINS)}, schema=SCHEMA).write_parquet(root / "lifetimes/res.L0-2.parquet")
    assert main(["--results", str(tmp_path / "results"), "lifetimes", "toy", "--top", "3", "--json"]) == 0
    longest = json.loads(capsys.readouterr().out)["longest"]
    # 3 layers (chain 1), then the two 2-layer chains in chain order; never a 1-layer chain
    assert [(r["chain"], r["layers"], r["from"], r["to"], r["features"]) for r in longest] == [
        (1, 3, 0, 2, [1, 0, 2]), (0, 2, 0, 1, [0, 1]), (3, 2, 1, 2, [2, 0])]
    assert main(["--results", str(tmp_path / "results"), "lifetimes", "toy", "--top", "1"]) == 0
    text = capsys.readouterr().out.split("births and deaths")[0]
    assert "1 → 0 → 2" in text and "0 → 1" not in text


def test_chains_are_of_site_res_unless_named_and_empty_without_pairs():
    from saematch.lifetimes import chains

    pairs = {L: {"match": np.array(p["match"]), "persists": np.array(p["confidence"]) >= 0.5,
                 "confidence": np.array(p["confidence"])} for L, p in PAIRS.items()}
    assert chains(pairs, {0: N, 1: N, 2: N})["site"].unique().to_list() == ["res"]
    assert chains(pairs, {0: N, 1: N, 2: N}, "mlp")["site"].unique().to_list() == ["mlp"]
    empty = chains({}, {})
    assert empty.height == 0 and empty.schema == SCHEMA


def open_ended_chains(site="res"):
    """Layers 0–2 of one site, by hand. unjudged: the feature's link onward was not judged (its
    chain may live on: an open end). A: 0.f0 → 1.f0, open at 1 (its rows given layer 1 first);
    B: 0.f1 dies; C: 0.f2, open at 0; D: 1.f1 → 2.f0; E: 1.f2 dies; F, G: born at 2; H: dead."""
    rows = [("A", 1, 0, True), ("A", 0, 0, False), ("B", 0, 1, False), ("C", 0, 2, True), ("D", 1, 1, False),
            ("D", 2, 0, False), ("E", 1, 2, False), ("F", 2, 1, False), ("G", 2, 2, False), ("H", 2, 3, False)]
    ids = {c: i for i, c in enumerate("ABCDEFGH")}
    return pl.DataFrame({"site": site, "chain": [ids[r[0]] for r in rows], "layer": [r[1] for r in rows],
                         "feature": [r[2] for r in rows], "unjudged": [r[3] for r in rows],
                         "dead": [None] * 9 + [True]},  # null: not dead
                        schema={"site": pl.String, "chain": pl.Int64, "layer": pl.Int32, "feature": pl.Int32,
                                "unjudged": pl.Boolean, "dead": pl.Boolean})


def test_an_open_chain_end_is_neither_a_death_nor_counted_dead_in_survival():
    from saematch.lifetimes import births_deaths, lengths, survival

    long = pl.concat([open_ended_chains("res"), open_ended_chains("att")])
    bd = births_deaths(long).filter(pl.col("site") == "res")
    # deaths: layer 0 B (C is open), layer 1 E (A is open); births: layer 1 D, E; layer 2 F, G (H is dead)
    assert bd.select("layer", "features", "births", "deaths").rows() == [(0, 3, None, 1), (1, 3, 2, 1), (2, 3, 2, None)]
    # k = 1: of layer 0 A alive, B not (C open before 1: left out); of layer 1 D alive, E not (A left out)
    # k = 2: of layer 0 only B is known (A, C open before 2): not alive
    s = survival(long)
    assert s.rows() == [("att", 0, 1.0, 3), ("att", 1, 0.5, 2), ("att", 2, 0.0, 1),
                        ("res", 0, 1.0, 3), ("res", 1, 0.5, 2), ("res", 2, 0.0, 1)]
    assert (s.schema["k"], s.schema["survival"]) == (pl.Int32, pl.Float64)
    assert lengths(long).rows() == [("att", 1, 5), ("att", 2, 2), ("res", 1, 5), ("res", 2, 2)]


def test_the_survival_of_no_chains_is_an_empty_table_with_its_columns():
    from saematch.lifetimes import survival

    empty = survival(open_ended_chains().clear())
    assert empty.height == 0
    assert empty.schema == {"site": pl.String, "k": pl.Int32, "survival": pl.Float64, "layers": pl.Int64}


def test_a_wholly_unjudged_layer_has_no_deaths_and_the_next_no_births_while_null_marks_are_judged():
    """Layers 0–3, by hand. A: 0.f0 → 1.f0; B: 0.f1 dies; C: born at 1. Layer 1 wholly unjudged
    (A and C may live on). D: 2.f0 → 3.f0; E: 2.f1 dies; F: born at 3. Null unjudged and
    unjudged_in entries mean judged."""
    from saematch.lifetimes import births_deaths

    rows = [("A", 0, 0, None), ("B", 0, 1, None), ("A", 1, 0, True), ("C", 1, 1, True),
            ("D", 2, 0, False), ("E", 2, 1, False), ("D", 3, 0, None), ("F", 3, 1, None)]
    ids = {c: i for i, c in enumerate("ABCDEF")}
    long = pl.DataFrame({"site": "res", "chain": [ids[r[0]] for r in rows], "layer": [r[1] for r in rows],
                         "feature": [r[2] for r in rows], "unjudged": [r[3] for r in rows], "unjudged_in": [None] * 8},
                        schema={"site": pl.String, "chain": pl.Int64, "layer": pl.Int32, "feature": pl.Int32,
                                "unjudged": pl.Boolean, "unjudged_in": pl.Boolean})
    bd = births_deaths(long)
    # L0: B dies; L1: C born, deaths unknown; L2: births unknown, E dies; L3: F born
    assert bd.select("layer", "births", "deaths").rows() == [(0, None, 1), (1, 1, None), (2, None, 1), (3, 1, None)]
    assert bd.schema == {"site": pl.String, "layer": pl.Int32, "features": pl.Int64, "births": pl.Int64,
                         "deaths": pl.Int64}


def test_chains_of_files_mark_unjudged_links_and_dead_features_and_nothing_else(tmp_path):
    # layer 0: f2 dead, f0's dead unknown (null); layer 1: f1's link onward not judged
    paths = write_pairs(tmp_path / "results/model=toy/variant=v", {
        0: {"dead": np.array([None, False, True], object)},
        1: {"dead": np.zeros(N, bool), "unjudged": np.array([None, "near-duplicate", None], object)}})
    long = chains_of_files(paths)
    marked = lambda col: sorted(long.filter(pl.col(col)).select("layer", "feature").rows())  # noqa: E731
    assert marked("dead") == [(0, 2)]
    assert marked("unjudged") == [(1, 1)] and marked("unjudged_in") == [(2, 1)]  # 1.f1's partner: 2.f1
    assert long.select(pl.col("dead", "unjudged", "unjudged_in").null_count()).row(0) == (0, 0, 0)
