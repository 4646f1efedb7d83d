"""The verdict: calibrated on pairs with a known truth, silent on unrelated layers, and the
partial assignment exact."""

import itertools

import numpy as np
import pytest
import torch

from saematch.match import match_pair
from saematch.verdict import directions, fit_lfdr, neighbours, partial_assignment, verdict
from verdict_pairs import calibration_error, synthetic_pair


def judged(F=1000, d=256, **kw):
    src, dst, planted = synthetic_pair(F=F, d=d, **kw)
    cols, stats = match_pair(src, dst, device="cpu")
    return cols, stats, planted


@pytest.mark.parametrize("persist", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("cos_lo", [0.5, 0.3])
def test_confidence_is_calibrated_for_the_assignment_and_top1_at_any_share_of_persisting_features(persist, cos_lo):
    cols, _, planted = judged(persist=persist, cos_lo=cos_lo, seed=int(10 * persist + 100 * cos_lo))
    truth = (planted >= 0) & (cols["match"] == planted)
    top1_truth = (planted >= 0) & (cols["top1"] == planted)
    assert calibration_error(cols["confidence"], truth) <= 0.05
    assert calibration_error(cols["top1_confidence"], top1_truth) <= 0.05
    declared = cols["persists"]
    assert (truth & declared).sum() / declared.sum() >= 0.95  # precision
    assert (truth & declared).sum() / truth.sum() >= 0.95  # recall


def test_confidence_stays_calibrated_in_fewer_dimensions_where_weak_matches_hide_in_the_null():
    cols, _, planted = judged(d=96, persist=0.5, cos_lo=0.3, seed=7)
    truth = (planted >= 0) & (cols["match"] == planted)
    assert calibration_error(cols["confidence"], truth) <= 0.05
    assert (truth & cols["persists"]).sum() / cols["persists"].sum() >= 0.95  # precision holds, recall gives


@pytest.mark.parametrize("seed", [0, 1])
def test_independently_drawn_layers_are_almost_never_declared_persisting(seed):
    cols, stats, _ = judged(unrelated=True, seed=seed)
    assert cols["persists"].mean() <= 0.02 and cols["top1_persists"].mean() <= 0.02
    assert stats["verdict"]["pi0"] == 1.0


def test_a_forced_match_of_a_dying_feature_gets_low_confidence():
    cols, _, planted = judged(persist=0.5, seed=3)
    dying = planted < 0
    assert np.median(cols["confidence"][dying]) < 0.05 and cols["persists"][dying].mean() < 0.02


def test_without_encoders_the_verdict_uses_decoder_directions_and_still_rejects_unrelated_layers():
    src, dst, _ = synthetic_pair(F=800, d=256, unrelated=True, seed=4)
    U, _ = directions(src.W_dec, None)
    V, _ = directions(dst.W_dec, None)
    columns, stats = verdict(U, None, V, None, np.arange(800))
    assert not stats["encoders"] and columns["persists"].mean() <= 0.02


def test_lfdr_is_one_where_observed_scores_look_like_the_null_and_falls_with_the_score():
    rng = np.random.default_rng(0)
    null = rng.normal(0, 1, 4000)
    lfdr, pi0 = fit_lfdr(rng.normal(0, 1, 2000), null)
    assert pi0 > 0.9 and np.mean(lfdr(rng.normal(0, 1, 500))) > 0.8
    mixed = np.concatenate([rng.normal(0, 1, 1000), rng.normal(5, 1, 1000)])
    lfdr, pi0 = fit_lfdr(mixed, null)
    grid = np.linspace(-3, 8, 200)
    assert np.all(np.diff(lfdr(grid)) <= 1e-12) and lfdr(7.0) == 0.0 and lfdr(-3.0) == 1.0
    assert 0.4 < pi0 < 0.65  # Storey's estimate of the null half (biased up)


def test_neighbours_are_the_row_and_column_top_k_of_the_full_cosine_matrix():
    g = torch.Generator().manual_seed(0)
    U = torch.nn.functional.normalize(torch.randn(70, 16, generator=g), dim=1)
    V = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    nb = neighbours(U, V, k=5, chunk=16)
    D = (U @ V.T).numpy()
    np.testing.assert_array_equal(nb["row_top"], np.argsort(-D, axis=1, kind="stable")[:, :5])
    np.testing.assert_array_equal(nb["col_top"], np.argsort(-D, axis=0, kind="stable")[:5].T)
    np.testing.assert_array_equal(nb["top1"], D.argmax(1))
    np.testing.assert_allclose(nb["top1_cosine"], D.max(1), rtol=1e-6)


def brute_force_partial(C, tau_src, tau_dst):
    """The cheapest one-to-one partial matching, by enumerating every one."""
    ns, nd = C.shape
    best = np.inf
    for choice in itertools.product(range(-1, nd), repeat=ns):
        used = [j for j in choice if j >= 0]
        if len(used) != len(set(used)):
            continue
        total = sum(C[i, j] if j >= 0 else tau_src[i] for i, j in enumerate(choice))
        total += sum(tau_dst[j] for j in range(nd) if j not in used)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_the_partial_assignment_is_the_brute_force_optimum_and_certified(seed, shape):
    rng = np.random.default_rng(seed)
    C = rng.random(shape).astype(np.float32) * 4
    tau_src, tau_dst = (rng.random(n).astype(np.float32) * 2 for n in shape)
    match, matched_cost, cert = partial_assignment(C, tau_src, tau_dst)
    total = matched_cost.sum() + tau_src[match < 0].sum() + np.delete(tau_dst, match[match >= 0]).sum()
    assert total == pytest.approx(brute_force_partial(C, tau_src, tau_dst), rel=1e-6)
    assert cert["certified"] and len(set(match[match >= 0])) == (match >= 0).sum()


def test_partial_matching_leaves_dying_features_unmatched_and_keeps_persisting_ones():
    src, dst, planted = synthetic_pair(F=600, d=256, persist=0.5, seed=5)
    cols, stats = match_pair(src, dst, device="cpu", partial=True)
    persisting = planted >= 0
    assert stats["certificate"]["certified"] and 0 < stats["verdict"]["partial"]["r_cut"] < 1
    assert (cols["match"][persisting] == planted[persisting]).mean() >= 0.9
    assert (cols["match"][~persisting] == -1).mean() >= 0.6  # the full permutation: 0


def test_the_summarys_calibration_error_is_the_direct_one_and_the_same_on_every_call():
    import polars as pl

    from saematch.summary import calibration_error as grouped

    rng = np.random.default_rng(0)
    g, c = rng.integers(0, 3, 20000), rng.random(20000)
    ok = rng.random(20000) < c  # calibrated by construction
    df = pl.DataFrame({"g": g, "c": c, "ok": ok})
    runs = {tuple(grouped(df, "c", pl.col("ok"), ["g"]).sort("g")["c_ece"].to_list()) for _ in range(20)}
    assert len(runs) == 1  # summaries of the same matches are byte-identical (local and Slurm runs)
    np.testing.assert_allclose(next(iter(runs)), [calibration_error(c[g == k], ok[g == k]) for k in range(3)],
                               rtol=1e-12)
