import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saematch.load import load_att_projection, load_gemma_scope, load_llama_scope, project_att
from saematch.sae import SaeError, encode, reconstruct
from conftest import gemma_arrays, llama_files, random_sae, write_npz


# --- Gemma Scope -----------------------------------------------------------------------

def test_gemma_loader_agrees_with_the_published_forward_pass(npz_path):
    """pre = x W_enc + b_enc; f = ReLU(pre)·1[pre > θ]; x̂ = f W_dec + b_dec (SAELens jumprelu)."""
    a = gemma_arrays()
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32) * 2
    pre = x @ a["W_enc"] + a["b_enc"]
    expected = (np.maximum(pre, 0) * (pre > a["threshold"])) @ a["W_dec"] + a["b_dec"]
    sae = load_gemma_scope(str(npz_path))
    np.testing.assert_allclose(reconstruct(sae, torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gemma_loader_reads_shapes_from_the_file(tmp_path):
    sae = load_gemma_scope(str(write_npz(tmp_path / "p.npz", gemma_arrays(d=10, F=7))))
    assert sae.W_enc.shape == (10, 7) and sae.W_dec.shape == (7, 10) and sae.n_features == 7


def test_gemma_loader_accepts_a_unit_scaling_factor(tmp_path):
    a = gemma_arrays() | {"scaling_factor": np.ones(1, np.float32)}
    load_gemma_scope(str(write_npz(tmp_path / "p.npz", a)))


@pytest.mark.parametrize("problem,edit,message", [
    ("missing key", lambda a: a.pop("threshold"), "missing key 'threshold'"),
    ("wrong shape", lambda a: a.update(b_enc=np.zeros(5, np.float32)), r"b_enc has shape \(5,\), expected \(32,\)"),
    ("wrong W_dec", lambda a: a.update(W_dec=a["W_dec"].T.copy()), r"W_dec has shape \(16, 32\), expected \(32, 16\) — transposed\?"),
    ("NaN", lambda a: a["W_dec"].__setitem__((3, 4), np.nan), "W_dec has 1 NaN or Inf"),
    ("Inf", lambda a: a["b_enc"].__setitem__(2, np.inf), "b_enc has 1 NaN or Inf"),
    ("zero threshold", lambda a: a["threshold"].__setitem__(0, 0.0), "threshold must be > 0"),
    ("negative threshold", lambda a: a["threshold"].__setitem__(0, -1.0), "threshold must be > 0"),
    ("scaling factor", lambda a: a.update(scaling_factor=np.full(1, 2.0, np.float32)), "scaling_factor"),
    ("extra key", lambda a: a.update(W_skip=np.zeros(3, np.float32)), "unexpected keys"),
])
def test_gemma_loader_rejects_bad_input_naming_the_file(tmp_path, problem, edit, message):
    a = gemma_arrays()
    edit(a)
    path = write_npz(tmp_path / "layer_7/params.npz", a)
    with pytest.raises(SaeError, match=message) as err:
        load_gemma_scope(str(path))
    assert str(path) in str(err.value)


def test_gemma_loader_rejects_a_truncated_file(npz_path):
    data = npz_path.read_bytes()
    npz_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaeError, match=f"{npz_path}.*truncated or corrupt"):
        load_gemma_scope(str(npz_path))


def test_gemma_loader_rejects_a_missing_file(tmp_path):
    with pytest.raises(SaeError, match="nope.npz: file not found"):
        load_gemma_scope(str(tmp_path / "nope.npz"))


# --- Llama Scope -----------------------------------------------------------------------

def llama_published_forward(x, t, hp):
    """sae_formats.md §3.5, written out from the raw checkpoint: dataset-norm + decoder-norm."""
    d = t["decoder.weight"].shape[0]
    c_in = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"]
    c_out = math.sqrt(d) / hp["dataset_average_activation_norm"]["out"]
    n = t["decoder.weight"].norm(dim=0)  # (F,)
    pre = (n / c_out) * ((c_in * x) @ t["encoder.weight"].T + t["encoder.bias"])
    f = pre * (pre > hp["jump_relu_threshold"])
    return f @ (t["decoder.weight"] / n).T + t["decoder.bias"] / c_out


@pytest.mark.parametrize("norm_in,norm_out", [(8.0, 8.0), (4.0, 1.5)])  # R/A/M, and TC-like
def test_llama_loader_agrees_with_the_published_forward_pass(tmp_path, norm_in, norm_out):
    w, h, t, hp = llama_files(tmp_path, norm_in=norm_in, norm_out=norm_out, theta=0.05)
    x = torch.randn(400, 16) * 6
    sae = load_llama_scope(str(w), str(h))
    expected = llama_published_forward(x, t, hp)
    assert (encode(sae, x) > 0).float().mean() > 0.05  # not vacuous: features fire
    torch.testing.assert_close(reconstruct(sae, x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32), rtol=1e-5, atol=1e-5)
    assert torch.equal(sae.threshold, torch.full((32,), 0.05))


def test_llama_loader_reads_bfloat16_checkpoints(tmp_path):
    w, h, t, hp = llama_files(tmp_path, dtype=torch.bfloat16)
    sae = load_llama_scope(str(w), str(h))
    assert sae.W_enc.dtype == torch.float32 and sae.W_enc.shape == (16, 32)


@pytest.mark.parametrize("problem,edit_hp,message", [
    ("missing threshold", lambda hp: hp.pop("jump_relu_threshold"), "missing key 'jump_relu_threshold'"),
    ("zero threshold", lambda hp: hp.update(jump_relu_threshold=0.0), "hyperparams.json: 'jump_relu_threshold' must be a finite number > 0, got 0.0"),
    ("missing norms", lambda hp: hp.pop("dataset_average_activation_norm"), "dataset_average_activation_norm"),
    ("d_model", lambda hp: hp.update(d_model=4096), "d_model 16 differs"),
])
def test_llama_loader_rejects_bad_hyperparams(tmp_path, problem, edit_hp, message):
    w, h, t, hp = llama_files(tmp_path)
    edit_hp(hp)
    h.write_text(json.dumps(hp))
    with pytest.raises(SaeError, match=message):
        load_llama_scope(str(w), str(h))


def test_llama_loader_rejects_a_truncated_checkpoint(tmp_path):
    w, h, *_ = llama_files(tmp_path)
    data = w.read_bytes()
    w.write_bytes(data[:-100])
    with pytest.raises(SaeError, match=f"{w}: truncated safetensors"):
        load_llama_scope(str(w), str(h))


def test_llama_loader_rejects_a_missing_tensor(tmp_path):
    w, h, t, _ = llama_files(tmp_path)
    save_file({k: v for k, v in t.items() if k != "decoder.bias"}, w)
    with pytest.raises(SaeError, match=r"missing key\(s\) \['decoder.bias'\]"):
        load_llama_scope(str(w), str(h))


def test_llama_loader_rejects_nan_weights(tmp_path):
    w, h, t, _ = llama_files(tmp_path)
    t["encoder.weight"][0, 0] = float("nan")
    save_file(t, w)
    with pytest.raises(SaeError, match=f"{w}: encoder.weight has 1 NaN"):
        load_llama_scope(str(w), str(h))


def test_llama_loader_rejects_mismatched_shapes(tmp_path):
    w, h, t, _ = llama_files(tmp_path)
    t["decoder.weight"] = t["decoder.weight"][:, :20].contiguous()
    save_file(t, w)
    with pytest.raises(SaeError, match=r"decoder.weight has shape \(16, 20\), expected \(16, 32\)"):
        load_llama_scope(str(w), str(h))


def test_llama_loader_rejects_missing_hyperparams(tmp_path):
    w, h, *_ = llama_files(tmp_path)
    h.unlink()
    with pytest.raises(SaeError, match="hyperparams.json: file not found"):
        load_llama_scope(str(w), str(h))


# --- attention projection --------------------------------------------------------------

def test_project_att_maps_decoders_through_o_proj_and_the_norm_gain():
    sae = random_sae(d=12, F=20, seed=5)  # z width 12
    o_proj, gain = torch.randn(8, 12), torch.randn(8) * 0.1
    out = project_att(sae, o_proj, gain)
    assert out.W_enc.shape == (8, 20) and out.W_dec.shape == (20, 8)  # encoders: tests/test_load_pointers.py
    torch.testing.assert_close(out.W_dec[3], (1 + gain) * (o_proj @ sae.W_dec[3]))


def test_project_att_rejects_a_mismatched_o_proj():
    with pytest.raises(SaeError, match="o_proj is"):
        project_att(random_sae(d=12), torch.randn(8, 10), torch.zeros(8))


def test_att_projection_is_read_from_the_sharded_model(tmp_path):
    o0, g1 = torch.randn(8, 12), torch.randn(8)
    save_file({"model.layers.0.self_attn.o_proj.weight": o0}, tmp_path / "a.safetensors")
    save_file({"model.layers.0.post_attention_layernorm.weight": g1}, tmp_path / "b.safetensors")
    (tmp_path / "index.json").write_text(json.dumps({"weight_map": {
        "model.layers.0.self_attn.o_proj.weight": "a.safetensors",
        "model.layers.0.post_attention_layernorm.weight": "b.safetensors"}}))
    files = {"model.safetensors.index.json": str(tmp_path / "index.json"),
             "a.safetensors": str(tmp_path / "a.safetensors"), "b.safetensors": str(tmp_path / "b.safetensors")}
    o, g = load_att_projection(files, 0)
    assert torch.equal(o, o0) and torch.equal(g, g1)
    with pytest.raises(SaeError, match="no tensor 'model.layers.1"):
        load_att_projection(files, 1)
