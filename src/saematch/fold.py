"""SAE Match parameter folding (Balagansky et al., ICLR 2025, §3.1, eq. 4)."""

from __future__ import annotations

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
