"""GPT-2 in plain PyTorch, with TransformerLens hook points.

Shapes: b = batch, p = position, d = d_model, h = n_heads, e = d_head, m = d_mlp, v = d_vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.attention import allowed_keys, attend, compute_dtype, position_ids
from torch_ref.config import ModelConfig
from torch_ref.hooks import HookPoint


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias; hook_normalized is the full output (after weight, bias)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_model))
        self.bias = nn.Parameter(torch.empty(d_model))
        self.eps = eps
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, p, d) -> (b, p, d)."""
        x32 = x.to(compute_dtype(x.dtype))
        mean = x32.mean(dim=-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=-1, keepdim=True)
        normalized = ((x32 - mean) / torch.sqrt(var + self.eps)).to(x.dtype)
        return self.hook_normalized(normalized * self.weight + self.bias)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, e = cfg.d_model, cfg.n_heads, cfg.d_head
        self.n_heads, self.d_head = h, e
        self.scale = 1.0 / math.sqrt(e) if cfg.scale_attn_weights else 1.0
        self.q = nn.Linear(d, h * e)
        self.k = nn.Linear(d, h * e)
        self.v = nn.Linear(d, h * e)
        self.o = nn.Linear(h * e, d)
        self.hook_q = HookPoint()  # (b, p, h, e)
        self.hook_k = HookPoint()  # (b, p, h, e)
        self.hook_v = HookPoint()  # (b, p, h, e)
        self.hook_attn_scores = HookPoint()  # (b, h, p, p), masked entries -inf
        self.hook_pattern = HookPoint()  # (b, h, p, p)
        self.hook_z = HookPoint()  # (b, p, h, e)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (b, p, d) normalized residual -> (b, p, d) attention output."""
        b, p, _ = x.shape
        q = self.hook_q(self.q(x).view(b, p, self.n_heads, self.d_head))
        k = self.hook_k(self.k(x).view(b, p, self.n_heads, self.d_head))
        v = self.hook_v(self.v(x).view(b, p, self.n_heads, self.d_head))
        z = attend(q, k, v, allowed, self.scale, self.hook_attn_scores, self.hook_pattern)
        z = self.hook_z(z)
        return self.o(z.reshape(b, p, self.n_heads * self.d_head))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act_fn = cfg.act_fn
        self.hook_pre = HookPoint()  # (b, p, m)
        self.hook_post = HookPoint()  # (b, p, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, p, d) -> (b, p, d)."""
        pre = self.hook_pre(self.fc_in(x))
        post = self.hook_post(gelu(pre, self.act_fn))
        return self.fc_out(post)


def gelu(x: torch.Tensor, kind: str) -> torch.Tensor:
    """ "gelu_new": GPT-2's tanh approximation; "gelu": the exact erf form."""
    if kind == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Registration order is forward order: it defines the order of hook_names.
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """resid: (b, p, d) -> (b, p, d)."""
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), allowed))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


class GPT2(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.norm_eps)
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
        positions = position_ids(attention_mask, b, p, tokens.device)
        allowed = allowed_keys(attention_mask, p, tokens.device)

        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))
        for block in self.blocks[:stop_at_layer]:
            resid = block(resid, allowed)
        if stop_at_layer is not None:
            if stop_at_layer < len(self.blocks):  # the residual the next block would read
                self.blocks[stop_at_layer].hook_resid_pre(resid)
            return None

        x = self.ln_final(resid)
        unembed = self.embed.weight if self.unembed is None else self.unembed.weight
        return F.linear(x, unembed)


# HF GPT-2 layer names inside a block -> ours, and whether HF stores the weight as Conv1D (in, out).
_BLOCK_LAYERS = {
    "ln_1": ("ln1", False),
    "ln_2": ("ln2", False),
    "attn.c_proj": ("attn.o", True),
    "mlp.c_fc": ("mlp.fc_in", True),
    "mlp.c_proj": ("mlp.fc_out", True),
}


def gpt2_weights(hf_weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and transpose) Hugging Face GPT-2 weights to this module's parameter names.

    HF GPT-2 uses Conv1D layers, stored (in, out), with q, k, v fused in c_attn (in, 3 * d).
    """
    out: dict[str, torch.Tensor] = {}
    for name, w in hf_weights.items():
        name = name.removeprefix("transformer.")
        parts = name.split(".")
        layer, kind = ".".join(parts[2:-1]), parts[-1]
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers that old checkpoints saved, not weights
        elif name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out["unembed.weight"] = w
        elif name == "wte.weight":
            out["embed.weight"] = w
        elif name == "wpe.weight":
            out["pos_embed.weight"] = w
        elif parts[0] == "ln_f":
            out[f"ln_final.{kind}"] = w
        elif parts[0] == "h" and layer == "attn.c_attn":
            for proj, chunk in zip("qkv", w.chunk(3, dim=-1), strict=True):
                out[f"blocks.{parts[1]}.attn.{proj}.{kind}"] = (
                    chunk.T if kind == "weight" else chunk
                )
        elif parts[0] == "h" and layer in _BLOCK_LAYERS:
            ours, conv1d = _BLOCK_LAYERS[layer]
            out[f"blocks.{parts[1]}.{ours}.{kind}"] = w.T if conv1d and kind == "weight" else w
        else:
            out[name] = w  # left unmapped: reported as unexpected by the loader
    return out
