"""SAE unit tests (MLX, plus the torch_ref where the API must match): shapes, TopK and its
sparse decode, AuxK, thresholds, SAELens files checked against NumPy, errors, resume."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.buffer import ShuffleBuffer, array_source
from mlx_interp.sae.sae import init_params, loss_terms
from mlx_interp.sae.training import TrainConfig, train_sae
from torch_ref.sae import SAE as TorchSAE

ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]


def make_cfg(arch, d_in=12, d_sae=40, k=4):
    return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if "topk" in arch else None)


def synthetic(n=6000, d=12, n_feat=48, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_feat, d))
    codes = (rng.random((n, n_feat)) < 0.08) * rng.exponential(1.0, (n, n_feat))
    return (codes @ feats + 0.05 * rng.standard_normal((n, d)) + 1.0).astype(np.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_api_both_backends(arch):
    cfg = make_cfg(arch)
    p = init_params(cfg, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 12)).astype(np.float32)
    for sae in (SAE(cfg, p), TorchSAE(cfg, p)):
        xx = mx.array(x) if isinstance(sae, SAE) else torch.from_numpy(x)
        f = sae.encode(xx)
        assert tuple(f.shape) == (5, 3, 40)
        assert tuple(sae.decode(f).shape) == (5, 3, 12)
        f2, x_hat = sae(xx)
        assert tuple(x_hat.shape) == (5, 3, 12)
        assert sae.cfg.d_in == 12 and sae.cfg.d_sae == 40 and sae.cfg.architecture == arch
        assert tuple(sae.W_enc.shape) == (12, 40) and tuple(sae.W_dec.shape) == (40, 12)


def test_init_encoder_is_decoder_transpose_and_b_dec_from_data():
    cfg = make_cfg("topk")
    data = synthetic()
    p = init_params(cfg, seed=0, data_sample=data, b_dec_init="mean")
    np.testing.assert_array_equal(p["W_enc"], p["W_dec"].T)
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(p["b_dec"], data.mean(0), rtol=1e-5)
    med = init_params(cfg, seed=0, data_sample=data)["b_dec"]
    # the geometric median minimises the summed distance: better than the mean
    dist = lambda c: np.linalg.norm(data - c, axis=1).sum()  # noqa: E731
    assert dist(med) <= dist(data.mean(0))


def test_topk_exactly_k_and_sparse_decode_matches_dense():
    cfg = make_cfg("topk", d_sae=64, k=5)
    sae = SAE(cfg, init_params(cfg, seed=2))
    x = mx.array(synthetic(50))
    f = sae.encode(x)
    assert int(((f > 0).sum(-1) <= 5).all().item()) and int((f > 0).sum(-1).max().item()) == 5
    values, idx = sae.encode_sparse(x)
    assert values.shape == (50, 5)
    np.testing.assert_allclose(
        np.array(sae.decode_sparse(values, idx)), np.array(sae.decode(f)), atol=1e-5
    )
    np.testing.assert_allclose(np.array(sae.reconstruct(x)), np.array(sae.decode(f)), atol=1e-5)


def _train_params(cfg, p):
    q = {k: mx.array(v) for k, v in p.items()}
    if cfg.architecture == "jumprelu":
        q["log_threshold"] = mx.log(q.pop("threshold"))
    q.pop("threshold", None)
    return q


def test_auxk_zero_without_dead_and_reaches_dead_latents():
    cfg = make_cfg("topk", d_sae=40, k=3)
    p = _train_params(cfg, init_params(cfg, seed=0))
    x = mx.array(synthetic(64))
    none = mx.zeros(40, dtype=mx.bool_)
    base, _ = loss_terms(p, x, cfg)
    no_dead, _ = loss_terms(p, x, cfg, dead_mask=none)
    assert abs(float(base.item()) - float(no_dead.item())) < 1e-6
    dead = mx.array(np.arange(40) >= 20)
    with_dead, parts = loss_terms(p, x, cfg, dead_mask=dead, aux_k=6)
    assert float(with_dead.item()) > float(base.item())
    g = mx.grad(lambda q: loss_terms(q, x, cfg, dead_mask=dead, aux_k=6)[0])(p)
    g0 = mx.grad(lambda q: loss_terms(q, x, cfg)[0])(p)
    # AuxK adds gradient to the dead latents' decoder rows
    extra = np.abs(np.array(g["W_dec"]) - np.array(g0["W_dec"])).sum(axis=1)
    assert extra[20:].sum() > 0 and extra[:20].sum() < 1e-6 * max(extra[20:].sum(), 1)


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_transpose_product_sums_pairs_by_column(sparse):
    from mlx_interp.sae.sae import sparse_transpose_product

    rng = np.random.default_rng(0)
    idx = rng.integers(0, 50, (30, 3))
    idx[0] = [7, 7, 9]  # pairs of one row sharing a column add up; most columns get none
    vals = rng.standard_normal((30, 3)).astype(np.float32)
    dense = rng.standard_normal((30, 5)).astype(np.float32)
    f = np.zeros((30, 50), np.float64)
    np.add.at(f, (np.arange(30)[:, None], idx), vals)
    got = sparse_transpose_product(mx.array(idx), mx.array(vals), mx.array(dense), 50, sparse)
    np.testing.assert_allclose(np.array(got), f.T @ dense, rtol=1e-5, atol=1e-6)


def test_auxk_columns_hold_every_dead_latent_in_few_shapes():
    from mlx_interp.sae.sae import aux_capacity_for, dead_columns

    assert [aux_capacity_for(n, 9216) for n in (0, 1, 256, 257, 1000, 4096, 4097)] == [
        256, 256, 256, 512, 1024, 4096, None,
    ]  # fmt: skip
    assert aux_capacity_for(10, 300) is None  # 256 columns of 300: not worth a gather
    dead = np.zeros(600, bool)
    dead[[3, 17, 599]] = True
    cols = np.array(dead_columns(mx.array(dead), 8))
    assert list(cols[:3]) == [3, 17, 599] and len(set(cols)) == 8 and not dead[cols[3:]].any()


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_steps_with_auxk_on_dead_columns_match_the_whole_dictionary(arch, monkeypatch):
    """The MLX step's AuxK on the dead latents' columns (capacity from the last step's
    count) gives the same parameters as AuxK over all d_sae columns."""
    import mlx_interp.sae.sae as sae_mod
    from mlx_interp.sae.training import MLXBackend

    tc = TrainConfig(architecture=arch, d_sae=600, k=4, aux_k=6, tokens=256 * 4, batch_size=256,
                     dead_tokens=2000).resolve(12)  # fmt: skip
    cfg = tc.sae_config(12, "h", None)
    x = synthetic(256 * 4)
    p = init_params(cfg, seed=0, data_sample=x)
    dead = np.random.default_rng(0).random(600) < 0.2  # 120 dead: 256 columns, not 600
    p["b_enc"] = np.where(dead, -30.0, 0.0).astype(np.float32)  # they stay dead
    states = {}
    for name, capacity in (("columns", sae_mod.aux_capacity_for), ("all", lambda *a: None)):
        monkeypatch.setattr(sae_mod, "aux_capacity_for", capacity)
        be = MLXBackend(cfg, tc, p, 1.0)
        be.state["since_fired"] = mx.array(np.where(dead, 5000, 0).astype(np.int32))
        for t in range(4):
            be.step(x[t * 256 : (t + 1) * 256], 1e-3, 0.0, t + 1, with_aux=True)
        assert be.n_dead() > 100
        states[name] = be.raw_params()
        if name == "columns":
            assert list(be._steps) == [(True, 256)]
    for k, v in states["all"].items():
        np.testing.assert_allclose(states["columns"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(states["all"]["W_dec"][dead], p["W_dec"][dead])  # AuxK trained them


def test_jumprelu_threshold_gradient_only_in_bandwidth():
    cfg = make_cfg("jumprelu", d_sae=8)
    p = init_params(cfg, seed=0, threshold_init=0.5)
    q = _train_params(cfg, p)
    q["W_enc"] = mx.eye(12)[:, :8]
    q["b_dec"] = mx.zeros(12)
    x = mx.zeros((1, 12))
    x[0, 0] = 0.51  # within the bandwidth of the threshold 0.5 -> gradient to theta_0
    x[0, 1] = 2.0  # far above -> none
    g = mx.grad(lambda r: loss_terms(r, x, cfg, sparsity_coeff=1.0, bandwidth=0.05)[0])(q)
    gt = np.array(g["log_threshold"])
    assert gt[0] != 0 and np.all(gt[1:] == 0)


def test_training_keeps_decoder_unit_norm_and_sets_batchtopk_threshold(tmp_path):
    data = synthetic()
    for arch in ("topk", "batchtopk", "jumprelu"):
        tc = TrainConfig(architecture=arch, d_sae=40, k=4, tokens=256 * 20, batch_size=256,
                         log_every=10, lr=1e-3)  # fmt: skip
        train_sae(array_source({"h": data}), ["h"], 12, tc, tmp_path / arch, progress=False)
        sae = SAE.load(tmp_path / arch / "h")
        scale = json.loads((tmp_path / arch / "training.json").read_text())["hooks"]["h"]
        # saved weights have the input scale folded in: rows have norm 1/scale
        norms = np.linalg.norm(np.array(sae.W_dec), axis=1) * scale["input_scale"]
        np.testing.assert_allclose(norms, 1, rtol=1e-4)
        if arch == "batchtopk":
            assert sae.cfg.architecture == "batchtopk" and sae.cfg.threshold > 0
            cfg = json.loads((tmp_path / arch / "h" / "cfg.json").read_text())
            assert cfg["architecture"] == "jumprelu"  # as SAELens saves BatchTopK
            np.testing.assert_allclose(np.array(sae.threshold), sae.cfg.threshold)
            l0 = float((sae.encode(mx.array(data[:2000])) > 0).sum(-1).mean().item())
            assert 1 < l0 < 12  # the threshold gives about k active latents


def test_normalisation_is_folded_into_saved_weights(tmp_path):
    data = synthetic() * 50  # far from norm sqrt(d_in)
    tc = TrainConfig(architecture="topk", d_sae=40, k=4, tokens=256 * 20, batch_size=256,
                     log_every=5, lr=3e-3, lr_warmup_steps=1)  # fmt: skip
    s = train_sae(array_source({"h": data}), ["h"], 12, tc, tmp_path, progress=False)
    sae = SAE.load(tmp_path / "h")
    x = data[:512]
    x_hat = np.array(sae.reconstruct(mx.array(x)))
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    # in raw units, the saved SAE explains what the trainer measured in normalised units
    assert ev > 0.1 and abs(ev - s["hooks"]["h"]["final"]["explained_variance"]) < 0.1, ev
    assert s["hooks"]["h"]["input_scale"] == pytest.approx(
        # from the first init_rows rows, or the run's own rows when it is shorter
        np.sqrt(12) / np.linalg.norm(data[: min(tc.init_rows, tc.tokens)], axis=1).mean(),
        rel=1e-5,
    )


# --- SAELens files --------------------------------------------------------------------------------


def write_saelens_by_hand(folder, arch, W_enc, b_enc, W_dec, b_dec, threshold=None, k=None,
                          rescale=False):  # fmt: skip
    folder.mkdir(parents=True)
    cfg = {
        "architecture": arch,
        "d_in": W_enc.shape[0],
        "d_sae": W_enc.shape[1],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.0",
            "model_name": "gpt2",
            "hook_name": "blocks.1.hook_resid_pre",
            "context_size": 128,
        },
    }
    if k is not None:
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = rescale
    (folder / "cfg.json").write_text(json.dumps(cfg))
    w = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        w["threshold"] = threshold
    save_file(
        {k2: v.astype(np.float32) for k2, v in w.items()}, str(folder / "sae_weights.safetensors")
    )


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_hand_made_saelens_file_matches_numpy(tmp_path, arch):
    rng = np.random.default_rng(3)
    d_in, d_sae, k = 6, 10, 3
    W_enc = rng.standard_normal((d_in, d_sae))
    b_enc = rng.standard_normal(d_sae) * 0.1
    W_dec = rng.standard_normal((d_sae, d_in))
    b_dec = rng.standard_normal(d_in) * 0.1
    thr = np.abs(rng.standard_normal(d_sae)) * 0.5
    write_saelens_by_hand(tmp_path / "s", arch, W_enc, b_enc, W_dec, b_dec,
                          thr if arch == "jumprelu" else None, k if arch == "topk" else None)  # fmt: skip
    x = rng.standard_normal((7, d_in))
    pre = (x - b_dec) @ W_enc + b_enc
    if arch == "standard":
        f = np.maximum(pre, 0)
    elif arch == "topk":
        f = np.zeros_like(pre)
        top = np.argsort(-pre, axis=1)[:, :k]
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    else:
        f = np.maximum(pre, 0) * (pre > thr)
    x_hat = f @ W_dec + b_dec
    m = SAE.load(tmp_path / "s")
    t = TorchSAE.load(tmp_path / "s")
    assert m.cfg.hook_name == "blocks.1.hook_resid_pre" and m.cfg.model_name == "gpt2"
    assert m.cfg.k == (k if arch == "topk" else None)
    xf = x.astype(np.float32)
    np.testing.assert_allclose(np.array(m.encode(mx.array(xf))), f, atol=1e-5)
    np.testing.assert_allclose(np.array(m(mx.array(xf))[1]), x_hat, atol=1e-4)
    np.testing.assert_allclose(t.encode(torch.from_numpy(xf)).numpy(), f, atol=1e-5)
    np.testing.assert_allclose(t(torch.from_numpy(xf))[1].numpy(), x_hat, atol=1e-4)


def test_pre_6_flat_saelens_cfg(tmp_path):
    cfg = SAEConfig.from_saelens(
        {
            "d_in": 4,
            "d_sae": 8,
            "hook_point": "blocks.0.hook_resid_post",
            "model_name": "m",
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 2},
        }  # fmt: skip
    )
    assert (cfg.architecture, cfg.k, cfg.hook_name) == ("topk", 2, "blocks.0.hook_resid_post")


def test_save_load_round_trip_and_saelens_fields(tmp_path):
    cfg = make_cfg("topk")
    cfg.hook_name, cfg.model_name = "blocks.3.hook_resid_post", "smollm2-135m"
    sae = SAE(cfg, init_params(cfg, seed=5))
    sae.save(tmp_path / "a")
    raw = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert raw["architecture"] == "topk" and raw["k"] == 4 and raw["d_in"] == 12
    assert raw["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert raw["metadata"]["sae_lens_version"] >= "6"
    back = TorchSAE.load(tmp_path / "a")
    np.testing.assert_array_equal(back.W_dec.numpy(), np.array(sae.W_dec))
    back.save(tmp_path / "b")  # torch writes the same file
    assert json.loads((tmp_path / "b" / "cfg.json").read_text()) == raw
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- errors --------------------------------------------------------------------------------------


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="k=50 must be between 1 and d_sae=40"):
        SAEConfig(d_in=12, d_sae=40, architecture="topk", k=50)
    with pytest.raises(ValueError, match="k=99"):
        TrainConfig(k=99, d_sae=40).resolve(12)
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    sae = SAE(make_cfg("topk"), init_params(make_cfg("topk")))
    with pytest.raises(ValueError, match="expects 12"):
        sae.encode(mx.zeros((2, 7)))
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        SAE.load(tmp_path)
    cfg = make_cfg("topk")
    p = init_params(cfg)
    p["W_dec"] = p["W_dec"][:, :5]
    (tmp_path / "bad").mkdir()
    save_file(p, str(tmp_path / "bad" / "sae_weights.safetensors"))
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg.to_saelens()))
    with pytest.raises(ValueError, match="W_dec has shape"):
        SAE.load(tmp_path / "bad")
    data = synthetic(3000)
    data[1500, 3] = np.nan
    tc = TrainConfig(d_sae=40, k=4, tokens=2048, batch_size=256)
    with pytest.raises(ValueError, match="NaN"):
        train_sae(array_source({"h": data}, chunk_rows=1000), ["h"], 12, tc, tmp_path / "n",
                  progress=False)  # fmt: skip


# --- shuffle buffer, resume, determinism ---------------------------------------------------------------


def test_shuffle_buffer_resumes_exactly():
    data = np.arange(1000, dtype=np.float32)[:, None]
    src = array_source({"h": data}, chunk_rows=70)
    full = [b["h"][:, 0] for b in ShuffleBuffer(src, 32, 200, seed=1)]
    assert len(full) == 1000 // 32
    assert len(np.unique(np.concatenate(full))) == 32 * len(full)  # no row twice
    buf = ShuffleBuffer(src, 32, 200, seed=1)
    it = iter(buf)
    first = [next(it)["h"][:, 0] for _ in range(9)]
    rest = [b["h"][:, 0] for b in ShuffleBuffer(src, 32, 200, seed=1, state=buf.state())]
    np.testing.assert_array_equal(np.concatenate(first + rest), np.concatenate(full))


def test_batch_order_is_exact_and_independent_of_chunking():
    data = np.arange(1000, dtype=np.float32)[:, None]
    orders = []
    for chunk_rows in (70, 200, 1000):
        src = array_source({"h": data}, chunk_rows=chunk_rows)
        orders.append(np.concatenate([b["h"][:, 0] for b in ShuffleBuffer(src, 32, 200, seed=1)]))
    np.testing.assert_array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[0], orders[2])
    # the documented rule, by hand: blocks of the leftover + exactly 200 fresh rows
    expected, carry, start, b = [], np.zeros(0), 0, 0
    while True:
        block = np.concatenate([carry, data[start : start + 200, 0]])
        start += 200
        if len(block) < 32:
            break
        perm = np.random.default_rng([1, b]).permutation(len(block))
        n = len(block) // 32 * 32
        expected.append(block[perm[:n]])
        carry, b = block[perm[n:]], b + 1
        if start >= len(data):
            break
    np.testing.assert_array_equal(orders[0], np.concatenate(expected))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_killed_run_resumes_to_the_same_result(tmp_path, backend):
    data = synthetic(12000)
    tc = TrainConfig(architecture="topk", d_sae=40, k=4, tokens=256 * 30, batch_size=256,
                     buffer_rows=2000, log_every=5, checkpoint_every=7, dead_tokens=1000)  # fmt: skip
    src = array_source({"h": data}, chunk_rows=900)
    train_sae(src, ["h"], 12, tc, tmp_path / "a", backend=backend, progress=False)
    train_sae(src, ["h"], 12, tc, tmp_path / "b", backend=backend, progress=False,
              stop_after_steps=17)  # fmt: skip
    assert not (tmp_path / "b" / "h").exists()  # no SAE before the run is complete
    assert (tmp_path / "b" / "checkpoint" / "trainer.json").exists()
    s = train_sae(src, ["h"], 12, tc, tmp_path / "b", backend=backend, progress=False)
    assert s["steps"] == 30
    a, b = SAE.load(tmp_path / "a" / "h"), SAE.load(tmp_path / "b" / "h")
    for name in a.params:
        np.testing.assert_array_equal(np.array(a.params[name]), np.array(b.params[name]))
    # same seed, same result; another seed, another
    train_sae(src, ["h"], 12, tc, tmp_path / "c", backend=backend, progress=False)
    c = SAE.load(tmp_path / "c" / "h")
    np.testing.assert_array_equal(np.array(a.W_enc), np.array(c.W_enc))


def test_checkpoint_write_never_half_done(tmp_path, monkeypatch):
    import mlx_interp.sae.training as tr

    data = synthetic(6000)
    tc = TrainConfig(d_sae=40, k=4, tokens=256 * 12, batch_size=256, checkpoint_every=5,
                     log_every=5)  # fmt: skip
    src = array_source({"h": data})
    calls = {"n": 0}
    real = tr.save_checkpoint

    def flaky(out, meta, backends, buffer_state):
        calls["n"] += 1
        if calls["n"] == 2:

            def boom(*a, **k):
                raise OSError("disk full")

            monkeypatch.setattr("safetensors.numpy.save_file", boom)
        return real(out, meta, backends, buffer_state)

    monkeypatch.setattr(tr, "save_checkpoint", flaky)
    with pytest.raises(OSError):
        train_sae(src, ["h"], 12, tc, tmp_path, progress=False)
    meta = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert meta["step"] == 5  # the first checkpoint, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_several_hooks_in_one_run(tmp_path):
    a, b = synthetic(5000, d=12), synthetic(5000, d=8, seed=1)
    tc = TrainConfig(d_sae=None, expansion=4, k=4, tokens=256 * 8, batch_size=256, log_every=4)
    s = train_sae(array_source({"x": a, "y": b}), ["x", "y"], None, tc, tmp_path, progress=False)
    assert SAE.load(tmp_path / "x").cfg.d_sae == 48 and SAE.load(tmp_path / "y").cfg.d_sae == 32
    assert set(s["hooks"]) == {"x", "y"}


def test_saelens_topk_with_decoder_norm_rescaling_loads_exactly(tmp_path):
    # SAELens 6's TopK default: rank and keep pre * ||W_dec_i||, decode (f / ||W_dec_i||) @ W_dec
    rng = np.random.default_rng(5)
    d_in, d_sae, k = 6, 12, 3
    W_enc = rng.standard_normal((d_in, d_sae))
    b_enc = rng.standard_normal(d_sae) * 0.1
    W_dec = rng.standard_normal((d_sae, d_in)) * rng.uniform(0.2, 3.0, (d_sae, 1))
    b_dec = rng.standard_normal(d_in) * 0.1
    write_saelens_by_hand(tmp_path / "s", "topk", W_enc, b_enc, W_dec, b_dec, k=k, rescale=True)
    x = rng.standard_normal((9, d_in))
    n = np.linalg.norm(W_dec, axis=1)
    pre = ((x - b_dec) @ W_enc + b_enc) * n
    f = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :k]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    x_hat = (f / n) @ W_dec + b_dec
    # ranking by pre alone would pick other latents: the fold is what makes this pass
    assert not np.array_equal(np.argsort(-pre / n, axis=1)[:, :k], top)
    xf = x.astype(np.float32)
    m, t = SAE.load(tmp_path / "s"), TorchSAE.load(tmp_path / "s")
    np.testing.assert_allclose(np.array(m.encode(mx.array(xf))), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(m(mx.array(xf))[1]), x_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.encode(torch.from_numpy(xf)).numpy(), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t(torch.from_numpy(xf))[1].numpy(), x_hat, rtol=1e-5, atol=1e-5)
    # saved again, it is a plain TopK file (unit-norm decoder rows) that computes the same
    m.save(tmp_path / "again")
    cfg = json.loads((tmp_path / "again" / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is False
    np.testing.assert_allclose(np.linalg.norm(np.array(m.W_dec), axis=1), 1, rtol=1e-5)
    again = SAE.load(tmp_path / "again")
    np.testing.assert_allclose(np.array(again(mx.array(xf))[1]), x_hat, rtol=1e-5, atol=1e-5)


def test_saebench_core_metrics_match_their_definitions():
    from mlx_interp.sae.metrics import MetricAccumulator, max_decoder_cosine_sim, saebench_core

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    x_hat = 0.8 * x + 0.1 * rng.standard_normal((300, 8))
    f = np.maximum(rng.standard_normal((300, 20)) - 1.5, 0)
    f[:, 3] = 0  # one dead latent
    acc = MetricAccumulator(20)
    acc.add(x[:100], x_hat[:100], f[:100])
    acc.add(x[100:], x_hat[100:], f[100:])
    w_dec = rng.standard_normal((20, 8))
    core = saebench_core(acc.result(), acc.density(), w_dec, 0.2, 0.8, 2.0, 2.5, 6.0)
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    assert core["l2_ratio"] == pytest.approx((nh / nx).mean())
    assert core["relative_reconstruction_bias"] == pytest.approx(
        (nh**2).mean() / (x * x_hat).sum(1).mean()
    )
    assert core["kl_div_score"] == pytest.approx(0.75)
    assert core["ce_loss_score"] == pytest.approx((6.0 - 2.5) / (6.0 - 2.0))
    assert core["frac_alive"] == pytest.approx(19 / 20)
    dens = (f > 0).mean(0)
    assert core["freq_over_1_percent"] == pytest.approx((dens > 0.01).mean())
    w = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    cos = w @ w.T
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(max_decoder_cosine_sim(w_dec, chunk=7), cos.max(1))
    assert core["average_max_decoder_cosine_sim"] == pytest.approx(cos.max(1).mean())


def test_train_sae_from_arrays_and_a_hook_string(tmp_path):
    data = synthetic(6000)
    tc = TrainConfig(d_sae=40, k=4, tokens=256 * 10, batch_size=256, log_every=5, lr=3e-3)
    a = train_sae(data, "h", tc=tc, out=tmp_path / "np", progress=False)
    b = train_sae(mx.array(data), "h", tc=tc, out=tmp_path / "mx", progress=False)
    c = train_sae({"h": data}, ["h"], tc=tc, out=tmp_path / "dict", progress=False)
    assert a["steps"] == b["steps"] == c["steps"] == 10
    w = [np.array(SAE.load(tmp_path / n / "h").W_enc) for n in ("np", "mx", "dict")]
    np.testing.assert_array_equal(w[0], w[1])
    np.testing.assert_array_equal(w[0], w[2])
    assert not (tmp_path / "np" / "checkpoint").exists()  # removed after a finished run
    again = train_sae(data, "h", tc=tc, out=tmp_path / "np", progress=False)
    assert again["steps"] == 10 and again["log"] == a["log"]  # the finished run, not retrained
    train_sae(data, "h", tc=tc, out=tmp_path / "keep", progress=False, keep_checkpoint=True)
    assert (tmp_path / "keep" / "checkpoint" / "trainer.json").exists()
    with pytest.raises(ValueError, match="one array feeds one hook"):
        train_sae(data, ["h", "g"], tc=tc, out=tmp_path / "x", progress=False)


def test_more_tokens_than_rows_fails_up_front_and_blocks_nothing(tmp_path):
    data = synthetic(3000)
    tc = TrainConfig(d_sae=40, k=4, tokens=256 * 20, batch_size=256, lr=3e-3)
    with pytest.raises(ValueError) as e:
        train_sae(data, "h", tc=tc, out=tmp_path, progress=False)
    msg = str(e.value)
    assert "5120 training tokens" in msg and "at most 2816 tokens" in msg and "--" not in msg
    assert not (tmp_path / "checkpoint").exists()
    tc.tokens = 2816
    assert train_sae(data, "h", tc=tc, out=tmp_path, progress=False)["steps"] == 11
    # a source that does not know its size runs out at the end: same message, no checkpoint
    src = array_source({"h": data})
    del src.n_rows
    tc.tokens = 256 * 20
    with pytest.raises(ValueError, match="ran out after 11 of 20 steps") as e:
        train_sae(src, "h", tc=tc, out=tmp_path / "b", progress=False)
    assert "--" not in str(e.value) and not (tmp_path / "b" / "checkpoint").exists()


def test_config_refuses_contradictions():
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(d_sae=64, expansion=4).resolve(12)
    with pytest.raises(ValueError, match="aux_k=100"):
        TrainConfig(d_sae=64, aux_k=100).resolve(12)
    tc = TrainConfig(tokens=4096 * 102).resolve(576)
    assert tc.lr_warmup_steps == 10 and tc.d_sae == 9216 and tc.lr == pytest.approx(2e-3)
    assert TrainConfig(tokens=4096 * 10_000).resolve(576).lr_warmup_steps == 500
    assert TrainConfig(tokens=4096 * 20).resolve(576).lr_warmup_steps == 5  # <= 1/4 of the run


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_decoder_projection_and_clipping_train(tmp_path, backend):
    data = synthetic(6000)
    for name, kw in (("proj", dict(decoder_constraint="project")), ("clip", dict(grad_clip=0.5)),
                     ("init", dict(dec_init_norm=0.5))):  # fmt: skip
        tc = TrainConfig(d_sae=40, k=4, tokens=256 * 20, batch_size=256, lr=3e-3, log_every=5, **kw)
        s = train_sae(data, "h", tc=tc, out=tmp_path / name, backend=backend, progress=False)
        assert s["hooks"]["h"]["final"]["explained_variance"] > 0.05
        sae = SAE.load(tmp_path / name / "h")
        norms = np.linalg.norm(np.array(sae.W_dec), axis=1) * s["hooks"]["h"]["input_scale"]
        np.testing.assert_allclose(norms, 1, rtol=1e-4)


def test_next_token_terms_match_float64_log_softmax():
    from mlx_interp.sae.eval import _next_token_terms

    rng = np.random.default_rng(0)
    shape, vocab = (3, 7), 5000
    clean = rng.normal(0, 4, (*shape, vocab))
    clean[0, 0, 11] += 45.0  # a confident prediction: p near 1 on one token
    logits = {"clean": clean, "sae": clean + rng.normal(0, 0.7, clean.shape),
              "zero": rng.normal(0, 6, clean.shape)}  # fmt: skip
    target = rng.integers(0, vocab, shape)
    target[0, 0] = 11
    got = _next_token_terms()(
        *(mx.array(z.astype(np.float32)) for z in logits.values()), mx.array(target)
    )
    z32 = {k: z.astype(np.float32).astype(np.float64) for k, z in logits.items()}
    lp = {k: z - z.max(-1, keepdims=True) for k, z in z32.items()}
    lp = {k: z - np.log(np.exp(z).sum(-1, keepdims=True)) for k, z in lp.items()}
    pick = np.take_along_axis
    want = [-pick(lp[k], target[..., None], -1)[..., 0] for k in ("clean", "sae", "zero")]
    p = np.exp(lp["clean"])
    want += [(p * (lp["clean"] - lp[k])).sum(-1) for k in ("sae", "zero")]
    for g, w in zip(got, want, strict=True):
        assert g.shape == shape
        np.testing.assert_allclose(np.array(g), w, rtol=1e-5, atol=2e-5)
    assert float(np.array(got[0])[0, 0]) < 1e-3  # the confident, right prediction
