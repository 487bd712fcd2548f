"""Argument checks shared by the config dataclasses and the public functions.

Each raises a one-line ValueError naming the argument, what it must be and what it got,
before anything is computed or written; the command line inherits them.
"""

from __future__ import annotations

import math
import numbers


def integer(name: str, value, *, minimum: int | None = 1, maximum: int | None = None,
            none_ok: bool = False) -> int | None:  # fmt: skip
    """An integer in [minimum, maximum] (bools and non-integral floats are refused)."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:  # fmt: skip
    """A finite real number in the given range (open or closed at each end)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            rng = f"in {lo}, {hi}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"{'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be {rng}, got {value:g}")
    return value


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}")
    return value


def context_length(model, value, name: str = "context_length") -> int:
    """Tokens per window: at least 2 and at most the model's context length."""
    n_ctx = model.cfg.n_ctx
    value = integer(name, value, minimum=2)
    if value > n_ctx:
        raise ValueError(
            f"{name}={value} is longer than the model's context length n_ctx={n_ctx}; "
            f"give at most {n_ctx}"
        )
    return value
