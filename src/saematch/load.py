"""Gemma Scope and Llama Scope files → one in-memory JumpReLU form (:class:`Sae`).

Shapes come from the files. Every problem raises :class:`SaeError` naming the file and the
problem; headers (npy members, safetensors) are checked before any array data is read.
Formats: ../shared/reference/sae_formats.md (§2.3 Gemma Scope, §3.3–3.5 Llama Scope).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .sae import Sae, SaeError, StoredSae, check_sae, shape_error

log = logging.getLogger(__name__)

GEMMA_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
LLAMA_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
NORM_ACTIVATIONS = ("dataset-wise", "inference", "none", None)
# safetensors dtypes → bits per element; only the float ones are read.
ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
           "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
           "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
ST_FLOATS = ("F16", "BF16", "F32", "F64")
ST_MAX_HEADER = 100_000_000  # safetensors' own limit on the header length
JSON_KIND = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}


@contextmanager
def _reading_json(path: str, not_json: str):
    """SaeError naming ``path`` for a missing or unreadable file, or for JSON it cannot parse."""
    try:
        yield
    except FileNotFoundError:
        raise SaeError(f"{path}: file not found") from None
    except OSError as exc:
        raise SaeError(f"{path}: cannot read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SaeError(f"{path}: {not_json}: {exc}") from exc


def _positive_number(v) -> bool:
    """A finite JSON number > 0 (not a bool or a string)."""
    try:
        return type(v) in (int, float) and 0 < float(v) < math.inf
    except OverflowError:
        return False


# --- Gemma Scope params.npz ---------------------------------------------------------------

def _npy_header(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple, np.dtype]:
    """Shape and dtype of npz member ``info``, from its npy header only (no data is read).

    Refuses non-float dtypes and a declared shape × itemsize that differs from the stored size.
    """
    where = f"{path}: {info.filename}"
    with zf.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            shape, _, dtype = read(fh) if read else (None, None, None)
        except ValueError as exc:
            raise SaeError(f"{where} is not a readable .npy array: {exc}") from exc
        stored = info.file_size - fh.tell()
    if read is None:
        raise SaeError(f"{where} has unsupported .npy format version {version}")
    if dtype.hasobject:
        raise SaeError(f"{where} holds pickled Python objects (dtype object); refused")
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise SaeError(f"{where} has dtype {dtype}; expected float16, float32 or float64")
    declared = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or declared != stored:
        raise SaeError(f"{where}: npy header declares shape {shape} of {dtype} ({declared} bytes) "
                       f"but the member holds {stored} bytes of data")
    return shape, dtype


def _read_npz(path: str, keys) -> dict[str, torch.Tensor]:
    """Members ``keys`` (name → member name) of the .npz at ``path`` as float32 tensors.

    All headers are checked first; each array is then read once, converted only if not float32.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            for stored in keys.values():
                _npy_header(path, zf, members[stored])
            out = {}
            for key, stored in keys.items():
                with zf.open(members[stored]) as fh:
                    array = np.lib.format.read_array(fh, allow_pickle=False)
                out[key] = torch.from_numpy(np.asarray(array, dtype=np.float32))
            return out
    except SaeError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error,
            NotImplementedError, ValueError) as exc:  # ValueError: numpy's "EOF reading array data"
        raise SaeError(f"{path}: not a readable .npz (truncated or corrupt download?): {exc}") from exc


def _npz_members(path: str) -> list[str]:
    """Member names of the .npz at ``path`` without ".npy"; refuses a .npy or a non-zip file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head.startswith(b"\x93NUMPY"):
            raise SaeError(f"{path}: is a single .npy array, not an .npz archive of {', '.join(GEMMA_KEYS)}")
        if not head:
            raise SaeError(f"{path}: empty file (truncated download?)")
        if not head.startswith(b"PK"):
            raise SaeError(f"{path}: neither an .npz (zip) archive nor an .npy array (starts with {head!r})")
        with zipfile.ZipFile(path) as zf:
            return [i.filename.removesuffix(".npy") for i in zf.infolist()]
    except FileNotFoundError:
        raise SaeError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise SaeError(f"{path}: not a readable .npz (truncated or corrupt download?): {exc}") from exc


def load_gemma_scope(path: str, source: dict | None = None) -> Sae:
    """Read a Gemma Scope ``params.npz``: W_enc (d, F), b_enc (F,), W_dec (F, d), b_dec (d,),
    threshold (F,); float16/32/64 members, returned as float32."""
    have = _npz_members(path)
    # SAELens accepts lower-case variants (w_enc …); map them to the stored names.
    by_lower = {k.lower(): k for k in have}
    keys = {}
    for key in GEMMA_KEYS:
        keys[key] = key if key in have else by_lower.get(key.lower())
        if keys[key] is None:
            raise SaeError(f"{path}: missing key {key!r} (file has {sorted(have)})")
    if "scaling_factor" in have:
        keys["scaling_factor"] = "scaling_factor"
    extra = sorted(set(have) - set(keys.values()))
    if extra:
        raise SaeError(f"{path}: unexpected keys {extra}")
    tensors = _read_npz(path, keys)
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not bool((scaling == 1).all()):
        raise SaeError(f"{path}: non-unit 'scaling_factor' is not supported (values {scaling.unique()[:4].tolist()})")
    return check_sae(Sae(**tensors, source=dict(source or {}, format="gemma-scope")), path)


# --- safetensors ---------------------------------------------------------------------------

def _safetensors_header(path: str) -> dict[str, dict]:
    """The header of the safetensors file at ``path`` ({name: {dtype, shape, data_offsets}}),
    checked in full before safe_open sees the file: sane header length, a JSON object, known
    dtypes, shapes lists of ints ≥ 0, end - begin = dtype size × prod(shape), tensors back to
    back from offset 0 to the end of the file."""
    with _reading_json(path, "safetensors header is not valid JSON (truncated or corrupt?)"):
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise SaeError(f"{path}: truncated or not a safetensors file ({size} bytes, "
                               f"too short for the 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > ST_MAX_HEADER:
                raise SaeError(f"{path}: safetensors header: declared length {n} bytes is absurd "
                               f"(limit {ST_MAX_HEADER}; file {size} bytes): not a safetensors file?")
            if n > size - 8:
                raise SaeError(f"{path}: truncated safetensors file (header of {n} bytes, file {size} bytes)")
            header = json.loads(fh.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise SaeError(f"{path}: safetensors header is not a JSON object (got {JSON_KIND[type(header)]})")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SaeError(f"{path}: safetensors header: __metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        bad = f"{path}: safetensors header: tensor {name!r}"
        if not isinstance(info, dict):
            raise SaeError(f"{bad} is {JSON_KIND[type(info)]}, not an object {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in ST_BITS:
            raise SaeError(f"{bad} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(x) is int and x >= 0 for x in shape):
            raise SaeError(f"{bad} has shape {shape!r}; expected a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(x) is int and x >= 0 for x in offsets)):
            raise SaeError(f"{bad} has data_offsets {offsets!r}; expected [begin, end], integers ≥ 0")
        begin, end = offsets
        if end < begin:
            raise SaeError(f"{bad} has data_offsets {offsets} but end is before begin")
        bits = math.prod(shape) * ST_BITS[dtype]
        if bits != 8 * (end - begin):
            raise SaeError(f"{bad} has data_offsets {offsets} ({end - begin} bytes) but "
                           f"dtype {dtype} × shape {shape} needs {bits / 8:g} bytes")
        spans.append((begin, end, name))
    at, last = 0, None
    for begin, end, name in sorted(spans):
        if begin != at:
            problem = (f"it overlaps tensor {last!r}, which ends at {at}" if begin < at
                       else f"the data before it ends at {at} (a gap of {begin - at} bytes)")
            raise SaeError(f"{path}: safetensors header: tensor {name!r} has data_offsets "
                           f"[{begin}, {end}] but {problem}")
        at, last = end, name
    if 8 + n + at > size:
        raise SaeError(f"{path}: truncated safetensors file ({size} bytes, header says {8 + n + at}): "
                       f"tensor {last!r} has data_offsets {header[last]['data_offsets']} but only "
                       f"{size - 8 - n} bytes of data follow the header")
    if 8 + n + at < size:
        raise SaeError(f"{path}: safetensors file has {size - 8 - n - at} bytes after the last "
                       f"tensor's data (file {size} bytes, header says {8 + n + at}): corrupt?")
    return header


def _float_header(path: str, keys) -> dict[str, dict]:
    """The header of a safetensors file that holds every tensor of ``keys``, each a float one."""
    header = _safetensors_header(path)
    missing = [k for k in keys if k not in header]
    if missing:
        raise SaeError(f"{path}: missing key(s) {missing} (file has {sorted(header)})")
    for k in keys:
        if header[k]["dtype"] not in ST_FLOATS:
            raise SaeError(f"{path}: tensor {k!r} has dtype {header[k]['dtype']}; "
                           f"expected a float tensor ({', '.join(ST_FLOATS)})")
    return header


def _read_safetensors(path: str, keys) -> dict[str, torch.Tensor]:
    """Tensors ``keys`` of a safetensors file as float32 (F16, BF16, F32 or F64 on disk)."""
    _float_header(path, keys)  # the keys and dtypes checked before any tensor is read
    try:
        with safe_open(path, framework="pt") as fh:
            return {k: fh.get_tensor(k).to(torch.float32) for k in keys}
    except (SafetensorError, OSError) as exc:
        raise SaeError(f"{path}: unreadable safetensors file: {exc}") from exc


# --- Llama Scope ---------------------------------------------------------------------------

def _read_hyperparams(path: str) -> dict:
    """Llama Scope ``hyperparams.json`` (sae_formats.md §3.3), the keys the loader uses checked."""
    with _reading_json(path, "not valid JSON (truncated?)"), open(path, "rb") as fh:
        hp = json.loads(fh.read())
    if not isinstance(hp, dict):
        raise SaeError(f"{path}: expected a JSON object, got {JSON_KIND[type(hp)]}")
    for key in ("d_model", "jump_relu_threshold", "norm_activation"):
        if key not in hp:
            raise SaeError(f"{path}: missing key {key!r}")
    if type(hp["d_model"]) is not int or hp["d_model"] <= 0:
        raise SaeError(f"{path}: 'd_model' must be a positive integer, got {json.dumps(hp['d_model'])}")
    if not _positive_number(hp["jump_relu_threshold"]):
        raise SaeError(f"{path}: 'jump_relu_threshold' must be a finite number > 0, "
                       f"got {json.dumps(hp['jump_relu_threshold'])}")
    if hp["norm_activation"] not in NORM_ACTIVATIONS:
        raise SaeError(f"{path}: unsupported norm_activation {json.dumps(hp['norm_activation'])} "
                       f"(expected \"dataset-wise\", \"inference\", \"none\" or null)")
    if hp["norm_activation"] == "dataset-wise":
        key, norms = "dataset_average_activation_norm", hp.get("dataset_average_activation_norm")
        if key not in hp:
            raise SaeError(f"{path}: missing key {key!r} {{in, out}} (norm_activation is 'dataset-wise')")
        for side in ("in", "out"):
            if not isinstance(norms, dict) or not _positive_number(norms.get(side)):
                problem = (f"{side!r} is {json.dumps(norms[side])}" if isinstance(norms, dict) and side in norms
                           else f"{side!r} is missing" if isinstance(norms, dict) else "not an object")
                raise SaeError(f"{path}: {key!r} must hold positive finite numbers 'in' and 'out'; "
                               f"{problem} (got {json.dumps(norms)})")
    if not isinstance(hp.get("sparsity_include_decoder_norm", True), bool):
        raise SaeError(f"{path}: 'sparsity_include_decoder_norm' must be true or false, "
                       f"got {json.dumps(hp['sparsity_include_decoder_norm'])}")
    return hp


def _llama_dims(path: str, t: dict[str, torch.Tensor]) -> tuple[int, int]:
    """F and d of encoder.weight (F, d), encoder.bias (F,), decoder.weight (d, F), decoder.bias (d,).

    Each is the size most tensors agree on, so the message names the tensor that is off.
    """
    for k in LLAMA_KEYS:
        want = 1 if k.endswith(".bias") else 2
        if t[k].ndim != want:
            raise SaeError(f"{path}: {k} must be {want}-D, got shape {tuple(t[k].shape)}")
    Fs = [t["encoder.bias"].shape[0], t["encoder.weight"].shape[0], t["decoder.weight"].shape[1]]
    ds = [t["decoder.bias"].shape[0], t["encoder.weight"].shape[1], t["decoder.weight"].shape[0]]
    F, d = max(Fs, key=Fs.count), max(ds, key=ds.count)
    if F == 0 or d == 0:
        raise SaeError(f"{path}: empty SAE ({F} features, d {d})")
    for k, shape in {"encoder.weight": (F, d), "encoder.bias": (F,),
                     "decoder.weight": (d, F), "decoder.bias": (d,)}.items():
        if tuple(t[k].shape) != shape:
            raise shape_error(path, k, t[k].shape, shape, f"F={F} features, d={d}")
    return F, d


ST_NUMPY = {"BF16": np.int16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
ST_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
READ_BLOCK = 1 << 26  # bytes per read: 64 MiB


def _readinto(fh, path: str, out: np.ndarray) -> None:
    """Fill ``out`` (C order) from ``fh``'s position with ordinary reads (no mmap: the file's
    pages do not count in this process's RSS), 64 MiB at a time."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    at = 0
    while at < len(view):
        got = fh.readinto(view[at:at + READ_BLOCK])
        if not got:
            raise SaeError(f"{path}: truncated safetensors file (data ends early)")
        at += got


def _read_stored(path: str, keys, transpose=()) -> dict[str, torch.Tensor]:
    """Tensors ``keys`` of a safetensors file in their on-disk dtype (F16, BF16, F32 or F64),
    read with plain reads into their final buffers; those in ``transpose`` (2-D) come back
    transposed and contiguous, made through a reused 8 MiB buffer of the file's rows."""
    header = _float_header(path, keys)
    out = {}
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            for k in keys:
                info = header[k]
                shape, np_dtype = tuple(info["shape"]), ST_NUMPY[info["dtype"]]
                fh.seek(8 + n + info["data_offsets"][0])
                if k in transpose and len(shape) == 2:
                    rows, cols = shape
                    t = torch.empty((cols, rows), dtype=ST_TORCH[info["dtype"]])
                    step = max(1, (8 << 20) // max(1, cols * np.dtype(np_dtype).itemsize))
                    buf = np.empty((min(step, rows), cols), np_dtype)
                    for r in range(0, rows, step):
                        m = min(step, rows - r)
                        _readinto(fh, path, buf[:m])
                        t[:, r:r + m] = torch.from_numpy(buf[:m]).view(t.dtype).T
                else:
                    a = np.empty(shape, np_dtype)
                    _readinto(fh, path, a)
                    t = torch.from_numpy(a).view(ST_TORCH[info["dtype"]])
                out[k] = t
    except OSError as exc:
        raise SaeError(f"{path}: unreadable safetensors file: {exc}") from exc
    return out


def _check_finite_blocks(path: str, tensors: dict[str, torch.Tensor], rows: int = 4096) -> None:
    """SaeError naming ``path`` and the tensor where one holds NaN or Inf (checked in row blocks:
    no float32 double of a whole tensor)."""
    for key, t in tensors.items():
        bad = sum(int((~torch.isfinite(b)).sum()) for b in t.split(rows)) if t.numel() else 0
        if bad:
            raise SaeError(f"{path}: {key} has {bad} NaN or Inf value(s)")


def load_llama_scope_stored(weights_path: str, hyperparams_path: str, source: dict | None = None,
                            block: int = 4096) -> StoredSae:
    """A Llama Scope SAE read from its file on demand in its on-disk dtype
    (:class:`saematch.sae.StoredSae`), whose float32 rows equal :func:`load_llama_scope`'s bitwise.

    Reads the biases, then the decoder and encoder once in blocks of features (decoder norms,
    NaN/Inf checks); keeps neither. Semantics: :func:`load_llama_scope`.
    """
    hp = _read_hyperparams(hyperparams_path)
    header = _safetensors_header(weights_path)
    missing = [k for k in LLAMA_KEYS if k not in header]
    if missing:
        raise SaeError(f"{weights_path}: missing key(s) {missing} (file has {sorted(header)})")
    for k in LLAMA_KEYS:
        if header[k]["dtype"] not in ST_FLOATS:
            raise SaeError(f"{weights_path}: tensor {k!r} has dtype {header[k]['dtype']}; "
                           f"expected a float tensor ({', '.join(ST_FLOATS)})")
    shapes = {k: torch.empty(header[k]["shape"], device="meta") for k in LLAMA_KEYS}
    F, d = _llama_dims(weights_path, shapes)
    if hp["d_model"] != d:
        raise SaeError(f"{weights_path}: d_model {d} differs from hyperparams.json's {hp['d_model']}")
    biases = _read_stored(weights_path, ("encoder.bias", "decoder.bias"))
    _check_finite_blocks(weights_path, biases)
    with open(weights_path, "rb") as fh:
        (n_header,) = struct.unpack("<Q", fh.read(8))
    spec = {name: (8 + n_header + header[key]["data_offsets"][0], ST_TORCH[header[key]["dtype"]],
                   ST_NUMPY[header[key]["dtype"]], tuple(header[key]["shape"]))
            for name, key in (("enc", "encoder.weight"), ("dec", "decoder.weight"))}
    if hp["norm_activation"] == "dataset-wise":
        norms = hp["dataset_average_activation_norm"]
        c_in, c_out = math.sqrt(d) / float(norms["in"]), math.sqrt(d) / float(norms["out"])
    else:  # "inference", "none", null
        c_in = c_out = 1.0
    theta = float(hp["jump_relu_threshold"])
    sae = StoredSae(weights_path, spec, torch.ones(F), c_in / c_out, biases["encoder.bias"].float(),
                    biases["decoder.bias"].float() / c_out, torch.full((F,), theta, dtype=torch.float32))
    # ‖decoder.weight[:, i]‖ as the float32 (d, F) matrix's norm(dim=0): per block of the file's
    # columns, the same float32 sums in the same order as over the whole matrix
    parts = []
    for s in range(0, F, block):
        rows = slice(s, min(s + block, F))
        dec, enc = sae.raw("dec", rows), sae.raw("enc", rows)
        _check_finite_blocks(weights_path, {"decoder.weight": dec, "encoder.weight": enc})
        parts.append(dec.T.contiguous().float().norm(dim=0))
    n = torch.cat(parts)
    if not torch.isfinite(n).all() or (n == 0).any():
        raise SaeError(f"{weights_path}: decoder.weight has NaN/Inf or all-zero columns")
    s = n * (c_in / c_out) if hp.get("sparsity_include_decoder_norm", True) else torch.ones_like(n)
    sae.scale, sae.b_enc = s, sae.b_enc * s / c_in
    sae.source = dict(source or {}, format="llama-scope", scalar_threshold=theta, c_in=c_in, c_out=c_out,
                      decoder_norm_min=float(n.min()), decoder_norm_max=float(n.max()))
    log.info("%s: c_in %.4g c_out %.4g decoder norms %.4g–%.4g θ %.4g (read on demand as %s)",
             weights_path, c_in, c_out, float(n.min()), float(n.max()), theta, spec["dec"][1])
    return sae


def load_llama_scope(weights_path: str, hyperparams_path: str, source: dict | None = None) -> Sae:
    """Read a Llama Scope SAE with the official (LM-SAEs 2024) semantics, sae_formats.md §3.5.

    Checkpoint: encoder.weight (F, d), encoder.bias (F,), decoder.weight (d, F), decoder.bias (d,).
    With c_in = √d / norm_in, c_out = √d / norm_out, n_i = ‖decoder.weight[:, i]‖ and
    s_i = n_i·c_in/c_out (1 when ``sparsity_include_decoder_norm`` is false), on raw input:
    W_enc[:, i] = encoder.weight[i]·s_i,  b_enc[i] = encoder.bias[i]·s_i / c_in,
    W_dec[i] = decoder.weight[:, i]·(c_in/c_out)/s_i (unit rows),  b_dec = decoder.bias / c_out,
    threshold = the scalar ``jump_relu_threshold`` broadcast to (F,).
    Read in the file's dtype and made float32 in row blocks (:func:`load_llama_scope_stored`).
    """
    return check_sae(load_llama_scope_stored(weights_path, hyperparams_path, source).materialize(), weights_path)


# --- attention projection ------------------------------------------------------------------

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
            found.update(_check_finite(model_files[shard], _read_safetensors(model_files[shard], [key])))
        where = index
    else:
        where = model_files.get("model.safetensors")
        if where is None:
            raise SaeError(f"model files {sorted(model_files)}: need model.safetensors or its index")
        found = _check_finite(where, _read_safetensors(where, keys))
    o_proj, gain = found[keys[0]], found[keys[1]]
    if o_proj.ndim != 2 or gain.shape != (o_proj.shape[0],):
        raise SaeError(f"{where}: o_proj {tuple(o_proj.shape)} and norm {tuple(gain.shape)} do not fit")
    return o_proj, gain


def _check_finite(path: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` read from ``path``, refused by that file's name where one holds NaN or Inf."""
    for key, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise SaeError(f"{path}: {key} has {bad} NaN or Inf value(s)")
    return tensors


def _pinv_transpose(T: torch.Tensor) -> torch.Tensor:
    """(T⁺)ᵀ in float64, shape of T: from the smaller Gram matrix by Cholesky (full rank), else by SVD."""
    T = T.double()
    tall = T.shape[0] >= T.shape[1]
    L, info = torch.linalg.cholesky_ex(T.T @ T if tall else T @ T.T)
    if info:  # rank-deficient
        return torch.linalg.pinv(T).T
    return torch.cholesky_solve(T.T, L).T if tall else torch.cholesky_solve(T, L)


def project_att(sae: Sae, o_proj: torch.Tensor, gain: torch.Tensor, where: str = "att projection") -> Sae:
    """Map a hook_z SAE into the residual stream through T = diag(1 + g) W_O (d_model, d_z).

    Decoder rows are vectors: v_i = T u_i. Encoder columns are functionals on z: e'_i = (T⁺)ᵀ e_i,
    so that e'_i · (T z) = e_i · z for every z (every z in T's row space where d_z > d_model):
    the direction of attention output the feature reads. Gemma's RMSNorm scales by (1 + g); its
    per-token rescale keeps directions but not levels, so such SAEs are matched on decoder terms
    (config forces weights 'dec'); the verdict compares encoder directions.
    """
    if o_proj.shape[1] != sae.d_out:
        raise SaeError(f"{where}: o_proj is {tuple(o_proj.shape)} but the SAE decodes to {sae.d_out}-d z")
    scale = 1.0 + gain  # (d_model,)
    T = o_proj * scale[:, None]  # (d_model, d_z)
    if not torch.isfinite(T).all():
        raise SaeError(f"{where}: o_proj or the post-attention norm weight has {int((~torch.isfinite(T)).sum())} "
                       "NaN or Inf values in T = diag(1 + g) W_O")
    W_enc = None if sae.W_enc is None else (_pinv_transpose(T).to(sae.W_enc.dtype) @ sae.W_enc)  # (d_model, F)
    return check_sae(
        Sae(W_enc=W_enc, b_enc=sae.b_enc,
            W_dec=sae.W_dec @ T.T,  # (F, d_model)
            b_dec=sae.b_dec @ T.T,
            threshold=sae.threshold,
            source=dict(sae.source, projected="o_proj+post_attention_layernorm")),
        where,
    )


def load_sae(pointer: dict, stored: bool = False) -> Sae | StoredSae:
    """Load the SAE a download pointer names (see :func:`saematch.hub.fetch`). With ``stored``,
    a Llama Scope SAE comes as a :class:`StoredSae` (its on-disk dtype; other formats as Sae)."""
    from .hub import resolve_files

    paths = resolve_files(pointer)
    source = {k: pointer.get(k) for k in ("repo_id", "revision", "commit", "files")}
    fmt = pointer.get("format")
    if fmt == "gemma-scope":
        return load_gemma_scope(paths["params"], dict(source, where=paths["params"]))
    if fmt == "llama-scope":
        load = load_llama_scope_stored if stored else load_llama_scope
        return load(paths["weights"], paths["hyperparams"], dict(source, where=paths["weights"]))
    raise SaeError(f"{pointer.get('repo_id')}: unknown SAE format {fmt!r}")



def load_pair(src: dict, dst: dict, layer: int, model: dict | None = None,
              where: tuple[str, str] = ("layer L", "layer L+1"), stored: bool | None = None) -> tuple:
    """The SAEs of layers ``layer`` and ``layer`` + 1 from their download pointers; with the
    model's pointer, both projected into the residual stream (:func:`project_att`).

    ``stored``: Llama Scope SAEs as :class:`StoredSae` (their on-disk dtype; saematch.match
    folds their rows block by block). None (auto): where they are too wide for the dense solver
    at any setting (F > saematch.solve.LAPJV_MAX_N) and not projected; float32 :class:`Sae` else.
    """
    from .solve import LAPJV_MAX_N

    if model is not None:
        stored = False
    saes = [load_sae(src, stored=stored is not False), load_sae(dst, stored=stored is not False)]
    if stored is None and max(s.n_features for s in saes) <= LAPJV_MAX_N:
        saes = [_materialize(s, p) for s, p in zip(saes, (src, dst))]
    if model is not None:
        from .hub import resolve_files

        files = resolve_files(model)
        saes = [project_att(sae, *load_att_projection(files, L), where=w)
                for sae, L, w in zip(saes, (layer, layer + 1), where)]
    return saes[0], saes[1]


def _materialize(sae, pointer: dict):
    """A StoredSae as the checked float32 Sae load_sae would have returned."""
    if not isinstance(sae, StoredSae):
        return sae
    return check_sae(sae.materialize(), sae.source.get("where", pointer.get("repo_id")))
