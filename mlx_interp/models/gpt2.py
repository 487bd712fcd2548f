"""GPT-2 (small, medium, large, xl) with hook points."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..hooks import HookPoint
from .base import AttentionHooks, attention_mask_and_positions, gelu_tanh, run_block


@dataclass
class ModelArgs:
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    norm_eps: float
    scale_attn_weights: bool = True
    architecture: str = "gpt2"

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @classmethod
    def from_hf_config(cls, c: dict) -> ModelArgs:
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if c.get(flag):
                raise ValueError(f"GPT-2 option {flag}=True is not supported")
        act = c.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {act!r} is not supported (only gelu_new)")
        d = c["n_embd"]
        return cls(
            d_model=d,
            n_layers=c["n_layer"],
            n_heads=c["n_head"],
            d_head=d // c["n_head"],
            d_mlp=c.get("n_inner") or 4 * d,
            d_vocab=c["vocab_size"],
            n_ctx=c["n_positions"],
            norm_eps=c.get("layer_norm_epsilon", 1e-5),
            scale_attn_weights=c.get("scale_attn_weights", True),
        )


class LayerNorm(nn.LayerNorm):
    def __init__(self, dims: int, eps: float):
        super().__init__(dims, eps=eps)
        self.hook_normalized = HookPoint()  # the norm's output, weight and bias included

    def __call__(self, x: mx.array) -> mx.array:
        return self.hook_normalized(super().__call__(x))


class Attention(AttentionHooks):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.d_head = args.n_heads, args.d_head
        self.scale = args.d_head**-0.5 if args.scale_attn_weights else 1.0
        self.c_attn = nn.Linear(args.d_model, 3 * args.d_model)
        self.c_proj = nn.Linear(args.d_model, args.d_model)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        B, L, D = x.shape
        q, k, v = mx.split(self.c_attn(x), 3, axis=-1)
        q = self.hook_q(q.reshape(B, L, self.n_heads, self.d_head))
        k = self.hook_k(k.reshape(B, L, self.n_heads, self.d_head))
        v = self.hook_v(v.reshape(B, L, self.n_heads, self.d_head))
        heads_first = (0, 2, 1, 3)
        z = self.attend(
            q.transpose(heads_first),
            k.transpose(heads_first),
            v.transpose(heads_first),
            self.scale,
            mask,
        )
        return self.c_proj(z.reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.c_fc = nn.Linear(args.d_model, args.d_mlp)
        self.c_proj = nn.Linear(args.d_mlp, args.d_model)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def __call__(self, x: mx.array) -> mx.array:
        return self.c_proj(self.hook_post(gelu_tanh(self.hook_pre(self.c_fc(x)))))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln1 = LayerNorm(args.d_model, args.norm_eps)
        self.attn = Attention(args)
        self.ln2 = LayerNorm(args.d_model, args.norm_eps)
        self.mlp = MLP(args)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), mask)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.wte = nn.Embedding(args.d_vocab, args.d_model)
        self.wpe = nn.Embedding(args.n_ctx, args.d_model)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = [TransformerBlock(args) for _ in range(args.n_layers)]
        self.ln_final = LayerNorm(args.d_model, args.norm_eps)

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
        B, L = tokens.shape
        mask, positions = attention_mask_and_positions(attention_mask, L)
        if start_at_layer is None:
            if positions is None:
                positions = mx.arange(L)[None]
            embed = self.hook_embed(self.wte(tokens))
            pos_embed = self.hook_pos_embed(mx.broadcast_to(self.wpe(positions), embed.shape))
            x = embed + pos_embed
        else:
            x = resid
        for block in self.blocks[start_at_layer:stop_at_layer]:
            x = run_block(block, x, mask)
        if stop_at_layer is not None:
            if stop_at_layer < len(self.blocks):  # what the first block not run would receive
                self.blocks[stop_at_layer].hook_resid_pre(x)
            return None
        return self.unembed(x)

    def unembed(self, resid: mx.array) -> mx.array:
        """Final norm and unembedding: residual stream (..., d_model) -> logits (..., d_vocab)."""
        return self.wte.as_linear(self.ln_final(resid))

    @staticmethod
    def sanitize(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
        """Hugging Face GPT2LMHeadModel / GPT2Model names -> this module's names.

        HF stores GPT-2's linear layers as Conv1D, (in, out); nn.Linear wants (out, in).
        """
        out = {}
        for name, w in weights.items():
            name = name.removeprefix("transformer.")
            if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # tied unembedding; causal-mask buffers of old checkpoints
            name = name.replace("h.", "blocks.", 1) if name.startswith("h.") else name
            name = name.replace(".ln_1.", ".ln1.").replace(".ln_2.", ".ln2.")
            name = name.replace("ln_f.", "ln_final.")
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                w = w.T
            out[name] = w
        return out
