"""Sparse autoencoders (and transcoders) in MLX: five architectures, a trainer, metrics,
SAELens files.

``config`` and ``files`` (the SAELens file format) import no MLX: ``torch_ref`` shares them.
``SAE`` loads MLX when first used.
"""

from .config import ARCHITECTURES, SAEConfig

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "load_sae",
    "numpy_runner",
    "train_sae",
]


def load_sae(sae, backend: str = "mlx"):
    """An SAE object of ``backend`` ('mlx', or 'torch' for torch_ref's) from a folder, or
    ``sae`` itself when it is already an SAE object."""
    from pathlib import Path

    if not isinstance(sae, (str, Path)):
        return sae
    if backend == "mlx":
        from .sae import SAE
    elif backend == "torch":
        from torch_ref.sae import SAE
    else:
        raise ValueError(f"backend must be 'mlx' or 'torch', not {backend!r}")
    folder = Path(sae)
    if not (folder / "cfg.json").exists():
        raise ValueError(f"{folder} is not an SAE folder (no cfg.json)")
    return SAE.load(folder)


def numpy_runner(sae, decode: bool = False):
    """The SAE as a NumPy function in its own backend: x (rows, d_in) float32 -> f (rows,
    d_sae), or (f, x_hat (rows, d_in)) with ``decode`` (a transcoder's prediction (rows,
    d_out), skip term included)."""
    import numpy as np

    from ..backends import is_torch, to_numpy

    if is_torch(sae):
        import torch

        def to_backend(x):
            return torch.from_numpy(np.ascontiguousarray(x, np.float32))
    else:
        import mlx.core as mx

        def to_backend(x):
            return mx.array(np.asarray(x, np.float32))

    def run(x: np.ndarray):
        if not decode:
            return to_numpy(sae.encode(to_backend(x)))
        f, x_hat = sae(to_backend(x))
        return to_numpy(f), to_numpy(x_hat)

    return run


def __getattr__(name: str):
    if name == "SAE":
        from .sae import SAE

        return SAE
    if name in ("TrainConfig", "train_sae"):
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
