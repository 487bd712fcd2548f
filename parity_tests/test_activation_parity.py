"""Extraction, activation patching, ablation effects and generation: MLX vs torch_ref.

The hooks and interventions are the same functions and names in both backends; every
number is compared with the project's one error measure and tolerance table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlx_interp import load_model
from mlx_interp.activations import iter_activations
from mlx_interp.analysis.interventions import (
    ablation_effects,
    activation_patching,
    mean_activations,
    steer,
    steering_vector,
)
from mlx_interp.parity import TOLERANCES, relative_error
from torch_ref import load_model as load_torch

TOL = TOLERANCES["float32"]["hooks"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
] * 3
CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"


@pytest.fixture(scope="module", params=["gpt2-peaked", "llama-gqa-untied"])
def pair(request, checkpoint_dir):
    folder = checkpoint_dir(request.param)
    return load_model(folder), load_torch(folder, dtype="float32")


def test_extraction_matches_torch_ref(pair):
    model, ref = pair
    hooks = ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_z"]
    for b in iter_activations(model, hooks, TEXTS, batch_size=2, context_length=24):
        _, cache = ref.run_with_cache(torch.tensor(b.windows, dtype=torch.long), names_filter=hooks)
        w = b.window_ids - b.first_window
        for h in hooks:
            want = cache[h].double().numpy().reshape(len(b.windows), 24, -1)[w, b.positions]
            assert relative_error(np.asarray(b.acts[h]), want) < TOL, h


def test_patching_matches_torch_ref(pair):
    model, ref = pair
    for template in ("blocks.{L}.hook_resid_pre", "blocks.{L}.attn.hook_z"):
        a = activation_patching(model, CLEAN, CORRUPT, " Paris", " Rome", template)
        b = activation_patching(ref, CLEAN, CORRUPT, " Paris", " Rome", template)
        assert (
            relative_error([a.clean_diff, a.corrupted_diff], [b.clean_diff, b.corrupted_diff]) < TOL
        )
        assert relative_error(a.patched_diff, b.patched_diff) < TOL
        assert relative_error(a.recovered, b.recovered) < TOL


def test_ablation_effects_match_torch_ref(pair):
    model, ref = pair
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.2.attn.hook_z"]
    text = CLEAN + " Paris, a city."
    for kind in ("zero", "mean"):
        means = [mean_activations(m, hooks, TEXTS[:3]) if kind == "mean" else None for m in pair]
        a = ablation_effects(model, text, hooks, kind, means[0])
        b = ablation_effects(ref, text, hooks, kind, means[1])
        for h in hooks:
            # A loss change is a difference of two losses: its error is measured against
            # the loss itself (a tiny effect would otherwise amplify rounding).
            assert relative_error(a.ablated_loss[h], b.ablated_loss[h]) < TOL, (kind, h)
            assert abs(a.effect(h) - b.effect(h)) < TOL * b.clean_loss, (kind, h)
            assert abs(a.kl[h] - b.kl[h]) < TOL * max(b.kl[h], 1e-3), (kind, h)


def test_generation_and_steering_match_torch_ref(pair):
    model, ref = pair
    hook = "blocks.1.hook_resid_pre"
    v_mlx = steering_vector(model, hook, ["Paris Paris"], ["Rome Rome"])
    v_ref = steering_vector(ref, hook, ["Paris Paris"], ["Rome Rome"])
    assert relative_error(v_mlx, v_ref) < TOL
    a = steer(model, CLEAN, hook, v_mlx, 8.0, 8)
    b = steer(ref, CLEAN, hook, v_mlx, 8.0, 8)
    assert a == b


def test_extraction_and_patching_on_the_embedded_model():
    """The real model, where massive activations make errors at position 0 matter."""
    model, ref = load_model("smollm2-135m"), load_torch("smollm2-135m", dtype="float32")
    hooks = ["blocks.15.hook_resid_post", "blocks.15.mlp.hook_post"]
    b = next(iter_activations(model, hooks, TEXTS, batch_size=2, context_length=16))
    _, cache = ref.run_with_cache(torch.tensor(b.windows, dtype=torch.long), names_filter=hooks)
    w = b.window_ids - b.first_window
    for h in hooks:
        want = cache[h].double().numpy().reshape(len(b.windows), 16, -1)[w, b.positions]
        assert relative_error(np.asarray(b.acts[h]), want) < TOL, h
    layers = [0, 10, 20]
    a = activation_patching(model, CLEAN, CORRUPT, " Paris", " Rome", layers=layers)
    r = activation_patching(ref, CLEAN, CORRUPT, " Paris", " Rome", layers=layers)
    assert relative_error(a.patched_diff, r.patched_diff) < TOL
