"""GGUF (llama architecture) to a Hugging Face folder: names, Q/K order, rope, tokenizer.

Conversion apart from loading, as mlx-lm keeps ``gguf.py``: weights are dequantised to
float32 safetensors with Hugging Face names; config.json is a LlamaConfig; the tokenizer
comes from the GGUF's own vocabulary. Imports neither MLX nor PyTorch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .cache import FORMAT_VERSION, MARKER, ModelSourceError, clean_stale_temps, move_into_place

_SHARD_BYTES = 2 * 1024**3


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


def save_shards(
    weights: Iterable[tuple[str, np.ndarray]], out: Path, max_bytes: int, save=None
) -> None:
    """Write (name, array) pairs as safetensors shards of at most max_bytes (one array may
    exceed it), holding one shard in memory at a time: an 8B model is 32 GB in float32.
    ``save(shard, path)`` writes one shard (default: NumPy arrays with safetensors)."""
    if save is None:
        from safetensors.numpy import save_file

        def save(shard, path):
            save_file(shard, path, metadata={"format": "pt"})

    files: list[Path] = []
    weight_map: dict[str, int] = {}
    shard: dict[str, np.ndarray] = {}
    size = total = 0

    def flush() -> None:
        files.append(out / f"part-{len(files) + 1:05d}.safetensors")
        save(shard, str(files[-1]))
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
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelSourceError(
                f"{gguf_path} is not a GGUF file (no GGUF magic at its start); pass a .gguf "
                "file from llama.cpp, or download it again"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_dir)
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

        save_shards(weights(), tmp, _shard_bytes)
        _write_config(kw, tmp)
        _write_tokenizer(gguf_path, reader, tmp)
        marker = {
            "format_version": FORMAT_VERSION,
            "gguf": str(gguf_path),
            "seconds": round(time.perf_counter() - start, 2),
            **(_marker_extra or {}),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        move_into_place(tmp, out_dir, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
