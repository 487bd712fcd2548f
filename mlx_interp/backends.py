"""The one module that knows both backends: MLX (``mlx_interp``) and PyTorch (``torch_ref``).

- ``HookedModelLike``: what the analyses, interventions and features use of a hooked model;
  ``mlx_interp.HookedModel`` and ``torch_ref.HookedModel`` both satisfy it.
- ``is_torch`` / ``is_mlx`` / ``backend_of``: which side an object (model, SAE, array) is on.
- ``to_numpy`` / ``from_numpy``: arrays across the boundary (NumPy has no bfloat16, so
  those come back as float32 unless a dtype is asked for).

Neither MLX nor torch is imported here at import time: a library that is not imported
yet cannot have made the object in question, so the checks look in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

Array = Any
"""An ``mx.array`` or a ``torch.Tensor``."""
HookFn = Callable[..., Any]
"""A forward hook ``fn(activation, hook) -> replacement or None``."""


@runtime_checkable
class HookedModelLike(Protocol):
    """A hooked model of either backend: hook points named as TransformerLens names them,
    a Hugging Face tokenizer and the TransformerLens-style runs.

    ``cfg`` has at least ``n_layers``, ``d_model``, ``d_vocab``, ``n_ctx`` and
    ``architecture``; arrays are the backend's (``mx.array`` or ``torch.Tensor``).
    """

    cfg: Any
    tokenizer: Any

    @property
    def hook_names(self) -> list[str]:
        """Every hook point name, in forward order."""
        ...

    @property
    def dtype(self) -> Any: ...

    def to_tokens(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> Array:
        """(batch, pos) token ids."""
        ...

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> Any:
        """(tokens (batch, pos), attention_mask (batch, pos) or None), right-padded."""
        ...

    def run_with_cache(
        self,
        tokens: Array,
        names_filter: Any = None,
        stop_at_layer: int | None = None,
        attention_mask: Array | None = None,
    ) -> tuple[Array | None, Mapping[str, Array]]:
        """(logits (batch, pos, d_vocab), or None with stop_at_layer; {hook name: array})."""
        ...

    def run_with_hooks(
        self,
        tokens: Array,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        attention_mask: Array | None = None,
    ) -> Array:
        """Logits (batch, pos, d_vocab) with each hook fn applied at its hook point."""
        ...

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
        temperature: float = 0.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str:
        """The continuation of ``prompt`` (greedy when temperature is 0)."""
        ...


def is_torch(obj: Any) -> bool:
    """Whether ``obj`` is on the PyTorch side: a torch tensor or module, or a ``torch_ref``
    object (its HookedModel, SAE, ...)."""
    if type(obj).__module__.partition(".")[0] == "torch_ref":
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, (torch.Tensor, torch.nn.Module))


def is_mlx(obj: Any) -> bool:
    """Whether ``obj`` is an ``mx.array``."""
    mx = sys.modules.get("mlx.core")
    return mx is not None and isinstance(obj, mx.array)


def backend_of(obj: Any) -> str:
    """'torch' for an object of the PyTorch side (see ``is_torch``), else 'mlx'."""
    return "torch" if is_torch(obj) else "mlx"


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A NumPy copy (or view) of an ``mx.array``, a torch tensor or an array-like.

    dtype: the NumPy dtype wanted (None: the array's own; bfloat16, which NumPy lacks,
    becomes float32). Torch tensors are detached and moved to the CPU first.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16 or (dtype is not None and t.is_floating_point()):
            t = t.double() if np.dtype(dtype or np.float32) == np.float64 else t.float()
        x = t.numpy()
    elif is_mlx(x):
        mx = sys.modules["mlx.core"]
        if x.dtype == mx.bfloat16 or (dtype is not None and mx.issubdtype(x.dtype, mx.floating)):
            x = x.astype(mx.float32)
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def from_numpy(a: Any, like: Any) -> Array:
    """``a`` as an array of ``like``'s backend, in its dtype (and device): ``like`` is a
    hooked model (either backend) or an array of the backend."""
    a = np.asarray(a)
    if is_torch(like):
        import torch

        return torch.as_tensor(a, device=like.device).to(like.dtype)
    import mlx.core as mx

    return mx.array(np.asarray(a, np.float32)).astype(like.dtype)
