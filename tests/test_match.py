import dataclasses

import numpy as np
import torch

from saematch.fold import fold
from saematch.match import match_pair
from saematch.sae import Sae
from conftest import random_sae


def rescaled_permuted_copy(sae: Sae, perm: np.ndarray, spread: float, drift: float, seed: int):
    """dst feature perm[i] = src feature i under JumpReLU's own scale symmetry plus drift.

    For any c_i > 0, (W_enc[:, i]·c_i, b_enc[i]·c_i, θ_i·c_i, W_dec[i]/c_i) is the same SAE: the
    pre-activation and the threshold scale together, the decoder undoes it. c_i is log-normal
    with σ = ``spread``; ``drift`` adds relative noise to every tensor. Returns (dst, sae_equal)
    where sae_equal is dst without drift (for the symmetry check).
    """
    g = torch.Generator().manual_seed(seed)
    inv = torch.from_numpy(np.argsort(perm))
    c = torch.exp(spread * torch.randn(sae.n_features, generator=g))
    noisy = lambda t: t + drift * t.std() * torch.randn(t.shape, generator=g)  # noqa: E731

    def rescaled(W_enc, b_enc, W_dec):
        return Sae(W_enc=(W_enc * c)[:, inv], b_enc=(b_enc * c)[inv], W_dec=(W_dec / c[:, None])[inv],
                   b_dec=sae.b_dec, threshold=(sae.threshold * c)[inv])

    return rescaled(noisy(sae.W_enc), noisy(sae.b_enc), noisy(sae.W_dec)), rescaled(sae.W_enc, sae.b_enc, sae.W_dec)


def test_the_planted_change_is_the_jumprelu_symmetry():
    """Oracle for the next test's construction: the rescaled copy computes the same function."""
    src = random_sae(d=16, F=64, seed=0)
    perm = np.random.default_rng(0).permutation(64)
    _, same = rescaled_permuted_copy(src, perm, spread=1.0, drift=0.0, seed=1)
    x = torch.randn(500, 16) * 3
    pre = x @ src.W_enc + src.b_enc
    f = pre * (pre > src.threshold)
    assert (f > 0).float().mean() > 0.1
    pre2 = x @ same.W_enc + same.b_enc
    f2 = pre2 * (pre2 > same.threshold)
    torch.testing.assert_close(f2 @ same.W_dec + same.b_dec, f @ src.W_dec + src.b_dec, rtol=1e-4, atol=1e-4)


def test_folding_recovers_matches_that_the_scale_symmetry_hides_from_raw_parameters():
    """Under the symmetry plus drift, unfolded matching fails and folded matching recovers.

    Crowded features (400 in 8 dimensions, like SAEs' many features in superposition) compete
    for partners; a per-feature scale c = e^(1.5·N(0,1)) then decides many raw matches, while
    the folded parameters do not see it (measured: folded 100%, raw 76% recovered).
    """
    src = random_sae(d=8, F=400, seed=0)
    perm = np.random.default_rng(0).permutation(400)
    dst, _ = rescaled_permuted_copy(src, perm, spread=1.5, drift=0.3, seed=1)
    folded, _ = match_pair(src, dst, fold=True, device="cpu", chunk_size=64)
    raw, _ = match_pair(src, dst, fold=False, device="cpu", chunk_size=64)
    recovered = (folded["match"] == perm).mean()
    recovered_raw = (raw["match"] == perm).mean()
    assert recovered >= 0.99, recovered
    assert recovered_raw <= 0.9, recovered_raw


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
