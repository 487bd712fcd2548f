"""Figures. Each writes a PNG and, beside it, the numbers behind it (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    from ..model import HookedModel

matplotlib.use("Agg")  # files only; no display on servers or in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .measures import residual_norms  # noqa: E402


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


def token_labels(str_tokens: list[str]) -> list[str]:
    """Printable token labels: spaces as '·', newlines and tabs escaped."""
    return [repr(t)[1:-1].replace(" ", "·") for t in str_tokens]


def residual_norm_heatmap(
    model: HookedModel, text: str, path: str | Path, title: str | None = None
) -> Path:
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


# ------------------------------------------------------ activation analyses
# Each function takes the numbers an ``analysis`` function returned, writes the PNG and
# the numbers beside it (CSV, and JSON where a table does not fit), and returns the paths.


def _labels(str_tokens) -> list[str]:
    return [repr(t)[1:-1] for t in str_tokens]


def _of(model_name: str) -> str:
    return f" ({model_name})" if model_name else ""


def _sibling(path: str | Path, suffix: str) -> Path:
    return Path(path).with_suffix(suffix)


def _write_json(path: Path, obj) -> Path:
    from ..io import write_json

    return write_json(path, obj)


def neuron_heatmap(na, path: str | Path, model_name: str = "") -> list[Path]:
    """Tokens x the most active neurons of one hook (diverging colours, 0 is white)."""
    labels = _labels(na.str_tokens)
    vals = na.values
    lim = float(np.abs(vals[1:] if na.skipped_first else vals).max()) or 1.0
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.42 * vals.shape[1] + 2.5), max(3.5, 0.3 * len(labels) + 1.8))
    )
    im = ax.imshow(vals, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(len(na.neurons)), [str(n) for n in na.neurons], rotation=90, fontsize=7)
    ax.set_xlabel("neuron (ranked by max |activation|)")
    ax.set_ylabel("token")
    note = " (ranked without position 0; its colours may saturate)" if na.skipped_first else ""
    ax.set_title(f"Top {len(na.neurons)} neurons of {na.hook}{note}\n{model_name}", fontsize=10)
    fig.colorbar(im, ax=ax, label="activation")
    png = save_figure(fig, path)
    rows = [[i, t, *[f"{v:.4g}" for v in vals[i]]] for i, t in enumerate(na.str_tokens)]
    csv_ = write_csv(
        _sibling(path, ".csv"), ["position", "token", *[f"n{n}" for n in na.neurons]], rows
    )
    return [png, csv_]


def similarity_grid(ts, path: str | Path, model_name: str = "") -> list[Path]:
    """Token x token cosine similarity, one panel per layer; massive positions masked grey."""
    labels = _labels(ts.str_tokens)
    n = len(ts.layers)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    size = max(3.2, 0.32 * len(labels) + 1.2)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size * cols + 1.2, size * rows + 0.6), squeeze=False
    )
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#bbbbbb")
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        s = ts.sims[k].copy()
        m = ts.massive[k]
        s[m, :] = np.nan
        s[:, m] = np.nan
        im = ax.imshow(s, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        marked = [f"*{lab}" if m[i] else lab for i, lab in enumerate(labels)]
        ax.set_xticks(range(len(labels)), marked, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), marked, fontsize=7)
        L = ts.layers[k]
        ax.set_title("embeddings" if L == -1 else f"after block {L}", fontsize=9)
    fig.suptitle(
        f"Cosine similarity between tokens{_of(model_name)}\n"
        "* = position 0 or massive-norm token (>10x median), masked grey",
        fontsize=10,
    )
    fig.colorbar(im, ax=axes.ravel().tolist(), label="cosine similarity", shrink=0.8)
    png = save_figure(fig, path)
    js = _write_json(
        _sibling(path, ".json"),
        {
            "tokens": ts.str_tokens,
            "layers": ts.layers,
            "cosine_similarity": np.round(ts.sims, 5).tolist(),
            "norms": np.round(ts.norms, 3).tolist(),
            "massive": ts.massive.tolist(),
        },
    )
    return [png, js]


def semantic_similarity_plot(ss, path: str | Path, model_name: str = "") -> list[Path]:
    """Within- vs between-group similarity per layer, and the word x word matrix at the best layer."""
    x = np.arange(len(ss.labels))
    gap = ss.within_centered - ss.between_centered
    best = int(np.argmax(gap))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.2, 1]})
    ax.plot(x, ss.within, "--", color="tab:blue", label="within group (raw cosine)")
    ax.plot(x, ss.between, "--", color="tab:orange", label="between groups (raw cosine)")
    ax.plot(x, ss.within_centered, "-", color="tab:blue", lw=2, label="within group (centered)")
    ax.plot(
        x, ss.between_centered, "-", color="tab:orange", lw=2, label="between groups (centered)"
    )
    ax.axvline(best, color="grey", lw=0.8, ls=":")
    step = max(1, -(-len(x) // 16))
    ax.set_xticks(x[::step], [ss.labels[i] for i in x[::step]], rotation=45, fontsize=8)
    ax.set_xlabel("residual stream after block")
    ax.set_ylabel("mean cosine similarity")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    groups = list(dict.fromkeys(ss.groups))
    ax.set_title(
        f"Related vs unrelated words ({', '.join(groups)})\n"
        f"{len(ss.words)} words x {len(ss.templates)} templates; centered = minus the mean word",
        fontsize=10,
    )
    im = ax2.imshow(ss.sims_centered[best], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    labels = [w.strip() for w in ss.words]
    ax2.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax2.set_yticks(range(len(labels)), labels, fontsize=7)
    edges = np.cumsum([ss.groups.count(g) for g in groups])[:-1] - 0.5
    for e in edges:
        ax2.axhline(e, color="k", lw=0.8)
        ax2.axvline(e, color="k", lw=0.8)
    ax2.set_title(
        f"Centered similarity at {ss.labels[best]}\n(the layer with the largest within - between gap)",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax2, label="cosine similarity (centered)")
    fig.suptitle(model_name, fontsize=9)
    png = save_figure(fig, path)
    rows = [
        [lab, f"{a:.4f}", f"{b:.4f}", f"{c:.4f}", f"{d:.4f}"]
        for lab, a, b, c, d in zip(
            ss.labels, ss.within, ss.between, ss.within_centered, ss.between_centered, strict=True
        )
    ]
    csv_ = write_csv(
        _sibling(path, ".csv"),
        ["layer", "within_raw", "between_raw", "within_centered", "between_centered"],
        rows,
    )
    js = _write_json(
        _sibling(path, ".json"),
        {
            "words": ss.words,
            "groups": ss.groups,
            "templates": ss.templates,
            "layers": ss.labels,
            "best_layer": ss.labels[best],
            "n_massive_word_positions": ss.n_massive,
            "sims_centered_best_layer": np.round(ss.sims_centered[best], 5).tolist(),
        },
    )
    return [png, csv_, js]


def position_norm_plot(pn, path: str | Path, model_name: str = "") -> list[Path]:
    """Median residual norm against position (quartile band), one line per layer, log scale."""
    C = pn.median.shape[1]
    x = np.arange(C)
    fig, ax = plt.subplots(figsize=(10, 5))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(pn.labels)))
    for i, lab in enumerate(pn.labels):
        ax.plot(x[1:], pn.median[i, 1:], color=colors[i], label=lab)
        ax.fill_between(x[1:], pn.q25[i, 1:], pn.q75[i, 1:], color=colors[i], alpha=0.15)
        ax.scatter([0], [pn.median[i, 0]], color=colors[i], marker="*", s=90, zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("position in the context window (0 = boundary token, starred)")
    ax.set_ylabel("‖resid‖ (median, quartile band; log scale)")
    ax.set_title(
        f"Residual norm by position over {pn.n_windows} windows of {C} tokens{_of(model_name)}",
        fontsize=10,
    )
    ax.legend(title="after block", fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")
    png = save_figure(fig, path)
    rows = [
        [
            p,
            *[f"{pn.median[i, p]:.4g}" for i in range(len(pn.labels))],
            *[f"{pn.massive_share[i, p]:.3f}" for i in range(len(pn.labels))],
        ]
        for p in range(C)
    ]
    csv_ = write_csv(
        _sibling(path, ".csv"),
        [
            "position",
            *[f"median_{lab}" for lab in pn.labels],
            *[f"massive_share_{lab}" for lab in pn.labels],
        ],
        rows,
    )
    return [png, csv_]


def same_token_plot(stp, path: str | Path, model_name: str = "") -> list[Path]:
    """Same token at different positions: similarity vs distance, and the matrix at one layer."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    centers = (stp.distance_bins[:-1] + stp.distance_bins[1:]) / 2
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(stp.labels)))
    for i, lab in enumerate(stp.labels):
        ax.plot(centers, stp.mean_sim[i], "o-", color=colors[i], label=lab)
    ax.set_xlabel("distance between the two positions (tokens, binned)")
    ax.set_ylabel("mean cosine similarity")
    ax.set_title(
        f"{stp.token!r} at different positions: {len(stp.positions)} occurrences"
        f" ({stp.n_excluded} massive-norm rows left out)",
        fontsize=10,
    )
    ax.legend(title="after block", fontsize=8)
    ax.grid(alpha=0.3)
    k = len(stp.labels) // 2
    im = ax2.imshow(stp.sims[k], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ticks = np.linspace(0, len(stp.positions) - 1, min(8, len(stp.positions))).astype(int)
    ax2.set_xticks(ticks, stp.positions[ticks])
    ax2.set_yticks(ticks, stp.positions[ticks])
    ax2.set_xlabel("occurrence (labelled by position)")
    ax2.set_title(f"occurrences sorted by position, {stp.labels[k]}", fontsize=10)
    fig.colorbar(im, ax=ax2, label="cosine similarity")
    fig.suptitle(model_name, fontsize=9)
    png = save_figure(fig, path)
    rows = [
        [
            f"{stp.distance_bins[j]}-{stp.distance_bins[j + 1] - 1}",
            *[f"{stp.mean_sim[i, j]:.4f}" for i in range(len(stp.labels))],
        ]
        for j in range(len(centers))
    ]
    csv_ = write_csv(_sibling(path, ".csv"), ["distance", *stp.labels], rows)
    return [png, csv_]


def position_embedding_plot(pe, path: str | Path, model_name: str = "") -> list[Path]:
    """GPT-2's W_pos: cosine similarity between positions and its top principal components."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    im = ax.imshow(pe.sims, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    ax.set_title("cosine similarity of learned position embeddings", fontsize=10)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    for i in range(pe.pcs.shape[1]):
        ax2.plot(pe.pcs[:, i], label=f"PC{i + 1} ({pe.explained[i]:.0%} of variance)")
    ax2.set_xlabel("position")
    ax2.set_ylabel("projection")
    ax2.set_title("W_pos on its top principal components", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Position embeddings{_of(model_name)}", fontsize=10)
    png = save_figure(fig, path)
    rows = [
        [p, f"{pe.norms[p]:.4g}", *[f"{v:.4g}" for v in pe.pcs[p]]] for p in range(len(pe.norms))
    ]
    csv_ = write_csv(_sibling(path, ".csv"), ["position", "norm", "pc1", "pc2", "pc3"], rows)
    return [png, csv_]


def logit_lens_plot(ll, path: str | Path, model_name: str = "") -> list[Path]:
    """Layers x positions: colour = probability of the top prediction, text = that token."""
    labels = _labels(ll.str_tokens)
    p1 = ll.top_probs[:, :, 0]
    n_rows, n_pos = p1.shape
    fig, ax = plt.subplots(figsize=(max(7.0, 1.15 * n_pos + 2.5), max(4.0, 0.3 * n_rows + 1.8)))
    im = ax.imshow(
        p1, aspect="auto", cmap="Blues", vmin=0, vmax=1, origin="lower", interpolation="nearest"
    )
    for i in range(n_rows):
        for j in range(n_pos):
            s = repr(ll.top_strs[i][j][0])[1:-1][:9]
            ax.text(
                j,
                i,
                s,
                ha="center",
                va="center",
                fontsize=6,
                color="white" if p1[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(n_pos), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), ll.labels, fontsize=7)
    ax.set_xlabel("input token (prediction is for the next one)")
    ax.set_ylabel("residual stream after block")
    ax.set_title(
        f"Logit lens: top next-token prediction per layer and position{_of(model_name)}",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, label="probability of the top token")
    png = save_figure(fig, path)
    k = ll.top_ids.shape[2]
    rows = [
        [
            ll.labels[i],
            j,
            ll.str_tokens[j],
            *[x for t in range(k) for x in (ll.top_strs[i][j][t], f"{ll.top_probs[i, j, t]:.4f}")],
        ]
        for i in range(n_rows)
        for j in range(n_pos)
    ]
    header = [
        "layer",
        "position",
        "token",
        *[x for t in range(k) for x in (f"top{t + 1}", f"p{t + 1}")],
    ]
    csv_ = write_csv(_sibling(path, ".csv"), header, rows)
    md = _sibling(path, ".md")
    from ..io import write_text

    last = n_pos - 1
    lines = [
        f"Logit lens at the last position ({ll.str_tokens[last]!r}), top {k} per layer:",
        "",
        "| layer | " + " | ".join(f"top {t + 1}" for t in range(k)) + " |",
        "| --- |" + " --- |" * k,
    ]
    for i in range(n_rows):
        cells = [f"{ll.top_strs[i][last][t]!r} {ll.top_probs[i, last, t]:.2f}" for t in range(k)]
        lines.append(f"| {ll.labels[i]} | " + " | ".join(cells) + " |")
    write_text(md, "\n".join(lines) + "\n")
    return [png, csv_, md]


def patching_heatmap(pr, path: str | Path, model_name: str = "") -> list[Path]:
    """Activation patching: recovered logit difference per (layer, position)."""
    labels = _labels(pr.str_tokens)
    r = pr.recovered
    lim = max(1.0, float(np.nanmax(np.abs(r))))
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.6 * len(labels) + 2.5), max(4.0, 0.26 * r.shape[0] + 2))
    )
    im = ax.imshow(
        r,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        origin="lower",
        interpolation="nearest",
    )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(r.shape[0]), pr.labels, fontsize=7)
    ax.set_xlabel("position (corrupted prompt's tokens)")
    ax.set_ylabel(f"patched hook ({pr.hook_template.replace('{L}', 'L')})")
    ax.set_title(
        f"Activation patching, clean -> corrupted{_of(model_name)}\n"
        f"logit diff {pr.answer!r} - {pr.wrong!r}: clean {pr.clean_diff:.2f}, corrupted {pr.corrupted_diff:.2f}; "
        "1 = fully restored",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="recovered logit difference (fraction)")
    png = save_figure(fig, path)
    rows = [[pr.labels[i], *[f"{v:.4f}" for v in r[i]]] for i in range(r.shape[0])]
    csv_ = write_csv(
        _sibling(path, ".csv"), ["layer", *[f"{j}:{t}" for j, t in enumerate(pr.str_tokens)]], rows
    )
    return [png, csv_]


ATP_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _atp_title(ar, what: str, model_name: str) -> str:
    if ar.direction == "noising":
        how = "corrupted -> clean (noising; gradient at the clean run)"
    else:
        how = "clean -> corrupted (denoising; gradient at the corrupted run)"
    metric = f"logit diff {ar.answer!r} - {ar.wrong!r}" if ar.answer else "the metric"
    return (
        f"Attribution patching (AtP), {what}{_of(model_name)}\n"
        f"patch {how}; estimated change of {metric}: clean {ar.clean_metric:.2f}, "
        f"corrupted {ar.corrupted_metric:.2f}"
    )


def attribution_heatmap(ar, path: str | Path, model_name: str = "") -> list[Path]:
    """AtP estimates per layer x position for resid_pre, attn_out and mlp_out (one panel
    each, diverging colours, 0 is white), and the numbers as CSV."""
    labels = _labels(ar.str_tokens)
    hooks = [h for h in ATP_HOOKS if f"blocks.0.{h}" in ar.scores]
    if not hooks:
        raise ValueError(f"none of {', '.join(ATP_HOOKS)} was attributed")
    mats = [ar.layer_pos(h) for h in hooks]
    n_layers, n_pos = mats[0].shape
    fig, axes = plt.subplots(
        1, len(hooks), squeeze=False,
        figsize=(len(hooks) * max(4.0, 0.42 * n_pos + 1.6), max(4.0, 0.22 * n_layers + 2.2)),
    )  # fmt: skip
    for ax, h, m in zip(axes[0], hooks, mats, strict=True):
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                       interpolation="nearest")  # fmt: skip
        ax.set_xticks(range(n_pos), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=6)
        ax.set_xlabel("position (clean prompt's tokens)")
        ax.set_ylabel("layer")
        ax.set_title(h, fontsize=9)
        fig.colorbar(im, ax=ax, label="estimated change")
    fig.suptitle(_atp_title(ar, "layer x position", model_name), fontsize=9)
    png = save_figure(fig, path)
    header = ["hook", "layer", *[f"{j}:{t}" for j, t in enumerate(ar.str_tokens)]]
    rows = [[h, i, *[f"{v:.5g}" for v in m[i]]] for h, m in zip(hooks, mats, strict=True)
            for i in range(n_layers)]  # fmt: skip
    return [png, write_csv(_sibling(path, ".csv"), header, rows)]


def attribution_head_heatmap(ar, path: str | Path, model_name: str = "") -> list[Path]:
    """AtP estimates per layer x head (each head's hook_z patched at every position)."""
    m = ar.heads()
    n_layers, n_heads = m.shape
    lim = float(np.abs(m).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n_heads + 3), max(4.0, 0.22 * n_layers + 2)))
    im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                   interpolation="nearest")  # fmt: skip
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=7)
    ax.set_yticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(_atp_title(ar, "attention heads (hook_z, all positions)", model_name), fontsize=9)
    fig.colorbar(im, ax=ax, label="estimated change")
    png = save_figure(fig, path)
    rows = [[i, *[f"{v:.5g}" for v in m[i]]] for i in range(n_layers)]
    return [
        png,
        write_csv(_sibling(path, ".csv"), ["layer", *[f"H{h}" for h in range(n_heads)]], rows),
    ]


def attribution_table(ar, path: str | Path, k: int = 20) -> list[Path]:
    """The top ``k`` components of each kind by |AtP score|: ``path`` (Markdown) and CSV."""
    from ..io import write_text

    rows = ar.top(k)
    header = ["kind", "component", "layer", "position", "token", "index", "score"]

    def cells(r):
        p = r["position"]
        tok = "" if p is None else ar.str_tokens[p]
        return [r["kind"], r["component"], "" if r["layer"] is None else r["layer"],
                "" if p is None else p, tok, "" if r["index"] is None else r["index"],
                f"{r['score']:.5g}"]  # fmt: skip

    csv_ = write_csv(_sibling(path, ".csv"), header, [cells(r) for r in rows])
    lines = [
        f"Top {k} components of each kind by |AtP score| ({ar.direction}); a score estimates "
        f"the change of the metric (base run {ar.base_metric:.3f}) when that one component "
        "is patched.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for r in rows:
        c = cells(r)
        c[4] = repr(c[4]) if c[4] != "" else ""
        lines.append("| " + " | ".join(str(x) for x in c) + " |")
    md = write_text(path, "\n".join(lines) + "\n")
    return [md, csv_]


def token_occurrences_report(ta, out: str | Path, title_model: str = "") -> list[Path]:
    """For `mlx-interp tokens --out`: activations, occurrences (CSV) and a similarity plot per hook."""
    from ..io import output_folder

    with output_folder(out) as out:
        return _token_occurrences_report(ta, out, title_model)


def _token_occurrences_report(ta, out: Path, title_model: str) -> list[Path]:
    import mlx.core as mx

    from ..io import atomic_path

    written = []
    with atomic_path(out / "token_activations.safetensors") as tmp:
        mx.save_safetensors(str(tmp), {h: mx.array(a) for h, a in ta.acts.items()})
    written.append(out / "token_activations.safetensors")
    rows = [
        [
            i,
            int(ta.doc_ids[i]),
            int(ta.positions[i]),
            *[f"{ta.norms(h)[i]:.4g}" for h in ta.hooks],
            ta.contexts[i],
        ]
        for i in range(len(ta))
    ]
    written.append(
        write_csv(
            out / "occurrences.csv",
            ["occurrence", "doc", "position", *[f"norm {h}" for h in ta.hooks], "context"],
            rows,
        )
    )
    ctx = [
        c if len(c) < 48 else "…" + c[max(0, c.index("[[") - 22) : c.index("]]") + 20] + "…"
        for c in ta.contexts
    ]
    for h in ta.hooks:
        s = ta.cosine_similarity(h)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(ta) + 4), max(5.0, 0.3 * len(ta) + 2)))
        im = ax.imshow(s, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(ta)), ctx, fontsize=7)
        ax.set_xticks(range(len(ta)), [str(i) for i in range(len(ta))], fontsize=7)
        ax.set_xlabel("occurrence")
        ax.set_title(
            f"{ta.token!r} in {len(ta)} contexts: cosine similarity at {h}\n{title_model}",
            fontsize=10,
        )
        fig.colorbar(im, ax=ax, label="cosine similarity")
        written.append(save_figure(fig, out / f"similarity_{h}.png"))
    return written


def quantization_error_plot(
    curves: dict[int, dict[str, list[float]]], path: str | Path, model_name: str = ""
) -> Path:
    """Relative error per layer that quantization makes, one line per (bits, hook kind).

    ``curves``: {bits: parity.per_layer(parity.quantization_error(...))}. Log scale.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    styles = {"hook_resid_post": "-", "hook_mlp_out": "--", "hook_attn_out": ":"}
    for i, (bits, by_kind) in enumerate(sorted(curves.items())):
        for kind, values in by_kind.items():
            ax.plot(range(len(values)), values, styles.get(kind, "-"), color=f"C{i}",
                    label=f"{bits}-bit {kind}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("||quantized - float32|| / ||float32||")
    ax.set_title(f"Quantization error per layer{_of(model_name)} (group size 64)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
