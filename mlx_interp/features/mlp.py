"""Multi-layer MLP neuron analysis: one streamed pass, the neurons of every chosen layer.

One pass over the data (``iter_activations``) reads, per chosen layer L,
``blocks.L.mlp.hook_post`` (the neurons), ``blocks.L.hook_mlp_out`` and
``blocks.L.hook_resid_mid`` (the residual the MLP reads). The rows counted are those of the
feature pass (``stats.batch_grid``): position 0, special tokens and massive rows (residual
norm at any chosen layer's ``hook_resid_mid`` over ``massive_factor`` x the batch median)
are left out and counted. Each layer's neurons feed one ``UnitStats`` (density, mean and
max activation, histogram, top-k contexts, token table), so every neuron gets the
monosemanticity metrics and the dashboards of SAE features (``monosemanticity.py``,
``dashboards.py``).

Memory is bounded per layer, never by the tokens: the batch's activations (capped at
``batch_mb`` by shrinking the windows per forward pass), the per-neuron top-k arrays
(about ``top_k x (context + 4) x 8`` bytes per neuron) and the token tables, whose pairs
share one budget over all layers (``pair_budget``, about 40 bytes a pair).

Output folder::

    summary.json                 settings, tokens, time, peak RSS, the per-layer table
    layers.csv                   per layer: MLP-output norm, dead / dense fractions, medians
    mlp_by_layer.png (.csv)      metrics vs layer
    neuron_rank_heatmap.png      layer x neuron rank: density and max activation, sorted
    top_neurons_per_token.json/.md   per frequent token, the neurons (all layers) most above
                                 their own mean on it
    index.html                   the layers, linked to their dashboards
    layers/blocks.L.mlp.hook_post/   a feature store (load_feature_store) with index.html,
                                 pages/, cards/ and features.csv: the neuron dashboards
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..options import option
from .queries import token_id
from .stats import StatsConfig, UnitStats, batch_grid


@dataclass
class MLPConfig:
    """Settings of the MLP pass (each is a ``mlp-analysis`` option)."""

    layers: str = option("all", "layers to analyse: 'all', or a list such as 0,8,16 or 4-9")
    tokens: int = option(20_000, "tokens to analyse")
    top_k: int = option(16, "top activations (with contexts) kept per neuron")
    pages_per_layer: int = option(6, "neuron pages/cards per layer (top by max activation and by purity)")  # fmt: skip
    pair_budget: int = option(16_000_000, "(token, neuron) pairs kept over all layers (~40 bytes each)")  # fmt: skip
    batch_mb: float = option(256.0, "activation memory per forward pass, MiB (caps windows per pass)")  # fmt: skip
    context_length: int = option(128, "tokens per context window")
    model_batch_size: int = option(8, "context windows per forward pass (at most)")
    token_table: bool = option(True, "skip the (token, neuron) table: faster, but no explanation scores and no top neurons per token",
                               flag="--no-token-table")  # fmt: skip
    massive_factor: float = 10.0
    context_left: int = 8
    context_right: int = 3
    tokens_listed: int = 12  # frequent tokens in top_neurons_per_token
    neurons_per_token: int = 8


def parse_layers(spec: str | list[int], n_layers: int) -> list[int]:
    """'all', '0,8,16', '4-9' (inclusive) or a list of ints -> sorted distinct layer indices."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_layers))
        out: list[int] = []
        for part in s.split(","):
            part = part.strip()
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                    out += list(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ValueError(
                    f"--layers {spec!r}: give 'all' or layer numbers such as 0,8,16 or 4-9"
                ) from None
    else:
        out = [int(x) for x in spec]
    if not out:
        raise ValueError("no layers given; use 'all' or numbers such as 0,8,16")
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} does not exist: the model has layers 0..{n_layers - 1}")
    return sorted(set(out))


def neuron_hook(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def windows_per_batch(model, layers: list[int], cfg: MLPConfig) -> int:
    """Windows per forward pass so that the cached activations stay under ``batch_mb``."""
    width = len(layers) * (model.cfg.d_mlp + 2 * model.cfg.d_model)
    per_window = cfg.context_length * width * 4
    return int(max(1, min(cfg.model_batch_size, cfg.batch_mb * 2**20 // per_window)))


def compute_mlp_stats(model, texts=None, cfg: MLPConfig | None = None, progress: bool = False) -> dict:  # fmt: skip
    """The pass. Returns {"stats": {layer: UnitStats}, "norms": {layer: {...}}, "info": {...}}.

    texts: documents (None: the default corpus, held-out split).
    """
    import mlx.core as mx

    from ..activations import iter_activations
    from ..activations.rows import RowFilter, add_counts, zero_counts

    cfg = cfg or MLPConfig()
    layers = parse_layers(cfg.layers, model.cfg.n_layers)
    for L in layers:
        model.check_hook_name(neuron_hook(L))
    if cfg.tokens < 1:
        raise ValueError(f"--tokens must be positive, got {cfg.tokens}")
    if cfg.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {cfg.top_k}")
    data_name = "given texts"
    if texts is None:
        from ..data import default_corpus

        texts, data_name = default_corpus("heldout"), "default corpus (held-out split)"
    tok = model._require_tokenizer()
    V = max(len(tok), model.cfg.d_vocab)
    per_table = max(10_000, cfg.pair_budget // (2 * len(layers)))
    scfg = StatsConfig(top_k=cfg.top_k, context_left=cfg.context_left,
                       context_right=cfg.context_right, max_pairs=per_table, compact_every=per_table,
                       token_table=cfg.token_table)  # fmt: skip
    stats = {L: UnitStats(model.cfg.d_mlp, V, scfg) for L in layers}
    sums = {L: np.zeros(4) for L in layers}  # sum |mlp_out|, sum |resid_mid|, sum ratio, rows
    hooks = [h for L in layers for h in (neuron_hook(L), f"blocks.{L}.hook_mlp_out", f"blocks.{L}.hook_resid_mid")]  # fmt: skip
    rows = RowFilter.for_tokenizer(tok, cfg.massive_factor)
    left_out = zero_counts()
    bs = windows_per_batch(model, layers, cfg)
    t0 = time.perf_counter()
    n_batches = n_seen = 0
    for batch in iter_activations(model, hooks, texts, batch_size=bs, context_length=cfg.context_length,
                                  max_tokens=cfg.tokens, progress=progress):  # fmt: skip
        norms = {}
        for L in layers:
            out = mx.linalg.norm(batch.acts[f"blocks.{L}.hook_mlp_out"].astype(mx.float32), axis=-1)
            res = mx.linalg.norm(
                batch.acts[f"blocks.{L}.hook_resid_mid"].astype(mx.float32), axis=-1
            )
            norms[L] = (out, res)
        mx.eval(norms)
        norms = {L: (np.asarray(a), np.asarray(b)) for L, (a, b) in norms.items()}
        g = batch_grid(batch, rows, np.stack([b for _, b in norms.values()]))
        add_counts(left_out, g.left_out)
        counted = g.keep[g.grid]
        for L in layers:
            a, b = norms[L][0][counted], norms[L][1][counted]
            sums[L] += [a.sum(), b.sum(), (a / np.maximum(b, 1e-12)).sum(), len(a)]
            x = np.asarray(batch.acts[neuron_hook(L)].astype(mx.float32))
            if not np.all(np.isfinite(x)):
                raise ValueError(f"activations at {neuron_hook(L)} contain NaN or inf")
            stats[L].update(g.to_grid(x), *g.update_args())
        n_batches += 1
        n_seen += batch.n_tokens
    seconds = time.perf_counter() - t0
    n_tokens = stats[layers[0]].n_tokens
    if n_tokens == 0:
        raise ValueError(
            "no tokens to analyse: the data is empty (or holds only special tokens)"
            if n_batches == 0
            else f"every token was left out ({rows.describe()})"
        )
    norm_table = {
        L: {
            "mlp_out_norm": float(s[0] / s[3]),
            "resid_mid_norm": float(s[1] / s[3]),
            "mlp_out_relative": float(s[2] / s[3]),
        }  # fmt: skip
        for L, s in sums.items()
    }
    info = {
        "model": str(model.source),
        "hook": "blocks.{L}.mlp.hook_post",
        "layers": layers,
        "d_mlp": model.cfg.d_mlp,
        "data": data_name,
        "tokens_requested": cfg.tokens,
        "tokens_through_model": n_seen,
        "tokens_counted": n_tokens,
        "left_out": left_out,
        "windows_per_batch": bs,
        "pairs_per_table": per_table,
        "seconds_pass": seconds,
        "tokens_per_s": n_seen / max(seconds, 1e-9),
        "stats_mb_per_layer": _nbytes(stats[layers[0]]) / 2**20,
        "config": asdict(cfg),
        # what write_store and the dashboards expect of a store
        "sae_architecture": "neurons",
        "d_sae": model.cfg.d_mlp,
        "massive_factor": cfg.massive_factor,
        "context_length": cfg.context_length,
        "batch_size": bs,
        "top_k": cfg.top_k,
        "context_left": cfg.context_left,
        "context_right": cfg.context_right,
    }
    return {"stats": stats, "norms": norm_table, "info": info}


def _nbytes(st: UnitStats) -> int:
    n = sum(v.nbytes for v in vars(st).values() if isinstance(v, np.ndarray))
    for t in st.tables:
        n += t.keys.nbytes + t.sums.nbytes + t.counts.nbytes + sum(a.nbytes + b.nbytes for a, b in t._pending)  # fmt: skip
    return n


# ------------------------------------------------------------------ choosing and querying
def chosen_neurons(store, n: int) -> list[int]:
    """Up to n neurons to render: half the largest max activations, then the purest."""
    a = store.arrays
    live = np.nonzero(a["density"] > 0)[0]
    by_max = live[np.argsort(-a["max_act"][live], kind="stable")]
    pur = np.where(np.isfinite(a["purity"][live]), a["purity"][live], -1.0)
    expl = np.where(np.isfinite(a["explanation"][live]), a["explanation"][live], -1.0)
    by_pur = live[np.lexsort((-expl, -pur))]
    out: list[int] = []
    for j in [*by_max[: (n + 1) // 2], *by_pur]:
        if len(out) >= n:
            break
        if int(j) not in out:
            out.append(int(j))
    return out


def layer_stores(out) -> dict[int, object]:
    """{layer: FeatureStore} of an ``mlp-analysis`` output folder."""
    from .store import META_FILE, FeatureStore

    root = Path(out) / "layers"
    found = {}
    for d in sorted(root.glob("blocks.*.mlp.hook_post")) if root.exists() else []:
        if (d / META_FILE).exists():
            found[int(d.name.split(".")[1])] = FeatureStore(d)
    if not found:
        raise ValueError(f"{out} holds no MLP analysis (no layers/blocks.L.mlp.hook_post stores); run mlx-interp mlp-analysis")  # fmt: skip
    return dict(sorted(found.items()))


def neurons_for_token(out_or_stores, token, top: int = 8, min_count: int = 5) -> list[dict]:
    """The neurons, over every analysed layer, most above their own mean on ``token``.

    token: an id or a string that is one token of the vocabulary. Score: (mean a+ on the
    token - mean a+ over all counted tokens) / standard deviation of a+ over all counted
    tokens, from the stored token tables (pairs pruned by the budget count as 0).
    Returns [{layer, neuron, z, mean_on_token, mean_all, fire_rate_on_token, occurrences}].
    """
    stores = (
        layer_stores(out_or_stores) if isinstance(out_or_stores, (str, Path)) else out_or_stores
    )
    rows = []
    for L, s in stores.items():
        t = token_id(s, token)
        a = s.arrays
        n_t = int(a["token_count"][t])
        if n_t < min_count:
            return []
        U, n = s.n_units, max(int(s.meta["n_tokens"]), 1)
        lo, hi = np.searchsorted(a["pair_keys"], [t * U, (t + 1) * U])
        units = a["pair_keys"][lo:hi] - t * U
        mean_t = a["pair_sums"][lo:hi] / n_t
        mean_all = a["sum_act"][units] / n
        std = np.sqrt(np.maximum(a["sumsq_act"][units] / n - mean_all**2, 0))
        z = (mean_t - mean_all) / np.maximum(std, 1e-12)
        for i in np.argsort(-z, kind="stable")[:top]:
            rows.append({"layer": L, "neuron": int(units[i]), "z": float(z[i]),
                         "mean_on_token": float(mean_t[i]), "mean_all": float(mean_all[i]),
                         "fire_rate_on_token": float(a["pair_counts"][lo + i] / n_t), "occurrences": n_t})  # fmt: skip
    rows.sort(key=lambda r: -r["z"])
    return rows[:top]


# ------------------------------------------------------------------ writing
def write_mlp_analysis(out, result: dict, vocab: list[str], cfg: MLPConfig, tokens=()) -> dict:
    """Stores, dashboards, tables, plots and summary.json in ``out``; returns the summary."""
    from ..io import ensure_writable_dir, write_json, write_text
    from ..system import peak_rss_mb
    from .dashboards import write_dashboards, write_features_csv
    from .store import FeatureStore, write_store

    out = ensure_writable_dir(out)
    t0 = time.perf_counter()
    info = result["info"]
    stores, rendered = {}, {}
    for L in list(result["stats"]):
        folder = out / "layers" / neuron_hook(L)
        write_store(folder, result["stats"].pop(L), {**info, "hook": neuron_hook(L)}, vocab, kind="neurons")  # fmt: skip
        stores[L] = FeatureStore(folder)
        write_features_csv(folder)
        chosen = chosen_neurons(stores[L], cfg.pages_per_layer)
        rendered[L] = write_dashboards(folder, max_features=len(chosen), features=chosen)
    table = []
    for L, s in stores.items():
        sm = s.summary
        med = {k: (sm[k].get("median") if sm[k].get("n") else None) for k in ("density", "entropy_bits", "purity", "explanation")}  # fmt: skip
        mx_ = s.arrays["max_act"]
        table.append({"layer": L, **result["norms"][L], "dead_fraction": sm["dead_fraction"],
                      "dense_fraction": sm["dense_fraction"], "median_density": med["density"],
                      "median_entropy_bits": med["entropy_bits"], "median_purity": med["purity"],
                      "median_explanation": med["explanation"], "median_max_act": float(np.median(mx_)),
                      "max_act": float(mx_.max()), "top_neuron_by_max": int(np.argmax(mx_))})  # fmt: skip
    cols = list(table[0])
    write_text(out / "layers.csv", ",".join(cols) + "\n" + "".join(",".join(_csv(r[c]) for c in cols) + "\n" for r in table))  # fmt: skip
    by_layer_plot(table, out / "mlp_by_layer.png", info)
    rank_heatmap(stores, out / "neuron_rank_heatmap.png", info)
    per_token = top_neurons_per_token(stores, cfg, tokens)
    write_json(out / "top_neurons_per_token.json", per_token)
    write_text(out / "top_neurons_per_token.md", _per_token_md(per_token))
    write_text(out / "index.html", _index_html(info, table, rendered, stores))
    summary = {**info, "seconds_write": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
               "by_layer": table, "rendered": {str(k): v for k, v in rendered.items()}}  # fmt: skip
    write_json(out / "summary.json", summary)
    return summary


def _csv(v) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def top_neurons_per_token(stores: dict, cfg: MLPConfig, tokens=()) -> list[dict]:
    """The ``tokens_listed`` most frequent counted tokens (and ``tokens``), each with its
    top neurons over all layers (``neurons_for_token``)."""
    if not cfg.token_table:
        return []
    first = next(iter(stores.values()))
    counts = first.arrays["token_count"]
    ids = [token_id(first, t) for t in tokens]
    for t in np.argsort(-counts, kind="stable")[: cfg.tokens_listed]:
        if counts[t] > 0 and int(t) not in ids:
            ids.append(int(t))
    return [{"token": first.token_str(t), "token_id": t, "occurrences": int(counts[t]),
             "neurons": neurons_for_token(stores, t, cfg.neurons_per_token)} for t in ids]  # fmt: skip


def _per_token_md(per_token: list[dict]) -> str:
    if not per_token:
        return "Top neurons per token: not gathered (run without --no-token-table).\n"
    lines = ["Top neurons per token, over all analysed layers: z = (mean a+ on the token - mean a+) / std a+", "",  # fmt: skip
             "| token | occurrences | neurons (layer/neuron: z, mean on token) |", "| --- | --- | --- |"]  # fmt: skip
    for r in per_token:
        cells = ", ".join(f"L{n['layer']}/{n['neuron']}: {n['z']:.1f}, {n['mean_on_token']:.3g}" for n in r["neurons"][:5])  # fmt: skip
        lines.append(f"| {json.dumps(r['token'])[1:-1].replace('|', '&#124;')} | {r['occurrences']} | {cells or 'too rare'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def by_layer_plot(table: list[dict], path, info: dict) -> Path:
    """Metrics vs layer (PNG, and the numbers as CSV beside it)."""
    from ..analysis.plots import plt, save_figure, write_csv

    L = [r["layer"] for r in table]

    def col(k):
        return [np.nan if r[k] is None else r[k] for r in table]

    # panel: title, (column, style, label) lines, y limits, log scale
    unit = (-0.02, 1.02)
    panels = [
        ("norms (counted tokens)", [("mlp_out_norm", "o-", "mean |MLP output|"),
                                    ("resid_mid_norm", "s--", "mean |residual in|")], None, True),
        ("neuron firing (a+ > 0)", [("dead_fraction", "o-", "dead (never fires)"),
                                    ("dense_fraction", "s-", "dense (density > 0.1)"),
                                    ("median_density", "^-", "median density (live)")], unit, False),
        ("monosemanticity", [("median_purity", "o-", "median top-token purity"),
                             ("median_explanation", "s-", "median explanation score")], unit, False),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (title, lines, ylim, log) in zip(axes[:3], panels, strict=True):
        for key, style, label in lines:
            ax.plot(L, col(key), style, label=label)
        if log:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[3]
    ax.plot(L, col("median_entropy_bits"), "o-", color="tab:purple")
    ax.axhline(np.log2(info["top_k"]), color="grey", ls=":", lw=1)
    ax.set_title(f"median top-token entropy (bits; max {np.log2(info['top_k']):.0f})")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"MLP neurons by layer: {info['model']}, {info['tokens_counted']} tokens of {info['data']}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    keys = list(table[0])
    write_csv(Path(path).with_suffix(".csv"), keys, [[r[k] for k in keys] for r in table])
    return save_figure(fig, path)


def rank_heatmap(stores: dict, path, info: dict) -> Path:
    """Layer x neuron rank: log10 density and log10 max activation, each sorted per layer."""
    from ..analysis.plots import plt, save_figure

    layers = list(stores)
    dens = np.stack([np.sort(s.arrays["density"])[::-1] for s in stores.values()])
    mx_ = np.stack([np.sort(s.arrays["max_act"])[::-1] for s in stores.values()])
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.9 + 0.18 * len(layers) + 2))
    for ax, v, title in ((axes[0], dens, "log10 density"), (axes[1], mx_, "log10 max activation")):
        img = np.log10(np.maximum(v, 1e-7))
        im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0, v.shape[1], len(layers) - 0.5, -0.5))  # fmt: skip
        ax.set_yticks(range(len(layers)), [str(L) for L in layers], fontsize=7)
        ax.set_xlabel("neuron rank (sorted per layer, highest first)")
        ax.set_ylabel("layer")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"MLP neurons, layer x rank: {info['model']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _index_html(info: dict, table: list[dict], rendered: dict, stores: dict) -> str:
    from .dashboards import CSS

    def f(v, spec=".3g"):
        return "n/a" if v is None else format(v, spec)

    rows = []
    for r in table:
        L = r["layer"]
        pages = " ".join(f'<a href="layers/{neuron_hook(L)}/pages/feature_{j:05d}.html">{j}</a>' for j in rendered[L])  # fmt: skip
        rows.append(
            f'<tr><td><a href="layers/{neuron_hook(L)}/index.html">{L}</a></td>'
            f"<td>{f(r['mlp_out_norm'])}</td><td>{f(r['mlp_out_relative'])}</td><td>{f(r['dead_fraction'])}</td>"
            f"<td>{f(r['dense_fraction'])}</td><td>{f(r['median_density'])}</td><td>{f(r['median_purity'])}</td>"
            f"<td>{f(r['median_entropy_bits'])}</td><td>{f(r['median_explanation'])}</td><td>{f(r['max_act'])}</td>"
            f'<td class="l">{pages}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ["layer", "|MLP out|", "|MLP out| / |resid|", "dead", "dense", "median density",
                                              "median purity", "median entropy", "median explanation", "max act", "neuron pages"])  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MLP neurons of {html.escape(info["model"])}</title><style>{CSS}</style></head>
<body><h1>MLP neurons: {html.escape(info["model"])}</h1>
<p class="meta">{info["tokens_counted"]} tokens of {html.escape(info["data"])} &middot; {len(table)} layers x {info["d_mlp"]} neurons
&middot; <a href="top_neurons_per_token.md">top neurons per token</a> &middot; <a href="layers.csv">layers.csv</a></p>
<p><img src="mlp_by_layer.png" alt="metrics by layer" width="1100"></p>
<p><img src="neuron_rank_heatmap.png" alt="layer x neuron rank" width="1100"></p>
<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
</body></html>
"""


def run_mlp_analysis(model, out, texts=None, *, cfg: MLPConfig | None = None, data_name: str | None = None,
                     tokens=(), progress: bool = False) -> dict:  # fmt: skip
    """The whole ``mlp-analysis`` command as a function; returns summary.json's content.

    tokens: extra tokens (ids or one-token strings) listed in top_neurons_per_token.
    """
    from ..io import ensure_writable_dir
    from .collect import vocab_strings

    cfg = cfg or MLPConfig()
    out = ensure_writable_dir(out)
    tok = model._require_tokenizer()
    for t in tokens:  # fail on a bad token before the pass
        if not isinstance(t, int):
            from ..activations import resolve_token

            resolve_token(tok, t)
    result = compute_mlp_stats(model, texts, cfg, progress=progress)
    if data_name:
        result["info"]["data"] = data_name
    vocab = vocab_strings(tok, max(len(tok), model.cfg.d_vocab))
    return write_mlp_analysis(out, result, vocab, cfg, tokens)
