"""Every bad SAE file is refused with SaeError naming the file and the real problem.

Each row writes one file in the exact Hub layout (Gemma Scope ``params.npz``, Llama Scope
``hyperparams.json`` + ``checkpoints/final.safetensors``), broken in one way, and calls the
real loader. Rows whose problem is ``ACCEPTED`` are the good path: a float16 / float64 /
bfloat16 file loads and equals the float32 file holding the same (rounded) values.
"""

import io
import json
import re
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saematch.load import load_gemma_scope, load_llama_scope
from saematch.sae import SaeError
from conftest import gemma_arrays, llama_files, write_npz

ACCEPTED = None
GEMMA_PATH = "layer_7/width_16k/average_l0_50/params.npz"


# --- writers: each returns (path the message must name, loader call[, float32 reference call]) ---

def gemma(edit):
    """params.npz from gemma_arrays() (d=16, F=32) after ``edit(arrays)``."""
    def make(tmp):
        a = gemma_arrays()
        edit(a)
        path = write_npz(tmp / GEMMA_PATH, a)
        return path, lambda: load_gemma_scope(str(path))
    return make


def gemma_bytes(data):
    """params.npz holding ``data`` (bytes, or a function of the good file's bytes)."""
    def make(tmp):
        path = write_npz(tmp / GEMMA_PATH, gemma_arrays())
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
        return path, lambda: load_gemma_scope(str(path))
    return make


def npy_bytes(array, **header):
    """One .npy member: ``array``'s bytes, under a header edited by ``header`` (e.g. shape)."""
    buf = io.BytesIO()
    if header:
        d = np.lib.format.header_data_from_array_1_0(array) | header
        np.lib.format.write_array_header_1_0(buf, d)
        buf.write(array.tobytes())
    else:
        np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def gemma_member(key, member):
    """params.npz whose member ``key``.npy is the raw bytes ``member`` (others as written by np.savez)."""
    def make(tmp):
        a = gemma_arrays()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in a.items():
                zf.writestr(f"{name}.npy", member(arr) if name == key else npy_bytes(arr))
        path = tmp / GEMMA_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        return path, lambda: load_gemma_scope(str(path))
    return make


def gemma_as(dtype):
    """Good path: params.npz in ``dtype`` vs the same values stored as float32."""
    def make(tmp):
        a = {k: v.astype(dtype) for k, v in gemma_arrays().items()}
        path = write_npz(tmp / "a" / GEMMA_PATH, a)
        ref = write_npz(tmp / "b" / GEMMA_PATH, {k: v.astype(np.float32) for k, v in a.items()})
        return path, lambda: load_gemma_scope(str(path)), lambda: load_gemma_scope(str(ref))
    return make


def llama_hp(edit):
    """Llama Scope folder whose hyperparams.json is ``edit(hp)`` (a str is written as is)."""
    def make(tmp):
        w, h, _, hp = llama_files(tmp)
        out = edit(hp)
        h.write_text(out if isinstance(out, str) else json.dumps(hp))
        return h, lambda: load_llama_scope(str(w), str(h))
    return make


def llama_tensors(edit):
    """Llama Scope folder whose checkpoint holds ``edit(tensors)`` (written by save_file)."""
    def make(tmp):
        w, h, t, _ = llama_files(tmp)
        edit(t)
        save_file({k: v.contiguous() for k, v in t.items()}, w)
        return w, lambda: load_llama_scope(str(w), str(h))
    return make


def split_safetensors(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header, data):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def llama_raw(edit):
    """Llama Scope folder whose checkpoint's bytes are ``edit(good file's bytes)``."""
    def make(tmp):
        w, h, *_ = llama_files(tmp)
        w.write_bytes(edit(w.read_bytes()))
        return w, lambda: load_llama_scope(str(w), str(h))
    return make


def llama_st(edit):
    """Llama Scope checkpoint whose header is changed in place by ``edit(header)``; data unchanged."""
    def rewrite(raw):
        header, data = split_safetensors(raw)
        edit(header)
        return join_safetensors(header, data)
    return llama_raw(rewrite)


def by_offset(header, i):
    """Name of the i-th tensor in file order (by data_offsets)."""
    names = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    return names[i][1]


def shift(header, name, delta):
    header[name]["data_offsets"] = [x + delta for x in header[name]["data_offsets"]]


def grow_last(header):
    """Double the last tensor's first dimension and its data_offsets to match: beyond the file."""
    info = header[by_offset(header, -1)]
    begin, end = info["data_offsets"]
    info["shape"][0] *= 2
    info["data_offsets"] = [begin, begin + 2 * (end - begin)]


def llama_as(dtype):
    """Good path: checkpoint in ``dtype`` vs the same values stored as float32."""
    def make(tmp):
        w, h, t, _ = llama_files(tmp / "a", dtype=dtype)
        w32, h32, *_ = llama_files(tmp / "b")
        save_file({k: v.to(dtype).float().contiguous() for k, v in t.items()}, w32)
        return w, lambda: load_llama_scope(str(w), str(h)), lambda: load_llama_scope(str(w32), str(h32))
    return make


def set_(key, value):
    return lambda d: d.update({key: value})


def norms(value):
    return set_("dataset_average_activation_norm", value)


def cast(key, dtype):
    return lambda a: a.update({key: a[key].astype(dtype)})


def tcast(key, dtype):
    return lambda t: t.update({key: t[key].to(dtype)})


def header_field(name, field, value):
    return lambda h: h[name].update({field: value})


def swap_offsets(name):
    return lambda h: h[name].update(data_offsets=h[name]["data_offsets"][::-1])


CASES = [
    # Llama Scope hyperparams.json
    ("hp-null", llama_hp(lambda hp: "null"), r"hyperparams.json: expected a JSON object, got null"),
    ("hp-list", llama_hp(lambda hp: "[1, 2]"), r"expected a JSON object, got a list"),
    ("hp-number", llama_hp(lambda hp: "3"), r"expected a JSON object, got a number"),
    ("hp-not-json", llama_hp(lambda hp: '{"d_model": 1'), r"not valid JSON"),
    ("hp-d_model-string", llama_hp(set_("d_model", "16")), r"'d_model' must be a positive integer, got \"16\""),
    ("threshold-string", llama_hp(set_("jump_relu_threshold", "abc")),
     r"'jump_relu_threshold' must be a finite number > 0, got \"abc\""),
    ("threshold-null", llama_hp(set_("jump_relu_threshold", None)), r"'jump_relu_threshold' .* got null"),
    ("threshold-list", llama_hp(set_("jump_relu_threshold", [0.3])), r"'jump_relu_threshold' .* got \[0.3\]"),
    ("threshold-bool", llama_hp(set_("jump_relu_threshold", True)), r"'jump_relu_threshold' .* got true"),
    ("threshold-nan", llama_hp(set_("jump_relu_threshold", float("nan"))), r"'jump_relu_threshold' .* got NaN"),
    ("threshold-negative", llama_hp(set_("jump_relu_threshold", -0.5)), r"'jump_relu_threshold' .* > 0, got -0.5"),
    ("threshold-zero", llama_hp(set_("jump_relu_threshold", 0)), r"'jump_relu_threshold' .* > 0, got 0"),
    ("norms-in-zero-no-out", llama_hp(norms({"in": 0})),
     r"'dataset_average_activation_norm' must hold positive finite numbers 'in' and 'out'; 'in' is 0"),
    ("norms-in-zero", llama_hp(norms({"in": 0, "out": 8})), r"'dataset_average_activation_norm' .*'in' is 0 "),
    ("norms-string", llama_hp(norms({"in": "8", "out": 8})), r"'dataset_average_activation_norm' .*'in' is \"8\""),
    ("norms-negative", llama_hp(norms({"in": 8, "out": -1.5})), r"'dataset_average_activation_norm' .*'out' is -1.5"),
    ("norms-infinite", llama_hp(norms({"in": 8, "out": float("inf")})),
     r"'dataset_average_activation_norm' .*'out' is Infinity"),
    ("norms-missing-out", llama_hp(norms({"in": 8})), r"'dataset_average_activation_norm' .*'out' is missing"),
    ("norms-not-object", llama_hp(norms(8.0)), r"'dataset_average_activation_norm' .*not an object \(got 8.0\)"),
    ("norms-missing", llama_hp(lambda hp: hp.pop("dataset_average_activation_norm")),
     r"missing key 'dataset_average_activation_norm'"),
    ("norm_activation-unknown", llama_hp(set_("norm_activation", "layer-wise")),
     r"unsupported norm_activation \"layer-wise\""),
    ("decoder-norm-flag-not-bool", llama_hp(set_("sparsity_include_decoder_norm", "yes")),
     r"'sparsity_include_decoder_norm' must be true or false, got \"yes\""),
    # Llama Scope checkpoints/final.safetensors: header
    ("st-offsets-end-before-begin", llama_st(swap_offsets("encoder.weight")),
     r"safetensors header: tensor 'encoder.weight' has data_offsets \[\d+, \d+\] but end is before begin"),
    ("st-offsets-beyond-file", llama_st(grow_last),
     r"truncated safetensors file .*: tensor '[\w.]+' has data_offsets \[\d+, \d+\] but only \d+ bytes of data"),
    ("st-offsets-overlap", llama_st(lambda h: shift(h, by_offset(h, 1), -4)),
     r"safetensors header: tensor '[\w.]+' has data_offsets \[\d+, \d+\] but it overlaps tensor"),
    ("st-offsets-gap", llama_st(lambda h: shift(h, by_offset(h, -1), 4)),
     r"safetensors header: tensor '[\w.]+' has data_offsets \[\d+, \d+\] but .*a gap of 4 bytes"),
    ("st-offsets-not-pair", llama_st(header_field("encoder.bias", "data_offsets", [0])),
     r"tensor 'encoder.bias' has data_offsets \[0\]; expected \[begin, end\]"),
    ("st-size-not-dtype-times-shape", llama_st(header_field("encoder.weight", "shape", [32, 17])),
     r"tensor 'encoder.weight' has data_offsets \[\d+, \d+\] \(2048 bytes\) but dtype F32 × shape \[32, 17\] "
     r"needs 2176 bytes"),
    ("st-unknown-dtype", llama_st(header_field("encoder.weight", "dtype", "F17")),
     r"tensor 'encoder.weight' has unknown dtype 'F17'"),
    ("st-shape-not-list", llama_st(header_field("encoder.weight", "shape", "32x16")),
     r"tensor 'encoder.weight' has shape '32x16'; expected a list of non-negative integers"),
    ("st-shape-negative", llama_st(header_field("encoder.weight", "shape", [-32, -16])),
     r"tensor 'encoder.weight' has shape \[-32, -16\]; expected a list of non-negative integers"),
    ("st-shape-float", llama_st(header_field("encoder.weight", "shape", [32.0, 16])),
     r"tensor 'encoder.weight' has shape \[32.0, 16\]; expected a list"),
    ("st-header-length-absurd", llama_raw(lambda raw: struct.pack("<Q", 2**62) + raw[8:]),
     r"safetensors header: declared length 4611686018427387904 bytes is absurd"),
    ("st-header-not-object", llama_raw(lambda raw: join_safetensors(b"[1, 2]", b"")),
     r"safetensors header is not a JSON object \(got a list\)"),
    ("st-header-not-json", llama_raw(lambda raw: join_safetensors(b'{"encoder.weight": ', b"")),
     r"safetensors header is not valid JSON"),
    ("st-truncated", llama_raw(lambda raw: raw[:-100]), r"truncated safetensors file"),
    ("st-too-short", llama_raw(lambda raw: raw[:5]), r"truncated or not a safetensors file \(5 bytes"),
    ("st-trailing-bytes", llama_raw(lambda raw: raw + b"\0" * 8), r"8 bytes after the last tensor's data"),
    # Llama Scope checkpoint: dtype and shapes
    ("st-int32-tensor", llama_tensors(tcast("encoder.weight", torch.int32)),
     r"tensor 'encoder.weight' has dtype I32; expected a float tensor"),
    ("st-bool-tensor", llama_tensors(tcast("decoder.bias", torch.bool)),
     r"tensor 'decoder.bias' has dtype BOOL; expected a float tensor"),
    ("st-int8-tensor", llama_tensors(tcast("encoder.bias", torch.int8)),
     r"tensor 'encoder.bias' has dtype I8; expected a float tensor"),
    ("st-decoder-transposed", llama_tensors(lambda t: t.update({"decoder.weight": t["decoder.weight"].T})),
     r"decoder.weight has shape \(32, 16\), expected \(16, 32\) — transposed\?"),
    ("st-encoder-bias-shape", llama_tensors(lambda t: t.update({"encoder.bias": t["encoder.bias"][:5]})),
     r"encoder.bias has shape \(5,\), expected \(32,\)"),
    # Gemma Scope params.npz: container
    ("npz-is-npy", gemma_bytes(npy_bytes(gemma_arrays()["W_enc"])),
     r"params.npz: is a single .npy array, not an .npz archive of W_enc, b_enc, W_dec, b_dec, threshold"),
    ("npz-neither-zip-nor-npy", gemma_bytes(b"<html>rate limited</html>"),
     r"params.npz: neither an .npz \(zip\) archive nor an .npy array"),
    ("npz-empty", gemma_bytes(b""), r"params.npz: empty file"),
    ("npz-truncated", gemma_bytes(lambda raw: raw[: len(raw) // 2]), r"params.npz: .*truncated or corrupt"),
    # Gemma Scope params.npz: members
    ("npz-huge-declared-shape", gemma_member("W_enc", lambda a: npy_bytes(a, shape=(10**9, 10**9))),
     r"W_enc.npy: npy header declares shape \(1000000000, 1000000000\) of float32 "
     r"\(4000000000000000000 bytes\) but the member holds 2048 bytes"),
    ("npz-short-member", gemma_member("b_dec", lambda a: npy_bytes(a, shape=(17,))),
     r"b_dec.npy: npy header declares shape \(17,\) of float32 \(68 bytes\) but the member holds 64 bytes"),
    ("npz-member-not-npy", gemma_member("threshold", lambda a: b"not an npy file at all"),
     r"threshold.npy is not a readable .npy array"),
    ("npz-int", gemma(cast("W_enc", np.int32)), r"W_enc.npy has dtype int32; expected float16, float32 or float64"),
    ("npz-bool", gemma(cast("threshold", np.bool_)), r"threshold.npy has dtype bool; expected float"),
    ("npz-complex", gemma(cast("W_dec", np.complex64)), r"W_dec.npy has dtype complex64; expected float"),
    ("npz-object-pickled", gemma_member("b_enc", lambda a: npy_bytes(a.astype(object))),
     r"b_enc.npy holds pickled Python objects \(dtype object\); refused"),
    ("npz-missing-threshold", gemma(lambda a: a.pop("threshold")),
     r"missing key 'threshold' \(file has \['W_dec', 'W_enc', 'b_dec', 'b_enc'\]\)"),
    ("npz-W_dec-transposed", gemma(lambda a: a.update(W_dec=a["W_dec"].T.copy())),
     r"W_dec has shape \(16, 32\), expected \(32, 16\) — transposed\?"),
    ("npz-threshold-shape", gemma(lambda a: a.update(threshold=a["threshold"][:5].copy())),
     r"threshold has shape \(5,\), expected \(32,\) \(F=32 features as most of threshold, b_enc, W_enc, W_dec say"),
    # good path: other float dtypes load like float32
    ("ok-npz-float16", gemma_as(np.float16), ACCEPTED),
    ("ok-npz-float64", gemma_as(np.float64), ACCEPTED),
    ("ok-st-bfloat16", llama_as(torch.bfloat16), ACCEPTED),
    ("ok-st-float16", llama_as(torch.float16), ACCEPTED),
    ("ok-st-float64", llama_as(torch.float64), ACCEPTED),
]


@pytest.mark.parametrize("make,problem", [pytest.param(make, problem, id=name) for name, make, problem in CASES])
def test_loader_refuses_bad_input_naming_the_file_and_the_problem(tmp_path, make, problem):
    path, load, *reference = make(tmp_path)
    if problem is ACCEPTED:
        sae, ref = load(), reference[0]()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            got, want = getattr(sae, name), getattr(ref, name)
            assert got.dtype == torch.float32 and torch.equal(got, want), name
        return
    with pytest.raises(SaeError) as err:
        load()
    message = str(err.value)
    assert str(path) in message, message
    assert re.search(problem, message), f"{problem!r} not in {message!r}"
