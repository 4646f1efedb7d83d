"""A steering theme's grid (saematch.steer.grid, run_theme), proven on the tiny model's planted
topics: its grammar has two topics with words of their own (saematch.tiny.TOPICS), so the share
of a topic's words in a generation measures a theme. The theme's features here are chosen from
the model's activations on held-out text (the residual features that fire most inside the
topic's documents and least outside), not from the pipeline's graph: an oracle that shares no
code with the steering or the matching."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from saematch.lm import read_sites
from saematch.steer import grid, run_theme
from saematch.tiny import topic_words
from tiny_model import build_tiny

FMT = "gemma-scope"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def topic_features(tiny, topic: str, per_layer: int = 2) -> pl.DataFrame:
    """The residual features of layers 1 and 2 whose mean activation inside ``topic``'s
    held-out documents most exceeds their mean outside them (in units of their spread)."""
    words = set(topic_words(topic))
    model, tok, saes = tiny["model"], tiny["tokenizer"], tiny["saes"]
    inside, acts = [], {1: [], 2: []}
    for doc in tiny["docs"][:150]:
        ids = torch.tensor([tok(doc)["input_ids"][:96]])
        caps = read_sites(model, FMT, ids, torch.ones_like(ids), {"res": [1, 2]})
        inside += [any(w in words for w in doc.split())] * ids.shape[1]
        for L in acts:
            sae, x = saes["res"][L], caps["res"][L][0].float()
            pre = x @ sae.W_enc + sae.b_enc
            acts[L].append(pre * (pre > sae.threshold))
    inside = torch.tensor(inside)
    rows = []
    for L, a in acts.items():
        a = torch.cat(a)
        score = (a[inside].mean(0) - a[~inside].mean(0)) / (a.std(0) + 1e-6)
        for i in torch.argsort(score, descending=True)[:per_layer].tolist():
            rows.append({"node": f"{L}/res/{i}", "layer": L, "site": "res", "feature": i, "seeds": []})
    return pl.DataFrame(rows, schema={"node": pl.String, "layer": pl.Int32, "site": pl.String, "feature": pl.Int64,
                                      "seeds": pl.List(pl.String)})


def theme(**kw):
    base = {"name": "t", "how": "activate", "prompts": ["the"], "samples": 8, "max_tokens": 16, "seed": 0,
            "keywords": [], "layers": [2], "scopes": ["single", "cumulative"], "schedules": ["constant"], "values": [8.0]}
    return {**base, **kw}


def test_the_grid_is_the_baseline_then_every_layer_scope_schedule_and_value_and_deactivation_has_no_schedule():
    g = grid(theme(layers=[1, 2], schedules=["constant", "exponential"], values=[2, 4]))
    assert g[0] == {"setting": 0, "how": "none", "layer": None, "scope": None, "schedule": None, "value": None}
    assert len(g) == 1 + 2 * 2 * 2 * 2 and [s["setting"] for s in g] == list(range(len(g)))
    assert {(s["layer"], s["scope"], s["schedule"], s["value"]) for s in g[1:]} == {
        (L, sc, sch, v) for L in (1, 2) for sc in ("single", "cumulative") for sch in ("constant", "exponential")
        for v in (2.0, 4.0)}
    off = grid(theme(how="deactivate", layers=[1], schedules=["constant", "linear"], values=[0, -1]))
    assert len(off) == 1 + 2 * 2 and {s["schedule"] for s in off[1:]} == {None}


def test_activating_a_planted_topics_features_raises_its_word_share_from_its_base_rate_at_bounded_perplexity(tiny):
    sea = topic_features(tiny, "sea")
    gens, summary = run_theme(tiny["model"], tiny["tokenizer"], FMT, sea, sea["node"].to_list()[:1], tiny["saes"],
                              theme(keywords=topic_words("sea"), values=[16.0, 32.0]))
    by = {(r["scope"], r["value"]): r for r in summary.iter_rows(named=True)}
    base = by[None, None]
    assert base["keyword_share"] < 0.05  # "the …" rarely turns to the sea on its own
    assert by["cumulative", 32.0]["keyword_share"] > 0.3 > base["keyword_share"] + 0.2
    assert by["cumulative", 32.0]["perplexity"] < 5 * base["perplexity"]
    # cumulative steering (layers 1 and 2) moves the text further than layer 2 alone at the same s
    for s in (16.0, 32.0):
        assert by["cumulative", s]["keyword_share"] > by["single", s]["keyword_share"] + 0.1
    # the other topic's words do not come with it: the planted vocabularies are disjoint
    forest = set(topic_words("forest"))
    steered = gens.filter(pl.col("setting") == by["cumulative", 32.0]["setting"])
    assert sum(w in forest for t in steered["text"] for w in t.split()) <= 1


def test_deactivating_a_topics_features_lowers_its_word_share_when_the_prompt_asks_for_it(tiny):
    forest = topic_features(tiny, "forest")
    _, summary = run_theme(tiny["model"], tiny["tokenizer"], FMT, forest, forest["node"].to_list()[:1], tiny["saes"],
                           theme(how="deactivate", prompts=["the wild fox"], keywords=topic_words("forest"),
                                 values=[0.0, -2.0]))
    by = {(r["scope"], r["value"]): r for r in summary.iter_rows(named=True)}
    assert by[None, None]["keyword_share"] > 0.1  # prompted toward the forest, it stays there
    assert by["cumulative", -2.0]["keyword_share"] < by[None, None]["keyword_share"] / 2
    assert by["cumulative", 0.0]["keyword_share"] <= by[None, None]["keyword_share"]


def test_the_summary_is_the_mean_of_its_generations_and_names_what_it_steered(tiny):
    feats = topic_features(tiny, "sea", per_layer=1)
    seeds = feats["node"].to_list()[1:]
    gens, summary = run_theme(tiny["model"], tiny["tokenizer"], FMT, feats.filter(pl.col("layer") == 2), seeds,
                              tiny["saes"], theme(layers=[1, 2], scopes=["single"], samples=3, max_tokens=6,
                                                  prompts=["the", "a big"], keywords=["The", "a", "CAT"]),
                              loss_batches=None)
    assert summary["setting"].to_list() == [0, 1, 2]
    layer1 = summary.row(1, named=True)
    assert layer1["n_features"] == 0 and layer1["features"] == [] and layer1["keyword_share"] is None
    assert gens.filter(pl.col("setting") == 1).height == 0  # nothing at layer 1 to steer: not generated
    layer2 = summary.row(2, named=True)
    assert layer2["features"] == seeds and layer2["n_features"] == 1
    for setting in (0, 2):
        g = gens.filter(pl.col("setting") == setting)
        assert g.height == 2 * 3 and g["prompt"].to_list() == ["the"] * 3 + ["a big"] * 3
        assert g["sample"].to_list() == [0, 1, 2] * 2
        row = summary.row(setting, named=True)
        for col in ("keyword_share", "presence", "perplexity", "distinct_2"):
            x = g[col].to_numpy().astype(float)
            assert row[col] == pytest.approx(x.mean())
            assert row[f"{col}_se"] == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)))
        for text, share in zip(g["text"], g["keyword_share"]):
            w = [t for t in text.split() if t.isalpha()]  # the tiny vocabulary's words; punctuation is no word
            assert share == pytest.approx(sum(t in ("the", "a", "cat") for t in w) / len(w))
        assert g["keyword_share"].max() > 0
    assert summary["delta_loss"].is_null().all()  # no held-out text given: no ΔL


def test_the_loss_change_is_zero_for_the_baseline_and_the_judge_scores_each_generation(tiny, stub):
    feats = topic_features(tiny, "sea", per_layer=1)
    ids = torch.tensor([tiny["tokenizer"](d)["input_ids"][:40] for d in tiny["docs"][:4] if len(d.split()) >= 40])
    batches = [(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))]
    stub["state"].update(reply={"behavioral": 5, "coherence": 2})
    gens, summary = run_theme(tiny["model"], tiny["tokenizer"], FMT, feats, feats["node"].to_list(), tiny["saes"],
                              theme(values=[30.0], scopes=["single"], samples=2, max_tokens=4, description="the sea"),
                              loss_batches=batches, judge_with={"endpoint": stub["url"], "model": "m"})
    assert summary["delta_loss"].to_list()[0] == 0.0 and summary["delta_loss"].to_list()[1] > 0
    assert len(stub["seen"]) == gens.height == 4
    assert all("Theme: the sea" in r["body"]["messages"][0]["content"] for r in stub["seen"])
    assert gens["judge_score"].to_list() == [pytest.approx(5 * 2 / 25)] * 4
    assert summary["behavioral"].to_list() == [5.0, 5.0]


def test_the_figure_draws_single_and_cumulative_per_layer_with_the_unsteered_line():
    from saematch.figures import _steering_figure

    rows = [{"setting": 0, "how": "none", "layer": None, "scope": None, "schedule": None, "value": None,
             "n_features": 0, "keyword_share": 0.01, "perplexity": 10.0}]
    for k, (L, scope, v) in enumerate([(L, sc, v) for L in (1, 2) for sc in ("single", "cumulative")
                                       for v in (4.0, 16.0, 64.0)], 1):
        rows.append({"setting": k, "how": "activate", "layer": L, "scope": scope, "schedule": "constant", "value": v,
                     "n_features": 0 if L == 2 and scope == "single" else 3, "keyword_share": v / 100,
                     "keyword_share_se": 0.01, "perplexity": 10 + v, "perplexity_se": 1.0})
    fig = _steering_figure(pl.DataFrame(rows), "t")
    axes = np.array(fig.axes).reshape(2, 2)
    assert [a.get_title() for a in axes[0]] == ["layer 1", "layer 2"]
    assert axes[0, 0].get_ylabel() == "keyword share of the words"
    assert axes[1, 0].get_xscale() == "log" and axes[1, 0].get_yscale() == "log"
    lines = lambda ax: [ln for ln in ax.get_lines() if ln.get_marker() == "o"]  # noqa: E731
    assert len(lines(axes[0, 0])) == 2 and len(lines(axes[0, 1])) == 1  # layer 2 single: nothing steered
    unsteered = [ln for ln in axes[0, 1].get_lines() if ln.get_linestyle() == ":"]
    assert unsteered and unsteered[0].get_ydata()[0] == pytest.approx(0.01)
    cum = next(ln for ln in lines(axes[0, 1]) if ln.get_linestyle() == "--")
    assert list(cum.get_ydata()) == pytest.approx([0.04, 0.16, 0.64])


def test_a_failing_judge_is_tried_three_times_then_stops_the_grid_naming_it(tiny, stub, monkeypatch):
    import saematch.steer

    monkeypatch.setattr(saematch.steer, "JUDGE_WAITS", (0.0, 0.0))
    stub["state"].update(status=500)
    feats = topic_features(tiny, "sea", per_layer=1)
    with pytest.raises(ValueError, match="HTTP 500"):
        run_theme(tiny["model"], tiny["tokenizer"], FMT, feats, feats["node"].to_list(), tiny["saes"],
                  theme(values=[1.0], scopes=["single"], samples=1, max_tokens=2),
                  judge_with={"endpoint": stub["url"], "model": "m"})
    assert len(stub["seen"]) == 3


def test_a_score_a_text_cannot_have_is_left_out_of_the_means_not_turned_into_nan(tiny):
    """One generated token has no bigram (distinct-2 is NaN for it): the setting's mean is null,
    not NaN; a text of punctuation only holds no theme word (keyword share 0)."""
    feats = topic_features(tiny, "sea", per_layer=1)
    gens, summary = run_theme(tiny["model"], tiny["tokenizer"], FMT, feats, feats["node"].to_list(), tiny["saes"],
                              theme(values=[1.0], scopes=["single"], samples=6, max_tokens=1, keywords=["boat"]))
    assert gens["distinct_2"].is_nan().all()
    assert summary["distinct_2"].to_list() == [None, None] and summary["keyword_share"].is_nan().sum() == 0
    wordless = gens.filter(~pl.col("text").str.contains("[a-z]"))
    assert wordless["keyword_share"].to_list() == [0.0] * wordless.height
