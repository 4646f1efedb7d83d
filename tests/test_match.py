import dataclasses

import numpy as np
import torch

from saematch.fold import fold
from saematch.match import match_pair
from saematch.sae import Sae
from conftest import random_sae


def permuted_copy(sae: Sae, perm: np.ndarray, noise: float, seed: int) -> Sae:
    """dst feature perm[i] = src feature i, perturbed and with its threshold rescaled."""
    g = torch.Generator().manual_seed(seed)
    inv = torch.from_numpy(np.argsort(perm))
    scale = 1.3 * (1 + 0.05 * torch.rand(sae.n_features, generator=g))
    jitter = lambda t: t + noise * t.std() * torch.randn(t.shape, generator=g)  # noqa: E731
    return Sae(
        W_enc=jitter(sae.W_enc / scale)[:, inv], b_enc=jitter(sae.b_enc / scale)[inv],
        W_dec=jitter(sae.W_dec)[inv], b_dec=sae.b_dec, threshold=(sae.threshold * scale)[inv],
    )


def test_match_pair_recovers_a_planted_permutation_through_folding():
    src = random_sae(d=32, F=200, seed=0)
    perm = np.random.default_rng(0).permutation(200)
    dst = permuted_copy(src, perm, noise=0.1, seed=1)
    cols, stats = match_pair(src, dst, device="cpu", chunk_size=64)
    assert np.array_equal(cols["match"], perm)
    assert (cols["cosine"] > 0.9).all()
    assert stats["n_params"] == 2 * 32 + 1


def test_match_pair_scores_are_decoder_cosine_and_folded_parameter_mse():
    src, dst = random_sae(d=8, F=30, seed=1), random_sae(d=8, F=30, seed=2)
    cols, stats = match_pair(src, dst, device="cpu")
    m = cols["match"]
    a, b = fold(src), fold(dst)
    diff2 = ((a.W_dec - b.W_dec[m]) ** 2).sum(1) + ((a.W_enc.T - b.W_enc.T[m]) ** 2).sum(1) \
        + (a.b_enc - b.b_enc[m]) ** 2
    np.testing.assert_allclose(cols["mse"], (diff2 / 17).numpy(), rtol=1e-4, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(src.W_dec, dst.W_dec[m], dim=1)
    np.testing.assert_allclose(cols["cosine"], cos.numpy(), rtol=1e-5, atol=1e-6)
    assert abs(stats["total_cost"] - diff2.double().sum().item()) < 1e-3
    assert np.array_equal(cols["feature"], np.arange(30))


def test_match_pair_without_folding_uses_the_raw_parameters():
    src = random_sae(d=8, F=30, seed=1)
    dst = dataclasses.replace(src, threshold=src.threshold * 10)
    raw, folded = (match_pair(src, dst, fold=f, device="cpu")[0] for f in (False, True))
    assert np.array_equal(raw["match"], np.arange(30)) and (raw["mse"] < 1e-6).all()
    assert (folded["mse"] > 1e-3).any()


def test_match_pair_handles_a_wider_next_layer():
    src, dst = random_sae(F=20, seed=1), random_sae(F=35, seed=2)
    cols, _ = match_pair(src, dst, device="cpu")
    assert len(cols["match"]) == 20 and len(set(cols["match"])) == 20 and (cols["match"] < 35).all()


def test_match_pair_leaves_surplus_features_of_a_wider_layer_unmatched():
    src, dst = random_sae(F=35, seed=1), random_sae(F=20, seed=2)
    cols, _ = match_pair(src, dst, device="cpu")
    unmatched = cols["match"] == -1
    assert unmatched.sum() == 15 and np.isnan(cols["cosine"][unmatched]).all()
    assert sorted(cols["match"][~unmatched]) == list(range(20))
    assert (cols["top1"] >= 0).all()  # top-1 is defined for every feature


def test_a_threshold_that_overflows_float32_after_folding_is_refused_naming_file_layer_feature_and_theta():
    import pytest

    from saematch.sae import SaeError

    src, dst = random_sae(d=8, F=30, seed=1), random_sae(d=8, F=30, seed=2)
    src = dataclasses.replace(src, threshold=src.threshold.clone(), source={"where": "/hub/layer_3/params.npz"})
    dst = dataclasses.replace(dst, threshold=dst.threshold.clone(), source={"where": "/hub/layer_4/params.npz"})
    src.threshold[5] = 3e38  # W_dec · θ: the folded vector's squared norm overflows float32
    with pytest.raises(SaeError) as err:
        match_pair(src, dst, device="cpu")
    msg = str(err.value)
    assert "/hub/layer_3/params.npz (layer L, src) feature 5 (threshold θ = 3e+38)" in msg
    assert "overflow" in msg and "folding" in msg
    src.threshold[5] = 0.3
    dst.threshold[11] = 1e-38  # W_enc / θ overflows on the other side
    expected = r"/hub/layer_4/params.npz \(layer L\+1, dst\) feature 11 \(threshold θ = 1e-38\)"
    with pytest.raises(SaeError, match=expected):
        match_pair(src, dst, device="cpu")


def test_a_nan_or_inf_cost_entry_is_explained_by_the_feature_behind_it():
    from saematch.match import explain_nonfinite

    cost = np.ones((4, 5), np.float32)
    cost[2, 3] = np.inf
    nx, ny = np.array([1.0, 1, 2e19, 1]), np.ones(5)
    msg = explain_nonfinite(cost, nx, ny, lambda side, i: f"<{side} {i}>")
    assert "first at row 2 (<src 2>), column 3 (<dst 3>)" in msg
    assert "<src 2> has a folded parameter vector of norm 2e+19" in msg
