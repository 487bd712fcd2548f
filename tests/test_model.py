"""Behaviour of the MLX HookedModel: hook names and shapes, cache, hooks, padding, errors."""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest

from mlx_interp import load_model

BLOCK_HOOKS = {
    "gpt2": [
        "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
        "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
        "hook_mlp_out", "hook_resid_post",
    ],
    "llama": [
        "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
        "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
        "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out",
        "hook_resid_post",
    ],
}  # fmt: skip


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa-untied"])
def model(request, checkpoint_dir):
    return load_model(checkpoint_dir(request.param))


def random_tokens(model, batch=2, pos=12, seed=0):
    return mx.array(np.random.default_rng(seed).integers(0, model.cfg.d_vocab, (batch, pos)))


def expected_shape(model, name, batch, pos):
    c = model.cfg
    last = name.split(".")[-1]
    if last in ("hook_attn_scores", "hook_pattern"):
        return (batch, c.n_heads, pos, pos)
    if last in ("hook_k", "hook_v", "hook_rot_k"):
        return (batch, pos, c.n_kv_heads, c.d_head)
    if last in ("hook_q", "hook_rot_q", "hook_z"):
        return (batch, pos, c.n_heads, c.d_head)
    if ".mlp.hook_" in name:
        return (batch, pos, c.d_mlp)
    return (batch, pos, c.d_model)


def test_hook_names_follow_the_contract_in_forward_order(model):
    arch = model.cfg.architecture
    first = ["hook_embed", "hook_pos_embed"] if arch == "gpt2" else ["hook_embed"]
    expected = (
        first
        + [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers) for h in BLOCK_HOOKS[arch]]
        + ["ln_final.hook_normalized"]
    )
    assert model.hook_names == expected


def test_cache_holds_every_hook_with_the_contract_shape(model):
    logits, cache = model.run_with_cache(random_tokens(model, 2, 12))
    assert list(cache) == model.hook_names
    assert logits.shape == (2, 12, model.cfg.d_vocab)
    for name, act in cache.items():
        assert act.shape == expected_shape(model, name, 2, 12), name


def test_patterns_are_causal_distributions(model):
    _, cache = model.run_with_cache(random_tokens(model), names_filter=lambda n: "pattern" in n)
    for name, p in cache.items():
        p = np.array(p)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5, err_msg=name)
        assert np.all(np.triu(p, k=1) == 0), name


def test_fused_and_explicit_attention_agree(model):
    tokens = random_tokens(model)
    fused = np.array(model(tokens))  # no pattern requested: mx.fast attention
    explicit, _ = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    np.testing.assert_allclose(np.array(explicit), fused, rtol=1e-4, atol=1e-5)


def test_replacing_the_pattern_changes_the_output(model):
    """The cached pattern is the one the output is computed from, not a side computation."""
    tokens = random_tokens(model)
    uniform = lambda p, hook: mx.tril(mx.ones_like(p)) / mx.arange(1, p.shape[-1] + 1)[:, None]  # noqa: E731
    a = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
    b = model(tokens)
    assert not np.allclose(np.array(a), np.array(b), atol=1e-6)


def test_names_filter_forms(model):
    tokens = random_tokens(model)
    _, c1 = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post"])
    _, c2 = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    _, c3 = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("resid_post"))
    assert list(c1) == list(c2) == ["blocks.1.hook_resid_post"]
    assert list(c3) == [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    np.testing.assert_array_equal(
        np.array(c1["blocks.1.hook_resid_post"]), np.array(c3["blocks.1.hook_resid_post"])
    )


def test_stop_at_layer_returns_no_logits_and_only_earlier_blocks(model):
    tokens = random_tokens(model)
    logits, cache = model.run_with_cache(tokens, stop_at_layer=2)
    assert logits is None
    layers = {int(m.group(1)) for n in cache if (m := re.match(r"blocks\.(\d+)\.", n))}
    assert layers == {0, 1, 2}
    assert [n for n in cache if n.startswith("blocks.2.")] == ["blocks.2.hook_resid_pre"]
    assert "ln_final.hook_normalized" not in cache
    _, full = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    np.testing.assert_allclose(
        np.array(cache["blocks.1.hook_resid_post"]),
        np.array(full["blocks.1.hook_resid_post"]),
        rtol=1e-6,
        atol=1e-6,  # caching every hook takes the explicit softmax, the other pass not
    )
    with pytest.raises(ValueError, match="not computed with stop_at_layer"):
        model.run_with_cache(tokens, names_filter=["blocks.2.hook_resid_mid"], stop_at_layer=2)
    # the README's example: the residual entering the first block not run
    _, stopped = model.run_with_cache(
        tokens, names_filter=["blocks.2.hook_resid_pre"], stop_at_layer=2
    )
    _, whole = model.run_with_cache(tokens, names_filter=["blocks.2.hook_resid_pre"])
    np.testing.assert_allclose(
        np.array(stopped["blocks.2.hook_resid_pre"]),
        np.array(whole["blocks.2.hook_resid_pre"]),
        rtol=1e-6,
    )


def test_stop_at_layer_skips_later_blocks(model, monkeypatch):
    calls = []
    block = model.model.blocks[-1]
    cls = type(block)
    original = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, *a: calls.append(self) or original(self, *a))
    model.run_with_cache(
        random_tokens(model), names_filter="blocks.0.hook_resid_post", stop_at_layer=1
    )
    assert calls and all(c is model.model.blocks[0] for c in calls)


def test_start_at_layer_continues_a_pass_from_its_residual_stream(model):
    """Starting at block L on what blocks.L.hook_resid_pre held gives the whole pass's
    logits, with or without a hook at or after L; padding still applies; misuse is refused."""
    tokens = random_tokens(model)
    n = model.cfg.n_layers
    for start in (0, 1, n - 1, n):
        entry = f"blocks.{start}.hook_resid_pre" if start < n else f"blocks.{n - 1}.hook_resid_post"
        logits, cache = model.run_with_cache(tokens, names_filter=[entry])
        later, rest = model.run_with_cache(tokens, start_at_layer=start, resid=cache[entry])
        np.testing.assert_allclose(np.array(later), np.array(logits), rtol=1e-5, atol=1e-5)
        assert all(not n_.startswith(f"blocks.{i}.") for n_ in rest for i in range(start))
    hook = [("blocks.1.hook_mlp_out", lambda x, hook: x * 0.5)]
    patched = model.run_with_hooks(tokens, fwd_hooks=hook)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre"])
    resumed = model.run_with_hooks(
        tokens, fwd_hooks=hook, start_at_layer=1, resid=cache["blocks.1.hook_resid_pre"]
    )
    np.testing.assert_allclose(np.array(resumed), np.array(patched), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.array(patched), np.array(model(tokens)), atol=1e-3)
    mask = mx.array([[1] * 12, [1] * 8 + [0] * 4])
    padded, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre"], attention_mask=mask)  # fmt: skip
    resumed = model.run_with_hooks(
        tokens, attention_mask=mask, start_at_layer=-n + 1, resid=cache["blocks.1.hook_resid_pre"]
    )
    np.testing.assert_allclose(np.array(resumed), np.array(padded), rtol=1e-5, atol=1e-5)
    resid = cache["blocks.1.hook_resid_pre"]
    with pytest.raises(ValueError, match="not computed with start_at_layer=1"):
        model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"], start_at_layer=1, resid=resid)  # fmt: skip
    with pytest.raises(ValueError, match=r"needs resid, the residual stream of shape \(2, 12, "):
        model.run_with_hooks(tokens, start_at_layer=1, resid=resid[:, :5])
    with pytest.raises(ValueError, match="pass both or neither"):
        model.run_with_hooks(tokens, resid=resid)
    with pytest.raises(ValueError, match="outside"):
        model.run_with_hooks(tokens, start_at_layer=n + 1, resid=resid)


def test_run_with_hooks_replaces_or_observes(model):
    tokens = random_tokens(model)
    clean = np.array(model(tokens))
    seen = []
    same = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: seen.append(hook.name))]
    )
    np.testing.assert_array_equal(np.array(same), clean)
    assert seen == ["blocks.1.hook_mlp_out"]
    ablated = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: x * 0)]
    )
    assert not np.allclose(np.array(ablated), clean)
    # predicate names: zeroing every block's attention and MLP output leaves only the embedding
    only_embed = model.run_with_hooks(
        tokens,
        fwd_hooks=[
            (lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")), lambda x, hook: 0 * x)
        ],
    )
    _, cache = model.run_with_cache(
        tokens,
        names_filter=lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")),
        fwd_hooks=[
            (lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")), lambda x, hook: 0 * x)
        ],
    )
    assert all(float(mx.abs(v).max()) == 0 for v in cache.values())
    assert only_embed.shape == clean.shape


def test_hook_returning_a_wrong_shape_is_an_error(model):
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(
            random_tokens(model), fwd_hooks=[("hook_embed", lambda x, hook: x[:, :1])]
        )


def test_unknown_hook_name_lists_close_matches(model):
    with pytest.raises(ValueError, match=r"did you mean .*blocks\.1\.hook_resid_post"):
        model.run_with_cache(random_tokens(model), names_filter=["blocks.1.hook_resid_pots"])
    with pytest.raises(ValueError, match="unknown hook point"):
        model.run_with_hooks(
            random_tokens(model), fwd_hooks=[("blocks.1.mlp.hook_psot", lambda x, h: x)]
        )


def test_cache_missing_key_names_close_matches(model):
    _, cache = model.run_with_cache(
        random_tokens(model), names_filter=lambda n: n.endswith("resid_post")
    )
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        cache["blocks.0.hook_resid_pots"]
    assert cache.stack("hook_resid_post").shape[0] == model.cfg.n_layers


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_changes_nothing_at_real_positions(model, side):
    rng = np.random.default_rng(1)
    short, long = rng.integers(1, model.cfg.d_vocab, 5), rng.integers(1, model.cfg.d_vocab, 9)
    pad = np.zeros(4, dtype=np.int64)
    row = np.concatenate([short, pad]) if side == "right" else np.concatenate([pad, short])
    mask_row = (np.arange(9) < 5) if side == "right" else (np.arange(9) >= 4)
    tokens = np.stack([row, long])
    mask = np.stack([mask_row, np.ones(9, bool)]).astype(np.int32)
    batched = np.array(model(tokens, attention_mask=mask))
    alone = np.array(model(short[None]))[0]
    real = batched[0][mask_row]
    np.testing.assert_allclose(real, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched[1], np.array(model(long[None]))[0], rtol=1e-4, atol=1e-5)


def test_text_input_is_tokenized_and_padded(model):
    tokens, mask = model.tokenize(["The quick brown fox", "The"])
    assert tokens.shape[0] == 2 and mask is not None and int(mask[1].sum()) < tokens.shape[1]
    logits, _ = model.run_with_cache(["The quick brown fox", "The"], names_filter=[])
    np.testing.assert_allclose(
        np.array(logits), np.array(model(tokens, attention_mask=mask)), rtol=1e-6
    )
    assert model.to_string(model.to_tokens("The quick brown fox")[0]).endswith(
        "The quick brown fox"
    )


def test_bad_tokens_are_clear_errors(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(np.array([[0, model.cfg.d_vocab]]))
    with pytest.raises(ValueError, match="context length"):
        model(np.zeros((1, model.cfg.n_ctx + 1), dtype=np.int64))
    with pytest.raises(ValueError, match="integer ids"):
        model(np.zeros((1, 3), dtype=np.float32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs_close_to_float32(checkpoint_dir, dtype):
    folder = checkpoint_dir("llama-gqa-untied")
    tokens = np.random.default_rng(0).integers(0, 512, (2, 10))
    ref = np.array(load_model(folder)(tokens))
    half = load_model(folder, dtype=dtype)
    assert half.dtype == getattr(mx, dtype)
    out = np.array(half(tokens).astype(mx.float32))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 5e-2


def test_explicit_rotary_positions_match_the_fused_kernel(checkpoint_dir):
    """The rotary path for padded batches (explicit positions) equals mx.fast.rope."""
    model = load_model(checkpoint_dir("llama3-rope-gqa"))
    rope = model.model.blocks[0].attn.rope
    x = mx.random.normal((2, 4, 7, model.cfg.d_head))
    positions = mx.broadcast_to(mx.arange(7)[None], (2, 7))
    np.testing.assert_allclose(
        np.array(rope(x, positions)), np.array(rope(x, None)), rtol=1e-5, atol=1e-5
    )


def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_pytorch_bin_and_sharded_checkpoints_load_the_same(checkpoint_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = checkpoint_dir("gpt2")
    hf = AutoModelForCausalLM.from_pretrained(src)
    bin_dir = tmp_path / "bin"
    hf.save_pretrained(bin_dir, safe_serialization=False)
    if not (bin_dir / "pytorch_model.bin").exists():  # transformers 5 may refuse .bin; write it
        torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
        for f in bin_dir.glob("*.safetensors"):
            f.unlink()
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    for d in (bin_dir, sharded):
        for f in src.glob("tokenizer*"):
            (d / f.name).write_bytes(f.read_bytes())
    tokens = np.random.default_rng(0).integers(0, 512, (1, 10))
    want = np.array(load_model(src)(tokens))
    for d in (bin_dir, sharded):
        np.testing.assert_allclose(np.array(load_model(d)(tokens)), want, rtol=1e-6, atol=1e-6)


def test_corrupt_weights_file_is_a_one_line_error(checkpoint_dir, tmp_path):
    folder = _copy_checkpoint(checkpoint_dir("gpt2"), tmp_path / "ck")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated download
    with pytest.raises(ValueError, match="model.safetensors") as e:
        load_model(folder)
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_the_config_are_a_clear_error(checkpoint_dir, tmp_path):
    import json

    folder = _copy_checkpoint(checkpoint_dir("llama-mha-tied"), tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit its config.json") as e:
        load_model(folder)
    assert "\n" not in str(e.value)


def test_unknown_dtype_and_architecture(checkpoint_dir, tmp_path):
    import json

    with pytest.raises(ValueError, match="dtype"):
        load_model(checkpoint_dir("gpt2"), dtype="int8")
    folder = _copy_checkpoint(checkpoint_dir("gpt2"), tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported; supported: gpt2, llama"):
        load_model(folder)
