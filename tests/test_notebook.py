"""The activation-analysis notebook runs top to bottom (small inputs) on the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_activations_analysis.ipynb"


def test_activation_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MLX_INTERP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MLX_INTERP_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]  # fmt: skip
    assert not errors
    made = {p.name for p in (tmp_path / "out").iterdir()}
    for name in ["norms.png", "semantic.png", "logit_lens.png", "patching.png", "extraction"]:
        assert name in made
