"""Transcoder files and SAELens itself (skipped unless ``sae_lens`` is importable): ours load
with ``SAE.load_from_disk`` and predict as here; SAELens's load here."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params
from torch_ref.sae import SAE as TorchSAE

sae_lens = pytest.importorskip("sae_lens")

HOOK_IN, HOOK_OUT = "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"
LOADABLE = [("standard", False, "Transcoder"), ("standard", True, "SkipTranscoder"),
            ("jumprelu", False, "JumpReLUTranscoder"), ("jumprelu", True, "JumpReLUSkipTranscoder"),
            ("batchtopk", False, "JumpReLUTranscoder"), ("batchtopk", True, "JumpReLUSkipTranscoder")]  # fmt: skip


@pytest.mark.parametrize("arch,skip,cls", LOADABLE)
def test_our_transcoder_loads_in_saelens(tmp_path, arch, skip, cls):
    cfg = SAEConfig(d_in=16, d_sae=48, d_out=12, architecture=arch, skip=skip,
                    k=4 if arch == "batchtopk" else None, threshold=0.3 if arch == "batchtopk" else None,
                    hook_name=HOOK_IN, hook_name_out=HOOK_OUT, model_name="m")  # fmt: skip
    rng = np.random.default_rng(0)
    p = init_params(cfg, 0, data_sample=rng.standard_normal((40, 12)))
    p = {k: (v + 0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in p.items()}
    if "threshold" in p:
        p["threshold"] = np.full(48, 0.3, np.float32)
    SAE(cfg, p).save(tmp_path / "t")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "t"))
    assert type(theirs).__name__ == cls
    assert theirs.cfg.metadata.hook_name == HOOK_IN
    assert theirs.cfg.metadata.hook_name_out == HOOK_OUT
    x = rng.standard_normal((30, 16)).astype(np.float32)
    with torch.no_grad():
        y_theirs = theirs(torch.from_numpy(x)).numpy()
    _, y_ours = SAE.load(tmp_path / "t")(mx.array(x))
    np.testing.assert_allclose(np.array(y_ours), y_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["SkipTranscoder", "JumpReLUSkipTranscoder", "Transcoder"])
def test_saelens_transcoder_loads_here(tmp_path, kind):
    from sae_lens.saes import transcoder as t

    cls, cfg_cls = getattr(t, kind), getattr(t, kind + "Config")
    theirs = cls(cfg_cls(d_in=16, d_sae=48, d_out=12, apply_b_dec_to_input=False))
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in theirs.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
        if hasattr(theirs, "threshold"):
            theirs.threshold.abs_()
    theirs.cfg.metadata.hook_name = HOOK_IN
    theirs.cfg.metadata.hook_name_out = HOOK_OUT
    theirs.save_model(str(tmp_path / "t"))
    x = torch.randn(20, 16)
    with torch.no_grad():
        f_theirs, y_theirs = theirs.encode(x).numpy(), theirs(x).numpy()
    for ours in (SAE.load(tmp_path / "t"), TorchSAE.load(tmp_path / "t")):
        assert ours.cfg.hook_name_out == HOOK_OUT and ours.cfg.skip == ("Skip" in kind)
        f, y = ours(mx.array(x.numpy()) if isinstance(ours, SAE) else x)
        np.testing.assert_allclose(np.asarray(f), f_theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(y), y_theirs, rtol=1e-5, atol=1e-5)
