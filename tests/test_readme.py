"""The README's examples still match the code: every name its Python blocks import exists,
every `mlx-interp` command line in it parses, and its layout table names what is there."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_blocks_import_what_exists():
    blocks = _blocks("python")
    assert len(blocks) >= 4
    checked = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                for a in node.names:
                    importlib.import_module(a.name)
                    checked.append(a.name)
            elif isinstance(node, ast.ImportFrom):
                mod = importlib.import_module(node.module)
                for a in node.names:
                    if not hasattr(mod, a.name):  # a submodule not yet imported
                        importlib.import_module(f"{node.module}.{a.name}")
                    checked.append(f"{node.module}.{a.name}")
    assert "mlx_interp.analysis.plots" in checked and "mlx_interp.sae.SAE" in checked


def _commands() -> list[list[str]]:
    """The `mlx-interp ...` command lines of the bash blocks, continuation lines joined,
    comments dropped."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("mlx-interp "):
                lines.append(shlex.split(line)[1:])
    return lines


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from mlx_interp.cli.main import build_parser

    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_command_lines_use_existing_commands_and_flags():
    commands = _commands()
    assert len(commands) >= 6
    subs = _subparsers()
    for argv in commands:
        assert argv[0] in subs, f"README: no command {argv[0]!r}"
        known = {s for a in subs[argv[0]]._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(argv[1:])):
            assert flag in known, f"README: `mlx-interp {argv[0]}` has no {flag}"


@pytest.mark.parametrize("argv", [a for a in _commands() if "[" not in " ".join(a)])
def test_plain_command_lines_parse(argv):
    """A command line without optional parts in brackets parses as written."""
    from mlx_interp.cli.main import build_parser

    build_parser().parse_args(argv)


def _layout_rows() -> list[str]:
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def test_layout_table_names_every_module_and_nothing_else():
    named = set()
    for cell in _layout_rows():
        paths = re.findall(r"`([^`]+)`", cell)
        base = Path(paths[0]).parent if "/" in paths[0].rstrip("/") else Path()
        for i, p in enumerate(paths):
            path = Path(p) if i == 0 or "/" in p else base / p
            assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"
            named.add(path.as_posix().rstrip("/"))
    package = ROOT / "mlx_interp"
    present = {
        f"mlx_interp/{p.name}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
    }
    missing = sorted(present - named)
    assert not missing, f"add {missing} to the README's layout table (what step it is)"
