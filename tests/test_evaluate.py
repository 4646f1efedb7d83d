"""The evaluation on activations (saematch.lm, saematch.evaluate) against direct computations.

The oracle below reads the residual stream from transformers' own ``output_hidden_states`` (not
from saematch.lm's hooks), encodes with numpy, and computes every metric on all tokens at once
in float64; saematch streams the same text in small batches with its accumulators.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from saematch import hub, lm
from saematch.demo import write_hub_repo
from saematch.errors import SaeError
from saematch.evaluate import (METHODS, add_layer, add_pair, agreement, calibration, evaluate_sites, finish_pair,
                               layer_stats, pair_stats, summarize_evaluation, token_loss, _merge)
from tiny_model import F, SITES, build_tiny

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model and SAEs as the pipeline writes them, read back through the Hub cache."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))


# --- hooks and tokens -------------------------------------------------------------------------

def _batch(tiny, n_docs=4, context=64):
    return next(lm.token_batches(tiny["docs"][:n_docs], tiny["tokenizer"], 10**9, context, n_docs))


def test_hooks_read_what_the_model_computes(tiny):
    ids, mask, valid = _batch(tiny)
    errors = lm.check_hooks(tiny["model"], "gemma-scope", ids, mask, valid)
    assert errors["resid_post"] < 1e-6 and errors["update"] < 1e-5


def test_in_bfloat16_the_hooks_pass_and_a_wrong_one_still_fails(tiny, monkeypatch):
    import copy

    model = copy.deepcopy(tiny["model"]).to(torch.bfloat16)
    errors = lm.check_hooks(model, "gemma-scope", *_batch(tiny))
    assert errors["update"] < 5e-3  # the model's own bfloat16 rounding
    monkeypatch.setitem(lm.HOOKS["gemma-scope"], "mlp", ("mlp", "output"))
    with pytest.raises(SaeError, match="hook check failed: update"):
        lm.check_hooks(model, "gemma-scope", *_batch(tiny))


@pytest.mark.parametrize("site, wrong", [("mlp", ("mlp", "output")),  # before the post-MLP norm
                                          ("att", ("self_attn.o_proj", "output")),  # after W_O, not z
                                          ("res", ("input_layernorm", "output"))])
def test_a_wrong_hook_point_fails_the_check(tiny, monkeypatch, site, wrong):
    monkeypatch.setitem(lm.HOOKS["gemma-scope"], site, wrong)
    with pytest.raises(SaeError, match="hook check failed"):
        lm.check_hooks(tiny["model"], "gemma-scope", *_batch(tiny))


def test_llama_hooks_read_resid_post_mlp_out_and_attn_out():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(3, 50, (2, 12))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, 0] = False
    errors = lm.check_hooks(model, "llama-scope", ids, torch.ones_like(ids), valid)
    assert max(errors.values()) < 1e-5
    with pytest.raises(SaeError, match="has no module 'post_feedforward_layernorm'.*do not fit"):
        lm.check_hooks(model, "gemma-scope", ids, torch.ones_like(ids), valid)  # Gemma's points on Llama


def test_token_batches_skip_bos_position_zero_and_padding_and_stop_at_n_tokens(tiny):
    tok = tiny["tokenizer"]
    batches = list(lm.token_batches(tiny["docs"][:40], tok, 777, 32, 8))
    assert sum(int(v.sum()) for _, _, v in batches) == 777
    for ids, mask, valid in batches:
        assert not valid[:, 0].any() and not valid[ids == tok.bos_token_id].any() and not valid[mask == 0].any()
        assert ids.shape[1] <= 32
    ids, mask, valid = batches[0]
    assert (valid == ((mask == 1) & (ids != tok.bos_token_id) & (torch.arange(ids.shape[1]) > 0))).all()


def test_position_zero_is_never_read_even_without_a_bos_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<pad>": 0, "a": 1, "b": 2, "<unk>": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>")
    (ids, mask, valid), = lm.token_batches(["a b a b", "b a"], tok, 100, 8, 2)
    assert tok.bos_token_id is None and ids[0, 0] == 1
    assert valid.tolist() == [[False, True, True, True], [False, True, False, False]]


def test_the_text_sample_is_read_from_a_hub_dataset_through_the_real_download(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["one doc", "", "two doc"], "meta": [1, 2, 3]}), buf)
    write_hub_repo(tmp_path, "org/texts", {"data/train-0.parquet": buf.getvalue()}, repo_type="dataset")
    pointer = hub.fetch("org/texts", {"data": "data/train-0.parquet"}, cache_dir=tmp_path,
                        local_files_only=True, repo_type="dataset")
    assert pointer["repo_type"] == "dataset"
    assert lm.read_documents(hub.resolve(pointer, "data")) == ["one doc", "two doc"]
    with pytest.raises(SaeError, match="cannot read column 'body'"):
        lm.read_documents(hub.resolve(pointer, "data"), "body")


@pytest.mark.parametrize("content, message", [(None, "text sample not found"), ("\n \n", "no documents"),
                                              (b"\xff\xfe\x00bad", "not UTF-8")])
def test_a_bad_text_sample_is_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "sample.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SaeError, match=message) as err:
        lm.read_documents(str(path))
    assert str(path) in str(err.value)


def test_a_model_without_config_json_cannot_be_run():
    with pytest.raises(SaeError, match="no config.json"):
        lm.load_lm({"model.safetensors": "/x/model.safetensors"})


# --- the oracle ---------------------------------------------------------------------------------

def _np_encode(sae, x):
    pre = x @ sae.W_enc.double().numpy() + sae.b_enc.double().numpy()
    return pre * (pre > sae.threshold.double().numpy())


def _np_decode(sae, f):
    return f @ sae.W_dec.double().numpy() + sae.b_dec.double().numpy()


def _ev(x, xh):
    return 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def _corr(a, b):
    """Pearson r between every column of a and every column of b (0 where one is constant)."""
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = np.sqrt((a**2).sum(0)), np.sqrt((b**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(na, nb)
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


@pytest.fixture(scope="module", params=["dense", "sparse"])
def streamed(tiny, request):
    """saematch's evaluation of pair (0, 1) at every site, streamed in batches of 8 documents,
    with a random assignment and a random 'top-1' per site; Pearson sums dense, or sparse (a
    budget of 0 bytes)."""
    rng = np.random.default_rng(0)
    pairs = {s: {0: {"match": rng.permutation(F), "top1": rng.integers(0, F, F)}} for s in SITES}
    pairs["res"][0]["match"][:5] = -1  # five unmatched features
    sites = {s: ({L: tiny["saes"][s][L] for L in (0, 1)}, pairs[s]) for s in SITES}
    batches = lambda: lm.token_batches(tiny["docs"], tiny["tokenizer"], 3000, 96, 8)  # noqa: E731
    rows, feats = evaluate_sites(tiny["model"], "gemma-scope", batches, sites, loss_tokens=300, top_k=3,
                                 dense_max_gb=8 if request.param == "dense" else 0)
    assert {r["pearson_sums"] for r in rows} == {request.param}
    return {(r["site"], r["layer"]): r for r in rows}, feats, pairs


@pytest.fixture(scope="module")
def oracle(tiny):
    """All valid tokens' residual states of layers 0 and 1, from transformers' hidden states."""
    model, tok = tiny["model"], tiny["tokenizer"]
    xs = {0: [], 1: []}
    for start in range(0, len(tiny["docs"]), 8):
        enc = tok(tiny["docs"][start:start + 8], truncation=True, max_length=96, padding=True, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        ok = (enc["attention_mask"] == 1) & (enc["input_ids"] != tok.bos_token_id)
        ok[:, 0] = False
        for L in (0, 1):
            xs[L].append(hs[L + 1][ok].double().numpy())
    x = {L: np.concatenate(v) for L, v in xs.items()}
    return {L: v[:3000] for L, v in x.items()}


def test_ev_of_encode_decode_current_is_the_saes_own_ev(streamed, oracle, tiny):
    rows, _, _ = streamed
    sae = tiny["saes"]["res"][0]
    own = _ev(oracle[0], _np_decode(sae, _np_encode(sae, oracle[0])))
    assert rows[("res", 0)]["ev_encode_decode_current"] == pytest.approx(own, abs=1e-4)
    assert own > 0.95  # an SAE trained on these activations


def test_every_ev_matches_the_formulas_on_all_tokens_at_once(streamed, oracle, tiny):
    rows, _, pairs = streamed
    a, b = tiny["saes"]["res"][0], tiny["saes"]["res"][1]
    x0, x1 = oracle[0], oracle[1]
    match = pairs["res"][0]["match"]
    keep = match >= 0
    f0 = _np_encode(a, x0)
    moved, folded = np.zeros((len(x0), F)), np.zeros((len(x0), F))
    moved[:, match[keep]] = f0[:, keep]
    theta_a, theta_b = a.threshold.double().numpy(), b.threshold.double().numpy()
    folded[:, match[keep]] = f0[:, keep] / theta_a[keep] * theta_b[match[keep]]
    expected = {
        "permute": _ev(x1, _np_decode(b, moved)),
        "permute_folded": _ev(x1, _np_decode(b, folded)),
        "layer_drop": _ev(x1, x0),
        "encode_decode_previous": _ev(x1, _np_decode(a, f0)),
        "encode_decode_next": _ev(x1, _np_decode(b, _np_encode(b, x1))),
    }
    for method, ev in expected.items():
        assert rows[("res", 0)][f"ev_{method}"] == pytest.approx(ev, rel=1e-4, abs=1e-4), method
    assert set(expected) | {"encode_decode_current"} == set(METHODS)


def test_matching_score_and_partner_correlation_match_direct_counts(streamed, oracle, tiny):
    rows, feats, pairs = streamed
    a, b = tiny["saes"]["res"][0], tiny["saes"]["res"][1]
    f0, f1 = _np_encode(a, oracle[0]), _np_encode(b, oracle[1])
    match = pairs["res"][0]["match"]
    partner = np.where(match >= 0, f1[:, np.maximum(match, 0)], 0.0)
    both = (f0 > 0) & (partner > 0)
    assert rows[("res", 0)]["matching_score"] == pytest.approx(both.sum() / (f0 > 0).sum(), abs=1e-9)
    rate = (f1 > 0).mean(0)  # each partner's firing rate: the chance of co-firing if independent
    chance = ((f0 > 0).sum(0) * np.where(match >= 0, rate[np.maximum(match, 0)], 0)).sum() / (f0 > 0).sum()
    assert rows[("res", 0)]["matching_score_chance"] == pytest.approx(chance, abs=1e-9)
    cols = feats[("res", 0)]
    assert (cols["active"] == (f0 > 0).sum(0)).all()
    assert (cols["coactive_match"] == both.sum(0)).all()
    r = _corr(f0, f1)
    expect = np.where(match >= 0, r[np.arange(F), np.maximum(match, 0)], np.nan)
    np.testing.assert_allclose(cols["r_match"], expect, atol=1e-6)


def test_pearson_top_k_is_the_best_correlated_among_co_firing_features(streamed, oracle, tiny):
    _, feats, _ = streamed
    a, b = tiny["saes"]["res"][0], tiny["saes"]["res"][1]
    f0, f1 = _np_encode(a, oracle[0]), _np_encode(b, oracle[1])
    r = _corr(f0, f1)
    co = ((f0 > 0).astype(float).T @ (f1 > 0).astype(float)) > 0
    cols = feats[("res", 0)]
    for i in range(F):
        candidates = np.flatnonzero(co[i])
        best = candidates[np.argsort(-r[i, candidates], kind="stable")][:3]
        got = cols["pearson_top"][i][cols["pearson_top"][i] >= 0]
        assert len(got) == len(best)
        np.testing.assert_allclose(cols["pearson_r"][i][: len(got)], r[i, best], atol=1e-6)
        np.testing.assert_allclose(r[i, got], r[i, best], atol=1e-6)  # the same values (ties may swap)


def test_identical_saes_on_identical_activations_give_matching_score_1():
    g = torch.Generator().manual_seed(1)
    f = torch.relu(torch.randn(500, 40, generator=g) - 1.0)
    f[:, 7] = 0  # a dead feature
    ident = torch.arange(40)
    st, ls = pair_stats(ident, ident), layer_stats(40, 3, "cpu")
    for part in f.split(64):  # streamed, with a merge of the sparse sums half-way
        add_layer(ls, part, torch.zeros(len(part), 3))
        add_pair(st, part, part)
        if len(st["pending"]) == 4:
            _merge(st)
    cols = finish_pair(st, ls, ls, k=2)
    live = np.arange(40) != 7
    assert (cols["coactive_match"] == cols["active"]).all()
    np.testing.assert_allclose(cols["r_match"][live], 1.0, atol=1e-9)
    assert (cols["pearson_top"][live, 0] == np.arange(40)[live]).all()
    assert cols["pearson_top"][7, 0] == -1 and cols["r_match"][7] == 0.0


def test_a_replacement_by_the_state_itself_leaves_the_loss_unchanged(tiny):
    ids, mask, valid = _batch(tiny)
    clean = token_loss(tiny["model"], ids, mask, valid)
    same = token_loss(tiny["model"], ids, mask, valid, {1: lambda out, caps: out.clone()})
    assert same == clean and clean[1] == int(valid[:, 1:].sum())
    changed = token_loss(tiny["model"], ids, mask, valid, {1: lambda out, caps: torch.zeros_like(out)})
    assert changed[0] > clean[0]


def test_delta_loss_of_the_encode_decode_baselines_is_small_and_of_layer_drop_positive(streamed):
    rows, _, _ = streamed
    row = rows[("res", 0)]
    assert row["loss_tokens"] >= 300 and 0 < row["loss_clean"] < 5
    assert abs(row["dl_encode_decode_current"]) < 0.05  # an SAE with EV > 0.95
    assert row["dl_layer_drop"] > 0
    assert ("mlp", 0) in rows and "dl_permute" not in rows[("mlp", 0)]  # ΔL: the residual site only


def test_passes_keep_dense_sums_within_the_budget():
    from saematch.evaluate import plan_passes

    sizes = {("res", 0): 4, ("res", 1): 4, ("mlp", 0): 4}
    assert plan_passes(sizes, 12) == [(list(sizes), set(sizes))]
    assert plan_passes(sizes, 8) == [([("res", 0), ("res", 1)], {("res", 0), ("res", 1)}), ([("mlp", 0)], {("mlp", 0)})]
    assert plan_passes({("res", 0): 9, ("mlp", 0): 4}, 8) == [([("mlp", 0), ("res", 0)], {("mlp", 0)})]  # too big: sparse
    assert plan_passes({("res", 0): 9}, 0) == [([("res", 0)], set())]


def test_a_second_pass_gives_the_same_metrics(tiny):
    """Budget for one pair at a time: three passes over the text, the same numbers as one."""
    rng = np.random.default_rng(3)
    sites = {s: ({L: tiny["saes"][s][L] for L in (0, 1)}, {0: {"match": rng.permutation(F), "top1": np.arange(F)}})
             for s in SITES}
    batches = lambda: lm.token_batches(tiny["docs"], tiny["tokenizer"], 1000, 64, 8)  # noqa: E731
    one, f1 = evaluate_sites(tiny["model"], "gemma-scope", batches, sites, loss_tokens=100, dense_max_gb=1)
    three, f3 = evaluate_sites(tiny["model"], "gemma-scope", batches, sites, loss_tokens=100,
                               dense_max_gb=4 * F * F / 2**30)
    assert [r["site"] for r in three] == list(SITES)
    for a, b in zip(one, three):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], str):
                assert a[key] == b[key] == ("dense" if key == "pearson_sums" else a["site"]), key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True), key
    for key in f1:
        np.testing.assert_array_equal(f1[key]["pearson_top"], f3[key]["pearson_top"])


# --- agreement and calibration ------------------------------------------------------------------

def test_agreement_counts_by_hand():
    cols = {"active": np.array([50, 50, 50, 50, 2]),
            "pearson_top": np.array([[1, 0], [0, 2], [3, 1], [-1, -1], [4, 0]]),
            "r_match": np.array([0.9, 0.2, 0.7, np.nan, 0.99])}
    match = np.array([1, 2, 3, 0, 4])
    top1 = np.array([1, 0, 0, 0, 4])
    persists = np.array([True, True, False, True, True])
    got = agreement(cols, match, top1, persists, min_active=10, level=0.5)
    # evaluated: features 0, 1, 2 (3 has no partner on data, 4 is rarely active)
    assert got == {"features_evaluated": 3, "agree_match": 2 / 3, "agree_top1": 2 / 3, "agree_persists": 1 / 2,
                   "persists_correlated": 1 / 2, "dies_correlated": 1.0}


def test_calibration_bins_confidence_and_counts_correlated_partners():
    conf = np.array([0.05, 0.15, 0.95, 0.99, 1.0])
    corr = np.array([False, True, True, False, True])
    bins = {b["bin"]: b for b in calibration(conf, corr, bins=10)}
    assert set(bins) == {"0.0–0.1", "0.1–0.2", "0.9–1.0"}
    assert bins["0.9–1.0"]["features"] == 3 and bins["0.9–1.0"]["share_correlated"] == pytest.approx(2 / 3)


def test_the_summary_joins_metrics_agreement_and_calibration(streamed):
    rows, feats, pairs = streamed
    from saematch.evaluate import features_frame

    frames = []
    for s in SITES:
        m = pairs[s][0]
        matches = pl.DataFrame({"feature": np.arange(F), "match": pl.Series([int(v) if v >= 0 else None for v in m["match"]], dtype=pl.Int32),
                                "top1": m["top1"], "persists": np.arange(F) % 2 == 0,
                                "confidence": np.linspace(0, 1, F).astype(np.float32)})
        frames.append(features_frame(s, 0, feats[(s, 0)], matches))
    table, calib = summarize_evaluation(pl.DataFrame(list(rows.values())), pl.concat(frames), 10, 0.5)
    assert table.height == 3 and {"matching_score", "agree_match", "ev_permute"} <= set(table.columns)
    assert set(calib["site"]) == set(SITES) and (calib["features"] > 0).all()


def test_the_tiny_models_files_are_in_the_real_gemma_2_layout(tiny):
    cache = tiny["root"] / "cache"
    snap = next((cache / "models--t--gemma-2" / "snapshots").iterdir())
    config = json.loads((snap / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["architectures"] == ["Gemma2ForCausalLM"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in snap.iterdir()}
    assert all(v["ev"] > 0.9 for v in tiny["manifest"]["saes"].values())


# --- ΔL on exactly the first loss_tokens tokens, whatever the batch size --------------------------

def _res_rows(tiny, batch_size, n_tokens=400, loss_tokens=250):
    rng = np.random.default_rng(5)
    sites = {"res": ({L: tiny["saes"]["res"][L] for L in (0, 1)}, {0: {"match": rng.permutation(F), "top1": np.arange(F)}})}
    batches = lambda: lm.token_batches(tiny["docs"], tiny["tokenizer"], n_tokens, 96, batch_size)  # noqa: E731
    rows, _ = evaluate_sites(tiny["model"], "gemma-scope", batches, sites, loss_tokens=loss_tokens)
    return rows[0]


def test_delta_loss_is_on_exactly_the_first_loss_tokens_whatever_the_batch_size(tiny):
    """The oracle: each document alone (no padding, no batch), its next-token cross-entropy at
    the valid positions, the first 250 of them in reading order."""
    model, tok = tiny["model"], tiny["tokenizer"]
    losses = []
    for doc in tiny["docs"]:
        enc = tok([doc], truncation=True, max_length=96, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].double()
        ids = enc["input_ids"][0]
        ok = ids != tok.bos_token_id
        ok[0] = False
        ce = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
        losses += ce[ok[1:]].tolist()
        if len(losses) >= 250:
            break
    clean = float(np.mean(losses[:250]))
    rows = {b: _res_rows(tiny, b) for b in (1, 3, 8)}
    for b, row in rows.items():
        assert row["loss_tokens"] == 250, b
        assert row["loss_clean"] == pytest.approx(clean, rel=1e-5), b
        for m in METHODS:
            assert row[f"dl_{m}"] == pytest.approx(rows[1][f"dl_{m}"], rel=1e-4, abs=1e-5), (b, m)


def test_a_sample_shorter_than_asked_is_marked_in_every_row(tiny):
    sites = {"mlp": ({L: tiny["saes"]["mlp"][L] for L in (0, 1)}, {0: {"match": np.arange(F), "top1": np.arange(F)}})}
    docs = tiny["docs"][:2]
    short, _ = evaluate_sites(tiny["model"], "gemma-scope", lambda: lm.token_batches(docs, tiny["tokenizer"], 10**6, 96, 8),
                              sites, total_tokens=10**6)
    assert 0 < short[0]["tokens"] < 10**6
    assert short[0]["tokens_asked"] == 10**6 and short[0]["short_sample"] is True
    enough, _ = evaluate_sites(tiny["model"], "gemma-scope", lambda: lm.token_batches(docs, tiny["tokenizer"], 10, 96, 8),
                               sites, total_tokens=10)
    assert enough[0]["tokens"] == enough[0]["tokens_asked"] == 10 and enough[0]["short_sample"] is False


def test_the_end_of_the_run_says_when_the_sample_was_short(tmp_path):
    from saematch.report import results_message
    from saematch.write import write_frame

    folder = tmp_path / "results/model=tiny/variant=2x/evaluation/text-abcdef/res.L0-1"
    folder.mkdir(parents=True)
    rows = pl.DataFrame({"site": ["res"], "layer": [0], "tokens": [127], "tokens_asked": [8192], "short_sample": [True]})
    write_frame(str(folder / "pairs.parquet"), rows, {"model": "tiny"})
    rows.write_csv(folder / "summary.tsv", separator="\t")
    prefix = str(tmp_path / "results/model=tiny/variant=2x/summary/res.L0-1")
    message = results_message({"tiny": prefix}, {"tiny": str(folder)})
    assert (f"  SHORT SAMPLE: the text gave 127 valid tokens of the 8192 asked (evaluate.n_tokens); "
            f"{folder}/summary.tsv rests on those (column short_sample)") in message.splitlines()
    write_frame(str(folder / "pairs.parquet"), rows.with_columns(tokens=8192, short_sample=False), {"model": "tiny"})
    assert "SHORT SAMPLE" not in results_message({"tiny": prefix}, {"tiny": str(folder)})
