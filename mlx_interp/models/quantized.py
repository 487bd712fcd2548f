"""Quantized weights for the hooked models, in mlx-lm's format and with mlx-lm's conventions.

A quantized layer is MLX's own ``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding`` (packed
``weight`` uint32, ``scales``, ``biases``; affine, groups along the input dimension), made by
``nn.quantize`` with the class predicate mlx-lm uses: every module with ``to_quantized``
(every Linear and the Embedding), per-layer overrides from config.json's ``quantization``
first. So a folder written by ``mlx_lm.convert -q`` loads here, and one written by
``mlx-interp convert --quantize`` loads in ``mlx_lm.load``.

Hook points do not move: quantization swaps the projection layers only, so every hook fires
with the same name and shape as on the float model.

The CPU path. On the CPU, ``mx.quantized_matmul`` is many times slower than a float32
product through an optimised BLAS (see the README's measurements), so on the CPU a quantized
layer dequantizes its weight just before use (in row blocks of at most ``DEQUANT_BLOCK``
elements, so the float copy of the 128256-row unembedding never exists at once) and runs a
plain matmul, evaluated block by block (the float copies would otherwise pile up: see _now).
On a GPU the quantized kernels run, as in mlx-lm.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlx.core as mx
import mlx.nn as nn

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize supports in affine mode
GROUP_SIZES = (32, 64, 128)
MODES = ("affine",)  # the one mode torch_ref dequantizes too; mlx-lm's default
DEQUANT_BLOCK = 1 << 24  # elements per dequantized row block on the CPU (64 MB of float32)


class QuantizationError(ValueError):
    """A quantization request or a quantized folder that cannot be used. One line."""


def check_params(bits: int, group_size: int, mode: str = "affine", where: str = "") -> None:
    """Raise a one-line QuantizationError unless (bits, group_size, mode) is supported."""
    at = f" in {where}" if where else ""
    if mode not in MODES:
        raise QuantizationError(
            f"quantization mode {mode!r}{at} is not supported (supported: {', '.join(MODES)})"
        )
    if bits not in SUPPORTED_BITS:
        raise QuantizationError(
            f"{bits}-bit quantization{at} is not supported; use one of "
            f"{', '.join(map(str, SUPPORTED_BITS))} bits (4 is mlx-lm's default)"
        )
    if group_size not in GROUP_SIZES:
        raise QuantizationError(
            f"group size {group_size}{at} is not supported; use one of "
            f"{', '.join(map(str, GROUP_SIZES))} (64 is mlx-lm's default)"
        )


def stored_quantization(config: Mapping) -> dict | None:
    """config.json's ``quantization`` (mlx-lm's key, or ``quantization_config`` in mlx-lm's
    layout) checked: the defaults {group_size, bits, mode} plus per-layer entries (module path
    in checkpoint names -> a dict of parameters, or False for a layer kept in float).
    None for a float checkpoint."""
    q = config.get("quantization")
    if q is None:
        qc = config.get("quantization_config")
        if isinstance(qc, Mapping) and "bits" in qc and "group_size" in qc:
            q = qc
        elif isinstance(qc, Mapping):
            method = qc.get("quant_method", "?")
            raise QuantizationError(
                f"quantization method {method!r} is not supported; this loads mlx-lm's affine "
                "quantization (config.json 'quantization': group_size, bits)"
            )
    if q is None:
        return None
    if not isinstance(q, Mapping) or "bits" not in q or "group_size" not in q:
        raise QuantizationError(
            "config.json 'quantization' must hold 'group_size' and 'bits' (mlx-lm's format)"
        )
    q = dict(q)
    check_params(q["bits"], q["group_size"], q.get("mode", "affine"), "config.json")
    for path, v in q.items():
        if isinstance(v, Mapping):  # None means MLX's default for the mode, as in to_quantized
            where = f"config.json's entry for {path}"
            check_params(
                v.get("bits") or 4, v.get("group_size") or 64, v.get("mode", "affine"), where
            )
    return q


def _is_packed(path: str, weights: Mapping[str, mx.array]) -> bool:
    w = weights.get(f"{path}.weight")
    return w is not None and w.dtype == mx.uint32


def stored_predicate(quant: Mapping, overrides: Mapping[str, object], weights, folder=""):
    """The class predicate for a stored quantized checkpoint, as mlx-lm's loader has it:
    a per-layer entry first; else quantized iff the layer's ``scales`` are stored, with
    group size and bits read off the tensor shapes. ``overrides`` are the per-layer entries
    keyed by this model's module paths. Missing or inconsistent tensors raise one line."""

    def predicate(path: str, module: nn.Module):
        if path in overrides:
            return overrides[path]
        if not hasattr(module, "to_quantized"):
            return False
        has_scales = f"{path}.scales" in weights
        if not has_scales:
            if _is_packed(path, weights):
                raise QuantizationError(
                    f"{path}.weight in {folder} is packed (uint32) but {path}.scales is missing: "
                    "the folder is incomplete or corrupt; convert or download it again"
                )
            return False
        if f"{path}.weight" not in weights:
            return False  # the loader reports the missing weight
        packed, scales = weights[f"{path}.weight"], weights[f"{path}.scales"]
        in_dims = module.weight.shape[-1]
        n_groups = scales.shape[-1]
        group_size = in_dims // n_groups if n_groups else 0
        bits = packed.shape[-1] * 32 // in_dims
        if n_groups * group_size != in_dims:
            raise QuantizationError(
                f"{path} in {folder}: {n_groups} scale groups do not divide its width "
                f"{in_dims}; the folder does not fit its config.json"
            )
        if packed.shape[-1] * 32 != bits * in_dims:
            raise QuantizationError(
                f"{path}.weight in {folder} has {packed.shape[-1]} packed words per row, which "
                f"is no whole number of bits for width {in_dims}; the folder is corrupt"
            )
        check_params(bits, group_size, quant.get("mode", "affine"), f"{folder} ({path})")
        return {"group_size": group_size, "bits": bits, "mode": quant.get("mode", "affine")}

    return predicate


def on_load_predicate(group_size: int, bits: int):
    """The class predicate for quantizing a float checkpoint: every layer mlx-lm quantizes
    (all with ``to_quantized``). A width the group size does not divide raises one line
    (mlx-lm would silently keep such a layer in float)."""
    check_params(bits, group_size)

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized"):
            return False
        width = module.weight.shape[-1]
        if width % group_size:
            fits = [g for g in GROUP_SIZES if width % g == 0]
            hint = f"use --group-size {fits[-1]}" if fits else "no supported group size does"
            raise QuantizationError(
                f"group size {group_size} does not divide the width {width} of {path}; {hint}"
            )
        return True

    return predicate


# --------------------------------------------------------------- the hooked layers
def _dequantized_product(x: mx.array, layer: nn.Module) -> mx.array:
    """x (..., in) @ dequantize(weight).T -> (..., out), the weight dequantized in row blocks."""
    w, s, b = layer["weight"], layer["scales"], layer.get("biases")
    # Scales stored in half precision (mlx-lm's usual) give the weight in x's precision.
    s, b = s.astype(x.dtype), (None if b is None else b.astype(x.dtype))
    rows = max(1, DEQUANT_BLOCK // max(1, w.shape[1] * 32 // layer.bits))
    outs = []
    for i in range(0, w.shape[0], rows):
        sl = slice(i, i + rows)
        wf = mx.dequantize(
            w[sl], s[sl], None if b is None else b[sl], layer.group_size, layer.bits, layer.mode
        )
        outs.append(_now(x @ wf.T))
    return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)


def _now(y: mx.array) -> mx.array:
    """Evaluate y at once, so that one block's float weight is freed before the next is made.

    The CPU backend allocates an operation's output when the operation is queued, not when it
    runs: evaluated as one graph, a forward pass would hold every layer's dequantized weight
    at once (30 GB for an 8B model). Inside mx.compile or mx.vmap, where evaluation is not
    allowed, y stays lazy. mx.grad is unaffected (it evaluates the forward values only).
    """
    try:
        mx.eval(y)
    except ValueError:
        pass
    return y


def _quantized_product(x: mx.array, layer: nn.Module) -> mx.array:
    if mx.default_device() == mx.cpu:
        return _dequantized_product(x, layer)
    s, b = layer["scales"], layer.get("biases")
    out = mx.quantized_matmul(
        x, layer["weight"], scales=s.astype(x.dtype), biases=None if b is None else b.astype(x.dtype),
        transpose=True, group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
    )  # fmt: skip
    return out.astype(x.dtype)


class QuantizedLinear(nn.QuantizedLinear):
    """MLX's QuantizedLinear (same parameters, same file names) with the CPU path above."""

    def __call__(self, x: mx.array) -> mx.array:
        y = _quantized_product(x, self)
        return y + self["bias"] if "bias" in self else y


class QuantizedEmbedding(nn.QuantizedEmbedding):
    """MLX's QuantizedEmbedding; ``as_linear`` (a tied unembedding) takes the CPU path above.

    ``compute_dtype`` (set by the loader to the activations' dtype) is the dtype of the
    embeddings it returns: half-precision scales do not round float32 embeddings.
    """

    compute_dtype = None

    def __call__(self, x: mx.array) -> mx.array:
        s, b = self["scales"][x], self.get("biases")
        b = None if b is None else b[x]
        if self.compute_dtype is not None:
            s, b = (
                s.astype(self.compute_dtype),
                (None if b is None else b.astype(self.compute_dtype)),
            )
        w = self["weight"][x]
        return mx.dequantize(w, s, b, self.group_size, self.bits, self.mode)

    def as_linear(self, x: mx.array) -> mx.array:
        return _quantized_product(x, self)


def quantize(model: nn.Module, group_size: int, bits: int, class_predicate) -> None:
    """``nn.quantize`` with ``class_predicate`` (mlx-lm's), then the CPU-aware layer classes.

    Only the structure changes here; parameters made for the new layers stay lazy until the
    real weights are loaded over them, so nothing is computed or allocated.
    """
    nn.quantize(model, group_size, bits, class_predicate=class_predicate)
    for _, m in model.named_modules():
        # Same parameters and attributes: only the methods change.
        if type(m) is nn.QuantizedLinear:
            m.__class__ = QuantizedLinear
        elif type(m) is nn.QuantizedEmbedding:
            m.__class__ = QuantizedEmbedding


def quantized_paths(model: nn.Module) -> dict[str, dict]:
    """Module path -> {group_size, bits, mode} for every quantized layer of the model."""
    return {
        path: {"group_size": m.group_size, "bits": m.bits, "mode": m.mode}
        for path, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }


def summary(model: nn.Module) -> dict | None:
    """{bits, group_size, mode, n_layers} of the most common setting, None if not quantized."""
    paths = quantized_paths(model)
    if not paths:
        return None
    settings = [tuple(sorted(v.items())) for v in paths.values()]
    common = dict(max(set(settings), key=settings.count))
    return {**common, "n_quantized_layers": len(paths)}


def is_quantization_param(path: str) -> bool:
    """Whether a flat parameter name is a quantized layer's ``scales`` or ``biases``."""
    return path.endswith((".scales", ".biases"))
