"""Transcoder parity: MLX against torch_ref on the same weights, inputs and targets.

Tolerances as for SAEs (``test_sae_parity``): encode, prediction, loss and every gradient
within 1e-5 relative; training curves within 1e-4, trained weights within 1e-3.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_interp.parity import relative_error
from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params, loss_terms
from torch_ref import sae as tsae

SAE_TOL = 1e-5
D_IN, D_OUT, D_SAE = 24, 20, 96


def _weights(cfg, seed=0):
    rng = np.random.default_rng(seed)
    p = init_params(cfg, seed, data_sample=rng.standard_normal((200, cfg.out_width)))
    for k in p:  # W_skip starts at zero: make every weight count
        p[k] = (p[k] + 0.05 * rng.standard_normal(p[k].shape)).astype(np.float32)
    if "threshold" in p:
        p["threshold"] = (np.abs(p["threshold"]) + 0.3).astype(np.float32)
    return p


ARCHS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")
CASES = [(a, s) for a in ARCHS for s in (False, True)]


@pytest.mark.parametrize("arch,skip", CASES, ids=[f"{a}-{'skip' if s else 'plain'}" for a, s in CASES])  # fmt: skip
def test_transcoder_forward_loss_gradients(arch, skip):
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, architecture=arch, skip=skip,
                    k=6 if "topk" in arch else None)  # fmt: skip
    assert cfg.apply_b_dec_to_input is False
    p = _weights(cfg)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, D_IN)).astype(np.float32)
    y = rng.standard_normal((64, D_OUT)).astype(np.float32)
    m, t = SAE(cfg, p), tsae.SAE(cfg, p)
    fm, ym = m(mx.array(x))
    ft, yt = t(torch.from_numpy(x))
    assert ym.shape == (64, D_OUT)
    assert relative_error(fm, ft.numpy()) < SAE_TOL
    assert relative_error(ym, yt.numpy()) < SAE_TOL
    assert relative_error(m.reconstruct(mx.array(x)), yt.numpy()) < SAE_TOL
    # the prediction is decode(f) + x @ W_skip.T, as SAELens's forward
    expect = np.asarray(fm) @ p["W_dec"] + p["b_dec"] + (x @ p["W_skip"].T if skip else 0)
    assert relative_error(ym, expect) < SAE_TOL

    tp = dict(p)
    if arch == "jumprelu":
        tp["log_threshold"] = np.log(tp.pop("threshold"))
    tp.pop("threshold", None)
    dead = np.arange(D_SAE) % 4 == 0
    kw = dict(sparsity_coeff=0.3, aux_k=10, bandwidth=0.5)
    for sparse in (True, False) if arch == "topk" else (False,):

        def mlx_loss(q, sparse=sparse):
            return loss_terms(q, mx.array(x), cfg, dead_mask=mx.array(dead), sparse_decode=sparse,
                              target=mx.array(y), **kw)[0]  # fmt: skip

        lm, gm = mx.value_and_grad(mlx_loss)({k: mx.array(v) for k, v in tp.items()})
        tq = {k: torch.tensor(v, requires_grad=True) for k, v in tp.items()}
        lt, _ = tsae.forward_loss(tq, torch.from_numpy(x), cfg, dead_mask=torch.from_numpy(dead),
                                  target=torch.from_numpy(y), **kw)  # fmt: skip
        lt.backward()
        assert relative_error(lm, lt.detach().numpy()) < SAE_TOL
        for name in tp:
            err = relative_error(gm[name], tq[name].grad.numpy())
            assert err < SAE_TOL, f"gradient of {name} (sparse={sparse}): {err:.2e}"
        if skip:
            assert np.abs(tq["W_skip"].grad.numpy()).sum() > 0


CURVE_TOL, WEIGHT_TOL = 1e-4, 1e-3


@pytest.mark.parametrize("arch,skip", [("topk", True), ("batchtopk", False), ("jumprelu", True)])
def test_transcoder_training_curves_match(arch, skip, tmp_path):
    """The same transcoder run in both backends (from the same initialisation, on the same
    batches): the logged curves and the trained weights agree; TopK with latents dying so
    that AuxK is in the curves."""
    from mlx_interp.sae.training import TrainConfig, train_sae

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256 * 40, D_IN)) + 0.5).astype(np.float32)
    w1, w2 = rng.standard_normal((D_IN, 64)) / 4, rng.standard_normal((64, D_OUT)) / 8
    y = (np.maximum(x @ w1 - 0.5, 0) @ w2 + 0.5 * x[:, :D_OUT] + 1).astype(np.float32)
    tc = TrainConfig(architecture=arch, d_sae=128 if arch == "topk" else D_SAE, k=6,
                     tokens=256 * 30, batch_size=256, lr=2e-3, log_every=10,
                     checkpoint_every=1000, dead_tokens=768, skip_transcoder=skip,
                     sparsity_coeff=0.5 if arch == "jumprelu" else None)  # fmt: skip
    runs = {}
    for be in ("mlx", "torch"):
        runs[be] = train_sae({"x": x, "y": y}, [("x", "y")], tc=tc, out=tmp_path / be,
                             backend=be, progress=False)  # fmt: skip
    for key in ("loss", "mse", "explained_variance", "l0", "dead_fraction"):
        a = np.array([r["x_to_y"][key] for r in runs["mlx"]["log"]])
        b = np.array([r["x_to_y"][key] for r in runs["torch"]["log"]])
        if key == "dead_fraction":
            np.testing.assert_array_equal(a, b)
        else:
            assert relative_error(a, b) < CURVE_TOL, f"{key}: {relative_error(a, b):.2e}"
    m, t = SAE.load(tmp_path / "mlx" / "x_to_y"), tsae.SAE.load(tmp_path / "torch" / "x_to_y")
    assert set(m.params) == set(t.params) and ("W_skip" in m.params) == skip
    for name in m.params:
        assert relative_error(m.params[name], t.params[name].numpy()) < WEIGHT_TOL, name
    if arch == "topk":
        assert max(r["x_to_y"]["dead_fraction"] for r in runs["mlx"]["log"]) > 0
    log = runs["mlx"]["log"]
    assert log[-1]["x_to_y"]["mse"] < 0.85 * log[0]["x_to_y"]["mse"]
