"""Use an optimised BLAS for MLX's CPU backend on Linux, when the machine has one.

The Linux ``mlx[cpu]`` wheel bundles the reference (netlib) BLAS: a float32 matrix
product runs at about 5 GFLOP/s on this project's 2-core machines, against 70-80 with
OpenBLAS. MLX binds ``cblas_sgemm`` through the dynamic linker, which searches libraries
loaded into the global scope before MLX's own dependencies; loading an optimised BLAS with
RTLD_GLOBAL before ``mlx.core`` is first used is therefore enough (LD_PRELOAD does the same
from outside the process). ``mlx_interp`` calls ``use_optimised_blas()`` on import.

Set ``MLX_INTERP_BLAS=reference`` to keep the bundled BLAS, or to a library path to choose
one. On macOS MLX uses Accelerate and nothing happens here.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

CANDIDATES = [
    "/usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3",  # Debian/Ubuntu libopenblas0-pthread
    "/usr/lib/*-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",  # Fedora
    "/usr/lib/libopenblas.so.0",  # Arch
]

loaded: str | None = None
# True when mlx.core was imported before us: if it had already run a matrix product, its
# cblas_sgemm is bound to the bundled BLAS and stays so for the life of the process.
loaded_late = False


def find_optimised_blas() -> str | None:
    """Path of an optimised BLAS that exports cblas_sgemm, or None."""
    choice = os.environ.get("MLX_INTERP_BLAS", "")
    if choice == "reference":
        return None
    if choice:
        return choice
    for pattern in CANDIDATES:
        for path in sorted(glob.glob(pattern)):
            return path
    return None


def use_optimised_blas() -> str | None:
    """Load an optimised BLAS into the global symbol scope; return its path, or None."""
    global loaded, loaded_late
    if sys.platform != "linux" or loaded:
        return loaded
    path = find_optimised_blas()
    if path is None:
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        if os.environ.get("MLX_INTERP_BLAS"):
            raise ValueError(f"MLX_INTERP_BLAS={path} cannot be loaded: {e}") from None
        return None
    loaded, loaded_late = path, "mlx.core" in sys.modules
    if loaded_late:
        import warnings

        warnings.warn(
            "mlx.core was imported before mlx_interp, so MLX stays bound to its bundled "
            "reference BLAS (matrix products ~13x slower on Linux): import mlx_interp first, "
            f"or start Python with LD_PRELOAD={path}",
            stacklevel=3,
        )
    return path
