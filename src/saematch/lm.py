"""Run the language model (transformers) and read activations at the SAEs' hook points.

Hook points (sae_formats.md §1, §2.1, §3): Gemma Scope reads ``resid_post`` (decoder layer
output), ``mlp_out`` *after* the post-feedforward RMSNorm, and attention ``hook_z`` (the
concatenated per-head outputs, the input of ``o_proj``); Llama Scope reads ``resid_post``,
``mlp_out`` (the MLP's output) and ``attn_out`` (``o_proj``'s output). :func:`check_hooks`
verifies them against the model's own hidden states. Token masks: BOS (and position 0) and
padding are never read.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import SaeError

log = logging.getLogger(__name__)

# site → (submodule of a decoder layer, "input" or "output" of it)
HOOKS = {
    "gemma-scope": {"res": ("", "output"), "mlp": ("post_feedforward_layernorm", "output"),
                    "att": ("self_attn.o_proj", "input")},
    "llama-scope": {"res": ("", "output"), "mlp": ("mlp", "output"), "att": ("self_attn.o_proj", "output")},
}


def _tensor(out):
    return out[0] if isinstance(out, tuple) else out


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.model.layers


@contextmanager
def hooks(model, fmt: str, read: dict[str, list[int]], replace: dict[int, callable] | None = None):
    """Within the block, each forward pass fills ``caps[site][L]`` (B, T, d) for the layers in
    ``read[site]``, and ``replace[L](x, caps)`` → x̂ becomes residual layer L's output (read
    sites of earlier layers of the same pass are in ``caps``). Yields ``caps``."""
    caps: dict[str, dict[int, torch.Tensor]] = {site: {} for site in read}
    handles = []
    layers = decoder_layers(model)
    try:
        for site, Ls in read.items():
            for L in Ls:
                module, side = _site_module(model, fmt, site, L)
                if side == "input":
                    handles.append(module.register_forward_pre_hook(
                        lambda mod, args, s=site, L=L: caps[s].__setitem__(L, args[0])))
                else:
                    handles.append(module.register_forward_hook(
                        lambda mod, args, out, s=site, L=L: caps[s].__setitem__(L, _tensor(out))))
        for L, fn in (replace or {}).items():
            def swap(mod, args, out, fn=fn):
                new = fn(_tensor(out), caps).to(_tensor(out).dtype)
                return (new, *out[1:]) if isinstance(out, tuple) else new
            handles.append(layers[L].register_forward_hook(swap))
        yield caps
    finally:
        for h in handles:
            h.remove()



def _site_module(model, fmt: str, site: str, L: int):
    """(module, side) where ``fmt`` reads its ``site`` SAEs at decoder layer L."""
    path, side = HOOKS[fmt][site]
    layer = decoder_layers(model)[L]
    try:
        return (layer.get_submodule(path) if path else layer), side
    except AttributeError:
        raise SaeError(f"{type(model).__name__} layer {L} has no module {path!r}, where {fmt} "
                       f"reads its {site} SAEs: the model and the SAE format do not fit") from None


@contextmanager
def edits(model, fmt: str, edit: dict[tuple[str, int], callable]):
    """Within the block, the activation x (B, T, d) at each hook point (site, L) of ``edit``
    (the point the SAEs read, :data:`HOOKS`) becomes ``edit[site, L](x)`` for the rest of the
    forward pass (steering: saematch.steer)."""
    handles = []
    try:
        for (site, L), fn in edit.items():
            module, side = _site_module(model, fmt, site, L)
            if side == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda mod, args, fn=fn: (fn(args[0]).to(args[0].dtype), *args[1:])))
            else:
                def swap(mod, args, out, fn=fn):
                    new = fn(_tensor(out)).to(_tensor(out).dtype)
                    return (new, *out[1:]) if isinstance(out, tuple) else new
                handles.append(module.register_forward_hook(swap))
        yield
    finally:
        for h in handles:
            h.remove()

def read_sites(model, fmt: str, input_ids, attention_mask, read: dict[str, list[int]]) -> dict[str, dict[int, torch.Tensor]]:
    """One forward pass; the activations at ``read`` (site → layers), as site → layer → (B, T, d)."""
    with torch.no_grad(), hooks(model, fmt, read) as caps:
        model(input_ids=input_ids, attention_mask=attention_mask)
    return caps


def check_hooks(model, fmt: str, input_ids, attention_mask, valid, rtol: float | None = None) -> dict[str, float]:
    """The hooks against the model's hidden states, on the ``valid`` tokens of a batch.

    resid_post[L] = hidden_states[L + 1] (the last one: the final norm of it), relative to the
    state's norm; and the residual update of each layer is exactly its two read site outputs:
    Gemma 2 resid_post − resid_pre − mlp_out − post_attention_norm(o_proj(z)) = 0, Llama
    resid_post − resid_pre − mlp_out − attn_out = 0, relative to the norm of the terms' summed
    magnitudes (what a 16-bit model's own additions round against: ≈ 4·10⁻³ in bfloat16).
    Raises SaeError when an error exceeds ``rtol`` (None: 2·10⁻³ for a float32 model, 3·10⁻²
    for 16 bits; on the tiny model right hooks give 2·10⁻⁸ / 1·10⁻³, the MLP read before its
    norm 0.07); returns the largest per check.
    """
    if rtol is None:
        rtol = 2e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2
    n = len(decoder_layers(model))
    with torch.no_grad():
        with hooks(model, fmt, {s: list(range(n)) for s in ("res", "mlp", "att")}) as caps:
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        errors = _hook_errors(model, fmt, caps, out.hidden_states, valid)
    for name, err in errors.items():
        if err > rtol:
            raise SaeError(f"hook check failed: {name} differs from the model's hidden states by a relative "
                           f"{err:.2g} (> {rtol:g}); this transformers version computes {type(model).__name__} "
                           "differently from the hook points saematch.lm reads")
    return errors


def _hook_errors(model, fmt, caps, hs, valid) -> dict[str, float]:
    n = len(decoder_layers(model))
    rel = lambda a, b: float((a - b)[valid].float().norm() / b[valid].float().norm().clamp(min=1e-12))  # noqa: E731
    errors = {"resid_post": 0.0, "update": 0.0}
    layers = decoder_layers(model)
    for L in range(n):
        res = caps["res"][L]
        expect = hs[L + 1] if L < n - 1 else None
        if expect is None:
            errors["resid_post"] = max(errors["resid_post"], rel(model.model.norm(res), hs[n]))
        else:
            errors["resid_post"] = max(errors["resid_post"], rel(res, expect))
        att = caps["att"][L]
        if fmt == "gemma-scope":
            att = layers[L].post_attention_layernorm(layers[L].self_attn.o_proj(att))
        parts = [res, hs[L], caps["mlp"][L], att]
        res_, pre, mlp, att = (t[valid].float() for t in parts)
        scale = (res_.abs() + pre.abs() + mlp.abs() + att.abs()).norm().clamp(min=1e-12)
        errors["update"] = max(errors["update"], float((res_ - pre - mlp - att).norm() / scale))
    return errors


def load_lm(files: dict[str, str], device: str = "cpu", dtype: str = "auto"):
    """The model and tokenizer from the downloaded files (role → local path; all in one snapshot
    folder). ``dtype`` auto: bfloat16 on CUDA, float32 on the CPU. Gemma 2 runs eager attention
    (its logit soft-capping)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if "config.json" not in files:
        raise SaeError(f"model files {sorted(files)}: no config.json; list it in the catalog's model.files")
    folder = str(Path(files["config.json"]).parent)
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    config = AutoConfig.from_pretrained(folder)
    extra = {"attn_implementation": "eager"} if config.model_type.startswith("gemma") else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **extra)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def read_documents(path: str, column: str = "text") -> list[str]:
    """Documents from a local text file (one per non-empty line) or a Parquet file's ``column``."""
    p = Path(path)
    if not p.is_file():
        raise SaeError(f"{path}: text sample not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p, columns=[column])
        except Exception as exc:  # pyarrow's errors name neither file nor column well
            raise SaeError(f"{path}: cannot read column {column!r}: {exc}") from exc
        docs = [d for d in table.column(column).to_pylist() if isinstance(d, str) and d.strip()]
    else:
        try:
            docs = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise SaeError(f"{path}: not UTF-8 text: {exc}") from exc
    if not docs:
        raise SaeError(f"{path}: no documents (empty file or column)")
    return docs


def first_valid(valid: torch.Tensor, n: int) -> torch.Tensor:
    """``valid`` (B, T) cut to its first ``n`` True entries in reading order (row by row)."""
    if int(valid.sum()) <= n:
        return valid
    return valid & (valid.flatten().cumsum(0) <= n).view_as(valid)


def token_batches(docs: list[str], tokenizer, n_tokens: int, context: int, batch_size: int):
    """Batches (input_ids, attention_mask, valid) of up to ``batch_size`` documents, each
    truncated to ``context`` tokens, until ``n_tokens`` valid tokens are reached (the last
    batch's valid mask is cut there). valid = not padding, not BOS, not position 0."""
    bos = tokenizer.bos_token_id
    seen = 0
    for start in range(0, len(docs), batch_size):
        enc = tokenizer(docs[start:start + batch_size], truncation=True, max_length=context,
                        padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        valid = mask.bool() & (ids != bos) if bos is not None else mask.bool()
        valid[:, 0] = False
        valid = first_valid(valid, n_tokens - seen)
        seen += int(valid.sum())
        yield ids, mask, valid
        if seen >= n_tokens:
            return
    if seen < n_tokens:
        log.warning("the text sample has %d valid tokens, fewer than the %d asked for", seen, n_tokens)
