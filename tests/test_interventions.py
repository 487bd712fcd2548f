"""Ablation, activation patching, steering and generate on random checkpoints (MLX)."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_interp.analysis.interventions import (
    ablation_effects,
    activation_patching,
    mean_activations,
    steer,
    steering_vector,
)

CLEAN = "The capital of France is"
CORRUPT = "The capital of Italy is"


def test_patching_the_differing_embedding_restores_the_clean_run(llama):
    assert llama.to_tokens(CLEAN).shape == llama.to_tokens(CORRUPT).shape
    pr = activation_patching(llama, CLEAN, CORRUPT, " Paris", " Rome")
    diff = [
        i
        for i, (a, b) in enumerate(zip(llama.to_str_tokens(CLEAN), pr.str_tokens, strict=True))
        if a != b
    ]
    assert len(diff) == 1
    r = pr.recovered
    assert r.shape == (llama.cfg.n_layers, len(pr.str_tokens))
    np.testing.assert_allclose(r[0, diff[0]], 1.0, atol=1e-4)  # the only differing token
    np.testing.assert_allclose(np.delete(r[0], diff[0]), 0.0, atol=1e-4)  # same tokens: no change


def test_patching_bad_input(llama):
    with pytest.raises(ValueError, match="same number of tokens"):
        activation_patching(llama, CLEAN, "The capital of the United Kingdom is", " Paris", " Rome")
    with pytest.raises(ValueError, match="not one"):
        activation_patching(llama, CLEAN, CORRUPT, " Parisian zebra", " Rome")


def test_ablations(llama):
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"]
    zero = ablation_effects(llama, CLEAN + " Paris.", hooks)
    assert all(zero.kl[h] > 0 for h in hooks)
    means = mean_activations(llama, hooks, ["The quick brown fox", "def add(a, b):"])
    mean = ablation_effects(llama, CLEAN + " Paris.", hooks, "mean", means)
    assert mean.clean_loss == zero.clean_loss and mean.ablated_loss != zero.ablated_loss
    with pytest.raises(ValueError, match="needs means"):
        ablation_effects(llama, CLEAN, hooks, "mean")


def test_generate_is_greedy_and_hooks_steer(llama):
    text = llama.generate(CLEAN, 5)
    tokens = llama.to_tokens(CLEAN)
    first = int(np.asarray(llama(tokens))[0, -1].argmax())
    assert llama.to_tokens(text)[0, 0].item() == first or text.startswith(
        llama.tokenizer.decode([first])
    )
    assert llama.generate(CLEAN, 5, temperature=1.0, seed=1) == llama.generate(
        CLEAN, 5, temperature=1.0, seed=1
    )
    v = steering_vector(llama, "blocks.1.hook_resid_pre", ["Paris Paris Paris"], ["Rome Rome Rome"])
    out = steer(llama, CLEAN, "blocks.1.hook_resid_pre", v * 0, 1.0, 5)
    assert out["steered"] == out["normal"] == text
    out = steer(llama, CLEAN, "blocks.1.hook_resid_pre", v, 50.0, 5)
    assert out["steered"] != out["normal"]
