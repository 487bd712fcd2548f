"""Command-line options derived from configuration dataclasses, so a command that mirrors a
config never copies its fields by hand.

A field declared with :func:`option` is an option: its name gives the flag (``lr_warmup_steps``
-> ``--lr-warmup-steps``) unless ``flag`` says otherwise, its type and default give argparse's
``type`` and ``default``, and ``help`` the help text. A ``bool`` field becomes a switch that
flips its default (``normalize_activations: bool = True`` with ``flag="--no-normalize"`` is
``store_false``). Fields that share a ``group`` are mutually exclusive; ``type`` parses a
flag whose field type cannot (a list from "128,512"). Plain fields (no ``option``) stay off
the command line.

    @dataclass
    class Config:
        steps: int = option(100, "optimisation steps")

    add_options(parser, Config)                # --steps N
    cfg = options_from_args(Config, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

_KEY = "mlx_interp.option"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: typing.Sequence | None = None,
    group: str | None = None,
    metavar: str | None = None,
    type: typing.Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    spec = {"help": help, "flag": flag, "choices": choices, "group": group, "metavar": metavar,
            "type": type}  # fmt: skip
    return dataclasses.field(default=default, metadata={_KEY: spec})


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` declared with :func:`option`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _value_type(annotation) -> type:
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if len(args) != 1:
            raise TypeError(
                f"an option's type must be one type or that type | None, not {annotation}"
            )
        return args[0]
    return annotation


def add_options(
    parser: argparse.ArgumentParser, cls, *, defaults: dict[str, Any] | None = None
) -> None:
    """Add one argument per :func:`option` field of ``cls`` to ``parser`` (``dest`` is the
    field name); ``defaults`` overrides a field's default for this parser."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in option_fields(cls):
        spec = f.metadata[_KEY]
        flag = spec["flag"] or "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": spec["help"]}
        typ = spec.get("type") or _value_type(hints[f.name])
        if typ is bool:
            kw["action"] = "store_false" if default else "store_true"
        else:
            kw["type"] = typ
            if spec["choices"] is not None:
                kw["choices"] = list(spec["choices"])
            if spec["metavar"] is not None:
                kw["metavar"] = spec["metavar"]
        target = parser
        if spec["group"]:
            if spec["group"] not in groups:
                groups[spec["group"]] = parser.add_mutually_exclusive_group()
            target = groups[spec["group"]]
        target.add_argument(flag, **kw)


def options_from_args(cls, args: argparse.Namespace, **fields: Any):
    """An instance of ``cls`` from parsed ``args`` (its :func:`option` fields) and ``fields``."""
    values = {f.name: getattr(args, f.name) for f in option_fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fields})
