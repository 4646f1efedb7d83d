"""The data-free verdict on real SAEs: SAEs trained on the residual stream of two real pre-trained
models (saematch.realmodels: MiniLM-L6, a BERT encoder, fits the model; SmolLM2-135M, a Llama
decoder, is held out), judged against each feature's activation partner on held-out text.

Building both fixtures takes minutes on 2 cores (module-scoped: once per run)."""

import numpy as np
import pytest

from saematch import calibrate, realmodels
from saematch.realmodels import FIXTURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fixtures():
    return {name: realmodels.build(name, **spec) for name, spec in FIXTURES.items()}


@pytest.fixture(scope="module")
def held_out(fixtures):
    return realmodels.pair_report(realmodels.labelled(fixtures["smollm2-135m"]))


def test_the_fixtures_are_real_saes_that_reconstruct_held_out_text(fixtures):
    for fx in fixtures.values():
        for L, (l0, ev) in fx["sae_quality"].items():
            assert 2 <= l0 <= 100 and ev >= 0.5, (fx["model"], L, l0, ev)


def test_the_shipped_confidence_is_calibrated_on_every_pair_of_the_held_out_model(held_out):
    """The issue's target, ECE ≤ 0.10 for both partners (measured 0.020–0.062, top-1 0.045–0.096;
    the SAEs are trained anew in every run, and the rebuilt fixtures match the fit's)."""
    for r in held_out:
        assert r["ece"] <= 0.10, r
        assert r["top1_ece"] <= 0.10, r


def test_the_old_formula_was_overconfident_there(held_out):
    """The fixture can tell a calibrated verdict from an overconfident one: (1 − lfdr)·a is off."""
    assert max(r["ece_before"] for r in held_out) >= 0.15


def test_persists_keeps_enough_features_and_is_at_least_as_precise_as_the_plain_rule(held_out):
    """Kept ≥ 5%; precision ≥ 2.5× the forced assignment's wherever that is a precision (< 1: the
    forced assignment is right 37–55% of the time here, so only pair 5→6 allows it), and ≥ the
    plain rule's (mutual top-1 = assignment) on every pair."""
    for r in held_out:
        p, plain = r["persists"], r["plain_rule"]
        assert p["kept"] >= 0.05, r
        if 2.5 * r["forced_precision"] < 1:
            assert p["precision"] >= 2.5 * r["forced_precision"], r
        assert p["precision"] >= 1.5 * r["forced_precision"], r
        assert p["precision"] >= plain["precision"], r
        p1 = r["top1_persists"]
        assert p1["kept"] >= 0.05 and p1["precision"] >= 1.1 * r["top1_precision"], r


def test_refitting_on_the_fit_fixtures_gives_the_shipped_model(fixtures):
    """bench/fit_verdict.py's fit, rerun here: the shipped coefficients are reproducible."""
    fit = [realmodels.labelled(fixtures["minilm-l6"]), realmodels.planted_labelled()]
    refit = realmodels.fit_verdict_model(fit)
    shipped = calibrate.load_model()
    held = realmodels.labelled(fixtures["smollm2-135m"])
    for partner, ev in (("match", "evidence"), ("top1", "top1_evidence")):
        X = held[ev].astype(np.float64)
        gap = np.abs(calibrate.logistic_predict(refit[partner], X) - calibrate.logistic_predict(shipped[partner], X))
        assert gap.mean() <= 0.01 and gap.max() <= 0.05, (partner, gap.mean(), gap.max())
