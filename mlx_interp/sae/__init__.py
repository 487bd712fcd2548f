"""Sparse autoencoders in MLX: four architectures, a trainer, metrics, SAELens files."""

from .config import ARCHITECTURES, SAEConfig
from .sae import SAE

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig"]
