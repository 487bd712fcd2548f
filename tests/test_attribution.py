"""Attribution patching (AtP) in MLX: gradients, the unchanged forward, restricted hooks,
the analyze section, bad input; and AtP against real activation patching on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.atp_vs_patching import IOI_CLEAN, IOI_CORRUPT, spearman
from mlx_interp.analysis.attribution import attribution_patching, logit_diff_metric
from mlx_interp.analysis.interventions import activation_patching, head_patching
from mlx_interp.cli import main

CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"


def _metric_with(model, tokens, hook, value):
    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda x, h: value)])
    last = np.asarray(logits[0, -1], np.float64)
    return last


def test_scores_are_the_directional_derivative(llama):
    """score(h) = d/dt m(base with a_h -> a_h + t (a_src - a_h)) at t=0, by central
    differences; and the probes leave the clean run's metric as a plain forward gives it."""
    ar = attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome")
    ids = [llama.tokenizer.encode(s)[0] for s in (" Paris", " Rome")]
    last = np.asarray(llama(CLEAN)[0, -1], np.float64)
    assert ar.clean_metric == pytest.approx(last[ids[0]] - last[ids[1]], rel=1e-5)
    clean, corr = llama.to_tokens(CLEAN), llama.to_tokens(CORRUPT)
    for hook in ("blocks.1.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"):
        _, a = llama.run_with_cache(clean, names_filter=[hook])
        _, b = llama.run_with_cache(corr, names_filter=[hook])
        eps = 1e-2
        up = _metric_with(llama, clean, hook, a[hook] + eps * (b[hook] - a[hook]))
        dn = _metric_with(llama, clean, hook, a[hook] - eps * (b[hook] - a[hook]))
        fd = ((up[ids[0]] - up[ids[1]]) - (dn[ids[0]] - dn[ids[1]])) / (2 * eps)
        assert ar.scores[hook].sum() == pytest.approx(fd, rel=2e-3, abs=1e-5), hook
    assert ar.neurons["blocks.1.mlp.hook_post"].shape == (5, llama.cfg.d_mlp)
    assert ar.heads().shape == (llama.cfg.n_layers, llama.cfg.n_heads)
    assert ar.layer_pos("hook_attn_out").shape == (llama.cfg.n_layers, 5)
    kinds = {r["kind"] for r in ar.top(3)}
    assert kinds == {"head", "hook", "neuron"}


def test_restricted_hooks_and_denoising(llama):
    """A few hooks (the other blocks then run compiled) give the same scores; denoising
    is noising with the prompts' roles swapped."""
    hooks = ["blocks.1.hook_resid_pre", "blocks.2.hook_mlp_out"]
    full = attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome")
    part = attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome", hooks=hooks)
    assert set(part.scores) == set(hooks)
    for h in hooks:
        np.testing.assert_allclose(part.scores[h], full.scores[h], rtol=1e-4, atol=1e-7)
    den = attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome", direction="denoising")
    swapped = attribution_patching(llama, CORRUPT, CLEAN, " Paris", " Rome")
    assert den.clean_metric == swapped.corrupted_metric
    np.testing.assert_allclose(den.heads(), swapped.heads(), rtol=1e-5, atol=1e-8)
    metric = logit_diff_metric(*[llama.tokenizer.encode(s)[0] for s in (" Paris", " Rome")])
    own = attribution_patching(llama, CLEAN, CORRUPT, metric=lambda lg: 2 * metric(lg), hooks=hooks)
    np.testing.assert_allclose(own.scores[hooks[0]], 2 * full.scores[hooks[0]], rtol=1e-4)


def test_prompt_pairs_average(llama):
    """Several pairs: the metric is their mean, so a score is the mean of each pair's."""
    other = ("The capital of Italy is", "The capital of France is")
    one = attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome")
    two = attribution_patching(llama, *other, " Rome", " Paris")
    both = attribution_patching(llama, [CLEAN, other[0]], [CORRUPT, other[1]], [" Paris", " Rome"], [" Rome", " Paris"])  # fmt: skip
    assert both.clean_metric == pytest.approx((one.clean_metric + two.clean_metric) / 2, rel=1e-5)
    for h in ("blocks.1.hook_resid_pre", "blocks.2.attn.hook_pattern"):
        np.testing.assert_allclose(both.scores[h], (one.scores[h] + two.scores[h]) / 2, rtol=1e-4, atol=1e-7)  # fmt: skip
    with pytest.raises(ValueError, match="one per pair"):
        attribution_patching(llama, [CLEAN, other[0]], [CORRUPT, other[1]], [" Paris"], " Rome")
    with pytest.raises(ValueError, match="give pairs"):
        attribution_patching(llama, [CLEAN, other[0]], CORRUPT, " Paris", " Rome")


def test_bad_input_is_one_line(llama):
    with pytest.raises(ValueError, match="same number of tokens"):
        attribution_patching(llama, CLEAN, "The capital of the United Kingdom is", " Paris", " Rome")  # fmt: skip
    with pytest.raises(ValueError, match="not one"):
        attribution_patching(llama, CLEAN, CORRUPT, " Parisian zebra", " Rome")
    with pytest.raises(ValueError, match="direction"):
        attribution_patching(llama, CLEAN, CORRUPT, " Paris", " Rome", direction="sideways")
    with pytest.raises(ValueError, match="both answer and wrong"):
        attribution_patching(llama, CLEAN, CORRUPT)


def test_analyze_atp_writes_heatmaps_and_table(checkpoint_dir, tmp_path, capsys):
    from mlx_interp import load_model
    from mlx_interp.sae import SAEConfig
    from mlx_interp.sae.sae import SAE

    folder = checkpoint_dir("llama-gqa-untied")
    d = load_model(folder).cfg.d_model
    cfg = SAEConfig(d_in=d, d_sae=32, architecture="standard", hook_name="blocks.1.hook_resid_post")  # fmt: skip
    SAE(cfg, seed=0).save(tmp_path / "sae")
    out = tmp_path / "a"
    args = ["analyze", "--model", str(folder), "--out", str(out),
            "--atp", CLEAN, CORRUPT, " Paris", " Rome", "--atp-only", "--atp-top", "5"]  # fmt: skip
    assert main([*args, "--atp-sae", str(tmp_path / "sae")]) == 0
    index = (out / "index.md").read_text()
    for f in ("atp_hooks.png", "atp_heads.png", "atp_hooks.csv", "atp_heads.csv", "atp_top.csv"):
        assert (out / f).stat().st_size > 100, f
        assert f in index
    assert "Logit lens" not in index  # --atp-only
    top = (out / "atp_top.md").read_text()
    assert "| head |" in top and "| neuron |" in top and "| feature |" in top
    rows = (out / "atp_top.csv").read_text().splitlines()
    kinds = [r.split(",")[0] for r in rows[1:]]
    for kind in ("head", "hook", "neuron", "feature"):
        assert kinds.count(kind) == 5, kind
    assert 1 <= kinds.count("sae_error") <= 5  # positions after the changed token only
    assert main([*args[:3], "--out", str(tmp_path / "c"), *args[5:], "--atp-sae", str(tmp_path)]) == 2  # fmt: skip
    assert "not an SAE folder" in capsys.readouterr().err
    bad = main([*args[:5], "--atp", CLEAN, "The capital of the United Kingdom is", " Paris", " Rome"])  # fmt: skip
    assert bad == 2 and "same number of tokens" in capsys.readouterr().err
    assert main([*args[:3], "--out", str(tmp_path / "b"), "--atp-only"]) == 2
    assert "--atp-only needs --atp" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------- the real model: AtP vs patching


def test_atp_ranks_components_as_patching_does_on_smollm2():
    """Noising on the IOI prompt: AtP against real patching (the corrupted activation
    patched into the clean run), per position of the attention and MLP outputs of layers
    10 and 20, and every head of layers 0, 10 and 20 (hook_z, all positions), to keep the test
    short. Measured on every layer (README, benchmarks/atp_vs_patching.py): heads 0.988,
    attn_out 0.941, mlp_out 0.888 (0.60 on layers 0-4, whose MLPs act as part of the token
    embedding), resid_pre 0.844 (0.62 on layers 0-4: it carries the token itself)."""
    from mlx_interp import load_model

    model = load_model("smollm2-135m")
    assert model.to_str_tokens(IOI_CLEAN)[-5:] == [" John", " gave", " a", " drink", " to"]
    ar = attribution_patching(model, IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    assert ar.clean_metric > 3 and ar.corrupted_metric < -3
    layers = [10, 20]
    for hook in ("hook_attn_out", "hook_mlp_out"):
        # activation_patching patches its 'clean' prompt into its 'corrupted' one: swapped,
        # the corrupted activation goes into the clean run (noising).
        p = activation_patching(model, IOI_CORRUPT, IOI_CLEAN, " Mary", " John", "blocks.{L}." + hook, layers)  # fmt: skip
        effect = p.patched_diff - p.corrupted_diff
        assert spearman(ar.layer_pos(hook)[layers], effect) > 0.9, hook
    layers = [0, 10, 20]
    h = head_patching(model, IOI_CORRUPT, IOI_CLEAN, " Mary", " John", layers)
    assert spearman(ar.heads()[layers], h.patched_diff - h.corrupted_diff) > 0.9


def test_run_all_adds_the_atp_section_to_every_analysis(gpt2, tmp_path):
    """GPT-2 (learned positions, LayerNorm, a bias everywhere) through the whole analyze
    run with the AtP section, denoising."""
    from mlx_interp.analysis import run_all

    texts = ["The quick brown fox jumps over the lazy dog."] * 8
    written = run_all(gpt2, ["The quick brown fox"], tmp_path, texts, max_tokens=256,
                      log=lambda s: None, atp=(CLEAN, CORRUPT, " Paris", " Rome"),
                      atp_direction="denoising", atp_top=3)  # fmt: skip
    names = {p.name for p in written}
    assert {"atp_hooks.png", "atp_heads.png", "atp_top.md", "p0_logit_lens.png"} <= names
    index = (tmp_path / "index.md").read_text()
    assert "# Attribution patching" in index and "denoising" in index and "Logit lens" in index
    with pytest.raises(ValueError, match="four texts"):
        run_all(gpt2, ["x"], tmp_path / "b", texts, atp=(CLEAN, CORRUPT, " Paris"))
    assert not (tmp_path / "b").exists()
