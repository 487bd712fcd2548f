"""Shared test fixtures: small randomly initialised checkpoints written by transformers.

Every checkpoint is a real Hugging Face folder (config.json, model.safetensors and a
tokenizer), so the tests exercise the same loading code a user's downloaded model goes
through. The configurations cover what the loaders must handle: GPT-2; Llama with and
without grouped-query attention, tied and untied unembedding, llama3 rope scaling, an
explicit head_dim. "Peaked" variants scale the query and key weights up so attention is
far from uniform, which is what makes a wrong mask or a missing rotary embedding visible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

# Before any test module imports mlx.core: lets MLX bind to an optimised BLAS (blas.py).
import mlx_interp  # noqa: F401

VOCAB_SIZE = 512

# Llama 3's rope scaling, with a short original context (32) that the tests' positions pass
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

# name -> (architecture, config overrides, query/key weight scale)
CHECKPOINTS: dict[str, tuple[str, dict, float]] = {
    "gpt2": ("gpt2", {}, 1.0),
    "gpt2-peaked": ("gpt2", {}, 20.0),
    "llama-mha-tied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}, 1.0),
    "llama-gqa-untied": (
        "llama",
        {
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
            "attention_bias": True,
            "mlp_bias": True,
        },
        20.0,
    ),
    "llama3-rope-gqa": (
        "llama",
        {
            "num_key_value_heads": 1,
            "tie_word_embeddings": False,
            "max_position_embeddings": 256,
            "rope_theta": 500000.0,
            "rope_scaling": dict(LLAMA3_ROPE),
        },
        20.0,
    ),
    "llama-headdim": (
        "llama",
        {"num_key_value_heads": 2, "head_dim": 24, "tie_word_embeddings": True},
        20.0,
    ),
}

# A Llama-3 whose every width is a multiple of 64 (mlx-lm quantizes every layer of it),
# for the quantization tests; write it with hub_style so that mlx-lm reads its rope.
LLAMA3_QUANT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
    "max_position_embeddings": 256,
    "rope_theta": 500000.0,
    "rope_scaling": dict(LLAMA3_ROPE),
}


def hub_style(folder):
    """Rewrite transformers 5's rope_parameters as rope_theta + rope_scaling (hub layout).

    mlx-lm 0.32 reads only the older keys (it silently ignores rope_parameters), as do
    the checkpoints on the Hugging Face hub."""
    path = folder / "config.json"
    c = json.loads(path.read_text())
    rope = c.pop("rope_parameters", None)
    if rope:
        c["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            c["rope_scaling"] = rope
    path.write_text(json.dumps(c, indent=2))
    return folder


_SAMPLE_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Sparse autoencoders turn activations into features that people can read.",
    "def add(a, b):\n    return a + b\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
] * 20


def write_tokenizer(folder: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """Train a tiny byte-level BPE tokenizer on fixed text and save it in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SAMPLE_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(folder)


def write_checkpoint(
    folder: Path, arch: str, overrides: dict, qk_scale: float = 1.0, seed: int = 0
) -> Path:
    """Write a randomly initialised transformers checkpoint (float32 safetensors) to folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = dict(
            vocab_size=VOCAB_SIZE,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
        )
        cfg.update(overrides)
        model = GPT2LMHeadModel(GPT2Config(**cfg))
        d = model.config.n_embd
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[:, : 2 * d] *= qk_scale  # Conv1D: (d_in, 3 * d_model)
    elif arch == "llama":
        cfg = dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            bos_token_id=0,
            eos_token_id=0,
        )
        cfg.update(overrides)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight *= qk_scale
                layer.self_attn.k_proj.weight *= qk_scale
    else:
        raise ValueError(arch)
    # Fresh norm weights are ones and fresh biases zeros: perturb them so that a loader
    # that drops one of them fails the tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """Factory: checkpoint_dir(name) -> Path of a written checkpoint from CHECKPOINTS."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            arch, overrides, qk_scale = CHECKPOINTS[name]
            made[name] = write_checkpoint(tmp_path_factory.mktemp(name), arch, overrides, qk_scale)
        return made[name]

    return make


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """300 blank-line separated documents of 50 random words: data for the CLI tests."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    docs = [" ".join(rng.choice(words) for _ in range(50)) for _ in range(300)]
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture(scope="module")
def gpt2(checkpoint_dir):
    """The MLX HookedModel of the random GPT-2 checkpoint."""
    from mlx_interp import load_model

    return load_model(checkpoint_dir("gpt2"))


@pytest.fixture(scope="module")
def llama(checkpoint_dir):
    """The MLX HookedModel of the random Llama checkpoint (GQA, untied embeddings)."""
    from mlx_interp import load_model

    return load_model(checkpoint_dir("llama-gqa-untied"))
