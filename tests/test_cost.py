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
    cost = pair_matrices(src, dst, weights=weights, device="cpu", chunk_size=7)
    np.testing.assert_allclose(cost, direct_cost(src, dst, weights), rtol=1e-4, atol=1e-5)


def test_cost_does_not_depend_on_chunk_size():
    src, dst = random_sae(F=50, seed=1), random_sae(F=40, seed=2)
    a = pair_matrices(src, dst, chunk_size=3, device="cpu")
    b = pair_matrices(src, dst, chunk_size=1000, device="cpu")
    assert a.shape == (50, 40)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", ["dec", "enc+dec+benc"])
def test_the_cost_pass_hands_over_decoder_products_whose_cosines_give_each_rows_nearest_columns(weights):
    """The verdict's neighbours come from the cost pass itself: the handed-over block is the
    decoder part of the product, normalised it gives top1 = argmax cosine, and the cost is the
    same as without the hand-over."""
    from saematch.fold import fold
    from saematch.match import feature_norms
    from saematch.verdict import finish_neighbours, neighbour_collector

    src, dst = random_sae(F=50, seed=3), random_sae(F=40, seed=4)
    src.W_dec[0] *= 100  # norms must not matter, only directions
    X, Y = pair_vectors(fold(src), fold(dst), weights, torch.device("cpu"))
    d = src.d_out
    on_block, nb = neighbour_collector(feature_norms(X[:, :d]), feature_norms(Y[:, :d]), k=3)
    blocks = []
    cost = dense_cost(X, Y, chunk_size=7, on_block=lambda rows, P: (blocks.append(rows), on_block(rows, P)), split=d)
    nb = finish_neighbours(nb, k=3)
    assert [(r.start, r.stop) for r in blocks] == [(s, min(s + 7, 50)) for s in range(0, 50, 7)]
    np.testing.assert_allclose(cost, dense_cost(X, Y), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cost, direct_cost(fold(src), fold(dst), weights), rtol=1e-4, atol=1e-4)
    u = torch.nn.functional.normalize(src.W_dec, dim=1)
    v = torch.nn.functional.normalize(dst.W_dec, dim=1)
    cos = (u @ v.T).numpy()
    assert np.array_equal(nb["top1"], cos.argmax(1)) and nb["top1"].dtype == np.int32
    np.testing.assert_array_equal(nb["row_top"], np.argsort(-cos, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(nb["top1_cosine"], cos.max(1), rtol=1e-5)
    np.testing.assert_allclose(nb["row_cos"], -np.sort(-cos, axis=1)[:, :3], rtol=1e-5, atol=1e-6)


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


def test_pair_vectors_are_the_feature_vectors_with_the_decoders_first():
    src, dst = random_sae(seed=1), random_sae(seed=2)
    X, Y = pair_vectors(src, dst, "enc+dec+benc", torch.device("cpu"))
    assert torch.equal(X, feature_vectors(src, "enc+dec+benc")) and torch.equal(Y, feature_vectors(dst, "enc+dec+benc"))
    assert torch.equal(X[:, :src.d_out], src.W_dec) and torch.equal(Y[:, :dst.d_out], dst.W_dec)


def test_unknown_weight_set_is_rejected():
    with pytest.raises(ValueError, match="weights must be one of"):
        feature_vectors(random_sae(), "bias")


def test_decoder_only_matching_accepts_encoders_of_different_input_widths():
    """weights='dec' compares decoders only: encoders reading other spaces must not matter."""
    src = random_sae(d=16, d_out=8, seed=1)
    dst = random_sae(d=12, d_out=8, seed=2)
    X, Y = pair_vectors(src, dst, "dec", torch.device("cpu"))
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
        cost = pair_matrices(src, dst, chunk_size=7)  # 32 rows: chunks end at 7, 14, 21, 28, 32
    assert [r.getMessage() for r in caplog.records] == [
        "cost rows 7/32 (5.5 s)", "cost rows 21/32 (17.0 s)", "cost rows 32/32 (18.0 s)"]
    np.testing.assert_allclose(cost, direct_cost(src, dst, "enc+dec+benc"), rtol=1e-4, atol=1e-5)
