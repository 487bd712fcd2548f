"""Options shared by several command families, declared once (see ``mlx_interp.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option

DEFAULT_MODEL = "smollm2-135m"  # the default --model of every command


@dataclass
class ReadOptions:
    """How train-sae, eval-sae and features read a model's activations over text."""

    context_length: int = option(128, "tokens per context window")
    model_batch_size: int = option(8, "context windows per forward pass")
    backend: str = option("mlx", "SAE math backend", choices=("mlx", "torch"))


def add_split(sp, default: str | None, allow_train_data: bool = False) -> None:
    """--split (the same document hash as the default corpus) and, for commands that score
    an SAE, --allow-train-data. default None: all of --data, the default corpus's held-out
    split without it."""
    said = default or "all of --data, else the default corpus's heldout"
    sp.add_argument(
        "--split",
        default=default,
        choices=("train", "heldout", "all"),
        help=f"which documents of the data: 1 in 20 (by a hash of its text) is held out (default {said})",
    )
    if allow_train_data:
        sp.add_argument(
            "--allow-train-data",
            action="store_true",
            help="score the SAE even on data that shares documents with its training data",
        )


def add_sae_and_data(sp) -> None:
    """--sae and the data it is scored on: --data, --split (default heldout),
    --allow-train-data (eval-sae, features)."""
    sp.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    sp.add_argument("--data", help="text data (default: the offline corpus, held-out split)")
    add_split(sp, "heldout", allow_train_data=True)


def reading(args) -> dict:
    """The :class:`ReadOptions` of parsed ``args`` as the keyword arguments of the Python API
    (``context_length``, ``batch_size``: windows per forward pass, ``backend``)."""
    return {
        "context_length": args.context_length,
        "batch_size": args.model_batch_size,
        "backend": args.backend,
    }


def model_from_args(args):
    """The model of ``--model``, ``--dtype``, ``--quantize`` and ``--group-size``."""
    from ..model import load_model

    return load_model(
        args.model, dtype=args.dtype, quantize=args.quantize, group_size=args.group_size
    )
