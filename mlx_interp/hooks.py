"""Hook points, the activation cache, and the plumbing between them.

A hook point is an identity module with a name (TransformerLens style): the forward pass
calls ``x = self.hook_resid_pre(x)`` at every place an activation can be read or replaced.
What happens there is decided by the ``HookState`` active for the current forward pass
(a context variable), so a model with no active state pays one lookup per hook point and
nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import mlx.core as mx
import mlx.nn as nn

# fn(activation, hook) -> replacement activation, or None to keep it unchanged.
HookFn = Callable[[mx.array, "HookPoint"], "mx.array | None"]
NamesFilter = "None | str | Sequence[str] | Callable[[str], bool]"

_STATE: ContextVar[HookState | None] = ContextVar("mlx_interp_hook_state", default=None)


class HookPoint(nn.Module):
    """Identity at a named point of the forward pass. ``name`` is set by the model."""

    def __init__(self):
        super().__init__()
        self.name = ""

    @property
    def active(self) -> bool:
        """True when the current forward pass reads or replaces this activation."""
        state = _STATE.get()
        return state is not None and state.wants(self.name)

    def __call__(self, x: mx.array) -> mx.array:
        state = _STATE.get()
        return x if state is None else state.visit(self, x)

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


class HookState:
    """What one forward pass does at its hook points: which to cache, which functions to run."""

    def __init__(
        self,
        cache_names: Iterable[str] = (),
        hooks: dict[str, list[HookFn]] | None = None,
        record_order: bool = False,
    ):
        self.cache_names = set(cache_names)
        self.hooks = hooks or {}
        self.cache: dict[str, mx.array] = {}
        self.visited: list[str] | None = [] if record_order else None

    def wants(self, name: str) -> bool:
        return name in self.cache_names or name in self.hooks or self.visited is not None

    def visit(self, point: HookPoint, x: mx.array) -> mx.array:
        name = point.name
        if self.visited is not None:
            self.visited.append(name)
        for fn in self.hooks.get(name, ()):
            out = fn(x, point)
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(
                        f"hook on {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}"
                    )
                x = out
        if name in self.cache_names:
            self.cache[name] = x
        return x


@contextmanager
def hook_state(state: HookState):
    """Make ``state`` the active hook state for the forward passes inside the block."""
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def name_hook_points(model: nn.Module) -> None:
    """Give every HookPoint in the module tree its dotted path as its name."""
    for path, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = path


def unknown_name_error(name: str, valid: Sequence[str]) -> ValueError:
    """A one-line error for a hook name that does not exist, listing the closest valid ones."""
    close = difflib.get_close_matches(name, valid, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown hook point {name!r}{hint} (model.hook_names lists all {len(valid)})"
    )


def select_names(names_filter, valid: Sequence[str]) -> list[str]:
    """Resolve a names_filter (None, a name, a list of names or a predicate) to hook names."""
    if names_filter is None:
        return list(valid)
    if callable(names_filter):
        return [n for n in valid if names_filter(n)]
    names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    valid_set = set(valid)
    for name in names:
        if name not in valid_set:
            raise unknown_name_error(name, valid)
    return names


class ActivationCache(dict):
    """Activations by hook name: a plain dict, with a helpful error for a missing name."""

    def __missing__(self, name: str):
        if not self:
            raise KeyError(f"{name!r}: the cache is empty (check names_filter)")
        raise KeyError(
            str(unknown_name_error(name, sorted(self)).args[0]).replace(
                "model.hook_names lists all", "the cache holds"
            )
        )

    def stack(self, hook: str, layers: Iterable[int] | None = None) -> mx.array:
        """Stack ``blocks.{L}.{hook}`` over layers: (n_layers, ...) in layer order."""
        keys = sorted(
            (k for k in self if k.startswith("blocks.") and k.split(".", 2)[2] == hook),
            key=lambda k: int(k.split(".")[1]),
        )
        if layers is not None:
            wanted = {f"blocks.{L}.{hook}" for L in layers}
            keys = [k for k in keys if k in wanted]
        if not keys:
            raise KeyError(f"no blocks.*.{hook} in the cache")
        return mx.stack([self[k] for k in keys])
