"""From the verdict's evidence to a calibrated probability: a small logistic model.

The verdict (saematch.verdict) measures, for each feature i of layer L and a partner j in
layer L+1 (the assignment's ``match`` or the top-1 ``top1``), a few numbers: how far the pair's
score stands above chance, how clearly j is i's best and i is j's best, whether the assignment
and the top-1 agree (:data:`EVIDENCE`). A logistic model maps them to a probability that j is
i's activation partner on text (its next-layer feature of highest Pearson r, the label of
saematch.realmodels and saematch.evaluate). Without data the model's coefficients are the ones
fitted on real SAEs of real models (``verdict_model.json``, written by bench/fit_verdict.py);
with an evaluation they are refitted to that evaluation's labels, cross-fitted
(saematch.verdict_data).

Plain numpy: a model is a dict {"names", "mean", "scale", "coef", "intercept"} (JSON-able).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).with_name("verdict_model.json")


def logistic_fit(X: np.ndarray, y: np.ndarray, names: list[str], l2: float = 1.0,
                 weight: np.ndarray | None = None) -> dict:
    """L2-regularised logistic regression of y (n,) bool on X (n, k), columns standardised
    first (so ``l2`` treats each alike); Newton's method in float64. ``weight``: per-row
    weights (default 1). Returns the model dict."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    mean = X.mean(0) if len(X) else np.zeros(X.shape[1])
    scale = X.std(0) if len(X) else np.ones(X.shape[1])
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = np.column_stack([(X - mean) / scale, np.ones(len(X))])
    beta = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0  # the intercept is not shrunk
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(Z @ beta, -35, 35)))
        grad = Z.T @ (w * (p - y)) + reg * beta
        H = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(H, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"names": list(names), "mean": mean.tolist(), "scale": scale.tolist(), "coef": beta[:-1].tolist(),
            "intercept": float(beta[-1])}


def logistic_predict(model: dict, X: np.ndarray) -> np.ndarray:
    """P(label) (n,) float64 for evidence X (n, k) in the model's column order."""
    X = np.asarray(X, np.float64)
    z = ((X - np.asarray(model["mean"])) / np.asarray(model["scale"])) @ np.asarray(model["coef"]) + model["intercept"]
    return 1 / (1 + np.exp(-np.clip(z, -35, 35)))


def cross_fit(X: np.ndarray, y: np.ndarray, names: list[str], folds: int = 5, seed: int = 0,
              groups: np.ndarray | None = None, l2: float = 1.0) -> np.ndarray:
    """Held-out probabilities: each row predicted by a model fitted without its fold (rows split
    at random into ``folds`` parts, or by ``groups``: one fold per group value)."""
    n = len(y)
    if groups is None:
        fold = np.random.default_rng(seed).permutation(n) % max(1, min(folds, n))
    else:
        _, fold = np.unique(groups, return_inverse=True)
    p = np.full(n, np.nan)
    for f in np.unique(fold):
        test = fold == f
        if (~test).sum() == 0:
            continue
        p[test] = logistic_predict(logistic_fit(X[~test], y[~test], names, l2), X[test])
    return p


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: Σ_b (n_b/n)·|mean y − mean p| over equal-width bins of p."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    if not len(p):
        return float("nan")
    b = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for k in np.unique(b):
        m = b == k
        err += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    return float(err)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Per bin of width 1/bins: features, mean probability, share with the label."""
    p, y = np.asarray(p, np.float64), np.asarray(y, bool)
    b = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": f"{k / bins:.1f}–{(k + 1) / bins:.1f}", "features": int((b == k).sum()),
             "mean_confidence": float(p[b == k].mean()), "share_partner": float(y[b == k].mean())}
            for k in range(bins) if (b == k).any()]


def precision_kept(declared: np.ndarray, y: np.ndarray) -> dict:
    """Precision (share of declared with the label), recall and kept share of a declared set."""
    declared, y = np.asarray(declared, bool), np.asarray(y, bool)
    n = max(len(y), 1)
    return {"precision": float(y[declared].mean()) if declared.any() else float("nan"),
            "recall": float((declared & y).sum() / y.sum()) if y.any() else float("nan"),
            "kept": float(declared.sum() / n)}


def load_model(path: str | Path = MODEL_PATH) -> dict:
    """The shipped data-free model: {"match": model, "top1": model, "provenance": {...}}."""
    return json.loads(Path(path).read_text())


def evidence(frame, partner: str = "match") -> np.ndarray:
    """The evidence matrix (n, k) float64 of ``partner`` ("match" or "top1") from a table with
    the matches' array columns ``evidence`` / ``top1_evidence`` (a polars frame or a dict)."""
    col = frame["evidence" if partner == "match" else "top1_evidence"]
    col = col.to_numpy() if hasattr(col, "to_numpy") else col
    return np.asarray(np.stack(col) if col.dtype == object else col, np.float64)
