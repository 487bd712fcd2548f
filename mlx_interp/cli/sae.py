"""The ``train-sae`` and ``eval-sae`` commands (registered in ``mlx_interp.cli``)."""

from __future__ import annotations

import argparse

from ..options import add_options, options_from_args
from ..sae.training import TrainConfig
from .common import ReadOptions


def add_commands(sub, add_model) -> None:
    sp = sub.add_parser("train-sae", help="train sparse autoencoders on a model's activations")
    add_model(sp)
    sp.add_argument(
        "--hook", action="append", required=True, help="hook point (repeat for several)"
    )
    src = sp.add_mutually_exclusive_group()
    src.add_argument(
        "--data", help="text file, folder of .txt or .jsonl (default: the offline corpus)"
    )
    src.add_argument("--activations", help="an `extract` folder to read activations from")
    sp.add_argument("--epochs", type=int, default=1, help="passes over --activations")
    sp.add_argument("--out", required=True, help="output folder (a checkpoint there resumes)")
    add_options(sp, TrainConfig)
    add_options(sp, ReadOptions)
    sp.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    sp.set_defaults(func=cmd_train_sae)

    sp = sub.add_parser(
        "eval-sae", help="SAE metrics: L0, explained variance, CE loss recovered, ..."
    )
    add_model(sp)
    sp.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    sp.add_argument("--data", help="text data (default: the offline corpus, held-out split)")
    sp.add_argument("--hook", help="hook point (default: the one in the SAE's cfg.json)")
    sp.add_argument("--tokens", type=int, default=32768, help="evaluation tokens")
    sp.add_argument(
        "--out", help="folder for metrics.json and the density histogram (default: --sae)"
    )
    add_options(sp, ReadOptions)
    sp.set_defaults(func=cmd_eval_sae)


def cmd_train_sae(args: argparse.Namespace) -> int:
    from ..io import ensure_writable_dir
    from ..model import load_model
    from ..sae.stream import extraction_source, model_source, texts_opener
    from ..sae.training import train_sae

    ensure_writable_dir(args.out)
    tc = options_from_args(TrainConfig, args)
    if args.activations:
        source = extraction_source(args.activations, args.hook, epochs=args.epochs)
        meta = {"dataset_path": str(args.activations)}
        d_in = None
    else:
        model = load_model(args.model, dtype=args.dtype)
        for h in args.hook:
            model.check_hook_name(h)
        stats: dict = {}
        source = model_source(
            model,
            args.hook,
            texts_opener(args.data),
            batch_size=args.model_batch_size,
            context_length=args.context_length,
            stats=stats,
        )
        meta = {"dataset_path": args.data or "default corpus (train split)"}
        meta["context_size"] = args.context_length
        d_in = None
    summary = train_sae(
        source,
        args.hook,
        d_in,
        tc,
        args.out,
        backend=args.backend,
        model_name=str(args.model),
        resume=not args.no_resume,
        metadata=meta,
    )
    for h, info in summary["hooks"].items():
        f = info["final"]
        print(
            f"{h}: L0 {f['l0']:.1f}  explained variance {f['explained_variance']:.3f}  "
            f"dead {f['dead_fraction']:.3f}  -> {info['folder']}"
        )
    tps = summary["log"][-1]["tokens_per_s"] if summary["log"] else 0
    print(
        f"{summary['tokens']} tokens in {summary['steps']} steps ({tps:.0f} tokens/s, {args.backend})"
    )
    return 0


def cmd_eval_sae(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..model import load_model
    from ..sae.eval import evaluate_sae, print_report, write_report

    model = load_model(args.model, dtype=args.dtype)
    report, density = evaluate_sae(
        args.sae,
        model,
        data=args.data,
        hook=args.hook,
        tokens=args.tokens,
        context_length=args.context_length,
        batch_size=args.model_batch_size,
        backend=args.backend,
    )
    out = Path(args.out or args.sae)
    print_report(report)
    paths = write_report(out, report, density)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
