import dataclasses
import pytest
import torch

from saematch.fold import fold
from saematch.sae import SaeError, reconstruct
from conftest import random_sae


def test_fold_preserves_reconstruction_on_random_inputs():
    sae = random_sae(d=24, F=64, seed=1)
    x = torch.randn(500, 24) * 3
    torch.testing.assert_close(reconstruct(fold(sae), x), reconstruct(sae, x), rtol=1e-5, atol=1e-5)


def test_fold_preserves_reconstruction_with_a_scalar_threshold():
    sae = random_sae(d=24, F=64, seed=2)
    sae = type(sae)(**{**sae.__dict__, "threshold": torch.full((64,), 0.2)})
    x = torch.randn(500, 24) * 3
    torch.testing.assert_close(reconstruct(fold(sae), x), reconstruct(sae, x), rtol=1e-5, atol=1e-5)


def test_fold_sets_threshold_to_one_and_scales_each_tensor_by_theta():
    sae = random_sae(seed=3)
    folded = fold(sae)
    assert torch.equal(folded.threshold, torch.ones_like(sae.threshold))
    torch.testing.assert_close(folded.W_dec, sae.W_dec * sae.threshold[:, None])
    torch.testing.assert_close(folded.W_enc, sae.W_enc / sae.threshold)
    torch.testing.assert_close(folded.b_enc, sae.b_enc / sae.threshold)
    assert torch.equal(folded.b_dec, sae.b_dec)


def test_fold_rejects_threshold_not_positive_naming_the_file():
    sae = dataclasses.replace(random_sae(seed=4), source={"where": "layer_7/params.npz"})
    sae.threshold[5] = 0.0
    with pytest.raises(SaeError, match=r"^layer_7/params.npz: cannot fold, threshold has values ≤ 0$"):
        fold(sae)
    with pytest.raises(SaeError, match=r"^SAE: cannot fold"):  # no file known: says so plainly
        fold(dataclasses.replace(sae, source={}))


def test_folded_saes_say_so_in_their_provenance_and_keep_the_rest():
    sae = dataclasses.replace(random_sae(seed=5), source={"where": "x.npz", "repo_id": "r"})
    assert fold(sae).source == {"where": "x.npz", "repo_id": "r", "folded": True}
