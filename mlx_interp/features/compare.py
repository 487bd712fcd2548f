"""SAE features against the model's raw neurons: the same metrics, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = [
    ("log10_density", "log10 density (fraction of tokens firing)", (-6, 0)),
    ("entropy", "top-token entropy (bits; lower = more monosemantic)", None),
    ("purity", "top-token purity (share of the top class)", (0, 1)),
    ("explanation", "explanation score (held-out r, 1-token rule)", (-0.2, 1)),
]


def _values(store, key: str) -> np.ndarray:
    a = store.arrays
    live = a["density"] > 0
    if key == "log10_density":
        return np.log10(a["density"][live])
    v = a[key][live]
    return v[np.isfinite(v)]


def _label(store) -> str:
    if store.meta["kind"] == "sae":
        return f"SAE features ({store.n_units})"
    return f"neurons {store.hook} ({store.n_units})"


def comparison_plot(sae, neurons: dict, path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = [sae, *neurons.values()]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, (key, xlabel, rng) in zip(axes, METRICS, strict=True):
        if key == "entropy":
            rng = (0, sae.summary["max_entropy_bits"])
        bins = np.linspace(*rng, 31)
        for s, c in zip(stores, colours, strict=False):
            v = _values(s, key)
            if not len(v):
                continue
            w = np.full(len(v), 1 / len(v))
            ax.hist(np.clip(v, *rng), bins=bins, weights=w, histtype="step", lw=2, color=c,
                    label=f"{_label(s)}: median {np.median(v):.2f}")  # fmt: skip
            ax.axvline(np.median(v), color=c, ls=":", lw=1.2)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("fraction of live units", fontsize=9)
        ax.legend(fontsize=7, loc="upper left" if key != "entropy" else "upper right")
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _row(name: str, s: dict) -> str:
    def med(k):
        q = s.get(k) or {}
        return f"{q['median']:.3f}" if q.get("n") else "n/a"

    return (
        f"| {name} | {s['n_units']} | {s['dead_fraction']:.3f} | {s['dense_fraction']:.3f} | "
        f"{med('density')} | {med('entropy_bits')} | {med('purity')} | "
        f"{s['share_purity_over_0.5'] if s['share_purity_over_0.5'] is not None else float('nan'):.3f} | "
        f"{med('explanation')} ({s['n_scored']}) |"
    )


def write_comparison(out, sae_folder, neuron_folders: dict) -> dict:
    """comparison.json / .md / .png in ``out``; returns the JSON content."""
    from ..io import atomic_path, write_json, write_text
    from .store import FeatureStore

    out = Path(out)
    sae = FeatureStore(sae_folder)
    neurons = {h: FeatureStore(f) for h, f in neuron_folders.items()}
    m = sae.meta
    result = {
        "hook": m["hook"],
        "data": m["data"],
        "tokens": m["n_tokens"],
        "top_k": m["top_k"],
        "sae": sae.summary,
        "neurons": {h: s.summary for h, s in neurons.items()},
    }
    write_json(out / "comparison.json", result)
    title = (
        f"{m['model']} {m['hook']}: SAE ({m['sae_architecture']}, d_sae={m['d_sae']}) vs raw "
        f"neurons, {m['n_tokens']} tokens of {m['data']}"
    )
    with atomic_path(out / "comparison.png") as tmp:
        comparison_plot(sae, neurons, tmp, title)
    lines = [
        f"SAE features vs raw neurons: {m['n_tokens']} tokens of {m['data']} "
        f"(top-k = {m['top_k']}; medians over live units; explanation: number scored in brackets)",
        "",
        "| units | n | dead | dense (>0.1) | median density | median top-token entropy (bits) | "
        "median purity | share purity > 0.5 | median explanation score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        _row(f"SAE features ({m['hook']})", sae.summary),
        *[_row(f"neurons {h}", s.summary) for h, s in neurons.items()],
        "",
    ]
    write_text(out / "comparison.md", "\n".join(lines))
    return result
