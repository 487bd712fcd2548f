"""The whole pipeline on one model, as ``mlx-interp demo`` (and ``make demo``) runs it.

Stages, each writing into its own sub-folder of the run folder and marked done only when
complete, so that an interrupted demo, run again, goes on where it stopped (training
itself resumes from its checkpoint):

    basics     next-token predictions, parity MLX vs torch_ref, residual-norm heatmap
    analysis   what mlx-interp analyze does (run_analysis), on a few prompts
    sae        extract (activations of the train split at a middle layer, once, to disk),
               then train-sae (train_saes) on them, 3 times over: TopK, 16x expansion, k = 32
    sae_eval   eval-sae (eval_sae) on held-out text
    features   features (run_features): statistics, monosemanticity vs neurons, dashboards

Each stage calls the Python function behind its command, with the model loaded once.
    bench      python -m benchmarks --quick (from a source checkout)
    report     report.md, report.html and report.pdf assembled from all of the above
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..data import ANALYSIS_PROMPTS, HEATMAP_TEXT, PROMPTS
from ..io import ensure_writable_dir, write_json, write_text
from ..sae.training import TrainConfig
from .activations import read_prompts, run_analysis
from .features import run_features
from .sae import eval_sae, train_saes

STAGES = ["basics", "analysis", "sae", "sae_eval", "features", "bench", "report"]

# Budgets. The SAE trains on sae_tokens rows (steps x sae_batch) from activations extracted
# once and read SAE_EPOCHS times: on a CPU the forward passes, not the SAE steps, are what
# training costs, and at a short budget the number of steps matters more than fresh rows
# (measured on our 2-core machine, TopK 9216 latents k 32, held-out EV / latents that never
# fire on 32k held-out tokens: 400k tokens streamed once, batch 2048, lr 1e-3: 0.755 / 0.1 %
# in 592 s; 127k rows read 3 times at batch 2048: 0.782 / 1.6 %, extracted in 126 s and
# trained in about 100 s; at batch 1024 0.799 but 7 % dead; see the README's recipe table).
BUDGETS = {
    "full": dict(sae_tokens=380_928, sae_batch=2048, eval_tokens=32_768, feature_tokens=25_000,
                 analysis_tokens=2048),
    "quick": dict(sae_tokens=8_192, sae_batch=512, eval_tokens=2_048, feature_tokens=4_096,
                  analysis_tokens=256),
}  # fmt: skip
SAE_EPOCHS = 3
# rows the row rule leaves out of an extraction (position 0, special tokens, norm outliers):
# 2.3 % of the default corpus's tokens with SmolLM2; extract a little more than needed
EXTRACT_MARGIN = 1.05


def basics(model, out: Path, top_k: int = 5, log=print) -> dict:
    """Predictions, the parity summary and the residual-norm heatmap; returns the parity report."""
    import mlx.core as mx
    import numpy as np

    from ..analysis.plots import residual_norm_heatmap
    from ..parity import compare_backends
    from ..system import machine_summary

    out = ensure_writable_dir(out)
    tokens, mask = model.tokenize(PROMPTS)
    logits = model(tokens, attention_mask=mask)
    n = len(PROMPTS)
    last = np.asarray(mask).sum(1) - 1 if mask is not None else np.full(n, tokens.shape[1] - 1)
    probs = mx.softmax(logits[mx.arange(n), mx.array(last)].astype(mx.float32), axis=-1)
    top = np.argsort(-np.asarray(probs), axis=-1)[:, :top_k]
    predictions = []
    for i, prompt in enumerate(PROMPTS):
        preds = [(model.tokenizer.decode([int(t)]), float(probs[i, int(t)])) for t in top[i]]
        predictions.append({"prompt": prompt, "top": [{"token": s, "p": p} for s, p in preds]})
        log(f"      {prompt!r:48s} -> " + ", ".join(f"{s!r} ({p:.2f})" for s, p in preds))
    write_json(out / "predictions.json", predictions)
    report = compare_backends(
        model.source, PROMPTS[:2], dtype=str(model.dtype).split(".")[-1], mlx_model=model
    )
    write_text(out / "parity.json", report.to_json())
    write_text(out / "parity.txt", report.table() + "\n" + report.summary() + "\n")
    log(f"      {report.summary()}")
    quantization_errors(model, out, log)
    residual_norm_heatmap(model, HEATMAP_TEXT, out / "residual_norms.png")
    write_json(out / "machine.json", machine_summary())
    return {"ok": report.ok, "summary": report.summary()}


def quantization_errors(model, out: Path, log=print) -> None:
    """What 4-bit and 8-bit weights change, per layer: quantization_error.png and .json."""
    from ..analysis.plots import quantization_error_plot
    from ..parity import per_layer, quantization_error

    try:
        curves = {b: per_layer(r := quantization_error(model.source, PROMPTS[:2], b, float_model=model))
                  for b in (4, 8)}  # fmt: skip
    except ValueError as e:  # GPT-2, a quantized model, widths the group size does not divide
        log(f"      quantization error: skipped ({e})")
        return
    write_json(out / "quantization_error.json", {"group_size": 64, "per_layer": curves,
                                                  "logits_8bit": r.rows[-1].rel_error})  # fmt: skip
    quantization_error_plot(curves, out / "quantization_error.png", model.source)
    last = {b: c["hook_resid_post"][-1] for b, c in curves.items()}
    log(f"      quantization error at the last residual: 4-bit {last[4]:.2e}, 8-bit {last[8]:.2e}")


def train_sae_stage(model, hook: str, out: Path, budget: dict, seed: int, model_name: str,
                    log=print) -> dict:  # fmt: skip
    """Extract ``hook``'s activations over the train split once (``out/activations``,
    resumable), train the SAE on them ``SAE_EPOCHS`` times over with the default recipe
    (``TrainConfig``: learning rate scaled with the width, warm-up and decay with the run),
    then delete the activations (the SAE and its training.json stay)."""
    import json
    import math
    import shutil

    from ..activations import extract
    from ..data import DataSource

    done = out / "training.json"
    if done.is_file() and (out / hook / "cfg.json").is_file():  # stopped after the deletion
        return json.loads(done.read_text())
    acts = out / "activations"
    meta = extract(model, [hook], acts, DataSource(None, "train"), batch_size=16,
                   max_tokens=math.ceil(budget["sae_tokens"] / SAE_EPOCHS * EXTRACT_MARGIN),
                   exclude_massive=True, progress=True)  # fmt: skip
    rows = sum(s["n_rows"] for s in meta["shards"])
    batch = budget["sae_batch"]
    tokens = min(budget["sae_tokens"], rows * SAE_EPOCHS // batch * batch)
    if tokens == 0:
        raise ValueError(
            f"the extraction gave {rows} rows, fewer than one training batch ({batch}) over "
            f"{SAE_EPOCHS} epochs; give more --sae-tokens"
        )
    log(f"      {rows} rows extracted; training on {tokens} ({SAE_EPOCHS} epochs, batch {batch})")
    tc = TrainConfig(architecture="topk", expansion=16, k=32, tokens=tokens, batch_size=batch,
                     seed=seed, log_every=10)  # fmt: skip
    summary = train_saes(None, [hook], tc, out, activations=acts, epochs=SAE_EPOCHS,
                         model_name=model_name, log=log)  # fmt: skip
    shutil.rmtree(acts)
    return summary


def source_checkout() -> Path | None:
    """The source checkout this package runs from (it holds benchmarks/), or None for an
    installed wheel."""
    root = Path(__file__).resolve().parents[2]  # mlx_interp/cli/demo.py -> the checkout
    return root if (root / "benchmarks" / "__main__.py").exists() else None


def _bench(out: Path) -> Callable[[], None]:
    def run():
        root = source_checkout()
        if root is None:
            write_text(
                out / "SKIPPED.md",
                "The benchmark suite lives in the source checkout (benchmarks/).\n",
            )
            return
        subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=root, check=True
        )

    return run


def run_demo(
    model_name: str = "smollm2-135m",
    out: str | Path = "results/demo",
    *,
    quick: bool = False,
    hook: str | None = None,
    sae_tokens: int | None = None,
    skip: tuple[str, ...] = (),
    seed: int = 0,
    log=print,
) -> Path:
    """Run every stage not yet done into ``out``; returns the report's path."""
    from ..io import output_folder

    if sae_tokens is not None and (isinstance(sae_tokens, bool) or not isinstance(sae_tokens, int) or sae_tokens < 1):  # fmt: skip
        raise ValueError(f"sae_tokens must be a positive integer, got {sae_tokens!r}")
    batch = BUDGETS["quick" if quick else "full"]["sae_batch"]
    if sae_tokens is not None and sae_tokens < batch:
        raise ValueError(
            f"sae_tokens must be at least one training batch ({batch}), got {sae_tokens}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    unknown = [s for s in skip if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES[:-1])}")
    with output_folder(out) as out:
        return _run_demo(model_name, out, quick, hook, sae_tokens, skip, seed, log)


def _run_demo(model_name, out: Path, quick, hook, sae_tokens, skip, seed, log) -> Path:
    from ..model import load_model
    from ..report import build_report

    done_dir = out / ".done"
    budget = dict(BUDGETS["quick" if quick else "full"])
    if sae_tokens:
        budget["sae_tokens"] = sae_tokens
    model = load_model(model_name)
    hook = hook or f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    model.check_hook_name(hook)
    write_json(out / "pipeline.json", {
        "model": model_name, "hook": hook, "seed": seed, "quick": quick, **budget,
        "data": "the offline default corpus (mlx_interp.data): train split for training, held-out split for evaluation",
    })  # fmt: skip
    prompts = out / "prompts.txt"
    write_text(prompts, "\n".join(ANALYSIS_PROMPTS) + "\n")
    sae_dir = out / "sae" / hook
    stages: dict[str, Callable[[], object]] = {
        "basics": lambda: basics(model, out / "basics", log=log),
        "analysis": lambda: run_analysis(model, out / "analysis", read_prompts(prompts), model_name=model_name,
                                         max_tokens=budget["analysis_tokens"], log=log),
        "sae": lambda: train_sae_stage(model, hook, out / "sae", budget, seed, model_name, log),
        "sae_eval": lambda: eval_sae(model, sae_dir, out / "sae_eval", tokens=budget["eval_tokens"], log=log),
        "features": lambda: run_features(model, sae_dir, out / "features", tokens=budget["feature_tokens"],
                                         max_features=40, model_name=model_name, progress=True, log=log),
        "bench": _bench(out / "bench"),
    }  # fmt: skip
    for i, name in enumerate(STAGES[:-1], 1):
        marker = done_dir / name
        if name in skip:
            log(f"[{i}/{len(STAGES)}] {name}: skipped")
            continue
        if marker.exists():
            log(f"[{i}/{len(STAGES)}] {name}: done already ({out / name})")
            continue
        log(f"[{i}/{len(STAGES)}] {name} ...")
        t0 = time.perf_counter()
        stages[name]()
        write_text(marker, f"{time.perf_counter() - t0:.1f} s\n")
        log(f"      {name} done in {time.perf_counter() - t0:.0f} s -> {out / name}")
    log(f"[{len(STAGES)}/{len(STAGES)}] report ...")
    return build_report(out, out / "report.md")
