"""Steering (saematch.steer, saematch.lm.edits) against direct computation on the tiny model:
the hidden states come from transformers' own ``output_hidden_states`` or from plain torch hooks
registered here, the steering vectors from the SAE's arrays in numpy."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest
import torch

from saematch.lm import edits
from saematch.sae import Sae
from saematch.steer import (distinct_n, feature_activations, generate, keyword_share, layer_strengths, loss_change,
                            perplexity, presence, steered_layers, steering_edits, word_share, words)
from tiny_model import build_tiny

FMT = "gemma-scope"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def theme(rows):
    """A feature set as saematch.steer.feature_set writes it, from (layer, site, feature) rows."""
    return pl.DataFrame({"node": [f"{L}/{s}/{i}" for L, s, i in rows], "layer": [L for L, _, _ in rows],
                         "site": [s for _, s, _ in rows], "feature": [i for _, _, i in rows],
                         "seeds": [["seed"]] * len(rows)},
                        schema={"node": pl.String, "layer": pl.Int32, "site": pl.String, "feature": pl.Int64,
                                "seeds": pl.List(pl.String)})


THEME = theme([(0, "res", 3), (0, "res", 17), (1, "res", 5), (1, "mlp", 9), (1, "att", 11), (2, "res", 40)])


def batch(tiny, n=3):
    enc = tiny["tokenizer"](tiny["docs"][:n], truncation=True, max_length=24, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def hidden(tiny, ids, mask, edit=None):
    """resid_post of every layer as the model passes it on (the input of the next decoder layer,
    or of the final norm: transformers' hidden_states are recorded before a forward hook's
    change), read by plain torch pre-hooks registered here; and the logits."""
    model = tiny["model"]
    nexts = [*model.model.layers[1:], model.model.norm]
    res = {}

    def grab(L):
        def hook(mod, args, kwargs):
            res[L] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [m.register_forward_pre_hook(grab(L), with_kwargs=True) for L, m in enumerate(nexts)]
    try:
        with torch.no_grad(), edits(model, FMT, edit or {}):
            logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()
    return [res[L] for L in range(len(nexts))], logits


def np_vector(sae: Sae, idx, fold=True):
    W = sae.W_dec.numpy().astype(np.float64)[idx]
    c = sae.threshold.numpy().astype(np.float64)[idx] if fold else np.ones(len(idx))
    return (c[:, None] * W).sum(0)


# --- schedules and layers ---------------------------------------------------------------------

def test_the_three_schedules_by_hand():
    assert layer_strengths([6, 2, 4], 8.0) == {2: 8.0, 4: 8.0, 6: 8.0}
    # linear from s at l_start to 1 at l_end: k = (1 − 8)/(6 − 2) = −1.75, b = 8 + 1.75·2 = 11.5
    assert layer_strengths([2, 4, 6], 8.0, "linear") == pytest.approx({2: 8.0, 4: 4.5, 6: 1.0})
    assert layer_strengths([3], 8.0, "linear") == {3: 8.0}
    assert layer_strengths([0, 10], 3.0, "exponential", alpha=-0.25) == pytest.approx({0: 3.0, 10: 3.0 * math.exp(-2.5)})
    assert layer_strengths([10], 2.0, "exponential") == pytest.approx({10: 2.0 * math.exp(-0.5)})
    with pytest.raises(ValueError, match="schedule 'cosine': expected one of constant, linear, exponential"):
        layer_strengths([1], 1.0, "cosine")


def test_single_steers_one_layer_and_cumulative_every_layer_of_the_set_up_to_it():
    assert steered_layers([0, 1, 2, 5], 2, cumulative=False) == [2]
    assert steered_layers([5, 0, 2, 1, 2], 2, cumulative=True) == [0, 1, 2]


# --- the interventions ------------------------------------------------------------------------

@pytest.mark.parametrize("fold", [True, False])
def test_activation_adds_s_times_the_features_decoder_rows_at_exactly_the_chosen_layer_and_every_position(tiny, fold):
    ids, mask = batch(tiny)
    h0, _ = hidden(tiny, ids, mask)
    edit = steering_edits(THEME, tiny["saes"], [1], "activate", 4.0, fold=fold)
    assert set(edit) == {("res", 1), ("mlp", 1), ("att", 1)}
    res_only = {k: v for k, v in edit.items() if k == ("res", 1)}
    h1, _ = hidden(tiny, ids, mask, res_only)
    torch.testing.assert_close(h1[0], h0[0], rtol=0, atol=0)  # layer 0: untouched, bit for bit
    want = h0[1].double() + 4.0 * torch.from_numpy(np_vector(tiny["saes"]["res"][1], [5], fold))
    torch.testing.assert_close(h1[1].double(), want, rtol=0, atol=1e-5)
    assert not torch.equal(h1[2], h0[2])  # and what follows sees it


def test_cumulative_activation_adds_each_layers_own_strength_on_top_of_what_that_layer_computed(tiny):
    ids, mask = batch(tiny)
    res = THEME.filter(pl.col("site") == "res")
    edit = steering_edits(res, tiny["saes"], steered_layers([0, 1, 2], 1, True), "activate", 8.0, "linear")
    assert set(edit) == {("res", 0), ("res", 1)}
    raw = {}
    layers = tiny["model"].model.layers
    handles = [layers[L].register_forward_hook(lambda m, a, out, L=L: raw.__setitem__(L, out[0] if isinstance(out, tuple) else out))
               for L in (1, 2)]
    try:  # registered first: they see layers 1 and 2's own output, before a steering edit
        h, _ = hidden(tiny, ids, mask, edit)
    finally:
        for handle in handles:
            handle.remove()
    h0, _ = hidden(tiny, ids, mask)
    # linear over the set's span 0 … 2: s_0 = 8, s_1 = 4.5, s_2 = 1
    d0 = 8.0 * torch.from_numpy(np_vector(tiny["saes"]["res"][0], [3, 17]))
    d1 = 4.5 * torch.from_numpy(np_vector(tiny["saes"]["res"][1], [5]))
    torch.testing.assert_close(h[0].double(), h0[0].double() + d0, rtol=0, atol=1e-5)
    torch.testing.assert_close(h[1].double(), raw[1].double() + d1, rtol=0, atol=1e-5)
    torch.testing.assert_close(h[2], raw[2], rtol=0, atol=0)  # layer 2 is not steered


def test_an_attention_edit_changes_the_heads_output_where_gemma_scope_reads_it(tiny):
    ids, mask = batch(tiny)
    edit = steering_edits(THEME.filter(pl.col("site") == "att"), tiny["saes"], [1], "activate", 3.0, fold=False)
    o_proj = tiny["model"].model.layers[1].self_attn.o_proj
    seen = {}
    with torch.no_grad():
        h = o_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("z0", args[0]))
        tiny["model"](input_ids=ids, attention_mask=mask)
        h.remove()
        with edits(tiny["model"], FMT, edit):  # the edit's pre-hook first, then this one sees its result
            h = o_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("z1", args[0]))
            tiny["model"](input_ids=ids, attention_mask=mask)
            h.remove()
    want = seen["z0"].double() + 3.0 * torch.from_numpy(tiny["saes"]["att"][1].W_dec.numpy()[11].astype(np.float64))
    torch.testing.assert_close(seen["z1"].double(), want, rtol=0, atol=1e-5)


def test_deactivation_subtracts_the_features_own_activation_times_their_decoder_rows(tiny):
    ids, mask = batch(tiny)
    sae = tiny["saes"]["res"][0]
    h0, _ = hidden(tiny, ids, mask)
    x = h0[0].double().numpy()  # resid_post of layer 0
    W_enc, b_enc, th = (t.numpy().astype(np.float64) for t in (sae.W_enc, sae.b_enc, sae.threshold))
    pre = x @ W_enc + b_enc
    f = pre * (pre > th)
    idx = np.flatnonzero((f[0] > 0).any(0))[:3]  # features active in the first document
    assert len(idx) == 3
    feats = theme([(0, "res", int(i)) for i in idx])
    for r in (0.0, -2.0):
        h, _ = hidden(tiny, ids, mask, steering_edits(feats, tiny["saes"], [0], "deactivate", r))
        want = x + (r - 1) * f[..., idx] @ sae.W_dec.numpy().astype(np.float64)[idx]
        np.testing.assert_allclose(h[0].double().numpy(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("how, strength", [("activate", 0.0), ("deactivate", 1.0)])
def test_s_0_and_r_1_change_nothing_bit_for_bit(tiny, how, strength):
    ids, mask = batch(tiny)
    _, logits0 = hidden(tiny, ids, mask)
    edit = steering_edits(THEME.filter(pl.col("site") != "att") if how == "deactivate" else THEME, tiny["saes"],
                          [0, 1, 2], how, strength)
    _, logits = hidden(tiny, ids, mask, edit)
    assert torch.equal(logits, logits0)


def test_deactivating_a_feature_of_a_decoder_only_sae_is_refused():
    sae = Sae(None, None, torch.randn(4, 3), torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="this SAE has no encoder"):
        feature_activations(sae, torch.randn(2, 3), [1])


def test_a_hook_point_without_its_sae_is_named():
    with pytest.raises(ValueError, match=r"no mlp SAE at layer 1 for the features \['1/mlp/9'\]"):
        some = Sae(torch.randn(3, 64), torch.zeros(64), torch.randn(64, 3), torch.zeros(3), torch.ones(64))
        steering_edits(THEME, {"res": {1: some}, "att": {1: some}}, [1], "activate", 1.0)


# --- generation and scores --------------------------------------------------------------------

def test_generation_is_reproducible_for_a_seed_leaves_the_global_random_state_and_s_0_is_the_baseline(tiny):
    model, tok = tiny["model"], tiny["tokenizer"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, tok, ["the cat", "a dog"], FMT, max_new_tokens=12, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == generate(model, tok, ["the cat", "a dog"], FMT, max_new_tokens=12, seed=7)
    assert [len(t) for t in a] == [12, 12]
    assert a != generate(model, tok, ["the cat", "a dog"], FMT, max_new_tokens=12, seed=8)
    zero = steering_edits(THEME, tiny["saes"], [0, 1, 2], "activate", 0.0)
    assert a == generate(model, tok, ["the cat", "a dog"], FMT, zero, max_new_tokens=12, seed=7)
    strong = steering_edits(THEME.filter(pl.col("site") == "res"), tiny["saes"], [0, 1], "activate", 200.0)
    assert a != generate(model, tok, ["the cat", "a dog"], FMT, strong, max_new_tokens=12, seed=7)


def test_perplexity_is_the_exp_of_the_mean_cross_entropy_of_the_generated_tokens_only(tiny):
    model, tok = tiny["model"], tiny["tokenizer"]
    prompt = tok("the cat")["input_ids"]
    new = tok("sees a dog .", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + new])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    nll = [-float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(new)]
    assert perplexity(model, prompt, new) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert math.isnan(perplexity(model, prompt, []))


def test_presence_is_the_mean_summed_activation_of_the_features_over_the_generated_tokens(tiny):
    model, tok = tiny["model"], tiny["tokenizer"]
    prompt = tok("the cat")["input_ids"]
    new = tok("sees a dog near the river .", add_special_tokens=False)["input_ids"]
    sae = tiny["saes"]["res"][1]
    with torch.no_grad():
        x = model(input_ids=torch.tensor([prompt + new]), output_hidden_states=True).hidden_states[2][0, len(prompt):]
    # (no edit here: transformers' hidden_states[2] is resid_post of layer 1)
    W_enc, b_enc, th = (t.numpy().astype(np.float64) for t in (sae.W_enc, sae.b_enc, sae.threshold))
    pre = x.double().numpy() @ W_enc + b_enc
    f = pre * (pre > th)
    top = np.argsort(-f.sum(0))[:2]  # the two features most active on this text
    feats = theme([(1, "res", int(i)) for i in top])
    assert presence(model, FMT, prompt, new, feats, tiny["saes"]) == pytest.approx(f[:, top].sum(1).mean(), rel=1e-4)
    assert presence(model, FMT, prompt, new, feats, tiny["saes"]) > 0


def test_distinct_n_and_word_share_by_hand():
    assert distinct_n([1, 2, 1, 2, 1], 2) == pytest.approx(2 / 4)
    assert distinct_n([1, 2, 3], 1) == 1.0
    assert math.isnan(distinct_n([1], 2))
    assert word_share(["the", "cat", "sees", "the", "dog"], {"cat", "dog"}) == pytest.approx(0.4)
    assert words("The bride's Wedding, 2 rings — café!") == ["the", "bride's", "wedding", "rings", "café"]
    assert keyword_share("The boat, a BOAT.", {"boat"}) == pytest.approx(0.5)
    assert keyword_share("!!! , . 42", {"boat"}) == 0.0  # no words: none of the theme's, not NaN


def test_the_loss_change_is_zero_without_steering_and_positive_when_the_state_is_pushed_far(tiny):
    from saematch.evaluate import token_loss

    ids, mask = batch(tiny)
    valid = mask.bool().clone()
    valid[:, 0] = False
    zero = steering_edits(THEME, tiny["saes"], [0, 1, 2], "activate", 0.0)
    assert loss_change(tiny["model"], FMT, [(ids, mask, valid)], zero) == 0.0
    far = steering_edits(THEME.filter(pl.col("site") == "res"), tiny["saes"], [1], "activate", 300.0)
    got = loss_change(tiny["model"], FMT, [(ids, mask, valid)] * 2, far)
    ce0, n = token_loss(tiny["model"], ids, mask, valid)
    with edits(tiny["model"], FMT, far):
        ce1, _ = token_loss(tiny["model"], ids, mask, valid)
    assert got == pytest.approx((ce1 - ce0) / n) and got > 0


# --- saematch steer on a run -------------------------------------------------------------------

def write_run(tiny, tmp_path, confidence=0.9):
    """A run of the tiny model as the pipeline leaves it: res matches 0 → 1 and 1 → 2 whose
    provenance holds the real SAE download pointers (here: feature i ↔ i, all confident), the
    model's download pointer and a config naming it."""
    import json

    from saematch import hub
    from saematch.write import write_matches
    from tiny_model import PATHS, REPOS

    cache = tiny["root"] / "cache"
    pointer = lambda L: dict(hub.fetch(REPOS["res"], {"params": PATHS["res"][L]}, cache_dir=str(cache),  # noqa: E731
                                       local_files_only=True), format="gemma-scope", cache_dir=str(cache))
    n = 128
    ar = np.arange(n, dtype=np.int32)
    conf = np.full(n, confidence, np.float32)
    for L in (0, 1):
        cols = {"feature": ar, "match": ar, "top1": ar, "cosine": conf, "mse": conf,
                "top1_cosine": conf, "persists": conf >= 0.5, "confidence": conf, "top1_persists": conf >= 0.5,
                "top1_confidence": conf, "unjudged": np.full(n, None, object),
                "evidence": np.zeros((n, 7), np.float32), "top1_evidence": np.zeros((n, 7), np.float32)}
        write_matches(tmp_path / f"results/model=toy/variant=v/matches/site=res/layer={L}/part-0.parquet", cols,
                      {"site": "res", "layer": L, "n_dst": n, "src": pointer(L), "dst": pointer(L + 1)})
    files = tiny["manifest"]["repos"]["t/gemma-2"]["files"]
    model_pointer = dict(hub.fetch("t/gemma-2", {f: f for f in files}, cache_dir=str(cache), local_files_only=True),
                         cache_dir=str(cache))
    (tmp_path / "resources/hub/model/t--gemma-2").mkdir(parents=True)
    (tmp_path / "resources/hub/model/t--gemma-2/main.json").write_text(json.dumps(model_pointer))
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(
        "catalog:\n  toy:\n    format: gemma-scope\n    model: {repo_id: t/gemma-2, revision: main}\n")
    return tmp_path


def test_saematch_steer_prints_the_unsteered_and_steered_generations_of_one_setting(tiny, tmp_path, monkeypatch, capsys):
    import json

    from saematch.cli import main

    monkeypatch.chdir(write_run(tiny, tmp_path))
    args = ["steer", "toy", "--seed", "1/res/5", "--layer", "1", "--prompt", "the cat", "--prompt", "a dog",
            "--max-tokens", "10", "--json"]
    assert main(args + ["--s", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the theme: 1/res/5 traced both ways along i ↔ i, confidence 0.9
    assert out["theme"] == ["0/res/5", "1/res/5", "2/res/5"]
    assert out["setting"] == {"how": "activate", "strength": 0.0, "layers": [1], "schedule": "constant", "fold": True,
                              "features": ["1/res/5"]}
    # s = 0: the steered text is the unsteered one; both are the seeded sample of the plain model
    want = generate(tiny["model"], tiny["tokenizer"], ["the cat", "a dog"], FMT, max_new_tokens=10)
    assert [g["unsteered"] for g in out["generations"]] == [tiny["tokenizer"].decode(t, skip_special_tokens=True) for t in want]
    assert all(g["steered"] == g["unsteered"] and g["steered_perplexity"] == g["unsteered_perplexity"]
               for g in out["generations"])
    assert main(args + ["--s", "60", "--cumulative"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["setting"]["layers"] == [0, 1] and out["setting"]["features"] == ["0/res/5", "1/res/5"]
    assert any(g["steered"] != g["unsteered"] for g in out["generations"])
    assert main(args[:-1] + ["--r", "0"]) == 0
    text = capsys.readouterr().out
    assert "deactivate 1 features of the theme (3 in all) at layers 1, r = 0" in text and "perplexity" in text


@pytest.mark.parametrize("args, message", [
    (["--seed", "1/res/5", "--layer", "1", "--s", "1", "--r", "0"], "give one of --s (activate the theme) or --r (deactivate it)"),
    # no link is confident (0.1): 0/res/5's theme is itself alone
    (["--seed", "0/res/5", "--layer", "2", "--s", "1"], "the theme of 0/res/5 has no feature at layer 2 (its layers: 0)"),
    (["--seed", "1/res/5", "--layer", "1", "--s", "1", "--config", "nowhere.yaml"], "nowhere.yaml: cannot read the config"),
    (["--seed", "1/res/999", "--layer", "1", "--s", "1"], "999"),
    (["--layer", "1", "--s", "1"], "give the theme's seeds: --seed LAYER/SITE/INDEX (repeatable) or --query TEXT"),
    (["--seed", "1/res/5", "--query", "sea", "--layer", "1", "--s", "1"], "give the theme's seeds"),
    (["--query", "sea", "--layer", "1", "--s", "1"], "--query needs a local copy of Neuronpedia's explanations"),
    (["--query", "sea", "--layer", "1", "--s", "1", "--explanations", "."],
     "no residual feature of layers [1] has an explanation containing 'sea'"),
])
def test_saematch_steer_names_what_is_wrong(tiny, tmp_path, monkeypatch, capsys, args, message):
    from saematch.cli import main

    monkeypatch.chdir(write_run(tiny, tmp_path, confidence=0.1))
    global_args = []
    if "--explanations" in args:  # a main option, before the subcommand
        i = args.index("--explanations")
        global_args, args = args[i:i + 2], args[:i] + args[i + 2:]
    assert main([*global_args, "steer", "toy", "--prompt", "the", "--max-tokens", "2", *args]) == 2
    assert message in capsys.readouterr().err


def test_saematch_steer_says_when_the_model_was_never_downloaded(tiny, tmp_path, monkeypatch, capsys):
    from saematch.cli import main

    monkeypatch.chdir(write_run(tiny, tmp_path))
    (tmp_path / "resources/hub/model/t--gemma-2/main.json").unlink()
    assert main(["steer", "toy", "--seed", "1/res/5", "--layer", "1", "--s", "1", "--prompt", "the"]) == 2
    assert "resources/hub/model/t--gemma-2/main.json: the model has not been downloaded" in capsys.readouterr().err


# --- the LLM judge, against a local stub server ---------------------------------------------------

def test_the_judge_asks_the_endpoint_and_turns_its_answer_into_the_papers_scores(stub, monkeypatch):
    from saematch.steer import judge

    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    got = judge("the wedding was lovely", "weddings and marriage", stub["url"], "judge-model", key_env="JUDGE_KEY")
    assert got == {"behavioral": 4.0, "coherence": 3.0, "activation_score": pytest.approx(12 / 25),
                   "deactivation_score": pytest.approx((1 - 4 / 5) * 3 / 5)}
    (req,) = stub["seen"]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    prompt = req["body"]["messages"][0]["content"]
    assert "Theme: weddings and marriage" in prompt and "Text: the wedding was lovely" in prompt
    assert "sk-test-123" not in repr(got)
    monkeypatch.delenv("JUDGE_KEY")
    judge("x", "y", stub["url"], "m", key_env="JUDGE_KEY")
    assert "Authorization" not in stub["seen"][-1]["headers"]  # no key in the environment: none sent


@pytest.mark.parametrize("reply, status, message", [
    ("not json", 200, "the reply is not the JSON asked for"),
    ({"behavioral": 4}, 200, "the reply is not the JSON asked for (KeyError"),
    ({"behavioral": 7, "coherence": 3}, 200, "scores outside 0–5 (behavioral 7, coherence 3)"),
    ({"behavioral": 1, "coherence": 1}, 500, "HTTP 500"),
])
def test_a_judge_that_answers_wrongly_is_named_with_what_was_wrong(stub, reply, status, message):
    from saematch.steer import judge

    stub["state"].update(reply=reply, status=status)
    with pytest.raises(ValueError, match="judge http://127.0.0.1:[0-9]+/v1/chat/completions: " + re.escape(message)):
        judge("text", "theme", stub["url"], "m")


def test_an_unreachable_judge_is_named():
    from saematch.steer import judge

    with pytest.raises(ValueError, match=r"judge http://127.0.0.1:9/chat/completions: cannot reach it"):
        judge("text", "theme", "http://127.0.0.1:9", "m", timeout=5)
