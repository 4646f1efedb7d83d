"""What folding is for, measured on planted truth: recovery with and without folding.

Used on the demo, whose persisting features change by JumpReLU's own scale symmetry (W_enc·c,
b_enc·c, θ·c, W_dec/c) between layers: folding undoes it, raw parameters do not.
"""

from __future__ import annotations

import numpy as np

from .match import match_pair
from .sae import Sae


def fold_ablation(src: Sae, dst: Sae, planted: np.ndarray, options: dict) -> dict[str, float]:
    """Share of planted matches (planted[i] ≥ 0: i's successor) recovered with fold on and off.

    ``options``: the pair's match options (fold is set both ways; the rest as given).
    """
    persists = planted >= 0
    out = {}
    for fold, key in ((True, "planted_recovered_folded"), (False, "planted_recovered_unfolded")):
        columns, _ = match_pair(src, dst, **{**options, "fold": fold})
        out[key] = float((columns["match"][persists] == planted[persists]).mean())
    return out
