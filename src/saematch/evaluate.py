"""Matches checked against the model's own activations on text (methods.md §1.5–1.8, §3).

Streaming: each batch of tokens is read at one site's hook points (saematch.lm), encoded by
every selected layer's SAE, folded into accumulators and dropped. Per pair (L, L+1):

* **matching score** (SAE Match §4, our estimator): over tokens and features i active at L,
  the share whose partner π(i) is active at L+1 on the same token; also per feature; and what
  it would be by chance (partners firing independently at their own rates);
* **activation correlation** (Balcells et al.): Pearson r of the JumpReLU codes over tokens,
  from N, Σx, Σx² per feature and Σxy over co-active pairs only (a sparse accumulator: keys
  i·F_{L+1} + j; never a dense F × F); per feature its top-k next-layer partners by r among the
  features it co-fires with, and r of its assigned and decoder-top-1 partners;
* residual site only, **encode–permute–decode** (SAE Match eq. 5) and the paper's baselines,
  as explained variance of the replaced state and ΔL, the change of next-token cross-entropy
  (nats) when the replacement is patched into the forward pass on the valid tokens (METHODS).

A token is valid when it is neither padding nor BOS nor at position 0 (saematch.lm).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch

from .lm import first_valid, hooks, read_sites
from .sae import Sae, decode, encode, reconstruct

log = logging.getLogger(__name__)

# replacement of a residual state: (the layer it replaces, relative to the pair's L; what it is)
METHODS = {
    "permute_folded": (1, "decode_{L+1}(P f_L) with folded scales f_i/θ_i·θ'_π(i) (methods.md §1.5)"),
    "permute": (1, "decode_{L+1}(P f_L), SAE Match eq. 5"),
    "layer_drop": (1, "x_L in place of x_{L+1}: block L+1 skipped"),
    "encode_decode_previous": (1, "SAE_L(x_L) in place of x_{L+1}"),
    "encode_decode_current": (0, "SAE_L(x_L) in place of x_L"),
    "encode_decode_next": (1, "SAE_{L+1}(x_{L+1}) in place of x_{L+1}: the next SAE's own error"),
}


# --- replacements -------------------------------------------------------------------------

def permute_codes(f: torch.Tensor, match: torch.Tensor, n_dst: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """P f: code f (N, F_L) moved to the next layer's order, f̂[:, match[i]] = f[:, i]·scale[i];
    features with match −1 (unmatched) are dropped. → (N, F_{L+1})."""
    keep = match >= 0
    vals = f[:, keep] if scale is None else f[:, keep] * scale[keep]
    out = f.new_zeros(f.shape[0], n_dst)
    out[:, match[keep]] = vals
    return out


def replacement(method: str, sae_a: Sae, sae_b: Sae, match: torch.Tensor, x_a: torch.Tensor,
                x_b: torch.Tensor | None = None) -> torch.Tensor:
    """The state ``method`` puts in place of x_{L+1} (or of x_L for encode_decode_current),
    from the true x_L (N, d) (and x_{L+1} for encode_decode_next)."""
    if method in ("permute", "permute_folded"):
        scale = sae_b.threshold[match.clamp(min=0)] / sae_a.threshold if method == "permute_folded" else None
        return decode(sae_b, permute_codes(encode(sae_a, x_a), match, sae_b.n_features, scale))
    if method == "layer_drop":
        return x_a
    if method in ("encode_decode_previous", "encode_decode_current"):
        return reconstruct(sae_a, x_a)
    if method == "encode_decode_next":
        return reconstruct(sae_b, x_b)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


# --- streaming accumulators -----------------------------------------------------------------

def layer_stats(F: int, d: int, device) -> dict:
    """Per-layer sums: tokens n; per feature active count, Σf, Σf²; per dimension Σx and Σ‖x‖²."""
    z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
    return {"n": 0, "count": z(F), "sum": z(F), "sumsq": z(F), "x_sum": z(d), "x_sumsq": z(())}


def add_layer(st: dict, f: torch.Tensor, x: torch.Tensor) -> None:
    st["n"] += f.shape[0]
    st["count"] += (f > 0).sum(0)
    st["sum"] += f.sum(0, dtype=torch.float64)
    st["sumsq"] += (f.double() ** 2).sum(0)
    st["x_sum"] += x.sum(0, dtype=torch.float64)
    st["x_sumsq"] += (x.double() ** 2).sum()


def pair_stats(match: torch.Tensor, top1: torch.Tensor, n_dst: int | None = None) -> dict:
    """A pair's accumulators. Σxy for the Pearson search: with ``n_dst`` a dense (F_L, n_dst)
    float32 matrix (updated by a sparse × dense product), else the sparse table of co-firing
    pairs (:func:`coactive_products`). Both give the same partners (tests/test_evaluate.py)."""
    F, dev = len(match), match.device
    z = lambda: torch.zeros(F, dtype=torch.float64, device=dev)  # noqa: E731
    st = {"match": match, "top1": top1, "co_match": z(), "sxy_match": z(), "co_top1": z(), "sxy_top1": z()}
    if n_dst is not None:
        st["dense"] = torch.zeros(F, n_dst, dtype=torch.float32, device=dev)
    else:
        st.update(keys=torch.zeros(0, dtype=torch.int64, device=dev), sxy=z()[:0], pending=[], pending_n=0)
    return st


def coactive_products(fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every co-active pair of one batch: keys i·F_b + j and products f_a[t, i]·f_b[t, j], one
    entry per (token, i, j) with both active (summed later). fa (N, F_a), fb (N, F_b)."""
    ta, ia = fa.nonzero(as_tuple=True)
    tb, jb = fb.nonzero(as_tuple=True)  # row-major: sorted by token
    nb = torch.bincount(tb, minlength=fa.shape[0])
    start_b = torch.cumsum(nb, 0) - nb
    rep = nb[ta]
    total = int(rep.sum())
    a_idx = torch.repeat_interleave(torch.arange(len(ta), device=fa.device), rep)
    within = torch.arange(total, device=fa.device) - torch.repeat_interleave(torch.cumsum(rep, 0) - rep, rep)
    b_idx = start_b[ta[a_idx]] + within
    keys = ia[a_idx] * fb.shape[1] + jb[b_idx]
    return keys, (fa[ta[a_idx], ia[a_idx]].double() * fb[tb[b_idx], jb[b_idx]].double())


def _merge(st: dict) -> None:
    if not st.get("pending"):
        return
    keys = torch.cat([st["keys"], *(k for k, _ in st["pending"])])
    vals = torch.cat([st["sxy"], *(v for _, v in st["pending"])])
    st["keys"], inverse = torch.unique(keys, return_inverse=True)
    st["sxy"] = torch.zeros(len(st["keys"]), dtype=torch.float64, device=vals.device).index_add_(0, inverse, vals)
    st["pending"], st["pending_n"] = [], 0


def add_pair(st: dict, fa: torch.Tensor, fb: torch.Tensor) -> None:
    """Fold one batch's codes of layers L (fa) and L+1 (fb) into the pair's accumulators."""
    active = fa > 0
    for name in ("match", "top1"):
        partner = st[name]
        g = fb[:, partner.clamp(min=0)] * (partner >= 0)
        st[f"co_{name}"] += (active & (g > 0)).sum(0)
        st[f"sxy_{name}"] += (fa.double() * g.double()).sum(0)
    if "dense" in st:
        st["dense"] += torch.sparse.mm(fa.T.to_sparse(), fb)
        return
    keys, vals = coactive_products(fa, fb)
    st["pending"].append((keys, vals))
    st["pending_n"] += len(keys)
    if st["pending_n"] > max(1 << 22, len(st["keys"])):  # merging costs a sort: amortise it
        _merge(st)


# --- from sums to metrics -------------------------------------------------------------------

def moments(st: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of each feature's code over the tokens."""
    n = max(st["n"], 1)
    mean = st["sum"] / n
    return mean, (st["sumsq"] / n - mean**2).clamp(min=0).sqrt()


def pearson(sxy, n, mean_a, std_a, mean_b, std_b):
    """r = (Σxy/n − μ_a μ_b) / (σ_a σ_b); 0 where a feature never varies (dead)."""
    r = (sxy / max(n, 1) - mean_a * mean_b) / (std_a * std_b)
    return torch.where(torch.isfinite(r), r, torch.zeros((), dtype=r.dtype, device=r.device))


def pearson_top(keys, sxy, n, a: tuple, b: tuple, F_a: int, F_b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature of layer L its k next-layer features of highest Pearson r among those it
    co-fires with: (F_a, k) int (−1 where fewer) and r (NaN there)."""
    i, j = keys // F_b, keys % F_b
    r = pearson(sxy, n, a[0][i], a[1][i], b[0][j], b[1][j])
    order = torch.sort(r, descending=True, stable=True).indices
    order = order[torch.sort(i[order], stable=True).indices]  # by row, best first within a row
    rows = i[order]
    counts = torch.bincount(rows, minlength=F_a)
    rank = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    keep = rank < k
    top = torch.full((F_a, k), -1, dtype=torch.int64, device=rows.device)
    val = torch.full((F_a, k), float("nan"), dtype=torch.float64, device=rows.device)
    top[rows[keep], rank[keep]] = j[order][keep]
    val[rows[keep], rank[keep]] = r[order][keep]
    return top.cpu().numpy(), val.cpu().numpy()


def dense_pearson_top(S: torch.Tensor, n: int, a: tuple, b: tuple, k: int, rows: int = 1024):
    """:func:`pearson_top` from a dense Σxy (F_a, F_b), in row blocks: only pairs that fired
    together (Σxy > 0: JumpReLU codes are positive) are candidates."""
    F_a, F_b = S.shape
    k_ = min(k, F_b)
    top = np.full((F_a, k), -1, np.int64)
    val = np.full((F_a, k), np.nan)
    for start in range(0, F_a, rows):
        blk = S[start:start + rows].double()
        sl = slice(start, start + len(blk))
        r = pearson(blk, n, a[0][sl, None], a[1][sl, None], b[0][None], b[1][None])
        r = torch.where(blk > 0, r, torch.full((), -torch.inf, dtype=r.dtype, device=r.device))
        v, i = r.topk(k_, dim=1)
        hit = torch.isfinite(v)
        top[sl, :k_] = torch.where(hit, i, -1).cpu().numpy()
        val[sl, :k_] = torch.where(hit, v, torch.nan).cpu().numpy()
    return top, val


def finish_pair(st: dict, a: dict, b: dict, k: int) -> dict[str, np.ndarray]:
    """Per-feature columns of one pair from its accumulators and both layers' stats."""
    n = a["n"]
    ma, mb = moments(a), moments(b)
    if "dense" in st:
        top, top_r = dense_pearson_top(st["dense"], n, ma, mb, k)
    else:
        _merge(st)
        top, top_r = pearson_top(st["keys"], st["sxy"], n, ma, mb, len(a["count"]), len(b["count"]), k)
    cols = {"active": a["count"].cpu().numpy().astype(np.int64), "pearson_top": top, "pearson_r": top_r}
    for name in ("match", "top1"):
        p = st[name]
        ok = p >= 0
        q = p.clamp(min=0)
        r = pearson(st[f"sxy_{name}"], n, ma[0], ma[1], mb[0][q], mb[1][q])
        cols[f"r_{name}"] = torch.where(ok, r, torch.nan).cpu().numpy()
        cols[f"coactive_{name}"] = st[f"co_{name}"].cpu().numpy().astype(np.int64)
    return cols


def explained_variance(sse: float, st: dict) -> float:
    """EV = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the tokens of the target layer (methods.md §1.8)."""
    n = st["n"]
    total = float(st["x_sumsq"] - (st["x_sum"] ** 2).sum() / max(n, 1))
    return 1.0 - sse / total if total > 0 else float("nan")


def token_loss(model, ids, mask, valid, replace=None, fmt="gemma-scope", read=None) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over targets at valid positions, and their count,
    with ``replace`` (saematch.lm.hooks) patched in."""
    with torch.no_grad(), hooks(model, fmt, read or {}, replace):
        logits = model(input_ids=ids, attention_mask=mask).logits
    target = valid[:, 1:]
    rows, labels = logits[:, :-1][target], ids[:, 1:][target]
    ce = sum(float(torch.nn.functional.cross_entropy(rows[i:i + 1024].float(), labels[i:i + 1024], reduction="sum"))
             for i in range(0, len(rows), 1024))  # float32 in chunks: Gemma's 256k vocabulary
    return ce, int(target.sum())


# --- all sites, one pass ------------------------------------------------------------------------

def evaluate_sites(model, fmt: str, batches, sites: dict[str, tuple[dict, dict]], loss_tokens: int = 0,
                   top_k: int = 5, device="cpu", total_tokens: int | None = None,
                   dense_max_gb: float | str = "auto") -> tuple[list[dict], dict]:
    """Stream the text through the model, reading every site at once where memory allows.

    ``batches()``: a fresh iterator of (input_ids, attention_mask, valid) (saematch.lm.token_batches).
    sites[site] = (saes, pairs): saes[L] the site's SAE of each layer used (on ``device``);
    pairs[L] = {"match", "top1"} int arrays of pair (L, L+1) (−1: none). ``loss_tokens``: ΔL
    on the first that many valid tokens (res site only). Σxy is dense (F_L × F_{L+1} float32)
    for the pairs of a pass that fit in ``dense_max_gb`` (auto: 40% of the GPU's memory, 8 on
    a CPU); the other pairs take further passes over the text (:func:`plan_passes`), and a pair
    too big alone keeps the sparse table. Returns one row of metrics per site and pair, and per
    (site, L) the per-feature columns. With ``total_tokens`` (the tokens asked for) each row also
    has ``tokens_asked`` and ``short_sample`` (the text gave fewer).
    """
    if dense_max_gb == "auto":
        dev = torch.device(device)
        dense_max_gb = 0.4 * torch.cuda.get_device_properties(dev).total_memory / 2**30 if dev.type == "cuda" else 8
    sizes = {(site, L): 4 * saes[L].n_features * saes[L + 1].n_features
             for site, (saes, pairs) in sites.items() for L in pairs}
    rows, features = [], {}
    for group, dense in plan_passes(sizes, dense_max_gb * 2**30):
        chosen = {site: (saes, {L: p for L, p in pairs.items() if (site, L) in group})
                  for site, (saes, pairs) in sites.items() if any(s == site for s, _ in group)}
        r, f = _one_pass(model, fmt, batches(), chosen, dense, loss_tokens if "res" in chosen else 0, top_k,
                         device, total_tokens)
        rows += r
        features.update(f)
    if total_tokens is not None:  # a text shorter than asked: every row says so
        for row in rows:
            row["tokens_asked"], row["short_sample"] = total_tokens, row["tokens"] < total_tokens
    order = {s: i for i, s in enumerate(sites)}
    return sorted(rows, key=lambda row: (order[row["site"]], row["layer"])), features


def plan_passes(sizes: dict, budget: float) -> list[tuple[list, set]]:
    """Pairs (keys of ``sizes``, bytes of their dense Σxy) grouped into passes over the text,
    each pass's dense sums within ``budget`` bytes (first fit, in the given order); a pair over
    the budget alone keeps the sparse table and joins the first pass. Returns [(pairs, the
    dense ones)]."""
    passes, sparse = [], []  # passes: [pairs, dense pairs, bytes]
    for key, n in sizes.items():
        if n > budget:
            sparse.append(key)
            continue
        for p in passes:
            if p[2] + n <= budget:
                p[0].append(key)
                p[1].add(key)
                p[2] += n
                break
        else:
            passes.append([[key], {key}, n])
    if not passes:
        passes.append([[], set(), 0])
    passes[0][0].extend(sparse)
    return [(p[0], p[1]) for p in passes]


def _one_pass(model, fmt, batches, sites, dense: set, loss_tokens, top_k, device, total_tokens):
    state = {}
    for site, (saes, pairs) in sites.items():
        layers = sorted(set(pairs) | {L + 1 for L in pairs})
        state[site] = {
            "layers": layers,
            "lstats": {L: layer_stats(saes[L].n_features, saes[L].W_dec.shape[1], device) for L in layers},
            "pstats": {L: pair_stats(torch.as_tensor(p["match"], dtype=torch.int64, device=device),
                                     torch.as_tensor(p["top1"], dtype=torch.int64, device=device),
                                     saes[L + 1].n_features if (site, L) in dense else None)
                       for L, p in pairs.items()},
        }
    res = sites.get("res")
    sse = {(L, m): 0.0 for L in res[1] for m in METHODS} if res else {}
    loss = {"clean": 0.0, "tokens": 0, **{(L, m): 0.0 for L in res[1] for m in METHODS}} if res else {}
    t0, seen, last = time.perf_counter(), 0, 0.0
    for ids, mask, valid in batches:
        ids, mask, valid = ids.to(device), mask.to(device), valid.to(device)
        caps = read_sites(model, fmt, ids, mask, {site: st["layers"] for site, st in state.items()})
        for site, st in state.items():
            saes, pairs = sites[site]
            prev = None  # two layers' codes at a time
            for L in st["layers"]:
                x = caps[site].pop(L)[valid].float()
                f = encode(saes[L], x)
                add_layer(st["lstats"][L], f, x)
                if prev is not None and prev[0] == L - 1 and L - 1 in pairs:
                    _, x_a, f_a = prev
                    add_pair(st["pstats"][L - 1], f_a, f)
                    if site == "res":
                        for m, (shift, _) in METHODS.items():
                            xh = replacement(m, saes[L - 1], saes[L], st["pstats"][L - 1]["match"], x_a, x)
                            sse[(L - 1, m)] += float(((xh - (x if shift else x_a)) ** 2).sum(dtype=torch.float64))
                prev = (L, x, f)
        if res and loss["tokens"] < loss_tokens:  # exactly the first loss_tokens valid tokens
            lvalid = first_valid(valid, loss_tokens - loss["tokens"])
            rows_used = lvalid.any(1)
            add_losses(loss, model, fmt, ids[rows_used], mask[rows_used], lvalid[rows_used], res[0],
                       state["res"]["pstats"])
        seen += int(valid.sum())
        now = time.perf_counter() - t0
        if now - last > 10 or (total_tokens and seen >= total_tokens):
            last = now
            pct = f" of {total_tokens} ({100 * seen / total_tokens:.0f}%)" if total_tokens else ""
            print(f"evaluate {'+'.join(sites)}: {seen} tokens{pct}, {seen / max(now, 1e-9):.0f} tokens/s",
                  file=sys.stderr, flush=True)
    rows, features = [], {}
    for site, st in state.items():
        for L in sites[site][1]:
            a = st["lstats"][L]
            cols = finish_pair(st["pstats"][L], a, st["lstats"][L + 1], top_k)
            features[(site, L)] = cols
            active = max(int(cols["active"].sum()), 1)
            rate_b = (st["lstats"][L + 1]["count"] / max(a["n"], 1)).cpu().numpy()
            match = st["pstats"][L]["match"].cpu().numpy()
            chance = np.where(match >= 0, rate_b[np.maximum(match, 0)], 0.0)
            row = {"site": site, "layer": L, "tokens": a["n"],
                   "matching_score": float(cols["coactive_match"].sum() / active),
                   "matching_score_chance": float((cols["active"] * chance).sum() / active),
                   "matching_score_top1": float(cols["coactive_top1"].sum() / active),
                   "pearson_sums": "dense" if (site, L) in dense else "sparse"}
            if site == "res":
                n = loss["tokens"]
                for m, (shift, _) in METHODS.items():
                    row[f"ev_{m}"] = explained_variance(sse[(L, m)], st["lstats"][L + shift])
                    row[f"dl_{m}"] = (loss[(L, m)] - loss["clean"]) / n if n else float("nan")
                row["loss_tokens"], row["loss_clean"] = n, loss["clean"] / n if n else float("nan")
            rows.append(row)
    return rows, features


def add_losses(loss: dict, model, fmt, ids, mask, valid, saes: dict, pstats: dict) -> None:
    """One batch's cross-entropy, clean and with each method's replacement of each res pair."""
    ce, count = token_loss(model, ids, mask, valid, fmt=fmt)
    loss["clean"] += ce
    loss["tokens"] += count
    for L, st in pstats.items():
        for m, (shift, _) in METHODS.items():
            def patch(out, caps, L=L, m=m, shift=shift):
                x_a = out if shift == 0 else caps["res"][L]
                xh = replacement(m, saes[L], saes[L + 1], st["match"], x_a[valid].float(),
                                 out[valid].float() if m == "encode_decode_next" else None)
                new = out.clone()
                new[valid] = xh.to(out.dtype)
                return new
            loss[(L, m)] += token_loss(model, ids, mask, valid, {L + shift: patch}, fmt,
                                       read={"res": [L]} if shift else {})[0]


# --- agreement and calibration ---------------------------------------------------------------

def agreement(cols: dict, match: np.ndarray, top1: np.ndarray, persists: np.ndarray, min_active: int,
              level: float) -> dict[str, float]:
    """Of the features active on ≥ ``min_active`` tokens with a Pearson partner: how often the
    data-free partners equal the Pearson top-1, and how often the assigned partner's r ≥ ``level``
    among features the verdict calls persisting and among the rest."""
    ok = (cols["active"] >= min_active) & (cols["pearson_top"][:, 0] >= 0)
    best = cols["pearson_top"][:, 0]
    corr = np.nan_to_num(cols["r_match"], nan=-1.0) >= level
    share = lambda m: float(m.sum() / n) if (n := int(m.size)) else float("nan")  # noqa: E731
    return {"features_evaluated": int(ok.sum()),
            "agree_match": share((match == best)[ok]),
            "agree_top1": share((top1 == best)[ok]),
            "agree_persists": share((match == best)[ok & persists]),
            "persists_correlated": share(corr[ok & persists]),
            "dies_correlated": share(corr[ok & ~persists])}


def calibration(confidence: np.ndarray, correlated: np.ndarray, bins: int = 10) -> list[dict]:
    """Confidence bins of width 1/bins: features, mean confidence, share correlated on data."""
    edges = np.minimum((np.asarray(confidence) * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = edges == b
        if m.any():
            out.append({"bin": f"{b / bins:.1f}–{(b + 1) / bins:.1f}", "features": int(m.sum()),
                        "mean_confidence": float(np.mean(confidence[m])),
                        "share_correlated": float(np.mean(correlated[m]))})
    return out


# --- tables -----------------------------------------------------------------------------------

def features_frame(site: str, layer: int, cols: dict, matches):
    """One pair's per-feature table: the matches file's partners and verdict (with its evidence
    columns where the matches carry them) beside the data."""
    import polars as pl

    k = cols["pearson_top"].shape[1]
    match = matches["match"].fill_null(-1).to_numpy()
    evidence = [c for c in ("evidence", "top1_evidence") if c in matches.columns]
    return pl.DataFrame({
        "site": site, "layer": np.int32(layer), "feature": matches["feature"].to_numpy().astype(np.int32),
        "active": cols["active"], "match": match.astype(np.int32),
        "top1": matches["top1"].to_numpy().astype(np.int32),
        "persists": matches["persists"].to_numpy(), "confidence": matches["confidence"].to_numpy(),
        "coactive_match": cols["coactive_match"], "r_match": cols["r_match"].astype(np.float32),
        "coactive_top1": cols["coactive_top1"], "r_top1": cols["r_top1"].astype(np.float32),
        "pearson_top": cols["pearson_top"].astype(np.int32), "pearson_r": cols["pearson_r"].astype(np.float32),
    }).with_columns(pl.col("pearson_top").cast(pl.Array(pl.Int32, k)),
                    pl.col("pearson_r").cast(pl.Array(pl.Float32, k)),
                    *(matches[c] for c in evidence))


def summarize_evaluation(pairs, features, min_active: int, level: float):
    """Per site and pair: the pairs table's metrics plus :func:`agreement`; and per site the
    verdict's calibration on data (:func:`calibration` of r_match ≥ ``level``)."""
    import polars as pl

    rows, calib = [], []
    for (site, L), f in features.group_by("site", "layer", maintain_order=True):
        cols = {"active": f["active"].to_numpy(), "pearson_top": np.stack(f["pearson_top"].to_numpy()),
                "r_match": f["r_match"].to_numpy()}
        rows.append({"site": site, "layer": L, **agreement(cols, f["match"].to_numpy(), f["top1"].to_numpy(),
                                                            f["persists"].to_numpy(), min_active, level)})
    for (site,), f in features.group_by("site", maintain_order=True):
        ok = ((f["active"] >= min_active) & f["confidence"].fill_nan(None).is_not_null()).to_numpy()  # not judged
        corr = np.nan_to_num(f["r_match"].to_numpy(), nan=-1.0) >= level
        calib += [{"site": site, **row} for row in calibration(f["confidence"].to_numpy()[ok], corr[ok])]
    table = pairs.join(pl.DataFrame(rows), on=["site", "layer"], how="left").sort("site", "layer")
    return table, pl.DataFrame(calib)
