"""Gemma Scope and Llama Scope files → one in-memory JumpReLU form (:class:`Sae`).

Shapes come from the files. Every problem raises :class:`SaeError` naming the file.
Formats: ../shared/reference/sae_formats.md (§2.3 Gemma Scope, §3.3–3.5 Llama Scope).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zipfile

import numpy as np
import torch
from safetensors import safe_open

from .sae import Sae, SaeError, check_sae

log = logging.getLogger(__name__)

GEMMA_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
LLAMA_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def load_gemma_scope(path: str, source: dict | None = None) -> Sae:
    """Read a Gemma Scope ``params.npz`` (W_enc (d, F), b_enc, W_dec (F, d), b_dec, threshold)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise SaeError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise SaeError(f"{path}: not a readable .npz (truncated or corrupt download?): {exc}") from exc
    # SAELens accepts lower-case variants (w_enc …); map them to the stored names.
    by_lower = {k.lower(): k for k in arrays}
    tensors = {}
    for key in GEMMA_KEYS:
        found = by_lower.get(key.lower())
        if found is None:
            raise SaeError(f"{path}: missing key {key!r} (file has {sorted(arrays)})")
        tensors[key] = torch.from_numpy(np.asarray(arrays.pop(found), dtype=np.float32))
    scaling = arrays.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise SaeError(f"{path}: non-unit 'scaling_factor' is not supported (values {np.unique(scaling)[:4]})")
    if arrays:
        raise SaeError(f"{path}: unexpected keys {sorted(arrays)}")
    return check_sae(Sae(**tensors, source=dict(source or {}, format="gemma-scope")), path)


def _check_safetensors_complete(path: str) -> None:
    """The header's data offsets must end exactly at the end of the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise SaeError(f"{path}: truncated safetensors file (header of {n} bytes, file {size} bytes)")
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise SaeError(f"{path}: file not found") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaeError(f"{path}: not a safetensors file (truncated or corrupt?): {exc}") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise SaeError(f"{path}: truncated safetensors file ({size} bytes, header says {8 + n + end})")


def _read_safetensors(path: str, keys) -> dict[str, torch.Tensor]:
    _check_safetensors_complete(path)
    with safe_open(path, framework="pt") as fh:
        have = set(fh.keys())
        missing = [k for k in keys if k not in have]
        if missing:
            raise SaeError(f"{path}: missing key(s) {missing} (file has {sorted(have)})")
        return {k: fh.get_tensor(k).to(torch.float32) for k in keys}


def load_llama_scope(weights_path: str, hyperparams_path: str, source: dict | None = None) -> Sae:
    """Read a Llama Scope SAE with the official (LM-SAEs 2024) semantics, sae_formats.md §3.5.

    With c_in = √d / norm_in, c_out = √d / norm_out, n_i = ‖decoder.weight[:, i]‖ and
    s_i = n_i·c_in/c_out (1 when ``sparsity_include_decoder_norm`` is false), on raw input:
    W_enc[:, i] = encoder.weight[i]·s_i,  b_enc[i] = encoder.bias[i]·s_i / c_in,
    W_dec[i] = decoder.weight[:, i]·(c_in/c_out)/s_i (unit rows),  b_dec = decoder.bias / c_out,
    threshold = the scalar ``jump_relu_threshold`` broadcast to (F,).
    """
    try:
        with open(hyperparams_path) as fh:
            hp = json.load(fh)
    except FileNotFoundError:
        raise SaeError(f"{hyperparams_path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SaeError(f"{hyperparams_path}: not valid JSON (truncated?): {exc}") from exc
    for key in ("d_model", "jump_relu_threshold", "norm_activation"):
        if key not in hp:
            raise SaeError(f"{hyperparams_path}: missing key {key!r}")
    t = _read_safetensors(weights_path, LLAMA_KEYS)
    W_enc_raw, b_enc_raw = t["encoder.weight"], t["encoder.bias"]  # (F, d), (F,)
    W_dec_raw, b_dec_raw = t["decoder.weight"], t["decoder.bias"]  # (d, F), (d,)
    if W_enc_raw.ndim != 2 or W_dec_raw.ndim != 2 or W_dec_raw.shape != W_enc_raw.T.shape:
        raise SaeError(
            f"{weights_path}: encoder.weight {tuple(W_enc_raw.shape)} and decoder.weight "
            f"{tuple(W_dec_raw.shape)} are not (F, d) and (d, F)"
        )
    d = W_dec_raw.shape[0]
    if int(hp["d_model"]) != d:
        raise SaeError(f"{weights_path}: d_model {d} differs from hyperparams.json's {hp['d_model']}")
    if hp["norm_activation"] == "dataset-wise":
        norms = hp.get("dataset_average_activation_norm")
        if not isinstance(norms, dict) or not {"in", "out"} <= set(norms):
            raise SaeError(f"{hyperparams_path}: missing key 'dataset_average_activation_norm' {{in, out}}")
        c_in, c_out = math.sqrt(d) / float(norms["in"]), math.sqrt(d) / float(norms["out"])
    elif hp["norm_activation"] in ("inference", "none", None):
        c_in = c_out = 1.0
    else:
        raise SaeError(f"{hyperparams_path}: unsupported norm_activation {hp['norm_activation']!r}")
    n = W_dec_raw.norm(dim=0)  # (F,)
    if not torch.isfinite(n).all() or (n == 0).any():
        raise SaeError(f"{weights_path}: decoder.weight has NaN/Inf or all-zero columns")
    s = n * (c_in / c_out) if hp.get("sparsity_include_decoder_norm", True) else torch.ones_like(n)
    theta = float(hp["jump_relu_threshold"])
    sae = Sae(
        W_enc=(W_enc_raw * s[:, None]).T.contiguous(),  # (d, F)
        b_enc=b_enc_raw * s / c_in,
        W_dec=(W_dec_raw * (c_in / c_out) / s).T.contiguous(),  # (F, d)
        b_dec=b_dec_raw / c_out,
        threshold=torch.full((W_dec_raw.shape[1],), theta, dtype=torch.float32),
        source=dict(source or {}, format="llama-scope", scalar_threshold=theta,
                    c_in=c_in, c_out=c_out, decoder_norm_min=float(n.min()),
                    decoder_norm_max=float(n.max())),
    )
    log.info("%s: c_in %.4g c_out %.4g decoder norms %.4g–%.4g θ %.4g",
             weights_path, c_in, c_out, float(n.min()), float(n.max()), theta)
    return check_sae(sae, weights_path)


def load_att_projection(model_files: dict[str, str], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s o_proj (d_model, d_z) and post-attention RMSNorm weight g (d_model,).

    ``model_files`` maps repo filenames to local paths: either a single
    ``model.safetensors`` or ``model.safetensors.index.json`` plus its shards.
    """
    keys = (f"model.layers.{layer}.self_attn.o_proj.weight",
            f"model.layers.{layer}.post_attention_layernorm.weight")
    index = model_files.get("model.safetensors.index.json")
    if index is not None:
        try:
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise SaeError(f"{index}: unreadable safetensors index: {exc}") from exc
        found = {}
        for key in keys:
            if key not in weight_map:
                raise SaeError(f"{index}: no tensor {key!r} (layer {layer} not in the model?)")
            shard = weight_map[key]
            if shard not in model_files:
                raise SaeError(f"{index}: {key} lives in {shard}, which was not downloaded")
            found.update(_read_safetensors(model_files[shard], [key]))
        where = index
    else:
        where = model_files.get("model.safetensors")
        if where is None:
            raise SaeError(f"model files {sorted(model_files)}: need model.safetensors or its index")
        found = _read_safetensors(where, keys)
    o_proj, gain = found[keys[0]], found[keys[1]]
    if o_proj.ndim != 2 or gain.shape != (o_proj.shape[0],):
        raise SaeError(f"{where}: o_proj {tuple(o_proj.shape)} and norm {tuple(gain.shape)} do not fit")
    return o_proj, gain


def project_att(sae: Sae, o_proj: torch.Tensor, gain: torch.Tensor, where: str = "att projection") -> Sae:
    """Map a hook_z SAE's decoder into the residual stream: v_i = (1 + g) ⊙ (W_O u_i).

    Gemma's RMSNorm scales by (1 + g); its per-token rescale keeps directions. The encoder
    reads z, not the residual stream, so it is dropped: match such SAEs on decoder terms.
    """
    if o_proj.shape[1] != sae.d_out:
        raise SaeError(f"{where}: o_proj is {tuple(o_proj.shape)} but the SAE decodes to {sae.d_out}-d z")
    scale = 1.0 + gain  # (d_model,)
    return check_sae(
        Sae(W_enc=None, b_enc=None,
            W_dec=(sae.W_dec @ o_proj.T) * scale,  # (F, d_model)
            b_dec=(sae.b_dec @ o_proj.T) * scale,
            threshold=sae.threshold,
            source=dict(sae.source, projected="o_proj+post_attention_layernorm")),
        where,
    )


def load_sae(pointer: dict) -> Sae:
    """Load the SAE a download pointer names (see :func:`saematch.hub.fetch`)."""
    from .hub import resolve_files

    paths = resolve_files(pointer)
    source = {k: pointer.get(k) for k in ("repo_id", "revision", "commit", "files")}
    fmt = pointer.get("format")
    if fmt == "gemma-scope":
        return load_gemma_scope(paths["params"], dict(source, where=paths["params"]))
    if fmt == "llama-scope":
        return load_llama_scope(paths["weights"], paths["hyperparams"], dict(source, where=paths["weights"]))
    raise SaeError(f"{pointer.get('repo_id')}: unknown SAE format {fmt!r}")

