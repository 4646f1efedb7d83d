"""Llama Scope loader vs an oracle written from the official LM-SAEs code (not from sae_formats.md).

Source followed: OpenMOSS/Language-Model-SAEs, ``src/lm_saes/sae.py`` at the Llama Scope release
(commit 4ec6f0aa "Mega Update: Llama Scope SAEs", 2024-10-26; same semantics at 5e5527b7 and
8c61d1d7), class ``SparseAutoEncoder``:

* ``from_pretrained`` → ``from_config``: after loading the raw state dict,
  - if ``norm_activation == "dataset-wise"``: ``standardize_parameters_of_dataset_activation_scaling``
    with c_in = √d_model / norm["in"], c_out = √d_model / norm["out"]:
    encoder.bias /= c_in, decoder.bias /= c_out, decoder.weight *= c_in / c_out,
    and the config's norm_activation becomes "inference";
  - then, if ``sparsity_include_decoder_norm``: ``transform_to_unit_decoder_norm`` with the norms of
    the (already rescaled) decoder columns: decoder.weight /= n, encoder.weight rows *= n,
    encoder.bias *= n;
  - act_fn "jumprelu" (the Llama Scope hyperparams) stays JumpReLU with the scalar threshold.
* ``compute_norm_factor``: "token-wise" √d/‖x‖ per token, "batch-wise" √d/mean‖x‖, "dataset-wise"
  √d/norm[hook], anything else ("inference", "none", null) → 1. So "inference" and "none" are
  treated identically by the official code.
* ``encode``: x ← x · norm_factor("in"); hidden_pre = encoder(x) (no decoder-bias subtraction:
  ``apply_decoder_bias_to_pre_encoder`` is false for Llama Scope); the JumpReLU activation
  ``hidden_pre.where(hidden_pre > jump_relu_threshold, 0)`` (strict >).
* ``decode``: decoder(feature_acts); ``compute_loss``'s aux "reconstructed" divides by
  norm_factor("out") (1 once the model is in "inference" mode), i.e. the reconstruction of the raw
  activation, as in the official notebook ``examples/loading_llamascope_saes.ipynb`` (2024-10-30,
  raw ``blocks.15.hook_resid_post`` in, L0 ≈ 50 and MSE 0.008 out).

With the decoder-norm fold, the JumpReLU gate therefore sees n'_i · hidden_pre_i, where n'_i is the
decoder column norm *after* the dataset-norm fold (n_i · c_in / c_out), and the decoder direction is
unit-normalised. Later LM-SAEs code (2025, ``SparseAutoEncoder.encode`` with ``sparsity_scores =
hidden_pre * decoder_norm`` in the normalised space and a learned ``log_jumprelu_threshold``) gates
on n_i · hidden_pre without the 1/c_out; it no longer reads ``jump_relu_threshold``, so it is not the
route for these checkpoints. SAELens (jbloomAus/SAELens ``sae_lens/loading/pretrained_sae_loaders.py``,
``get_llama_scope_config_from_hf`` / ``llama_scope_sae_huggingface_loader``) keeps the raw weights,
normalises only the input ("expected_average_only_in", θ · c_in) and folds no decoder norms; it is
not used as the oracle either.

The oracle below re-implements those steps on the raw checkpoint tensors (written here, not copied).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saematch.load import load_llama_scope
from saematch.sae import SaeError, encode, reconstruct
from conftest import llama_files


# --- oracle: the official 2024 LM-SAEs route, step by step -------------------------------

def _norm_factor(mode, x: torch.Tensor, hp: dict, side: str) -> torch.Tensor | float:
    """``SparseAutoEncoder.compute_norm_factor`` for hook ``side`` ("in" / "out")."""
    d = hp["d_model"]
    if mode == "token-wise":
        return math.sqrt(d) / x.norm(dim=-1, keepdim=True)
    if mode == "batch-wise":
        return math.sqrt(d) / x.norm(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
    if mode == "dataset-wise":
        return math.sqrt(d) / hp["dataset_average_activation_norm"][side]
    return 1.0  # "inference", "none", null: parameters already in raw units


def official_forward(x: torch.Tensor, tensors: dict, hp: dict, return_features: bool = False):
    """Reconstruction (and feature activations) of raw activations x (..., d) by the official model."""
    sd = {k: v.to(torch.float64).clone() for k, v in tensors.items()}
    x = x.to(torch.float64)
    mode = hp["norm_activation"]
    # from_config, step 1: dataset-norm standardisation; the model then runs in "inference" mode.
    if mode == "dataset-wise":
        c_in = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
        c_out = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
        sd["encoder.bias"] = sd["encoder.bias"] / c_in
        sd["decoder.bias"] = sd["decoder.bias"] / c_out
        sd["decoder.weight"] = sd["decoder.weight"] * (c_in / c_out)
        mode = "inference"
    # from_config, step 2: unit decoder columns, norms (of the rescaled decoder) moved to the encoder.
    if hp.get("sparsity_include_decoder_norm", True):  # SAEConfig's default is True
        n = sd["decoder.weight"].norm(dim=0)  # (F,)
        sd["decoder.weight"] = sd["decoder.weight"] / n
        sd["encoder.weight"] = sd["encoder.weight"] * n[:, None]
        sd["encoder.bias"] = sd["encoder.bias"] * n
    # encode: input normalisation, encoder, JumpReLU against the scalar threshold.
    x_in = x * _norm_factor(mode, x, hp, "in")
    hidden_pre = x_in @ sd["encoder.weight"].T + sd["encoder.bias"]
    f = hidden_pre.where(hidden_pre > hp["jump_relu_threshold"], torch.zeros_like(hidden_pre))
    # decode, then back to raw output units (compute_loss's reconstructed / label_norm_factor).
    recon = (f @ sd["decoder.weight"].T + sd["decoder.bias"]) / _norm_factor(mode, x, hp, "out")
    return (recon, f) if return_features else recon


# --- helpers ---------------------------------------------------------------------------------

def write_llama(folder: Path, tensors: dict, hp: dict, dtype=torch.float32):
    """hyperparams.json + checkpoints/final.safetensors in the Hub layout."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    w, h = folder / "checkpoints/final.safetensors", folder / "hyperparams.json"
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, w)
    h.write_text(json.dumps(hp))
    return w, h


def loader_forward(w: Path, h: Path, x: torch.Tensor):
    sae = load_llama_scope(str(w), str(h))
    return reconstruct(sae, x), encode(sae, x)


# --- hand-computed cases: d = 2, F = 2, θ = 1 -------------------------------------------------
#
# encoder.weight rows w0 = (0.1, 0.1), w1 = (0.4, 0.3); encoder.bias b = (0.3, 0.6)
# decoder.weight columns u0 = (1.2, 1.6) (norm 2), u1 = (0.3, -0.4) (norm 0.5); decoder.bias (0.2, -0.4)
# inputs x = (1, 2) and x' = (2, 3):  w0·x = 0.3, w1·x = 1.0;  w0·x' = 0.5, w1·x' = 1.7.

HAND_TENSORS = {
    "encoder.weight": torch.tensor([[0.1, 0.1], [0.4, 0.3]]),
    "encoder.bias": torch.tensor([0.3, 0.6]),
    "decoder.weight": torch.tensor([[1.2, 0.3], [1.6, -0.4]]),
    "decoder.bias": torch.tensor([0.2, -0.4]),
}
HAND_X = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
# dataset-wise with norm_in ≠ norm_out: c_in = √2/norm_in = 3, c_out = √2/norm_out = 2.
HAND_NORMS = {"in": math.sqrt(2) / 3, "out": math.sqrt(2) / 2}

HAND_CASES = {
    # dataset-wise, decoder norm included. Fold: b/c_in = (0.1, 0.2); decoder ×c_in/c_out = ×1.5, so
    # n' = (3, 0.75); b_dec/c_out = (0.1, -0.2). Gate on n'·(w·x + b/3):
    #  x : f0 = 3·(0.3+0.1) = 1.2 > 1 fires; f1 = 0.75·(1.0+0.2) = 0.9 ≤ 1 off
    #      x̂ = 1.2·u0/2 + (0.1,-0.2) = 1.2·(0.6,0.8) + (0.1,-0.2) = (0.82, 0.76)
    #  x': f0 = 3·(0.5+0.1) = 1.8 fires; f1 = 0.75·(1.7+0.2) = 1.425 fires
    #      x̂ = 1.8·(0.6,0.8) + 1.425·(0.6,-0.8) + (0.1,-0.2) = (1.08+0.855+0.1, 1.44-1.14-0.2) = (2.035, 0.10)
    # (The 2025 normalised-space gate n·(3 w·x + b) would give f1 = 0.5·3.6 = 1.8 on x and fire.)
    ("dataset-wise", True): [[0.82, 0.76], [2.035, 0.10]],
    # dataset-wise, decoder norm not included. Gate on h = w·x + b/3; decoder 1.5·u_i:
    #  x : h = (0.4, 1.2): only f1 = 1.2 fires; x̂ = 1.2·1.5·(0.3,-0.4) + (0.1,-0.2) = (0.64, -0.92)
    #  x': h = (0.6, 1.9): only f1 = 1.9 fires; x̂ = 2.85·(0.3,-0.4) + (0.1,-0.2) = (0.955, -1.34)
    ("dataset-wise", False): [[0.64, -0.92], [0.955, -1.34]],
    # inference (c_in = c_out = 1), decoder norm included. h = w·x + b; gate on n·h, n = (2, 0.5):
    #  x : h = (0.6, 1.6): f0 = 1.2 fires, f1 = 0.8 off; x̂ = 1.2·(0.6,0.8) + (0.2,-0.4) = (0.92, 0.56)
    #  x': h = (0.8, 2.3): f0 = 1.6, f1 = 1.15 fire;
    #      x̂ = 1.6·(0.6,0.8) + 1.15·(0.6,-0.8) + (0.2,-0.4) = (0.96+0.69+0.2, 1.28-0.92-0.4) = (1.85, -0.04)
    ("inference", True): [[0.92, 0.56], [1.85, -0.04]],
    # inference, decoder norm not included. Gate on h itself, decode with raw u_i:
    #  x : only f1 = 1.6 fires; x̂ = 1.6·(0.3,-0.4) + (0.2,-0.4) = (0.68, -1.04)
    #  x': only f1 = 2.3 fires; x̂ = 2.3·(0.3,-0.4) + (0.2,-0.4) = (0.89, -1.32)
    ("inference", False): [[0.68, -1.04], [0.89, -1.32]],
}
# The official compute_norm_factor returns 1 for anything but token-/batch-/dataset-wise, and
# from_config folds only "dataset-wise": "none" and null behave exactly like "inference".
HAND_CASES |= {(m, s): HAND_CASES[("inference", s)] for m in ("none", None) for s in (True, False)}


def hand_hp(norm_activation, include_decoder_norm: bool) -> dict:
    return {"d_model": 2, "d_sae": 2, "act_fn": "jumprelu", "jump_relu_threshold": 1.0,
            "norm_activation": norm_activation, "dataset_average_activation_norm": HAND_NORMS,
            "sparsity_include_decoder_norm": include_decoder_norm, "top_k": 1}


@pytest.mark.parametrize("mode,include", sorted(HAND_CASES, key=str), ids=str)
def test_official_forward_gives_the_hand_computed_reconstruction(mode, include):
    expected = torch.tensor(HAND_CASES[(mode, include)], dtype=torch.float64)
    got = official_forward(HAND_X, HAND_TENSORS, hand_hp(mode, include))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,include", sorted(HAND_CASES, key=str), ids=str)
def test_llama_loader_gives_the_hand_computed_reconstruction_on_raw_input(tmp_path, mode, include):
    w, h = write_llama(tmp_path, HAND_TENSORS, hand_hp(mode, include))
    recon, _ = loader_forward(w, h, HAND_X)
    expected = torch.tensor(HAND_CASES[(mode, include)])
    torch.testing.assert_close(recon, expected, rtol=1e-5, atol=1e-5)


def test_hand_cases_separate_the_decoder_norm_settings_and_the_norm_modes():
    """The hand cases are discriminating: each flag and each mode change the answer."""
    for mode in ("dataset-wise", "inference"):
        assert HAND_CASES[(mode, True)] != HAND_CASES[(mode, False)]
    for include in (True, False):
        assert HAND_CASES[("dataset-wise", include)] != HAND_CASES[("inference", include)]


def test_sparsity_include_decoder_norm_defaults_to_true_as_in_the_official_config(tmp_path):
    hp = hand_hp("dataset-wise", True)
    del hp["sparsity_include_decoder_norm"]
    w, h = write_llama(tmp_path, HAND_TENSORS, hp)
    recon, _ = loader_forward(w, h, HAND_X)
    torch.testing.assert_close(recon, torch.tensor(HAND_CASES[("dataset-wise", True)]), rtol=1e-5, atol=1e-5)


# --- random cases: every (norm_activation, sparsity_include_decoder_norm), f32 and bf16 ---------

MODES = ["dataset-wise", "inference", "none", None]


def random_case(tmp_path, mode, include, dtype, norm_in, norm_out):
    w, h, _, hp = llama_files(tmp_path, norm_in=norm_in, norm_out=norm_out, theta=1.0, dtype=dtype,
                              norm_activation=mode, sparsity_include_decoder_norm=include)
    stored = {k: v.float() for k, v in load_file(w).items()}  # the values actually on disk
    # raw activations at the dataset's scale (‖x‖ ≈ norm_in), as the SAE sees them
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1)) * (norm_in / 4)
    return w, h, stored, hp, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("norm_in,norm_out", [(8.0, 8.0), (4.0, 1.5)], ids=["in=out", "in≠out"])
@pytest.mark.parametrize("include", [True, False], ids=["decnorm", "no-decnorm"])
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_llama_loader_matches_the_official_forward_on_random_checkpoints(tmp_path, mode, include, dtype,
                                                                         norm_in, norm_out):
    w, h, stored, hp, x = random_case(tmp_path, mode, include, dtype, norm_in, norm_out)
    want_recon, want_f = official_forward(x, stored, hp, return_features=True)
    recon, f = loader_forward(w, h, x)
    # not vacuous: a substantial share of features fire, and not all of them
    fire = (want_f > 0).double().mean().item()
    assert 0.1 < fire < 0.9, fire
    # not vacuous: the decoder-norm flag changes which features fire, on the same file and input
    other = dict(hp, sparsity_include_decoder_norm=not include)
    _, other_f = official_forward(x, stored, other, return_features=True)
    flipped = ((want_f > 0) != (other_f > 0)).double().mean().item()
    assert flipped > 0.05, flipped  # ≥ 5 % of all (token, feature) gate decisions
    # the loader's gates and reconstruction are the official ones
    torch.testing.assert_close(f.double(), want_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(recon.double(), want_recon, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["token-wise", "batch-wise"])
def test_llama_loader_rejects_official_modes_that_depend_on_each_input(tmp_path, mode):
    """Official per-token/per-batch normalisation cannot be folded into fixed weights."""
    w, h, *_ = llama_files(tmp_path, norm_activation=mode)
    with pytest.raises(SaeError, match=f'unsupported norm_activation "{mode}"'):
        load_llama_scope(str(w), str(h))
