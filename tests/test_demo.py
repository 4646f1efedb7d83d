"""The demo: real Hub layout, read back by hf_hub_download; its planted matches are found."""

import hashlib

import numpy as np
import pytest

from saematch.demo import make_demo
from saematch.hub import fetch, resolve_files
from saematch.load import load_att_projection, load_sae, project_att
from saematch.match import match_pair

SITES = {s: f"demo/gemma-scope-2b-pt-{s}" for s in ("res", "mlp", "att")}


def demo(cache, n_layers=3):
    paths = {s: [[f"layer_{L}/width_1k/average_l0_{10 + L}/params.npz", f"layer_{L}/width_1k/average_l0_99/params.npz"]
                 for L in range(n_layers)] for s in SITES}
    return make_demo(cache, "demo/gemma-2-2b", SITES, paths, n_layers=n_layers, d_model=128, d_att=160,
                     n_features=256, persist=0.75, seed=0)


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    manifest, truth, _ = demo(cache)
    return cache, manifest, truth


def get(cache, repo, files):
    return {"format": "gemma-scope", **fetch(repo, files, "main", str(cache), local_files_only=True)}


@pytest.mark.parametrize("site", ["res", "mlp", "att"])
def test_planted_matches_are_recovered_on_the_demo(demo_cache, site):
    cache, manifest, truth = demo_cache
    model = resolve_files(get(cache, "demo/gemma-2-2b", {f: f for f in manifest["repos"]["demo/gemma-2-2b"]["files"]}))
    for L in (0, 1):
        saes = [load_sae(get(cache, SITES[site], {"params": f"layer_{k}/width_1k/average_l0_{10 + k}/params.npz"}))
                for k in (L, L + 1)]
        if site == "att":
            saes = [project_att(s, *load_att_projection(model, k)) for s, k in zip(saes, (L, L + 1))]
        cols, _ = match_pair(*saes, weights="dec" if site == "att" else "enc+dec+benc", device="cpu")
        planted = truth[site][L]
        keep = planted >= 0
        assert 0.6 < keep.mean() < 0.9
        assert (cols["match"][keep] == planted[keep]).mean() > 0.95


def test_the_demo_is_byte_for_byte_reproducible(tmp_path):
    (m1, *_), (m2, *_) = demo(tmp_path / "a"), demo(tmp_path / "b")
    assert m1 == m2
    f = "layer_1/width_1k/average_l0_11/params.npz"
    digest = [hashlib.sha256((tmp_path / d / "models--demo--gemma-scope-2b-pt-res/snapshots" /
                              m1["repos"][SITES["res"]]["commit"] / f).read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1]


def test_the_second_l0_variant_holds_the_same_features_at_lower_thresholds(demo_cache):
    cache, _, _ = demo_cache
    a = load_sae(get(cache, SITES["res"], {"params": "layer_1/width_1k/average_l0_11/params.npz"}))
    b = load_sae(get(cache, SITES["res"], {"params": "layer_1/width_1k/average_l0_99/params.npz"}))
    assert np.array_equal(a.W_dec.numpy(), b.W_dec.numpy())
    np.testing.assert_allclose(b.threshold.numpy(), a.threshold.numpy() * 0.5)
