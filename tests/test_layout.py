"""The package layout: no import cycle inside mlx_interp, no module importing a layer above
its own, and torch_ref importable and runnable where MLX is not installed."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlx_interp"

# The layers of mlx_interp, lowest first, in the order of DESIGN.md's data flow: a module
# may import its own layer and those below it, never one above. A layer is a top-level
# module or subpackage of mlx_interp ("mlx_interp" itself is the package's __init__).
LAYERS = [
    # no model, no MLX needed: files, BLAS binding, machine facts, hook points, options, checks,
    # several processes and their launcher
    {
        "mlx_interp",
        "io",
        "blas",
        "allocator",
        "system",
        "hooks",
        "options",
        "checks",
        "distributed",
        "launch",
    },
    {"sources"},  # model folders: aliases, repo ids, GGUF conversion (shared with torch_ref)
    {"models"},  # one file per architecture
    {"model"},  # HookedModel, load_model
    {"convert", "backends"},  # model conversion; the one module that knows both backends
    {"data"},  # corpora, splits, prompts
    {"activations"},  # windows, rows, the stream, the shard store, tokens
    {"analysis"},  # measures, plots, interventions, run
    {"sae"},
    {"features"},
    {"parity"},  # MLX vs torch_ref
    {"report"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module of mlx_interp."""
    mods = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


@functools.cache
def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported mlx_interp module: line}, from every import statement, top-level
    and inside functions (relative imports resolved). ``from P import x`` counts as
    importing P.x where that is a module, and P as well unless P is a package that contains
    the importing module (Python has initialised it already)."""
    mods = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_pkg) in mods.items():
        deps: dict[str, int] = {}
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                subs = [f"{base_name}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in mods]
                if len(targets) < len(subs) or not (name + ".").startswith(base_name + "."):
                    targets.append(base_name)
            for t in targets:
                # `import a.b.c` imports a.b.c; its parents are ancestors, initialised first
                if t in mods and t != name:
                    deps.setdefault(t, node.lineno)
        graph[name] = deps
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, {})):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    # cli.main imports its command families inside build_parser, the demo inside cmd_demo
    assert {"mlx_interp.cli.activations", "mlx_interp.cli.demo"} <= set(g["mlx_interp.cli.main"])
    assert "mlx_interp.sae.config" in g["mlx_interp.sae.files"]  # from .config import ...
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    unknown = sorted({_layer(m) for m in import_graph()} - set(RANK))
    assert not unknown, f"add {unknown} to LAYERS in tests/test_layout.py (lowest layer first)"


def test_no_module_imports_a_higher_layer():
    bad = []
    for m, deps in import_graph().items():
        for d, line in deps.items():
            if RANK.get(_layer(d), -1) > RANK.get(_layer(m), len(LAYERS)):
                bad.append(f"{m} (line {line}) imports {d}")
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(sorted(bad))


# torch_ref is the independent reference: it may use torch, numpy, safetensors,
# transformers and these MLX-free modules of mlx_interp that hold the shared contract.
SHARED = {"mlx_interp.sources", "mlx_interp.sae.config", "mlx_interp.sae.files"}


def test_torch_ref_imports_only_the_shared_modules():
    used = set()
    for f in (ROOT / "torch_ref").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx"):
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("mlx")}
    assert used <= SHARED, f"torch_ref imports {sorted(used - SHARED)} of mlx_interp"


# As if MLX were not installed: every finder on sys.meta_path finds no mlx (or mlx_lm) module,
# so `import mlx` raises ModuleNotFoundError and importlib.util.find_spec("mlx") is None.
HIDE_MLX = """
import sys

class HideMLX:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [HideMLX(f) for f in sys.meta_path]
"""


def _run_without_mlx(code: str, tmp_path: Path) -> str:
    script = tmp_path / "no_mlx.py"
    script.write_text(HIDE_MLX + textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_shared_modules_import_no_mlx(tmp_path):
    out = _run_without_mlx(
        """
        import mlx_interp.sources, mlx_interp.sae.config, mlx_interp.sae.files, mlx_interp.data
        import mlx_interp, mlx_interp.io, mlx_interp.options
        try:
            import mlx.core
        except ModuleNotFoundError as e:
            print("hidden:", e)
        import importlib.util
        assert importlib.util.find_spec("mlx") is None
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm")))
        """,
        tmp_path,
    )
    assert "hidden: No module named 'mlx'" in out and out.strip().endswith("[]")


def test_torch_ref_runs_without_mlx(tmp_path):
    """torch_ref loads the embedded SmolLM2 and an SAE folder, runs a forward pass and an
    encode, with `import mlx` failing."""
    out = _run_without_mlx(
        f"""
        import numpy as np, torch
        import torch_ref
        from torch_ref.sae import SAE
        from mlx_interp.sae.config import SAEConfig, weight_names

        model = torch_ref.load_model("smollm2-135m")
        hook = "blocks.3.hook_resid_post"
        logits, cache = model.run_with_cache(model.to_tokens(["The cat sat on the"]),
                                             names_filter=[hook])
        d = model.cfg.d_model
        cfg = SAEConfig(d_in=d, d_sae=2 * d, architecture="topk", k=8, hook_name=hook)
        rng = np.random.default_rng(0)
        params = {{k: (rng.standard_normal(s) * 0.05).astype(np.float32)
                   for k, s in weight_names(cfg).items()}}
        SAE(cfg, params).save({str(tmp_path / "sae")!r})
        sae = SAE.load({str(tmp_path / "sae")!r})
        f = sae.encode(cache[hook][0])
        assert torch.isfinite(logits).all() and logits.shape[-1] == model.cfg.d_vocab
        assert f.shape == (cache[hook].shape[1], 2 * d) and ((f > 0).sum(-1) <= 8).all()
        print("ok", tuple(logits.shape), tuple(f.shape),
              sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm")))
        """,
        tmp_path,
    )
    assert out.startswith("ok") and out.strip().endswith("[]"), out
