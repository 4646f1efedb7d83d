"""Steering along flow graphs: switch a theme off or on across layers (Feature Flow, Laptev et
al., ICML 2025, §3.5, §5.3, App. B; methods.md §2.6–2.7).

:func:`feature_set` (the theme: every seed feature traced both ways through the one feature
graph, saematch.graph) → :func:`steering_edits` (one edit per SAE hook point, saematch.lm.edits)
→ :func:`generate` (sampled, seeded) → the offline scores (:func:`presence`, :func:`perplexity`,
:func:`distinct_n`, :func:`loss_change`).

- **activation** at every token: h ← h + s_l · Σ_i c_i · v_i over the set's features i of the
  hook point, v_i the decoder row, s_l the strength at layer l (:func:`layer_strengths`), and
  c_i = θ_i (the JumpReLU threshold) with ``fold`` (the default; methods.md §2.7, our reading
  of the paper's "we also employ folding to distribute the coefficient": the folded decoder row
  θ_i·v_i, so s counts thresholds, the least activation the feature ever has) or 1 without.
- **deactivation** at every token: h ← h + (r − 1) · Σ_i a_i · v_i, a_i the feature's own
  JumpReLU activation on h (r = 0 deletes the features, r < 0 reverses them).
- **single** steers the set's features of one layer l; **cumulative** those of layers ≤ l.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import numpy as np
import polars as pl
import torch

from .config import WORD
from .graph import MODULE_CUT, RES_CUT, parse_node, trace_set
from .lm import edits
from .sae import Sae

SCHEDULES = ("constant", "linear", "exponential")
ALPHA = -0.05  # the exponential schedule's rate per layer (the paper's)
TOP_P, TEMPERATURE = 0.7, 1.27  # the paper's sampling


def feature_set(paths: dict, seeds: list[str], mode: str = "verdict", cut: float = 0.5,
                res_cut: float = RES_CUT, module_cut: float = MODULE_CUT) -> pl.DataFrame:
    """The theme's features: the nodes of the seeds' traces both ways (saematch.graph.trace_set;
    mode 'verdict': links whose confidence ≥ ``cut``; 'flow': the paper's rule, residual links
    with s ≥ ``res_cut``), module features where s ≥ ``module_cut`` (the paper's 0.15). One row
    per feature: node, layer, site, feature, seeds (the seeds whose graph holds it), sorted by
    layer, site, feature."""
    rows: dict[str, dict] = {}
    for seed in seeds:
        for node in trace_set(paths, [seed], "both", res_cut, module_cut, mode, cut).nodes:
            L, site, i = parse_node(node)
            rows.setdefault(node, {"node": node, "layer": L, "site": site, "feature": i, "seeds": []})["seeds"].append(seed)
    schema = {"node": pl.String, "layer": pl.Int32, "site": pl.String, "feature": pl.Int64, "seeds": pl.List(pl.String)}
    return pl.DataFrame(list(rows.values()), schema=schema).sort("layer", "site", "feature")


def steered_layers(layers, layer: int, cumulative: bool) -> list[int]:
    """The layers steered at ``layer``: itself (single) or every layer of ``layers`` ≤ it (cumulative)."""
    return sorted({L for L in layers if L <= layer}) if cumulative else [layer]


def layer_strengths(layers, s: float, schedule: str = "constant", alpha: float = ALPHA,
                    s_end: float = 1.0) -> dict[int, float]:
    """The strength s_l at each layer l of ``layers`` (the paper's schedules over the graph's span
    l_start … l_end): constant s; linear from s at l_start to ``s_end`` (1) at l_end, s_l = k·l + b
    with k = (s_end − s)/(l_end − l_start), b = s − k·l_start (s at every layer of a one-layer span);
    exponential s·e^{αl}."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    layers = sorted(set(layers))
    if schedule == "constant" or not layers:
        return {L: float(s) for L in layers}
    if schedule == "exponential":
        return {L: float(s * math.exp(alpha * L)) for L in layers}
    l_start, l_end = layers[0], layers[-1]
    k = (s_end - s) / (l_end - l_start) if l_end > l_start else 0.0
    b = s - k * l_start
    return {L: float(k * L + b) for L in layers}


def steering_vector(sae: Sae, features, fold: bool = True) -> torch.Tensor:
    """(d,) Σ_i c_i·v_i over ``features`` of ``sae``: c_i = θ_i with ``fold``, else 1."""
    idx = torch.as_tensor(np.array(features, np.int64))
    V = sae.W_dec[idx]
    c = sae.threshold[idx] if fold else torch.ones(len(idx), dtype=V.dtype, device=V.device)
    return c @ V


def feature_activations(sae: Sae, x: torch.Tensor, features) -> torch.Tensor:
    """(..., f) the JumpReLU activations of ``features`` of ``sae`` on x (..., d_in)."""
    if sae.W_enc is None:
        raise ValueError("a deactivation reads the features' activations: this SAE has no encoder "
                         "(an attention SAE mapped through W_O); steer its features by activation only")
    idx = torch.as_tensor(np.array(features, np.int64), device=sae.W_enc.device)
    pre = x @ sae.W_enc[:, idx] + sae.b_enc[idx]
    return pre * (pre > sae.threshold[idx])


def steering_edits(features: pl.DataFrame, saes: dict[str, dict[int, Sae]], layers: list[int],
                   how: str, strength: float, schedule: str = "constant", alpha: float = ALPHA,
                   fold: bool = True) -> dict[tuple[str, int], callable]:
    """(site, L) → edit x ↦ x' (saematch.lm.edits) for the set's features at the ``layers``.

    how 'activate': x + s_L·Σ c_i·v_i (``strength`` s, its schedule over the set's layer span);
    'deactivate': x + (r − 1)·Σ a_i(x)·v_i (``strength`` r). ``saes[site][L]``: the SAE of each
    hook point the set has features at (missing ones: a ValueError naming them)."""
    if how not in ("activate", "deactivate"):
        raise ValueError(f"steering {how!r}: expected activate or deactivate")
    span = sorted(set(features["layer"].to_list()))
    s_l = layer_strengths(span, strength, schedule, alpha) if how == "activate" else {}
    out = {}
    for (site, L), group in features.filter(pl.col("layer").is_in(layers)).group_by("site", "layer", maintain_order=True):
        L = int(L)
        sae = saes.get(site, {}).get(L)
        if sae is None:
            raise ValueError(f"no {site} SAE at layer {L} for the features {group['node'].to_list()}")
        idx = group["feature"].to_list()
        if how == "activate":
            delta = s_l[L] * steering_vector(sae, idx, fold)
            out[site, L] = lambda x, delta=delta: x + delta.to(x.dtype)
        else:
            V = sae.W_dec[torch.as_tensor(idx)]
            out[site, L] = lambda x, sae=sae, idx=idx, V=V: x + (strength - 1) * (
                feature_activations(sae, x.to(V.dtype), idx) @ V).to(x.dtype)
    return out


def generate(model, tokenizer, prompts: list[str], fmt: str, edit: dict | None = None, max_new_tokens: int = 36,
             top_p: float = TOP_P, temperature: float = TEMPERATURE, seed: int = 0, samples: int = 1) -> list[list[int]]:
    """Each prompt continued ``samples`` times by sampling (top-p, temperature; one batch per
    prompt) with ``edit`` in place at every token, prompt included; exactly ``max_new_tokens``
    each (no stop token). The torch random state is seeded per prompt from ``seed`` inside, so
    a setting and its unsteered baseline draw from the same stream; the CPU's state is restored
    after (a GPU's is not). Returns the new token ids, prompt by prompt, sample by sample."""
    out = []
    with torch.random.fork_rng(devices=[]), (edits(model, fmt, edit) if edit else nullcontext()), torch.no_grad():
        for p, prompt in enumerate(prompts):
            torch.manual_seed(seed * 1_000_003 + p)
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=top_p,
                                 temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
            out += gen[:, ids.shape[1]:].tolist()
    return out


def distinct_n(tokens: list[int], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of one generation (1: no repetition; nan if shorter than n)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _forward_logits(model, prompt_ids: list[int], new: list[int]):
    ids = torch.tensor([prompt_ids + new], device=model.device)
    return ids, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()


def perplexity(model, prompt_ids: list[int], new: list[int]) -> float:
    """exp of the unsteered model's mean cross-entropy (nats) of the generated tokens ``new``
    after ``prompt_ids``."""
    if not new:
        return float("nan")
    with torch.no_grad():
        ids, logits = _forward_logits(model, prompt_ids, new)
        k = len(prompt_ids)
        ce = torch.nn.functional.cross_entropy(logits[k - 1:-1], ids[0, k:], reduction="mean")
    return float(torch.exp(ce))


def presence(model, fmt: str, prompt_ids: list[int], new: list[int], features: pl.DataFrame,
             saes: dict[str, dict[int, Sae]]) -> float:
    """The theme's presence in a generation: the mean over its generated tokens of the summed
    activation of ``features`` (e.g. the seeds), read by the unsteered model and their SAEs."""
    from .lm import read_sites

    if not new:
        return float("nan")
    read = {}
    for site, L in features.select("site", "layer").unique().iter_rows():
        read.setdefault(site, []).append(int(L))
    ids = torch.tensor([prompt_ids + new], device=model.device)
    caps = read_sites(model, fmt, ids, torch.ones_like(ids), read)
    total = torch.zeros(len(new), dtype=torch.float64)
    for (site, L), group in features.group_by("site", "layer"):
        x = caps[site][int(L)][0, len(prompt_ids):]
        a = feature_activations(saes[site][int(L)], x.float(), group["feature"].to_numpy())
        total += a.sum(-1).double().cpu()
    return float(total.mean())


def words(text: str) -> list[str]:
    """The words of a generation as a keyword list counts them: lower-case runs of letters
    (an apostrophe inside a word kept), whatever the tokenizer split."""
    return WORD.findall(text.casefold())


def word_share(text_words: list[str], keywords: set[str]) -> float:
    """Share of the generated words (:func:`words`) that are among ``keywords`` (a theme's list)."""
    return sum(t in keywords for t in text_words) / len(text_words) if text_words else float("nan")


def keyword_share(text: str, keywords: set[str]) -> float:
    """Share of a generation's :func:`words` among ``keywords`` (case-folded); 0 for a text
    without words ("!!!!", steered too far), which holds none of the theme's."""
    said = words(text)
    return word_share(said, keywords) if said else 0.0


def clean_loss(model, fmt: str, batches) -> tuple[float, int]:
    """The unsteered summed next-token loss (nats) over ``batches`` and its token count."""
    from .evaluate import token_loss

    ce = n = 0
    for ids, mask, valid in batches:
        a, k = token_loss(model, ids, mask, valid, fmt=fmt)
        ce, n = ce + a, n + k
    return ce, n


def loss_change(model, fmt: str, batches, edit: dict, clean: tuple[float, int] | None = None) -> float:
    """ΔL: the mean next-token loss (nats per token) on held-out text, ``batches`` of
    (input_ids, attention_mask, valid) (saematch.lm.token_batches), with ``edit`` minus without
    (``clean``: :func:`clean_loss` of the same batches, computed here if not given)."""
    ce0, n = clean if clean is not None else clean_loss(model, fmt, batches)
    with edits(model, fmt, edit):
        ce1, _ = clean_loss(model, fmt, batches)
    return (ce1 - ce0) / max(n, 1)


# --- one setting on a run: what `saematch steer` prints ------------------------------------------

def theme_seeds(paths: dict, theme: dict, explanations_root: str | None = None) -> list[str]:
    """A theme's seed features as nodes (12/res/4230): its ``seeds``, or with ``query`` {text,
    layers} the residual features of those layers whose local Neuronpedia explanation contains
    the text (saematch.query.find; any case). ValueError where the query finds none."""
    if "seeds" in theme:
        return list(theme["seeds"])
    from .query import find, tables

    q = theme["query"]
    hits = find(tables(paths), site="res", layers=q["layers"], explanation=q["text"], paths=paths,
                explanations_root=explanations_root)
    if not hits.height:
        raise ValueError(f"theme {theme.get('name', '')}: no residual feature of layers {q['layers']} has an "
                         f"explanation containing {q['text']!r} in {explanations_root}")
    return [f"{L}/res/{i}" for L, i in hits.select("layer", "feature").iter_rows()]


def run_saes(paths: dict, theme: pl.DataFrame) -> dict[str, dict[int, Sae]]:
    """The SAE of each hook point (site, layer) of ``theme``, loaded from the download pointer a
    matches file of the run recorded (its ``src``, or the previous pair's ``dst``); raw, as the
    model reads it (an attention SAE is not projected through W_O here)."""
    from .graph import ResultsError, _provenance
    from .load import load_sae

    saes: dict[str, dict[int, Sae]] = {}
    for site, L in theme.select("site", "layer").unique().sort("site", "layer").iter_rows():
        pointer = None
        for layer, end in ((L, "src"), (L - 1, "dst")):
            f = paths["sites"].get(site, {}).get(layer)
            if f is not None:
                pointer = _provenance(f).get(end)
                break
        if not pointer:
            raise ResultsError(f"{paths['root']}: no matches file records the {site} SAE of layer {L}")
        saes.setdefault(site, {})[L] = load_sae(pointer)
    return saes


def compare(model, tokenizer, fmt: str, prompts: list[str], edit: dict, probe: pl.DataFrame,
            saes: dict[str, dict[int, Sae]], max_new_tokens: int = 36, seed: int = 0) -> list[dict]:
    """Per prompt, unsteered and steered generations from the same random stream, side by side,
    each with its offline scores: the ``probe`` features' :func:`presence`, the unsteered model's
    :func:`perplexity` and :func:`distinct_n` (n = 2)."""
    rows = []
    base = generate(model, tokenizer, prompts, fmt, None, max_new_tokens, seed=seed)
    steered = generate(model, tokenizer, prompts, fmt, edit, max_new_tokens, seed=seed)
    with torch.no_grad():
        for prompt, b, s in zip(prompts, base, steered):
            ids = tokenizer(prompt)["input_ids"]
            row = {"prompt": prompt}
            for name, new in (("unsteered", b), ("steered", s)):
                row[name] = tokenizer.decode(new, skip_special_tokens=True)
                row[f"{name}_presence"] = presence(model, fmt, ids, new, probe, saes)
                row[f"{name}_perplexity"] = perplexity(model, ids, new)
                row[f"{name}_distinct_2"] = distinct_n(new, 2)
            rows.append(row)
    return rows


# --- a theme's grid: what rule steer runs -------------------------------------------------------

SCOPES = ("single", "cumulative")


def grid(theme: dict) -> list[dict]:
    """The settings of one theme (its config: how, layers, scopes, schedules, values): the
    unsteered baseline first (setting 0, how 'none'), then every layer × scope × schedule ×
    value; a deactivation has no schedule (its r is the same at every layer)."""
    out = [{"setting": 0, "how": "none", "layer": None, "scope": None, "schedule": None, "value": None}]
    schedules = theme["schedules"] if theme["how"] == "activate" else [None]
    for L in theme["layers"]:
        for scope in theme["scopes"]:
            for schedule in schedules:
                for v in theme["values"]:
                    out.append({"setting": len(out), "how": theme["how"], "layer": int(L), "scope": scope,
                                "schedule": schedule, "value": float(v)})
    return out


SCORES = ("keyword_share", "presence", "perplexity", "distinct_2")


def run_theme(model, tokenizer, fmt: str, features: pl.DataFrame, seeds: list[str], saes: dict, theme: dict,
              fold: bool = True, loss_batches: list | None = None, judge_with: dict | None = None,
              log=lambda msg: None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every setting of :func:`grid` on ``theme`` (how, prompts, samples, max_tokens, keywords,
    layers, scopes, schedules, values, and an optional description for the judge).

    Returns (generations, summary). generations: one row per setting, prompt and sample with
    the text and its scores: ``keyword_share`` (the share of its words in the theme's keywords;
    0 for a text without words; null without keywords), ``presence`` (the seeds' summed activation per generated token,
    read by the unsteered model), ``perplexity`` (the unsteered model's), ``distinct_2``, and
    with ``judge_with`` (endpoint, model, key_env) the judge's ``behavioral``, ``coherence``
    and ``judge_score`` (B·C/25 to activate, (1 − B/5)·C/5 to deactivate). summary: one row per
    setting, the scores' means and standard errors over its generations, the features steered,
    and ``delta_loss`` (ΔL on ``loss_batches``; null without them). A setting whose layers hold none
    of the theme's features is listed with n_features 0 and no generations."""
    probe = features.filter(pl.col("node").is_in(seeds))
    keywords = {w.casefold() for w in theme.get("keywords") or []}
    prompt_ids = [tokenizer(p)["input_ids"] for p in theme["prompts"]]
    clean = clean_loss(model, fmt, loss_batches) if loss_batches else None  # once, not per setting
    gen_rows, summary = [], []
    for setting in grid(theme):
        edit, steered = None, []
        if setting["how"] != "none":
            layers = steered_layers(features["layer"].to_list(), setting["layer"], setting["scope"] == "cumulative")
            steered = features.filter(pl.col("layer").is_in(layers))["node"].to_list()
            if steered:
                edit = steering_edits(features, saes, layers, setting["how"], setting["value"],
                                      setting["schedule"] or "constant", fold=fold)
        row = {**setting, "n_features": len(steered), "features": steered}
        if setting["how"] != "none" and not steered:
            summary.append(row)
            continue
        new = generate(model, tokenizer, theme["prompts"], fmt, edit, theme["max_tokens"], seed=theme.get("seed", 0),
                       samples=theme["samples"])
        rows = []
        for k, tokens in enumerate(new):
            p, sample = divmod(k, theme["samples"])
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            r = {"setting": setting["setting"], "prompt": theme["prompts"][p], "sample": sample, "text": text,
                 "keyword_share": keyword_share(text, keywords) if keywords else None,
                 "presence": presence(model, fmt, prompt_ids[p], tokens, probe, saes) if probe.height else None,
                 "perplexity": perplexity(model, prompt_ids[p], tokens), "distinct_2": distinct_n(tokens, 2)}
            if judge_with:
                scores = judge_retrying(text, theme.get("description") or theme["name"], judge_with)
                r.update(behavioral=scores["behavioral"], coherence=scores["coherence"],
                         judge_score=scores["activation_score" if theme["how"] == "activate" else "deactivation_score"])
            rows.append(r)
        gen_rows += rows
        df = pl.DataFrame(rows)
        for col in [c for c in df.columns if c in SCORES or c in ("behavioral", "coherence", "judge_score")]:
            x = df[col].cast(pl.Float64).fill_nan(None).drop_nulls()  # distinct-2 of a 1-token text: NaN
            row[col] = float(x.mean()) if len(x) else None
            row[f"{col}_se"] = float(x.std() / math.sqrt(len(x))) if len(x) > 1 else None
        row["delta_loss"] = (loss_change(model, fmt, loss_batches, edit, clean) if edit else 0.0) if loss_batches else None
        summary.append(row)
        log(f"setting {setting['setting']}: {setting['how']} layer {setting['layer']} {setting['scope'] or ''} "
            f"{setting['value']}: keyword share {row.get('keyword_share')}, presence {row.get('presence')}, "
            f"perplexity {row.get('perplexity')}")
    return pl.DataFrame(gen_rows), pl.DataFrame(summary, infer_schema_length=None)


# --- the optional LLM judge (the paper's scores; never required) ---------------------------------

JUDGE_PROMPT = """You rate a short text written by a language model that was steered toward or away from a theme.
Theme: {theme}
Text: {text}
Rate two things from 0 to 5 (integers):
- "behavioral": how strongly the text is about the theme (0: not at all, 5: entirely);
- "coherence": how fluent and coherent the text is as language (0: gibberish, 5: fully coherent), whatever its topic.
Answer with a JSON object only: {{"behavioral": B, "coherence": C}}"""


def judge(text: str, theme: str, endpoint: str, model: str, key_env: str = "OPENAI_API_KEY",
          timeout: float = 60.0) -> dict[str, float]:
    """The paper's LLM-judge scores of one generation through any OpenAI-compatible chat
    endpoint (``endpoint``/chat/completions): behavioral and coherence in 0–5, and the paper's
    products normalised to [0, 1] (methods.md §2.7, our reading: /5): ``activation_score`` =
    B·C/25, ``deactivation_score`` = (1 − B/5)·C/5. The API key is read from the environment
    variable ``key_env`` (sent only where set) and never written anywhere. The prompt is ours
    (:data:`JUDGE_PROMPT`; the paper's is not published)."""
    import json
    import os
    import urllib.error
    import urllib.request

    url = endpoint.rstrip("/") + "/chat/completions"
    body = {"model": model, "temperature": 0, "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(theme=theme, text=text)}]}
    headers = {"Content-Type": "application/json"}
    if os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
        content = reply["choices"][0]["message"]["content"]
        scores = json.loads(content)
        b, c = float(scores["behavioral"]), float(scores["coherence"])
    except urllib.error.HTTPError as exc:
        raise ValueError(f"judge {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"judge {url}: cannot reach it ({getattr(exc, 'reason', exc)})") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"judge {url}: the reply is not the JSON asked for ({type(exc).__name__}: {exc})") from None
    if not (0 <= b <= 5 and 0 <= c <= 5):
        raise ValueError(f"judge {url}: scores outside 0–5 (behavioral {b:g}, coherence {c:g})")
    return {"behavioral": b, "coherence": c, "activation_score": b * c / 25, "deactivation_score": (1 - b / 5) * c / 5}


JUDGE_WAITS = (2.0, 8.0)  # seconds before a failed judge call's second and third try


def judge_retrying(text: str, theme: str, judge_with: dict) -> dict[str, float]:
    """:func:`judge` (``judge_with``: endpoint, model, key_env), tried again after each of
    :data:`JUDGE_WAITS` when it fails (a rate limit, a busy server); the last failure raises."""
    for wait in (*JUDGE_WAITS, None):
        try:
            return judge(text, theme, **judge_with)
        except ValueError:
            if wait is None:
                raise
            time.sleep(wait)
