"""Sparse autoencoders in MLX: four architectures, a trainer, metrics, SAELens files.

``config`` and ``files`` (the SAELens file format) import no MLX: ``torch_ref`` shares them.
``SAE`` loads MLX when first used.
"""

from .config import ARCHITECTURES, SAEConfig

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig"]


def __getattr__(name: str):
    if name == "SAE":
        from .sae import SAE

        return SAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
