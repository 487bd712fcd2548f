"""mlx-interp: mechanistic interpretability on Apple silicon, in MLX, checked against PyTorch."""

from .hooks import ActivationCache, HookPoint
from .model import HookedModel, load_model

__version__ = "0.1.0"
__all__ = ["ActivationCache", "HookPoint", "HookedModel", "load_model", "__version__"]
