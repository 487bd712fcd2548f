"""Pieces every architecture shares: masks and the attention core with its hook points."""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from ..hooks import _STATE, HookPoint
from ..system import mlx_device


def _exp_cpu(x: mx.array) -> mx.array:
    """exp(x), x clipped to [-87, 88], within 3e-7 relative: 2^n exp(r), n = x / ln 2
    rounded, r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2] (ln 2 in two parts, Cody-Waite),
    exp(r) by its degree-6 Taylor polynomial in Estrin's form, 2^n from the exponent bits.

    Written for MLX's CPU compiler, which fuses elementwise chains of depth <= 11 into one
    generated C++ loop (built with -O3 and no -march: SSE2 on x86): the rounding adds and
    subtracts 1.5 * 2^23 instead of calling floor (no SSE2 instruction; the loop stayed
    scalar), and Estrin's form halves Horner's depth, so the whole exponential takes four
    short vectorised loops (2.2 ms for 1.6 M elements against 5.2 ms with floor and Horner,
    18.6 ms for MLX's own scalar exp). Compiled callers only: uncompiled it is many passes.
    """
    x = mx.clip(x.astype(mx.float32), -87.0, 88.0)  # the rounding below needs float32
    # n is a step function of x: no gradient through it (the round trip would pass one on)
    n = mx.stop_gradient((x * 1.4426950408889634 + 12582912.0) - 12582912.0)
    r = x - n * 0.693145751953125 - n * 1.428606765330187e-06
    r2 = r * r
    p = (1.0 + r + r2 * (0.5 + r * (1 / 6))) + (r2 * r2) * (
        (1 / 24 + r * (1 / 120)) + r2 * (1 / 720)
    )
    two_n = mx.stop_gradient(mx.view((n.astype(mx.int32) + 127) << 23, mx.float32))
    return p * two_n


def exp(x: mx.array) -> mx.array:
    """``mx.exp``, or on the CPU ``_exp_cpu`` (for compiled callers: MLX's CPU exp is scalar)."""
    return _exp_cpu(x) if mlx_device() == "cpu" else mx.exp(x)


def _times_sigmoid_cpu(g: mx.array, z: mx.array) -> mx.array:
    """g * sigmoid(z) in float32, through ``_exp_cpu``."""
    return g / (1.0 + _exp_cpu(-z))


@mx.compile
def _swiglu_cpu(gate: mx.array, up: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return _times_sigmoid_cpu(g, g).astype(gate.dtype) * up


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up, the gated MLP's activation (any shape, elementwise).

    On the CPU with an exponential of our own (``_exp_cpu``): MLX 0.32's CPU exp runs one
    element at a time, about 15 ns each against NumPy's 0.6 ns (x86, OpenBLAS build), which
    made silu a third of SmolLM2's forward pass; compiled, ours is 3.4x faster, within
    2e-6 relative of ``nn.silu``. On a GPU ``nn.silu``, whose exp is the hardware's.
    """
    if mlx_device() == "cpu":
        return _swiglu_cpu(gate, up)
    return nn.silu(gate) * up


@mx.compile
def _gelu_tanh_cpu(x: mx.array) -> mx.array:
    # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
    g = x.astype(mx.float32)
    return _times_sigmoid_cpu(g, 1.5957691216057308 * (g + 0.044715 * g * g * g)).astype(x.dtype)


def gelu_tanh(x: mx.array) -> mx.array:
    """GPT-2's gelu_new (the tanh approximation); on the CPU through ``_exp_cpu``, as
    ``swiglu`` (MLX's CPU tanh is as slow as its exp)."""
    if mlx_device() == "cpu":
        return _gelu_tanh_cpu(x)
    return nn.gelu_approx(x)


class AttentionHooks(nn.Module):
    """The hook points of an attention layer, named as in TransformerLens."""

    def __init__(self):
        super().__init__()
        self.hook_q = HookPoint()  # (batch, pos, n_heads, d_head)
        self.hook_k = HookPoint()  # (batch, pos, n_kv_heads, d_head)
        self.hook_v = HookPoint()  # (batch, pos, n_kv_heads, d_head)
        self.hook_attn_scores = HookPoint()  # (batch, n_heads, query_pos, key_pos)
        self.hook_pattern = HookPoint()  # (batch, n_heads, query_pos, key_pos)
        self.hook_z = HookPoint()  # (batch, pos, n_heads, d_head)

    def attend(
        self, q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None
    ) -> mx.array:
        """Attention of q (batch, n_heads, pos, d_head) over k, v (batch, n_kv_heads, pos, d_head).

        ``mask`` is None for plain causal attention, else a boolean (batch or 1, 1, pos, pos)
        array, True where a query may attend. Returns hook_z, (batch, pos, n_heads, d_head).
        When a hook reads or replaces the scores or the pattern, the pattern is computed
        explicitly and is exactly the one the output uses; otherwise the fused kernel runs
        (``attention_cpu`` on the CPU, where MLX has none).
        """
        if self.hook_attn_scores.active or self.hook_pattern.active:
            n_rep = q.shape[1] // k.shape[1]
            if n_rep > 1:  # grouped-query attention: each kv head serves n_rep query heads
                k, v = mx.repeat(k, n_rep, axis=1), mx.repeat(v, n_rep, axis=1)
            if mask is None:
                mask = causal_mask(q.shape[2])
            scores = (q.astype(mx.float32) * scale) @ k.astype(mx.float32).swapaxes(-1, -2)
            scores = self.hook_attn_scores(mx.where(mask, scores, -mx.inf))
            pattern = mx.softmax(scores, axis=-1, precise=True).astype(v.dtype)
            pattern = self.hook_pattern(pattern)
            out = pattern @ v
        elif mlx_device() == "cpu":
            out = attention_cpu(q, k, v, scale, mask)
        else:
            out = mx.fast.scaled_dot_product_attention(
                q, k, v, scale=scale, mask="causal" if mask is None else mask
            )
        return self.hook_z(out.transpose(0, 2, 1, 3))


@mx.compile
def _masked_exp(scores: mx.array, row_max: mx.array, allowed: mx.array) -> mx.array:
    return mx.where(allowed, _exp_cpu(scores - row_max), 0.0)


def attention_cpu(
    q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None
) -> mx.array:
    """softmax(q k^T * scale, masked) v for MLX's CPU, as ``AttentionHooks.attend`` takes it:
    q (batch, n_heads, pos, d_head), k and v (batch, n_kv_heads, pos, d_head), mask None
    (causal) or boolean (batch or 1, 1, pos, pos). Returns (batch, n_heads, pos, d_head).

    ``mx.fast.scaled_dot_product_attention`` has no CPU kernel: its fallback's softmax
    takes MLX's scalar exp (about 15 ns an element). Here the two products go to BLAS, the
    exponential is ``_exp_cpu`` (one compiled loop, masked entries exactly 0), and the
    normalisation divides the (pos, d_head) output rather than the (pos, pos) weights:
    SmolLM2's attention, 8 windows of 128 tokens, 19 ms -> 9 ms a layer, within 1e-6.
    Query heads are grouped by the key/value head they share (grouped-query attention
    without repeating k and v): head h reads kv head h // (n_heads / n_kv_heads).
    """
    B, H, L, D = q.shape
    n_kv = k.shape[1]
    rep = H // n_kv
    allowed = causal_mask(L) if mask is None else mask  # (batch or 1, 1, L, L)
    if rep > 1:
        allowed = mx.tile(allowed, (1, 1, rep, 1))
    qg = (q.astype(mx.float32) * scale).reshape(B, n_kv, rep * L, D)
    scores = mx.where(allowed, qg @ k.astype(mx.float32).swapaxes(-1, -2), -mx.inf)
    # the shift cancels in the output: no gradient through it
    weights = _masked_exp(scores, mx.stop_gradient(scores.max(axis=-1, keepdims=True)), allowed)
    out = (weights @ v.astype(mx.float32)) / weights.sum(axis=-1, keepdims=True)
    return out.reshape(B, H, L, D).astype(v.dtype)


def causal_mask(n: int) -> mx.array:
    """(1, 1, n, n) boolean, True on and below the diagonal."""
    idx = mx.arange(n)
    return (idx[:, None] >= idx[None, :])[None, None]


def attention_mask_and_positions(
    attention_mask: mx.array | None, n: int
) -> tuple[mx.array | None, mx.array | None]:
    """From a (batch, pos) 1/0 padding mask: the boolean attention mask and position ids.

    Padded keys are excluded; a query always sees itself, so a padded row is never empty.
    Positions count real tokens only (cumsum - 1, floored at 0), so left padding gives the
    same positions as no padding. Without a padding mask, both are None (plain causal).
    """
    if attention_mask is None:
        return None, None
    keep = attention_mask.astype(mx.bool_)
    mask = causal_mask(n) & keep[:, None, None, :]
    mask = mask | mx.eye(n, dtype=mx.bool_)[None, None]
    positions = mx.maximum(mx.cumsum(attention_mask.astype(mx.int32), axis=1) - 1, 0)
    return mask, positions


# Whether blocks that no hook reads run as one compiled graph (mx.compile); for A/B tests
# and benchmarks. MLX_INTERP_COMPILE=0 turns it off.
COMPILE_BLOCKS = os.environ.get("MLX_INTERP_COMPILE", "1") != "0"


def _block_hook_names(block: nn.Module) -> list[str]:
    names = block.__dict__.get("_hook_names")
    if names is None or (names and not names[0]):  # not named yet
        names = [m.name for _, m in block.named_modules() if isinstance(m, HookPoint)]
        object.__setattr__(block, "_hook_names", names)
    return names


def run_block(block: nn.Module, x: mx.array, *args) -> mx.array:
    """``block(x, *args)``; compiled (mx.compile: one fused graph, fewer kernels and passes
    over memory) when no hook point of the block is read or replaced in this forward pass
    and every extra argument (mask, positions) is None, i.e. plain causal attention.

    The compiled function reads the block's current weights at each call (``inputs=block``),
    so weights replaced later are used; MLX traces it once per input shape.
    """
    state = _STATE.get()
    if (
        not COMPILE_BLOCKS
        or any(a is not None for a in args)
        or (state is not None and any(state.wants(n) for n in _block_hook_names(block)))
    ):
        return block(x, *args)
    fn = block.__dict__.get("_compiled")
    if fn is None:
        n_args = len(args)

        def forward(x):
            return block(x, *([None] * n_args))

        fn = mx.compile(forward, inputs=block)
        object.__setattr__(block, "_compiled", fn)
    token = _STATE.set(None)  # the block's hook points do nothing in this pass
    try:
        return fn(x)
    finally:
        _STATE.reset(token)
