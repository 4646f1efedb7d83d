"""SAE Match parameter folding (Balagansky et al., ICLR 2025, §3.1, eq. 4)."""

from __future__ import annotations

import numpy as np
import torch

from .sae import Sae, SaeError


def fold(sae: Sae) -> Sae:
    """Fold the JumpReLU threshold into the weights; the reconstruction is unchanged.

    W_enc[:, i] / θ_i,  b_enc[i] / θ_i,  θ_i · W_dec[i],  threshold → 1,  b_dec unchanged.
    pre' = pre/θ, so the gate pre' > 1 ⇔ pre > θ and f'·W_dec' = f·W_dec. Requires θ > 0.
    """
    theta = sae.threshold  # (F,)
    if not (theta > 0).all():
        raise SaeError(f"{sae.source.get('where', 'SAE')}: cannot fold, threshold has values ≤ 0")
    return Sae(
        W_enc=None if sae.W_enc is None else sae.W_enc / theta,  # (d_in, F)
        b_enc=None if sae.b_enc is None else sae.b_enc / theta,
        W_dec=sae.W_dec * theta[:, None],  # (F, d_out)
        b_dec=sae.b_dec,
        threshold=torch.ones_like(theta),
        source=dict(sae.source, folded=True),
    )


class FeatureRows:
    """The matched feature vectors of one SAE (saematch.cost.feature_vectors of its fold), made
    block by block from the loaded tensors instead of held whole: (n, p) float32 rows, bitwise
    the rows of ``feature_vectors(fold(sae), weights)`` (the same float32 operations per entry).

    ``sae``: a :class:`Sae` (float32) or a :class:`saematch.sae.StoredSae` (its on-disk dtype,
    e.g. bf16: half the memory of float32). Read by saematch.sparse (``rows``) as it streams.
    """

    def __init__(self, sae, weights: str = "enc+dec+benc", folded: bool = True, device=None, step: int | None = None):
        from .cost import WEIGHT_SETS
        from .sae import StoredSae

        if weights not in WEIGHT_SETS:
            raise ValueError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}")
        self.sae, self.weights, self.folded = sae, weights, folded
        self.device = torch.device(device or "cpu")
        self.stored = isinstance(sae, StoredSae)
        if weights != "dec" and not self.stored and sae.W_enc is None:
            raise SaeError(f"{sae.source.get('where', 'SAE')}: weights={weights!r} needs an encoder "
                           "in the same space as the other layer's; this SAE has none (use 'dec')")
        theta = sae.threshold
        if folded and not (theta > 0).all():
            raise SaeError(f"{sae.source.get('where', 'SAE')}: cannot fold, threshold has values ≤ 0")
        self.d = sae.d_out
        self.d_in = 0 if weights == "dec" else (sae.d_in if self.stored else sae.W_enc.shape[0])
        self.n, self.p = sae.n_features, self.d + self.d_in + (weights == "enc+dec+benc")
        self.step = step or max(16, (1 << 20) // self.p)  # rows of 4 MiB of float32 per step
        b = sae.b_enc
        self.b = None if weights != "enc+dec+benc" else (b / theta if folded else b)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.p)

    def __len__(self) -> int:
        return self.n

    def _parts(self, idx, out: torch.Tensor, raw=None, at=None) -> None:
        """Rows idx into ``out``; for a StoredSae, from ``raw`` = its stored rows, rows ``at`` of them."""
        sae, d = self.sae, self.d
        if self.stored:
            dec = sae.dec_float(raw[0][at], idx)
            enc = sae.enc_float(raw[1][at], idx) if self.d_in else None
        else:
            dec = sae.W_dec[idx].to(torch.float32, copy=True)
            enc = sae.W_enc[:, idx].T.to(torch.float32, copy=True) if self.d_in else None
        if self.folded:
            theta = sae.threshold[idx, None]
            dec.mul_(theta)  # fold: W_dec·θ, W_enc/θ, b_enc/θ
            if enc is not None:
                enc.div_(theta)
        out[:, :d] = dec
        if enc is not None:
            out[:, d:d + self.d_in] = enc
        if self.b is not None:
            out[:, -1] = self.b[idx]

    def rows(self, idx, device=None) -> torch.Tensor:
        """Rows ``idx`` (a slice, read as one block from a StoredSae's file, or an int64 index
        tensor) as (m, p) float32 on ``device`` (default the source's), made in steps of ``step``
        rows (cache-sized temporaries)."""
        if isinstance(idx, slice):
            start, stop, _ = idx.indices(self.n)
            m = max(0, stop - start)
        else:
            idx = torch.as_tensor(idx, dtype=torch.long).cpu()
            m = len(idx)
        raw = None
        if self.stored:
            raw = (self.sae._rows("dec", idx), self.sae._rows("enc", idx) if self.d_in else None)
        out = torch.empty((m, self.p))
        for s in range(0, m, self.step):
            at = slice(s, min(s + self.step, m))
            sub = slice(start + at.start, start + at.stop) if isinstance(idx, slice) else idx[at]
            self._parts(sub, out[at], raw, at)
        return out.to(device or self.device)

    def norms(self, chunk: int = 4096) -> np.ndarray:
        """‖row‖ in float64 (saematch.match.feature_norms of the same rows)."""
        return np.concatenate([torch.linalg.vector_norm(self.rows(slice(s, min(s + chunk, self.n)), "cpu").double(),
                                                        dim=1).numpy() for s in range(0, self.n, chunk)]
                              or [np.empty(0)])


def pair_rows(src, dst, weights: str, folded: bool = True, device=None) -> tuple[FeatureRows, FeatureRows]:
    """:class:`FeatureRows` of the two SAEs of a pair (saematch.cost.pair_vectors without the
    (F, p) float32 matrices), after the same checks: a shared model width and input width."""
    a, b = src.source.get("where", "layer L"), dst.source.get("where", "layer L+1")
    if src.d_out != dst.d_out:
        raise SaeError(f"{a} decodes to d_model={src.d_out} but {b} to d_model={dst.d_out}: "
                       "a pair must share the model width")
    X, Y = FeatureRows(src, weights, folded, device), FeatureRows(dst, weights, folded, device)
    if weights != "dec" and X.d_in != Y.d_in:
        raise SaeError(f"{a} encodes {X.d_in}-d input but {b} {Y.d_in}-d")
    return X, Y
