"""Throughput and memory of the evaluation on activations (saematch.evaluate).

Builds a randomly initialised Gemma 2 of the given size (the real architecture, from
transformers) and, per site and layer, a JumpReLU SAE with random unit directions whose
thresholds are set on a calibration batch so that about ``--l0`` features fire per token (what
makes the sparse co-activation sums cost what they cost). Random assignments stand in for the
matches. Then streams ``--tokens`` tokens of random ids through ``evaluate_sites`` three ways:
the model's forward pass alone, the full statistics of every site (no ΔL), and the same with ΔL
on every token (a forward pass per method and residual pair). Prints one Markdown table:
tokens/s, wall time, peak GPU memory (CUDA) or peak RSS (CPU).

    python bench/bench_evaluate.py [--layers 6] [--d-model 256] [--features 2048] [--l0 64]
                                   [--tokens 8192] [--context 256] [--batch 8] [--device cpu]
                                   [--dense-max-gb auto]

A Gemma 2 2B-sized run on a GPU: --layers 26 --d-model 2304 --heads 8 --head-dim 256
--features 16384 --l0 70 --tokens 1000000 --context 1024 --device cuda --dtype bfloat16.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from saematch.evaluate import evaluate_sites
from saematch.sae import Sae

SITES = ("res", "mlp", "att")


def model_of(args):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=4 * args.d_model,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=max(1, args.heads // 2), head_dim=args.head_dim,
                       max_position_embeddings=max(args.context, 512), sliding_window=min(4096, args.context),
                       attn_implementation="eager")
    return Gemma2ForCausalLM(cfg).to(args.device, getattr(torch, args.dtype)).eval()


def random_sae(d: int, F: int, x: torch.Tensor, l0: int, gen) -> Sae:
    """Unit random directions; per-feature thresholds at the quantile that makes ≈ l0 fire."""
    W = torch.randn(F, d, generator=gen)
    W = W / W.norm(dim=1, keepdim=True)
    W_enc = (W.T / x.norm(dim=1).mean()).contiguous().to(x.device)
    pre = x @ W_enc
    q = 1 - l0 / F
    threshold = torch.quantile(pre[: min(len(pre), 4096)].float(), q, dim=0).clamp(min=1e-4)
    return Sae(W_enc=W_enc, b_enc=torch.zeros(F, device=x.device), W_dec=W.to(x.device) * x.norm(dim=1).mean(),
               b_dec=torch.zeros(d, device=x.device), threshold=threshold)


def batches(args, n_tokens: int):
    gen = torch.Generator().manual_seed(1)
    seen = 0
    while seen < n_tokens:
        ids = torch.randint(4, args.vocab, (args.batch, args.context), generator=gen)
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        valid = torch.ones_like(ids, dtype=torch.bool)
        valid[:, 0] = False
        over = seen + int(valid.sum()) - n_tokens
        if over > 0:
            valid &= (valid.flatten().cumsum(0) <= n_tokens - seen).view_as(valid)
        seen += int(valid.sum())
        yield ids, mask, valid


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--l0", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--dense-max-gb", type=lambda v: v if v == "auto" else float(v), default="auto",
                    help="auto (40%% of the GPU, 8 on a CPU) or GB; 0: the sparse Pearson sums")
    args = ap.parse_args()
    model = model_of(args)
    from saematch.lm import read_sites

    ids, mask, valid = next(batches(args, args.batch * args.context))
    caps = read_sites(model, "gemma-scope", ids.to(args.device), mask.to(args.device),
                      {s: list(range(args.layers)) for s in SITES})
    gen = torch.Generator().manual_seed(2)
    rng = np.random.default_rng(0)
    sites = {}
    for s in SITES:
        saes = {L: random_sae(caps[s][L].shape[-1], args.features, caps[s][L][valid.to(args.device)].float(),
                              args.l0, gen) for L in range(args.layers)}
        pairs = {L: {"match": rng.permutation(args.features), "top1": rng.integers(0, args.features, args.features)}
                 for L in range(args.layers - 1)}
        sites[s] = (saes, pairs)
    rows = []
    for name, chosen, loss in (("model forward only", {}, 0), ("all sites, no ΔL", sites, 0),
                               ("all sites + ΔL on every token", sites, args.tokens)):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if chosen:
            evaluate_sites(model, "gemma-scope", lambda: batches(args, args.tokens), chosen, loss_tokens=loss,
                           device=args.device, dense_max_gb=args.dense_max_gb)
        else:
            for b_ids, b_mask, _ in batches(args, args.tokens):
                with torch.no_grad():
                    model(input_ids=b_ids.to(args.device), attention_mask=b_mask.to(args.device))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
        seconds = time.perf_counter() - t0
        rows.append((name, args.tokens / seconds, seconds, peak))
    pairs = 3 * (args.layers - 1)
    print(f"\n{platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}; "
          f"Gemma 2 shape: {args.layers} layers, d {args.d_model}, {args.heads}×{args.head_dim} heads; "
          f"{args.features} features per SAE, L0 ≈ {args.l0}; {pairs} pairs; {args.tokens} tokens, "
          f"context {args.context}, batch {args.batch}\n")
    print("| run | tokens/s | seconds | peak memory | projected for 1M tokens, min |\n|---|---|---|---|---|")
    for name, tps, seconds, peak in rows:
        print(f"| {name} | {tps:,.0f} | {seconds:.1f} | {peak} | {1e6 / tps / 60:.1f} |")
    print(f"\nThe evaluation's target (issue 23): all {pairs} pairs on 1M tokens in ≤ 15 min, the 'all sites' "
          "rows above (ΔL is asked on evaluate.loss_tokens = 100k of them by default).")


if __name__ == "__main__":
    main()
