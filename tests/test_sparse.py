import numpy as np
import pytest
import torch

import saematch.solve
from saematch.match import match_pair
from saematch.solve import LAPJV_MAX_N, choose_solver, solve_lap
from saematch.sparse import solve_sparse
from conftest import random_sae


def total64(X, Y, match):
    X, Y = X.double(), Y.double()
    return float(((X - Y[torch.from_numpy(match.astype(np.int64))]) ** 2).sum())


def problems():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 12, generator=g) * torch.exp(0.5 * torch.randn(400, 1, generator=g))
    perm = torch.randperm(400, generator=g)
    yield "similar", X, (X + 0.3 * torch.randn(400, 12, generator=g))[perm]
    yield "low-similarity", X, torch.randn(400, 12, generator=g)
    yield "tie-heavy", torch.randint(0, 2, (400, 6), generator=g).float(), torch.randint(0, 2, (400, 6), generator=g).float()


@pytest.mark.parametrize("name,X,Y", list(problems()), ids=lambda p: p if isinstance(p, str) else "")
def test_sparse_path_equals_the_dense_optimum_with_k_too_small_for_one_round(name, X, Y):
    cost = torch.cdist(X.double(), Y.double()).pow(2).float().numpy()
    dense, *_ = solve_lap(cost)
    match, matched_cost, cert, _, _ = solve_sparse(X, Y, k=1, chunk=64)
    assert cert["certified"] and cert["rounds"] > 1  # the pricing loop did the work
    assert sorted(match.tolist()) == list(range(400))
    assert total64(X, Y, match) == pytest.approx(total64(X, Y, dense), rel=1e-6, abs=1e-6)
    assert cert["gap_bound"] <= 1e-6 * max(1.0, matched_cost.sum())


def test_auto_picks_dense_up_to_lapjvs_limit_and_memory_then_sparse():
    assert choose_solver(16384, 16384) == "dense"
    assert choose_solver(LAPJV_MAX_N + 1, LAPJV_MAX_N + 1, dense_max_gb=100) == "sparse"
    assert choose_solver(32768, 32768, dense_max_gb=2) == "sparse"
    with pytest.raises(ValueError, match="lapjv's limit"):
        choose_solver(65536, 65536, "dense")


def test_a_width_above_lapjvs_limit_runs_through_the_sparse_path_without_lapjv(monkeypatch):
    def no_lapjv(*args, **kwargs):
        raise AssertionError("lapjv was called")

    monkeypatch.setattr(saematch.solve, "lapjv", no_lapjv)
    n = LAPJV_MAX_N + 60
    src = random_sae(d=3, F=n, seed=0)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(n, generator=g)
    dst = type(src)(W_enc=src.W_enc[:, perm] * 1.01, b_enc=src.b_enc[perm], W_dec=src.W_dec[perm] * 0.99,
                    b_dec=src.b_dec, threshold=src.threshold[perm])
    cols, stats = match_pair(src, dst, device="cpu", chunk_size=1024, k=4)
    cert = stats["certificate"]
    assert cert["solver"].startswith("sparse") and cert["certified"]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    assert (cols["match"] == inverse.numpy()).mean() > 0.999
