"""The summary's scores against counts made by hand on a pair written in the real matches format:
precision and recall of the verdict (a feature is correct only with the planted partner), and the
console table showing each under its own name."""

import numpy as np
import polars as pl
import pytest

from saematch.summary import console_table, summarize
from saematch.write import write_matches

N = 8
# Planted successors: f0–f4 persist (→ 1, 0, 3, 2, 5), f5–f7 die (−1).
PLANTED = [1, 0, 3, 2, 5, -1, -1, -1]
# The assignment: right for f0, f1, f3; f2 and f4 get the wrong partner; f5–f7 are forced.
MATCH = [1, 0, 4, 2, 3, 5, 6, 7]
CONFIDENCE = [0.9, 0.9, 0.9, 0.3, 0.3, 0.9, 0.1, 0.1]  # persists (≥ 0.5): f0, f1, f2 (wrong partner), f5 (dies)
# Top-1: right for f0–f3, wrong for f4; declared for f0, f2, f3.
TOP1 = [1, 0, 3, 2, 4, 5, 6, 0]
TOP1_CONFIDENCE = [0.8, 0.2, 0.8, 0.8, 0.2, 0.2, 0.2, 0.2]


def write_pair(tmp_path):
    path = tmp_path / "results/model=toy/variant=v/matches/site=res/layer=0/part-0.parquet"
    conf, tconf = np.array(CONFIDENCE, np.float32), np.array(TOP1_CONFIDENCE, np.float32)
    cols = {"feature": np.arange(N, dtype=np.int32), "match": np.array(MATCH, np.int32),
            "top1": np.array(TOP1, np.int32), "cosine": np.full(N, 0.6, np.float32), "mse": np.zeros(N, np.float32),
            "top1_cosine": np.full(N, 0.7, np.float32), "persists": conf >= 0.5, "confidence": conf,
            "top1_persists": tconf >= 0.5, "top1_confidence": tconf, "unjudged": np.full(N, None, object),
            "evidence": np.zeros((N, 7), np.float32), "top1_evidence": np.zeros((N, 7), np.float32)}
    write_matches(path, cols, {"site": "res", "layer": 0, "total_cost": 1.5,
                               "certificate": {"certified": True, "gap_bound": 0.0, "solver": "lapjv"}})
    truth = pl.DataFrame({"site": ["res"] * N, "layer": [0] * N, "feature": list(range(N)), "planted": PLANTED},
                         schema={"site": pl.String, "layer": pl.Int32, "feature": pl.Int32, "planted": pl.Int64})
    return [str(path)], truth


def test_precision_is_the_share_of_declared_features_with_the_planted_partner_and_recall_of_the_planted(tmp_path):
    paths, truth = write_pair(tmp_path)
    row = summarize(paths, truth=truth).row(0, named=True)
    # assignment: declared f0, f1, f2, f5; correct (persisting, planted partner) f0, f1, f3
    assert row["persists_precision"] == pytest.approx(2 / 4)  # f0, f1 of the 4 declared
    assert row["persists_recall"] == pytest.approx(2 / 3)  # f0, f1 of the 3 correct
    # top-1: declared f0, f2, f3; correct f0, f1, f2, f3 (f4's top-1 is not its planted 5)
    assert row["top1_persists_precision"] == pytest.approx(3 / 3)
    assert row["top1_persists_recall"] == pytest.approx(3 / 4)
    assert row["n_planted"] == 5 and row["planted_recovered"] == pytest.approx(3 / 5)
    assert row["planted_top1"] == pytest.approx(4 / 5)
    # ECE over bins 0.9 (f0 f1 f2 f5: 2 correct), 0.3 (f3 f4: 1), 0.1 (f6 f7: 0)
    assert row["confidence_ece"] == pytest.approx(4 / 8 * 0.4 + 2 / 8 * 0.2 + 2 / 8 * 0.1, rel=1e-6)
    # top-1 ECE over bins 0.8 (f0 f2 f3: all correct) and 0.2 (f1 of f1 f4 f5 f6 f7)
    assert row["top1_confidence_ece"] == pytest.approx(3 / 8 * 0.2 + 5 / 8 * 0.0, abs=1e-6)


def test_a_declared_feature_with_the_wrong_partner_is_not_correct(tmp_path):
    """f2 persists with partner 4 where 3 is planted: a false positive, however sure."""
    paths, truth = write_pair(tmp_path)
    row = summarize(paths, truth=truth).row(0, named=True)
    declared_right = sum(c >= 0.5 and p >= 0 and m == p for c, p, m in zip(CONFIDENCE, PLANTED, MATCH))
    assert declared_right == 2
    assert row["persists_precision"] == pytest.approx(declared_right / 4)
    assert row["persists_precision"] != pytest.approx(3 / 4)  # what counting f2 as correct gives


def console_columns(text: str) -> dict[str, str]:
    """The one data row of the console table, by column name."""
    lines = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    header, row = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    return dict(zip(header, row))


def test_the_console_table_shows_precision_and_recall_each_under_its_own_name(tmp_path):
    paths, truth = write_pair(tmp_path)
    shown = console_columns(console_table(summarize(paths, truth=truth)))
    assert shown["precision"] == "0.5" and shown["recall"] == "0.667"
    assert shown["persists"] == "0.5" and shown["planted_recovered"] == "0.6"
