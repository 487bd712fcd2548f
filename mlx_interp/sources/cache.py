"""The conversion cache: where converted models live, completion markers, atomic moves.

Shared by resolution and conversion; imports neither MLX nor PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

MARKER = ".mlx-interp-complete"  # written last; a folder without it is not a finished conversion
FORMAT_VERSION = 1  # bump when the conversion's output changes, so old caches are rebuilt


class ModelSourceError(ValueError):
    """A model could not be found or converted. The message is one line and says what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def cache_root() -> Path:
    """Where converted models live: ``$MLX_INTERP_CACHE``, else ``~/.cache/mlx-interp``."""
    env = os.environ.get("MLX_INTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-interp"


def read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return None
    return data


def move_into_place(tmp: Path, out_dir: Path, marker: dict) -> None:
    try:
        os.rename(tmp, out_dir)
        return
    except OSError:
        if not out_dir.exists():
            raise
    existing = read_marker(out_dir)
    same = ("seconds",)
    if existing is not None and all(
        existing.get(k) == v for k, v in marker.items() if k not in same
    ):
        return  # another process finished the same conversion first: keep its folder
    # out_dir holds a stale or older conversion (or something unfinished): replace it.
    old = out_dir.parent / f".tmp-old-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(out_dir, old)
    except FileNotFoundError:
        pass
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(out_dir: Path, max_age_s: float = 86400.0) -> None:
    """Remove half-built folders that killed conversions left behind (older than a day)."""
    now = time.time()
    for p in out_dir.parent.glob(f".tmp-*{out_dir.name}-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
