"""Model diffing (mlx_interp.analysis.diff, ``mlx-interp diff``) on tiny random checkpoints and
perturbed copies of them: the diff points at the changed layer and neurons, one model resident
at a time gives the same numbers as both, the numbers match a direct computation (MLX and
torch_ref), the outputs, the report section and bad input."""

from __future__ import annotations

import json
import random
import shutil

import mlx.core as mx
import numpy as np
import pytest

from conftest import write_tokenizer
from mlx_interp import load_model
from mlx_interp.activations import boundary_token, iter_windows
from mlx_interp.analysis.diff import DiffConfig, diff_models
from mlx_interp.cli import main

C = 32
NEURONS = [5, 17]


def _docs(n=30, seed=0):
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]


def perturbed_copy(folder, dest, edit):
    """A copy of an HF folder with ``edit(weights)`` applied to its safetensors."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, dest)
    w = load_file(str(dest / "model.safetensors"))
    edit(w)
    save_file(w, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _up_rows(w):
    k = "model.layers.1.mlp.up_proj.weight"
    w[k] = w[k].copy()
    w[k][NEURONS] += np.random.default_rng(0).normal(0, 0.3, (2, w[k].shape[1])).astype(np.float32)


@pytest.fixture(scope="module")
def pair(checkpoint_dir, tmp_path_factory):
    base = checkpoint_dir("llama-gqa-untied")
    tuned = perturbed_copy(base, tmp_path_factory.mktemp("p") / "tuned", _up_rows)
    return base, tuned


CFG = DiffConfig(tokens=6 * C, lens_tokens=64, context_length=C, model_batch_size=4, top_neurons=3)


@pytest.fixture(scope="module")
def both(pair):
    return diff_models(str(pair[0]), str(pair[1]), _docs(), cfg=CFG)


def test_diff_points_at_the_perturbed_layer_and_neurons(both):
    r = both
    assert r["resident"] == "both"
    assert r["first_difference"]["hook"] == "blocks.1.hook_mlp_out"
    rows = r["by_layer"]
    assert [x["layer"] for x in rows] == ["embed", "L0", "L1", "L2"]
    for x in rows[:2]:  # before the change: bitwise equal
        assert (
            x["resid_rel_diff"] == 0 and x["resid_cosine"] == pytest.approx(1) and x["lens_kl"] == 0
        )
    assert rows[2]["attn_out_rel_diff"] == 0 and rows[2]["mlp_out_rel_diff"] > 1e-3
    assert rows[3]["attn_out_rel_diff"] > 0  # downstream everything moves
    assert sorted(n["neuron"] for n in r["top_neurons_per_layer"][1][:2]) == NEURONS
    assert r["top_neurons_per_layer"][0][0]["mean_abs_change"] == 0
    assert r["most_changed_mlp_layer"] == 1 and r["output_kl"] > 0
    assert r["tokens_counted"] > 0 and r["left_out"]["position_0"] == 6


def test_one_model_resident_gives_the_same_numbers(pair, both, tmp_path):
    cfg = DiffConfig(**{**CFG.__dict__, "resident": "one"})
    r = diff_models(str(pair[0]), str(pair[1]), _docs(), out=tmp_path, cfg=cfg)
    assert r["resident"] == "one" and not (tmp_path / "base_activations").exists()
    assert r["tokens_counted"] == both["tokens_counted"] and r["left_out"] == both["left_out"]
    for x, y in zip(r["by_layer"], both["by_layer"], strict=True):
        for k, v in y.items():
            if isinstance(v, float):
                assert x[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
    assert r["first_difference"] == both["first_difference"]
    np.testing.assert_allclose(r["_rel_change"], both["_rel_change"], rtol=1e-6)
    kept = diff_models(str(pair[0]), str(pair[1]), _docs(), out=tmp_path, cfg=DiffConfig(**{**cfg.__dict__, "keep_activations": True}))  # fmt: skip
    assert (tmp_path / "base_activations" / "metadata.json").exists() and kept["first_difference"]


def _rows(model, docs, hooks):
    tok = model.tokenizer
    acts, keeps = {h: [] for h in hooks}, []
    left = CFG.tokens // C  # the windows the diff reads
    for w in iter_windows(tok, docs, C, 4):
        t, kinds = w.tokens[:left], w.kinds[:left]
        left -= len(t)
        _, cache = model.run_with_cache(t, names_filter=hooks)
        for h in hooks:
            acts[h].append(np.asarray(cache[h]).reshape(t.size, -1))
        keeps.append((np.arange(t.size) % C != 0) & (t.reshape(-1) != boundary_token(tok)) & (kinds.reshape(-1) != 3))  # fmt: skip
        if left <= 0:
            break
    keep = np.concatenate(keeps)
    return {h: np.concatenate(v)[keep] for h, v in acts.items()}


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_numbers_match_a_direct_computation(pair, both):
    a, b = load_model(pair[0]), load_model(pair[1])
    hooks = ["blocks.2.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_post"]
    A, B = _rows(a, _docs(), hooks), _rows(b, _docs(), hooks)
    ra, rb = A["blocks.2.hook_resid_post"], B["blocks.2.hook_resid_post"]
    assert len(ra) == both["tokens_counted"]
    rel = np.linalg.norm(rb - ra, axis=1) / np.linalg.norm(ra, axis=1)
    cos = (ra * rb).sum(1) / np.linalg.norm(ra, axis=1) / np.linalg.norm(rb, axis=1)
    row = both["by_layer"][3]
    assert row["resid_rel_diff"] == pytest.approx(rel.mean(), rel=1e-5)
    assert row["resid_cosine"] == pytest.approx(cos.mean(), rel=1e-6)
    ma, mb = A["blocks.1.hook_mlp_out"], B["blocks.1.hook_mlp_out"]
    mrel = np.linalg.norm(mb - ma, axis=1) / np.linalg.norm(ma, axis=1)
    assert both["by_layer"][2]["mlp_out_rel_diff"] == pytest.approx(mrel.mean(), rel=1e-5)
    na, nb = A["blocks.1.mlp.hook_post"], B["blocks.1.mlp.hook_post"]
    change = np.abs(nb - na).mean(0)
    assert both["top_neurons_per_layer"][1][0]["mean_abs_change"] == pytest.approx(
        change.max(), rel=1e-5
    )
    # logit lens at the last layer = the models' own output distributions
    la = _log_softmax(np.asarray(a.unembed(mx.array(ra[:64]))).astype(np.float64))
    lb = _log_softmax(np.asarray(b.unembed(mx.array(rb[:64]))).astype(np.float64))
    kl = (np.exp(la) * (la - lb)).sum(1)
    assert row["lens_kl"] == pytest.approx(kl.mean(), rel=1e-3, abs=1e-9)


def test_residual_difference_matches_torch_ref(pair):
    torch_ref = pytest.importorskip("torch_ref")
    a, b = (torch_ref.load_model(p, dtype="float32") for p in pair)
    tok = load_model(pair[0]).tokenizer
    w = next(iter_windows(tok, _docs(), C, 4))  # the 4 full windows of one forward pass
    hook = "blocks.2.hook_resid_post"
    ca, cb = (m.run_with_cache(w.tokens.astype(np.int64), names_filter=[hook])[1][hook].numpy().reshape(-1, 64) for m in (a, b))  # fmt: skip
    keep = (np.arange(w.tokens.size) % C != 0) & (w.tokens.reshape(-1) != boundary_token(tok))
    rel = np.linalg.norm(cb - ca, axis=1)[keep] / np.linalg.norm(ca, axis=1)[keep]
    r = diff_models(str(pair[0]), str(pair[1]), _docs(), cfg=DiffConfig(**{**CFG.__dict__, "tokens": 4 * C}))  # fmt: skip
    assert r["tokens_counted"] == keep.sum()
    assert r["by_layer"][3]["resid_rel_diff"] == pytest.approx(rel.mean(), rel=1e-4)


def test_gpt2_attention_change_is_found_and_identical_models_show_none(checkpoint_dir, tmp_path):
    base = checkpoint_dir("gpt2")

    def attn(w):
        k = (
            "h.2.attn.c_proj.weight"
            if "h.2.attn.c_proj.weight" in w
            else "transformer.h.2.attn.c_proj.weight"
        )
        w[k] = w[k] * 1.5

    tuned = perturbed_copy(base, tmp_path / "t", attn)
    r = diff_models(str(base), str(tuned), _docs(), cfg=CFG)
    assert r["first_difference"]["hook"] == "blocks.2.hook_attn_out"
    assert r["by_layer"][3]["mlp_out_rel_diff"] > 0
    same = diff_models(str(base), str(base), _docs(), cfg=CFG)
    assert same["first_difference"] is None and same["output_kl"] == 0
    assert all(x["resid_rel_diff"] == 0 for x in same["by_layer"])


def test_cli_writes_everything_and_the_report(pair, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(_docs(20)))
    run_dir = tmp_path / "run"
    rc = main(["diff", "--base", str(pair[0]), "--tuned", str(pair[1]), "--out", str(run_dir / "diff"), "--data", str(data),
               "--tokens", "128", "--lens-tokens", "32", "--context-length", "32", "--resident", "one"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "first difference: blocks.1.hook_mlp_out" in printed
    for f in (
        "summary.json",
        "diff.md",
        "diff_by_layer.png",
        "diff_by_layer.csv",
        "neuron_change_heatmap.png",
    ):
        assert (run_dir / "diff" / f).stat().st_size > 0, f
    s = json.loads((run_dir / "diff" / "summary.json").read_text())
    assert s["data"] == str(data) and s["resident"] == "one" and s["lens_tokens"] == 32
    from mlx_interp.report import build_report

    text = build_report(run_dir, pdf=False).read_text()
    assert "## Model diff" in text and "blocks.1.hook_mlp_out" in text


def test_bad_input_is_one_line_errors(checkpoint_dir, pair, tmp_path, capsys):
    other_tok = tmp_path / "other-tokenizer"
    shutil.copytree(pair[0], other_tok)
    for f in other_tok.glob("tok*"):
        f.unlink()
    write_tokenizer(other_tok, vocab_size=300)  # the sample text has 388 tokens at most
    cases = [
        (
            [str(checkpoint_dir("gpt2")), str(pair[0])],
            "the models differ in architecture (gpt2 vs llama)",
        ),
        ([str(pair[0]), str(checkpoint_dir("llama-mha-tied"))], "the models differ in"),
        ([str(pair[0]), str(other_tok)], "the tokenizers differ"),
        ([str(pair[0]), str(tmp_path / "missing")], "missing"),
    ]
    for (a, b), msg in cases:
        rc = main(["diff", "--base", a, "--tuned", b, "--out", str(tmp_path / "o"), "--tokens", "64", "--context-length", "32"])  # fmt: skip
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "Writing model shards" not in x]  # transformers' bars  # fmt: skip
        assert rc == 2 and len(err) == 1 and msg in err[0] and err[0].startswith("mlx-interp diff: error:"), (a, b, err)  # fmt: skip
    rc = main(
        [
            "diff",
            "--base",
            str(pair[0]),
            "--tuned",
            str(pair[1]),
            "--out",
            str(tmp_path / "o"),
            "--tokens",
            "0",
        ]
    )
    assert rc == 2 and "--tokens must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_both_models_in_4_bit(pair):
    r = diff_models(str(pair[0]), str(pair[1]), _docs(), cfg=CFG, quantize=4, group_size=32)
    assert r["first_difference"]["hook"] == "blocks.1.hook_mlp_out"
    assert r["by_layer"][1]["resid_rel_diff"] == 0
    assert sorted(n["neuron"] for n in r["top_neurons_per_layer"][1][:2]) == NEURONS
