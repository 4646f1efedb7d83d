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


def test_unknown_weight_set_is_rejected():
    with pytest.raises(ValueError, match="weights must be one of"):
        feature_vectors(random_sae(), "bias")
