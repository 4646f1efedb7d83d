"""The flow summary on flow files written in the real format, against counts made by hand: cases
per layer, and per planted origin the share in its expected case and with its planted source as
the top-1 predecessor."""

import math

import numpy as np
import polars as pl
import pytest

from saematch.flow import summarize
from saematch.write import write_flow

# Two layers: top-1 predecessor per module and the case of each residual feature.
LAYERS = {1: {"res": [0, 1, 2, 3, 4, 5], "mlp": [5, 4, 3, 2, 1, 0], "att": [0, 0, 1, 1, 2, 2],
              "case": ["A", "B", "C", "D", "A", "B"]},
          2: {"res": [3, 2, 1, 0], "mlp": [0, 1, 2, 3], "att": [1, 1, 1, 1], "case": ["A", "A", "C", "D"]}}
# (layer, feature, origin, source, res_source) as the demo plants them; −1: none.
ORIGINS = [(1, 0, "res", -1, 0),       # case A as expected; res 0 is its source
           (1, 1, "res+mlp", 4, 1),    # case B as expected; mlp 4 is its source
           (1, 2, "mlp", 0, -1),       # case C as expected; mlp top-1 is 3, not 0
           (1, 3, "att", 1, -1),       # case D, not C; att top-1 1 is its source
           (1, 4, "lookalike", -1, -1),  # left out
           (1, 5, "res+att", 2, 5),    # case B as expected; att 2 is its source
           (2, 0, "res", -1, 9),       # case A; res top-1 3, not 9
           (2, 1, "res", -1, 2),       # case A; res 2 is its source
           (2, 2, "none", -1, -1),     # case C, not D
           (2, 3, "mlp", 3, -1)]       # case D, not C; mlp 3 is its source


def write_layers(tmp_path):
    paths = []
    for L, cols in LAYERS.items():
        n = len(cols["case"])
        path = tmp_path / f"flow/res+mlp+att/layer={L}.parquet"
        write_flow(path, {"feature": np.arange(n, dtype=np.int32), "case": np.array(cols["case"]),
                          **{m: np.array(cols[m], np.int32) for m in ("res", "mlp", "att")}}, 1, {"layer": L})
        paths.append(str(path))
    return paths


def test_the_flow_summary_counts_each_layers_cases(tmp_path):
    table = summarize(write_layers(tmp_path))
    assert table.rows() == [(1, 6, 2, 2, 1, 1), (2, 4, 2, 0, 1, 1)]
    assert table.columns == ["layer", "features", "case_A", "case_B", "case_C", "case_D"]


def test_planted_origins_are_recovered_by_their_expected_case_and_their_planted_source(tmp_path):
    origins = pl.DataFrame(ORIGINS, schema={"layer": pl.Int32, "feature": pl.Int32, "origin": pl.String,
                                            "source": pl.Int64, "res_source": pl.Int64}, orient="row")
    got = {r["layer"]: r for r in summarize(write_layers(tmp_path), origins).to_dicts()}
    nan = math.nan
    expected = {
        1: {"planted_res": 1, "planted_res_mlp": 1, "planted_res_att": 1, "planted_mlp": 1, "planted_att": 1,
            "planted_none": 0,
            "case_recovered_res": 1.0, "case_recovered_res_mlp": 1.0, "case_recovered_res_att": 1.0,
            "case_recovered_mlp": 1.0, "case_recovered_att": 0.0, "case_recovered_none": nan,
            "source_recovered_res": 1.0, "source_recovered_mlp": 0.0, "source_recovered_att": 1.0},
        2: {"planted_res": 2, "planted_res_mlp": 0, "planted_res_att": 0, "planted_mlp": 1, "planted_att": 0,
            "planted_none": 1,
            "case_recovered_res": 1.0, "case_recovered_res_mlp": nan, "case_recovered_res_att": nan,
            "case_recovered_mlp": 0.0, "case_recovered_att": nan, "case_recovered_none": 0.0,
            "source_recovered_res": 0.5, "source_recovered_mlp": 1.0, "source_recovered_att": nan},
    }
    for L, want in expected.items():
        assert {k: got[L][k] for k in want} == pytest.approx(want, nan_ok=True), L
        assert got[L]["features"] == len(LAYERS[L]["case"])


def test_a_file_not_named_layer_L_is_refused(tmp_path):
    path = write_layers(tmp_path)[0]
    renamed = tmp_path / "flow/res+mlp+att/one.parquet"
    (tmp_path / path).rename(renamed)
    with pytest.raises(ValueError, match=r"one\.parquet: not a flow file"):
        summarize([str(renamed)])
