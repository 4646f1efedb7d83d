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
            "source_recovered_res": 1.0, "source_recovered_mlp": 0.0, "source_recovered_att": 1.0,
            "source_recovered_res_mlp": 1.0, "source_recovered_res_att": 1.0},  # mlp 4, att 2
        2: {"planted_res": 2, "planted_res_mlp": 0, "planted_res_att": 0, "planted_mlp": 1, "planted_att": 0,
            "planted_none": 1,
            "case_recovered_res": 1.0, "case_recovered_res_mlp": nan, "case_recovered_res_att": nan,
            "case_recovered_mlp": 0.0, "case_recovered_att": nan, "case_recovered_none": 0.0,
            "source_recovered_res": 0.5, "source_recovered_mlp": 1.0, "source_recovered_att": nan,
            "source_recovered_res_mlp": nan, "source_recovered_res_att": nan},
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


# --- one layer's flow columns and stats (saematch.flow.flow_layer) -------------------------------

def test_a_score_exactly_at_the_cut_is_high():
    from saematch.flow import cases

    s = {"s_res": np.array([0.5, 0.25, 0.75], np.float32), "s_mlp": np.array([0.0, 0.25, 0.0], np.float32),
         "s_att": None}
    assert cases(s, {"res": 0.5, "mlp": 0.25, "att": None}).tolist() == ["A", "C", "A"]


def test_the_recorded_stats_are_the_cut_used_and_each_cases_share():
    import torch

    from saematch.flow import flow_layer

    rng = np.random.default_rng(3)
    W = torch.tensor(rng.standard_normal((40, 16)), dtype=torch.float32)
    prev = torch.tensor(rng.standard_normal((30, 16)), dtype=torch.float32)
    mlp = torch.tensor(rng.standard_normal((25, 16)), dtype=torch.float32)
    cols, stats = flow_layer(W, {"res": prev, "mlp": mlp, "att": None}, k=3, high={"res": "q0.5", "mlp": 0.3, "att": 0.1})
    # the median of s_res, by hand; the absolute cut as given; no att module, no cut
    assert stats["cut"]["res"] == pytest.approx(float(np.median(cols["s_res"])), abs=1e-7)
    assert stats["cut"]["mlp"] == 0.3 and stats["cut"]["att"] is None
    case = np.asarray(cols["case"])
    assert set(stats["share"]) == set("ABCD")
    for c in "ABCD":
        assert stats["share"][c] == pytest.approx(sum(x == c for x in case) / 40)
    assert stats["share"]["A"] + stats["share"]["B"] > 0 and stats["modules"] == ["res", "mlp"]
    assert cols["feature"].tolist() == list(range(40)) and "res_confidence" not in cols  # no encoders: no verdict


def _pair():
    from verdict_pairs import synthetic_pair

    src, dst, planted = synthetic_pair(F=300, d=64, persist=0.5, seed=11)
    return src, dst, planted


def test_the_backward_verdict_is_the_forward_verdict_with_the_layers_swapped_and_no_assignment():
    """Layer L's features are the rows, L−1's the columns, no assignment (match −1 everywhere)."""
    from saematch.flow import flow_layer
    from saematch.verdict import directions, verdict

    src, dst, _ = _pair()
    cols, stats = flow_layer(dst.W_dec, {"res": src.W_dec, "mlp": None, "att": None},
                             encoders={"target": dst.W_enc, "res": src.W_enc})
    U, E = directions(dst.W_dec, dst.W_enc)
    V, W = directions(src.W_dec, src.W_enc)
    expected, vstats = verdict(U, E, V, W, np.full(300, -1))
    np.testing.assert_array_equal(cols["res_confidence"], expected["top1_confidence"])
    assert list(cols["res_unjudged"]) == list(expected["unjudged"])
    assert stats["res_verdict"] == {k: vstats[k] for k in ("pi0_top1", "d_eff", "encoders")}
    # an assignment would change it: every row matched to column 1 (agree, mutual, margins)
    assigned, _ = verdict(U, E, V, W, np.full(300, 1))
    assert not np.array_equal(assigned["top1_confidence"], expected["top1_confidence"])


def test_without_one_of_the_two_encoders_the_backward_verdict_is_decoder_only():
    from saematch.flow import predecessor_verdict

    src, dst, _ = _pair()
    none, _ = predecessor_verdict(dst.W_dec, None, src.W_dec, None)
    for W_enc, W_enc_prev in ((dst.W_enc, None), (None, src.W_enc)):
        one, stats = predecessor_verdict(dst.W_dec, W_enc, src.W_dec, W_enc_prev)
        np.testing.assert_array_equal(one["res_confidence"], none["res_confidence"])
        assert list(one["res_unjudged"]) == list(none["res_unjudged"])
    both, _ = predecessor_verdict(dst.W_dec, dst.W_enc, src.W_dec, src.W_enc)
    assert not np.array_equal(both["res_confidence"], none["res_confidence"])  # the encoders do count


def test_encoders_without_a_residual_predecessor_give_no_backward_verdict():
    import torch

    from saematch.flow import flow_layer

    W = torch.tensor(np.random.default_rng(4).standard_normal((12, 8)), dtype=torch.float32)
    cols, stats = flow_layer(W, {"res": None, "mlp": W * 2, "att": None}, k=2, encoders={"target": W.T, "res": None})
    assert "res_confidence" not in cols and "res_verdict" not in stats


def test_decoders_of_another_width_are_refused_naming_the_module_and_both_widths():
    import torch

    from saematch.flow import predecessor_scores

    with pytest.raises(ValueError, match=r"^flow: mlp decoders are 8-d but the residual SAE's 16-d$"):
        predecessor_scores(torch.ones(5, 16), {"res": torch.ones(4, 16), "mlp": torch.ones(3, 8), "att": None})


def test_a_quantile_cut_may_be_written_without_its_leading_zero():
    from saematch.flow import thresholds

    s = {"s_res": np.linspace(0, 1, 101), "s_mlp": None, "s_att": None}
    assert thresholds(s, {"res": "q.25", "mlp": 0.1, "att": 0.1})["res"] == pytest.approx(0.25)


def test_the_flow_summary_reads_parquet_without_importing_torch():
    """flow_summary jobs import saematch.flow for its summary only (torch is 2 s of such a job)."""
    import subprocess
    import sys

    code = "import sys\nfrom saematch.flow import summarize\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
