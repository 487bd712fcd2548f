"""Quantized models, hook by hook: our quantized MLX against torch_ref on the dequantized
weights (torch_ref unpacks mlx-lm's format itself, bit by bit), within the float32
tolerance of parity.TOLERANCES, for folders written by our convert and by mlx_lm.convert
(uniform 4-bit and 8-bit, and mlx-lm's mixed 3/6-bit recipe with per-layer entries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LLAMA3_QUANT, hub_style, write_checkpoint
from mlx_interp.convert import convert
from mlx_interp.model import load_model
from mlx_interp.parity import TOLERANCES, compare_caches
from torch_ref import load_model as load_torch


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return hub_style(
        write_checkpoint(tmp_path_factory.mktemp("llama3"), "llama", LLAMA3_QUANT, 20.0)
    )


@pytest.mark.parametrize("writer", ["ours-4", "ours-8", "mlx_lm-4", "mlx_lm-mixed_3_6"])
def test_every_hook_matches_torch_ref_on_dequantized_weights(llama3, tmp_path, writer):
    who, bits = writer.split("-", 1)
    out = tmp_path / writer
    if who == "ours":
        convert(llama3, out, quantize=int(bits))
    else:
        import mlx_lm

        kw = {"q_bits": 4, "q_group_size": 64} if bits == "4" else {"quant_predicate": bits}
        mlx_lm.convert(str(llama3), str(out), quantize=True, **kw)
    model, ref = load_model(out), load_torch(out, dtype="float32")
    tokens = np.random.default_rng(0).integers(1, 512, (2, 21)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 15:] = 0  # padding too
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    t_logits, t_cache = ref.run_with_cache(
        torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)
    )
    report = compare_caches(cache, t_cache, logits, t_logits, model.hook_names, "float32")
    assert len(report.rows) == len(model.hook_names) + 1
    assert report.ok, report.summary()
    assert report.worst.rel_error < TOLERANCES["float32"]["hooks"]


def test_a_wrong_unpacking_is_caught(llama3, tmp_path):
    """torch_ref reading the bits in the wrong order must fail parity: the check can fail."""
    from torch_ref import quant

    out = convert(llama3, tmp_path / "q4", quantize=4)
    model = load_model(out)
    good = quant.dequantize

    def reversed_bits(packed, scales, biases, bits, group_size):
        w = good(packed, scales, biases, bits, group_size)
        return w.flip(-1)

    quant.dequantize = reversed_bits
    try:
        ref = load_torch(out)
    finally:
        quant.dequantize = good
    tokens = np.random.default_rng(0).integers(1, 512, (1, 9)).astype(np.int32)
    logits, cache = model.run_with_cache(tokens)
    t_logits, t_cache = ref.run_with_cache(torch.tensor(tokens, dtype=torch.long))
    report = compare_caches(cache, t_cache, logits, t_logits, model.hook_names, "float32")
    assert not report.ok and report.first_divergence.name == "hook_embed"
