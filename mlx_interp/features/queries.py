"""Questions asked of a feature store, or of an SAE on one text.

``features_for_token`` answers from the stored (token, unit) table of a store folder;
``features_for_text`` runs the model and the SAE on one text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..sae import load_sae
from .collect import check_sae_for_model, encoder
from .store import FeatureStore

if TYPE_CHECKING:
    from ..model import HookedModel


def token_id(store: FeatureStore, token) -> int:
    """A token id from an id or a string that is one token of the store's vocabulary
    (the most frequent, if several tokens decode to it)."""
    if isinstance(token, (int, np.integer)):
        if not 0 <= int(token) < len(store.vocab):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {len(store.vocab)})")  # fmt: skip
        return int(token)
    matches = [i for i, s in enumerate(store.vocab) if s == token]
    if not matches:
        close = [repr(s) for s in store.vocab if s.strip().lower() == token.strip().lower()][:5]
        hint = f"; tokens like it: {', '.join(close)}" if close else ""
        raise ValueError(f"{token!r} is not one token of the vocabulary{hint}")
    counts = store.arrays["token_count"]
    return max(matches, key=lambda i: counts[i])


def features_for_token(store: FeatureStore, token, top: int = 20, min_count: int = 1) -> list[dict]:
    """Features that fire on a token (id or string), by mean activation on it, from the
    stored (token, unit) table: no recomputation."""
    t = token_id(store, token)
    U = store.n_units
    a = store.arrays
    n_t = int(a["token_count"][t])
    if n_t == 0:
        return []
    lo, hi = np.searchsorted(a["pair_keys"], [t * U, (t + 1) * U])
    units = a["pair_keys"][lo:hi] - t * U
    sums, counts = a["pair_sums"][lo:hi], a["pair_counts"][lo:hi]
    ok = counts >= min_count
    units, sums, counts = units[ok], sums[ok], counts[ok]
    o = np.argsort(-sums, kind="stable")[:top]
    return [
        {
            "feature": int(units[i]),
            "mean_act_on_token": float(sums[i] / n_t),
            "fire_rate_on_token": float(counts[i] / n_t),
            "share_of_feature_firings": float(counts[i] / max(a["fires"][units[i]], 1)),
            "token_occurrences": n_t,
        }
        for i in o
    ]


def features_for_text(model: HookedModel, sae, text: str, top: int = 5, store: FeatureStore | None = None, force: bool = False) -> list[dict]:  # fmt: skip
    """Per token of ``text``: its top active features (index, activation[, top tokens]).
    An SAE of another model or hook is refused unless ``force``."""
    import mlx.core as mx

    sae = load_sae(sae)
    hook = check_sae_for_model(sae.cfg, model, force=force)
    if not text:
        raise ValueError("empty text")
    tokens = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = np.asarray(cache[hook][0].astype(mx.float32))
    f = encoder(sae)(x)
    ids = np.asarray(tokens[0]).tolist()
    out = []
    for p, t in enumerate(ids):
        o = np.argsort(-f[p], kind="stable")[:top]
        feats = [{"feature": int(i), "act": float(f[p, i])} for i in o if f[p, i] > 0]
        if store is not None:
            for d in feats:
                d["top_tokens"] = store.top_tokens(d["feature"])
        out.append({"position": p, "token": model.tokenizer.decode([t]), "features": feats, "left_out": p == 0})  # fmt: skip
    return out
