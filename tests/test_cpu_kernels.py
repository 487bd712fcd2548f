"""The CPU paths of models/base.py (our exponential, silu, gelu, attention) against plain
float64 math: they replace MLX's kernels on the CPU, so they must give the same numbers."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_interp.models.base import (
    _exp_cpu,
    _gelu_tanh_cpu,
    _swiglu_cpu,
    attention_cpu,
    attention_mask_and_positions,
)


def test_exp_matches_float64_over_the_float32_range():
    x = np.concatenate([np.linspace(-87, 88, 200_001), [0.0, -1e-8, 1e-8]]).astype(np.float32)
    got = np.array(mx.compile(_exp_cpu)(mx.array(x)), dtype=np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2e-6
    # beyond the range: clipped, never inf or NaN
    ends = np.array(mx.compile(_exp_cpu)(mx.array([-1e4, -np.inf, 1e4], dtype=mx.float32)))
    assert np.all(np.isfinite(ends)) and ends[0] < 1e-37 and ends[1] < 1e-37


def test_swiglu_and_gelu_match_mlx_within_2e_6():
    rng = np.random.default_rng(0)
    g, u = (mx.array(rng.normal(0, 4, (64, 300)).astype(np.float32)) for _ in range(2))
    ref = nn.silu(g) * u
    assert float(mx.abs(_swiglu_cpu(g, u) - ref).max() / mx.abs(ref).max()) < 2e-6
    ref = nn.gelu_approx(g)
    assert float(mx.abs(_gelu_tanh_cpu(g) - ref).max() / mx.abs(ref).max()) < 2e-6


def _attention_f64(q, k, v, scale, allowed):
    """Plain softmax attention in float64 NumPy; allowed (batch or 1, 1, L, L) boolean."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.where(allowed, q @ k.swapaxes(-1, -2) * scale, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (6, 2), (8, 1)])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_matches_float64(n_heads, n_kv, padded):
    rng = np.random.default_rng(n_heads + n_kv + padded)
    B, L, D = 3, 11, 16
    # scores of tens: peaked attention, where a wrong mask or head grouping shows
    q = rng.normal(0, 3, (B, n_heads, L, D)).astype(np.float32)
    k = rng.normal(0, 3, (B, n_kv, L, D)).astype(np.float32)
    v = rng.normal(0, 1, (B, n_kv, L, D)).astype(np.float32)
    scale = 1 / math.sqrt(D)
    if padded:  # right padding; a padded query still sees itself
        pad = np.ones((B, L), np.int32)
        pad[1, 7:], pad[2, 2:] = 0, 0
        mask, _ = attention_mask_and_positions(mx.array(pad), L)
        allowed = np.array(mask)
    else:
        mask, allowed = None, np.tril(np.ones((L, L), bool))[None, None]
    got = np.array(attention_cpu(mx.array(q), mx.array(k), mx.array(v), scale, mask))
    want = _attention_f64(q, k, v, scale, allowed)
    assert got.shape == (B, n_heads, L, D)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    # and the same as MLX's own kernel
    sdpa = mx.fast.scaled_dot_product_attention(
        mx.array(q), mx.array(k), mx.array(v), scale=scale, mask="causal" if mask is None else mask
    )
    np.testing.assert_allclose(got, np.array(sdpa), rtol=1e-4, atol=1e-5)


def test_attention_keeps_half_precision_dtype():
    rng = np.random.default_rng(1)
    q, k, v = (mx.array(rng.normal(0, 1, (2, 4, 9, 8)).astype(np.float16)) for _ in range(3))
    out = attention_cpu(q, k, v, 8**-0.5, None)
    assert out.dtype == mx.float16
    want = _attention_f64(
        np.array(q), np.array(k), np.array(v), 8**-0.5, np.tril(np.ones((9, 9), bool))
    )
    assert np.linalg.norm(np.array(out, np.float64) - want) / np.linalg.norm(want) < 2e-3


def test_gradients_match_mlx_kernels():
    """Attribution patching differentiates through these: d exp, d silu, d attention."""
    rng = np.random.default_rng(2)
    g, u = (mx.array(rng.normal(0, 3, (16, 40)).astype(np.float32)) for _ in range(2))
    for ours, ref in [
        (lambda g: _swiglu_cpu(g, u), lambda g: nn.silu(g) * u),
        (_gelu_tanh_cpu, nn.gelu_approx),
        (mx.compile(_exp_cpu), mx.exp),
    ]:
        a = mx.grad(lambda g, f=ours: (f(g) * u).sum())(g)
        b = mx.grad(lambda g, f=ref: (f(g) * u).sum())(g)
        assert float(mx.abs(a - b).max() / mx.abs(b).max()) < 1e-5
    q = mx.array(rng.normal(0, 3, (2, 6, 9, 8)).astype(np.float32))
    k, v = (mx.array(rng.normal(0, 3, (2, 3, 9, 8)).astype(np.float32)) for _ in range(2))
    w = mx.array(rng.normal(0, 1, (2, 6, 9, 8)).astype(np.float32))
    sdpa = mx.fast.scaled_dot_product_attention
    ours = mx.grad(lambda *a: (attention_cpu(*a, 0.35, None) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    ref = mx.grad(lambda *a: (sdpa(*a, scale=0.35, mask="causal") * w).sum(), argnums=(0, 1, 2))(q, k, v)  # fmt: skip
    for a, b in zip(ours, ref, strict=True):
        assert float(mx.abs(a - b).max() / mx.abs(b).max()) < 1e-5
