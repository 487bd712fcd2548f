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
