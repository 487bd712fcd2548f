"""Pieces of attention shared by GPT-2 and Llama: masks, position ids, softmax attention."""

from __future__ import annotations

import torch

from torch_ref.hooks import HookPoint


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for norms and softmax: float64 stays float64, anything smaller uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def position_ids(
    attention_mask: torch.Tensor | None, batch: int, n_pos: int, device: torch.device
) -> torch.Tensor:
    """Position of each token, (batch, pos) long.

    Without a mask: 0, 1, 2, ... With a mask (1 = real token, 0 = padding): the count of
    real tokens before this one, so a left-padded sequence starts at position 0 as it
    would alone (the same rule as Hugging Face generation).
    """
    if attention_mask is None:
        return torch.arange(n_pos, device=device).expand(batch, n_pos)
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def allowed_keys(
    attention_mask: torch.Tensor | None, n_pos: int, device: torch.device
) -> torch.Tensor:
    """Which keys each query may attend to: bool (batch or 1, 1, q_pos, k_pos).

    Causal (key <= query), minus padded keys; a query always sees its own position, so
    a row is never empty (a padding query attends to itself instead of producing NaN).
    """
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()
    allowed = causal[None, None]
    if attention_mask is not None:
        real_key = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, k_pos)
        diagonal = torch.eye(n_pos, dtype=torch.bool, device=device)
        allowed = allowed & (real_key | diagonal)
    return allowed


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    hook_attn_scores: HookPoint,
    hook_pattern: HookPoint,
) -> torch.Tensor:
    """Softmax attention with one key/value head per query head.

    q, k, v: (batch, pos, n_heads, d_head); allowed: from allowed_keys.
    Returns z: (batch, pos, n_heads, d_head), the pattern-weighted sum of values.
    """
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (batch, n_heads, q_pos, k_pos)
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = hook_attn_scores(scores)
    pattern = torch.softmax(scores.to(compute_dtype(scores.dtype)), dim=-1).to(v.dtype)
    pattern = hook_pattern(pattern)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)
