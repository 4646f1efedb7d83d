"""The one in-memory SAE form: JumpReLU with per-feature threshold, float32, on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import SaeError

__all__ = ["Sae", "SaeError", "StoredSae", "check_sae", "decode", "encode", "materialize", "reconstruct"]


@dataclass(frozen=True)
class Sae:
    """A JumpReLU SAE in stored (SAELens) layout.

    W_enc : (d_in, F) float32, or None once the encoder is dropped (att projected to resid)
    b_enc : (F,) float32, or None with W_enc
    W_dec : (F, d_out) float32; row i is feature i's decoder direction
    b_dec : (d_out,) float32
    threshold : (F,) float32, > 0 (Llama Scope's scalar broadcast to (F,))
    source : where it came from (repo, revision, files, sha256 ...), for provenance
    """

    W_enc: torch.Tensor | None
    b_enc: torch.Tensor | None
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor
    source: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]


def encode(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    """JumpReLU code f = pre · 1[pre > θ], pre = x W_enc + b_enc.  x (..., d_in) → (..., F)."""
    pre = x @ sae.W_enc + sae.b_enc
    return pre * (pre > sae.threshold)


def decode(sae: Sae, f: torch.Tensor) -> torch.Tensor:
    """x̂ = f W_dec + b_dec.  f (..., F) → (..., d_out)."""
    return f @ sae.W_dec + sae.b_dec


def reconstruct(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    return decode(sae, encode(sae, x))


def shape_error(where: str, name: str, shape, expected: tuple, note: str) -> SaeError:
    """The error for tensor ``name`` of shape ``shape`` where ``expected`` was due (hint if transposed)."""
    shape = tuple(shape)
    hint = " — transposed?" if len(expected) == 2 and shape == expected[::-1] else ""
    return SaeError(f"{where}: {name} has shape {shape}, expected {expected}{hint} ({note})")


def check_sae(sae: Sae, where: str) -> Sae:
    """Check shapes, finiteness and θ > 0; raise SaeError naming ``where`` and the tensor.

    F is the size most of threshold (F,), b_enc (F,), W_enc (d_in, F) and W_dec (F, d_out)
    agree on (threshold wins ties); d_out is b_dec's length. So the message names the tensor
    that is actually off, e.g. "W_dec has shape (d, F), expected (F, d) — transposed?".
    """
    if (sae.W_enc is None) != (sae.b_enc is None):
        raise SaeError(f"{where}: W_enc and b_enc must both be present or both be None")
    ndim = {"W_enc": 2, "b_enc": 1, "W_dec": 2, "b_dec": 1, "threshold": 1}
    tensors = {k: getattr(sae, k) for k in ndim if getattr(sae, k) is not None}
    for name, t in tensors.items():
        if t.ndim != ndim[name]:
            raise SaeError(f"{where}: {name} must be {ndim[name]}-D, got shape {tuple(t.shape)}")
    sizes = [sae.threshold.shape[0]] + ([sae.b_enc.shape[0], sae.W_enc.shape[1]] if sae.W_enc is not None else [])
    sizes.append(sae.W_dec.shape[0])
    F, d_out = max(sizes, key=sizes.count), sae.b_dec.shape[0]
    if F == 0 or d_out == 0:
        raise SaeError(f"{where}: empty SAE ({F} features, d_out {d_out})")
    expected = {"threshold": (F,), "W_dec": (F, d_out), "b_dec": (d_out,)}
    if sae.W_enc is not None:
        d_in, F_enc = sae.W_enc.shape
        expected |= {"b_enc": (F,), "W_enc": (F_enc if d_in == F != F_enc else d_in, F)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise shape_error(where, name, tensors[name].shape, shape,
                              f"F={F} features as most of threshold, b_enc, W_enc, W_dec say; d_out={d_out} from b_dec")
    for name, t in tensors.items():
        # in row blocks of ~1M values: isfinite on a whole matrix makes full-size temporaries
        rows = max(1, (1 << 20) // max(1, math.prod(t.shape[1:])))
        bad = sum(int((~torch.isfinite(block)).sum()) for block in t.split(rows))
        if bad:
            raise SaeError(f"{where}: {name} has {bad} NaN or Inf values")
    if not (sae.threshold > 0).all():
        bad = int((sae.threshold <= 0).sum())
        raise SaeError(
            f"{where}: threshold must be > 0 for folding; {bad} of {F} values are ≤ 0 "
            f"(min {float(sae.threshold.min()):.3g})"
        )
    return sae


def to_device(sae: Sae, device) -> Sae:
    """The same SAE with its tensors on ``device``."""
    from dataclasses import replace

    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return replace(sae, W_enc=move(sae.W_enc), b_enc=move(sae.b_enc), W_dec=move(sae.W_dec),
                   b_dec=move(sae.b_dec), threshold=move(sae.threshold))


class StoredSae:
    """A Llama Scope SAE read from its safetensors file on demand, its weight matrices in their
    on-disk dtype (bfloat16 stays bfloat16: 2 bytes per entry, not float32's 4).

    Row blocks (a slice of features) are read from the file with plain reads, never memory
    mapped (the file's pages stay out of this process's RSS) and nothing is kept; gathering
    scattered rows first loads both matrices (:meth:`hold`: ``enc`` (F, d_in), ``dec`` (F, d_out),
    the file's decoder.weight (d_out, F) transposed) and keeps them until :meth:`release`.

    ``scale`` (F,) float32 s_i and ``c`` = c_in / c_out (saematch.load.load_llama_scope);
    b_enc, b_dec, threshold, source as in :class:`Sae` (float32, already scaled). Rows come out
    bitwise equal to the float32 :class:`Sae` the loader returns (:meth:`materialize`) and to its
    fold (saematch.fold): the same float32 operations per entry, ``W_dec[i] = dec[i]·c / s_i``,
    ``W_enc[:, i] = enc[i]·s_i``, folded ``·θ_i`` and ``/θ_i``.
    """

    def __init__(self, path: str, tensors: dict, scale: torch.Tensor, c: float, b_enc: torch.Tensor,
                 b_dec: torch.Tensor, threshold: torch.Tensor, source: dict | None = None):
        # tensors: "enc"/"dec" → (offset in the file, torch dtype, numpy dtype, file shape)
        self.path, self.tensors, self.scale, self.c = path, tensors, scale, c
        self.b_enc, self.b_dec, self.threshold, self.source = b_enc, b_dec, threshold, dict(source or {})
        self._held: dict[str, torch.Tensor] = {}

    @property
    def n_features(self) -> int:
        return self.tensors["dec"][3][1]

    @property
    def d_out(self) -> int:
        return self.tensors["dec"][3][0]

    @property
    def d_in(self) -> int:
        return self.tensors["enc"][3][1]

    @property
    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._held.values())

    @property
    def enc(self) -> torch.Tensor:
        return self.hold()._held["enc"]

    @property
    def dec(self) -> torch.Tensor:
        return self.hold()._held["dec"]

    def hold(self) -> StoredSae:
        """Read both matrices into memory in their file dtype (kept until :meth:`release`)."""
        if not self._held:
            F = self.n_features
            self._held = {"enc": self.raw("enc", slice(0, F)), "dec": self.raw("dec", slice(0, F))}
        return self

    def release(self) -> None:
        self._held = {}

    def raw(self, name: str, rows: slice) -> torch.Tensor:
        """Rows ``rows`` (a slice) of "enc" or "dec" (features as rows), in the file's dtype: from
        the held copy, else read from the file (the decoder's columns through 8 MiB reads of
        whole rows when the block is wide, else one read per row)."""
        import numpy as np

        if name in self._held:
            return self._held[name][rows]
        offset, dtype, np_dtype, shape = self.tensors[name]
        start, stop, _ = rows.indices(self.n_features)
        b, size = max(0, stop - start), np.dtype(np_dtype).itemsize
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            if name == "enc":  # (F, d_in): the block is contiguous
                out = np.empty((b, shape[1]), np_dtype)
                _pread_into(fd, out, offset + start * shape[1] * size, self.path)
                return torch.from_numpy(out).view(dtype)
            d, F = shape  # (d_out, F): the block is d runs of b entries, F apart
            out = torch.empty((b, d), dtype=dtype)
            if b * 8 >= F:  # wide block: read whole rows (8 MiB at a time), keep the columns
                step = max(1, (8 << 20) // (F * size))
                buf = np.empty((min(step, d), F), np_dtype)
                for r in range(0, d, step):
                    m = min(step, d - r)
                    _pread_into(fd, buf[:m], offset + r * F * size, self.path)
                    out[:, r:r + m] = torch.from_numpy(buf[:m, start:stop]).view(dtype).T
            else:
                buf = np.empty((d, b), np_dtype)
                for r in range(d):
                    _pread_into(fd, buf[r], offset + (r * F + start) * size, self.path)
                out.copy_(torch.from_numpy(buf).view(dtype).T)
            return out

    def _rows(self, name: str, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return self.raw(name, idx)
        return self.hold()._held[name][idx]

    def dec_float(self, raw: torch.Tensor, idx) -> torch.Tensor:
        """W_dec rows (float32) from ``raw`` = the stored rows idx."""
        return raw.to(torch.float32, copy=True).mul_(self.c).div_(self.scale[idx, None])

    def enc_float(self, raw: torch.Tensor, idx) -> torch.Tensor:
        """W_enc columns as rows (float32) from ``raw`` = the stored rows idx."""
        return raw.to(torch.float32, copy=True).mul_(self.scale[idx, None])

    def dec_rows(self, idx) -> torch.Tensor:
        """W_dec[idx] (m, d_out) float32 (idx: a slice, read from the file, or an index tensor)."""
        return self.dec_float(self._rows("dec", idx), idx)

    def enc_rows(self, idx) -> torch.Tensor:
        """W_enc[:, idx].T (m, d_in) float32: the encoder columns as rows."""
        return self.enc_float(self._rows("enc", idx), idx)

    def materialize(self, chunk: int = 4096) -> Sae:
        """The float32 :class:`Sae` (what saematch.load.load_llama_scope returns), built from row
        blocks read from the file: no float32 double of a whole stored matrix beside the result."""
        F, d_in, d_out = self.n_features, self.d_in, self.d_out
        W_enc, W_dec = torch.empty((d_in, F)), torch.empty((F, d_out))
        for s in range(0, F, chunk):
            rows = slice(s, min(s + chunk, F))
            W_enc[:, rows] = self.enc_rows(rows).T
            W_dec[rows] = self.dec_rows(rows)
        return Sae(W_enc=W_enc, b_enc=self.b_enc, W_dec=W_dec, b_dec=self.b_dec, threshold=self.threshold,
                   source=self.source)


def _pread_into(fd: int, out, offset: int, path: str) -> None:
    """Fill the C-order numpy array ``out`` from byte ``offset`` of the open file ``fd``."""
    import os

    view = memoryview(out.reshape(-1).view("uint8"))
    at = 0
    while at < len(view):
        got = os.preadv(fd, [view[at:at + (1 << 26)]], offset + at)
        if got <= 0:
            raise SaeError(f"{path}: truncated file (data ends early)")
        at += got


def materialize(sae) -> Sae:
    """A :class:`Sae` for a :class:`StoredSae` (float32, in memory), else ``sae`` itself."""
    return sae.materialize() if isinstance(sae, StoredSae) else sae
