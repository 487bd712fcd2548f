"""The ``train-sae`` and ``eval-sae`` commands (registered in ``mlx_interp.cli``)."""

from __future__ import annotations

import argparse


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
    sp.add_argument("--arch", default="topk", choices=["standard", "topk", "batchtopk", "jumprelu"])
    size = sp.add_mutually_exclusive_group()
    size.add_argument("--d-sae", type=int, help="number of latents")
    size.add_argument("--expansion", type=int, help="d_sae = expansion x d_in (default 16)")
    sp.add_argument("--k", type=int, default=32, help="active latents (topk, batchtopk)")
    sp.add_argument("--tokens", type=int, default=1_000_000, help="training tokens")
    sp.add_argument("--out", required=True, help="output folder (a checkpoint there resumes)")
    sp.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    sp.add_argument("--lr", type=float, help="peak learning rate (default 2e-4/sqrt(d_sae/2^14))")
    sp.add_argument("--lr-warmup-steps", type=int, default=100)
    sp.add_argument("--lr-decay-frac", type=float, default=0.2)
    sp.add_argument("--sparsity-coeff", type=float, help="L1 (standard, 5) or L0 (jumprelu, 1)")
    sp.add_argument("--sparsity-warmup-frac", type=float, default=0.05)
    sp.add_argument(
        "--dead-tokens", type=int, default=1_000_000, help="dead after this many tokens unfired"
    )
    sp.add_argument("--no-normalize", action="store_true", help="train on raw activations")
    sp.add_argument("--dense-decode", action="store_true", help="TopK: decode with a dense product")
    sp.add_argument("--context-length", type=int, default=128)
    sp.add_argument("--model-batch-size", type=int, default=8, help="context windows per forward")
    sp.add_argument("--buffer-rows", type=int, default=65536, help="shuffle buffer size")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--log-every", type=int, default=50)
    sp.add_argument("--checkpoint-every", type=int, default=200)
    sp.add_argument("--backend", default="mlx", choices=["mlx", "torch"], help="SAE math backend")
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
    sp.add_argument("--context-length", type=int, default=128)
    sp.add_argument("--model-batch-size", type=int, default=8)
    sp.add_argument(
        "--out", help="folder for metrics.json and the density histogram (default: --sae)"
    )
    sp.add_argument("--backend", default="mlx", choices=["mlx", "torch"], help="SAE math backend")
    sp.set_defaults(func=cmd_eval_sae)


def cmd_train_sae(args: argparse.Namespace) -> int:
    from ..io import ensure_writable_dir
    from ..model import load_model
    from ..sae.stream import extraction_source, model_source, texts_opener
    from ..sae.training import TrainConfig, train_sae

    ensure_writable_dir(args.out)
    tc = TrainConfig(
        architecture=args.arch,
        d_sae=args.d_sae,
        expansion=args.expansion,
        k=args.k,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps,
        lr_decay_frac=args.lr_decay_frac,
        sparsity_coeff=args.sparsity_coeff,
        sparsity_warmup_frac=args.sparsity_warmup_frac,
        dead_tokens=args.dead_tokens,
        normalize_activations=not args.no_normalize,
        sparse_decode=not args.dense_decode,
        buffer_rows=args.buffer_rows,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )
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
