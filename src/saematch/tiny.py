"""A tiny language model in the real Gemma 2 layout, with SAEs trained on its own activations.

The offline stand-in for Gemma 2 2B + Gemma Scope in the evaluation (saematch.evaluate): a
``Gemma2ForCausalLM`` with a word-level ``tokenizer.json`` (BOS ``<bos>`` = 2 prepended, pad 0,
as Gemma's), trained for a few hundred steps on text from a small random grammar, written with
``save_pretrained`` into a local Hugging Face cache (the demo's layout: blobs, snapshots,
refs/main). Then one JumpReLU SAE per site and layer, trained on that model's activations at
Gemma Scope's hook points (saematch.lm), written as ``params.npz`` in Gemma Scope's layout. A
separately seeded text from the same grammar is the evaluation sample. All of it takes seconds
on a CPU and is byte-for-byte reproducible for a seed, whatever the thread count.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import TINY_VERSION as VERSION  # noqa: F401 - bump it there when the grammar or training changes
from .demo import npz_bytes, write_hub_repo

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0–3
WORDS = {
    "det": ["the", "a", "every", "some", "my", "your", "this", "that"],
    "adj": ["small", "big", "red", "old", "quiet", "happy", "dark", "bright", "cold", "green"],
    "noun": ["cat", "dog", "bird", "child", "river", "house", "tree", "king", "ship", "song", "city", "stone"],
    "verb": ["sees", "likes", "follows", "finds", "hears", "builds", "paints", "carries", "watches"],
    "ivb": ["sleeps", "runs", "sings", "waits", "falls", "shines"],
    "prep": ["near", "under", "behind", "over", "beside"],
    "conj": ["and", "but", "because", "while"],
    "adv": ["slowly", "today", "again", "often", "never"],
}
# Two topics with vocabularies of their own (disjoint from WORDS and from each other): a document
# is about one of them or neither, and in a topic's document nouns, adjectives and verbs come
# from its lists half the time. A theme the steering can plant and measure (saematch.steer).
TOPICS = {
    "sea": {"adj": ["salty", "blue", "wet"], "noun": ["boat", "wave", "fish", "sailor", "harbor", "shell"],
            "verb": ["sails", "catches"], "ivb": ["swims", "floats"]},
    "forest": {"adj": ["wild", "leafy", "mossy"], "noun": ["fox", "owl", "deer", "pine", "moss", "wolf"],
               "verb": ["hunts", "climbs"], "ivb": ["grows", "howls"]},
}
TOPIC_SHARE = 0.25  # of the documents, per topic (the rest: neither)
TOPIC_WORDS = 0.5   # a topic document's nouns, adjectives and verbs from the topic's lists
PUNCT = [".", ",", "?", "!"]
SITE_SEED = {"res": 0, "mlp": 1, "att": 2}


def vocabulary() -> list[str]:
    words = {w for ws in WORDS.values() for w in ws} | {w for t in TOPICS.values() for ws in t.values() for w in ws}
    return SPECIALS + sorted(words) + PUNCT


def topic_words(topic: str) -> list[str]:
    """Every word of ``topic``'s own vocabulary (none of them occurs outside its documents)."""
    return sorted(w for ws in TOPICS[topic].values() for w in ws)


def corpus(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` documents of 2–6 sentences from a small random grammar (subject–verb agreement
    is not modelled; what matters is structure a 4-layer model can learn and SAEs can find); each
    document about one of :data:`TOPICS` (each with probability :data:`TOPIC_SHARE`) or neither."""
    rng = np.random.default_rng(seed)
    topic = None

    def pick(kind):
        own = TOPICS[topic].get(kind) if topic else None
        words = own if own and rng.random() < TOPIC_WORDS else WORDS[kind]
        return words[rng.integers(len(words))]

    def phrase():
        words = [pick("det")] + [pick("adj") for _ in range(rng.integers(0, 3))] + [pick("noun")]
        if rng.random() < 0.25:
            words += [pick("prep"), pick("det"), pick("noun")]
        return words

    def clause():
        if rng.random() < 0.4:
            return phrase() + [pick("ivb")] + ([pick("adv")] if rng.random() < 0.5 else [])
        return phrase() + [pick("verb")] + phrase()

    docs = []
    names = sorted(TOPICS)
    for _ in range(n_docs):
        u = rng.random()
        topic = names[int(u // TOPIC_SHARE)] if u < TOPIC_SHARE * len(names) else None
        sentences = []
        for _ in range(rng.integers(2, 7)):
            words = clause()
            while rng.random() < 0.3:
                words += [",", pick("conj")] + clause()
            sentences.append(" ".join(words + [PUNCT[0] if rng.random() < 0.8 else PUNCT[rng.integers(2, 4)]]))
        docs.append(" ".join(sentences))
    return docs


def tokenizer_files() -> dict[str, bytes]:
    """``tokenizer.json`` (word level, whitespace split, ``<bos>`` prepended) and its config."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 8192, "padding_side": "right"}
    return {"tokenizer.json": tok.to_str().encode(),
            "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True).encode()}


def gemma2_config(n_vocab: int, n_layers: int, d_model: int, n_heads: int):
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=n_vocab, hidden_size=d_model, intermediate_size=4 * d_model,
                        num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        num_key_value_heads=max(1, n_heads // 2), head_dim=d_model // n_heads,
                        max_position_embeddings=512, sliding_window=64, pad_token_id=0, eos_token_id=1,
                        bos_token_id=2, attn_implementation="eager", tie_word_embeddings=True)


def _token_rows(docs: list[str], tokenizer, ctx: int) -> torch.Tensor:
    """All documents' tokens (BOS first) cut into rows of ``ctx`` (the tail dropped)."""
    ids = [i for doc in docs for i in tokenizer(doc)["input_ids"]]
    n = len(ids) // ctx
    return torch.tensor(ids[: n * ctx]).view(n, ctx)


def train_model(docs: list[str], tokenizer, n_layers: int, d_model: int, n_heads: int, steps: int, seed: int):
    """A Gemma2ForCausalLM trained on ``docs`` with AdamW for ``steps`` steps (float32, CPU)."""
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(gemma2_config(len(vocabulary()), n_layers, d_model, n_heads))
    rows = _token_rows(docs, tokenizer, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (16,), generator=gen)]
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, float(loss.detach())


def train_sae(x: torch.Tensor, n_features: int, l1: float, steps: int, seed: int,
              ridge: float = 1e-3) -> dict[str, np.ndarray]:
    """A JumpReLU SAE for activations ``x`` (N, d) with unit-norm decoder rows (as Gemma Scope's).

    A ReLU SAE trained with an L1 penalty on f·‖w‖; then thresholds θ at a tenth of each
    feature's mean positive pre-activation; then the decoder refitted to the JumpReLU codes by
    ridge regression towards the trained decoder (``ridge`` × the Gram matrix's mean diagonal: a
    feature that never fires keeps its trained row instead of a zero one, and the solve stays
    well conditioned); last, each refitted row's norm c moved into the encoder (W_enc·c, b_enc·c,
    θ·c, W_dec/c: the same reconstruction). Gemma Scope's tensor names/shapes."""
    gen = torch.Generator().manual_seed(seed)
    N, d = x.shape
    scale = x.norm(dim=1).mean()
    W_dec = torch.randn(n_features, d, generator=gen)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    W_enc = (W_dec.detach().T.clone() / scale).requires_grad_()
    b_enc = torch.zeros(n_features, requires_grad=True)
    b_dec = x.mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=3e-3)
    for _ in range(steps):
        batch = x[torch.randint(N, (512,), generator=gen)]
        f = torch.relu(batch @ W_enc + b_enc)
        err = ((f @ W_dec + b_dec - batch) ** 2).sum(1).mean() / scale**2
        loss = err + l1 * (f * W_dec.norm(dim=1)).sum(1).mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pre = x @ W_enc + b_enc
        pos = torch.where(pre > 0, pre, torch.zeros(()))
        threshold = (0.1 * pos.sum(0) / (pre > 0).sum(0).clamp(min=1)).clamp(min=1e-3)
        f = pre * (pre > threshold)
        A = torch.cat([f, torch.ones(N, 1)], 1).double()
        gram = A.T @ A
        lam = ridge * gram.diagonal().mean()
        prior = torch.cat([W_dec, b_dec[None]]).double()
        sol = torch.linalg.solve(gram + lam * torch.eye(n_features + 1, dtype=torch.float64),
                                 A.T @ x.double() + lam * prior).float()
        norms = sol[:-1].norm(dim=1)
        return {"W_enc": (W_enc * norms).numpy(), "b_enc": (b_enc * norms).numpy(),
                "W_dec": (sol[:-1] / norms[:, None]).numpy(), "b_dec": sol[-1].numpy(),
                "threshold": (threshold * norms).numpy()}


@contextlib.contextmanager
def one_thread():
    """torch (and its BLAS) on one thread for the block: a threaded BLAS splits long sums by
    the thread count, so the same build on 1 or 16 cores would differ in the last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@one_thread()
def make_tiny(cache_dir: str | Path, model_repo: str, site_repos: dict[str, str], paths: dict[str, list[str]],
              n_layers: int, d_model: int, n_heads: int, n_features: int, text_path: str | Path,
              seed: int = 0, train_docs: int = 3000, eval_docs: int = 400, model_steps: int = 120,
              sae_steps: int = 150, l1: float = 0.1, hub_path: str | Path | None = None) -> dict:
    """Write the tiny model, its SAEs (``paths[site][L]``: the params.npz path in the repo) and
    the evaluation text (one document per line); return a manifest with each SAE's L0 and EV on
    its training activations and the model's final training loss (also written as JSON to
    ``hub_path`` if given). Runs torch on one thread, so its bytes do not depend on the caller's."""
    from transformers import AutoTokenizer

    from .lm import read_sites

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tokenizer_files().items():
            Path(tmp, name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        docs = corpus(train_docs, seed)
        model, loss = train_model(docs, tokenizer, n_layers, d_model, n_heads, model_steps, seed)
        model.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    manifest = {"repos": {}, "train_loss": round(loss, 4), "saes": {}}
    manifest["repos"][model_repo] = {"commit": write_hub_repo(cache_dir, model_repo, files), "files": sorted(files)}

    rows = _token_rows(docs, tokenizer, 64)[:400]
    mask = torch.ones_like(rows, dtype=torch.bool)
    mask[:, 0] = False  # the BOS of the first document in each row is out of distribution
    mask &= rows != 2
    with torch.no_grad():
        acts = read_sites(model, "gemma-scope", rows, torch.ones_like(rows), {s: range(n_layers) for s in site_repos})
    for site, repo in site_repos.items():
        sae_files = {}
        for L in range(n_layers):
            x = acts[site][L][mask].float()
            params = train_sae(x, n_features, l1, sae_steps, seed + 100 * L + SITE_SEED[site])
            f = x @ torch.from_numpy(params["W_enc"]) + torch.from_numpy(params["b_enc"])
            f = f * (f > torch.from_numpy(params["threshold"]))
            xh = f @ torch.from_numpy(params["W_dec"]) + torch.from_numpy(params["b_dec"])
            ev = 1 - float(((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
            manifest["saes"][f"{site}/{L}"] = {"l0": round(float((f > 0).sum(1).float().mean()), 2), "ev": round(ev, 4)}
            sae_files[paths[site][L]] = npz_bytes({k: v.astype(np.float32) for k, v in params.items()})
        manifest["repos"][repo] = {"commit": write_hub_repo(cache_dir, repo, sae_files), "files": sorted(sae_files)}
    Path(text_path).parent.mkdir(parents=True, exist_ok=True)
    Path(text_path).write_text("\n".join(corpus(eval_docs, seed + 1)) + "\n")
    if hub_path is not None:
        Path(hub_path).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
