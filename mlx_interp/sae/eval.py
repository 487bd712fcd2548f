"""Evaluating an SAE on a model: reconstruction metrics and the SAE spliced into the model.

See ``mlx_interp.sae.metrics`` for the definitions. The model runs in MLX; the SAE's math
runs in the chosen backend (``mlx`` or ``torch``) on the clean activations, and the
reconstruction is spliced in with a forward hook (everything upstream of the hook is
unchanged, so the clean activation is the one the SAE would see).

A transcoder reads its input hook and its prediction replaces its output hook (for
``blocks.L.hook_mlp_out``: the MLP replaced by the transcoder); the reconstruction metrics
are those of the prediction against the output hook's clean activation (explained variance,
FVU = 1 - explained variance), and the zero ablation zeroes the output hook.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..activations.rows import MASSIVE_FACTOR
from . import load_sae, numpy_runner
from .config import trained_on
from .metrics import MetricAccumulator, PrefixMetrics, log10_density_histogram, saebench_core

if TYPE_CHECKING:
    from ..model import HookedModel


def next_token_terms(clean, sae, zero, target):
    """Per position, from three logits (..., vocab) of one batch and the next tokens (...):
    the cross-entropies -log p(target) under clean, sae and zero, and KL(clean || sae),
    KL(clean || zero); five float32 arrays of target's shape, on MLX's device.

    KL(p || q) = sum p (z_p - z_q) - lse(z_p) + lse(z_q) (z logits, lse log-sum-exp): each
    row is exponentiated once. Float32: on SmolLM2's logits within 2e-6 nats of float64
    per position (cross-entropies and KLs alike), which is fine for KLs of 1e-3 and more
    (``analysis.diff`` has a slower KL for nearly equal models). A batch of 1024 tokens
    over the 49,152-token vocabulary: 0.5 s on our 2-core CPU, where float64 NumPy
    log-softmaxes took 2 s.
    """
    import mlx.core as mx

    from ..models.base import exp
    from ..system import mlx_device

    ones = mx.ones((clean.shape[-1], 1), mx.float32)

    def row_sum(x):
        # on the CPU through BLAS's blocked sums (MLX's CPU sum of 49,152 floats runs one by
        # one: 1e-4 off); a GPU's sum is a tree, and its float32 products may be TF32
        return x @ ones if mlx_device() == "cpu" else x.sum(axis=-1, keepdims=True)

    z = {"clean": clean, "sae": sae, "zero": zero}
    z = {k: v.astype(mx.float32) for k, v in z.items()}
    top = {k: v.max(axis=-1, keepdims=True) for k, v in z.items()}
    e = {k: exp(z[k] - top[k]) for k in z}
    total = {k: row_sum(e[k]) for k in z}
    lse = {k: top[k] + mx.log(total[k]) for k in z}
    idx = target[..., None]
    ce = [(lse[k] - mx.take_along_axis(z[k], idx, axis=-1))[..., 0] for k in z]
    # sum p (z_clean - z_k) with p = e / total: divide the row sums, not the rows
    kl = [(row_sum(e["clean"] * (z["clean"] - z[k])) / total["clean"] - lse["clean"] + lse[k])[..., 0]
          for k in ("sae", "zero")]  # fmt: skip
    return (*ce, *kl)


@functools.cache
def _next_token_terms():
    """``next_token_terms`` compiled (one trace per batch shape; the fast CPU exp needs it)."""
    import mlx.core as mx

    return mx.compile(next_token_terms)


def evaluate_sae(
    sae_folder,
    model: HookedModel,
    data: str | None = None,
    hook: str | None = None,
    tokens: int = 32768,
    context_length: int = 128,
    batch_size: int = 8,
    backend: str = "mlx",
    massive_factor: float = MASSIVE_FACTOR,
    split: str = "heldout",
    allow_train_data: bool = False,
    model_name: str | None = None,
    force: bool = False,
    hook_out: str | None = None,
) -> tuple[dict, np.ndarray]:
    """Metrics of the SAE in ``sae_folder`` at its hook; returns (report, feature density).

    data, split: the documents (``mlx_interp.data.DataSource``; None: the default corpus),
    held-out split by default. Data that shares documents with what the SAE was trained
    on (same fingerprint, overlapping split; ``trained_on``) raises a one-line ValueError
    unless ``allow_train_data``. An SAE trained on another model (``model_name``, default
    ``model.source``) or hook is refused unless ``force``; one of another width always is.
    ``hook_out``: a transcoder's output hook (default: its cfg.json's ``hook_name_out``).
    """
    import mlx.core as mx

    from .. import checks
    from ..activations.rows import RowFilter, add_counts, row_norms, zero_counts
    from ..activations.windows import PAD, iter_windows
    from ..data import DataSource
    from ..model import layer_of
    from .config import check_sae_for_model

    checks.integer("tokens", tokens)
    checks.context_length(model, context_length)
    checks.integer("batch_size", batch_size)
    checks.number("massive_factor", massive_factor, low=1, low_open=True)
    source = DataSource(data, split).check()
    sae = load_sae(sae_folder, backend)
    run = numpy_runner(sae, decode=True)
    trained = trained_on(sae.cfg)
    source.check_not_trained_on(trained, allow_train_data)
    hook = check_sae_for_model(sae.cfg, model, hook, model_name, force)
    target_hook = _output_hook(sae.cfg, model, hook_out, force) if sae.cfg.is_transcoder else hook
    # the spliced and zero-ablated passes start at the block of the spliced hook, on the
    # residual stream the clean pass handed it (the blocks before are the same in all three);
    # a residual stream after block L is block L + 1's whole input: they start there, on it
    layer = layer_of(target_hook)
    resid_in = target_hook == f"blocks.{layer}.hook_resid_post" and layer + 1 < model.cfg.n_layers
    start = layer + 1 if resid_in else None  # where the replacement enters as the residual
    entry = f"blocks.{layer}.hook_resid_pre" if layer is not None and not resid_in else None
    names = list(dict.fromkeys([hook, target_hook]))
    cached = names + ([entry] if entry else [])
    texts = source.documents()
    tok = model._require_tokenizer()
    acc = MetricAccumulator(sae.cfg.d_sae)
    acc_massive = MetricAccumulator(sae.cfg.d_sae)
    prefixes = None
    if sae.cfg.matryoshka_widths and not sae.cfg.is_transcoder:  # SAEs: x_hat reconstructs x
        w = sae.numpy_params()
        prefixes = PrefixMetrics(sae.cfg.matryoshka_widths, w["W_dec"], w["b_dec"])
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl, n_pred, n_tok, excluded = 0.0, 0, 0, zero_counts()
    kl_zero = 0.0
    rows = RowFilter.for_tokenizer(tok, massive_factor)
    checked = False
    for win in iter_windows(tok, texts, context_length, batch_size):
        if n_tok >= tokens:
            break
        toks = mx.array(win.tokens)
        logits, cache = model.run_with_cache(toks, names_filter=cached)
        resume = {"start_at_layer": layer, "resid": cache[entry]} if entry else {}
        acts = {n: np.asarray(cache[n].astype(mx.float32)) for n in names}
        b, t = acts[hook].shape[:2]
        flat = {n: a.reshape(b * t, -1) for n, a in acts.items()}
        if not checked:
            widths = {hook: sae.cfg.d_in, target_hook: sae.cfg.out_width}
            for n, width in widths.items():
                if flat[n].shape[1] != width:
                    what = "d_in" if n == hook else "d_out"
                    raise ValueError(f"the SAE has {what}={width} but {n} has width {flat[n].shape[1]}")  # fmt: skip
            checked = True
        for n in names:
            if not np.all(np.isfinite(flat[n])):
                raise ValueError(f"activations at {n} contain NaN or inf")
        real = win.kinds.reshape(-1) != PAD
        # the row rule over every hook read (a row massive at either is left out)
        norms = np.stack([row_norms(flat[n]) for n in names])
        keep, massive, counts = rows(win.tokens.reshape(-1), np.tile(np.arange(t), b), norms, real)
        add_counts(excluded, counts)
        f, x_hat = run(flat[hook])
        y = flat[target_hook]  # what the SAE reconstructs or the transcoder predicts
        acc.add(y[keep], x_hat[keep], f[keep])
        if prefixes is not None:
            prefixes.add(y[keep], f[keep], x_hat[keep])
        acc_massive.add(y[massive], x_hat[massive], f[massive])
        n_tok += int(keep.sum())
        shape = acts[target_hook].shape
        spliced = np.where(keep[:, None], x_hat, y).reshape(shape)
        zeroed = np.where(keep[:, None], 0.0, y).reshape(shape).astype(np.float32)
        logits_sae, logits_zero = (_spliced_run(model, toks, target_hook, r, resume, start)
                                   for r in (spliced, zeroed))  # fmt: skip
        # next-token prediction at every position whose target is a real token (whole
        # logits: a [:, :-1] view would make every elementwise kernel a strided one, 2x slower)
        target, valid = np.zeros_like(win.tokens), np.zeros(win.tokens.shape, bool)
        target[:, :-1], valid[:, :-1] = win.tokens[:, 1:], win.kinds[:, 1:] != PAD
        terms = _next_token_terms()(logits, logits_sae, logits_zero, mx.array(target))
        terms = [np.asarray(t, np.float64)[valid].sum() for t in terms]
        for name, value in zip(("clean", "sae", "zero"), terms[:3], strict=True):
            ce[name] += float(value)
        kl += float(terms[3])
        kl_zero += float(terms[4])
        n_pred += int(valid.sum())
    if acc.n == 0:
        raise ValueError("no evaluation tokens: the data is empty")
    result = acc.result()
    w_dec = np.asarray(sae.numpy_params()["W_dec"])
    core = saebench_core(
        result, acc.density(), w_dec, kl / n_pred, kl_zero / n_pred,
        ce["clean"] / n_pred, ce["sae"] / n_pred, ce["zero"] / n_pred,
    )  # fmt: skip
    report = {
        "sae": str(sae_folder),
        "hook": hook,
        "architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        **(
            {"hook_out": target_hook, "d_out": sae.cfg.d_out, "skip_transcoder": sae.cfg.skip}
            if sae.cfg.is_transcoder
            else {}
        ),
        "backend": backend,
        "data": source.describe(),
        "data_source": source.record(),
        "trained_on": trained,
        "overlaps_training_data": source.overlaps(trained),
        "context_length": context_length,
        **result,
        "fvu": 1 - result["explained_variance"],
        "ce_loss_clean": ce["clean"] / n_pred,
        "ce_loss_sae": ce["sae"] / n_pred,
        "ce_loss_zero_ablation": ce["zero"] / n_pred,
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"])
        if ce["zero"] != ce["clean"]
        else None,  # undefined: zero ablation changes nothing
        "kl_div": kl / n_pred,
        "n_predictions": n_pred,
        "rows_left_out": excluded,
        "massive_rows": acc_massive.result() if acc_massive.n else {"n_rows": 0},
        "saebench": core,
        **({"matryoshka_prefixes": prefixes.result()} if prefixes is not None else {}),
        "note": (
            f"metrics over ordinary tokens; left out ({rows.describe()}) are left out of the "
            "SAE metrics and keep their clean values when splicing; the norm outliers are "
            "reported apart (massive_rows)"
        ),
    }
    for key, v in report.items():
        if isinstance(v, float) and not np.isfinite(v):
            raise ValueError(
                f"evaluation of {sae_folder} gave {key} = {v}: the SAE or the model produced "
                "non-finite values"
            )
    return report, acc.density()


def _spliced_run(model, toks, target_hook: str, replacement: np.ndarray, resume: dict,
                 start: int | None):  # fmt: skip
    """Logits with ``target_hook``'s activation replaced, in the model's dtype: from the
    hook's block on (``resume``), or from block ``start`` with the replacement as its
    residual stream input (the hook is blocks.{start - 1}.hook_resid_post)."""
    import mlx.core as mx

    r = mx.array(replacement).astype(model.dtype)
    if start is not None:
        return model.run_with_hooks(toks, start_at_layer=start, resid=r)
    return model.run_with_hooks(toks, fwd_hooks=[(target_hook, lambda x, hook: r)], **resume)


def _output_hook(cfg, model, hook_out: str | None, force: bool) -> str:
    """A transcoder's output hook: ``hook_out`` or its cfg.json's (one-line errors as for
    the input hook: another hook than the one trained on needs ``force``)."""
    hook_out = hook_out or cfg.hook_name_out
    if hook_out is None:
        raise ValueError(
            "the transcoder's cfg.json names no output hook (metadata.hook_name_out); give --hook-out"
        )
    model.check_hook_name(hook_out)
    if not force and cfg.hook_name_out and hook_out != cfg.hook_name_out:
        raise ValueError(
            f"the transcoder was trained to predict {cfg.hook_name_out}, not {hook_out}; drop "
            "--hook-out, or pass --force to use it anyway"
        )
    return hook_out


SAEBENCH_SHOWN = (
    "kl_div_score",
    "ce_loss_score",
    "l2_ratio",
    "relative_reconstruction_bias",
    "frac_alive",
    "average_max_decoder_cosine_sim",
    "freq_over_1_percent",
    "freq_over_10_percent",
)


def print_report(r: dict) -> None:
    if "hook_out" in r:
        kind = "skip transcoder" if r["skip_transcoder"] else "transcoder"
        print(
            f"{kind} {r['sae']}  ({r['architecture']}, d_sae={r['d_sae']}, {r['hook']} -> "
            f"{r['hook_out']}, {r['backend']}); reconstruction metrics are of the prediction "
            f"of {r['hook_out']}, which it replaces"
        )
    else:
        print(
            f"SAE {r['sae']}  ({r['architecture']}, d_sae={r['d_sae']}, hook {r['hook']}, {r['backend']})"
        )
    print(f"  evaluated on {r['n_rows']} tokens of {r['data']}")
    if r.get("overlaps_training_data"):
        print(
            "  note: this data shares documents with the SAE's training data (--allow-train-data)"
        )
    for key, label in [
        ("l0", "L0"),
        ("explained_variance", "explained variance"),
        ("fvu", "FVU (1 - expl. var.)"),
        ("normalized_mse", "normalised MSE"),
        ("cosine_similarity", "cosine similarity"),
        ("dead_fraction", "dead fraction"),
        ("dense_fraction", "dense fraction (>0.1)"),
        ("ce_loss_clean", "CE loss clean"),
        ("ce_loss_sae", "CE loss with SAE"),
        ("ce_loss_zero_ablation", "CE loss zero ablation"),
        ("ce_loss_recovered", "CE loss recovered"),
        ("kl_div", "KL(clean || SAE)"),
    ]:
        print(f"  {label:24s} {r[key]:.4f}" if r[key] is not None else f"  {label:24s} n/a")
    if r.get("matryoshka_prefixes"):
        print("  Matryoshka prefixes (latents 0..w-1 alone):")
        for p in r["matryoshka_prefixes"]:
            print(
                f"    width {p['width']:<8d} explained variance {p['explained_variance']:.4f}  L0 {p['l0']:.2f}"
            )
    print("  SAEBench core metrics:")
    for key in SAEBENCH_SHOWN:
        print(f"    {key:30s} {r['saebench'][key]:.4f}")
    m = r["massive_rows"]
    left = r["rows_left_out"]
    print(
        f"  left out: {left['position_0']} position-0, {left['special_token']} special-token, "
        f"{left['norm_outlier']} norm-outlier rows"
        + (
            f" (explained variance on those: {m['explained_variance']:.3f})"
            if m.get("n_rows", 0) > 1
            else ""
        )
    )


def write_report(out: Path, report: dict, density: np.ndarray) -> list[Path]:
    from ..io import atomic_path, output_folder, write_json

    with output_folder(out) as out:
        js = write_json(out / "metrics.json", report)
        png = out / "feature_density.png"
        with atomic_path(png) as tmp:
            log10_density_histogram(
                density,
                tmp,
                f"{report['hook']}: {report['architecture']} d_sae={report['d_sae']}, {report['n_rows']} tokens",
            )
    return [js, png]
