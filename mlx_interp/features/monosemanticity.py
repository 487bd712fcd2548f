"""Monosemanticity and sparsity metrics of units (SAE features or raw neurons).

The same definitions apply to both, on a+ = max(a, 0) (README, "Features and dashboards"):

- density: fraction of the counted tokens on which the unit fires (a+ > 0);
  dead: density 0; dense: density > 0.1 (as ``mlx_interp.sae.metrics``).
- top-token entropy: the entropy, in bits, of the distribution of tokens at the unit's
  top-k activations (k = ``top_k`` of the pass, 32 by default; 0 = always one token,
  log2 k = all different). Lower is more monosemantic at the token level.
- top-token purity: the share of the top-k activations whose token falls in the most
  common *token class* (the token's text lower-cased with surrounding whitespace removed,
  so " The", "the" and "The" are one class). The **monosemanticity score** of the index
  pages is this purity.
- explanation score: how well a one-token rule predicts the unit's activation on held-out
  text. The data is split in two by document parity; on the first half the rule learns the
  unit's mean a+ on each token; on the second half the score is the Pearson correlation
  between that prediction (0 for unseen tokens) and the actual a+, over every counted token
  (1: the activation is a function of the current token; 0: unrelated to it). NaN when the
  unit fires fewer than ``MIN_FIRES`` times in either half.
Entropy and purity are NaN for units with fewer than ``MIN_TOP`` top activations.
"""

from __future__ import annotations

import numpy as np

from ..sae.metrics import DENSE_THRESHOLD

MIN_FIRES = 5
MIN_TOP = 8


def token_classes(vocab: list[str]) -> np.ndarray:
    """Class id per token id: tokens equal after lower-casing and stripping whitespace."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(s.strip().lower(), len(ids)) for s in vocab], np.int64)


def top_token_metrics(top_vals, top_token, classes) -> tuple[np.ndarray, ...]:
    """(entropy in bits, purity by token class, purity by exact token, n_top) per unit."""
    U = len(top_vals)
    ent, pur, pur_tok = (np.full(U, np.nan) for _ in range(3))
    valid = np.isfinite(top_vals) & (top_token >= 0)
    n_top = valid.sum(1)
    for u in np.nonzero(n_top >= MIN_TOP)[0]:
        t = top_token[u, valid[u]]
        _, c = np.unique(t, return_counts=True)
        p = c / c.sum()
        ent[u] = float(-(p * np.log2(p)).sum())
        pur_tok[u] = c.max() / c.sum()
        _, cc = np.unique(classes[t], return_counts=True)
        pur[u] = cc.max() / cc.sum()
    return ent, pur, pur_tok, n_top


def explanation_scores(stats) -> tuple[np.ndarray, np.ndarray]:
    """(held-out Pearson r of the one-token rule, fires per half (2, U)) from UnitStats."""
    U = stats.n_units
    ta, tb = stats.tables
    ta.compact()
    tb.compact()
    n_a, n_b = stats.token_count
    fires_half = np.stack([np.bincount(t.keys % U, weights=t.counts, minlength=U) for t in (ta, tb)])  # fmt: skip
    tok_a, u_a = ta.keys // U, ta.keys % U
    m = ta.sums / np.maximum(n_a[tok_a], 1)  # mean a+ of unit u on token t, first half
    s_hat = np.bincount(u_a, weights=m * n_b[tok_a], minlength=U)
    s_hat2 = np.bincount(u_a, weights=m * m * n_b[tok_a], minlength=U)
    _, ia, ib = np.intersect1d(ta.keys, tb.keys, assume_unique=True, return_indices=True)
    s_ahat = np.bincount(u_a[ia], weights=m[ia] * tb.sums[ib], minlength=U)
    n = max(int(stats.half_n[1]), 1)
    mean_a, mean_h = stats.half_sum[1] / n, s_hat / n
    cov = s_ahat / n - mean_a * mean_h
    var_a = stats.half_sumsq[1] / n - mean_a**2
    var_h = s_hat2 / n - mean_h**2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_a * var_h)
    r[(fires_half < MIN_FIRES).any(0) | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1, 1), fires_half


def unit_metrics(stats, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-unit metric of a finished UnitStats."""
    n = max(stats.n_tokens, 1)
    ent, pur, pur_tok, n_top = top_token_metrics(stats.top_vals, stats.top_token, classes)
    expl, _ = explanation_scores(stats)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_active = np.where(stats.fires > 0, stats.sum_act / stats.fires, 0.0)
    return {
        "density": stats.fires / n,
        "mean_act": mean_active,
        "max_act": np.where(np.isfinite(stats.top_vals[:, 0]), stats.top_vals[:, 0], 0.0),
        "entropy": ent,
        "purity": pur,
        "purity_token": pur_tok,
        "explanation": expl,
        "n_top": n_top,
    }


def _q(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0}
    return {
        "n": int(len(x)),
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "p10": float(np.quantile(x, 0.1)),
        "p90": float(np.quantile(x, 0.9)),
    }


def summarise(metrics: dict[str, np.ndarray], top_k: int) -> dict:
    """Summary over units: dead/dense fractions and quantiles of each metric (live units)."""
    d = metrics["density"]
    live = d > 0
    pur = metrics["purity"][live]
    return {
        "n_units": int(len(d)),
        "n_live": int(live.sum()),
        "dead_fraction": float((d == 0).mean()),
        "dense_fraction": float((d > DENSE_THRESHOLD).mean()),
        "density": _q(d[live]),
        "log10_density": _q(np.log10(d[live])) if live.any() else {"n": 0},
        "entropy_bits": _q(metrics["entropy"][live]),
        "max_entropy_bits": float(np.log2(top_k)),
        "purity": _q(pur),
        "purity_token": _q(metrics["purity_token"][live]),
        "share_purity_over_0.5": float((pur[np.isfinite(pur)] > 0.5).mean())
        if np.isfinite(pur).any()
        else None,  # fmt: skip
        "explanation": _q(metrics["explanation"][live]),
        "n_scored": int(np.isfinite(metrics["explanation"][live]).sum()),
    }
