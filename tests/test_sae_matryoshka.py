"""Matryoshka BatchTopK SAEs (Bussmann et al. 2025): the prefix widths and their checks, the
loss (the sum of every prefix's reconstruction MSE), the cfg.json written for SAELens (a
JumpReLU SAE, as SAELens saves one), training, resume and eval-sae's per-prefix metrics."""

from __future__ import annotations

import json
import re

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_interp.cli import main
from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.config import default_matryoshka_widths, matryoshka_widths
from mlx_interp.sae.metrics import PrefixMetrics
from mlx_interp.sae.sae import init_params, loss_terms
from mlx_interp.sae.training import TrainConfig, train_sae
from torch_ref.sae import SAE as TorchSAE

ARCH = "matryoshka_batchtopk"


def synthetic(n=6000, d=12, n_feat=48, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_feat, d))
    codes = (rng.random((n, n_feat)) < 0.08) * rng.exponential(1.0, (n, n_feat))
    return (codes @ feats + 0.05 * rng.standard_normal((n, d)) + 1.0).astype(np.float32)


def test_widths_default_and_checks():
    assert default_matryoshka_widths(9216) == [128, 512, 2048, 9216]
    assert default_matryoshka_widths(16384) == [128, 512, 2048, 8192, 16384]
    assert default_matryoshka_widths(64) == [4, 16, 64]
    assert matryoshka_widths("8, 32", 40) == [8, 32, 40]  # d_sae appended, as SAELens does
    assert matryoshka_widths([8, 40], 40) == [8, 40]
    assert SAEConfig(d_in=4, d_sae=64, architecture=ARCH, k=2).matryoshka_widths == [4, 16, 64]
    for bad, msg in [([32, 8], "increase strictly"), ([8, 8], "increase strictly"),
                     ([8, 80], "go past d_sae=40"), ("8,x", "comma-separated"), ([], "non-empty"),
                     ([0, 8], "positive integer")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            matryoshka_widths(bad, 40)
    with pytest.raises(ValueError, match="for the matryoshka_batchtopk architecture"):
        SAEConfig(d_in=4, d_sae=8, architecture="batchtopk", k=2, matryoshka_widths=[4])
    with pytest.raises(ValueError, match="needs k"):
        SAEConfig(d_in=4, d_sae=8, architecture=ARCH)
    # TrainConfig: the flag's text is parsed; checked against d_sae once it is known
    tc = TrainConfig(architecture=ARCH, matryoshka_widths="16,64", d_sae=256, k=4)
    assert tc.matryoshka_widths == [16, 64] and tc.resolve(12).matryoshka_widths == [16, 64, 256]
    assert TrainConfig(architecture=ARCH, expansion=2, k=4).resolve(12).matryoshka_widths == [
        1, 4, 24
    ]  # fmt: skip
    with pytest.raises(ValueError, match="go past d_sae=24"):
        TrainConfig(architecture=ARCH, matryoshka_widths=[8, 32], expansion=2, k=4).resolve(12)
    with pytest.raises(ValueError, match="go past d_sae=16"):  # up front when d_sae is given
        TrainConfig(architecture=ARCH, matryoshka_widths=[8, 32], d_sae=16, k=4)
    with pytest.raises(ValueError, match="for --arch matryoshka_batchtopk, not topk"):
        TrainConfig(architecture="topk", matryoshka_widths=[8])
    with pytest.raises(ValueError, match="matryoshka_aux is for --arch matryoshka_batchtopk"):
        TrainConfig(architecture="batchtopk", matryoshka_aux=True)


def test_loss_is_the_sum_of_the_prefix_mses():
    """One BatchTopK selection over the whole dictionary; each prefix decodes its own latents
    of it; the loss adds every prefix's MSE (checked in NumPy); one prefix is BatchTopK."""
    cfg = SAEConfig(d_in=12, d_sae=40, architecture=ARCH, k=4, matryoshka_widths=[5, 20])
    rng = np.random.default_rng(0)
    p = init_params(cfg, 0, data_sample=rng.standard_normal((100, 12)))
    p.pop("threshold")
    p["b_enc"] = rng.standard_normal(40).astype(np.float32) * 0.3
    x = rng.standard_normal((32, 12)).astype(np.float32)
    params = {k: mx.array(v) for k, v in p.items()}
    loss, out = loss_terms(params, mx.array(x), cfg)
    f = np.array(out["f"], np.float64)
    assert (f > 0).sum() == 4 * 32  # k per row on average, chosen across the batch
    mses = [((f[:, :w] @ p["W_dec"][:w] + p["b_dec"] - x) ** 2).sum(-1).mean() for w in (5, 20, 40)]
    np.testing.assert_allclose(np.array(out["prefix_mse"]), mses, rtol=1e-5)
    np.testing.assert_allclose(float(loss), sum(mses), rtol=1e-5)
    np.testing.assert_allclose(float(out["mse"]), mses[-1], rtol=1e-6)
    one = SAEConfig(d_in=12, d_sae=40, architecture=ARCH, k=4, matryoshka_widths=[40])
    btk = SAEConfig(d_in=12, d_sae=40, architecture="batchtopk", k=4)
    assert float(loss_terms(params, mx.array(x), one)[0]) == float(
        loss_terms(params, mx.array(x), btk)[0]
    )


def test_cfg_json_schema_and_both_backends_load(tmp_path):
    """The file SAELens reads: architecture jumprelu with one threshold per latent (all the
    global one), k, the threshold and the widths in the metadata; it loads back, in both
    backends, as the Matryoshka SAE it is, and runs as a JumpReLU with that threshold."""
    cfg = SAEConfig(d_in=12, d_sae=40, architecture=ARCH, k=4, matryoshka_widths=[5, 20],
                    hook_name="blocks.0.hook_resid_post", threshold=0.25)  # fmt: skip
    p = init_params(cfg, 0)
    p["b_enc"] = np.random.default_rng(1).standard_normal(40).astype(np.float32) * 0.3
    SAE(cfg, p).save(tmp_path / "s")
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu" and raw["d_sae"] == 40 and "k" not in raw
    meta = raw["metadata"]
    assert meta["trained_architecture"] == ARCH and meta["k"] == 4
    assert meta["threshold"] == 0.25 and meta["training_architecture"] == ARCH
    assert meta["training_architecture_details"]["matryoshka_widths"] == [5, 20, 40]
    assert meta["hook_name"] == "blocks.0.hook_resid_post"
    from safetensors.numpy import load_file

    w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert sorted(w) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    np.testing.assert_array_equal(w["threshold"], np.full(40, 0.25, np.float32))
    x = np.random.default_rng(2).standard_normal((16, 12)).astype(np.float32)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f_np = np.where(pre > 0.25, pre, 0)
    for sae in (SAE.load(tmp_path / "s"), TorchSAE.load(tmp_path / "s")):
        assert sae.cfg.architecture == ARCH and sae.cfg.matryoshka_widths == [5, 20, 40]
        assert sae.cfg.k == 4 and sae.cfg.threshold == 0.25
        f = sae.encode(mx.array(x)) if isinstance(sae, SAE) else sae.encode(torch.from_numpy(x))
        np.testing.assert_allclose(np.asarray(f.tolist()), f_np, atol=1e-5)
    # a JumpReLU file that does not say it was Matryoshka stays a JumpReLU
    for key in ("trained_architecture", "training_architecture"):
        raw["metadata"].pop(key)
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(raw))
    assert SAE.load(tmp_path / "s").cfg.architecture == "jumprelu"


def test_train_resume_and_prefix_explained_variance(tmp_path):
    data = synthetic(16000)
    tc = TrainConfig(architecture=ARCH, d_sae=40, k=4, matryoshka_widths=[5, 20], lr=1e-2,
                     tokens=256 * 60, batch_size=256, log_every=10, checkpoint_every=15,
                     dead_tokens=512)  # fmt: skip
    a = train_sae(data, "h", 12, tc, tmp_path / "a", progress=False, warn=lambda m: None)
    train_sae(data, "h", 12, tc, tmp_path / "b", progress=False, stop_after_steps=25,
              warn=lambda m: None)  # fmt: skip
    b = train_sae(data, "h", 12, tc, tmp_path / "b", progress=False, warn=lambda m: None)
    sa, sb = SAE.load(tmp_path / "a" / "h"), SAE.load(tmp_path / "b" / "h")
    for name in sa.params:
        np.testing.assert_array_equal(np.array(sa.params[name]), np.array(sb.params[name]))
    # the same log, but for the row that straddles the stop (step 30: it averages 26..30)
    rows_a, rows_b = ([r["h"] for r in s["log"] if r["step"] != 30] for s in (a, b))
    assert rows_a == rows_b and len(rows_a) == 5
    assert sa.cfg.architecture == ARCH and sa.cfg.matryoshka_widths == [5, 20, 40]
    assert sa.cfg.threshold > 0
    norms = np.linalg.norm(np.array(sa.W_dec), axis=1) * a["hooks"]["h"]["input_scale"]
    np.testing.assert_allclose(norms, 1, rtol=1e-4)  # unit decoder rows, scale folded in
    for row in a["log"]:
        ev = row["h"]["prefix_explained_variance"]
        assert len(ev) == 3 and ev[-1] == row["h"]["explained_variance"]
    last = a["log"][-1]["h"]["prefix_explained_variance"]
    assert last[0] < last[1] < last[2] and last[0] > 0  # more latents, better; each learns


def test_prefix_metrics_match_numpy():
    rng = np.random.default_rng(0)
    w_dec, b_dec = rng.standard_normal((10, 4)), rng.standard_normal(4)
    f = np.maximum(rng.standard_normal((50, 10)), 0)
    x = f @ w_dec + b_dec + 0.1 * rng.standard_normal((50, 4))
    pm = PrefixMetrics([3, 10], w_dec, b_dec)
    pm.add(x[:20], f[:20])
    pm.add(x[20:], f[20:])
    r = pm.result()
    for entry, w in zip(r, (3, 10), strict=True):
        x_hat = f[:, :w] @ w_dec[:w] + b_dec
        ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert entry["width"] == w
        assert entry["explained_variance"] == pytest.approx(ev)
        assert entry["l0"] == pytest.approx((f[:, :w] > 0).sum(1).mean())


def test_cli_train_and_eval(checkpoint_dir, tmp_path, capsys):
    model = str(checkpoint_dir("llama-gqa-untied"))
    text = tmp_path / "t.txt"
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    rng = np.random.default_rng(0)
    text.write_text("\n\n".join(" ".join(rng.choice(words, 50)) for _ in range(200)))
    base = ["train-sae", "--model", model, "--hook", "blocks.1.hook_resid_post", "--data",
            str(text), "--arch", ARCH, "--d-sae", "64", "--k", "4", "--tokens", "1024",
            "--batch-size", "256", "--out", str(tmp_path / "run")]  # fmt: skip
    capsys.readouterr()
    rc = main(base + ["--matryoshka-widths", "8,128"])
    err = capsys.readouterr().err
    assert rc == 2 and "go past d_sae=64" in err and err.count("\n") == 1
    assert main(base + ["--matryoshka-widths", "8,32"]) == 0
    assert "explained variance of each Matryoshka prefix (width: EV) 8: " in capsys.readouterr().out
    folder = tmp_path / "run" / "blocks.1.hook_resid_post"
    assert SAE.load(folder).cfg.matryoshka_widths == [8, 32, 64]
    capsys.readouterr()
    rc = main(["eval-sae", "--model", model, "--sae", str(folder), "--data", str(text),
               "--tokens", "500", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert rc == 0 and "Matryoshka prefixes" in capsys.readouterr().out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    prefixes = m["matryoshka_prefixes"]
    assert [p["width"] for p in prefixes] == [8, 32, 64]
    assert prefixes[-1]["explained_variance"] == pytest.approx(m["explained_variance"])
    assert prefixes[-1]["l0"] == pytest.approx(m["l0"])
    assert prefixes[0]["l0"] <= prefixes[1]["l0"] <= prefixes[2]["l0"]
    # the report shows the prefixes beside the other metrics
    import shutil

    from mlx_interp.report import build_report

    run = tmp_path / "report_run"
    (run / "sae").mkdir(parents=True)
    shutil.copy(tmp_path / "run" / "training.json", run / "sae" / "training.json")
    shutil.copytree(tmp_path / "ev", run / "sae_eval")
    md = build_report(run, pdf=False).read_text()
    assert "Matryoshka prefixes (the first w latents alone)" in md
    ev8 = f"{prefixes[0]['explained_variance']:.4g}"
    assert re.search(rf"\| 8 \| [0-9.]+ \| {ev8} \|", md)
