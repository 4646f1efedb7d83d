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


def write_pairs(root):
    paths = []
    for L, p in PAIRS.items():
        conf = np.array(p["confidence"], np.float32)
        cols = {"feature": np.arange(N, dtype=np.int32), "match": np.array(p["match"], np.int32),
                "top1": np.array(p["top1"], np.int32), "cosine": np.full(N, 0.6, np.float32),
                "mse": np.zeros(N, np.float32), "top1_cosine": np.full(N, 0.7, np.float32),
                "persists": conf >= 0.5, "confidence": conf, "top1_persists": np.ones(N, bool),
                "top1_confidence": np.full(N, 0.9, np.float32), "unjudged": np.full(N, None, object),
                "evidence": np.zeros((N, 7), np.float32), "top1_evidence": np.zeros((N, 7), np.float32)}
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
