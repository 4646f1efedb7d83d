"""Synthetic SAE pairs with a known truth for the persistence verdict: two layers of the demo's
planted generator (saematch.demo.planted_site: near-duplicates, persisting features at chosen
cosines under JumpReLU's scale symmetry, dying features with look-alikes), at any share of
persisting features and cosine range; ``unrelated``: nothing persists and nothing looks alike."""

from __future__ import annotations

import numpy as np

from saematch.demo import planted_pair


def synthetic_pair(F=1000, d=256, persist=0.5, cos_lo=0.3, cos_hi=0.95, seed=0, unrelated=False):
    """(src, dst, planted): planted[i] = the successor of src feature i in dst, or −1."""
    return planted_pair(F, d, persist, seed, cos=(cos_lo, cos_hi), unrelated=unrelated)


def calibration_error(confidence, truth, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins of confidence (Naeini et al. 2015)."""
    confidence, truth = np.asarray(confidence, np.float64), np.asarray(truth, np.float64)
    b = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum((b == k).mean() * abs(truth[b == k].mean() - confidence[b == k].mean())
                     for k in range(bins) if (b == k).any()))
