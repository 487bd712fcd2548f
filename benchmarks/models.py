"""The models benchmarks run on: the embedded model and GPT-2-shaped random checkpoints.

GPT-2 weights cannot be downloaded here, and speed does not depend on the values: a
randomly initialised checkpoint of GPT-2 small's or medium's shape, written once by
transformers into the cache, costs the same per token as the real one.
"""

from __future__ import annotations

from pathlib import Path

from mlx_interp.sources import cache_root

GPT2_SHAPES = {
    "gpt2-small-shape": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium-shape": dict(n_embd=1024, n_layer=24, n_head=16),
}


def model_source(name: str) -> str:
    """A load_model source for a benchmark model name (writing the random ones once)."""
    if name not in GPT2_SHAPES:
        return name
    folder = cache_root() / "bench-models" / name
    if not (folder / "model.safetensors").exists():
        _write_gpt2(folder, GPT2_SHAPES[name])
    return str(folder)


def _write_gpt2(folder: Path, shape: dict) -> None:
    import tempfile

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, **shape))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)


def forward_flops(
    cfg, n_tokens: int, seq: int, layers: int | None = None, logits: bool = True
) -> float:
    """Matrix-multiply FLOPs of a forward pass over n_tokens in windows of seq tokens.

    2 FLOPs per multiply-add: the projections and MLP of each block run, attention
    scores and weighted values (causal: half of seq² per head), and the unembedding.
    """
    L = cfg.n_layers if layers is None else layers
    d, h, kv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    gated = 3 if cfg.architecture == "llama" else 2
    per_token_block = 2 * (d * h * dh + 2 * d * kv * dh + h * dh * d + gated * d * m)
    attention = 2 * 2 * h * dh * (seq + 1) / 2  # scores and values, mean causal length
    total = L * n_tokens * (per_token_block + attention)
    if logits:
        total += 2 * n_tokens * d * cfg.d_vocab
    return float(total)
