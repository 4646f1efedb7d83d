"""Loading SAEs and the attention projection from download pointers into a real (offline)
Hugging Face cache, checked against the files read directly with numpy / safetensors."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save as save_safetensors

from saematch.demo import npz_bytes, write_hub_repo
from saematch.hub import fetch
from saematch.load import load_att_projection, load_gemma_scope, load_pair, load_sae, project_att
from saematch.sae import Sae, SaeError
from conftest import gemma_arrays, llama_files, random_sae, write_npz

RES = "google/gemma-scope-2b-pt-att"
LLAMA = "fnlp/Llama3_1-8B-Base-LXR-8x"
MODEL = "google/gemma-2-2b"
D_Z, D_MODEL, F = 12, 8, 20


def gemma_pointer(cache, layer):
    return {"format": "gemma-scope", **fetch(RES, {"params": f"layer_{layer}/params.npz"}, "main", str(cache),
                                              local_files_only=True)}


@pytest.fixture
def hub(tmp_path):
    """Two Gemma Scope hook_z SAEs (layers 3, 4), a Llama Scope SAE and a two-shard model."""
    cache = tmp_path / "hub"
    arrays = {L: gemma_arrays(d=D_Z, F=F, seed=L) for L in (3, 4)}
    write_hub_repo(cache, RES, {f"layer_{L}/params.npz": npz_bytes(a) for L, a in arrays.items()})
    w, h, _, _ = llama_files(tmp_path / "llama")
    write_hub_repo(cache, LLAMA, {"LXR/checkpoints/final.safetensors": w.read_bytes(),
                                  "LXR/hyperparams.json": h.read_bytes()})
    rng = np.random.default_rng(0)
    weights = {}
    for L in (3, 4):  # each layer's own o_proj and gain
        weights[f"model.layers.{L}.self_attn.o_proj.weight"] = rng.standard_normal((D_MODEL, D_Z)).astype(np.float32)
        weights[f"model.layers.{L}.post_attention_layernorm.weight"] = rng.standard_normal(D_MODEL).astype(np.float32)
    shards = {"model-00001-of-00002.safetensors": dict(list(weights.items())[:2]),
              "model-00002-of-00002.safetensors": dict(list(weights.items())[2:])}
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    files = {name: save_safetensors(part) for name, part in shards.items()}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    write_hub_repo(cache, MODEL, files)
    model = fetch(MODEL, {f: f for f in files}, "main", str(cache), local_files_only=True)
    return cache, arrays, weights, model


def test_a_gemma_pointer_loads_the_file_it_names_and_records_where_it_came_from(hub):
    cache, arrays, _, _ = hub
    p = gemma_pointer(cache, 3)
    sae = load_sae(p)
    for name, a in arrays[3].items():
        np.testing.assert_array_equal(getattr(sae, name).numpy(), a)
    path = str(cache / f"models--{RES.replace('/', '--')}/snapshots/{p['commit']}/layer_3/params.npz")
    assert sae.source == {"repo_id": RES, "revision": "main", "commit": p["commit"], "files": p["files"],
                          "where": path, "format": "gemma-scope"}


def test_a_llama_scope_pointer_loads_through_the_llama_loader_with_its_hyperparams(hub, tmp_path):
    cache = hub[0]
    p = {"format": "llama-scope", **fetch(LLAMA, {"weights": "LXR/checkpoints/final.safetensors",
                                                   "hyperparams": "LXR/hyperparams.json"}, "main", str(cache),
                                          local_files_only=True)}
    sae = load_sae(p)
    raw = load_file(str(tmp_path / "llama/checkpoints/final.safetensors"))
    assert sae.n_features == raw["encoder.weight"].shape[0] and sae.source["format"] == "llama-scope"
    assert sae.source["where"].endswith("LXR/checkpoints/final.safetensors") and sae.source["repo_id"] == LLAMA
    # the decoder directions are the checkpoint's columns (the loader only rescales them)
    cos = (sae.W_dec.numpy() * raw["decoder.weight"].T).sum(1) / (
        np.linalg.norm(sae.W_dec.numpy(), axis=1) * np.linalg.norm(raw["decoder.weight"], axis=0))
    np.testing.assert_allclose(cos, 1, atol=1e-5)


def test_an_unknown_format_is_refused_naming_the_repo_and_the_format(hub):
    p = dict(gemma_pointer(hub[0], 3), format="saelens")
    with pytest.raises(SaeError, match=f"^{RES}: unknown SAE format 'saelens'$"):
        load_sae(p)


def projected(arrays, weights, L):
    """v_i = (1 + g) ⊙ (W_O u_i), written out in numpy."""
    o, g = weights[f"model.layers.{L}.self_attn.o_proj.weight"], weights[f"model.layers.{L}.post_attention_layernorm.weight"]
    return arrays["W_dec"] @ o.T * (1 + g), arrays["b_dec"] @ o.T * (1 + g)


def test_a_pair_with_the_model_is_projected_through_each_layers_own_o_proj_and_gain(hub):
    cache, arrays, weights, model = hub
    src, dst = load_pair(gemma_pointer(cache, 3), gemma_pointer(cache, 4), 3, model)
    for sae, L in ((src, 3), (dst, 4)):
        W_dec, b_dec = projected(arrays[L], weights, L)
        np.testing.assert_allclose(sae.W_dec.numpy(), W_dec, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sae.b_dec.numpy(), b_dec, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sae.threshold.numpy(), arrays[L]["threshold"])
        T = weights[f"model.layers.{L}.self_attn.o_proj.weight"] * (1 + weights[f"model.layers.{L}.post_attention_layernorm.weight"])[:, None]
        z = T.T @ np.random.default_rng(L).standard_normal((D_MODEL, 5))  # z in T's row space (d_z > d_model)
        np.testing.assert_allclose(sae.W_enc.numpy().T @ (T @ z), arrays[L]["W_enc"].T @ z, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(sae.b_enc.numpy(), arrays[L]["b_enc"])
        assert sae.source["projected"] == "o_proj+post_attention_layernorm"
        assert sae.source["repo_id"] == RES and sae.source["format"] == "gemma-scope"


@pytest.mark.parametrize("d_z, d_model", [(6, 10), (10, 6)])  # Gemma's shape (2048 < 2304), and the demo's
def test_projected_encoders_read_the_attention_output_as_the_originals_read_z(d_z, d_model):
    """e'ᵀ(T z) = eᵀ z for the map T = diag(1 + g) W_O: for every z where T is injective, for z in
    T's row space otherwise; the decoder rows are T u."""
    rng = np.random.default_rng(d_z)
    o_proj, gain = rng.standard_normal((d_model, d_z)), 0.3 * rng.standard_normal(d_model)
    W_enc, W_dec = rng.standard_normal((d_z, 7)), rng.standard_normal((7, d_z))
    sae = Sae(W_enc=torch.tensor(W_enc), b_enc=torch.zeros(7, dtype=torch.float64), W_dec=torch.tensor(W_dec),
              b_dec=torch.zeros(d_z, dtype=torch.float64), threshold=torch.ones(7, dtype=torch.float64))
    out = project_att(sae, torch.tensor(o_proj), torch.tensor(gain))
    T = o_proj * (1 + gain)[:, None]
    z = rng.standard_normal((d_z, 4)) if d_z <= d_model else T.T @ rng.standard_normal((d_model, 4))
    np.testing.assert_allclose(out.W_enc.numpy().T @ (T @ z), W_enc.T @ z, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.W_dec.numpy(), W_dec @ T.T, rtol=1e-12)
    assert out.W_enc.shape == (d_model, 7)


def test_a_pair_without_the_model_is_the_two_saes_as_stored(hub):
    cache, arrays, _, _ = hub
    src, dst = load_pair(gemma_pointer(cache, 3), gemma_pointer(cache, 4), 3)
    np.testing.assert_array_equal(src.W_dec.numpy(), arrays[3]["W_dec"])
    np.testing.assert_array_equal(dst.W_dec.numpy(), arrays[4]["W_dec"])


def test_a_projection_that_does_not_fit_names_the_side_it_was_given(hub):
    cache, arrays, _, model = hub
    write_hub_repo(cache, "x/wide", {"layer_4/params.npz": npz_bytes(gemma_arrays(d=D_Z + 1, F=F))})
    wide = {"format": "gemma-scope", **fetch("x/wide", {"params": "layer_4/params.npz"}, "main", str(cache),
                                             local_files_only=True)}
    with pytest.raises(SaeError, match=r"^layer 4 \(dst\): o_proj is \(8, 12\) but the SAE decodes to 13-d z$"):
        load_pair(gemma_pointer(cache, 3), wide, 3, model, where=("layer 3 (src)", "layer 4 (dst)"))


def test_project_att_names_itself_by_default_and_keeps_the_sources_provenance():
    sae = random_sae(d=12, F=20)
    sae.source["repo_id"] = "x/y"
    with pytest.raises(SaeError, match=r"^att projection: o_proj is \(8, 10\)"):
        project_att(sae, np.zeros((8, 10), np.float32), np.zeros(8, np.float32))
    import torch
    out = project_att(sae, torch.ones(8, 12), torch.full((8,), 1.0))
    np.testing.assert_allclose(out.b_dec.numpy(), np.full(8, 2 * sae.b_dec.sum().item()), rtol=1e-5)
    assert out.source == {"repo_id": "x/y", "projected": "o_proj+post_attention_layernorm"}


# --- load_att_projection's file layouts and errors --------------------------------------

def single_file(tmp_path, o, g, layer=0):
    path = tmp_path / "model.safetensors"
    path.write_bytes(save_safetensors({f"model.layers.{layer}.self_attn.o_proj.weight": o,
                                       f"model.layers.{layer}.post_attention_layernorm.weight": g}))
    return {"model.safetensors": str(path), "config.json": str(tmp_path / "config.json")}


def test_the_projection_is_read_from_a_single_model_safetensors(tmp_path):
    o, g = np.arange(24, dtype=np.float32).reshape(2, 12), np.array([0.5, -1.0], np.float32)
    got_o, got_g = load_att_projection(single_file(tmp_path, o, g, layer=5), 5)
    np.testing.assert_array_equal(got_o.numpy(), o)
    np.testing.assert_array_equal(got_g.numpy(), g)


@pytest.mark.parametrize("case,files,message", [
    ("no weights", lambda t: {"config.json": "c"},
     r"^model files \['config.json'\]: need model.safetensors or its index$"),
    ("index not JSON", lambda t: {"model.safetensors.index.json": str(t / "bad.json")},
     r"bad.json: unreadable safetensors index: "),
    ("shard missing", lambda t: {"model.safetensors.index.json": str(t / "index.json")},
     r"index.json: model.layers.0.self_attn.o_proj.weight lives in a.safetensors, which was not downloaded$"),
])
def test_missing_or_unreadable_model_files_are_named(tmp_path, case, files, message):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "index.json").write_text(json.dumps({"weight_map": {
        "model.layers.0.self_attn.o_proj.weight": "a.safetensors",
        "model.layers.0.post_attention_layernorm.weight": "a.safetensors"}}))
    with pytest.raises(SaeError, match=message):
        load_att_projection(files(tmp_path), 0)


@pytest.mark.parametrize("o_shape,g_shape", [((2, 12), (3,)), ((24,), (2,))])
def test_an_o_proj_and_gain_that_do_not_fit_are_named_with_their_shapes(tmp_path, o_shape, g_shape):
    files = single_file(tmp_path, np.zeros(o_shape, np.float32), np.zeros(g_shape, np.float32))
    with pytest.raises(SaeError, match=rf"model.safetensors: o_proj {tuple(o_shape)} and norm {tuple(g_shape)} do not fit"
                       .replace("(", r"\(").replace(")", r"\)")):
        load_att_projection(files, 0)


# --- Gemma Scope npz corner cases ------------------------------------------------------

def npz_with(arrays, version=None, edit=None):
    """An npz like npz_bytes, with the npy format version chosen and an optional edit of one
    member's raw bytes (name → function of bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.array(arr, order="C"), version=version, allow_pickle=False)
            data = member.getvalue()
            if edit and name in edit:
                data = edit[name](data)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def test_npy_format_version_2_members_are_read(tmp_path):
    a = gemma_arrays()
    (tmp_path / "p.npz").write_bytes(npz_with(a, version=(2, 0)))
    np.testing.assert_array_equal(load_gemma_scope(str(tmp_path / "p.npz")).W_dec.numpy(), a["W_dec"])


def test_an_unsupported_npy_format_version_is_refused_by_name(tmp_path):
    a = gemma_arrays()
    (tmp_path / "p.npz").write_bytes(npz_with(a, version=(3, 0)))
    with pytest.raises(SaeError, match=r"p.npz: W_enc.npy has unsupported .npy format version \(3, 0\)$"):
        load_gemma_scope(str(tmp_path / "p.npz"))


def test_a_header_with_two_negative_dimensions_is_refused_even_when_their_product_fits(tmp_path):
    a = gemma_arrays()
    def negative(data):  # same header length: the longer shape eats 3 bytes of the space padding
        end = data.index(b"\n")
        header = data[:end].replace(b"(16,), }", b"(-2, -8), }")
        assert header[end:].strip() == b""
        return header[:end] + data[end:]
    flip = {"b_dec": negative}
    (tmp_path / "p.npz").write_bytes(npz_with(a, edit=flip))
    with pytest.raises(SaeError, match=r"b_dec.npy: npy header declares shape \(-2, -8\)"):
        load_gemma_scope(str(tmp_path / "p.npz"))


def test_a_zero_dimensional_member_gets_a_shape_error_not_a_crash(tmp_path):
    path = tmp_path / "p.npz"
    path.write_bytes(npz_with(gemma_arrays() | {"b_dec": np.float32(0.5)}))
    with pytest.raises(SaeError, match="b_dec must be 1-D, got shape"):
        load_gemma_scope(str(path))


def test_an_empty_sae_is_refused_as_empty(tmp_path):
    a = {k: v[..., :0] if k in ("W_enc",) else v[:0] if k in ("W_dec", "threshold", "b_enc") else v
         for k, v in gemma_arrays().items()}
    path = write_npz(tmp_path / "p.npz", a)
    with pytest.raises(SaeError, match="empty SAE"):
        load_gemma_scope(str(path))


def test_a_member_whose_data_is_corrupted_is_refused_as_corrupt(tmp_path):
    data = bytearray(npz_bytes(gemma_arrays()))
    data[len(data) // 2] ^= 0xFF  # inside some member's data: zip's CRC check fails on reading
    (tmp_path / "p.npz").write_bytes(bytes(data))
    with pytest.raises(SaeError, match=r"p.npz: not a readable .npz \(truncated or corrupt download\?\): .*CRC"):
        load_gemma_scope(str(tmp_path / "p.npz"))


def test_lower_case_member_names_are_accepted_as_saelens_does(tmp_path):
    a = gemma_arrays()
    path = write_npz(tmp_path / "p.npz", {k.lower(): v for k, v in a.items()})
    np.testing.assert_array_equal(load_gemma_scope(str(path)).W_enc.numpy(), a["W_enc"])


def test_a_non_unit_scaling_factor_lists_at_most_four_of_its_values(tmp_path):
    a = gemma_arrays() | {"scaling_factor": np.arange(2, 8, dtype=np.float32)}
    with pytest.raises(SaeError, match=r"\(values \[2.0, 3.0, 4.0, 5.0\]\)$"):
        load_gemma_scope(str(write_npz(tmp_path / "p.npz", a)))


def test_a_file_with_both_spellings_of_a_key_keeps_the_exact_one_and_refuses_the_other(tmp_path):
    a = gemma_arrays()
    path = write_npz(tmp_path / "p.npz", a | {"w_enc": a["W_enc"]})
    with pytest.raises(SaeError, match=r"unexpected keys \['w_enc'\]$"):
        load_gemma_scope(str(path))


def test_a_sharded_projection_that_does_not_fit_names_the_index(tmp_path):
    o, g = np.zeros((2, 12), np.float32), np.zeros(3, np.float32)
    (tmp_path / "a.safetensors").write_bytes(save_safetensors({"model.layers.0.self_attn.o_proj.weight": o,
                                                               "model.layers.0.post_attention_layernorm.weight": g}))
    (tmp_path / "index.json").write_text(json.dumps({"weight_map": {
        "model.layers.0.self_attn.o_proj.weight": "a.safetensors",
        "model.layers.0.post_attention_layernorm.weight": "a.safetensors"}}))
    files = {"model.safetensors.index.json": str(tmp_path / "index.json"), "a.safetensors": str(tmp_path / "a.safetensors")}
    with pytest.raises(SaeError, match=r"index.json: o_proj \(2, 12\) and norm \(3,\) do not fit$"):
        load_att_projection(files, 0)


def test_a_projection_that_produces_nan_is_refused_under_the_name_it_was_given():
    import torch
    o_proj = torch.ones(8, 12)
    o_proj[3, 4] = float("nan")
    with pytest.raises(SaeError, match=r"^layer 7 att: o_proj or the post-attention norm weight has 1 NaN or Inf "
                                       r"values in T = diag\(1 \+ g\) W_O$"):
        project_att(random_sae(d=12, F=20), o_proj, torch.zeros(8), where="layer 7 att")


def test_nan_in_o_proj_is_refused_naming_the_model_file_that_holds_it(tmp_path):
    """Not the SAE pointer the pair was loaded under: the model shard with the bad tensor."""
    cache = tmp_path / "hub"
    write_hub_repo(cache, RES, {f"layer_{L}/params.npz": npz_bytes(gemma_arrays(d=D_Z, F=F, seed=L)) for L in (3, 4)})
    o = np.ones((D_MODEL, D_Z), np.float32)
    o[2, 5] = np.nan
    weights = {"model.layers.3.self_attn.o_proj.weight": np.ones((D_MODEL, D_Z), np.float32),
               "model.layers.3.post_attention_layernorm.weight": np.zeros(D_MODEL, np.float32),
               "model.layers.4.self_attn.o_proj.weight": o,
               "model.layers.4.post_attention_layernorm.weight": np.zeros(D_MODEL, np.float32)}
    write_hub_repo(cache, MODEL, {"model.safetensors": save_safetensors(weights)})
    model = fetch(MODEL, {"model.safetensors": "model.safetensors"}, "main", str(cache), local_files_only=True)
    shard = str(cache / f"models--{MODEL.replace('/', '--')}/snapshots/{model['commit']}/model.safetensors")
    with pytest.raises(SaeError) as err:
        load_pair(gemma_pointer(cache, 3), gemma_pointer(cache, 4), 3, model,
                  where=("resources/hub/sae/x/3.json", "resources/hub/sae/x/4.json"))
    assert str(err.value) == f"{shard}: model.layers.4.self_attn.o_proj.weight has 1 NaN or Inf value(s)"
