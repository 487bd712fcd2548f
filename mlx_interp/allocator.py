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
of one batch's working set). ``MLX_INTERP_MALLOC=system`` keeps glibc's defaults.
``mlx_interp`` calls ``keep_large_allocations()`` on import; on macOS (Metal's own
allocator) and on C libraries other than glibc nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * THRESHOLD)
    )
    return applied
