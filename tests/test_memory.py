"""The match job's memory at Llama Scope widths: SAEs held in their on-disk dtype, folded rows
made block by block (saematch.sae.StoredSae, saematch.fold.FeatureRows), the sparse solver and
the verdict streaming them — and every number the same as from the float32 path."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import llama_files
from safetensors.torch import load_file

from saematch.cost import feature_vectors, pair_vectors
from saematch.fold import FeatureRows, fold, pair_rows
from saematch.load import load_llama_scope, load_llama_scope_stored
from saematch.match import match_pair
from saematch.memory import match_memory_bytes
from saematch.sae import SaeError
from saematch.sparse import solve_sparse
from saematch.verdict import directions, neighbours, stored_directions, verdict


def reference_llama(weights, hp) -> dict[str, torch.Tensor]:
    """The loader's float32 arithmetic on the whole checkpoint at once, as it was before the
    stored form (sae_formats.md §3.5): the numbers the stored rows must reproduce."""
    t = {k: v.to(torch.float32) for k, v in load_file(str(weights)).items()}
    d = t["decoder.weight"].shape[0]
    c_in, c_out = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"], \
        math.sqrt(d) / hp["dataset_average_activation_norm"]["out"]
    n = t["decoder.weight"].norm(dim=0)
    s = n * (c_in / c_out)
    return {"W_enc": (t["encoder.weight"] * s[:, None]).T.contiguous(), "b_enc": t["encoder.bias"] * s / c_in,
            "W_dec": (t["decoder.weight"] * (c_in / c_out) / s).T.contiguous(), "b_dec": t["decoder.bias"] / c_out}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_stored_sae_keeps_the_file_dtype_and_its_rows_equal_the_float32_loader_bitwise(tmp_path, dtype):
    w, h, _, hp = llama_files(tmp_path, d=48, F=300, theta=0.07, dtype=dtype, norm_in=6.0, norm_out=9.5)
    stored = load_llama_scope_stored(str(w), str(h))
    assert stored.enc.dtype == dtype and stored.dec.dtype == dtype and stored.dec.shape == (300, 48)
    ref = reference_llama(w, hp)
    sae = load_llama_scope(str(w), str(h))
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(sae, key), ref[key]), key
    idx = torch.tensor([299, 0, 17, 17, 150])
    assert torch.equal(stored.dec_rows(idx), ref["W_dec"][idx])
    assert torch.equal(stored.enc_rows(idx), ref["W_enc"][:, idx].T)


@pytest.mark.parametrize("weights", ["enc+dec+benc", "enc+dec", "dec"])
@pytest.mark.parametrize("folded", [True, False])
def test_feature_rows_equal_the_folded_feature_vectors_bitwise(tmp_path, weights, folded):
    w, h, *_ = llama_files(tmp_path, d=40, F=260, theta=0.3, dtype=torch.bfloat16, norm_in=6.0, norm_out=9.5)
    stored = load_llama_scope_stored(str(w), str(h))
    sae = load_llama_scope(str(w), str(h))
    want = feature_vectors(fold(sae) if folded else sae, weights)
    for source in (stored, sae):
        rows = FeatureRows(source, weights, folded, step=7)  # steps that do not divide the blocks
        assert rows.shape == tuple(want.shape)
        assert torch.equal(rows.rows(slice(0, 260)), want)  # a wide block: whole rows of the decoder read
        assert torch.equal(rows.rows(slice(3, 20)), want[3:20])  # a narrow one: one read per decoder row
        idx = torch.tensor([5, 259, 0, 5])
        assert torch.equal(rows.rows(idx), want[idx])
        assert np.array_equal(rows.norms(chunk=33), torch.linalg.vector_norm(want.double(), dim=1).numpy())


def pair(tmp_path, F=400, d=24, persist=0.7, seed=0):
    """Two bf16 Llama Scope SAEs whose features partly persist (layer 1 = perturbed layer 0)."""
    w0, h0, t, _ = llama_files(tmp_path / "a", d=d, F=F, seed=seed, dtype=torch.bfloat16, norm_in=6.0, norm_out=9.5)
    g = torch.Generator().manual_seed(seed + 1)
    keep = torch.rand(F, generator=g) < persist
    perm = torch.randperm(F, generator=g)
    t1 = {"encoder.weight": torch.where(keep[:, None], t["encoder.weight"] + 0.3 * torch.randn(F, d, generator=g) / d**0.5,
                                        torch.randn(F, d, generator=g) / d**0.5)[perm],
          "encoder.bias": t["encoder.bias"][perm],
          "decoder.weight": torch.where(keep[None, :], t["decoder.weight"] + 0.3 * torch.randn(d, F, generator=g),
                                        torch.randn(d, F, generator=g))[:, perm],
          "decoder.bias": t["decoder.bias"]}
    from safetensors.torch import save_file
    w1, h1, *_ = llama_files(tmp_path / "b", d=d, F=F, seed=seed, dtype=torch.bfloat16, theta=0.2, norm_in=7.0, norm_out=5.5)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in t1.items()}, w1)
    return (w0, h0), (w1, h1)


def test_the_sparse_solver_on_streamed_rows_gives_the_certified_result_of_the_float32_vectors(tmp_path):
    (w0, h0), (w1, h1) = pair(tmp_path)
    src, dst = load_llama_scope_stored(str(w0), str(h0)), load_llama_scope_stored(str(w1), str(h1))
    X, Y = pair_vectors(fold(src.materialize()), fold(dst.materialize()), "enc+dec+benc", torch.device("cpu"))
    want = solve_sparse(X, Y, k=4, chunk=64, col_chunk=96)
    got = solve_sparse(*pair_rows(src, dst, "enc+dec+benc"), k=4, chunk=64, col_chunk=96)
    assert got[2]["certified"] and got[2]["rounds"] == want[2]["rounds"]
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[2] == want[2]  # the whole certificate: bounds, worst reduced cost, violations


def test_the_streamed_verdict_equals_the_one_on_whole_direction_matrices(tmp_path):
    (w0, h0), (w1, h1) = pair(tmp_path, F=300)
    src, dst = load_llama_scope_stored(str(w0), str(h0)), load_llama_scope_stored(str(w1), str(h1))
    whole = [directions(s.materialize().W_dec, s.materialize().W_enc) for s in (src, dst)]
    lazy = [stored_directions(s) for s in (src, dst)]
    for (A, B), (a, b) in zip(whole, lazy):
        assert torch.equal(A, a[torch.arange(300)]) and torch.equal(B, b[slice(0, 300)])
    nb_whole, nb_lazy = neighbours(whole[0][0], whole[1][0]), neighbours(lazy[0][0], lazy[1][0])
    for key in ("row_top", "col_top", "top1"):
        assert np.array_equal(nb_whole[key], nb_lazy[key]), key
    np.testing.assert_allclose(nb_whole["row_cos"], nb_lazy["row_cos"], rtol=0, atol=1e-6)
    match = np.random.default_rng(0).permutation(300)
    cols_w, stats_w = verdict(*whole[0], *whole[1], match, nb_whole)
    cols_l, stats_l = verdict(*lazy[0], *lazy[1], match, nb_lazy)
    for key in ("confidence", "top1_confidence", "evidence", "top1_evidence"):
        np.testing.assert_allclose(cols_w[key], cols_l[key], rtol=0, atol=1e-6, err_msg=key)
    assert abs(stats_w["d_eff"] - stats_l["d_eff"]) <= 1e-6 * stats_w["d_eff"]


def test_match_pair_on_stored_saes_gives_the_columns_of_the_float32_saes(tmp_path):
    (w0, h0), (w1, h1) = pair(tmp_path, F=300)
    stored = [load_llama_scope_stored(str(w0), str(h0)), load_llama_scope_stored(str(w1), str(h1))]
    eager = [s.materialize() for s in stored]
    for solver in ("dense", "sparse"):
        a, sa = match_pair(*stored, solver=solver, k=4, chunk_size=64, device="cpu")
        b, sb = match_pair(*eager, solver=solver, k=4, chunk_size=64, device="cpu")
        assert sa["certificate"]["certified"] and sa["total_cost"] == sb["total_cost"]
        for key in ("match", "top1", "cosine", "mse", "top1_cosine", "confidence", "top1_confidence"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{solver}: {key}")
    dense, _ = match_pair(*eager, solver="dense", device="cpu")
    sparse, _ = match_pair(*stored, solver="sparse", k=4, chunk_size=64, device="cpu")
    assert np.array_equal(dense["match"], sparse["match"])
    np.testing.assert_allclose(dense["confidence"], sparse["confidence"], rtol=0, atol=1e-5)


def test_a_stored_sae_with_nan_weights_is_refused_naming_file_and_tensor(tmp_path):
    from safetensors.torch import save_file

    w, h, t, _ = llama_files(tmp_path, dtype=torch.bfloat16)
    t["decoder.weight"][3, 5] = float("inf")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in t.items()}, w)
    with pytest.raises(SaeError, match=f"{w}: decoder.weight has 1 NaN or Inf"):
        load_llama_scope_stored(str(w), str(h))


LOAD_PEAK = """
import re, sys
from saematch.load import load_llama_scope_stored

def peak():  # VmHWM since the last reset (importing torch peaks higher than what follows)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def reset():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")

reset()
before = peak()
sae = load_llama_scope_stored(sys.argv[1], sys.argv[2])
loaded = peak()
sae.hold()
print(before, loaded, peak(), sae.held_bytes)
"""


def test_a_bf16_checkpoint_is_read_in_blocks_and_held_at_its_file_size_never_as_float32(tmp_path):
    from safetensors.torch import save_file

    F, d = 131072, 512  # 128 MiB per bf16 matrix; float32 copies would be 256 MiB each
    g = torch.Generator().manual_seed(0)
    w = tmp_path / "checkpoints/final.safetensors"
    w.parent.mkdir()
    save_file({"encoder.weight": torch.randn(F, d, generator=g).bfloat16(), "encoder.bias": torch.zeros(F).bfloat16(),
               "decoder.weight": torch.randn(d, F, generator=g).bfloat16(), "decoder.bias": torch.zeros(d).bfloat16()}, w)
    h = tmp_path / "hyperparams.json"
    h.write_text('{"d_model": 512, "jump_relu_threshold": 0.1, "norm_activation": "inference"}')
    # glibc keeps freed blocks of up to 32 MiB in its heap (a dynamic mmap threshold): a fixed
    # threshold makes RSS follow what the code holds (at real widths the blocks are larger anyway)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    out = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(w), str(h)], capture_output=True, text=True,
                         check=True, env=env)
    before, loaded, held_peak, held = map(int, out.stdout.split())
    assert held == 2 * 2 * F * d  # both matrices, 2 bytes per entry
    assert loaded - before < held / 2  # loading keeps nothing and maps nothing: block-sized buffers only
    assert held_peak - before < held + 64 * 2**20  # holding reads into the final buffers


def test_the_requested_memory_of_a_131k_bf16_pair_is_its_stored_saes_plus_little_and_under_8_gb():
    from saematch.solve import LAPJV_MAX_N

    stored = 2 * 2 * 131072 * 4096 * 2  # both SAEs' encoder and decoder, bf16
    assert stored < match_memory_bytes(131072, 4096, "llama-scope") < 8e9
    # float32 SAEs (Gemma Scope's npz, or projected att SAEs) are requested at 4 bytes per parameter
    wide = LAPJV_MAX_N + 1
    assert match_memory_bytes(wide, 4096, "gemma-scope") - match_memory_bytes(wide, 4096) > 1.25 * 2 * 2 * wide * 4096 * 2 - 1


def test_a_feature_whose_streamed_costs_would_overflow_is_refused_naming_it(tmp_path):
    (w0, h0), (w1, h1) = pair(tmp_path, F=200)
    src, dst = load_llama_scope_stored(str(w0), str(h0)), load_llama_scope_stored(str(w1), str(h1))
    src.threshold[7] = 1e-36  # folding divides the encoder by θ: ‖x‖² beyond float32
    with pytest.raises(SaeError, match=r"layer L, src\) feature 7 .*overflow"):
        match_pair(src, dst, solver="sparse", k=4, chunk_size=64, device="cpu")
