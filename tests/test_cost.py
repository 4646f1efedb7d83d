import dataclasses

import numpy as np
import pytest
import torch

from saematch.cost import dense_cost, feature_vectors, pair_vectors
from saematch.sae import SaeError
from conftest import random_sae


def pair_matrices(src, dst, weights="enc+dec+benc", device="cpu", chunk_size=2048):
    return dense_cost(*pair_vectors(src, dst, weights, torch.device(device)), chunk_size=chunk_size)


def direct_cost(src, dst, weights):
    terms = [(src.W_dec, dst.W_dec)]
    if weights != "dec":
        terms.append((src.W_enc.T, dst.W_enc.T))
    if weights == "enc+dec+benc":
        terms.append((src.b_enc[:, None], dst.b_enc[:, None]))
    return sum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) for a, b in terms).numpy()


@pytest.mark.parametrize("weights", ["dec", "enc+dec", "enc+dec+benc"])
def test_cost_is_the_summed_squared_parameter_difference(weights):
    src, dst = random_sae(seed=1), random_sae(seed=2)
    cost, _, _ = pair_matrices(src, dst, weights=weights, device="cpu", chunk_size=7)
    np.testing.assert_allclose(cost, direct_cost(src, dst, weights), rtol=1e-4, atol=1e-5)


def test_cost_does_not_depend_on_chunk_size():
    src, dst = random_sae(F=50, seed=1), random_sae(F=40, seed=2)
    a = pair_matrices(src, dst, chunk_size=3, device="cpu")
    b = pair_matrices(src, dst, chunk_size=1000, device="cpu")
    assert a[0].shape == (50, 40)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert np.array_equal(a[1], b[1])


def test_top1_is_the_argmax_of_decoder_cosine():
    src, dst = random_sae(seed=3), random_sae(seed=4)
    src.W_dec[0] *= 100  # norms must not matter, only directions
    _, top1, top1_cos = pair_matrices(src, dst, device="cpu")
    u = torch.nn.functional.normalize(src.W_dec, dim=1)
    v = torch.nn.functional.normalize(dst.W_dec, dim=1)
    cos = (u @ v.T).numpy()
    assert np.array_equal(top1, cos.argmax(1)) and top1.dtype == np.int32
    np.testing.assert_allclose(top1_cos, cos.max(1), rtol=1e-5)


def test_cost_rejects_a_pair_with_different_d_model():
    src = random_sae(d=16, seed=1)
    dst = dataclasses.replace(random_sae(d=12, seed=2), source={"where": "layer_4/params.npz"})
    with pytest.raises(SaeError, match=r"d_model=16.*layer_4/params.npz.*d_model=12"):
        pair_matrices(src, dst, device="cpu")


def test_encoder_weights_need_an_encoder():
    sae = dataclasses.replace(random_sae(), W_enc=None, b_enc=None, source={"where": "att.npz"})
    assert feature_vectors(sae, "dec").shape == (32, 16)
    with pytest.raises(SaeError, match="att.npz.*needs an encoder"):
        feature_vectors(sae, "enc+dec")


def test_the_encoder_error_names_the_file_and_the_fix():
    sae = dataclasses.replace(random_sae(), W_enc=None, b_enc=None, source={"where": "att.npz"})
    with pytest.raises(SaeError, match=r"^att.npz: weights='enc\+dec' needs an encoder in the same space as "
                                       r"the other layer's; this SAE has none \(use 'dec'\)$"):
        feature_vectors(sae, "enc+dec")
    with pytest.raises(SaeError, match=r"^SAE: weights="):
        feature_vectors(dataclasses.replace(sae, source={}), "enc+dec+benc")


def test_auto_picks_cuda_only_where_there_is_one():
    from saematch.cost import pick_device
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device() == torch.device(expected) == pick_device("auto")
    assert pick_device("cpu") == torch.device("cpu")


def test_a_pair_of_different_widths_names_both_files():
    from saematch.cost import check_pair
    src = dataclasses.replace(random_sae(d=16), source={"where": "L3.npz"})
    dst = dataclasses.replace(random_sae(d=12), source={"where": "L4.npz"})
    with pytest.raises(SaeError, match=r"^L3.npz decodes to d_model=16 but L4.npz to d_model=12: a pair must share "
                                       r"the model width$"):
        check_pair(src, dst, "dec")
    with pytest.raises(SaeError, match=r"^layer L decodes to d_model=16 but layer L\+1 to d_model=12"):
        check_pair(dataclasses.replace(src, source={}), dataclasses.replace(dst, source={}), "dec")


def test_encoders_of_different_input_widths_are_refused_unless_only_decoders_are_matched():
    from saematch.cost import check_pair
    src = dataclasses.replace(random_sae(d=16, d_out=8), source={"where": "a.npz"})
    dst = dataclasses.replace(random_sae(d=12, d_out=8), source={"where": "b.npz"})
    with pytest.raises(SaeError, match=r"^a.npz encodes 16-d input but b.npz 12-d$"):
        check_pair(src, dst, "enc+dec")
    check_pair(src, dst, "dec")  # decoders share d_model: fine
    check_pair(dataclasses.replace(src, W_enc=None, b_enc=None), dst, "enc+dec")  # nothing to compare here
    check_pair(src, dataclasses.replace(dst, W_enc=None, b_enc=None), "enc+dec")


def test_without_decoders_to_compare_there_is_no_top1():
    src, dst = random_sae(seed=1), random_sae(seed=2)
    X, Y, _, _ = pair_vectors(src, dst, "dec", torch.device("cpu"))
    cost, top1, top1_cos = dense_cost(X, Y)
    assert top1 is None and top1_cos is None and cost.shape == (32, 32)
    _, top1, top1_cos = dense_cost(*pair_vectors(src, dst, "dec", torch.device("cpu")))
    assert top1.dtype == np.int32 and top1_cos.dtype == np.float32


def test_pair_vectors_are_the_feature_vectors_and_unit_decoders():
    src, dst = random_sae(seed=1), random_sae(seed=2)
    X, Y, U, V = pair_vectors(src, dst, "enc+dec+benc", torch.device("cpu"))
    assert torch.equal(X, feature_vectors(src, "enc+dec+benc")) and torch.equal(Y, feature_vectors(dst, "enc+dec+benc"))
    torch.testing.assert_close(U.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(U * src.W_dec.norm(dim=1, keepdim=True), src.W_dec)
    torch.testing.assert_close(V * dst.W_dec.norm(dim=1, keepdim=True), dst.W_dec)


def test_unknown_weight_set_is_rejected():
    with pytest.raises(ValueError, match="weights must be one of"):
        feature_vectors(random_sae(), "bias")


def test_decoder_only_matching_accepts_encoders_of_different_input_widths():
    """weights='dec' compares decoders only: encoders reading other spaces must not matter."""
    src = random_sae(d=16, d_out=8, seed=1)
    dst = random_sae(d=12, d_out=8, seed=2)
    X, Y, _, _ = pair_vectors(src, dst, "dec", torch.device("cpu"))
    assert X.shape == (32, 8) and Y.shape == (32, 8)
    with pytest.raises(SaeError, match="encodes 16-d input"):
        pair_vectors(src, dst, "enc+dec", torch.device("cpu"))


def test_a_long_cost_pass_logs_progress_every_5_s_and_still_completes(monkeypatch, caplog):
    """A fake clock read once at the start and once per chunk: a line when more than 5 s have
    passed since the last one (5.5 s: yes; exactly 5 s more: no; 11.5 s more: yes) and at the end."""
    import logging

    import saematch.cost

    src, dst = random_sae(seed=1), random_sae(seed=2)
    clock = iter([100.0, 105.5, 110.5, 117.0, 117.5, 118.0])
    monkeypatch.setattr(saematch.cost.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="saematch.cost"):
        cost, _, _ = pair_matrices(src, dst, chunk_size=7)  # 32 rows: chunks end at 7, 14, 21, 28, 32
    assert [r.getMessage() for r in caplog.records] == [
        "cost rows 7/32 (5.5 s)", "cost rows 21/32 (17.0 s)", "cost rows 32/32 (18.0 s)"]
    np.testing.assert_allclose(cost, direct_cost(src, dst, "enc+dec+benc"), rtol=1e-4, atol=1e-5)
