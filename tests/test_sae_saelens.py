"""Interop with SAELens itself (skipped unless ``sae_lens`` is importable; it is not a
dependency): our files load in SAELens and encode alike; SAELens's files load here."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params
from torch_ref.sae import SAE as TorchSAE

sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu"])
def test_our_file_loads_in_saelens(tmp_path, arch):
    cfg = SAEConfig(d_in=16, d_sae=64, architecture=arch, k=5 if "topk" in arch else None,
                    hook_name="blocks.3.hook_resid_post", model_name="smollm2-135m")  # fmt: skip
    if arch == "batchtopk":
        cfg.threshold = 0.4
    p = init_params(cfg, seed=0, data_sample=np.random.default_rng(1).standard_normal((50, 16)))
    p["b_enc"] = np.random.default_rng(2).standard_normal(64).astype(np.float32) * 0.2
    if arch == "jumprelu":
        p["threshold"] = (
            np.abs(np.random.default_rng(3).standard_normal(64)).astype(np.float32) * 0.3
        )
    SAE(cfg, p).save(tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    x = np.random.default_rng(4).standard_normal((32, 16)).astype(np.float32)
    with torch.no_grad():
        f_theirs = theirs.encode(torch.from_numpy(x)).numpy()
        x_theirs = theirs.decode(torch.from_numpy(f_theirs)).numpy()
    f_ours, x_ours = SAE.load(tmp_path / "s")(mx.array(x))
    np.testing.assert_allclose(np.array(f_ours), f_theirs, atol=1e-5)
    np.testing.assert_allclose(np.array(x_ours), x_theirs, atol=1e-5)


def _saved_by_saelens_loaded_here(theirs, tmp_path, rtol: float) -> list:
    """Save SAELens SAE ``theirs``, load the folder in both backends and check that they encode
    and decode as it does (atol 1e-5); returns the two loaded SAEs."""
    theirs.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    theirs.save_model(str(tmp_path / "t"))
    x = torch.randn(20, 16)
    with torch.no_grad():
        f_theirs = theirs.encode(x).numpy()
        x_theirs = theirs.decode(theirs.encode(x)).numpy()
    loaded = [SAE.load(tmp_path / "t"), TorchSAE.load(tmp_path / "t")]
    for ours in loaded:
        xx = mx.array(x.numpy()) if isinstance(ours, SAE) else x
        f, x_hat = ours(xx)
        f, x_hat = (f.numpy(), x_hat.numpy()) if isinstance(f, torch.Tensor) else (f, x_hat)
        np.testing.assert_allclose(np.array(f), f_theirs, rtol=rtol, atol=1e-5)
        np.testing.assert_allclose(np.array(x_hat), x_theirs, rtol=rtol, atol=1e-5)
    return loaded


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_file_loads_here(tmp_path, arch):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    kind = {"standard": (StandardSAE, StandardSAEConfig, {}),
            "topk": (TopKSAE, TopKSAEConfig, {"k": 7}),
            "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {})}[arch]  # fmt: skip
    cls, cfg_cls, extra = kind
    theirs = cls(cfg_cls(d_in=16, d_sae=48, **extra))
    with torch.no_grad():
        for prm in theirs.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
        if arch == "jumprelu":
            theirs.threshold.abs_()
    for ours in _saved_by_saelens_loaded_here(theirs, tmp_path, rtol=1e-7):
        assert ours.cfg.hook_name == "blocks.0.hook_resid_pre" and ours.cfg.architecture == arch


@pytest.mark.parametrize("rescale", [True, False])
def test_saelens_topk_training_output_loads_here(tmp_path, rescale):
    """What SAELens 6.54's TopK trainer writes (rescale_acts_by_decoder_norm=True, its default
    for training) loads in both backends with the decoder norms folded in."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAEConfig

    assert TopKTrainingSAEConfig.__dataclass_fields__["rescale_acts_by_decoder_norm"].default
    torch.manual_seed(1)
    theirs = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=6, rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        for prm in theirs.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
        theirs.W_dec.mul_(torch.rand(48, 1) * 3 + 0.2)  # decoder rows far from unit norm
    _saved_by_saelens_loaded_here(theirs, tmp_path, rtol=1e-5)


def _saelens_matryoshka(rescale: bool, seed: int = 0, per_level_aux: bool = False):
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    torch.manual_seed(seed)
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=16,
        d_sae=48,
        k=4,
        matryoshka_widths=[8, 24, 48],
        rescale_acts_by_decoder_norm=rescale,
        use_matryoshka_aux_loss=per_level_aux,
    )
    theirs = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for prm in theirs.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
        if rescale:
            theirs.W_dec.mul_(torch.rand(48, 1) * 3 + 0.2)  # rows far from unit norm
        theirs.topk_threshold.fill_(0.35)
    return theirs


def test_our_matryoshka_file_loads_in_saelens(tmp_path):
    """A Matryoshka SAE trained here (input normalisation folded in) loads in SAELens as the
    JumpReLU SAE SAELens itself saves, with the same latents and reconstruction, and says what
    it was trained as where SAELens 6.54 does (metadata.training_architecture(_details))."""
    from mlx_interp.sae.training import TrainConfig, train_sae

    rng = np.random.default_rng(0)
    data = (rng.standard_normal((4096, 16)) * 5 + 3).astype(np.float32)
    tc = TrainConfig(architecture="matryoshka_batchtopk", d_sae=64, k=4, matryoshka_widths=[8, 32],
                     tokens=256 * 8, batch_size=256, lr=1e-2, log_every=4)  # fmt: skip
    train_sae(data, "blocks.0.hook_resid_post", 16, tc, tmp_path, progress=False,
              warn=lambda m: None)  # fmt: skip
    folder = tmp_path / "blocks.0.hook_resid_post"
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert type(theirs).__name__ == "JumpReLUSAE"
    assert theirs.cfg.metadata.training_architecture == "matryoshka_batchtopk"
    assert theirs.cfg.metadata.training_architecture_details["matryoshka_widths"] == [8, 32, 64]
    x = data[:64]
    with torch.no_grad():
        f_theirs = theirs.encode(torch.from_numpy(x)).numpy()
        x_theirs = theirs.decode(torch.from_numpy(f_theirs)).numpy()
    f_ours, x_ours = SAE.load(folder)(mx.array(x))
    assert (f_theirs > 0).sum() > 0
    np.testing.assert_allclose(np.array(f_ours), f_theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(x_ours), x_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rescale", [True, False])
def test_saelens_matryoshka_files_load_here(tmp_path, rescale):
    """Both files SAELens 6.54 writes for a Matryoshka BatchTopK SAE, the inference one
    (a JumpReLU) and the training checkpoint (architecture matryoshka_batchtopk, the scalar
    topk_threshold, rescale_acts_by_decoder_norm its default true), load in both backends as
    the Matryoshka SAE, with its widths and k, and encode and decode as SAELens's inference
    SAE does."""
    theirs = _saelens_matryoshka(rescale)
    theirs.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    theirs.save_inference_model(str(tmp_path / "inference"))
    theirs.save_model(str(tmp_path / "training"))
    inference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    x = torch.randn(40, 16)
    with torch.no_grad():
        f_theirs = inference.encode(x).numpy()
        x_theirs = inference.decode(inference.encode(x)).numpy()
    assert (f_theirs > 0).sum() > 0
    for name in ("inference", "training"):
        for ours in (SAE.load(tmp_path / name), TorchSAE.load(tmp_path / name)):
            assert ours.cfg.architecture == "matryoshka_batchtopk", name
            assert ours.cfg.matryoshka_widths == [8, 24, 48] and ours.cfg.k == 4
            assert ours.cfg.threshold == pytest.approx(0.35)
            f, x_hat = ours(mx.array(x.numpy()) if isinstance(ours, SAE) else x)
            np.testing.assert_allclose(np.asarray(f.tolist()), f_theirs, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(x_hat.tolist()), x_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_level_aux", [False, True])
def test_matryoshka_training_loss_matches_saelens(per_level_aux):
    """SAELens's MatryoshkaBatchTopKTrainingSAE training loss (whole-dictionary MSE + every
    inner prefix's MSE + AuxK of the whole dictionary's residual over dead latents) equals
    ours on the same weights and batch, in both backends (SAELens's aux coefficient, 1, given
    to ours); with use_matryoshka_aux_loss, ours with matryoshka_aux (AuxK per prefix block)."""
    from sae_lens.saes.sae import TrainStepInput

    from mlx_interp.sae.sae import loss_terms
    from torch_ref.sae import forward_loss

    theirs = _saelens_matryoshka(rescale=False, seed=3, per_level_aux=per_level_aux)
    x = torch.randn(32, 16) * 2
    dead = torch.arange(48) % 3 == 0  # 16 dead latents, more than k_aux = d_in // 2
    # AuxK decodes the dead latents' relu(pre) here (as Gao et al. and EleutherAI's sae),
    # their raw pre-activations in SAELens: alike where those are positive, as made here
    with torch.no_grad():
        theirs.b_enc[dead] += 10.0
    with torch.no_grad():
        out = theirs.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=dead,
                n_training_steps=0,
                is_logging_step=False,
            )  # fmt: skip
        )
    assert "inner_mse_loss_8" in out.losses and "inner_mse_loss_24" in out.losses
    assert float(out.losses["auxiliary_reconstruction_loss"]) > 0
    cfg = SAEConfig(d_in=16, d_sae=48, architecture="matryoshka_batchtopk", k=4,
                    matryoshka_widths=[8, 24, 48])  # fmt: skip
    p = {k: theirs.state_dict()[k].numpy() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    kw = {"aux_coeff": theirs.cfg.aux_loss_coefficient, "matryoshka_aux": per_level_aux}
    ours, _ = loss_terms({k: mx.array(v) for k, v in p.items()}, mx.array(x.numpy()), cfg,
                         dead_mask=mx.array(dead.numpy()), **kw)  # fmt: skip
    ref, _ = forward_loss({k: torch.from_numpy(v) for k, v in p.items()}, x, cfg,
                          dead_mask=dead, **kw)  # fmt: skip
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-5)
    assert float(ref) == pytest.approx(float(out.loss), rel=1e-5)
