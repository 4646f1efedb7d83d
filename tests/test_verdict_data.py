"""The verdict re-fitted on an evaluation's labels (saematch.verdict_data), on synthetic frames
whose labels follow a known logistic law, in the real column layout of the matches files and of
the evaluation's features.parquet."""

import numpy as np
import polars as pl
import pytest

from saematch import calibrate
from saematch.verdict_data import evidence_matrix, read_matches, verdict_on_data

K = 3  # Pearson partners kept per feature


def synthetic(n=1500, sites=("res", "mlp"), layers=(0, 1), seed=0, chance_sites=(), dead_every=0,
              overconfidence=3.0, n_dst=200):
    """matches and features frames of ``sites`` × ``layers``: the true P(partner = Pearson top-1)
    is sigmoid(z), the data-free confidence sigmoid(overconfidence · z) (overconfident); in
    ``chance_sites`` the label ignores z. Every ``dead_every``-th feature fires on 2 tokens."""
    rng = np.random.default_rng(seed)
    match_rows, feature_rows = [], []
    for site in sites:
        for layer in layers:
            z = rng.normal(0, 1.5, n)
            truth = 1 / (1 + np.exp(-z)) if site not in chance_sites else np.full(n, 0.4)
            label = rng.random(n) < truth
            z1 = z + rng.normal(0, 0.5, n)
            truth1 = 1 / (1 + np.exp(-(z1 - 1))) if site not in chance_sites else np.full(n, 0.3)
            label1 = rng.random(n) < truth1
            match = rng.integers(0, n_dst, n)
            top1 = np.where(rng.random(n) < 0.5, match, (match + 1) % n_dst)
            best = np.where(label, match, (match + 7) % n_dst)
            # top1's label: top1 == best where label1; make it so without breaking the match label
            top1 = np.where(label1, best, np.where(best == top1, (best + 3) % n_dst, top1))
            active = rng.integers(50, 500, n)
            if dead_every:
                active[::dead_every] = 2
            pearson_top = np.stack([best, (best + 1) % n_dst, (best + 2) % n_dst], 1).astype(np.int32)
            match_rows.append(pl.DataFrame({
                "site": site, "layer": np.int32(layer), "feature": np.arange(n, dtype=np.int32),
                "match": match.astype(np.int32), "top1": top1.astype(np.int32),
                "confidence": (1 / (1 + np.exp(-overconfidence * z))).astype(np.float32),
                "top1_confidence": (1 / (1 + np.exp(-overconfidence * (z1 - 1)))).astype(np.float32)}))
            feature_rows.append(pl.DataFrame({
                "site": site, "layer": np.int32(layer), "feature": np.arange(n, dtype=np.int32),
                "active": active, "pearson_top": pearson_top,
            }).with_columns(pl.col("pearson_top").cast(pl.Array(pl.Int32, K))))
    return pl.concat(match_rows), pl.concat(feature_rows)


@pytest.fixture(scope="module")
def refitted():
    matches, features = synthetic()
    table, summary = verdict_on_data(matches, features, min_active=10, tokens={"res": 8192, "mlp": 8192},
                                     data="text-abc123")
    return matches, features, table, summary


def test_the_refit_recovers_calibration_held_out(refitted):
    _, _, table, summary = refitted
    for row in summary.iter_rows(named=True):
        for partner in ("match", "top1"):
            assert row[f"{partner}_ece_before"] > 0.08, row  # the data-free verdict is overconfident here
            assert row[f"{partner}_ece_after"] < 0.04, row  # cross-fitted, held out
            assert row[f"{partner}_unjudged"] is None
        assert row["labelled"] == 3000 and row["tokens"] == 8192 and row["data"] == "text-abc123"
    assert (table["how"] == "cross-fitted").all() and table["confidence"].null_count() == 0
    assert (table["persists"] == (table["confidence"] >= 0.5)).all()
    # the table's confidence is the one summarised: its ECE against the labels, per site
    res = table.filter(pl.col("site") == "res")
    ece = calibrate.ece(res["confidence"].to_numpy(), res["label"].to_numpy())
    assert ece == pytest.approx(summary.filter(pl.col("site") == "res")["match_ece_after"][0])


def test_a_features_own_label_does_not_set_its_own_confidence(refitted):
    matches, features, table, _ = refitted
    i = 17  # flip feature 17 of res layer 0's label: its Pearson top-1 becomes / stops being its partner
    row = (pl.col("site") == "res") & (pl.col("layer") == 0) & (pl.col("feature") == i)
    partner = matches.filter(row)["match"][0]
    was = table.filter(row)["label"][0]
    new_best = partner if not was else (partner + 11) % 200
    flipped = features.with_columns(
        pl.when(row).then(pl.concat_list(pl.lit(new_best, pl.Int32), pl.lit(1, pl.Int32), pl.lit(2, pl.Int32))
                          .list.to_array(K)).otherwise(pl.col("pearson_top")).alias("pearson_top"))
    again, _ = verdict_on_data(matches, flipped, min_active=10, tokens={"res": 8192, "mlp": 8192}, data="text-abc123")
    assert again.filter(row)["label"][0] == (not was)
    assert again.filter(row)["confidence"][0] == table.filter(row)["confidence"][0]
    # while the other folds' models, which learnt from it, moved
    others = again["confidence"].to_numpy() != table["confidence"].to_numpy()
    assert others.sum() > 0


def test_dead_features_are_named_not_guessed_at():
    matches, features = synthetic(n=600, dead_every=10)
    table, summary = verdict_on_data(matches, features, min_active=10)
    dead = table.filter(pl.col("active") < 10)
    assert dead.height == 4 * 60
    assert dead["confidence"].null_count() == dead.height and dead["top1_confidence"].null_count() == dead.height
    assert dead["persists"].null_count() == dead.height and dead["how"].null_count() == dead.height
    assert (dead["unjudged"] == "dead on data (active 2 < min_active 10)").all()
    assert (dead["top1_unjudged"] == "dead on data (active 2 < min_active 10)").all()
    alive = table.filter(pl.col("active") >= 10)
    assert alive["unjudged"].null_count() == alive.height and alive["confidence"].null_count() == 0
    assert summary["dead"].to_list() == [120, 120]


def test_a_site_at_chance_on_data_is_named_and_gets_no_confidences():
    matches, features = synthetic(n=800, sites=("res", "att"), chance_sites=("att",))
    table, summary = verdict_on_data(matches, features, min_active=10)
    att = table.filter(pl.col("site") == "att")
    assert att["confidence"].null_count() == att.height and att["persists"].null_count() == att.height
    assert att["unjudged"].str.starts_with("site at chance on data (held-out AUC ").all()
    assert att["top1_unjudged"].str.starts_with("site at chance on data").all()
    row = summary.filter(pl.col("site") == "att").row(0, named=True)
    assert row["match_unjudged"] == att["unjudged"][0] and row["match_auc"] < 0.6
    res = table.filter(pl.col("site") == "res")
    assert res["unjudged"].null_count() == res.height and res["confidence"].null_count() == 0
    assert summary.filter(pl.col("site") == "res")["match_auc"][0] > 0.7


def test_pairs_the_evaluation_did_not_read_get_the_fitted_model():
    matches, features = synthetic(n=600, layers=(0, 1, 2))
    features = features.filter(pl.col("layer") < 2)  # layer 2's pairs: not evaluated
    table, summary = verdict_on_data(matches, features, min_active=10)
    unread = table.filter(pl.col("layer") == 2)
    assert (unread["how"] == "fitted").all() and unread["confidence"].null_count() == 0
    assert unread["active"].null_count() == unread.height and unread["label"].null_count() == unread.height
    assert (table.filter(pl.col("layer") < 2)["how"] == "cross-fitted").all()
    assert summary["labelled"].to_list() == [1200, 1200]  # only the evaluated pairs are labelled


def test_evidence_is_the_logit_of_the_confidence_and_the_matches_evidence_when_present():
    frame = pl.DataFrame({"confidence": [0.5, 0.9, 1.0], "top1_confidence": [0.2, 0.2, 0.0]})
    X, names = evidence_matrix(frame, "match")
    assert X.shape == (3, 1) and names == ["logit_confidence"]
    np.testing.assert_allclose(X[:, 0], [0.0, np.log(9), np.log((1 - 1e-4) / 1e-4)])
    with_ev = frame.with_columns(pl.Series("top1_evidence", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                                           pl.Array(pl.Float32, 2)))
    X, names = evidence_matrix(with_ev, "top1")
    assert X.shape == (3, 3) and names == ["logit_top1_confidence", "top1_evidence_0", "top1_evidence_1"]
    np.testing.assert_allclose(X[:, 1:], [[1, 2], [3, 4], [5, 6]])


def test_matches_files_are_read_with_their_site_and_layer(tmp_path):
    matches, _ = synthetic(n=50, sites=("mlp",), layers=(3,))
    path = tmp_path / "results/model=m/variant=v/matches/site=mlp/layer=3/part-0.parquet"
    path.parent.mkdir(parents=True)
    matches.drop("site", "layer").write_parquet(path)
    back = read_matches([str(path)])
    assert back["site"].unique().to_list() == ["mlp"] and back["layer"].unique().to_list() == [3]
    assert back.height == 50


def write_evaluated_run(tmp_path, n=600):
    """results/model=toy/variant=v: mlp (labels follow the verdict) and att (labels at chance)
    pairs 0→1 in the real matches format, and an evaluation folder with its features, pairs and
    the verdict re-fitted on it, written as the verdict_data job writes them."""
    from saematch.write import SCHEMA, write_matches

    matches, features = synthetic(n=n, sites=("mlp", "att"), layers=(0,), chance_sites=("att",), dead_every=50)
    root = tmp_path / "results/model=toy/variant=v"
    paths = []
    for (site,), m in matches.group_by("site"):
        path = root / f"matches/site={site}/layer=0/part-0.parquet"
        cols = {c: m[c].to_numpy() for c in ("feature", "match", "top1", "confidence", "top1_confidence")}
        cols.update(cosine=np.full(n, 0.3, np.float32), top1_cosine=np.full(n, 0.3, np.float32),
                    mse=np.zeros(n, np.float32), persists=cols["confidence"] >= 0.5,
                    top1_persists=cols["top1_confidence"] >= 0.5)
        for field in SCHEMA:  # the matches' other columns (the data-free verdict's reason, its evidence)
            if field.name not in cols:
                size = getattr(field.type, "list_size", None)
                cols[field.name] = np.zeros((n, size), np.float32) if size else np.full(n, None, object)
        write_matches(path, cols, {})
        paths.append(str(path))
    folder = root / "evaluation/text-abc123/mlp+att.L0-1"
    folder.mkdir(parents=True)
    joined = features.join(matches.select("site", "layer", "feature", "match", "top1"), on=["site", "layer", "feature"])
    joined.with_columns(r_match=pl.lit(0.5, pl.Float32), r_top1=pl.lit(0.4, pl.Float32),
                        pearson_r=pl.lit([0.9, 0.8, 0.7], pl.Array(pl.Float32, K))).write_parquet(folder / "features.parquet")
    pl.DataFrame({"site": ["mlp", "att"], "layer": [0, 0], "tokens": [8192, 8192]}).write_parquet(folder / "pairs.parquet")
    from saematch.verdict_data import tokens_per_site

    table, summary = verdict_on_data(read_matches(paths), pl.read_parquet(folder / "features.parquet"), 10, 0.5,
                                     tokens_per_site(pl.read_parquet(folder / "pairs.parquet")), "text-abc123")
    table.write_parquet(folder / "verdict.parquet")
    summary.write_csv(folder / "verdict.tsv", separator="\t", float_precision=4)
    return tmp_path / "results", folder, table, summary


def test_show_prints_the_on_data_verdict_with_its_tokens_and_the_sites_held_out_ece(tmp_path, capsys):
    import json

    from saematch.cli import main

    results, folder, table, summary = write_evaluated_run(tmp_path)
    mlp = summary.filter(pl.col("site") == "mlp").row(0, named=True)
    row = table.filter((pl.col("site") == "mlp") & (pl.col("feature") == 1)).row(0, named=True)
    assert main(["--results", str(results), "show", "toy", "0/mlp/1"]) == 0
    out = capsys.readouterr().out
    word = "persists" if row["persists"] else "dies"
    word1 = "persists" if row["top1_persists"] else "dies"
    assert (f"verdict on data: confidence {row['confidence']:.3f} ({word}, cross-fitted), top-1 "
            f"{row['top1_confidence']:.3f} ({word1}, cross-fitted) — calibrated on 8192 tokens of text-abc123; "
            f"the site's held-out ECE {mlp['match_ece_after']:.3f} (data-free {mlp['match_ece_before']:.3f}), "
            f"top-1 {mlp['top1_ece_after']:.3f} (data-free {mlp['top1_ece_before']:.3f})") in out
    assert main(["--results", str(results), "show", "toy", "0/mlp/0"]) == 0  # every 50th feature fired on 2 tokens
    assert ("verdict on data: confidence: not judged, dead on data (active 2 < min_active 10), top-1: not judged, "
            "dead on data (active 2 < min_active 10)") in capsys.readouterr().out
    assert main(["--results", str(results), "show", "toy", "0/att/1"]) == 0
    assert "verdict on data: confidence: not judged, site at chance on data (held-out AUC" in capsys.readouterr().out
    assert main(["--results", str(results), "show", "toy", "0/mlp/1", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)["on_data"][0]["verdict"]
    assert verdict["confidence"] == pytest.approx(row["confidence"]) and verdict["how"] == "cross-fitted"
    assert verdict["tokens"] == 8192 and verdict["data"] == "text-abc123"
    assert verdict["held_out_ece"] == pytest.approx(mlp["match_ece_after"], abs=1e-4)
    assert verdict["data_free_ece"] == pytest.approx(mlp["match_ece_before"], abs=1e-4)


def test_the_verdicts_evidence_columns_judge_a_site_whose_data_free_confidence_is_null():
    """Matches with the verdict's evidence (Array columns) and no data-free confidence (the
    weights could not judge them): the refit reads the evidence and judges the site on data."""
    matches, features = synthetic(n=800, sites=("res", "att"))
    rng = np.random.default_rng(1)
    conf = matches["confidence"].to_numpy().astype(np.float64)
    z = np.log(conf / (1 - conf)) / 3.0  # the law's z, back from the overconfident confidence
    evidence = np.column_stack([z + rng.normal(0, 0.3, len(z)), rng.normal(0, 1, len(z))]).astype(np.float32)
    att = (matches["site"] == "att").to_numpy()
    matches = matches.with_columns(
        pl.Series("evidence", evidence, pl.Array(pl.Float32, 2)),
        pl.Series("top1_evidence", evidence, pl.Array(pl.Float32, 2)),
        pl.when(pl.Series(att)).then(None).otherwise(pl.col("confidence")).alias("confidence"))
    table, summary = verdict_on_data(matches, features, min_active=10)
    row = summary.filter(pl.col("site") == "att").row(0, named=True)
    assert row["match_unjudged"] is None and row["match_auc"] > 0.75 and row["match_ece_after"] < 0.06
    assert np.isnan(row["match_ece_before"])  # the data-free verdict said nothing there
    assert table.filter(pl.col("site") == "att")["confidence"].null_count() == 0
