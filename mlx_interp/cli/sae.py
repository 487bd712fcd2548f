"""The ``train-sae`` and ``eval-sae`` commands (registered in ``mlx_interp.cli``)."""

from __future__ import annotations

import argparse
import sys

from ..options import add_options, options_from_args
from ..sae.training import TrainConfig
from .common import ReadOptions, add_sae_and_data, add_split, model_from_args, reading


def add_force(sp) -> None:
    """``--force``: use an SAE with a model or hook it was not trained on (every command)."""
    sp.add_argument(
        "--force",
        "--ignore-model-name",
        dest="force",
        action="store_true",
        help="use the SAE even if its cfg.json names another model or hook point",
    )


def add_commands(sub, add_model) -> None:
    sp = sub.add_parser("train-sae", help="train sparse autoencoders on a model's activations")
    add_model(sp)
    sp.add_argument(
        "--hook", action="append", required=True, help="hook point (repeat for several)"
    )
    sp.add_argument(
        "--hook-out",
        action="append",
        help="train transcoders: the hook each --hook's transcoder predicts, e.g. --hook "
        "blocks.L.ln2.hook_normalized --hook-out blocks.L.hook_mlp_out (one per --hook)",
    )
    src = sp.add_mutually_exclusive_group()
    src.add_argument(
        "--data", help="text file, folder of .txt or .jsonl (default: the offline corpus)"
    )
    src.add_argument("--activations", help="an `extract` folder to read activations from")
    add_split(sp, "train")
    sp.add_argument("--epochs", type=int, default=1, help="passes over --activations")
    sp.add_argument("--out", required=True, help="output folder (a checkpoint there resumes)")
    add_options(sp, TrainConfig)
    add_options(sp, ReadOptions)
    sp.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    sp.add_argument(
        "--keep-checkpoint", action="store_true", help="keep out/checkpoint/ after the run"
    )
    sp.set_defaults(func=cmd_train_sae)

    sp = sub.add_parser(
        "eval-sae", help="SAE metrics: L0, explained variance, CE loss recovered, ..."
    )
    add_model(sp)
    add_sae_and_data(sp)
    sp.add_argument("--hook", help="hook point (default: the one in the SAE's cfg.json)")
    sp.add_argument(
        "--hook-out", help="a transcoder's output hook (default: the one in its cfg.json)"
    )
    sp.add_argument("--tokens", type=int, default=32768, help="evaluation tokens")
    sp.add_argument(
        "--out", help="folder for metrics.json and the density histogram (default: --sae)"
    )
    add_options(sp, ReadOptions)
    add_force(sp)
    sp.set_defaults(func=cmd_eval_sae)


def train_saes(
    model,
    hooks: list[str],
    tc: TrainConfig,
    out,
    *,
    data: str | None = None,
    split: str = "train",
    activations=None,
    epochs: int = 1,
    context_length: int = 128,
    batch_size: int = 8,
    backend: str = "mlx",
    model_name: str | None = None,
    resume: bool = True,
    keep_checkpoint: bool = False,
    log=print,
) -> dict:
    """The ``train-sae`` command as a function: one SAE per hook, trained on ``model``'s
    activations over ``data`` (None: the default corpus, train split) or, with
    ``activations``, on an ``extract`` folder (``model`` is then not used and may be None);
    writes ``out/<hook>/`` and ``out/training.json``, logs one line per hook and returns the
    training summary. ``batch_size`` is context windows per forward pass. A pair (input
    hook, output hook) in ``hooks`` trains a transcoder (``out/<input>_to_<output>/``); the
    model runs once per batch for every hook read."""
    from ..data import DataSource
    from ..io import check_writable
    from ..sae.stream import extraction_source, model_source
    from ..sae.training import sae_units, source_hooks, train_sae

    check_writable(out)  # creates nothing: train_sae creates and locks the folder
    units = sae_units(hooks)
    reads = source_hooks(units)
    stats: dict = {}
    if activations:
        from ..activations import read_metadata

        record = read_metadata(activations).get("data_source") or {}
        source = extraction_source(activations, reads, epochs=epochs, stats=stats)
        meta = {"dataset_path": record.get("data", str(activations)), "activations": str(activations)}  # fmt: skip
        if epochs > 1:  # read more than once: part of what the SAE was trained on
            meta["epochs"] = epochs
        model_name = _extraction_model(activations, model_name)
    else:
        data_source = DataSource(data, split).check()
        record = data_source.record()
        for h in reads:
            model.check_hook_name(h)
        source = model_source(
            model,
            reads,
            data_source.documents,
            batch_size=batch_size,
            context_length=context_length,
            stats=stats,
        )
        meta = {"dataset_path": record["data"], "context_size": context_length}
    # what the SAE was trained on: eval-sae and features refuse to score it on the same documents
    meta["dataset_split"] = record.get("split")
    meta["dataset_fingerprint"] = record.get("fingerprint")
    meta["rows_left_out"] = stats["n_excluded"]  # filled in while training
    summary = train_sae(
        source,
        hooks,
        None,
        tc,
        out,
        backend=backend,
        model_name=model_name,
        resume=resume,
        metadata=meta,
        keep_checkpoint=keep_checkpoint,
        warn=lambda message: print(f"warning: {message}", file=sys.stderr),
    )
    for h, info in summary["hooks"].items():
        f = info["final"]
        log(
            f"{h}: L0 {f['l0']:.1f}  explained variance {f['explained_variance']:.3f}  "
            f"dead {f['dead_fraction']:.3f}  -> {info['folder']}"
        )
        if "prefix_explained_variance" in f:  # Matryoshka: each prefix alone
            widths = summary["train_config"][h]["matryoshka_widths"]
            evs = ", ".join(
                f"{w}: {ev:.3f}"
                for w, ev in zip(widths, f["prefix_explained_variance"], strict=True)
            )
            log(f"{h}: explained variance of each Matryoshka prefix (width: EV) {evs}")
    tps = summary["log"][-1]["tokens_per_s"] if summary["log"] else 0
    log(f"{summary['tokens']} tokens in {summary['steps']} steps ({tps:.0f} tokens/s, {backend})")
    return summary


def eval_sae(model, sae_folder, out=None, *, log=print, **kwargs) -> dict:
    """The ``eval-sae`` command as a function: ``mlx_interp.sae.eval.evaluate_sae(sae_folder,
    model, **kwargs)`` (by default on the held-out split of the default corpus; it refuses
    data that shares documents with the SAE's training data unless ``allow_train_data``, and
    an SAE of another model or hook unless ``force``), written as ``metrics.json`` and the
    density histogram into ``out`` (default: the SAE folder) and printed; returns the
    metrics."""
    from pathlib import Path

    from ..io import check_writable
    from ..sae.eval import evaluate_sae, print_report, write_report

    check_writable(Path(out or sae_folder))
    report, density = evaluate_sae(sae_folder, model, **kwargs)
    print_report(report)
    paths = write_report(Path(out or sae_folder), report, density)
    log("wrote " + ", ".join(str(p) for p in paths))
    return report


def cmd_train_sae(args: argparse.Namespace) -> int:
    from ..io import check_writable

    check_writable(args.out)  # fail before loading anything; creates nothing
    tc = options_from_args(TrainConfig, args)
    hooks = args.hook
    if args.hook_out:
        if len(args.hook_out) != len(args.hook):
            raise ValueError(
                f"give one --hook-out per --hook (got {len(args.hook)} --hook, "
                f"{len(args.hook_out)} --hook-out): each --hook's transcoder predicts its --hook-out"
            )
        hooks = list(zip(args.hook, args.hook_out, strict=True))
    model = None if args.activations else model_from_args(args)
    train_saes(
        model,
        hooks,
        tc,
        args.out,
        data=args.data,
        split=args.split,
        activations=args.activations,
        epochs=args.epochs,
        model_name=str(args.model),
        resume=not args.no_resume,
        keep_checkpoint=args.keep_checkpoint,
        **reading(args),
    )
    return 0


def _extraction_model(folder, model: str | None) -> str:
    """The model an extraction was made with (the SAE's model_name); ``model``, when given
    (and not the default), must be that model."""
    from pathlib import Path

    from ..activations import read_metadata
    from ..sae.config import model_identity
    from .common import DEFAULT_MODEL

    made_with = str(read_metadata(Path(folder))["model"])
    if model and model != DEFAULT_MODEL and model_identity(model) != model_identity(made_with):
        raise ValueError(
            f"the activations in {folder} come from model {made_with!r}, not {model!r}; drop "
            "--model (it is read from the extraction) or give that model"
        )
    return made_with


def cmd_eval_sae(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io import check_writable

    check_writable(Path(args.out or args.sae))
    model = model_from_args(args)
    eval_sae(model, args.sae, args.out, data=args.data, split=args.split, hook=args.hook,
             hook_out=args.hook_out,
             allow_train_data=args.allow_train_data, tokens=args.tokens,
             model_name=str(args.model), force=args.force, **reading(args))  # fmt: skip
    return 0
