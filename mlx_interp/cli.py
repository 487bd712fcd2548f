"""The ``mlx-interp`` command line: info, parity, demo."""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):",
    "One, two, three, four,",
    "Water is made of hydrogen and",
]


HEATMAP_TEXT = "The Eiffel Tower is in Paris. The Colosseum is in Rome, and the Acropolis is in"


def cmd_info(args) -> int:
    from . import load_model
    from .system import blas_info, mlx_device, package_versions

    model = load_model(args.model, dtype=args.dtype)
    c = model.cfg
    n_params = sum(v.size for _, v in _flatten(model.model.parameters()))
    print(f"model        {args.model}  ({model.folder})")
    print(f"architecture {c.architecture}")
    print(f"parameters   {n_params / 1e6:.1f} M   dtype {args.dtype}")
    print(
        f"sizes        n_layers={c.n_layers} d_model={c.d_model} n_heads={c.n_heads} "
        f"n_kv_heads={c.n_kv_heads} d_head={c.d_head} d_mlp={c.d_mlp} d_vocab={c.d_vocab} n_ctx={c.n_ctx}"
    )
    print(f"mlx device   {mlx_device()}")
    print(f"blas         {blas_info()}")
    print("versions     " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    per_block = [n.split(".", 2)[2] for n in model.hook_names if n.startswith("blocks.0.")]
    outside = [n for n in model.hook_names if not n.startswith("blocks.")]
    print(f"hook points  {len(model.hook_names)} in all; outside blocks: {', '.join(outside)}")
    print(f"  in every block blocks.{{0..{c.n_layers - 1}}}.:")
    for name in per_block:
        print(f"    {name}")
    return 0


def _flatten(tree, prefix=""):
    from mlx.utils import tree_flatten

    return tree_flatten(tree, prefix)


def cmd_parity(args) -> int:
    from .parity import compare_backends

    texts = args.text or DEFAULT_PROMPTS[:2]
    report = compare_backends(args.model, texts, dtype=args.dtype)
    print(report.table(only_failures=args.failures_only))
    print(report.summary())
    if args.json:
        from .io import write_text

        write_text(args.json, report.to_json())
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    import mlx.core as mx
    import numpy as np

    from . import load_model
    from .io import ensure_writable_dir, write_json, write_text
    from .parity import compare_backends
    from .plots import residual_norm_heatmap
    from .system import machine_summary

    out = ensure_writable_dir(args.out)
    t0 = time.perf_counter()
    print(f"[1/4] loading {args.model} ...", flush=True)
    model = load_model(args.model, dtype=args.dtype)
    print(f"      {model}")

    print("[2/4] next-token predictions", flush=True)
    prompts = DEFAULT_PROMPTS
    tokens, mask = model.tokenize(prompts)
    logits = model(tokens, attention_mask=mask)
    last = (
        (np.asarray(mask).sum(1) - 1)
        if mask is not None
        else np.full(len(prompts), tokens.shape[1] - 1)
    )
    probs = mx.softmax(logits[mx.arange(len(prompts)), mx.array(last)].astype(mx.float32), axis=-1)
    top = np.argsort(-np.asarray(probs), axis=-1)[:, : args.top_k]
    predictions = []
    lines = ["| prompt | top predictions (probability) |", "| --- | --- |"]
    for i, prompt in enumerate(prompts):
        preds = [(model.tokenizer.decode([int(t)]), float(probs[i, int(t)])) for t in top[i]]
        predictions.append({"prompt": prompt, "top": [{"token": s, "p": p} for s, p in preds]})
        shown = ", ".join(f"{s!r} ({p:.2f})" for s, p in preds)
        print(f"      {prompt!r:48s} -> {shown}")
        lines.append(f"| {prompt!r} | {shown} |")
    write_json(out / "predictions.json", predictions)

    print("[3/4] parity: MLX vs the PyTorch reference, every hook point", flush=True)
    report = compare_backends(args.model, prompts[:2], dtype=args.dtype, mlx_model=model)
    write_text(out / "parity.json", report.to_json())
    write_text(out / "parity.txt", report.table() + "\n" + report.summary() + "\n")
    print(f"      {report.summary()}")

    print("[4/4] residual-stream norm heatmap", flush=True)
    png = residual_norm_heatmap(model, HEATMAP_TEXT, out / "residual_norms.png")

    elapsed = time.perf_counter() - t0
    machine = machine_summary()
    summary = [
        f"# mlx-interp demo: {args.model}",
        "",
        f"{model}",
        "",
        f"Machine: {machine['os']} {machine['machine']}, MLX on {machine['mlx_device']}, BLAS: {machine['blas']}.",
        f"Ran in {elapsed:.1f} s.",
        "",
        "## Next-token predictions",
        "",
        *lines,
        "",
        "## Parity",
        "",
        report.summary(),
        "",
        report.by_kind(),
        "",
        "Every hook point: `parity.txt` (and `parity.json`).",
        "",
        "## Residual stream norms",
        "",
        f"![residual norms]({png.name}) (numbers in `{png.with_suffix('.csv').name}`)",
        "",
    ]
    write_text(out / "summary.md", "\n".join(summary))
    write_json(out / "machine.json", machine)
    print(
        f"\nWrote {out}/: summary.md, predictions.json, parity.txt, parity.json, {png.name}, "
        f"{png.with_suffix('.csv').name}, machine.json  ({elapsed:.0f} s)"
    )
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-interp", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add_model(sp, dtypes=("float32", "float16", "bfloat16")):
        sp.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help="'smollm2-135m' (embedded), an HF folder or repo id, or a .gguf file",
        )
        sp.add_argument("--dtype", default="float32", choices=dtypes)

    sp = sub.add_parser("info", help="architecture, sizes, hook names, MLX device and BLAS")
    add_model(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser(
        "parity", help="MLX vs torch_ref, hook by hook; non-zero exit over tolerance"
    )
    add_model(sp)
    sp.add_argument("--text", action="append", help="input text (repeat for a batch)")
    sp.add_argument("--failures-only", action="store_true", help="list only hooks over tolerance")
    sp.add_argument("--json", help="also write the report as JSON to this file")
    sp.set_defaults(func=cmd_parity)

    sp = sub.add_parser(
        "demo", help="predictions, parity summary and a heatmap on the embedded model"
    )
    add_model(sp)
    sp.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    sp.add_argument("--top-k", type=int, default=5)
    sp.set_defaults(func=cmd_demo)

    # Commands of the activation-analysis work register here (extract, tokens, analyze).
    from .activation_commands import add_commands as add_activation_commands

    add_activation_commands(sub, add_model)
    # Commands of the SAE work register here (train-sae, eval-sae).
    from .sae.commands import add_commands as add_sae_commands

    add_sae_commands(sub, add_model)
    # Commands of the feature-analysis work register here (features).
    from .features.commands import add_commands as add_feature_commands

    add_feature_commands(sub, add_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mlx-interp {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
