"""mlx_interp.backends: the one module that knows both backends."""

from __future__ import annotations

import subprocess
import sys

import mlx.core as mx
import numpy as np
import torch

from mlx_interp.backends import (
    HookedModelLike,
    backend_of,
    from_numpy,
    is_mlx,
    is_torch,
    to_numpy,
)


def test_importing_backends_imports_neither_backend():
    code = "import sys, mlx_interp.backends; print('mlx' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_which_backend_and_arrays_across():
    m, t = mx.array([1.5, 2.0]), torch.tensor([1.5, 2.0])
    assert is_mlx(m) and not is_torch(m) and is_torch(t) and not is_mlx(t)
    assert not is_torch(np.zeros(2)) and not is_mlx(np.zeros(2))
    assert backend_of(t) == "torch" and backend_of(m) == "mlx"
    for x in (m.astype(mx.bfloat16), t.to(torch.bfloat16)):  # NumPy has no bfloat16
        assert to_numpy(x).dtype == np.float32 and to_numpy(x).tolist() == [1.5, 2.0]
    assert to_numpy(m, np.float64).dtype == to_numpy(t, np.float64).dtype == np.float64
    assert to_numpy(mx.array([1, 2])).dtype == np.int32 and to_numpy(torch.tensor([1])).dtype == np.int64  # fmt: skip
    assert to_numpy(t.requires_grad_()).tolist() == [1.5, 2.0]  # detached


def test_both_models_are_hooked_models(checkpoint_dir):
    from mlx_interp import load_model
    from torch_ref import load_model as load_torch

    folder = checkpoint_dir("llama-gqa-untied")
    models = {"mlx": load_model(folder), "torch": load_torch(folder, dtype="float32")}
    for name, model in models.items():
        assert isinstance(model, HookedModelLike) and backend_of(model) == name
        a = from_numpy(np.ones((2, 3)), model)
        assert backend_of(a) == name and tuple(a.shape) == (2, 3)
        np.testing.assert_array_equal(to_numpy(a), np.ones((2, 3), np.float32))
    assert not isinstance(object(), HookedModelLike)
