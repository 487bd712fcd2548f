"""Attribution patching: MLX (mx.value_and_grad through zero probes) vs torch_ref (torch
autograd, SAE latents' gradients from the hook's), on tiny random models."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.analysis.attribution import attribution_patching
from mlx_interp.analysis.interventions import head_patching
from mlx_interp.parity import relative_error
from mlx_interp.sae import SAEConfig
from mlx_interp.sae.sae import SAE
from torch_ref import load_model as load_torch
from torch_ref.attribution import attribution_patching as torch_attribution
from torch_ref.sae import SAE as TorchSAE

# A score is (a_source - a_base) * gradient: a difference of nearby activations times a
# gradient through peaked attention. Against torch_ref in float64 (the referee), both
# float32 backends are up to 1.7e-4 off on gpt2-peaked (MLX 1.7e-4, torch 1.5e-4), so
# float32 vs float32 is held to 1e-3; a wrong gradient path is off by O(1).
TOL = 1e-3
CLEAN = [5, 17, 42, 8, 99, 23, 61, 7, 14]
CORRUPT = [5, 17, 88, 8, 99, 31, 61, 7, 14]


@pytest.fixture(scope="module", params=["gpt2-peaked", "llama-gqa-untied"])
def pair(request, checkpoint_dir):
    folder = checkpoint_dir(request.param)
    return load_model(folder), load_torch(folder, dtype="float32")


def _close(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for n in a:
        assert relative_error(a[n], b[n]) < TOL, (what, n, relative_error(a[n], b[n]))


@pytest.mark.parametrize(("direction", "arch"), [("noising", "standard"), ("denoising", "topk")])
def test_scores_match_torch_ref(pair, tmp_path, direction, arch):
    model, ref = pair
    hook = "blocks.1.hook_resid_post"
    k = 8 if arch == "topk" else None
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=96, architecture=arch, k=k, hook_name=hook)
    SAE(cfg, seed=3).save(tmp_path / "sae")
    # TopK: two prompt pairs with an answer each (scores summed over the pairs).
    clean, corrupt, ans, wrong = (
        ([CLEAN, CLEAN[::-1]], [CORRUPT, CORRUPT[::-1]], [3, 4], [11, 12]) if arch == "topk"
        else (CLEAN, CORRUPT, 3, 11)
    )  # fmt: skip
    a = attribution_patching(model, clean, corrupt, ans, wrong, saes=[SAE.load(tmp_path / "sae")], direction=direction)  # fmt: skip
    b = torch_attribution(ref, clean, corrupt, ans, wrong, saes=[TorchSAE.load(tmp_path / "sae")], direction=direction)  # fmt: skip
    assert relative_error([a.clean_metric, a.corrupted_metric], [b.clean_metric, b.corrupted_metric]) < TOL  # fmt: skip
    assert set(a.scores) == set(model.hook_names)
    _close(a.scores, b.scores, "scores")
    _close(a.neurons, b.neurons, "neurons")
    _close(a.features, b.features, "features")
    _close(a.sae_error, b.sae_error, "sae_error")
    assert np.abs(a.features[hook]).sum() > 0  # the SAE took part
    # A linear decoder: the latents and the error term split the hook's score exactly.
    total = a.features[hook].sum(-1) + a.sae_error[hook]
    assert relative_error(total, a.scores[hook]) < TOL


def test_quantized_model_matches_torch_ref(tmp_path_factory):
    """A 4-bit folder (mlx-interp convert --quantize 4): MLX runs its quantized layers and
    differentiates the activations only; torch_ref dequantizes the same folder to float32."""
    from conftest import LLAMA3_QUANT, hub_style, write_checkpoint
    from mlx_interp.convert import convert

    folder = hub_style(write_checkpoint(tmp_path_factory.mktemp("l3"), "llama", LLAMA3_QUANT, 20.0))  # fmt: skip
    q4 = convert(folder, tmp_path_factory.mktemp("conv") / "q4", quantize=4, group_size=64)
    model, ref = load_model(q4), load_torch(q4, dtype="float32")
    assert model.quantization is not None
    a = attribution_patching(model, CLEAN, CORRUPT, 3, 11)
    b = torch_attribution(ref, CLEAN, CORRUPT, 3, 11)
    assert np.abs(a.scores["blocks.1.attn.hook_z"]).sum() > 0
    _close(a.scores, b.scores, "scores")
    _close(a.neurons, b.neurons, "neurons")


def test_head_patching_matches_torch_ref(pair):
    """The real per-head patching AtP is checked against, in both backends."""
    model, ref = pair
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    a = head_patching(model, clean, corrupt, " Paris", " Rome", layers=[0, 2])
    b = head_patching(ref, clean, corrupt, " Paris", " Rome", layers=[0, 2])
    assert a.patched_diff.shape == (2, model.cfg.n_heads)
    assert relative_error(a.patched_diff, b.patched_diff) < 1e-4
    # Row h patches head h alone: the same as one run_with_hooks with that head replaced.
    _, cache = model.run_with_cache(clean, names_filter=["blocks.2.attn.hook_z"])
    src = np.array(cache["blocks.2.attn.hook_z"])

    def patch(x, hook):
        m = np.zeros(src.shape, np.float32)
        m[:, :, 1] = 1
        return x * (1 - mx.array(m)) + mx.array(src * m)

    logits = np.array(model.run_with_hooks(corrupt, fwd_hooks=[("blocks.2.attn.hook_z", patch)]))
    ids = [model.tokenizer.encode(s)[0] for s in (" Paris", " Rome")]
    assert a.patched_diff[1, 1] == pytest.approx(
        logits[0, -1, ids[0]] - logits[0, -1, ids[1]], rel=1e-5
    )


def test_embedded_model_matches_torch_ref():
    """SmolLM2 on the IOI prompts (massive activations, 30 layers): the two backends' AtP
    scores of every hook point agree (measured: at most 7.3e-5, blocks.29.ln2)."""
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When John and Mary went to the store, Mary gave a drink to"
    model, ref = load_model("smollm2-135m"), load_torch("smollm2-135m", dtype="float32")
    a = attribution_patching(model, clean, corrupt, " Mary", " John")
    b = torch_attribution(ref, clean, corrupt, " Mary", " John")
    assert abs(a.clean_metric - b.clean_metric) < TOL * abs(b.clean_metric)
    _close(a.scores, b.scores, "scores")
    _close(a.neurons, b.neurons, "neurons")
