"""Command-line options derived from config dataclasses (mlx_interp.options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from mlx_interp.cli.main import build_parser
from mlx_interp.options import add_options, option, option_fields, options_from_args
from mlx_interp.sae.training import TrainConfig


def _subparser(name: str) -> argparse.ArgumentParser:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_train_sae_defaults_are_the_config_defaults():
    args = build_parser().parse_args(["train-sae", "--hook", "h", "--out", "o"])
    assert options_from_args(TrainConfig, args) == TrainConfig()
    dests = {a.dest for a in _subparser("train-sae")._actions}
    assert {f.name for f in option_fields(TrainConfig)} <= dests


def test_train_sae_flags_map_to_fields():
    argv = ["train-sae", "--hook", "h", "--out", "o", "--arch", "jumprelu", "--d-sae", "64",
            "--lr", "3e-4", "--no-normalize", "--dense-decode", "--checkpoint-every", "7"]  # fmt: skip
    tc = options_from_args(TrainConfig, build_parser().parse_args(argv))
    assert (tc.architecture, tc.d_sae, tc.lr, tc.checkpoint_every) == ("jumprelu", 64, 3e-4, 7)
    assert tc.normalize_activations is False and tc.sparse_decode is False
    with pytest.raises(SystemExit):  # --d-sae and --expansion exclude each other
        build_parser().parse_args(argv + ["--expansion", "4"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-sae", "--hook", "h", "--out", "o", "--arch", "relu"])


@pytest.mark.parametrize("command", ["train-sae", "eval-sae", "features"])
def test_reading_options_are_shared(command):
    flags = {s for a in _subparser(command)._actions for s in a.option_strings}
    assert {"--context-length", "--model-batch-size", "--backend"} <= flags


def test_option_types_groups_and_overrides():
    @dataclass
    class C:
        n: int = option(3, "a count")
        x: float | None = option(None, "a value", group="g")
        y: int | None = option(None, "another", group="g")
        on: bool = option(False, "switch on")
        off: bool = option(True, "switch off", flag="--no-off")
        plain: str = "not an option"

    p = argparse.ArgumentParser()
    add_options(p, C, defaults={"n": 5})
    c = options_from_args(C, p.parse_args(["--x", "0.5", "--on", "--no-off"]), plain="set")
    assert (c.n, c.x, c.y, c.on, c.off, c.plain) == (5, 0.5, None, True, False, "set")
    assert [f.name for f in option_fields(C)] == [f.name for f in fields(C)][:-1]
    with pytest.raises(SystemExit):
        p.parse_args(["--x", "1", "--y", "2"])
    with pytest.raises(SystemExit):
        p.parse_args(["--n", "many"])
