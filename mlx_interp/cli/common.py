"""Options shared by several command families, declared once (see ``mlx_interp.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option


@dataclass
class ReadOptions:
    """How train-sae, eval-sae and features read a model's activations over text."""

    context_length: int = option(128, "tokens per context window")
    model_batch_size: int = option(8, "context windows per forward pass")
    backend: str = option("mlx", "SAE math backend", choices=("mlx", "torch"))
