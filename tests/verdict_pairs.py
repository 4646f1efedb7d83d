"""Synthetic SAE pairs with a known truth for the persistence verdict: two layers of the demo's
planted generator (saematch.demo.planted_site: near-duplicates, persisting features at chosen
cosines under JumpReLU's scale symmetry, dying features with look-alikes), at any share of
persisting features and cosine range; ``unrelated``: nothing persists and nothing looks alike."""

from __future__ import annotations

import numpy as np
import torch

from saematch.demo import planted_site
from saematch.sae import Sae


def _sae(st) -> Sae:
    t = {"W_enc": (st["enc_dir"] * st["enc_gain"][:, None]).T, "W_dec": st["dec_dir"] * st["dec_gain"][:, None],
         "b_enc": st["b_enc"], "threshold": st["threshold"], "b_dec": np.zeros(st["dec_dir"].shape[1])}
    return Sae(**{k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in t.items()})


def synthetic_pair(F=1000, d=256, persist=0.5, cos_lo=0.3, cos_hi=0.95, seed=0, unrelated=False):
    """(src, dst, planted): planted[i] = the successor of src feature i in dst, or −1."""
    rng = np.random.default_rng(seed)
    layers, planted = planted_site(2, F, d, 0.0 if unrelated else persist, rng, cos=(cos_lo, cos_hi),
                                   distract=0.0 if unrelated else 0.5)
    return _sae(layers[0]), _sae(layers[1]), planted[0].astype(np.int64)


def calibration_error(confidence, truth, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins of confidence (Naeini et al. 2015)."""
    confidence, truth = np.asarray(confidence, np.float64), np.asarray(truth, np.float64)
    b = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum((b == k).mean() * abs(truth[b == k].mean() - confidence[b == k].mean())
                     for k in range(bins) if (b == k).any()))
