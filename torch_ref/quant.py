"""Affine group quantization (mlx-lm's format), undone in plain PyTorch.

A quantized linear layer is stored as three tensors: ``weight`` (out, in * bits / 32) uint32,
``scales`` and ``biases`` (out, in / group_size). Each row of ``weight`` is a little-endian
bit stream of ``bits``-bit unsigned integers q; the real weight is ``scale * q + bias``, with
one scale and bias per group of ``group_size`` consecutive inputs. This file reads that
definition directly (one bit at a time), independently of MLX's kernels.
"""

from __future__ import annotations

import torch


def dequantize(
    packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """(out, words) uint32 + (out, groups) scales and biases -> (out, in) float32 weight,
    in = words * 32 / bits = groups * group_size."""
    out_dims, words = packed.shape
    groups = scales.shape[-1]
    in_dims = words * 32 // bits
    if words * 32 != in_dims * bits or groups * group_size != in_dims:
        raise ValueError(
            f"packed shape {tuple(packed.shape)} and {groups} groups do not fit "
            f"{bits} bits with group size {group_size}"
        )
    words_64 = packed.to(torch.int64) & 0xFFFFFFFF
    stream = (words_64[..., None] >> torch.arange(32)) & 1  # (out, words, 32), LSB first
    place = 2 ** torch.arange(bits)
    q = (stream.reshape(out_dims, in_dims, bits) * place).sum(-1).to(torch.float32)
    q = q.reshape(out_dims, groups, group_size)
    w = q * scales.float()[..., None] + biases.float()[..., None]
    return w.reshape(out_dims, in_dims)


def dequantize_checkpoint(weights: dict[str, torch.Tensor], quant: dict) -> dict[str, torch.Tensor]:
    """Every ``X.weight`` with ``X.scales`` and ``X.biases`` replaced by its float32 weight.

    ``quant``: config.json's ``quantization`` (bits, group_size; per-layer entries by path).
    """
    out = dict(weights)
    for name in [n for n in weights if n.endswith(".scales")]:
        base = name[: -len(".scales")]
        if f"{base}.biases" not in weights or f"{base}.weight" not in weights:
            raise ValueError(f"{base}: a quantized layer needs weight, scales and biases")
        layer = quant.get(base) if isinstance(quant.get(base), dict) else {}
        if quant.get("mode", "affine") != "affine" or layer.get("mode", "affine") != "affine":
            raise ValueError(f"{base}: only affine quantization is supported")
        # A per-layer None is MLX's default for affine: 4 bits, groups of 64.
        bits = layer.get("bits", quant["bits"]) if layer else quant["bits"]
        group_size = layer.get("group_size", quant["group_size"]) if layer else quant["group_size"]
        bits, group_size = bits or 4, group_size or 64
        out[f"{base}.weight"] = dequantize(
            weights[f"{base}.weight"], weights[name], weights[f"{base}.biases"], bits, group_size
        )
        del out[name], out[f"{base}.biases"]
    return out
