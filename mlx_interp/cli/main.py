"""The ``mlx-interp`` command line: info, parity, demo, report, and the analysis, SAE and
feature commands registered by their modules."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import DEFAULT_MODEL  # noqa: F401 - the default --model of every command


def cmd_info(args) -> int:
    from mlx.utils import tree_flatten

    from ..system import allocator_info, blas_info, mlx_device, package_versions
    from .common import model_from_args

    model = model_from_args(args)
    c = model.cfg
    n_params = sum(v.size for _, v in tree_flatten(model.model.parameters()))
    print(f"model        {args.model}  ({model.folder})")
    print(f"architecture {c.architecture}")
    print(f"parameters   {n_params / 1e6:.1f} M   dtype {args.dtype}")
    print(
        f"sizes        n_layers={c.n_layers} d_model={c.d_model} n_heads={c.n_heads} "
        f"n_kv_heads={c.n_kv_heads} d_head={c.d_head} d_mlp={c.d_mlp} d_vocab={c.d_vocab} n_ctx={c.n_ctx}"
    )
    print(f"mlx device   {mlx_device()}")
    print(f"blas         {blas_info()}")
    print(f"allocator    {allocator_info()}")
    print("versions     " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    per_block = [n.split(".", 2)[2] for n in model.hook_names if n.startswith("blocks.0.")]
    outside = [n for n in model.hook_names if not n.startswith("blocks.")]
    print(f"hook points  {len(model.hook_names)} in all; outside blocks: {', '.join(outside)}")
    print(f"  in every block blocks.{{0..{c.n_layers - 1}}}.:")
    for name in per_block:
        print(f"    {name}")
    return 0


def cmd_parity(args) -> int:
    from ..data import PROMPTS
    from ..parity import compare_backends, compare_models

    texts = args.text or PROMPTS[:2]
    if any(not t.strip() for t in texts):
        raise ValueError("--text is empty; give some text")
    if args.json:
        from ..io import check_writable

        if Path(args.json).is_dir():
            raise ValueError(f"--json {args.json} is a folder; give a file name")
        check_writable(Path(args.json).parent, "--json")
    if args.against:
        report = compare_models(args.model, args.against, texts, dtype=args.dtype,
                                quantize=args.quantize, group_size=args.group_size)  # fmt: skip
    else:
        report = compare_backends(
            args.model, texts, dtype=args.dtype, quantize=args.quantize, group_size=args.group_size
        )
    print(report.table(only_failures=args.failures_only))
    print(report.summary())
    if args.quantize:  # and what quantizing costs, layer by layer (informational)
        from ..parity import per_layer, quantization_error

        err = quantization_error(args.model, texts, args.quantize, args.group_size)
        curves = per_layer(err)
        print(f"\nquantization error, {err.source}: relative error per layer")
        print(f"{'layer':>5s} " + " ".join(f"{k:>16s}" for k in curves))
        for i, row in enumerate(zip(*curves.values(), strict=True)):
            print(f"{i:5d} " + " ".join(f"{v:16.2e}" for v in row))
        print(f"logits {err.rows[-1].rel_error:.2e}")
    if args.json:
        from ..io import write_text

        write_text(args.json, report.to_json())
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from .demo import run_demo

    t0 = time.perf_counter()
    report = run_demo(args.model, args.out, quick=args.quick, hook=args.hook,
                      sae_tokens=args.sae_tokens, skip=tuple(args.skip or ()), seed=args.seed)  # fmt: skip
    out = report.parent
    also = [p.name for p in (report.with_suffix(".html"), report.with_suffix(".pdf")) if p.exists()]
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. The report: {report}"
          + (f" (and {', '.join(also)} beside it)" if also else ""))  # fmt: skip
    print(
        f"  basics/    predictions, parity (parity.txt), residual_norms.png    -> {out / 'basics'}"
    )
    print(
        f"  analysis/  figures and their numbers, index.md; views/ (interactive) -> {out / 'analysis'}"
    )
    print(f"  sae/, sae_eval/  the trained SAE, training.json, metrics.json      -> {out / 'sae'}")
    print(f"  features/  dashboards: open {out / 'features' / 'index.html'}")
    print(
        f"  bench/     the performance table                                   -> {out / 'bench'}"
    )
    return 0


def cmd_report(args) -> int:
    from ..report import build_report

    path = build_report(args.run, args.out, pdf=not args.no_pdf)
    pdf = path.with_suffix(".pdf")
    why = "--no-pdf" if args.no_pdf else "Chromium is not installed (apt-get install chromium)"
    fresh = pdf.exists() and pdf.stat().st_mtime >= path.stat().st_mtime
    made = f" and {pdf}" if fresh else f" (no PDF: {why})"
    print(f"wrote {path}, {path.with_suffix('.html')}{made}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlx-interp", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add_model(sp, dtypes=("float32", "float16", "bfloat16")):
        sp.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help="'smollm2-135m' (embedded), an HF folder or repo id, or a .gguf file",
        )
        sp.add_argument("--dtype", default="float32", choices=dtypes)
        sp.add_argument("--quantize", type=int, metavar="BITS",
                        help="quantize a float Llama-family model while loading (4 or 8; "
                        "2, 3, 5, 6 too); a folder quantized by mlx-lm loads quantized anyway")  # fmt: skip
        sp.add_argument("--group-size", type=int, default=64, help="quantization group size (32, 64, 128)")  # fmt: skip

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
    sp.add_argument(
        "--against",
        metavar="SOURCE",
        help="compare with another checkpoint in MLX instead of torch_ref (names the first "
        "hook point where the two differ)",
    )
    sp.set_defaults(func=cmd_parity)

    sp = sub.add_parser(
        "demo", help="the whole pipeline on one model, ending in a report (resumes if interrupted)"
    )
    sp.add_argument("--model", default=DEFAULT_MODEL, help="default: the embedded smollm2-135m")
    sp.add_argument("--out", default="results/demo", help="run folder (default results/demo)")
    sp.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test in minutes")
    sp.add_argument("--hook", help="SAE hook (default: the middle layer's hook_resid_post)")
    sp.add_argument(
        "--sae-tokens",
        type=int,
        help="SAE training tokens, read 3 times from a third as many extracted (default 380928; 8192 with --quick)",
    )
    sp.add_argument("--skip", action="append", choices=["basics", "analysis", "sae", "sae_eval", "features", "bench"],
                    help="leave out a stage (repeat)")  # fmt: skip
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("report", help="report.md, .html and .pdf from a run folder's artefacts")
    sp.add_argument("--run", default="results/demo", help="run folder (default results/demo)")
    sp.add_argument("--out", help="Markdown file (default RUN/report.md)")
    sp.add_argument("--no-pdf", action="store_true", help="no PDF even when Chromium is installed")
    sp.set_defaults(func=cmd_report)

    # The model-conversion command registers here (convert).
    from .convert import add_commands as add_convert_commands

    add_convert_commands(sub)
    # Commands of the activation-analysis work register here (extract, tokens, analyze).
    from .activations import add_commands as add_activation_commands

    add_activation_commands(sub, add_model)
    # Commands of the SAE work register here (train-sae, eval-sae).
    from .sae import add_commands as add_sae_commands

    add_sae_commands(sub, add_model)
    # Commands of the feature-analysis work register here (features).
    from .features import add_commands as add_feature_commands

    add_feature_commands(sub, add_model)
    # Commands of the multi-layer work register here (mlp-analysis, diff).
    from .mlp import add_commands as add_mlp_commands

    add_mlp_commands(sub, add_model)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``mlx-interp CMD: error: ...`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.strerror:
        msg = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return " ".join(str(msg).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors are one line on stderr: exit 2 for bad input (arguments,
    files, data), 1 for an unexpected failure (MLX_INTERP_DEBUG=1 shows its traceback)."""

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    from ..io import missing_folders, remove_empty_folders

    out = getattr(args, "out", None)
    created = missing_folders(out) if out and args.command != "report" else []
    code = _run(args)
    if code != 0:  # a failed command leaves no empty output folder behind
        remove_empty_folders(created)
    return code


# commands whose functions do not lock their --out folder themselves (see io.output_folder)
_LOCKED_HERE = ("mlp-analysis", "diff")


def _run(args) -> int:
    import os

    try:
        if args.command in _LOCKED_HERE and getattr(args, "out", None):
            from ..io import output_folder

            with output_folder(args.out):
                return args.func(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(
            f"mlx-interp {args.command}: error: out of memory ({_one_line(e)}); use smaller "
            "sizes (--batch-size, --tokens, --top-k, --buffer-rows)",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        print(f"mlx-interp {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - never a traceback for a user, unless asked
        if os.environ.get("MLX_INTERP_DEBUG"):
            raise
        print(
            f"mlx-interp {args.command}: error: unexpected {type(e).__name__}: {_one_line(e)} "
            "(MLX_INTERP_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
