"""This machine's measured peak: a large float32 matrix product in NumPy (its own BLAS)."""

from __future__ import annotations

import numpy as np

from benchmarks.common import time_it


def numpy_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of an n×n float32 matrix product in NumPy, the ceiling the table compares to."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    t = time_it(lambda: a @ b, repeats)
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('version', '')}" for i in threadpool_info())
    except ImportError:
        blas = "unknown"
    return {"n": n, "gflops": 2 * n**3 / t.median_s / 1e9, "numpy_blas": blas, **t.as_dict()}


def mlx_matmul_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """The same product in MLX, on its default device, with the BLAS it is bound to."""
    import mlx.core as mx

    import mlx_interp  # noqa: F401  (binds the optimised BLAS first, when there is one)

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    t = time_it(lambda: mx.eval(a @ b), repeats)
    return {"n": n, "gflops": 2 * n**3 / t.median_s / 1e9, **t.as_dict()}


if __name__ == "__main__":
    print(numpy_peak_gflops(), mlx_matmul_gflops())
