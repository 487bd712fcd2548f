"""mlx-interp against what users would otherwise run, same inputs, interleaved rounds.

    python -m benchmarks.bench_compare [--quick] [--only extract,sae] [--out FILE.json]

- Extraction: ``blocks.{L}.hook_resid_post`` of the embedded SmolLM2 (float32) for the
  same random tokens, batch 1, 4, 16, 64 x 128: mlx-interp (``run_with_cache`` with
  ``stop_at_layer``, in passes of 8 windows on a CPU, as ``extract`` runs a batch), Hugging
  Face transformers (the same converted folder, a forward hook on layer L that stops the
  pass once it has the output) and TransformerLens (``run_with_cache`` with
  ``stop_at_layer``) where it loads the model offline.
- SAE training: one optimisation step of a TopK SAE (k 32, d_in 576, batch 4096, no dead
  latents) on the same batch: mlx-interp's MLX trainer, mlx-interp's torch backend and
  SAELens's trainer (``SAETrainer._train_step``: forward, backward, gradient clipping,
  Adam), d_sae 2304 to 36864. ``--dead 0.1``: with that fraction of the latents dead in
  all three (their encoder bias at -30, so they stay dead), so that every step pays for
  AuxK (k_aux = d_in / 2 in all three).

Within one size, every contender runs once per round, rounds interleaved (A B C A B C ...),
so that they share the machine's state; ratios are medians of the same rounds, marked
unreliable when the spread is large or other processes used the CPU (benchmarks.common).
The optional contenders come with ``pip install -e '.[bench]'``; one that is not
installed (or cannot load the model offline) is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from benchmarks.common import fmt_ratio, note, ratio, time_interleaved

LAYER = 15  # a middle layer of SmolLM2 (30 blocks)


class _Stop(Exception):
    """Raised by the forward hook once the wanted layer has run."""


def _transformers_extractor(folder, layer: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = {}

    def hook(_module, _inputs, output):
        out["resid"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    model.model.layers[layer].register_forward_hook(hook)

    def run(tokens):
        with torch.inference_mode():
            try:
                model(torch.from_numpy(tokens))
            except _Stop:
                pass
        return out.pop("resid")

    return model, run


def _transformer_lens_extractor(folder, layer: int):
    """TransformerLens (its TransformerBridge over the same converted folder, raw HF
    weights); raises when it cannot load the model offline."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tl = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    hook = f"blocks.{layer}.hook_resid_post"

    def run(tokens):
        with torch.inference_mode():
            _, cache = tl.run_with_cache(
                torch.from_numpy(tokens), names_filter=[hook], stop_at_layer=layer + 1
            )
        return cache[hook]

    return run


def extraction(batches: list[int], seq: int, rounds: int) -> dict:
    import mlx.core as mx

    from mlx_interp import load_model
    from mlx_interp.activations.stream import run_in_passes
    from mlx_interp.parity import relative_error
    from mlx_interp.sources import resolve_model_dir

    folder = resolve_model_dir("smollm2-135m")
    hook = f"blocks.{LAYER}.hook_resid_post"
    model = load_model("smollm2-135m")

    def mlx_run(tokens):  # as mlx-interp extract runs a batch (passes of 8 windows on a CPU)
        out = run_in_passes(model, tokens, [hook], LAYER + 1)[hook]
        mx.eval(out)
        return out

    contenders = {"mlx-interp": mlx_run}
    notes = []
    try:
        hf_model, hf_run = _transformers_extractor(folder, LAYER)
        contenders["transformers"] = hf_run
    except Exception as e:  # noqa: BLE001 - any failure means: skip with a note
        hf_model = None
        notes.append(f"transformers skipped: {type(e).__name__}: {str(e)[:120]}")
    if hf_model is not None:
        try:
            contenders["transformer-lens"] = _transformer_lens_extractor(folder, LAYER)
        except Exception as e:  # noqa: BLE001
            notes.append(f"TransformerLens skipped: {type(e).__name__}: {str(e)[:160]}")
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        tokens = rng.integers(0, model.cfg.d_vocab, (b, seq)).astype(np.int64)
        ref = np.array(contenders["mlx-interp"](tokens))
        agree = {
            k: float(relative_error(ref, np.asarray(fn(tokens), dtype=np.float32)))
            for k, fn in contenders.items()
            if k != "mlx-interp"
        }
        timings = time_interleaved(
            {k: (lambda fn=fn, t=tokens: fn(t)) for k, fn in contenders.items()}, rounds, warmup=1
        )
        n = b * seq
        for k, t in timings.items():
            row = {"what": "extract", "contender": k, "batch": b, "seq": seq, "tokens": n,
                   **t.as_dict(), "tokens_per_s": t.per_second(n),
                   "relative_error_vs_mlx": agree.get(k)}  # fmt: skip
            if k != "mlx-interp":
                row["mlx_speedup"] = ratio(timings["mlx-interp"], t)
            rows.append(row)
        print(_progress(rows[-len(timings) :]), flush=True)
    return {"model": "smollm2-135m", "hook": hook, "rows": rows, "notes": notes}


def _saelens_step(d_in: int, d_sae: int, k: int, batch: int, lr: float, dead: np.ndarray):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=batch, lr=lr,
                           lr_end=lr)  # fmt: skip
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    if dead.any():
        with torch.no_grad():
            sae.b_enc[torch.from_numpy(dead)] = DEAD_BIAS
        trainer.n_forward_passes_since_fired[torch.from_numpy(dead)] = 10**9

    def step(x: torch.Tensor):
        trainer._train_step(sae, x)
        trainer.n_training_steps += 1

    return step


DEAD_BIAS = -30.0  # the encoder bias of the latents made dead: they never fire


def sae_training(
    d_saes: list[int], batch: int, k: int, rounds: int, dead_frac: float = 0.0
) -> dict:
    import torch

    from mlx_interp.sae.sae import init_params
    from mlx_interp.sae.training import MLXBackend, TrainConfig
    from torch_ref.sae_train import TorchBackend

    d_in, lr = 576, 1e-4
    x = np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32)
    xt = torch.from_numpy(x)
    rows, notes = [], []
    for d_sae in d_saes:
        tc = TrainConfig(architecture="topk", d_sae=d_sae, k=k, batch_size=batch, lr=lr)
        tc = tc.resolve(d_in)
        cfg = tc.sae_config(d_in, "bench", None)
        dead = np.random.default_rng(1).random(d_sae) < dead_frac
        params = init_params(cfg, seed=0)
        params["b_enc"] = np.where(dead, DEAD_BIAS, params["b_enc"]).astype(np.float32)
        contenders, with_aux = {}, bool(dead.any())
        for name, cls in [("mlx-interp (MLX)", MLXBackend), ("mlx-interp (torch)", TorchBackend)]:
            be = cls(cfg, tc, params, 1.0)
            state = be.state_numpy()
            state["since_fired"] = np.where(dead, 10**9, 0).astype(np.int32)
            be.load_state_numpy(state)
            t = {"t": 0}

            def run(be=be, t=t, aux=with_aux):
                t["t"] += 1
                be.step(x, lr, 0.0, t["t"], aux)

            contenders[name] = run
        try:
            step = _saelens_step(d_in, d_sae, k, batch, lr, dead)
            contenders["SAELens"] = lambda step=step: step(xt)
        except Exception as e:  # noqa: BLE001 - any failure means: skip with a note
            if not notes:
                notes.append(f"SAELens skipped: {type(e).__name__}: {str(e)[:160]}")
        # two warm-up steps each: MLX compiles in the first and sizes its buffer cache in
        # the second (a step at 9216 latents: 570 ms, then 1,400, then 570 again)
        timings = time_interleaved(contenders, rounds, warmup=2)
        base = timings["mlx-interp (MLX)"]
        for name, t in timings.items():
            row = {"what": "sae step", "contender": name, "d_sae": d_sae, "batch": batch, "k": k,
                   "dead_fraction": float(dead.mean()), **t.as_dict(),
                   "tokens_per_s": t.per_second(batch)}  # fmt: skip
            if name != "mlx-interp (MLX)":
                row["mlx_speedup"] = ratio(base, t)
            rows.append(row)
        print(_progress(rows[-len(timings) :]), flush=True)
    return {"d_in": d_in, "k": k, "batch": batch, "torch_threads": torch.get_num_threads(),
            "dead_fraction": dead_frac, "rows": rows, "notes": notes}  # fmt: skip


def _progress(rows: list[dict]) -> str:
    return "\n".join(
        f"{r['what']} {r.get('batch')}x{r.get('seq', '')} d_sae={r.get('d_sae', '')} "
        f"{r['contender']}: {r['tokens_per_s']:.0f} tok/s ({note(r)})"
        for r in rows
    )


def format_tables(result: dict) -> str:
    out = []
    ex = result.get("extract")
    if ex:
        out += [f"### Extraction of {ex['hook']} ({ex['model']}, float32), tokens/s", "",
                "| batch x seq | contender | tokens/s | median ms (min-max) | MLX speed-up | "
                "rel. error vs MLX | load, reliability |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in ex["rows"]:
            sp = fmt_ratio(r["mlx_speedup"]) if "mlx_speedup" in r else "-"
            err = "-" if r["relative_error_vs_mlx"] is None else f"{r['relative_error_vs_mlx']:.1e}"
            out.append(
                f"| {r['batch']} x {r['seq']} | {r['contender']} | {r['tokens_per_s']:.0f} | "
                f"{1e3 * r['median_s']:.0f} ({1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}) | {sp} | "
                f"{err} | {note(r)} |"
            )
        out += [f"- {n}" for n in ex["notes"]] + [""]
    sae = result.get("sae")
    if sae:
        dead = sae.get("dead_fraction", 0.0)
        aux = f", {dead:.0%} of the latents dead (AuxK on)" if dead else ""
        out += [f"### SAE training step (TopK, d_in {sae['d_in']}, k {sae['k']}, batch {sae['batch']}{aux}), "
                f"tokens/s; torch threads {sae['torch_threads']}", "",
                "| d_sae | contender | tokens/s | median ms (min-max) | MLX speed-up | load, reliability |",
                "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in sae["rows"]:
            sp = fmt_ratio(r["mlx_speedup"]) if "mlx_speedup" in r else "-"
            out.append(
                f"| {r['d_sae']} | {r['contender']} | {r['tokens_per_s']:.0f} | "
                f"{1e3 * r['median_s']:.0f} ({1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}) | {sp} | {note(r)} |"
            )
        out += [f"- {n}" for n in sae["notes"]] + [""]
    return "\n".join(out)


def run(quick: bool, only: set[str], batches=None, d_saes=None, rounds=None, dead=0.0) -> dict:
    result = {"quick": quick}
    if "extract" in only:
        b, r = ([1, 4], 2) if quick else ([1, 4, 16, 64], 5)
        result["extract"] = extraction(batches or b, 32 if quick else 128, rounds or r)
    if "sae" in only:
        d, batch, r = ([1152], 512, 2) if quick else ([2304, 4608, 9216, 18432, 36864], 4096, 5)
        result["sae"] = sae_training(d_saes or d, batch, 32, rounds or r, dead)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, two rounds")
    p.add_argument("--only", default="extract,sae", help="comma-separated: extract, sae")
    p.add_argument("--out", help="write the result JSON here (and the tables beside it, .md)")
    p.add_argument("--batches", help="extraction batch sizes, e.g. 4,16 (x 128 tokens)")
    p.add_argument("--d-sae", help="SAE widths, e.g. 9216")
    p.add_argument("--rounds", type=int, help="interleaved rounds per size")
    p.add_argument("--dead", type=float, default=0.0,
                   help="fraction of SAE latents dead, so that AuxK runs (e.g. 0.1)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = p.parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",")] if s else None  # noqa: E731
    import mlx_interp  # noqa: F401  (binds the optimised BLAS before MLX runs)

    if not 0.0 <= a.dead < 1.0:
        p.error(f"--dead must be a fraction in [0, 1), got {a.dead}")
    result = run(a.quick, set(a.only.split(",")), ints(a.batches), ints(a.d_sae), a.rounds, a.dead)
    if a.out:
        from pathlib import Path

        from mlx_interp.io import write_json, write_text

        write_json(a.out, result)
        write_text(Path(a.out).with_suffix(".md"), format_tables(result))
    print(json.dumps(result) if a.json else format_tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
