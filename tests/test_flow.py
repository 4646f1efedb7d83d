"""Feature Flow's predecessor scores and cases (Laptev et al., ICML 2025, §3.3)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from saematch.flow import cases, flow_layer, predecessor_scores, thresholds
from saematch.write import read_provenance, write_flow


def unit_np(A):
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def test_scores_are_each_residual_features_best_decoder_cosines_per_module_from_the_full_matrix():
    rng = np.random.default_rng(0)
    R = rng.standard_normal((60, 16)) * rng.lognormal(size=(60, 1))  # norms must not matter
    mods = {"res": rng.standard_normal((50, 16)), "mlp": rng.standard_normal((70, 16)), "att": None}
    out = predecessor_scores(torch.tensor(R, dtype=torch.float32),
                             {k: None if v is None else torch.tensor(v, dtype=torch.float32) for k, v in mods.items()},
                             k=3, chunk=7)
    for m in ("res", "mlp"):
        C = unit_np(R) @ unit_np(mods[m]).T
        np.testing.assert_array_equal(out[m], C.argmax(1))
        np.testing.assert_allclose(out[f"s_{m}"], C.max(1), rtol=1e-5)
        np.testing.assert_array_equal(out[f"{m}_top"], np.argsort(-C, axis=1, kind="stable")[:, :3])
        np.testing.assert_allclose(out[f"s_{m}_top"], -np.sort(-C, axis=1)[:, :3], rtol=1e-5, atol=1e-6)
        assert out[m].dtype == np.int32 and out[f"s_{m}"].dtype == np.float32
    assert all(out[key] is None for key in ("att", "s_att", "att_top", "s_att_top"))


def test_cases_follow_feature_flows_table():
    s = {"s_res": np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1]), "s_mlp": np.array([0.1, 0.8, 0.1, 0.8, 0.1, 0.1]),
         "s_att": np.array([0.1, 0.1, 0.8, 0.1, 0.8, 0.1])}
    cut = {"res": 0.5, "mlp": 0.25, "att": 0.25}
    assert list(cases(s, cut)) == ["A", "B", "B", "C", "C", "D"]
    assert list(cases({**s, "s_res": None}, dict(cut, res=None))) == ["D", "C", "C", "C", "C", "D"]  # layer 0


def test_a_quantile_cut_is_that_layers_quantile_and_a_number_is_absolute():
    s = {"s_res": np.linspace(0, 1, 101), "s_mlp": np.linspace(0, 0.5, 101), "s_att": None}
    cut = thresholds(s, {"res": "q0.9", "mlp": 0.3, "att": 0.25})
    assert cut["res"] == pytest.approx(0.9) and cut["mlp"] == 0.3 and cut["att"] is None


def test_a_flow_file_has_one_row_per_feature_and_null_columns_for_a_missing_module(tmp_path):
    rng = np.random.default_rng(1)
    W = torch.tensor(rng.standard_normal((20, 8)), dtype=torch.float32)
    columns, stats = flow_layer(W, {"res": None, "mlp": W * 2, "att": None}, k=2)
    write_flow(tmp_path / "layer=0.parquet", columns, 2, {"layer": 0, **stats})
    table = pq.read_table(tmp_path / "layer=0.parquet")
    assert table.num_rows == 20 and table.column("res").null_count == 20
    assert table.column("mlp").to_pylist() == list(range(20))  # each feature's own rescaled decoder
    assert table.column("s_mlp_top").type.list_size == 2 and set(table.column("case").to_pylist()) == {"C"}
    assert read_provenance(tmp_path / "layer=0.parquet")["modules"] == ["mlp"]
