"""Lifetimes on hand-built cases: a chain that breaks, one that survives, births, a gap."""

import numpy as np
import polars as pl
import pytest

from saematch.lifetimes import births_deaths, chains, lengths, survival

# 3 layers of 3 features. 0→1: f0→1 (0.9), f1→0 (0.8), f2 dies (its match 2 is forced, 0.1).
# 1→2: f0→2 (0.7), f1 dies (0.2), f2→0 (0.95).
PAIRS = {
    0: {"match": np.array([1, 0, 2]), "persists": np.array([True, True, False]), "confidence": np.array([0.9, 0.8, 0.1])},
    1: {"match": np.array([2, 1, 0]), "persists": np.array([True, False, True]), "confidence": np.array([0.7, 0.2, 0.95])},
}
N = {0: 3, 1: 3, 2: 3}


def test_chains_follow_persisting_links_break_at_deaths_and_start_at_births():
    long = chains(PAIRS, N)
    got = {c: list(zip(g["layer"], g["feature"], g["confidence"])) for (c,), g in long.group_by("chain")}
    assert got == {
        0: [(0, 0, None), (1, 1, pytest.approx(0.9))],  # breaks: 1.f1 does not persist
        1: [(0, 1, None), (1, 0, pytest.approx(0.8)), (2, 2, pytest.approx(0.7))],  # survives all 3
        2: [(0, 2, None)],  # dies at once: its forced match is not followed
        3: [(1, 2, None), (2, 0, pytest.approx(0.95))],  # born in layer 1 (no persisting predecessor)
        4: [(2, 1, None)],  # born in layer 2
    }
    assert long.schema == {"site": pl.String, "chain": pl.Int64, "layer": pl.Int32, "feature": pl.Int32,
                           "confidence": pl.Float32}
    assert long.height == 9  # every feature of every layer exactly once


def test_births_deaths_lengths_and_survival_of_the_hand_built_case():
    long = chains(PAIRS, N)
    bd = births_deaths(long)
    assert bd.select("layer", "births", "deaths").rows() == [(0, None, 1), (1, 1, 1), (2, 1, None)]
    assert lengths(long).select("length", "chains").rows() == [(1, 2), (2, 2), (3, 1)]
    s = survival(long)
    assert s["k"].to_list() == [0, 1, 2]
    assert s["survival"].to_list() == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert s["layers"].to_list() == [3, 2, 1]


def test_a_gap_in_the_selected_layers_starts_new_chains():
    pairs = {0: PAIRS[0], 3: {"match": np.array([0, 1, 2]), "persists": np.ones(3, bool), "confidence": np.ones(3)}}
    long = chains(pairs, {0: 3, 1: 3, 3: 3, 4: 3})
    assert long.filter(pl.col("layer") == 3)["confidence"].null_count() == 3  # nothing links 1 → 3
    bd = births_deaths(long)
    assert bd.filter(pl.col("layer") == 3)["births"].to_list() == [None]
    assert survival(long).filter(pl.col("k") == 1)["survival"].to_list() == pytest.approx([(2 / 3 + 1) / 2])
