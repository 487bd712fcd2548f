"""torch_ref against Hugging Face transformers, and the behaviour of its hook API.

Every checkpoint in conftest.CHECKPOINTS is a small random model written by transformers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CHECKPOINTS, write_checkpoint
from torch_ref import load_model
from torch_ref.config import config_from_hf

NAMES = list(CHECKPOINTS)
PEAKED = [name for name, (_, _, scale) in CHECKPOINTS.items() if scale > 1.0]
LLAMA = [name for name, (arch, _, _) in CHECKPOINTS.items() if arch == "llama"]
TOL = 1e-5
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_tokens(d_vocab: int, batch: int = 2, pos: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ref_model(checkpoint_dir):
    """Factory: ref_model(name, dtype="float32") -> a loaded torch_ref model (cached)."""
    made = {}

    def get(name: str, dtype: str = "float32"):
        if (name, dtype) not in made:
            made[name, dtype] = load_model(checkpoint_dir(name), dtype=dtype)
        return made[name, dtype]

    return get


def hf_model(folder: Path, dtype: torch.dtype = torch.float32, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).eval()


def expected_hook_names(arch: str, n_layers: int) -> list[str]:
    """The hook-point contract of DESIGN.md, in forward order."""
    rotary = ["hook_rot_q", "hook_rot_k"] if arch == "llama" else []
    attn = ["hook_q", "hook_k", "hook_v", *rotary, "hook_attn_scores", "hook_pattern", "hook_z"]
    mlp = (
        ["hook_pre", "hook_pre_linear", "hook_post"]
        if arch == "llama"
        else ["hook_pre", "hook_post"]
    )
    block = [
        "hook_resid_pre",
        "ln1.hook_normalized",
        *(f"attn.{n}" for n in attn),
        "hook_attn_out",
        "hook_resid_mid",
        "ln2.hook_normalized",
        *(f"mlp.{n}" for n in mlp),
        "hook_mlp_out",
        "hook_resid_post",
    ]
    top = ["hook_embed", "hook_pos_embed"] if arch == "gpt2" else ["hook_embed"]
    blocks = [f"blocks.{layer}.{n}" for layer in range(n_layers) for n in block]
    return [*top, *blocks, "ln_final.hook_normalized"]


def expected_shape(name: str, cfg, batch: int, pos: int) -> tuple[int, ...]:
    last = name.split(".")[-1]
    if last in ("hook_q", "hook_rot_q", "hook_z"):
        return (batch, pos, cfg.n_heads, cfg.d_head)
    if last in ("hook_k", "hook_v", "hook_rot_k"):
        return (batch, pos, cfg.n_kv_heads, cfg.d_head)
    if last in ("hook_attn_scores", "hook_pattern"):
        return (batch, cfg.n_heads, pos, pos)
    if name.split(".")[-2:-1] == ["mlp"]:
        return (batch, pos, cfg.d_mlp)
    return (batch, pos, cfg.d_model)


# ----- numbers against transformers -----


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name, dtype, checkpoint_dir, ref_model):
    ref = ref_model(name, dtype)
    tokens = random_tokens(ref.cfg.d_vocab)
    logits = ref(tokens)
    assert logits.dtype == DTYPES[dtype]
    with torch.no_grad():
        expected = hf_model(checkpoint_dir(name), DTYPES[dtype])(tokens).logits
    assert rel_err(logits, expected) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_block_outputs_match_transformers_hidden_states(name, checkpoint_dir, ref_model):
    ref = ref_model(name)
    tokens = random_tokens(ref.cfg.d_vocab)
    _, cache = ref.run_with_cache(tokens, names_filter=lambda n: n.endswith("resid_post"))
    with torch.no_grad():
        hidden = hf_model(checkpoint_dir(name))(tokens, output_hidden_states=True).hidden_states
    # transformers 5: hidden_states[-1] has the final norm applied, so stop one block short.
    for layer in range(ref.cfg.n_layers - 1):
        assert rel_err(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1]) < TOL, layer


@pytest.mark.parametrize("name", NAMES)
def test_patterns_are_causal_distributions(name, ref_model):
    ref = ref_model(name)
    _, cache = ref.run_with_cache(
        random_tokens(ref.cfg.d_vocab), names_filter=lambda n: "pattern" in n or "scores" in n
    )
    above = torch.ones(20, 20, dtype=torch.bool).triu(1)
    for layer in range(ref.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        assert (pattern[..., above] == 0).all()
        assert (
            torch.isneginf(scores[..., above]).all() and torch.isfinite(scores[..., ~above]).all()
        )


@pytest.mark.parametrize("name", PEAKED)
def test_patterns_match_transformers_eager(name, checkpoint_dir, ref_model):
    ref = ref_model(name)
    tokens = random_tokens(ref.cfg.d_vocab)
    _, cache = ref.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    hf = hf_model(checkpoint_dir(name), attn_implementation="eager")
    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions
    for layer in range(ref.cfg.n_layers):
        ours = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert rel_err(ours, attentions[layer]) < TOL, layer
    # The checkpoint must be peaked enough for this comparison to mean something: the
    # largest weight per row is well above that of uniform causal attention.
    uniform_peak = (1 / torch.arange(1, 21))[5:].mean()
    assert ours.max(-1).values[..., 5:].mean() > 2 * uniform_peak


@pytest.mark.parametrize("name", [n for n in PEAKED if n in LLAMA])
def test_rotary_visibly_changes_the_pattern(name, ref_model):
    """Attention computed without the rotary embedding must be far from hook_pattern."""
    ref = ref_model(name)
    _, cache = ref.run_with_cache(
        random_tokens(ref.cfg.d_vocab), names_filter=lambda n: "attn." in n
    )
    groups = ref.cfg.n_heads // ref.cfg.n_kv_heads
    q = cache["blocks.0.attn.hook_q"]
    k = cache["blocks.0.attn.hook_k"].repeat_interleave(groups, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / ref.cfg.d_head**0.5
    scores = scores.masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    assert rel_err(scores.softmax(-1), cache["blocks.0.attn.hook_pattern"]) > 0.1


# ----- hook names and shapes -----


@pytest.mark.parametrize("name", NAMES)
def test_hook_names_and_shapes_follow_the_contract(name, ref_model):
    ref = ref_model(name)
    cfg = ref.cfg
    assert ref.hook_names == expected_hook_names(cfg.architecture, cfg.n_layers)
    logits, cache = ref.run_with_cache(random_tokens(cfg.d_vocab, batch=3, pos=7))
    assert logits.shape == (3, 7, cfg.d_vocab)
    assert list(cache) == ref.hook_names
    for hook_name, value in cache.items():
        assert tuple(value.shape) == expected_shape(hook_name, cfg, 3, 7), hook_name
        assert not value.requires_grad
    for layer in range(cfg.n_layers - 1):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"]
        )


# ----- padding -----


@pytest.mark.parametrize("name", NAMES)
def test_padding_left_and_right_match_each_sequence_alone(name, ref_model):
    ref = ref_model(name)
    short, long = (
        random_tokens(ref.cfg.d_vocab, 1, 7, seed=2)[0],
        random_tokens(ref.cfg.d_vocab, 1, 12)[0],
    )
    alone = [ref(short[None])[0], ref(long[None])[0]]
    pad = 5
    right = torch.stack([torch.cat([short, torch.full((5,), pad)]), long])
    right_mask = torch.stack([torch.cat([torch.ones(7), torch.zeros(5)]), torch.ones(12)]).long()
    left = torch.stack([torch.cat([torch.full((5,), pad), short]), long])
    left_mask = right_mask.flip(-1)
    right_logits = ref(right, attention_mask=right_mask)
    left_logits, cache = ref.run_with_cache(left, attention_mask=left_mask)
    for logits, start in ((right_logits, 0), (left_logits, 5)):
        assert rel_err(logits[0, start : start + 7], alone[0]) < TOL
        assert rel_err(logits[1], alone[1]) < TOL
    # A padding query with no real key before it attends to itself, without NaN.
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert not pattern.isnan().any()
    torch.testing.assert_close(pattern[0, :, 0, 0], torch.ones(ref.cfg.n_heads))


def test_tokenize_right_pads_with_the_pad_id(ref_model):
    ref = ref_model("gpt2")
    texts = ["The quick brown fox", "The capital of France is Paris, and the capital of Italy"]
    tokens, mask = ref.tokenize(texts)
    assert tokens.dtype == torch.long and tokens.shape == mask.shape
    lengths = [len(ref.tokenizer(t)["input_ids"]) for t in texts]
    assert mask.sum(-1).tolist() == lengths
    assert (tokens[0, lengths[0] :] == ref.tokenizer.pad_token_id).all()
    assert torch.equal(ref.to_tokens(texts), tokens)
    with_bos = ref.to_tokens(texts, prepend_bos=True)
    assert (with_bos[:, 0] == ref.tokenizer.bos_token_id).all()
    assert with_bos.shape[1] == tokens.shape[1] + 1


# ----- cache and hook API -----


def test_stop_at_layer_runs_only_earlier_blocks(ref_model):
    ref = ref_model("llama-gqa-untied")
    tokens = random_tokens(ref.cfg.d_vocab)
    _, full = ref.run_with_cache(tokens)
    logits, cache = ref.run_with_cache(tokens, stop_at_layer=1)
    assert logits is None
    assert list(cache) == [
        n for n in ref.hook_names if n == "hook_embed" or n.startswith("blocks.0.")
    ] + ["blocks.1.hook_resid_pre"]  # the residual handed on to the first block not run
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], full["blocks.1.hook_resid_pre"])
    seen = []
    ref.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda x, hook: seen.append(hook.name))])
    assert seen == ref.hook_names
    assert ref.run_with_cache(tokens, stop_at_layer=0)[1].keys() == {
        "hook_embed",
        "blocks.0.hook_resid_pre",
    }


def test_names_filter_forms(ref_model):
    ref = ref_model("gpt2")
    tokens = random_tokens(ref.cfg.d_vocab)
    _, full = ref.run_with_cache(tokens)
    wanted = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern"]
    assert set(ref.run_with_cache(tokens, names_filter=wanted)[1]) == set(wanted)
    assert list(ref.run_with_cache(tokens, names_filter="hook_pos_embed")[1]) == ["hook_pos_embed"]
    _, by_predicate = ref.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert list(by_predicate) == [f"blocks.{i}.attn.hook_z" for i in range(ref.cfg.n_layers)]
    for name, value in by_predicate.items():
        assert torch.equal(value, full[name])


def test_run_with_hooks_ablation_and_observation(ref_model):
    ref = ref_model("llama-gqa-untied")
    tokens = random_tokens(ref.cfg.d_vocab)
    base = ref(tokens)
    ablated = ref.run_with_hooks(
        tokens,
        fwd_hooks=[(lambda n: n.endswith("hook_mlp_out"), lambda x, hook: torch.zeros_like(x))],
    )
    assert rel_err(ablated, base) > 1e-3
    seen = {}
    observed = ref.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: seen.setdefault(hook.name, x))]
    )
    assert torch.equal(observed, base) and set(seen) == {"blocks.1.hook_mlp_out"}
    assert torch.equal(ref(tokens), base)  # hooks are removed afterwards


@pytest.mark.parametrize("name", ["gpt2-peaked", "llama-gqa-untied"])
def test_hooks_inside_attention_change_the_forward_pass(name, ref_model):
    ref = ref_model(name)
    tokens = random_tokens(ref.cfg.d_vocab)
    base = ref(tokens)

    def uniform(pattern, hook):
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    assert (
        rel_err(ref.run_with_hooks(tokens, [("blocks.0.attn.hook_pattern", uniform)]), base) > 1e-3
    )
    seen = {}
    q_hooks = [
        ("blocks.0.attn.hook_q", lambda q, hook: torch.zeros_like(q)),
        (
            lambda n: n.startswith("blocks.0.attn.hook_"),
            lambda x, hook: seen.setdefault(hook.name, x),
        ),
    ]
    ref.run_with_hooks(tokens, q_hooks)
    if ref.cfg.architecture == "llama":
        assert (seen["blocks.0.attn.hook_rot_q"] == 0).all()
    scores = seen["blocks.0.attn.hook_attn_scores"]
    assert (scores[scores.isfinite()] == 0).all()


def test_unknown_hook_names_suggest_close_matches(ref_model):
    ref = ref_model("gpt2")
    tokens = random_tokens(ref.cfg.d_vocab)
    with pytest.raises(ValueError, match="blocks.0.hook_resid_pre") as err:
        ref.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pr"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="blocks.1.attn.hook_pattern"):
        ref.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_patern", lambda x, h: None)])
    with pytest.raises(ValueError, match="hook_rot_q"):  # GPT-2 has no rotary hook points
        ref.run_with_cache(tokens, names_filter="blocks.0.attn.hook_rot_q")


def test_bad_inputs_raise_clear_errors(ref_model):
    ref = ref_model("llama-mha-tied")
    with pytest.raises(ValueError, match="n_ctx"):
        ref(torch.zeros(1, ref.cfg.n_ctx + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        ref(torch.tensor([[1, 2, 512]]))
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        ref.run_with_cache(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="returned"):
        ref.run_with_hooks(
            torch.tensor([[1, 2]]), [("blocks.0.hook_resid_pre", lambda x, h: x[:, :1])]
        )
    assert ref(torch.zeros(1, ref.cfg.n_ctx, dtype=torch.long)).shape[1] == ref.cfg.n_ctx


# ----- loading -----


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sharded_bin_and_bf16_checkpoints_load(checkpoint_dir, tmp_path):
    src = checkpoint_dir("llama-gqa-untied")
    tokens = random_tokens(512)
    expected = load_model(src)(tokens)
    hf = hf_model(src)

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert rel_err(load_model(sharded)(tokens), expected) < 1e-7

    first_shard = sorted(sharded.glob("model-*.safetensors"))[0]
    first_shard.rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match=first_shard.name):
        load_model(sharded)

    bin_dir = copy_checkpoint(src, tmp_path / "bin")
    (bin_dir / "model.safetensors").unlink()
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    assert rel_err(load_model(bin_dir)(tokens), expected) < 1e-7

    bf16 = tmp_path / "bf16"
    hf.to(torch.bfloat16).save_pretrained(bf16)
    ref = load_model(bf16, dtype="float64")
    assert all(p.dtype == torch.float64 for p in ref.parameters())
    assert rel_err(ref(tokens), expected) < 0.05


def test_broken_folders_raise_one_line_errors(checkpoint_dir, tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    corrupt = copy_checkpoint(checkpoint_dir("gpt2"), tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors") as err:
        load_model(corrupt)
    assert "\n" not in str(err.value)
    (corrupt / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="(?i)no weights"):
        load_model(corrupt)
    with pytest.raises(ValueError, match="dtype"):
        load_model(checkpoint_dir("gpt2"), dtype="int8")


def test_loads_local_folders_without_mlx_interp(checkpoint_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_interp.sources", None)  # makes the import fail
    ref = load_model(checkpoint_dir("gpt2"))
    assert ref(random_tokens(512)).shape == (2, 20, 512)
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)


def perturb(folder: Path) -> None:
    """Add noise to every bias and norm weight (random init leaves them 0 and 1)."""
    model = hf_model(folder)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "bias" in pname or "ln" in pname or "norm" in pname:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)


@pytest.mark.parametrize(
    "arch, overrides",
    [("gpt2", {}), ("llama", {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True})],
)
def test_biases_and_norm_parameters_are_used(arch, overrides, tmp_path):
    folder = write_checkpoint(tmp_path / arch, arch, overrides, qk_scale=4.0)
    perturb(folder)
    tokens = random_tokens(512)
    with torch.no_grad():
        expected = hf_model(folder)(tokens).logits
    assert rel_err(load_model(folder)(tokens), expected) < TOL


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0}},
        {"rope_theta": 1000.0, "rope_scaling": {"type": "linear", "factor": 4.0}},
    ],
    ids=["rope_parameters", "old_rope_scaling"],
)
def test_linear_rope_matches_transformers(rope, checkpoint_dir, tmp_path):
    folder = copy_checkpoint(checkpoint_dir("llama-gqa-untied"), tmp_path / "linear")
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.pop("rope_theta", None)
    config.update(rope)
    (folder / "config.json").write_text(json.dumps(config))
    ref = load_model(folder)
    assert (ref.cfg.rope_type, ref.cfg.rope_theta) == ("linear", 1000.0)
    tokens = random_tokens(512)
    with torch.no_grad():
        expected = hf_model(folder)(tokens).logits
    assert rel_err(ref(tokens), expected) < TOL


def test_unsupported_configs_are_refused(checkpoint_dir):
    config = json.loads((checkpoint_dir("llama-mha-tied") / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match="yarn"):
        config_from_hf(config)
    gpt2 = json.loads((checkpoint_dir("gpt2") / "config.json").read_text())
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf({**gpt2, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf({**gpt2, "model_type": "mistral"})
