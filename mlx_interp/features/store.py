"""The feature store on disk: writing the statistics of one pass and reading them back.

A store folder (``write_store`` / ``load_feature_store``) holds::

    stats.safetensors   the accumulated arrays (see UnitStats.arrays), the per-unit metrics
                        (density, mean_act, max_act, entropy, purity, purity_token,
                        explanation, n_top) and the logit effects (logit_pos_ids/_vals,
                        logit_neg_ids/_vals) when the units are residual-stream directions
    store.json          what was run (model, hook, SAE, data, tokens, settings), the
                        left-out counts and the summary of the metrics
    vocab.json          the decoded string of every token id

so that a feature's dashboard, "which features fire on this token" (``queries``) and the
comparison with neurons need no recomputation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .monosemanticity import summarise, token_classes, unit_metrics
from .stats import UnitStats

STORE_FORMAT = 1
STATS_FILE, META_FILE, VOCAB_FILE = "stats.safetensors", "store.json", "vocab.json"


# ------------------------------------------------------------------ writing and reading
def write_store(
    folder, stats: UnitStats, info: dict, vocab: list[str], logits=None, kind: str = "sae"
) -> Path:
    """Write one store folder (the metrics are computed here); returns the folder."""
    from safetensors.numpy import save_file

    from ..io import atomic_path, write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = unit_metrics(stats, token_classes(vocab))
    arrays = {**stats.arrays(), **metrics}
    if logits is not None:
        for name, a in zip(("logit_pos_ids", "logit_pos_vals", "logit_neg_ids", "logit_neg_vals"), logits, strict=True):  # fmt: skip
            arrays[name] = a
    with atomic_path(folder / STATS_FILE) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    summary = summarise(metrics, stats.cfg.top_k)
    meta = {
        "format": STORE_FORMAT,
        "kind": kind,
        **info,
        "n_units": stats.n_units,
        "n_tokens": stats.n_tokens,
        "token_pairs_pruned": sum(t.pruned for t in stats.tables),
        "summary": summary,
    }
    write_json(folder / META_FILE, meta)
    write_text(folder / VOCAB_FILE, json.dumps(vocab))
    return folder


class FeatureStore:
    """A store folder, read back: per-feature statistics and queries without recomputation."""

    def __init__(self, folder):
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META_FILE).read_text())
        self.arrays = load_file(str(self.folder / STATS_FILE))
        self.vocab: list[str] = json.loads((self.folder / VOCAB_FILE).read_text())

    @property
    def n_units(self) -> int:
        return int(self.meta["n_units"])

    @property
    def hook(self) -> str:
        return self.meta["hook"]

    @property
    def summary(self) -> dict:
        return self.meta["summary"]

    def check_index(self, j) -> int:
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)):
            raise ValueError(f"feature index must be an integer, not {j!r}")
        if not 0 <= int(j) < self.n_units:
            raise ValueError(f"feature {j} is out of range: this store has features 0..{self.n_units - 1}")  # fmt: skip
        return int(j)

    def token_str(self, t: int) -> str:
        return self.vocab[t] if 0 <= t < len(self.vocab) else ""

    def feature(self, j: int) -> dict:
        """Everything about one feature: statistics, metrics, top contexts, logit effects."""
        j = self.check_index(j)
        a = self.arrays
        out = {"index": j, "hook": self.hook, "kind": self.meta["kind"], "n_tokens": self.meta["n_tokens"]}  # fmt: skip
        for k in ("density", "mean_act", "max_act", "entropy", "purity", "purity_token", "explanation"):  # fmt: skip
            v = float(a[k][j])
            out[k] = None if not np.isfinite(v) else v
        out["fires"] = int(a["fires"][j])
        out["fires_left_out"] = int(a["fires_left_out"][j])
        out["hist_counts"] = a["hist"][j].tolist()
        out["hist_edges"] = a["hist_edges"].tolist()
        top = []
        L = int(self.meta["context_left"])
        for s in range(a["top_vals"].shape[1]):
            v = float(a["top_vals"][j, s])
            if not np.isfinite(v):
                break
            ctx = [
                (self.token_str(int(t)), None if not np.isfinite(x) else float(x))
                for t, x in zip(a["ctx_tokens"][j, s], a["ctx_acts"][j, s], strict=True)
                if t >= 0
            ]
            first = int(np.argmax(a["ctx_tokens"][j, s] >= 0))
            top.append({
                "act": v,
                "token": self.token_str(int(a["top_token"][j, s])),
                "token_id": int(a["top_token"][j, s]),
                "doc": int(a["top_doc"][j, s]),
                "window": int(a["top_window"][j, s]),
                "position": int(a["top_pos"][j, s]),
                "context": ctx,
                "max_index": L - first,
            })  # fmt: skip
        out["top"] = top
        if "logit_pos_ids" in a:
            out["promoted"] = [(self.token_str(int(t)), float(v)) for t, v in zip(a["logit_pos_ids"][j], a["logit_pos_vals"][j], strict=True)]  # fmt: skip
            out["suppressed"] = [(self.token_str(int(t)), float(v)) for t, v in zip(a["logit_neg_ids"][j], a["logit_neg_vals"][j], strict=True)]  # fmt: skip
        else:
            out["promoted"] = out["suppressed"] = None
        return out

    def top_tokens(self, j: int, n: int = 3) -> list[tuple[str, int]]:
        """The most common tokens among feature j's top activations, with their counts."""
        t = self.arrays["top_token"][j]
        t = t[(t >= 0) & np.isfinite(self.arrays["top_vals"][j])]
        ids, c = np.unique(t, return_counts=True)
        o = np.argsort(-c, kind="stable")[:n]
        return [(self.token_str(int(ids[i])), int(c[i])) for i in o]


def load_feature_store(folder, which: str = "sae") -> FeatureStore:
    """Open a store: a store folder, or a ``features`` output folder (``which``: 'sae' or a
    neuron hook name such as 'blocks.15.mlp.hook_post')."""
    folder = Path(folder)
    if (folder / META_FILE).exists():
        return FeatureStore(folder)
    sub = folder / "store" / ("sae" if which == "sae" else f"neurons__{which}")
    if (sub / META_FILE).exists():
        return FeatureStore(sub)
    raise ValueError(f"{folder} holds no feature store ({META_FILE} or store/ missing)")
