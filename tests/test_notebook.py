"""The notebooks run top to bottom (small inputs) on the embedded model: 01 (activation
analysis), 02 (sparse autoencoders) and 03 (feature analysis)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize(
    "name, made",
    [
        ("01_activations_analysis.ipynb",
         ["norms.png", "semantic.png", "logit_lens.png", "patching.png", "extraction",
          "views/attention.html", "views/neuron.html", "views/logit_lens.html"]),
        ("02_sparse_autoencoders.ipynb", ["sae_run", "sae_eval", "training_curves.png"]),
        ("03_feature_analysis.ipynb", ["features/index.html", "sae_small", "features/views"]),
    ],
)  # fmt: skip
def test_notebook_executes(name, made, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MLX_INTERP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MLX_INTERP_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MLX_INTERP_NOTEBOOK_SAE", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]  # fmt: skip
    assert not errors
    for m in made:
        assert (tmp_path / "out" / m).exists(), m
    frames = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "<iframe srcdoc=" in o.get("data", {}).get("text/html", "")]  # fmt: skip
    assert len(frames) == {"01": 3, "02": 0, "03": 1}[name[:2]]  # the interactive views show inline
