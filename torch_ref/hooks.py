"""Hook points: identity modules with a name, where activations can be read or replaced."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
NameFilter = None | str | Iterable[str] | Callable[[str], bool]


class HookPoint(nn.Module):
    """Identity on its input, unless hook functions are attached.

    Each attached function is called as fn(tensor, hook) in order; a returned tensor
    replaces the activation, None leaves it unchanged. When `cache` is a dict the final
    value (after the hooks) is stored there under `name`, detached and copied.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # the full dotted name, set by name_hook_points
        self.fns: list[HookFn] = []
        self.cache: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook on {self.name} returned {got}; expected a tensor of shape {tuple(x.shape)}"
                    )
                x = out
        if self.cache is not None:
            self.cache[self.name] = x.detach().clone()
        return x

    def extra_repr(self) -> str:
        return repr(self.name)


def name_hook_points(module: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint in module its dotted path as name; return them in registration order.

    Modules register their hook points in forward order, so this is also the forward order.
    """
    points: dict[str, HookPoint] = {}
    for path, sub in module.named_modules():
        if isinstance(sub, HookPoint):
            sub.name = path
            points[path] = sub
    return points


def unknown_name_error(name: str, valid: list[str]) -> ValueError:
    """A one-line error for an unknown hook name that lists the closest valid names."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"closest valid names: {', '.join(close)}" if close else "see .hook_names for all names"
    return ValueError(f"unknown hook name {name!r}; {hint}")


def select_names(names_filter: NameFilter, valid: list[str]) -> list[str]:
    """Resolve a names_filter (None, a name, a list of names or a predicate) to hook names.

    Raises ValueError for a name that is not a hook point.
    """
    if names_filter is None:
        return list(valid)
    if callable(names_filter):
        return [name for name in valid if names_filter(name)]
    wanted = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    known = set(valid)
    for name in wanted:
        if name not in known:
            raise unknown_name_error(name, valid)
    return [name for name in valid if name in set(wanted)]


@contextmanager
def attached(
    points: dict[str, HookPoint],
    fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
    cache: dict[str, torch.Tensor] | None = None,
    cache_names: Iterable[str] = (),
) -> Iterator[None]:
    """Attach hook functions and caching for the duration of a `with` block, then remove them."""
    try:
        for name_or_pred, fn in fwd_hooks:
            if isinstance(name_or_pred, str):
                if name_or_pred not in points:
                    raise unknown_name_error(name_or_pred, list(points))
                points[name_or_pred].fns.append(fn)
            elif callable(name_or_pred):
                for name, point in points.items():
                    if name_or_pred(name):
                        point.fns.append(fn)
            else:
                raise TypeError(f"hook target must be a name or a predicate, got {name_or_pred!r}")
        for name in cache_names:
            points[name].cache = cache
        yield
    finally:
        for point in points.values():
            point.fns.clear()
            point.cache = None
