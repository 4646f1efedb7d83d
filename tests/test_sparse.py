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


@pytest.mark.parametrize("p", [7, 300, 4097])
def test_the_bf16_screen_bound_holds_for_every_pair(p):
    from saematch.sparse import _y_bf16, _y_bf16_buffers, prepare, screen_bound

    g = torch.Generator().manual_seed(p)
    X = torch.randn(300, p, generator=g) * torch.exp(2 * torch.randn(300, 1, generator=g))
    Y = torch.cat([X[:100] * 3 + 1e-3 * torch.randn(100, p, generator=g),  # near-parallel pairs
                   torch.randn(200, p, generator=g) * 1e-3])
    a, b = screen_bound(p)
    S = prepare(X, Y, torch.device("cpu"))
    Y = Y[S["order"]]  # pricing's internal column order
    G = (X.bfloat16() @ _y_bf16(S, slice(0, 300), _y_bf16_buffers(S, 8192)).T).double()  # what pricing computes
    exact = -2 * X.double() @ Y.double().T
    bound = 2 * a * X.double().norm(dim=1)[:, None] * Y.double().norm(dim=1)[None, :] + b * G.abs()
    assert ((G - exact).abs() <= bound).all()
    assert (G - exact).abs().max() > 0.05 * bound.max()  # bf16 rounding really is at work


def test_x_streamed_from_disk_gives_the_same_certified_optimum(tmp_path):
    from saematch.sparse import npy_rows

    g = torch.Generator().manual_seed(3)
    X = torch.randn(500, 20, generator=g) * torch.exp(0.5 * torch.randn(500, 1, generator=g))
    Y = (X + 0.5 * torch.randn(500, 20, generator=g))[torch.randperm(500, generator=g)]
    np.save(tmp_path / "X.npy", X.numpy())
    np.save(tmp_path / "Y.npy", Y.numpy())
    in_memory = solve_sparse(X, Y, k=2, chunk=64, col_chunk=128)
    streamed = solve_sparse(npy_rows(tmp_path / "X.npy"), npy_rows(tmp_path / "Y.npy"), k=2, chunk=64,
                            col_chunk=128)
    assert streamed[2]["certified"] and in_memory[2]["certified"]
    assert total64(X, Y, streamed[0]) == pytest.approx(total64(X, Y, in_memory[0]), rel=1e-9)


def test_row_files_that_are_not_float32_matrices_or_are_truncated_are_refused(tmp_path):
    from saematch.sparse import npy_rows, prepare

    np.save(tmp_path / "f64.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match="f64.npy.*float32"):
        npy_rows(tmp_path / "f64.npy")
    np.save(tmp_path / "X.npy", np.ones((40, 3), np.float32))
    rows = npy_rows(tmp_path / "X.npy")
    with open(tmp_path / "X.npy", "r+b") as f:
        f.truncate(rows.offset + 4 * 3 * 30)
    with pytest.raises(ValueError, match="X.npy: truncated"):
        prepare(rows, torch.ones(40, 3), torch.device("cpu"))


def test_pricing_selects_m_lowest_per_group_and_up_to_4m_where_that_many_are_negative():
    from saematch.sparse import _lowest

    group = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    rc = torch.cat([torch.arange(10.0), torch.arange(-10.0, 0.0), torch.tensor([5.0, -1.0, 2.0])])
    keep = _lowest(group, rc, m=2)
    assert keep[:10].tolist() == [True, True] + [False] * 8  # m = 2 lowest
    assert keep[10:20].tolist() == [True] * 8 + [False] * 2  # 10 negative: 4m = 8 lowest
    assert keep[20:].tolist() == [False, True, True]  # one negative: still m = 2
