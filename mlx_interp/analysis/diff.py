"""Model diffing: two models of one architecture (a base and its fine-tune) on the same tokens.

Both models read the same windows of the same documents (the tokenizers must agree). Rows
counted: those the base keeps with ``iter_activations(exclude_massive=True)`` (not position
0, not a special token, not massive: norm over 10x the batch median at any compared hook), matched in the fine-tune by
window and position. Per layer, averaged over the counted tokens:

- residual stream (``blocks.0.hook_resid_pre`` = the embeddings, then every
  ``hook_resid_post``): relative difference |r_B - r_A| / |r_A| and cosine(r_A, r_B);
- ``hook_attn_out`` and ``hook_mlp_out``: the same relative difference (the block's
  attention and MLP contributions);
- neurons (``mlp.hook_post``): mean |a_B - a_A| per neuron, and its size relative to the
  layer's RMS activation in A (``neuron_change``: the mean of that over the layer);
- logit lens: KL(P_A || P_B) in nats, P_X = softmax(unembed_X(r_X)) with each model's own
  final norm and unembedding, on the first ``lens_tokens`` counted tokens (a product with
  the whole vocabulary per layer and token); the output KL on every counted token.

``first_difference`` names the first hook, in forward order, whose relative difference
exceeds ``tolerance``: for a copy with one block's MLP weights changed it is that block's
``hook_mlp_out`` (everything before it is bitwise equal).

One model resident at a time (``resident='one'``): the base's activations are written as
shards (``activations.extract``, resumable) under ``out/base_activations``, the base is
dropped but for its unembedding, then the fine-tune runs and reads the shards back in step.
``'both'`` keeps both models and needs no disk; ``'auto'`` picks 'both' when the two
checkpoints take under a quarter of the machine's memory.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..options import option
from .measures import layer_labels, resid_names


@dataclass
class DiffConfig:
    """Settings of ``diff`` (each is a ``mlx-interp diff`` option)."""

    tokens: int = option(4096, "tokens compared")
    lens_tokens: int = option(512, "tokens whose logit lens is compared at every layer")
    resident: str = option("auto", "keep both models in memory, or one at a time (the base's activations go to disk)",
                           choices=("auto", "both", "one"))  # fmt: skip
    context_length: int = option(128, "tokens per context window")
    model_batch_size: int = option(8, "context windows per forward pass")
    top_neurons: int = option(10, "most changed neurons listed per layer")
    keep_activations: bool = option(False, "keep the base's activation shards (resident one)")
    tolerance: float = 1e-5  # relative difference that counts as a change
    top_tokens: int = 20


def diff_hooks(n_layers: int) -> dict[str, list[str]]:
    blocks = range(n_layers)
    return {
        "resid": resid_names(n_layers),
        "attn": [f"blocks.{i}.hook_attn_out" for i in blocks],
        "mlp": [f"blocks.{i}.hook_mlp_out" for i in blocks],
        "neurons": [f"blocks.{i}.mlp.hook_post" for i in blocks],
    }


def check_pair(a, b) -> None:
    """One-line errors unless the two models have one shape and one tokenizer."""
    ca, cb = a.cfg, b.cfg
    for k in (
        "architecture",
        "n_layers",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "d_head",
        "d_mlp",
        "d_vocab",
    ):
        if getattr(ca, k) != getattr(cb, k):
            raise ValueError(
                f"the models differ in {k} ({getattr(ca, k)} vs {getattr(cb, k)}): diff compares "
                "a model with a fine-tune of it (same architecture and sizes)"
            )
    ta, tb = a._require_tokenizer(), b._require_tokenizer()
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va != vb:
        n = sum(1 for k, v in va.items() if vb.get(k) != v) + len(set(vb) - set(va))
        raise ValueError(
            f"the tokenizers differ ({n} of {max(len(va), len(vb))} tokens map to other ids); "
            "diff needs both models to read the same tokens"
        )


class _BaseRows:
    """The base's kept rows in window order, taken batch by batch of the fine-tune."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)  # (acts {hook: array (n, d)}, window_ids, positions)
        self.pending: list = []

    def take(self, window_end: int):
        """Rows with window id < window_end: ({hook: mx.array}, window_ids, positions)."""
        got = []
        while True:
            if not self.pending:
                nxt = next(self.chunks, None)
                if nxt is None:
                    break
                self.pending = [nxt]
            acts, w, p = self.pending[0]
            n = int(np.searchsorted(w, window_end))
            if n == 0:
                break
            got.append(({h: v[:n] for h, v in acts.items()}, w[:n], p[:n]))
            if n < len(w):
                self.pending = [({h: v[n:] for h, v in acts.items()}, w[n:], p[n:])]
                break
            self.pending = []
        if not got:
            return None
        hooks = got[0][0]
        acts = {h: mx.concatenate([mx.array(g[0][h]) if isinstance(g[0][h], np.ndarray) else g[0][h] for g in got]) for h in hooks}  # fmt: skip
        return acts, np.concatenate([g[1] for g in got]), np.concatenate([g[2] for g in got])


def _rel_cos(a: mx.array, b: mx.array):
    """Per row: |b - a| / |a| and cosine(a, b), float32."""
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    na = mx.linalg.norm(a, axis=-1)
    nb = mx.linalg.norm(b, axis=-1)
    d = mx.linalg.norm(b - a, axis=-1)
    rel = d / mx.maximum(na, 1e-30)
    cos = (a * b).sum(-1) / mx.maximum(na * nb, 1e-30)
    return rel, cos


def _kl(logits_a: mx.array, logits_b: mx.array) -> mx.array:
    """KL(P_A || P_B) per row, nats, accurate in float32 also for nearly equal models.

    With d = z_A - z_B centred under P_A (d' = d - E_A[d]), KL = log E_A[exp(-d')]; written
    log1p(E_A[expm1(-d')]) it keeps its precision when the KL is 1e-6 of the logits (the
    direct sum of P_A (log P_A - log P_B) does not); rows with |d'| over 20 use the direct sum.
    """
    za = logits_a.astype(mx.float32)
    zb = logits_b.astype(mx.float32)
    la = za - mx.logsumexp(za, axis=-1, keepdims=True)
    lb = zb - mx.logsumexp(zb, axis=-1, keepdims=True)
    pa = mx.exp(la)
    direct = (pa * (la - lb)).sum(-1)
    d = za - zb
    dc = d - (pa * d).sum(-1, keepdims=True)
    dc = dc - (pa * dc).sum(-1, keepdims=True)  # twice: the first mean's rounding matters
    small = mx.abs(dc).max(-1) < 20
    centred = mx.log1p((pa * mx.expm1(-mx.minimum(dc, 20) * small[:, None])).sum(-1))
    return mx.maximum(mx.where(small, centred, direct), 0.0)


def _lens_kl(model_a, model_b, ra: mx.array, rb: mx.array, chunk: int) -> mx.array:
    """KL per row through each model's own unembedding, in chunks of rows."""
    out = []
    for s in range(0, ra.shape[0], chunk):
        k = _kl(model_a.unembed(ra[s : s + chunk]), model_b.unembed(rb[s : s + chunk]))
        mx.eval(k)
        out.append(k)
    return mx.concatenate(out) if out else mx.zeros((0,))


class _Accumulator:
    def __init__(self, n_layers: int, d_mlp: int, cfg: DiffConfig):
        L = n_layers
        self.cfg = cfg
        self.n = 0
        self.n_lens = 0
        self.resid = np.zeros((2, L + 1))  # sum rel, sum cos
        self.attn = np.zeros((2, L))
        self.mlp = np.zeros((2, L))
        self.lens = np.zeros(L + 1)
        self.out_kl = 0.0
        self.abs_change = np.zeros((L, d_mlp))
        self.signed_change = np.zeros((L, d_mlp))
        self.sq_a = np.zeros((L, d_mlp))
        self.top_tokens: list[dict] = []

    def add(self, hooks, A, B, model_a, model_b, windows, first_window, w_ids, pos):
        n = len(w_ids)
        if n == 0:
            return
        H = hooks
        res = [_rel_cos(A[h], B[h]) for h in H["resid"]]
        att = [_rel_cos(A[h], B[h])[0] for h in H["attn"]]
        mlp = [_rel_cos(A[h], B[h])[0] for h in H["mlp"]]
        neur = []
        for h in H["neurons"]:
            a, b = A[h].astype(mx.float32), B[h].astype(mx.float32)
            neur.append((mx.abs(b - a).sum(0), (b - a).sum(0), (a * a).sum(0)))
        last = H["resid"][-1]
        V = model_a.cfg.d_vocab
        chunk = max(1, 16_000_000 // V)
        out_kl = _lens_kl(model_a, model_b, A[last], B[last], chunk)
        rel = mx.stack([r for r, _ in res])
        cos = mx.stack([c for _, c in res])
        mx.eval(rel, cos, att, mlp, neur, out_kl)
        rel, cos = np.asarray(rel, np.float64), np.asarray(cos, np.float64)
        self.resid += [rel.sum(1), cos.sum(1)]
        self.attn[0] += [float(np.asarray(x).sum()) for x in att]
        self.mlp[0] += [float(np.asarray(x).sum()) for x in mlp]
        for i, (ab, sg, sq) in enumerate(neur):
            self.abs_change[i] += np.asarray(ab)
            self.signed_change[i] += np.asarray(sg)
            self.sq_a[i] += np.asarray(sq)
        out_kl = np.asarray(out_kl, np.float64)
        self.out_kl += float(out_kl.sum())
        m = min(n, self.cfg.lens_tokens - self.n_lens)
        if m > 0:
            for i, h in enumerate(H["resid"]):
                self.lens[i] += float(
                    np.asarray(_lens_kl(model_a, model_b, A[h][:m], B[h][:m], chunk)).sum()
                )
            self.n_lens += m
        self.n += n
        # the tokens that change most: mean relative residual difference over the blocks
        score = rel[1:].mean(0)
        for r in np.argsort(-score)[: self.cfg.top_tokens]:
            w, p = int(w_ids[r]), int(pos[r])
            ctx = windows[w - first_window, max(0, p - 10) : p + 1]
            self.top_tokens.append({"window": w, "position": p, "token_id": int(windows[w - first_window, p]),
                                    "context_ids": ctx.tolist(), "score": float(score[r]),
                                    "peak_layer": int(np.argmax(rel[1:, r])), "output_kl": float(out_kl[r])})  # fmt: skip
        self.top_tokens.sort(key=lambda t: -t["score"])
        del self.top_tokens[self.cfg.top_tokens :]


def _load(src, dtype: str, quantize: int | None, group_size: int):
    from ..model import load_model

    if not isinstance(src, (str, Path)):
        return src, False
    return load_model(src, dtype=dtype, quantize=quantize, group_size=group_size), True


def _weights_bytes(src) -> int:
    from ..sources import resolve_model_dir, weight_files

    try:
        return sum(f.stat().st_size for f in weight_files(resolve_model_dir(src)))
    except Exception:  # noqa: BLE001 - the loader reports a bad source itself
        return 0


def choose_resident(base, tuned, resident: str) -> str:
    if resident != "auto":
        return resident
    if not isinstance(base, (str, Path)) and not isinstance(tuned, (str, Path)):
        return "both"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    sizes = sum(_weights_bytes(s) for s in (base, tuned) if isinstance(s, (str, Path)))
    return "both" if sizes < ram / 4 else "one"


def diff_models(base, tuned, texts=None, *, out=None, cfg: DiffConfig | None = None,
                dtype: str = "float32", quantize: int | None = None, group_size: int = 64,
                data_name: str | None = None, progress: bool = False) -> dict:  # fmt: skip
    """Compare ``tuned`` with ``base`` (sources or loaded HookedModels) on the same tokens.

    texts: documents (None: the default corpus, held-out split). out: a folder for the
    base's activation shards when one model is resident at a time (required then).
    Returns the result dict (see ``write_diff``): per-layer measures, neurons, tokens.
    """
    from ..activations import extract, iter_activations, iter_shards

    cfg = cfg or DiffConfig()
    if cfg.tokens < 1 or cfg.lens_tokens < 0:
        raise ValueError(f"--tokens must be positive and --lens-tokens not negative (got {cfg.tokens}, {cfg.lens_tokens})")  # fmt: skip
    resident = choose_resident(base, tuned, cfg.resident)
    if texts is None:
        from ..data import default_corpus

        texts, data_name = default_corpus("heldout"), data_name or "default corpus (held-out split)"
    texts_a, texts_b = itertools.tee(texts)
    t0 = time.perf_counter()
    model_a, owned_a = _load(base, dtype, quantize, group_size)
    if resident == "both":
        model_b, _ = _load(tuned, dtype, quantize, group_size)
        check_pair(model_a, model_b)
    H = diff_hooks(model_a.cfg.n_layers)
    hooks = [h for v in H.values() for h in v]
    read = {
        "batch_size": cfg.model_batch_size,
        "context_length": cfg.context_length,
        "max_tokens": cfg.tokens,
    }
    a_kw = {**read, "exclude_massive": True}
    excluded: dict[str, int] = {}
    shards = None
    if resident == "one":
        if out is None:
            raise ValueError("resident='one' writes the base's activations: give an output folder")
        shards = Path(out) / "base_activations"
        meta = extract(
            model_a, hooks, shards, texts_a, data_id=data_name, progress=progress, **a_kw
        )
        excluded = dict(meta["n_excluded"])
        chunks = ((a, r["window_ids"], r["positions"]) for _, a, r in iter_shards(shards))
        if owned_a:  # keep only what the logit lens needs: the final norm and unembedding
            model_a.model.blocks = []
            mx.clear_cache()
        model_b, _ = _load(tuned, dtype, quantize, group_size)
        check_pair(model_a, model_b)
    else:

        def batches():
            for b in iter_activations(model_a, hooks, texts_a, **a_kw):
                for k, v in b.n_excluded.items():
                    excluded[k] = excluded.get(k, 0) + v
                yield b.acts, b.window_ids, b.positions

        chunks = batches()
    rows_a = _BaseRows(chunks)
    acc = _Accumulator(model_a.cfg.n_layers, model_a.cfg.d_mlp, cfg)
    n_tokens = 0
    for bb in iter_activations(
        model_b, hooks, texts_b, **read, progress=progress and resident == "both"
    ):
        n_win, C = bb.windows.shape
        got = rows_a.take(bb.first_window + n_win)
        n_tokens += bb.n_tokens
        if got is None:
            continue
        A, w, p = got
        grid_b = np.full(n_win * C, -1, np.int64)
        grid_b[(bb.window_ids - bb.first_window) * C + bb.positions] = np.arange(bb.n_rows)
        idx = grid_b[(w - bb.first_window) * C + p]
        if (idx < 0).any():
            raise RuntimeError("the base's rows do not match the fine-tune's windows")
        idx_mx = mx.array(idx)
        B = {h: bb.acts[h][idx_mx] for h in hooks}
        acc.add(H, A, B, model_a, model_b, bb.windows, bb.first_window, w, p)
    if acc.n == 0:
        raise ValueError("no tokens to compare: the data is empty, or every token was left out")
    if shards is not None and not cfg.keep_activations:
        shutil.rmtree(shards, ignore_errors=True)
    return _result(acc, H, model_a, model_b, base, tuned, cfg, resident, excluded, n_tokens,
                   data_name or "given texts", time.perf_counter() - t0)  # fmt: skip


def _result(acc, H, model_a, model_b, base, tuned, cfg, resident, excluded, n_tokens, data_name, seconds) -> dict:  # fmt: skip
    from ..system import peak_rss_mb

    n, L = acc.n, model_a.cfg.n_layers
    labels = layer_labels(L)
    mean_abs = acc.abs_change / n
    rms_a = np.sqrt(acc.sq_a / n)
    layer_rms = np.sqrt((rms_a**2).mean(1))  # (L,)
    rel_change = mean_abs / np.maximum(layer_rms[:, None], 1e-30)
    by_layer = []
    for i in range(L + 1):
        row = {"layer": labels[i], "hook": H["resid"][i], "resid_rel_diff": acc.resid[0, i] / n,
               "resid_cosine": acc.resid[1, i] / n,
               "lens_kl": acc.lens[i] / acc.n_lens if acc.n_lens else None}  # fmt: skip
        if i > 0:
            j = i - 1
            row |= {"attn_out_rel_diff": acc.attn[0, j] / n, "mlp_out_rel_diff": acc.mlp[0, j] / n,
                    "neuron_change": float(rel_change[j].mean()), "neuron_rms_base": float(layer_rms[j])}  # fmt: skip
        by_layer.append(row)
    order = []  # forward order: embeddings, then per block attention, MLP
    order.append((H["resid"][0], by_layer[0]["resid_rel_diff"]))
    for j in range(L):
        order += [(H["attn"][j], by_layer[j + 1]["attn_out_rel_diff"]), (H["mlp"][j], by_layer[j + 1]["mlp_out_rel_diff"])]  # fmt: skip
    first = next(((h, v) for h, v in order if v > cfg.tolerance), None)
    top_per_layer = []
    for j in range(L):
        o = np.argsort(-mean_abs[j], kind="stable")[: cfg.top_neurons]
        top_per_layer.append([{"layer": j, "neuron": int(u), "mean_abs_change": float(mean_abs[j, u]),
                               "mean_change": float(acc.signed_change[j, u] / n), "rms_base": float(rms_a[j, u]),
                               "relative": float(rel_change[j, u])} for u in o])  # fmt: skip
    flat = np.argsort(-rel_change, axis=None, kind="stable")[: 2 * cfg.top_neurons]
    top_overall = []
    for k in flat:
        j, u = divmod(int(k), rel_change.shape[1])
        top_overall.append({"layer": j, "neuron": u, "mean_abs_change": float(mean_abs[j, u]),
                            "mean_change": float(acc.signed_change[j, u] / n), "rms_base": float(rms_a[j, u]),
                            "relative": float(rel_change[j, u])})  # fmt: skip
    tok = model_a._require_tokenizer()
    tokens = [t | {"token": tok.decode([t["token_id"]]), "context": tok.decode(t["context_ids"])} for t in acc.top_tokens]  # fmt: skip
    block_mlp = [r["mlp_out_rel_diff"] for r in by_layer[1:]]
    return {
        "base": str(base if isinstance(base, (str, Path)) else base.source),
        "tuned": str(tuned if isinstance(tuned, (str, Path)) else tuned.source),
        "data": data_name,
        "tokens_requested": cfg.tokens,
        "tokens_through_model": n_tokens,
        "tokens_counted": n,
        "lens_tokens": acc.n_lens,
        "left_out": excluded,
        "resident": resident,
        "seconds": seconds,
        "tokens_per_s": n_tokens / max(seconds, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
        "config": asdict(cfg),
        "output_kl": acc.out_kl / n,
        "first_difference": None if first is None else {"hook": first[0], "rel_diff": first[1]},
        "most_changed_mlp_layer": int(np.argmax(block_mlp)),
        "by_layer": by_layer,
        "top_neurons": top_overall,
        "top_neurons_per_layer": top_per_layer,
        "top_tokens": tokens,
        "_rel_change": rel_change,
    }


# ------------------------------------------------------------------ writing
def write_diff(out, result: dict) -> dict:
    """summary.json, diff.md, diff_by_layer.png/.csv, neuron_change_heatmap.png in ``out``."""
    from ..io import ensure_writable_dir, write_json, write_text

    out = ensure_writable_dir(out)
    rel_change = result.pop("_rel_change")
    diff_plot(result, out / "diff_by_layer.png")
    neuron_heatmap(rel_change, out / "neuron_change_heatmap.png", result)
    write_text(out / "diff.md", diff_markdown(result))
    write_json(out / "summary.json", result)
    return result


def _f(v, spec=".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def diff_markdown(r: dict) -> str:
    lines = [
        f"Diff of {r['tuned']} against {r['base']}: {r['tokens_counted']} tokens of {r['data']} "
        f"(logit lens on {r['lens_tokens']}); output KL {r['output_kl']:.4g} nats.",
        "",
        "First difference (forward order): "
        + (f"`{r['first_difference']['hook']}` (relative difference {r['first_difference']['rel_diff']:.3g})"
           if r["first_difference"] else "none: the models compute the same activations"),  # fmt: skip
        "",
        "| layer | residual rel. diff | residual cosine | attn out rel. diff | MLP out rel. diff | neuron change | logit-lens KL (nats) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for x in r["by_layer"]:
        lines.append(f"| {x['layer']} | {_f(x['resid_rel_diff'])} | {_f(x['resid_cosine'], '.6f')} | {_f(x.get('attn_out_rel_diff'))} | "
                     f"{_f(x.get('mlp_out_rel_diff'))} | {_f(x.get('neuron_change'))} | {_f(x['lens_kl'])} |")  # fmt: skip
    lines += ["", "Neurons that change most (mean |a_B - a_A| / the layer's RMS activation in the base):", "",
              "| layer | neuron | relative | mean abs change | mean change | RMS in base |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for x in r["top_neurons"][:10]:
        lines.append(f"| {x['layer']} | {x['neuron']} | {x['relative']:.3g} | {x['mean_abs_change']:.3g} | {x['mean_change']:+.3g} | {x['rms_base']:.3g} |")  # fmt: skip
    lines += ["", "Tokens that change most (mean relative residual difference over the blocks):", "",
              "| token | context | score | peak layer | output KL |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for t in r["top_tokens"][:10]:
        ctx = t["context"].replace("|", "\\|").replace("\n", "\\n")[-60:]
        lines.append(
            f"| {t['token']!r} | {ctx} | {t['score']:.3g} | {t['peak_layer']} | {t['output_kl']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def diff_plot(r: dict, path) -> Path:
    from .plots import plt, save_figure, write_csv

    rows = r["by_layer"]
    x = np.arange(len(rows))
    labels = [row["layer"] for row in rows]

    def col(k):
        return np.array([np.nan if row.get(k) is None else row[k] for row in rows], float)

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    floor = 1e-9
    ax = axes[0]
    ax.plot(x, np.maximum(col("resid_rel_diff"), floor), "o-", label="|r_B - r_A| / |r_A|")
    ax.plot(x, np.maximum(1 - col("resid_cosine"), floor), "s--", label="1 - cosine")
    ax.set_title("residual stream")
    ax = axes[1]
    ax.plot(x, np.maximum(col("attn_out_rel_diff"), floor), "o-", label="attention output")
    ax.plot(x, np.maximum(col("mlp_out_rel_diff"), floor), "s-", label="MLP output")
    ax.set_title("block outputs: relative difference")
    ax = axes[2]
    ax.plot(x, np.maximum(col("neuron_change"), floor), "o-", color="tab:green", label="mean |Δa| / RMS a (mean over neurons)")  # fmt: skip
    ax.set_title("MLP neurons")
    ax = axes[3]
    ax.plot(
        x, np.maximum(col("lens_kl"), floor), "o-", color="tab:red", label="KL(P_base ‖ P_tuned)"
    )
    ax.set_title(f"logit lens ({r['lens_tokens']} tokens), nats")
    step = -(-len(x) // 12)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xticks(x[::step], labels[::step], fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_xlabel("layer")
    fd = r["first_difference"]
    fig.suptitle(f"{r['tuned']} vs {r['base']}: {r['tokens_counted']} tokens; first difference: "
                 f"{fd['hook'] if fd else 'none'} (zero drawn at {floor:g})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    keys = ["layer", "resid_rel_diff", "resid_cosine", "attn_out_rel_diff", "mlp_out_rel_diff", "neuron_change", "lens_kl"]  # fmt: skip
    write_csv(Path(path).with_suffix(".csv"), keys, [[row.get(k) for k in keys] for row in rows])
    return save_figure(fig, path)


def neuron_heatmap(rel_change: np.ndarray, path, r: dict) -> Path:
    """Layer x neuron rank of the relative neuron change (sorted per layer)."""
    from .plots import plt, save_figure

    v = -np.sort(-rel_change, axis=1)
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.16 * len(v)))
    im = ax.imshow(
        np.log10(np.maximum(v, 1e-9)), aspect="auto", interpolation="nearest", cmap="magma"
    )
    ax.set_xlabel("neuron rank (sorted per layer, most changed first)")
    ax.set_ylabel("layer")
    ax.set_title("log10 mean |Δa| / the layer's RMS activation (base)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(f"{r['tuned']} vs {r['base']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def run_diff(base, tuned, out, texts=None, *, cfg: DiffConfig | None = None, dtype: str = "float32",
             quantize: int | None = None, group_size: int = 64, data_name: str | None = None,
             progress: bool = False) -> dict:  # fmt: skip
    """The whole ``diff`` command as a function; returns summary.json's content."""
    from ..io import ensure_writable_dir

    out = ensure_writable_dir(out)
    r = diff_models(base, tuned, texts, out=out, cfg=cfg, dtype=dtype, quantize=quantize,
                    group_size=group_size, data_name=data_name, progress=progress)  # fmt: skip
    return write_diff(out, r)
