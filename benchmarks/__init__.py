"""The performance suite. Imports mlx_interp first so MLX binds to an optimised BLAS."""

import mlx_interp  # noqa: F401
