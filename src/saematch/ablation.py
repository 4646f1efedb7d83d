"""The demo's ablations, measured on planted truth: what folding and the verdict are for.

The demo's persisting features change by JumpReLU's own scale symmetry (W_enc·c, b_enc·c, θ·c,
W_dec/c) between layers: folding undoes it, raw parameters do not. Its dying features are
force-matched by a full permutation: the verdict (``persists``) or the partial assignment
(``match.partial``) should leave them unmatched.
"""

from __future__ import annotations

import numpy as np

from .match import match_pair
from .sae import Sae


def planted_ablation(src: Sae, dst: Sae, planted: np.ndarray, options: dict) -> dict[str, float]:
    """planted[i] ≥ 0: i's successor; −1: i dies. ``options``: the pair's match options.

    Returns planted_recovered_folded / _unfolded (share of persisting features matched to
    their successor, fold on and off), planted_agreement_masked (share of all features whose
    planted map, −1 included, equals the full assignment masked by ``persists``) and
    planted_agreement_partial (the same for the partial assignment as it stands).
    """
    persists = planted >= 0
    out = {}
    for fold, key in ((True, "planted_recovered_folded"), (False, "planted_recovered_unfolded")):
        columns, _ = match_pair(src, dst, **{**options, "fold": fold, "partial": False})
        out[key] = float((columns["match"][persists] == planted[persists]).mean())
        if fold:
            masked = np.where(columns["persists"], columns["match"], -1)
            out["planted_agreement_masked"] = float((masked == planted).mean())
    columns, _ = match_pair(src, dst, **{**options, "partial": True})
    out["planted_agreement_partial"] = float((columns["match"] == planted).mean())
    return out
