"""Blocks that no hook reads run compiled (mx.compile); the compiled and the plain path give
the same activations and logits, and a hooked block is never compiled."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_interp.models.base as base
from mlx_interp import load_model


@pytest.fixture
def compile_flag():
    saved = base.COMPILE_BLOCKS
    yield
    base.COMPILE_BLOCKS = saved


@pytest.mark.parametrize("name", ["gpt2-peaked", "llama-gqa-untied", "llama3-rope-gqa"])
def test_compiled_and_plain_blocks_agree(checkpoint_dir, name, compile_flag):
    model = load_model(checkpoint_dir(name))
    n = model.cfg.n_layers
    tokens = mx.array(np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 9)))
    wanted = [f"blocks.{n - 1}.hook_resid_post", "blocks.0.attn.hook_pattern"]
    out = {}
    for flag in (True, False):
        base.COMPILE_BLOCKS = flag
        logits, cache = model.run_with_cache(tokens, names_filter=wanted)
        _, stopped = model.run_with_cache(tokens, names_filter=wanted[:1], stop_at_layer=n)
        doubled = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, h: 2 * a)]
        )
        out[flag] = [logits, *cache.values(), *stopped.values(), doubled]
    for a, b in zip(out[True], out[False], strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)
    compiled = ["_compiled" in b.__dict__ for b in model.model.blocks]
    assert any(compiled[1:]) and n > 1
    # the hook in block 0 changed the output: the hooked block ran its hook, uncompiled
    assert not np.allclose(np.array(out[True][-1]), np.array(out[True][0]))


def test_compiled_block_reads_replaced_weights(checkpoint_dir, compile_flag):
    base.COMPILE_BLOCKS = True
    model = load_model(checkpoint_dir("llama-mha-tied"))
    tokens = mx.array([[1, 2, 3, 4]])
    before = model(tokens)
    mlp = model.model.blocks[0].mlp
    mlp.down_proj.weight = mlp.down_proj.weight * 0  # block 0 now adds no MLP output
    after = model(tokens)
    base.COMPILE_BLOCKS = False
    plain = model(tokens)
    assert not np.allclose(np.array(before), np.array(after))
    np.testing.assert_allclose(np.array(after), np.array(plain), rtol=1e-5, atol=1e-5)
