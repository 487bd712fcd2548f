"""What this machine is: MLX device, the BLAS MLX computes with, library versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def mlx_device() -> str:
    """'gpu' (Metal or CUDA) or 'cpu': where MLX runs by default."""
    import mlx.core as mx

    return "gpu" if mx.default_device().type == mx.gpu else "cpu"


def blas_info() -> str:
    """Which BLAS library MLX's CPU matrix products (cblas_sgemm) resolve to.

    On macOS MLX uses Accelerate. On Linux the mlx[cpu] wheel bundles the reference
    (netlib) BLAS; an optimised one preloaded with LD_PRELOAD takes its place, since the
    dynamic linker looks in preloaded libraries first.
    """
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    path = _cblas_sgemm_library()
    if path is None:
        return "unknown"
    from . import blas

    late = (
        "; loaded after mlx.core was imported, so MLX may still use its bundled BLAS: "
        "import mlx_interp first"
        if blas.loaded_late and path == blas.loaded
        else ""
    )
    for pattern, label in [("openblas", "OpenBLAS"), ("mkl", "Intel MKL"), ("blis", "BLIS")]:
        if pattern in path.lower():
            return f"{label} ({path}){late}"
    if "mlx_cpu.libs" in path:
        return f"reference BLAS (netlib, bundled with mlx[cpu]: {path})"
    return path


def allocator_info() -> str:
    """How large CPU buffers are allocated (see allocator.py)."""
    from . import allocator

    if sys.platform == "darwin":
        return "MLX's own (macOS)"
    if allocator.applied:
        return f"glibc heap up to {allocator.THRESHOLD >> 20} MiB (mallopt; MLX_INTERP_MALLOC=system for glibc's defaults)"
    if sys.platform == "linux":
        return "the C library's defaults (with glibc: buffers over 32 MB mapped afresh each time)"
    return "the C library's defaults"


def _cblas_sgemm_library() -> str | None:
    """The file that defines the cblas_sgemm MLX binds to, found with dlsym + dladdr."""
    import ctypes

    import mlx.core as mx

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        libc = ctypes.CDLL(None)
        libc.dlsym.restype = ctypes.c_void_p
        libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        # The global scope (LD_PRELOAD first) wins; else libmlx's own dependencies.
        addr = libc.dlsym(None, b"cblas_sgemm")
        if not addr:
            libmlx = os.path.join(os.path.dirname(mx.__file__), "lib", "libmlx.so")
            handle = ctypes.CDLL(libmlx)._handle
            addr = libc.dlsym(handle, b"cblas_sgemm")
        info = DlInfo()
        if not addr or not libc.dladdr(addr, ctypes.byref(info)):
            return None
        return info.dli_fname.decode()
    except (OSError, AttributeError):
        return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def package_versions(names=("mlx", "torch", "transformers", "numpy")) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_summary() -> dict[str, str]:
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "mlx_device": mlx_device(),
        "blas": blas_info(),
        "allocator": allocator_info(),
        **{f"{k}_version": v for k, v in package_versions().items()},
    }


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_MAC = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
)
# Headless Chromium on a closed network: no background connections, a fresh profile per run.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$MLX_INTERP_CHROMIUM``, one on the PATH, or the
    macOS application bundle; None when there is none."""
    import shutil

    env = os.environ.get("MLX_INTERP_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else shutil.which(env)
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    if sys.platform == "darwin":
        return next((p for p in CHROMIUM_MAC if os.access(p, os.X_OK)), None)
    return None
