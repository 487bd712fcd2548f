"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral-style GQA) with hook points."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..hooks import HookPoint
from ..system import mlx_device
from .base import AttentionHooks, attention_mask_and_positions, run_block, swiglu


@dataclass
class ModelArgs:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    architecture: str = "llama"
    # q/k/v as one product and gate/up as one (weights concatenated by sanitize): fewer,
    # larger matrix products. False keeps the checkpoint's separate layers (quantized models).
    fuse_projections: bool = True

    @classmethod
    def from_hf_config(cls, c: dict) -> ModelArgs:
        # transformers 5 writes rope_parameters; older versions rope_theta + rope_scaling.
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"rope type {rope_type!r} is not supported (supported: default, linear, llama3)"
            )
        if c.get("hidden_act", "silu") != "silu":
            raise ValueError(f"activation {c['hidden_act']!r} is not supported (Llama uses silu)")
        n_heads = c["num_attention_heads"]
        return cls(
            d_model=c["hidden_size"],
            n_layers=c["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=c.get("num_key_value_heads") or n_heads,
            d_head=c.get("head_dim") or c["hidden_size"] // n_heads,
            d_mlp=c["intermediate_size"],
            d_vocab=c["vocab_size"],
            n_ctx=c.get("max_position_embeddings", 2048),
            norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope if rope_type != "default" else None,
            tie_word_embeddings=c.get("tie_word_embeddings", False),
            attention_bias=c.get("attention_bias", False),
            mlp_bias=c.get("mlp_bias", False),
        )


def rope_inverse_frequencies(args: ModelArgs) -> mx.array:
    """Rotary inverse frequencies (d_head / 2,), with linear or llama3 scaling applied."""
    d = args.d_head
    inv_freq = 1.0 / (args.rope_theta ** (mx.arange(0, d, 2, dtype=mx.float32) / d))
    s = args.rope_scaling
    if s is None:
        return inv_freq
    factor = s["factor"]
    if s.get("rope_type", s.get("type")) == "linear":
        return inv_freq / factor
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = mx.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    is_medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return mx.where(is_medium, smoothed, scaled)


class RoPE(nn.Module):
    """Rotary embedding in the rotate-half (non-interleaved) layout used by HF checkpoints."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dims = args.d_head
        self._inv_freq = rope_inverse_frequencies(args)

    def __call__(self, x: mx.array, positions: mx.array | None) -> mx.array:
        """x: (batch, heads, pos, d_head); positions: (batch, pos) or None for 0..pos-1."""
        if positions is None and mlx_device() != "cpu":
            return mx.fast.rope(
                x,
                self.dims,
                traditional=False,
                base=None,
                scale=1.0,
                offset=0,
                freqs=1.0 / self._inv_freq,
            )
        # From a table of angles: on the CPU, mx.fast.rope takes a sine and a cosine for every
        # element, one at a time (16 % of SmolLM2's forward pass); here pos x d_head / 2 of them.
        if positions is None:
            angles = mx.arange(x.shape[2], dtype=mx.float32)[:, None] * self._inv_freq
        else:
            angles = positions[:, None, :, None].astype(mx.float32) * self._inv_freq
        cos = mx.concatenate([mx.cos(angles)] * 2, axis=-1)
        sin = mx.concatenate([mx.sin(angles)] * 2, axis=-1)
        half = self.dims // 2
        rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return (x * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps
        self.hook_normalized = HookPoint()  # the norm's output, weight included

    def __call__(self, x: mx.array) -> mx.array:
        return self.hook_normalized(mx.fast.rms_norm(x, self.weight, self.eps))


class Attention(AttentionHooks):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = args.n_heads, args.n_kv_heads, args.d_head
        self.scale = args.d_head**-0.5
        bias = args.attention_bias
        n_q, n_kv = args.n_heads * args.d_head, args.n_kv_heads * args.d_head
        self.fused = args.fuse_projections
        if self.fused:  # rows: q, then k, then v (see fuse_projections)
            self.qkv_proj = nn.Linear(args.d_model, n_q + 2 * n_kv, bias=bias)
        else:
            self.q_proj = nn.Linear(args.d_model, n_q, bias=bias)
            self.k_proj = nn.Linear(args.d_model, n_kv, bias=bias)
            self.v_proj = nn.Linear(args.d_model, n_kv, bias=bias)
        self.o_proj = nn.Linear(args.n_heads * args.d_head, args.d_model, bias=bias)
        self.rope = RoPE(args)
        self.hook_rot_q = HookPoint()  # (batch, pos, n_heads, d_head), after rotary
        self.hook_rot_k = HookPoint()  # (batch, pos, n_kv_heads, d_head), after rotary

    def __call__(self, x: mx.array, mask: mx.array | None, positions: mx.array | None):
        B, L, _ = x.shape
        if self.fused:
            n_q, n_kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
            q, k, v = mx.split(self.qkv_proj(x), [n_q, n_q + n_kv], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.hook_q(q.reshape(B, L, self.n_heads, self.d_head))
        k = self.hook_k(k.reshape(B, L, self.n_kv_heads, self.d_head))
        v = self.hook_v(v.reshape(B, L, self.n_kv_heads, self.d_head))
        # Rotary works on (batch, heads, pos, d_head); the hooks see (batch, pos, heads, d_head).
        q = self.rope(q.transpose(0, 2, 1, 3), positions)
        k = self.rope(k.transpose(0, 2, 1, 3), positions)
        q = self.hook_rot_q(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        k = self.hook_rot_k(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        z = self.attend(q, k, v.transpose(0, 2, 1, 3), self.scale, mask)
        return self.o_proj(z.reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fused = args.fuse_projections
        if self.fused:  # rows: gate, then up (see fuse_projections)
            self.gate_up_proj = nn.Linear(args.d_model, 2 * args.d_mlp, bias=args.mlp_bias)
        else:
            self.gate_proj = nn.Linear(args.d_model, args.d_mlp, bias=args.mlp_bias)
            self.up_proj = nn.Linear(args.d_model, args.d_mlp, bias=args.mlp_bias)
        self.down_proj = nn.Linear(args.d_mlp, args.d_model, bias=args.mlp_bias)
        self.hook_pre = HookPoint()  # gate projection, before the activation
        self.hook_pre_linear = HookPoint()  # up projection
        self.hook_post = HookPoint()  # silu(gate) * up

    def __call__(self, x: mx.array) -> mx.array:
        if self.fused:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        gate, up = self.hook_pre(gate), self.hook_pre_linear(up)
        return self.down_proj(self.hook_post(swiglu(gate, up)))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln1 = RMSNorm(args.d_model, args.norm_eps)
        self.attn = Attention(args)
        self.ln2 = RMSNorm(args.d_model, args.norm_eps)
        self.mlp = MLP(args)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def __call__(self, x: mx.array, mask: mx.array | None, positions: mx.array | None):
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), mask, positions)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.d_vocab, args.d_model)
        self.hook_embed = HookPoint()
        self.blocks = [TransformerBlock(args) for _ in range(args.n_layers)]
        self.ln_final = RMSNorm(args.d_model, args.norm_eps)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.d_model, args.d_vocab, bias=False)

    def __call__(
        self,
        tokens: mx.array,
        attention_mask: mx.array | None = None,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        resid: mx.array | None = None,
    ) -> mx.array | None:
        """tokens (batch, pos) -> logits (batch, pos, d_vocab); None with stop_at_layer.

        With ``start_at_layer=L`` the blocks from L on run on ``resid`` (batch, pos,
        d_model), the residual stream block L receives; tokens still give the shape.
        """
        mask, positions = attention_mask_and_positions(attention_mask, tokens.shape[1])
        if start_at_layer is None:
            x = self.hook_embed(self.embed(tokens))
        else:
            x = resid
        for block in self.blocks[start_at_layer:stop_at_layer]:
            x = run_block(block, x, mask, positions)
        if stop_at_layer is not None:
            if stop_at_layer < len(self.blocks):  # what the first block not run would receive
                self.blocks[stop_at_layer].hook_resid_pre(x)
            return None
        return self.unembed(x)

    def unembed(self, resid: mx.array) -> mx.array:
        """Final norm and unembedding: residual stream (..., d_model) -> logits (..., d_vocab)."""
        x = self.ln_final(resid)
        return self.embed.as_linear(x) if self.args.tie_word_embeddings else self.lm_head(x)

    @staticmethod
    def sanitize(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
        """Hugging Face LlamaForCausalLM names (also mlx-lm's) -> this module's names, the
        projections fused when ``args.fuse_projections``."""
        out = {}
        for name, w in weights.items():
            if "rotary_emb" in name:
                continue
            if name.startswith("lm_head.") and args.tie_word_embeddings:
                continue
            out[rename_hf(name)] = w
        return fuse_projections(out, args.n_layers) if args.fuse_projections else out


# fused layer -> its parts, in the order of the fused weight's rows
FUSED = {"attn.qkv_proj": ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip


def fuse_projections(weights: dict[str, mx.array], n_layers: int) -> dict[str, mx.array]:
    """Concatenate each block's q/k/v and gate/up weights (and biases) along the output
    dimension, (out_i, d_model) -> (sum out_i, d_model): one product gives the same values
    as the separate ones. Parts that are missing or do not stack stay as they are, so the
    loader names them in its error."""
    out = dict(weights)
    for i in range(n_layers):
        for fused, parts in FUSED.items():
            for leaf in ("weight", "bias"):
                names = [f"blocks.{i}.{p}.{leaf}" for p in parts]
                ws = [out.get(n) for n in names]
                if any(w is None for w in ws) or len({(w.shape[1:], w.dtype) for w in ws}) != 1:
                    continue
                for n in names:
                    del out[n]
                out[f"blocks.{i}.{fused}.{leaf}"] = mx.concatenate(ws, axis=0)
    return out


_RENAMES = [
    ("model.embed_tokens", "embed"),
    ("model.layers.", "blocks."),
    ("model.norm", "ln_final"),
    (".self_attn.", ".attn."),
    (".input_layernorm", ".ln1"),
    (".post_attention_layernorm", ".ln2"),
]


def rename_hf(name: str) -> str:
    """A Hugging Face / mlx-lm parameter or module path -> this module's path
    ('model.layers.3.self_attn.q_proj' -> 'blocks.3.attn.q_proj')."""
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name
