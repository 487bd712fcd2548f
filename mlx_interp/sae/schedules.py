"""Schedules of SAE training: the learning rate and the sparsity coefficient per step."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, decay_frac: float) -> float:
    """Linear warm-up over ``warmup_steps``, constant, then linear decay to zero over the
    last ``decay_frac`` of the steps (Anthropic's April 2024 recipe)."""
    f = min(1.0, (step + 1) / max(warmup_steps, 1))
    decay_steps = int(decay_frac * total_steps)
    if decay_steps > 0 and step >= total_steps - decay_steps:
        f = min(f, (total_steps - step) / decay_steps)
    return lr * f


def coeff_at(step: int, coeff: float, warmup_steps: int) -> float:
    """The sparsity coefficient, ramped linearly from 0 over ``warmup_steps``."""
    return coeff * min(1.0, (step + 1) / max(warmup_steps, 1))


def default_lr(d_sae: int) -> float:
    """2e-4 scaled by 1/sqrt(d_sae / 2^14) (Gao et al. 2024's fit), capped at 1e-3."""
    return min(1e-3, 2e-4 / math.sqrt(d_sae / 2**14))
