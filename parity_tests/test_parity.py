"""MLX against torch_ref hook by hook, and both against Hugging Face transformers.

Tolerances come from ``mlx_interp.parity.TOLERANCES`` (the one table); a failure names
the first hook point, in forward order, whose relative error is over tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CHECKPOINTS, write_checkpoint
from mlx_interp import load_model
from mlx_interp.parity import TOLERANCES, compare_caches, relative_error
from torch_ref import load_model as load_torch

TOL = TOLERANCES["float32"]


def assert_parity(report):
    bad = report.first_divergence
    assert bad is None, (
        f"first divergence at {bad.name}: relative error {bad.rel_error:.2e} > {bad.tolerance:.0e}\n"
        + report.table(only_failures=True)
    )


def hf_logits(folder, tokens, attention_mask=None):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    mask = positions = None
    if attention_mask is not None:
        # transformers counts positions from the left edge even when padded; we count real
        # tokens only (so left padding changes nothing), and pass the same positions to HF.
        mask = torch.tensor(attention_mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return hf(torch.tensor(tokens), attention_mask=mask, position_ids=positions).logits.numpy()


def both_backends(folder, tokens, attention_mask=None, dtype="float32"):
    model = load_model(folder, dtype=dtype)
    ref = load_torch(folder, dtype="float32")
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    t_mask = None if attention_mask is None else torch.tensor(attention_mask)
    ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens), attention_mask=t_mask)
    report = compare_caches(cache, ref_cache, logits, ref_logits, model.hook_names, dtype)
    return model, ref, logits, ref_logits, report


def random_tokens(vocab, batch=2, pos=24, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (batch, pos))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_every_hook_and_the_logits_agree(checkpoint_dir, name):
    folder = checkpoint_dir(name)
    tokens = random_tokens(512)
    model, ref, logits, ref_logits, report = both_backends(folder, tokens)
    assert len(report.rows) == len(model.hook_names) + 1
    assert_parity(report)
    hf = hf_logits(folder, tokens)
    assert relative_error(np.array(logits), hf) < TOL["logits"]
    assert relative_error(ref_logits.numpy(), hf) < TOL["logits"]


@pytest.mark.parametrize("name", ["gpt2-peaked", "llama3-rope-gqa"])
def test_padded_batches_agree(checkpoint_dir, name):
    """Left padding exercises the explicit positions and the key mask in both backends."""
    folder = checkpoint_dir(name)
    tokens = random_tokens(512, pos=16, seed=3)
    mask = np.ones_like(tokens)
    mask[0, :5] = 0  # left-padded row
    mask[1, 12:] = 0  # right-padded row
    _, _, logits, _, report = both_backends(folder, tokens, attention_mask=mask)
    assert_parity(report)
    hf = hf_logits(folder, tokens, mask)
    real = mask.astype(bool)
    assert relative_error(np.array(logits)[real], hf[real]) < TOL["logits"]


@pytest.mark.parametrize("name", ["gpt2-peaked", "llama-gqa-untied"])
def test_interventions_agree(checkpoint_dir, name):
    """Ablating a component and editing a pattern give the same logits in both backends."""
    folder = checkpoint_dir(name)
    model, ref = load_model(folder), load_torch(folder)
    tokens = random_tokens(512, pos=12)
    for hook in ["blocks.1.hook_mlp_out", "blocks.0.attn.hook_z", "blocks.2.attn.hook_pattern"]:
        a = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda x, h: x * 0.5)])
        b = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(hook, lambda x, h: x * 0.5)])
        assert relative_error(np.array(a), b.numpy()) < TOL["logits"], hook
    clean = np.array(model(tokens))
    assert relative_error(np.array(a), clean) > 1e-3  # the last hook really changed something


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_within_its_tolerance(checkpoint_dir, dtype):
    tokens = random_tokens(512)
    *_, report = both_backends(checkpoint_dir("llama-gqa-untied"), tokens, dtype=dtype)
    assert_parity(report)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_configurations_not_in_the_fixtures(tmp_path, seed):
    """Draw shapes the fixtures do not contain: parity must hold for any valid config."""
    rng = np.random.default_rng(seed)
    arch = ["gpt2", "llama", "llama"][seed % 3]
    if arch == "gpt2":
        heads = int(rng.choice([2, 3, 6]))
        overrides = {
            "n_head": heads,
            "n_embd": heads * int(rng.choice([8, 16])),
            "n_layer": 2,
            "n_inner": int(rng.integers(40, 120)),
        }
    else:
        kv = int(rng.choice([1, 2, 3]))
        heads = kv * int(rng.choice([1, 2, 3]))
        overrides = {
            "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": int(rng.choice([8, 12, 20])), "hidden_size": int(rng.choice([48, 72])),
            "intermediate_size": int(rng.integers(50, 150)), "num_hidden_layers": 2,
            "tie_word_embeddings": bool(rng.integers(2)), "attention_bias": bool(rng.integers(2)),
            "rope_theta": float(rng.choice([1e4, 5e5])),
        }  # fmt: skip
    folder = write_checkpoint(tmp_path / "ck", arch, overrides, qk_scale=5.0, seed=seed)
    tokens = random_tokens(512, pos=int(rng.integers(5, 30)), seed=seed)
    _, _, logits, _, report = both_backends(folder, tokens)
    assert_parity(report)
    assert relative_error(np.array(logits), hf_logits(folder, tokens)) < TOL["logits"]
