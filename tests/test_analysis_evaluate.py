"""The evaluation's per-partner correlations and ΔL against direct computations: numpy Pearson r
on all tokens at once, and the model's loss with the replacement patched in by a forward hook
written here (not saematch.lm's hooks), on each document alone."""

import numpy as np
import pytest
import torch

from saematch.evaluate import add_layer, add_pair, finish_pair, layer_stats, pair_stats


def pearson_by_hand(a, b):
    """Population Pearson r of every column of a with every column of b, float64 (0 where constant)."""
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(np.sqrt((a**2).sum(0)), np.sqrt((b**2).sum(0)))
    return np.nan_to_num(r, nan=0.0)


@pytest.mark.parametrize("dense", [True, False])
def test_each_partners_r_is_from_its_own_co_activation_sums(dense):
    """r_match and r_top1 of partners that differ for every feature: each the direct Pearson r
    of the feature with its own partner over all tokens, NaN where there is none."""
    g = torch.Generator().manual_seed(4)
    fa = torch.relu(torch.randn(600, 12, generator=g) - 0.3)
    fb = torch.relu(0.6 * fa[:, :10] + torch.randn(600, 10, generator=g) - 0.3)  # correlated with fa's first 10
    match = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1])
    top1 = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 3])  # never the assigned partner
    st = pair_stats(match, top1, n_dst=10 if dense else None)
    a, b = layer_stats(12, 2, "cpu"), layer_stats(10, 2, "cpu")
    for part_a, part_b in zip(fa.split(128), fb.split(128)):
        add_layer(a, part_a, torch.zeros(len(part_a), 2))
        add_layer(b, part_b, torch.zeros(len(part_b), 2))
        add_pair(st, part_a, part_b)
    cols = finish_pair(st, a, b, k=2)
    r = pearson_by_hand(fa.double().numpy(), fb.double().numpy())
    np.testing.assert_allclose(cols["r_top1"], r[np.arange(12), top1.numpy()], atol=1e-9)
    expect_match = np.where(match.numpy() >= 0, r[np.arange(12), match.clamp(min=0).numpy()], np.nan)
    np.testing.assert_allclose(cols["r_match"], expect_match, atol=1e-9)
    co = lambda p: ((fa.numpy() > 0) & (fb.numpy()[:, p] > 0)).sum(0)  # noqa: E731
    assert (cols["coactive_top1"] == co(top1.numpy())).all()


# --- ΔL: the replacement only at the valid tokens -----------------------------------------------

def small_gemma2():
    """A randomly initialised 2-layer Gemma-2 (vocabulary 40: pad 0, eos 1, bos 2) in float32."""
    from transformers import Gemma2ForCausalLM

    from saematch.tiny import gemma2_config

    torch.manual_seed(0)
    return Gemma2ForCausalLM(gemma2_config(40, 2, 32, 2)).eval()


def random_sae(seed, d=32, F=48):
    from saematch.sae import Sae

    g = torch.Generator().manual_seed(seed)
    return Sae(W_enc=torch.randn(d, F, generator=g) / d**0.5, b_enc=torch.zeros(F),
               W_dec=torch.randn(F, d, generator=g) / F**0.5, b_dec=0.1 * torch.randn(d, generator=g),
               threshold=torch.full((F,), 0.05))


def documents():
    """Six documents of 5–11 tokens, BOS first."""
    g = torch.Generator().manual_seed(1)
    return [torch.cat([torch.tensor([2]), torch.randint(3, 40, (int(n) - 1,), generator=g)])
            for n in torch.randint(5, 12, (6,), generator=g)]


def loss_by_hand(model, doc, layer=None, new_state=None):
    """Summed next-token cross-entropy of one document alone (no padding) over its targets at
    positions ≥ 1 (the valid tokens), with decoder layer ``layer``'s output replaced at positions
    ≥ 1 by new_state(its output, layer 0's output); position 0 (BOS) kept."""
    kept = {}
    def keep0(mod, args, out):
        kept[0] = out[0] if isinstance(out, tuple) else out
    def swap(mod, args, out):
        x = out[0] if isinstance(out, tuple) else out
        x = torch.cat([x[:, :1], new_state(x, kept[0])[:, 1:]], 1)  # position 0 (BOS) untouched
        return (x, *out[1:]) if isinstance(out, tuple) else x
    layers = model.model.layers
    handles = [layers[0].register_forward_hook(keep0)]
    if layer is not None:
        handles.append(layers[layer].register_forward_hook(swap))
    try:
        with torch.no_grad():
            logits = model(input_ids=doc[None], attention_mask=torch.ones(1, len(doc), dtype=torch.long)).logits[0]
    finally:
        for h in handles:
            h.remove()
    ce = torch.nn.functional.cross_entropy(logits[:-1].double(), doc[1:], reduction="sum")
    return float(ce), len(doc) - 1


def test_delta_loss_patches_the_replacement_only_at_valid_tokens_never_bos_position_0_or_padding():
    """ΔL of layer_drop (x_0 in place of x_1) and encode_decode_current (SAE_0(x_0) in place of
    x_0) on a right-padded batch, against each document alone with the replacement at positions ≥ 1."""
    from saematch.evaluate import evaluate_sites

    model, docs = small_gemma2(), documents()
    saes = {0: random_sae(0), 1: random_sae(1)}
    width = max(map(len, docs))
    ids = torch.stack([torch.cat([d, torch.zeros(width - len(d), dtype=torch.long)]) for d in docs])
    mask = torch.stack([(torch.arange(width) < len(d)).long() for d in docs])
    valid = mask.bool() & (ids != 2)
    valid[:, 0] = False
    batches = lambda: iter([(ids[:3], mask[:3], valid[:3]), (ids[3:], mask[3:], valid[3:])])  # noqa: E731
    pairs = {0: {"match": np.arange(48), "top1": np.arange(48)}}
    rows, _ = evaluate_sites(model, "gemma-scope", batches, {"res": (saes, pairs)}, loss_tokens=10**6, top_k=2)
    row = rows[0]

    def jumprelu_reconstruction(x):
        sae = saes[0]
        pre = x @ sae.W_enc + sae.b_enc
        return (pre * (pre > sae.threshold)) @ sae.W_dec + sae.b_dec

    clean = [loss_by_hand(model, d) for d in docs]
    drop = [loss_by_hand(model, d, 1, lambda x, x0: x0) for d in docs]
    current = [loss_by_hand(model, d, 0, lambda x, x0: jumprelu_reconstruction(x)) for d in docs]
    n = sum(c for _, c in clean)
    assert row["loss_tokens"] == n == int(valid[:, 1:].sum())
    assert row["loss_clean"] == pytest.approx(sum(ce for ce, _ in clean) / n, rel=1e-5)
    for method, patched in (("layer_drop", drop), ("encode_decode_current", current)):
        by_hand = (sum(ce for ce, _ in patched) - sum(ce for ce, _ in clean)) / n
        assert abs(by_hand) > 1e-3, method  # the replacement matters on this model
        assert row[f"dl_{method}"] == pytest.approx(by_hand, rel=1e-4, abs=1e-6), method


def test_the_folded_permutation_rescales_each_code_by_its_partners_threshold_over_its_own():
    """methods.md §1.5: permute_folded decodes f_i·θ'_π(i)/θ_i at π(i); permute decodes f_i there;
    unmatched features (π = −1) are dropped. Oracle: explicit loops over tokens and features."""
    from saematch.evaluate import replacement
    from saematch.sae import Sae

    g = torch.Generator().manual_seed(7)
    d, F = 6, 5
    make = lambda: Sae(W_enc=torch.randn(d, F, generator=g), b_enc=0.1 * torch.randn(F, generator=g),  # noqa: E731
                       W_dec=torch.randn(F, d, generator=g), b_dec=torch.randn(d, generator=g),
                       threshold=0.05 + torch.rand(F, generator=g))
    a, b = make(), make()
    match = torch.tensor([3, 0, -1, 4, 1])
    x = 2 * torch.randn(4, d, generator=g)
    pre = (x @ a.W_enc + a.b_enc).numpy()
    for method, folded in (("permute", False), ("permute_folded", True)):
        want = np.tile(b.b_dec.numpy().astype(np.float64), (4, 1))
        for n in range(4):
            for i in range(F):
                j = int(match[i])
                if j < 0 or pre[n, i] <= float(a.threshold[i]):
                    continue
                code = pre[n, i] * (float(b.threshold[j]) / float(a.threshold[i]) if folded else 1.0)
                want[n] += code * b.W_dec[j].numpy()
        got = replacement(method, a, b, match, x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_unknown_replacement_method_is_refused_naming_the_known_ones():
    from saematch.evaluate import METHODS, replacement

    sae = random_sae(1)
    with pytest.raises(ValueError) as err:
        replacement("permuted", sae, sae, torch.arange(48), torch.zeros(2, 32))
    assert str(err.value) == "unknown method 'permuted'; known: " + ", ".join(METHODS)
    assert "permute_folded, permute, layer_drop" in str(err.value)


def test_only_pairs_that_fired_together_are_pearson_candidates():
    """Σxy = 0: the two never fired on the same token (JumpReLU codes are ≥ 0), so no partner, even
    where the formula gives a finite (negative) r."""
    from saematch.evaluate import dense_pearson_top

    S = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    a = (torch.tensor([0.5, 0.4], dtype=torch.float64), torch.tensor([1.0, 1.2], dtype=torch.float64))
    b = (torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64), torch.tensor([0.9, 0.9, 0.9], dtype=torch.float64))
    top, val = dense_pearson_top(S, 10, a, b, k=3)
    assert top.tolist() == [[0, -1, -1], [2, 1, -1]]  # larger Σxy at equal moments: larger r
    assert np.isfinite(val[0, 0]) and np.isnan(val[0, 1:]).all() and np.isnan(val[1, 2])


def test_the_calibration_bins_count_features_and_average_confidence_and_correlation_by_hand():
    from saematch.evaluate import calibration

    got = calibration(np.array([0.05, 0.15, 0.12, 0.95, 1.0]), np.array([True, False, True, True, False]))
    assert got == [{"bin": "0.0–0.1", "features": 1, "mean_confidence": pytest.approx(0.05), "share_correlated": 1.0},
                   {"bin": "0.1–0.2", "features": 2, "mean_confidence": pytest.approx(0.135), "share_correlated": 0.5},
                   {"bin": "0.9–1.0", "features": 2, "mean_confidence": pytest.approx(0.975), "share_correlated": 0.5}]


def test_the_feature_table_marks_an_unmatched_feature_minus_1_and_keeps_the_documented_types():
    import polars as pl

    from saematch.evaluate import features_frame

    matches = pl.DataFrame({"feature": [0, 1, 2], "match": [2, None, 0], "top1": [2, 2, 1],
                            "persists": [True, False, True], "confidence": [0.9, 0.1, 0.8]})
    cols = {"active": np.array([5, 0, 3]), "coactive_match": np.array([4, 0, 1]), "r_match": np.array([0.5, np.nan, 0.2]),
            "coactive_top1": np.array([4, 0, 2]), "r_top1": np.array([0.5, 0.0, 0.3]),
            "pearson_top": np.array([[2, 1], [-1, -1], [0, 2]]), "pearson_r": np.array([[0.5, 0.1], [np.nan, np.nan], [0.2, 0.1]])}
    df = features_frame("res", 4, cols, matches)
    assert df["match"].to_list() == [2, -1, 0] and df["top1"].to_list() == [2, 2, 1]
    assert df["layer"].to_list() == [4, 4, 4] and df["site"].to_list() == ["res"] * 3
    assert {c: str(t) for c, t in df.schema.items() if c in ("layer", "feature", "match", "top1", "r_match", "pearson_top")} == {
        "layer": "Int32", "feature": "Int32", "match": "Int32", "top1": "Int32", "r_match": "Float32",
        "pearson_top": "Array(Int32, shape=(2,))"}
