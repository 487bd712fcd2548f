"""Reuse large buffers on Linux instead of mapping fresh pages for each one.

MLX's CPU backend allocates every array with ``malloc``. glibc serves requests above its
mmap threshold (which grows with use, to 32 MB at most) with a fresh ``mmap`` and returns
them with ``munmap`` when freed, so every large temporary, such as an SAE's (4096, 9216)
pre-activations (151 MB) or eval-sae's (1024, 49152) logits (201 MB), costs a page fault
and a page of zeroing by the kernel per 4 KiB, each time. Measured on a 2-core EPYC:
adding two (8, 128, 49152) float32 arrays (201 MB each) took 110 ms instead of 15, and a TopK SAE
step at 9216 latents, batch 4096, 1350 ms instead of 950. With the threshold raised, freed
buffers stay in the heap and the next array of that size reuses them.

The cost: memory freed by MLX is kept by the process for reuse rather than returned to
the system, so the resident size stays at its peak (which for our pipelines is the size
of one batch's working set). It applies to the whole process (PyTorch's CPU tensors come
from malloc too, and gain as well) and to the main heap; allocations in threads' own
arenas over their 64 MiB size are still mapped. ``MLX_INTERP_MALLOC=system`` keeps glibc's
defaults. ``mlx_interp`` calls ``keep_large_allocations()`` on import; on macOS (MLX's
Metal allocator), on C libraries without ``mallopt`` (musl) or where glibc refuses the
setting nothing happens, and ``mlx-interp info`` says which.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap

applied = False


def keep_large_allocations() -> bool:
    """Raise glibc's mmap and trim thresholds (mallopt); True if they were set."""
    global applied
    if applied or sys.platform != "linux" or os.environ.get("MLX_INTERP_MALLOC") == "system":
        return applied
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # no mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the mmap threshold is what matters; the trim threshold keeps the heap's top for reuse
    applied = bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD))
    if applied:
        mallopt(_M_TRIM_THRESHOLD, 2 * THRESHOLD)
    return applied
