"""The real embedded model (SmolLM2-135M): MLX vs torch_ref hook by hook, and vs transformers.

Random checkpoints give nearly uniform attention; this model's attention is real, so a
wrong rotary embedding or mask shows here in the patterns as well as in the logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlx_interp import load_model
from mlx_interp.parity import TOLERANCES, compare_backends, relative_error
from torch_ref import load_model as load_torch

TEXTS = ["The capital of France is", "def add(a, b):\n    return a + b"]


@pytest.fixture(scope="module")
def models():
    return load_model("smollm2-135m"), load_torch("smollm2-135m", dtype="float32")


def test_every_hook_agrees_with_torch_ref(models):
    model, ref = models
    report = compare_backends("smollm2-135m", TEXTS, mlx_model=model, ref_model=ref)
    assert report.n_tokens > 10
    bad = report.first_divergence
    assert bad is None, f"first divergence at {bad.name}\n{report.table(only_failures=True)}"


def test_logits_and_patterns_agree_with_transformers(models):
    from transformers import AutoModelForCausalLM

    model, _ = models
    hf = AutoModelForCausalLM.from_pretrained(
        model.folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens = model.to_tokens(TEXTS[0])
    layers = [0, 14, 29]
    logits, cache = model.run_with_cache(
        tokens, names_filter=[f"blocks.{i}.attn.hook_pattern" for i in layers]
    )
    with torch.no_grad():
        out = hf(torch.tensor(np.asarray(tokens), dtype=torch.long), output_attentions=True)
    tol = TOLERANCES["float32"]
    assert relative_error(np.array(logits), out.logits.numpy()) < tol["logits"]
    for i in layers:
        pattern = np.array(cache[f"blocks.{i}.attn.hook_pattern"])
        assert relative_error(pattern, out.attentions[i].numpy()) < tol["hooks"], i
    # real attention is peaked: the patterns would not hide a missing rotary embedding
    assert pattern.max(-1).mean() > 0.5


def test_the_model_knows_the_capital_of_france(models):
    model, _ = models
    logits = model(TEXTS[0])
    assert model.tokenizer.decode([int(np.argmax(np.array(logits[0, -1])))]) == " Paris"


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_half_precision_within_tolerance(models, dtype):
    _, ref = models
    report = compare_backends("smollm2-135m", TEXTS[0], dtype=dtype, ref_model=ref)
    bad = report.first_divergence
    assert bad is None, f"first divergence at {bad.name}\n{report.table(only_failures=True)}"
