"""Feature Flow (Laptev et al., ICML 2025, §3.3): where does each residual feature come from?

For every residual feature r of layer L and each module P — the residual SAE of layer L−1
(``res``), the MLP SAE of layer L (``mlp``) and the attention SAE of layer L (``att``, Gemma
Scope's hook_z SAEs through :func:`saematch.load.project_att`) — the predecessor score
s(P) = max_k cos(w_r, w_k^P) of unit decoder rows, its argmax (the top-1 predecessor) and the
top-k. The cosines come in row blocks (:func:`saematch.verdict.neighbours`: never F × F).

Cases (§2.3), with "high" thresholds per module:

====  ========  ===================  =================================
case  s(R)      s(M) or s(A)         reading
====  ========  ===================  =================================
A     high      both low             translated from layer L−1
B     high      at least one high    processed by the MLP / attention
C     low       at least one high    born in that module
D     low       both low             not explained by these SAEs
====  ========  ===================  =================================

A module that is not available (layer 0 has no residual SAE below it; a site left out of the
selection) counts as low, and its columns are null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config import DEFAULT_FLOW

if TYPE_CHECKING:
    import torch

# torch (and saematch.verdict, which imports it) is imported where the scores are computed:
# the flow summary jobs read Parquet only, and `import torch` is 2 s of such a job

MODULES = ("res", "mlp", "att")  # res: layer L − 1's residual SAE; mlp, att: layer L's
TOP_K = DEFAULT_FLOW["top_k"]
HIGH = DEFAULT_FLOW["high"]


def predecessor_scores(W_dec: torch.Tensor, modules: dict[str, torch.Tensor | None], k: int = TOP_K,
                       chunk: int = 2048) -> dict[str, np.ndarray | None]:
    """Top-1 and top-k decoder cosines of each residual feature against each module.

    W_dec (F, d): the residual SAE of layer L; modules[P] (F_P, d) the decoders of module P in
    the same space, or None. Returns per module P: ``P`` (F,) int32 top-1 index, ``s_P`` (F,)
    float32 its cosine, ``P_top`` (F, k) int32 and ``s_P_top`` (F, k) float32 (descending);
    None for a module that is missing.
    """
    import torch

    from .verdict import neighbours

    U = torch.nn.functional.normalize(W_dec.float(), dim=1)
    out: dict[str, np.ndarray | None] = {}
    for name in MODULES:
        V = modules.get(name)
        if V is None:
            out.update({name: None, f"s_{name}": None, f"{name}_top": None, f"s_{name}_top": None})
            continue
        if V.shape[1] != U.shape[1]:
            raise ValueError(f"flow: {name} decoders are {V.shape[1]}-d but the residual SAE's {U.shape[1]}-d")
        nb = neighbours(U, torch.nn.functional.normalize(V.float().to(U.device), dim=1), k=k, chunk=chunk)
        out[name] = nb["row_top"][:, 0].astype(np.int32)
        out[f"s_{name}"] = nb["row_cos"][:, 0].astype(np.float32)
        out[f"{name}_top"] = nb["row_top"].astype(np.int32)
        out[f"s_{name}_top"] = nb["row_cos"].astype(np.float32)
    return out


def thresholds(scores: dict, high: dict) -> dict[str, float | None]:
    """The "high" cut per module: a number is absolute; a string ``qX`` is the X-quantile
    (0 < X < 1) of this layer's s(P). Missing modules get None (never high)."""
    cut = {}
    for name in MODULES:
        s, spec = scores.get(f"s_{name}"), high[name]
        if s is None:
            cut[name] = None
        elif isinstance(spec, str):
            cut[name] = float(np.quantile(s, float(spec[1:])))
        else:
            cut[name] = float(spec)
    return cut


def cases(scores: dict, cut: dict[str, float]) -> np.ndarray:
    """Case A–D per residual feature (module docstring) from s(P) ≥ cut[P]; (F,) str."""
    n = len(next(v for v in scores.values() if v is not None))

    def high(name):
        s = scores.get(f"s_{name}")
        return np.zeros(n, bool) if s is None else s >= cut[name]

    res, module = high("res"), high("mlp") | high("att")
    return np.where(res, np.where(module, "B", "A"), np.where(module, "C", "D"))


def predecessor_verdict(W_dec: torch.Tensor, W_enc: torch.Tensor | None, W_dec_prev: torch.Tensor,
                        W_enc_prev: torch.Tensor | None) -> tuple[dict, dict]:
    """The verdict (saematch.verdict) on each residual feature's top-1 predecessor in layer L−1,
    the same method as the forward partners' with the layers' roles swapped: layer L's features
    are the rows, layer L−1's the columns, and no assignment (its evidence ``agree`` and
    ``mutual`` with it are 0). W_dec (F, d), W_enc (d_in, F) of layer L; the same of L−1.
    Returns {res_confidence (F,) float32, NaN where unjudged; res_unjudged (F,) object} and
    the verdict's stats."""
    from .verdict import directions, verdict

    U, E = directions(W_dec, None if W_enc is None else W_enc.to(W_dec.device))
    V, W = directions(W_dec_prev.to(U.device), None if W_enc_prev is None else W_enc_prev.to(U.device))
    if E is None or W is None:
        E = W = None
    columns, stats = verdict(U, E, V, W, np.full(U.shape[0], -1))
    return {"res_confidence": columns["top1_confidence"], "res_unjudged": columns["unjudged"]}, stats


def flow_layer(W_dec: torch.Tensor, modules: dict[str, torch.Tensor | None], k: int = TOP_K,
               high: dict | None = None, chunk: int = 2048, encoders: dict | None = None) -> tuple[dict, dict]:
    """One layer end to end: the columns of its flow file (feature, the scores, case, and with
    ``encoders`` {"target": W_enc, "res": W_enc of layer L−1} the verdict on the residual
    predecessor: :func:`predecessor_verdict`) and stats (the cuts used, the share of each case)."""
    scores = predecessor_scores(W_dec, modules, k, chunk)
    cut = thresholds(scores, high or HIGH)
    case = cases(scores, cut)
    columns = {"feature": np.arange(W_dec.shape[0], dtype=np.int32), **scores, "case": case}
    stats = {"cut": cut, "share": {c: float((case == c).mean()) for c in "ABCD"},
             "modules": [m for m in MODULES if scores[m] is not None]}
    if modules.get("res") is not None and encoders is not None:
        judged, vstats = predecessor_verdict(W_dec, encoders.get("target"), modules["res"], encoders.get("res"))
        columns.update(judged)
        stats["res_verdict"] = {k: v for k, v in vstats.items() if k in ("pi0_top1", "d_eff", "encoders")}
    return columns, stats


# --- the flow summary: cases per layer, and on the demo the planted origins recovered -----------

EXPECTED_CASE = {"res": "A", "res+mlp": "B", "res+att": "B", "mlp": "C", "att": "C", "none": "D"}


def summarize(paths: list[str], origins=None):
    """One row per layer: features, the count of each case, and with the demo's planted
    ``origins`` (layer, feature, origin, source, res_source) per origin: how many there are,
    the share whose case is the expected one (EXPECTED_CASE; look-alikes are left out) and
    the share whose top-1 predecessor in the origin's module is the planted one (res+mlp and
    res+att: the module's, ``source``; res: the residual one, ``res_source``)."""
    import polars as pl

    df = pl.concat([pl.read_parquet(p, columns=["feature", "res", "mlp", "att", "case"])
                    .with_columns(layer=pl.lit(_layer_of(p), pl.Int32)) for p in paths])
    table = (df.group_by("layer").agg(pl.len().alias("features"),
                                      *[(pl.col("case") == c).sum().alias(f"case_{c}") for c in "ABCD"])
             .sort("layer"))
    if origins is None:
        return table
    known = df.join(origins, on=["layer", "feature"], how="inner").filter(pl.col("origin") != "lookalike")
    expected = pl.col("origin").replace_strict(EXPECTED_CASE, default=None)
    module = pl.col("origin").str.replace("res+", "", literal=True)
    index_ok = (pl.when(pl.col("origin") == "res").then(pl.col("res") == pl.col("res_source"))
                .when(module == "mlp").then(pl.col("mlp") == pl.col("source"))
                .when(module == "att").then(pl.col("att") == pl.col("source")))
    recovered = known.group_by("layer").agg(
        *[pl.col("origin").eq(o).sum().alias(f"planted_{_name(o)}") for o in EXPECTED_CASE],
        *[((pl.col("case") == expected) & (pl.col("origin") == o)).sum().truediv(pl.col("origin").eq(o).sum())
          .alias(f"case_recovered_{_name(o)}") for o in EXPECTED_CASE],
        *[(index_ok.fill_null(False) & (pl.col("origin") == o)).sum().truediv(pl.col("origin").eq(o).sum())
          .alias(f"source_recovered_{_name(o)}") for o in ("res", "res+mlp", "res+att", "mlp", "att")])
    return table.join(recovered, on="layer", how="left")


def _name(origin: str) -> str:
    return origin.replace("+", "_")


def _layer_of(path: str) -> int:
    import re

    found = re.search(r"layer=(\d+)\.parquet$", str(path))
    if not found:
        raise ValueError(f"{path}: not a flow file (…/flow/MODULES/layer=L.parquet)")
    return int(found.group(1))
