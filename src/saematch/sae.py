"""The one in-memory SAE form: JumpReLU with per-feature threshold, float32, on the CPU."""

from __future__ import annotations

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


def check_sae(sae: Sae, where: str) -> Sae:
    """Check shapes, finiteness and θ > 0; raise SaeError naming ``where`` and the tensor."""
    F = sae.W_dec.shape[0] if sae.W_dec.ndim == 2 else None
    if F is None:
        raise SaeError(f"{where}: W_dec must be 2-D (F, d), got shape {tuple(sae.W_dec.shape)}")
    d_out = sae.W_dec.shape[1]
    expected = {"W_dec": (F, d_out), "b_dec": (d_out,), "threshold": (F,)}
    if sae.W_enc is not None:
        if sae.W_enc.ndim != 2:
            raise SaeError(f"{where}: W_enc must be 2-D (d, F), got shape {tuple(sae.W_enc.shape)}")
        expected["W_enc"] = (sae.W_enc.shape[0], F)
        expected["b_enc"] = (F,)
    for name, shape in expected.items():
        t = getattr(sae, name)
        if tuple(t.shape) != shape:
            raise SaeError(
                f"{where}: {name} has shape {tuple(t.shape)}, expected {shape} "
                f"(F={F} features from W_dec)"
            )
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise SaeError(f"{where}: {name} has {bad} NaN or Inf values")
    if not (sae.threshold > 0).all():
        bad = int((sae.threshold <= 0).sum())
        raise SaeError(
            f"{where}: threshold must be > 0 for folding; {bad} of {F} values are ≤ 0 "
            f"(min {float(sae.threshold.min()):.3g})"
        )
    return sae
