"""allocator.py: on Linux (glibc) a large MLX buffer freed and allocated again reuses the
heap's pages instead of faulting in fresh ones; MLX_INTERP_MALLOC=system keeps glibc's way."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocate and free a 100 MB MLX array, then count the page faults of allocating (and
# writing) another one of that size.
PROBE = """
import resource
import mlx_interp
import mlx.core as mx
from mlx_interp.system import allocator_info
mx.set_default_device(mx.cpu)  # CPU arrays are malloc's
a = mx.ones((25_000_000,)); mx.eval(a); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = mx.ones((25_000_000,)); mx.eval(b)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, allocator_info())
"""


def _probe(**env) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split(maxsplit=1)  # fmt: skip
    return int(out[0]), out[1]


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_large_buffers_are_reused_not_mapped_afresh():
    faults, info = _probe()
    assert faults < 2_000, info  # 100 MB of fresh pages would be about 24,400 faults
    assert "mallopt" in info
    faults, info = _probe(MLX_INTERP_MALLOC="system")
    assert faults > 20_000 and "defaults" in info
