"""Figures. Each writes a PNG and, beside it, the numbers behind it (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .io import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(fig)
    return Path(path)


def write_csv(path: str | Path, header: list[str], rows) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return Path(path)


def residual_norms(model, text: str) -> tuple[list[str], np.ndarray]:
    """Norms of the residual stream: (str_tokens, norms (n_layers + 1, pos)).

    Row 0 is the embedding (blocks.0.hook_resid_pre), row L + 1 is blocks.L.hook_resid_post.
    """
    n = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    tokens = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=n)
    import mlx.core as mx

    norms = mx.stack([mx.linalg.norm(cache[k][0].astype(mx.float32), axis=-1) for k in names])
    return model.to_str_tokens(tokens[0]), np.array(norms)


def token_labels(str_tokens: list[str]) -> list[str]:
    """Printable token labels: spaces as '·', newlines and tabs escaped."""
    return [repr(t)[1:-1].replace(" ", "·") for t in str_tokens]


def residual_norm_heatmap(model, text: str, path: str | Path, title: str | None = None) -> Path:
    """Heatmap of residual-stream norms, tokens × layers, on a log colour scale.

    A log scale, because a few positions (the first token, separators) carry norms
    a hundred times those of ordinary tokens in many models ("massive activations").
    Writes ``path`` (PNG) and the same numbers as ``path`` with suffix .csv.
    """
    str_tokens, norms = residual_norms(model, text)
    labels = token_labels(str_tokens)
    columns = ["embed"] + [f"{i}" for i in range(norms.shape[0] - 1)]
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.28 * len(columns) + 3), max(2.5, 0.32 * len(labels) + 1.6))
    )
    im = ax.imshow(
        norms.T, aspect="auto", cmap="viridis", interpolation="nearest",
        norm=LogNorm(vmin=norms.min(), vmax=norms.max()),
    )  # fmt: skip
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_xlabel("residual stream after block (embed = before block 0)")
    ax.set_ylabel("token")
    ax.set_title(title or f"Residual stream norm by token and layer ({model.source})")
    fig.colorbar(im, ax=ax, label="‖resid‖ (L2 norm, log scale)")
    png = save_figure(fig, path)
    header = ["position", "token", *[c if c == "embed" else f"L{c}" for c in columns]]
    rows = [[i, t, *[f"{v:.4g}" for v in norms[:, i]]] for i, t in enumerate(str_tokens)]
    write_csv(Path(path).with_suffix(".csv"), header, rows)
    return png
