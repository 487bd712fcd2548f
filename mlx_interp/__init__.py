"""mlx-interp: mechanistic interpretability on Apple silicon, in MLX, checked against PyTorch."""

from .blas import use_optimised_blas

use_optimised_blas()  # before mlx.core is first used; see blas.py

from .hooks import ActivationCache, HookPoint  # noqa: E402
from .model import HookedModel, load_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ActivationCache", "HookPoint", "HookedModel", "load_model", "__version__"]
