"""Cross-checking MLX against the PyTorch reference, hook point by hook point.

This module holds the one tolerance table of the project (the parity tests, the
``mlx-interp parity`` command and the demo all read it) and the one definition of the
error measure: the relative error ||a - b|| / ||b|| over a whole activation, in float64.
Entries that are -inf in both (masked attention scores) are left out; an entry that is
infinite in one backend only makes the error infinite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .backends import to_numpy

if TYPE_CHECKING:
    from .model import HookedModel
from .io import to_json

# Relative error allowed between MLX (at the given dtype) and torch_ref in float32.
# float32 against float32 is the contract; the half-precision rows are what rounding of
# 10-bit (float16) and 7-bit (bfloat16) mantissas gives over a few layers.
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"logits": 1e-4, "hooks": 1e-4},
    "float16": {"logits": 2e-2, "hooks": 2e-2},
    "bfloat16": {"logits": 6e-2, "hooks": 6e-2},
}


def relative_error(a, b) -> float:
    """||a - b|| / ||b|| in float64, skipping entries that are -inf in both."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(finite_a, finite_b) or not np.array_equal(a[~finite_b], b[~finite_b]):
        return float("inf")
    diff = np.linalg.norm(a[finite_b] - b[finite_b])
    norm = np.linalg.norm(b[finite_b])
    return float(diff / norm) if norm > 0 else float(diff)


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    rel_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= self.tolerance


@dataclass
class ParityReport:
    """Per-hook relative errors of MLX against torch_ref, in forward order, then the logits."""

    source: str
    dtype: str
    n_tokens: int
    rows: list[Row] = field(default_factory=list)
    against: str = "torch_ref"  # what the MLX model is compared with

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    @property
    def worst(self) -> Row:
        return max(self.rows, key=lambda r: r.rel_error / r.tolerance)

    def table(self, only_failures: bool = False) -> str:
        lines = [f"{'hook point':44s} {'shape':>22s} {'rel. error':>10s} {'tol.':>8s}"]
        for r in self.rows:
            if only_failures and r.ok:
                continue
            mark = "" if r.ok else "  <-- over tolerance"
            lines.append(
                f"{r.name:44s} {str(r.shape):>22s} {r.rel_error:10.2e} {r.tolerance:8.0e}{mark}"
            )
        return "\n".join(lines)

    def by_kind(self) -> str:
        """Markdown table: the worst error of each kind of hook point over all layers."""
        worst: dict[str, Row] = {}
        for r in self.rows:
            kind = r.name.split(".", 2)[2] if r.name.startswith("blocks.") else r.name
            if kind not in worst or r.rel_error > worst[kind].rel_error:
                worst[kind] = r
        lines = ["| hook point (worst layer) | relative error | tolerance |", "| --- | --- | --- |"]
        for kind, r in worst.items():
            flag = "" if r.ok else " **over**"
            lines.append(f"| `{kind}` ({r.name}) | {r.rel_error:.1e}{flag} | {r.tolerance:.0e} |")
        return "\n".join(lines)

    def summary(self) -> str:
        worst = self.worst
        verdict = "PASS" if self.ok else f"FAIL, first divergence at {self.first_divergence.name}"
        return (
            f"parity {self.dtype} MLX vs {self.against} on {self.source} ({self.n_tokens} tokens, "
            f"{len(self.rows)} tensors): {verdict}; worst {worst.name} {worst.rel_error:.2e}"
        )

    def to_json(self) -> str:
        # strict JSON: an infinite error (non-finite entries in one backend only) is null
        rows = [
            {
                **asdict(r),
                "rel_error": r.rel_error if np.isfinite(r.rel_error) else None,
                "ok": r.ok,
            }
            for r in self.rows
        ]
        return to_json(
            {
                "source": self.source,
                "against": self.against,
                "dtype": self.dtype,
                "n_tokens": self.n_tokens,
                "ok": self.ok,
                "rows": rows,
            },
            "the parity report",
        )


def compare_caches(
    mlx_cache: dict,
    ref_cache: dict,
    mlx_logits,
    ref_logits,
    order: list[str],
    dtype: str,
    source: str = "",
    n_tokens: int = 0,
) -> ParityReport:
    """Compare two caches (name -> array-like) and logits; rows follow ``order``."""
    tol = TOLERANCES[dtype]
    report = ParityReport(source, dtype, n_tokens)
    for name in order:
        if name in mlx_cache and name in ref_cache:
            a, b = to_numpy(mlx_cache[name], np.float64), to_numpy(ref_cache[name], np.float64)
            report.rows.append(Row(name, tuple(b.shape), relative_error(a, b), tol["hooks"]))
    if mlx_logits is not None and ref_logits is not None:
        b = to_numpy(ref_logits, np.float64)
        report.rows.append(
            Row(
                "logits",
                tuple(b.shape),
                relative_error(to_numpy(mlx_logits, np.float64), b),
                tol["logits"],
            )
        )
    return report


def compare_backends(
    source: str,
    text: str | list[str],
    dtype: str = "float32",
    mlx_model: HookedModel = None,
    ref_model=None,
    quantize: int | None = None,
    group_size: int = 64,
) -> ParityReport:
    """Run MLX (at ``dtype``) and torch_ref (float32, CPU) on the same tokens, compare all hooks.

    With ``quantize=bits``, MLX runs the model quantized and torch_ref runs the dequantized
    weights (it unpacks mlx-lm's format itself): both read one mlx-lm folder written by
    ``convert`` into a temporary folder, the same weights ``load_model(quantize=)`` makes.
    """
    if quantize is not None and (mlx_model is None or ref_model is None):
        import tempfile
        from pathlib import Path

        from .convert import convert

        with tempfile.TemporaryDirectory(prefix="mlx-interp-parity-") as tmp:
            folder = convert(source, Path(tmp) / "q", quantize, group_size, dtype="float32")
            report = compare_backends(
                folder, text, dtype, _load_mlx(folder, dtype), _load_ref(folder)
            )
        report.source = f"{source} ({quantize}-bit, group size {group_size})"
        return report
    import torch

    model = mlx_model or _load_mlx(source, dtype)
    ref = ref_model or _load_ref(source)
    tokens, mask = model.tokenize(text)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    t_tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)
    t_mask = None if mask is None else torch.tensor(np.asarray(mask))
    ref_logits, ref_cache = ref.run_with_cache(t_tokens, attention_mask=t_mask)
    return compare_caches(
        cache, ref_cache, logits, ref_logits, model.hook_names, dtype, str(source), tokens.size
    )


def _load_mlx(source, dtype: str):
    from .model import load_model

    return load_model(source, dtype=dtype)


def _load_ref(source):
    from torch_ref import load_model as load_torch

    return load_torch(source, device="cpu", dtype="float32")


def quantization_error(
    source: str, text: str | list[str], bits: int, group_size: int = 64, float_model=None
) -> ParityReport:
    """The error quantization itself makes, per hook point: MLX with ``bits``-bit weights
    against MLX in float32, on the same tokens (relative error, as everywhere here).

    Not a contract: the rows' tolerance is infinite; ``per_layer`` gives the curves.
    """
    from .model import load_model

    f = float_model or load_model(source)
    q = load_model(source, quantize=bits, group_size=group_size)
    tokens, mask = f.tokenize(text)
    f_logits, f_cache = f.run_with_cache(tokens, attention_mask=mask)
    q_logits, q_cache = q.run_with_cache(tokens, attention_mask=mask)
    report = ParityReport(f"{source} ({bits}-bit vs float32)", f"{bits}-bit", tokens.size)
    for name in f.hook_names:
        b = to_numpy(f_cache[name], np.float64)
        report.rows.append(
            Row(name, b.shape, relative_error(to_numpy(q_cache[name], np.float64), b), np.inf)
        )
    b = to_numpy(f_logits, np.float64)
    report.rows.append(
        Row("logits", b.shape, relative_error(to_numpy(q_logits, np.float64), b), np.inf)
    )
    return report


def per_layer(report: ParityReport, kinds=("hook_resid_post", "hook_attn_out", "hook_mlp_out")):
    """{kind: [relative error of blocks.L.<kind> for L = 0, 1, ...]} from a report's rows."""
    out: dict[str, list[float]] = {k: [] for k in kinds}
    for r in report.rows:
        parts = r.name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blocks" and parts[2] in out:
            out[parts[2]].append(r.rel_error)
    return out


def compare_models(
    source: str, against: str, text: str | list[str], dtype: str = "float32",
    mlx_model=None, against_model=None, quantize: int | None = None, group_size: int = 64,
) -> ParityReport:  # fmt: skip
    """Two checkpoints of one architecture in MLX, hook by hook, on the same tokens (those of
    ``source``'s tokenizer); ``against`` is the reference. A failure names the first hook
    point, in forward order, over the tolerance of ``dtype``: where the two models part. ``quantize``: load ``source`` quantized (``against`` as stored)."""
    from .model import load_model

    model = mlx_model or load_model(source, dtype=dtype, quantize=quantize, group_size=group_size)
    other = against_model or load_model(against, dtype=dtype)
    a, b = model.cfg, other.cfg
    for key in ("architecture", "n_layers", "d_model", "d_vocab"):
        if getattr(a, key) != getattr(b, key):
            raise ValueError(
                f"{source} and {against} differ in {key} ({getattr(a, key)} vs {getattr(b, key)}); "
                "--against compares two checkpoints of the same architecture and size"
            )
    if model.hook_names != other.hook_names:
        raise ValueError(f"{source} and {against} have different hook points")
    tokens, mask = model.tokenize(text)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    ref_logits, ref_cache = other.run_with_cache(tokens, attention_mask=mask)
    report = compare_caches(
        cache, ref_cache, logits, ref_logits, model.hook_names, dtype, str(source), tokens.size
    )
    report.against = str(against)
    return report
