"""Feature statistics and feature interventions: MLX against torch_ref on the same SAE.

The feature pass runs the model in MLX and the SAE in each backend on the same
activations; every statistic must agree (counts exactly, sums and metrics within the
float32 tolerance, top-k sets up to ties). Steering and ablation run whole in each
backend (model and SAE) and must agree within the same tolerance.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.features.collect import compute_feature_stats, vocab_strings
from mlx_interp.features.interventions import feature_ablation, steer_feature
from mlx_interp.features.monosemanticity import token_classes, unit_metrics
from mlx_interp.features.stats import StatsConfig
from mlx_interp.parity import TOLERANCES, relative_error
from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params
from torch_ref import load_model as load_torch

TOL = TOLERANCES["float32"]["hooks"]
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module", params=["topk", "jumprelu"])
def setup(request, checkpoint_dir, tmp_path_factory):
    folder = checkpoint_dir("llama-gqa-untied")
    tmp = tmp_path_factory.mktemp("fpar")
    arch = request.param
    cfg = SAEConfig(d_in=64, d_sae=80, architecture=arch, k=6 if arch == "topk" else None,
                    hook_name=HOOK, model_name=str(folder))  # fmt: skip
    p = init_params(cfg, seed=0)
    if arch == "jumprelu":
        p["threshold"][:] = 0.05
    SAE(cfg, p).save(tmp / "sae")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(60)]
    return load_model(folder), folder, tmp / "sae", texts


def test_feature_stats_agree(setup):
    model, _, sae, texts = setup
    cfg = StatsConfig(top_k=8)
    runs = {b: compute_feature_stats(model, sae, texts, tokens=1500, backend=b, neuron_hooks=[],
                                     stats_config=cfg) for b in ("mlx", "torch")}  # fmt: skip
    m, t = runs["mlx"]["sae"], runs["torch"]["sae"]
    assert m.n_tokens == t.n_tokens > 1000
    assert m.fires.sum() > 0
    # firing decisions can flip only for activations at float32 rounding distance of 0
    assert np.abs(m.fires - t.fires).sum() <= 2
    assert relative_error(m.sum_act, t.sum_act) < TOL
    assert relative_error(np.nan_to_num(m.top_vals, neginf=0), np.nan_to_num(t.top_vals, neginf=0)) < TOL  # fmt: skip
    ties = 0
    for u in range(m.n_units):
        a = set(zip(m.top_window[u], m.top_pos[u], strict=True))
        b = set(zip(t.top_window[u], t.top_pos[u], strict=True))
        if a != b:  # allowed only where the values at the boundary tie
            ties += 1
            assert abs(float(m.top_vals[u, -1]) - float(t.top_vals[u, -1])) < 1e-5 * max(1, abs(float(m.top_vals[u, 0])))  # fmt: skip
    assert ties <= 2
    vocab = vocab_strings(model.tokenizer, m.vocab_size)
    mm, mt = unit_metrics(m, token_classes(vocab)), unit_metrics(t, token_classes(vocab))
    for k in ("density", "mean_act", "max_act", "entropy", "purity", "explanation"):
        a, b = np.nan_to_num(mm[k]), np.nan_to_num(mt[k])
        assert relative_error(a, b) < 1e-3 if k in ("entropy", "purity") else relative_error(a, b) < 1e-4, k  # fmt: skip


def test_feature_interventions_agree(setup):
    model, folder, sae, _ = setup
    ref = load_torch(folder, dtype="float32")
    text = "the quick brown fox jumps over a lazy dog while sparse features read"
    a = feature_ablation(model, sae, text, [0, 1, 2, 3])
    b = feature_ablation(ref, sae, text, [0, 1, 2, 3])
    assert a.active == b.active
    assert relative_error(a.clean_loss, b.clean_loss) < TOL
    for j in a.ablated_loss:
        assert relative_error(a.ablated_loss[j], b.ablated_loss[j]) < TOL
        assert abs(a.kl[j] - b.kl[j]) < 1e-5
    for mode, value in (("add", 30.0), ("clamp", 20.0)):
        sa = steer_feature(model, sae, "the quick brown", 1, mode, value, max_new_tokens=6)
        sb = steer_feature(ref, sae, "the quick brown", 1, mode, value, max_new_tokens=6)
        assert sa["steered"] == sb["steered"] and sa["normal"] == sb["normal"]
