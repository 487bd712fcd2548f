"""Schedules of SAE training: the learning rate and the sparsity coefficient per step."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    total_steps: int,
    lr: float,
    warmup_steps: int,
    decay_frac: float,
    decay_shape: str = "linear",
) -> float:
    """The learning rate of ``step`` (0-based): a linear warm-up from lr/warmup_steps over
    ``warmup_steps``, constant, then a decay to zero over the last ``decay_frac`` of the
    steps, ``linear`` (Anthropic's April 2024 recipe) or ``cosine``."""
    f = min(1.0, (step + 1) / max(warmup_steps, 1))
    decay_steps = int(round(decay_frac * total_steps))
    if decay_steps > 0 and step >= total_steps - decay_steps:
        left = (total_steps - step) / decay_steps  # 1 at the decay's start, 1/decay_steps last
        if decay_shape == "cosine":
            left = 0.5 * (1 - math.cos(math.pi * left))
        f = min(f, left)
    return lr * f


def warmup_steps_for(total_steps: int, frac: float, min_steps: int) -> int:
    """Warm-up steps for a run: ``frac`` of the run but at least ``min_steps``, and never more
    than a quarter of the run (a short run must still spend most of its steps at full LR)."""
    n = max(int(round(frac * total_steps)), min_steps)
    return max(1, min(n, total_steps // 4))


def coeff_at(step: int, coeff: float, warmup_steps: int) -> float:
    """The sparsity coefficient, ramped linearly from 0 over ``warmup_steps``."""
    return coeff * min(1.0, (step + 1) / max(warmup_steps, 1))


def default_lr(d_sae: int) -> float:
    """1.5e-3 x sqrt(2^14 / d_sae), at most 5e-3: 2.0e-3 for 9216 latents, 1.5e-3 for 16384.

    The 1/sqrt(d_sae) scaling is Gao et al. 2024's fit; their constant (2e-4 at 2^14 latents)
    suits long runs and leaves a run of a few hundred steps far from converged (with it and a
    100-step warm-up, a 102-step SmolLM2 run reached explained variance 0.45; 0.73 at 1e-3).
    The constant here comes from a sweep of 102- to 600-step runs
    (``benchmarks/sae_recipe_sweep.py``, README "Training recipe"): at 1024 and 2048 latents
    the best rate was 4e-3 to 8e-3 at 102 and at 408 steps alike, above it latents start to
    die; 1.5e-3 x sqrt(2^14 / d_sae) puts both widths there and scales it down with width."""
    return min(5e-3, 1.5e-3 / math.sqrt(d_sae / 2**14))
