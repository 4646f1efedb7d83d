"""The one in-memory SAE form: JumpReLU with per-feature threshold, float32, on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import SaeError

__all__ = ["Sae", "SaeError", "check_sae", "encode", "decode", "reconstruct"]


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
