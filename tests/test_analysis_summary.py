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


def write_pair(tmp_path, match=MATCH):
    path = tmp_path / "results/model=toy/variant=v/matches/site=res/layer=0/part-0.parquet"
    conf, tconf = np.array(CONFIDENCE, np.float32), np.array(TOP1_CONFIDENCE, np.float32)
    cols = {"feature": np.arange(N, dtype=np.int32), "match": np.array(match, np.int32),
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


# --- the columns without truth, on three pairs given out of order -------------------------------

def write(root, site, L, match, cosine, top1, persists, confidence, top1_persists, unjudged, pv):
    n = len(match)
    conf = np.array(confidence, np.float32)
    cols = {"feature": np.arange(n, dtype=np.int32), "match": np.array(match, np.int32),
            "top1": np.array(top1, np.int32), "cosine": np.array(cosine, np.float32),
            "mse": np.array(cosine, np.float32) / 2, "top1_cosine": np.array(cosine, np.float32) + 0.1,
            "persists": np.array(persists), "confidence": conf, "top1_persists": np.array(top1_persists),
            "top1_confidence": conf, "unjudged": np.array(unjudged, object),
            "evidence": np.zeros((n, 7), np.float32), "top1_evidence": np.zeros((n, 7), np.float32)}
    path = root / f"results/model=toy/variant=v/matches/site={site}/layer={L}/part-0.parquet"
    write_matches(path, cols, {"site": site, "layer": L, "total_cost": pv[0],
                               "certificate": {"certified": pv[1], "gap_bound": pv[2], "solver": pv[3]}})
    return str(path)


def test_each_pairs_row_holds_its_own_statistics_sorted_res_before_mlp_then_by_layer(tmp_path):
    nan = float("nan")
    paths = [  # mlp first, res layer 1 before layer 0: the table is sorted anyway
        write(tmp_path, "mlp", 0, [0, 1], [0.5, 0.8], [0, 0], [False, True], [0.1, 0.8], [True, True],
              [None, None], (3.5, True, 0.0, "lapjv")),
        write(tmp_path, "res", 1, [1, 0, 2], [0.7, 0.7, 0.1], [1, 0, 2], [True, True, False], [0.6, 0.9, 0.3],
              [False, False, False], [None, None, None], (2.5, False, 0.01, "sparse")),
        write(tmp_path, "res", 0, [1, 0, -1, 2], [0.9, 0.4, 0.5, 0.6], [1, 3, 2, 2], [True, False, False, True],
              [0.9, 0.2, nan, 0.7], [True, True, True, False], [None, None, "near-duplicate", None],
              (1.5, True, 0.0, "lapjv")),
    ]
    ablation = pl.DataFrame({"site": ["res", "mlp"], "layer": [0, 0], "planted_recovered_unfolded": [0.25, 0.5]},
                            schema={"site": pl.String, "layer": pl.Int32, "planted_recovered_unfolded": pl.Float64})
    # res chains over layers 0–2: chain 0 spans 0–2, 1 and 3 end at layer 0, 2 spans 0–1, 4 lives at
    # layer 1 only, 5 and 6 start at layer 2. Layer 0: 2 deaths (1, 3); layer 1: 1 birth (4), 2 deaths (2, 4).
    long = pl.DataFrame({"site": "res", "chain": [0, 0, 0, 1, 2, 2, 3, 4, 5, 6],
                         "layer": [0, 1, 2, 0, 0, 1, 0, 1, 2, 2], "feature": [0, 1, 0, 1, 2, 2, 3, 0, 1, 2]},
                        schema={"site": pl.String, "chain": pl.Int64, "layer": pl.Int32, "feature": pl.Int32})
    table = summarize(paths, ablation=ablation, lifetimes=long)
    rows = table.to_dicts()
    assert [(r["site"], r["layer"]) for r in rows] == [("res", 0), ("res", 1), ("mlp", 0)]
    res0, res1, mlp0 = rows
    # res 0: f2 unmatched (its cosine and mse are null), f2 unjudged (confidence null)
    assert (res0["n_features"], res0["n_matched"]) == (4, 3)
    assert res0["cosine_mean"] == pytest.approx((0.9 + 0.4 + 0.6) / 3, rel=1e-6)
    assert res0["cosine_median"] == pytest.approx(0.6, rel=1e-6)
    assert res0["share_cosine_gt_0_5"] == pytest.approx(2 / 3)
    assert res0["mse_mean"] == pytest.approx((0.45 + 0.2 + 0.3) / 3, rel=1e-6)
    assert res0["top1_agreement"] == pytest.approx(2 / 3)  # f0 and f3 of the 3 matched
    assert res0["top1_cosine_mean"] == pytest.approx((1.0 + 0.5 + 0.6 + 0.7) / 4, rel=1e-6)
    assert res0["share_persists"] == pytest.approx(0.5) and res0["share_top1_persists"] == pytest.approx(0.75)
    assert res0["confidence_mean"] == pytest.approx((0.9 + 0.2 + 0.7) / 3, rel=1e-6)
    assert res0["share_unjudged"] == pytest.approx(0.25)
    assert (res0["total_cost"], res0["certified"], res0["gap_bound"], res0["solver"]) == (1.5, True, 0.0, "lapjv")
    assert res0["planted_recovered_unfolded"] == 0.25 and res0["births"] is None and res0["deaths"] == 2
    # res 1: every feature matched, top-1 = match
    assert (res1["n_features"], res1["n_matched"], res1["top1_agreement"]) == (3, 3, 1.0)
    assert res1["cosine_median"] == pytest.approx(0.7, rel=1e-6) and res1["share_cosine_gt_0_5"] == pytest.approx(2 / 3)
    assert res1["share_persists"] == pytest.approx(2 / 3) and res1["share_top1_persists"] == 0.0
    assert res1["share_unjudged"] == 0.0
    assert (res1["total_cost"], res1["certified"], res1["gap_bound"], res1["solver"]) == (2.5, False, 0.01, "sparse")
    assert res1["planted_recovered_unfolded"] is None and (res1["births"], res1["deaths"]) == (1, 2)
    # mlp 0: a cosine of exactly 0.5 is not above 0.5; no lifetimes for this site
    assert mlp0["cosine_mean"] == pytest.approx(0.65, rel=1e-6) and mlp0["share_cosine_gt_0_5"] == 0.5
    assert mlp0["top1_agreement"] == 0.5
    assert (mlp0["total_cost"], mlp0["solver"], mlp0["planted_recovered_unfolded"]) == (3.5, "lapjv", 0.5)
    assert mlp0["births"] is None and mlp0["deaths"] is None
    assert "persists_precision" not in table.columns  # without truth: no scores against it


def test_the_console_table_names_each_pair_and_rounds_its_numbers(tmp_path):
    paths, truth = write_pair(tmp_path)
    table = summarize(paths, truth=truth).with_columns(planted_recovered_unfolded=pl.lit(0.123456))  # top-1 = match: f0 f1 f3 f5 f6
    shown = console_columns(console_table(table))
    assert shown["site"] == "res" and shown["pair"] == "0→1" and shown["features"] == "8"
    assert shown["cosine"] == "0.6" and shown["top1_agree"] == "0.625" and shown["certified"] == "true"
    assert shown["unfolded"] == "0.1235" and shown["ece"] == "0.275" and shown["unjudged"] == "0.0"


def test_summarising_no_files_or_a_path_outside_the_results_layout_is_an_error(tmp_path):
    from saematch.summary import read_matches

    with pytest.raises(ValueError, match="no matches files"):
        read_matches([])
    paths, _ = write_pair(tmp_path)
    moved = tmp_path / "elsewhere.parquet"
    (tmp_path / paths[0]).rename(moved)
    with pytest.raises(ValueError, match=r"elsewhere\.parquet: not a results/model=…/variant=…/matches/site=…/layer=…/ path"):
        read_matches([str(moved)])


def test_an_unmatched_feature_is_never_correct(tmp_path):
    """f3 (planted → 2) left unmatched by a partial assignment: not correct, so not in the recall's
    denominator of correctly matched features."""
    paths, truth = write_pair(tmp_path, match=[1, 0, 4, -1, 3, 5, 6, 7])
    row = summarize(paths, truth=truth).row(0, named=True)
    assert row["n_matched"] == 7
    assert row["persists_precision"] == pytest.approx(2 / 4)  # f0, f1 of f0, f1, f2, f5
    assert row["persists_recall"] == pytest.approx(2 / 2)  # correct: f0, f1 only


def test_an_unmatched_planted_feature_counts_as_not_recovered(tmp_path):
    paths, truth = write_pair(tmp_path, match=[1, 0, 4, -1, 3, 5, 6, 7])
    row = summarize(paths, truth=truth).row(0, named=True)
    assert row["planted_recovered"] == pytest.approx(2 / 5)  # f0, f1 of the 5 planted (f3 unmatched)


def test_features_the_truth_does_not_list_are_still_counted(tmp_path):
    paths, truth = write_pair(tmp_path)
    row = summarize(paths, truth=truth.filter(pl.col("feature") < 6)).row(0, named=True)
    assert row["n_features"] == N and row["share_persists"] == pytest.approx(4 / 8)
    assert row["persists_precision"] == pytest.approx(2 / 4)


def test_rows_without_a_dead_column_or_with_a_null_dead_are_all_features(tmp_path):
    """Matches read before the dead column existed (no column), or with an unknown (null) entry."""
    from saematch.summary import read_matches

    paths, truth = write_pair(tmp_path)
    full = summarize(paths, truth=truth).row(0, named=True)
    rows = read_matches(paths)
    for df in (rows.drop("dead"), rows.with_columns(dead=pl.when(pl.col("feature") < 3).then(None).otherwise(False))):
        row = summarize(paths, truth=truth, df=df).row(0, named=True)
        assert row["n_features"] == N and row["n_dead"] == 0
        assert row == full


def test_the_console_table_rounds_each_share_and_shows_every_row_without_a_shape_line(tmp_path):
    paths, truth = write_pair(tmp_path)
    one = summarize(paths, truth=truth).with_columns(
        cosine_mean=pl.lit(0.123456), top1_agreement=pl.lit(0.234567), planted_recovered=pl.lit(0.3456789),
        share_persists=pl.lit(0.456789), share_unjudged=pl.lit(0.56789), persists_precision=pl.lit(0.6789012),
        persists_recall=pl.lit(0.7654321), confidence_ece=pl.lit(0.7890123))
    shown = console_columns(console_table(one))
    assert [shown[c] for c in ("cosine", "top1_agree", "planted_recovered", "persists", "unjudged", "precision",
                               "recall", "ece")] == ["0.123", "0.235", "0.3457", "0.457", "0.568", "0.679", "0.765",
                                                     "0.789"]
    many = pl.concat([one.with_columns(layer=pl.lit(L, pl.Int32)) for L in range(25)])
    text = console_table(many)
    pairs = [line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| res")]
    assert pairs == [f"{L}→{L + 1}" for L in range(25)]  # all 25, none elided
    assert "shape" not in text and "…" not in text


def test_sites_sort_res_mlp_att_then_any_other_and_each_sites_layers_in_order(tmp_path):
    pv = (1.0, True, 0.0, "lapjv")
    one = dict(match=[0], cosine=[0.5], top1=[0], persists=[True], confidence=[0.9], top1_persists=[True],
               unjudged=[None], pv=pv)
    order = [("emb", 0), ("att", 1), ("att", 0), ("mlp", 1)] + [("res", L) for L in (7, 2, 9, 0, 5, 3, 8, 1, 6, 4)]
    paths = [write(tmp_path, site, L, **one) for site, L in order]
    rows = summarize(paths).select("site", "layer").rows()
    assert rows == [("res", L) for L in range(10)] + [("mlp", 1), ("att", 0), ("att", 1), ("emb", 0)]


def test_a_group_the_verdict_never_judged_gets_a_null_ece_and_the_others_their_own():
    from saematch.summary import calibration_error

    df = pl.DataFrame({"layer": [0, 0, 1, 1, 2, 2], "conf": [0.9, 0.9, None, None, 0.2, 0.2],
                       "ok": [True, False, True, True, False, False]},
                      schema={"layer": pl.Int32, "conf": pl.Float64, "ok": pl.Boolean})
    out = calibration_error(df, "conf", pl.col("ok"), ["layer"])
    assert out.schema == {"layer": pl.Int32, "conf_ece": pl.Float64}
    got = dict(out.rows())
    assert got[0] == pytest.approx(0.4) and got[1] is None and got[2] == pytest.approx(0.2)  # |½ − 0.9|, |0 − 0.2|
    none = calibration_error(df.filter(pl.col("layer") == 1), "conf", pl.col("ok"), ["layer"])
    assert none.schema == {"layer": pl.Int32, "conf_ece": pl.Float64} and none.rows() == [(1, None)]


def test_the_certificate_columns_keep_their_types_when_every_gap_bound_is_unknown(tmp_path):
    one = dict(match=[0], cosine=[0.5], top1=[0], persists=[True], confidence=[0.9], top1_persists=[True],
               unjudged=[None])
    paths = [write(tmp_path, "res", L, **one, pv=(1.0, True, None, "lapjv")) for L in (0, 1)]
    table = summarize(paths)
    assert table.schema["gap_bound"] == pl.Float64 and table.schema["total_cost"] == pl.Float64
    assert table.schema["certified"] == pl.Boolean and table["gap_bound"].to_list() == [None, None]


def test_the_console_table_rounds_the_ece_to_three_decimals(tmp_path):
    paths, truth = write_pair(tmp_path)
    table = summarize(paths, truth=truth).with_columns(confidence_ece=pl.lit(0.123456))
    assert console_columns(console_table(table))["ece"] == "0.123"
