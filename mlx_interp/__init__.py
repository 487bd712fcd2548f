"""mlx-interp: mechanistic interpretability on Apple silicon, in MLX, checked against PyTorch.

The package is light on import: the modules that the two backends share (``sources``,
``sae.config``, ``sae.files``, ``data``, ``io``) import no MLX, so ``torch_ref`` runs where
MLX is not installed. ``HookedModel``, ``load_model`` and the cache load MLX when first used.
"""

from .allocator import keep_large_allocations
from .blas import use_optimised_blas

use_optimised_blas()  # before mlx.core is first loaded; see blas.py
keep_large_allocations()  # large buffers reused, not mapped afresh each time; see allocator.py

__version__ = "0.1.0"
__all__ = ["ActivationCache", "HookPoint", "HookedModel", "load_model", "__version__"]

_LAZY = {
    "ActivationCache": "hooks",
    "HookPoint": "hooks",
    "HookedModel": "model",
    "load_model": "model",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
