"""The optimised-BLAS switch: MLX gives the same numbers with either BLAS, and says which."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlx_interp.blas import find_optimised_blas

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="macOS uses Accelerate")

SCRIPT = """
import json, sys
import numpy as np
import mlx_interp
from mlx_interp.system import blas_info
model = mlx_interp.load_model(sys.argv[1])
tokens = np.random.default_rng(0).integers(0, 512, (2, 16))
print(json.dumps({"blas": blas_info(), "logits": np.array(model(tokens)).tolist()}))
"""


def run(folder, blas: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLX_INTERP_BLAS"}
    if blas:
        env["MLX_INTERP_BLAS"] = blas
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reference_blas_on_request(checkpoint_dir):
    assert run(checkpoint_dir("llama-gqa-untied"), "reference")["blas"].startswith("reference BLAS")


@pytest.mark.skipif(find_optimised_blas() is None, reason="no optimised BLAS on this machine")
def test_optimised_blas_is_the_default_and_agrees(checkpoint_dir):
    folder = checkpoint_dir("llama-gqa-untied")
    fast, ref = run(folder, None), run(folder, "reference")
    assert fast["blas"].startswith("OpenBLAS"), fast["blas"]
    a, b = np.array(fast["logits"]), np.array(ref["logits"])
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5


def test_unloadable_blas_choice_is_a_clear_error(tmp_path):
    env = {**os.environ, "MLX_INTERP_BLAS": str(tmp_path / "nope.so")}
    out = subprocess.run([sys.executable, "-c", "import mlx_interp"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode != 0 and "MLX_INTERP_BLAS" in out.stderr.strip().splitlines()[-1]
