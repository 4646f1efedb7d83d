"""The verdict's ambiguity on neighbours written down by hand, against numbers computed from the
formula in the module docstring: κ = c·d_eff/(1 − c²) with c the partner's score clipped to
[0.05, 0.95], a = 1/(1 + Σ exp(−κΔ))."""

import math

import numpy as np
import pytest

from saematch.verdict import ambiguity_top1


def test_the_ambiguitys_kappa_clips_the_partners_score_to_0_05_0_95():
    """Row 0: score 0.99 (above the clip), one row rival at 0.98. Row 1: score −0.2 (below it),
    one row rival at −0.3. No column rivals (each top-1 column is held by its own row only)."""
    d_eff = 10.0
    top1 = np.array([0, 2])
    base = np.array([0.99, -0.2])
    nb = {"row_top": np.array([[0, 1], [2, 1]]),
          "col_top": np.array([[0, -1], [0, 1], [1, -1]]), "col_pos": np.array([[0, -1], [1, 1], [0, -1]])}
    row_m = np.array([[0.99, 0.98], [-0.2, -0.3]])
    got = ambiguity_top1(top1, nb, d_eff, base, row_m)
    kappa_hi = 0.95 * d_eff / (1 - 0.95**2)  # 97.44, not 0.99·10/(1 − 0.99²) = 497.5
    kappa_lo = 0.05 * d_eff / (1 - 0.05**2)  # 0.5013, not negative
    expected = [1 / (1 + math.exp(-kappa_hi * 0.01)), 1 / (1 + math.exp(-kappa_lo * 0.1))]
    assert got == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx([0.72598, 0.51253], abs=1e-5)  # the same numbers on a calculator
