"""Llama in plain PyTorch, with TransformerLens hook points.

Shapes: b = batch, p = position, d = d_model, h = n_heads, g = n_kv_heads, e = d_head,
m = d_mlp, v = d_vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.attention import allowed_keys, attend, compute_dtype, position_ids
from torch_ref.config import ModelConfig
from torch_ref.hooks import HookPoint


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; hook_normalized is the full output (after weight)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_model))
        self.eps = eps
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, p, d) -> (b, p, d)."""
        x32 = x.to(compute_dtype(x.dtype))
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.hook_normalized(self.weight * normalized.to(x.dtype))


def rope_inv_freq(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, (e/2,), with the config's scaling applied.

    "linear" divides every frequency by `factor`. "llama3" (Llama 3.1) divides the low
    frequencies (wavelength above original_max / low_freq_factor) by `factor`, keeps the high
    ones (wavelength below original_max / high_freq_factor), and interpolates in between.
    """
    e = cfg.d_head
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, e, 2, device=device).to(dtype) / e)
    params = cfg.rope_params
    if cfg.rope_type == "linear":
        return inv_freq / params["factor"]
    if cfg.rope_type == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_ctx = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        is_medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(is_medium, interpolated, scaled)
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Split the last dim in halves (x1, x2) and return (-x2, x1): HF's non-interleaved rotary."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, g, e = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.n_heads, self.n_kv_heads, self.d_head = h, g, e
        self.scale = 1.0 / math.sqrt(e)
        self.q = nn.Linear(d, h * e, bias=cfg.attention_bias)
        self.k = nn.Linear(d, g * e, bias=cfg.attention_bias)
        self.v = nn.Linear(d, g * e, bias=cfg.attention_bias)
        self.o = nn.Linear(h * e, d, bias=cfg.attention_bias)
        self.hook_q = HookPoint()  # (b, p, h, e)
        self.hook_k = HookPoint()  # (b, p, g, e)
        self.hook_v = HookPoint()  # (b, p, g, e)
        self.hook_rot_q = HookPoint()  # (b, p, h, e)
        self.hook_rot_k = HookPoint()  # (b, p, g, e)
        self.hook_attn_scores = HookPoint()  # (b, h, p, p), masked entries -inf
        self.hook_pattern = HookPoint()  # (b, h, p, p)
        self.hook_z = HookPoint()  # (b, p, h, e)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """x: (b, p, d) normalized residual; cos, sin: (b, p, 1, e) -> (b, p, d)."""
        b, p, _ = x.shape
        q = self.hook_q(self.q(x).view(b, p, self.n_heads, self.d_head))
        k = self.hook_k(self.k(x).view(b, p, self.n_kv_heads, self.d_head))
        v = self.hook_v(self.v(x).view(b, p, self.n_kv_heads, self.d_head))
        q = self.hook_rot_q(q * cos + rotate_half(q) * sin)
        k = self.hook_rot_k(k * cos + rotate_half(k) * sin)
        # Grouped-query attention: kv head j serves the consecutive query heads j*r .. j*r+r-1.
        repeats = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(repeats, dim=2)
        v = v.repeat_interleave(repeats, dim=2)
        z = attend(q, k, v, allowed, self.scale, self.hook_attn_scores, self.hook_pattern)
        z = self.hook_z(z)
        return self.o(z.reshape(b, p, self.n_heads * self.d_head))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()  # (b, p, m) gate projection, before the activation
        self.hook_pre_linear = HookPoint()  # (b, p, m) up projection
        self.hook_post = HookPoint()  # (b, p, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, p, d) -> (b, p, d)."""
        pre = self.hook_pre(self.gate(x))
        pre_linear = self.hook_pre_linear(self.up(x))
        post = self.hook_post(F.silu(pre) * pre_linear)
        return self.down(post)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Registration order is forward order: it defines the order of hook_names.
        self.hook_resid_pre = HookPoint()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, resid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """resid: (b, p, d) -> (b, p, d)."""
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), cos, sin, allowed))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = (
            None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        )

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor | None:
        """tokens: (b, p) long -> logits (b, p, v), or None when stopped early."""
        b, p = tokens.shape
        dtype = self.embed.weight.dtype
        positions = position_ids(attention_mask, b, p, tokens.device)
        allowed = allowed_keys(attention_mask, p, tokens.device)
        # Rotary angles, computed in float32 (float64 for a float64 model), then cast.
        inv_freq = rope_inv_freq(self.cfg, compute_dtype(dtype), tokens.device)
        angles = positions[..., None].to(inv_freq.dtype) * inv_freq  # (b, p, e/2)
        angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]  # (b, p, 1, e)
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)

        resid = self.hook_embed(self.embed(tokens))
        for block in self.blocks[:stop_at_layer]:
            resid = block(resid, cos, sin, allowed)
        if stop_at_layer is not None:
            if stop_at_layer < len(self.blocks):  # the residual the next block would read
                self.blocks[stop_at_layer].hook_resid_pre(resid)
            return None

        x = self.ln_final(resid)
        unembed = self.embed.weight if self.unembed is None else self.unembed.weight
        return F.linear(x, unembed)


def llama_weights(hf_weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face Llama weights to this module's parameter names."""
    mapping = {
        "input_layernorm": "ln1",
        "post_attention_layernorm": "ln2",
        "self_attn.q_proj": "attn.q",
        "self_attn.k_proj": "attn.k",
        "self_attn.v_proj": "attn.v",
        "self_attn.o_proj": "attn.o",
        "mlp.gate_proj": "mlp.gate",
        "mlp.up_proj": "mlp.up",
        "mlp.down_proj": "mlp.down",
    }
    out: dict[str, torch.Tensor] = {}
    for name, w in hf_weights.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old checkpoints saved; recomputed from the config
        if name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out["unembed.weight"] = w
            continue
        name = name.removeprefix("model.")
        parts = name.split(".")
        if name == "embed_tokens.weight":
            out["embed.weight"] = w
        elif name == "norm.weight":
            out["ln_final.weight"] = w
        elif parts[0] == "layers" and ".".join(parts[2:-1]) in mapping:
            out[f"blocks.{parts[1]}.{mapping['.'.join(parts[2:-1])]}.{parts[-1]}"] = w
        else:
            out[name] = w  # left unmapped: reported as unexpected by the loader
    return out
