"""Write mlx-lm model folders: ``mlx-interp convert SRC --quantize 4 --out DIR``.

The folder is what ``mlx_lm.convert -q`` writes and what ``mlx_lm.load`` (and
``load_model``) read: Hugging Face parameter names, quantized layers as ``weight`` (uint32,
packed), ``scales`` and ``biases``, config.json with ``quantization`` (and its copy
``quantization_config``), the tokenizer files copied. Which layers are quantized is decided
by the same class predicate the loader uses (``models.quantized``), so the two never disagree.

Conversion is lazy and one tensor at a time: each float tensor is read from its file when
needed, quantized, evaluated and dropped, and shards are written as they fill, so an 8B model
converts in a few GB (never its 32 GB of float32).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import mlx.core as mx

from .models import llama, quantized
from .sources import ModelSourceError
from .sources.gguf import save_shards

SHARD_BYTES = 2 * 1024**3
_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def mlx_lm_config(config: dict, bits: int | None, group_size: int) -> dict:
    """config.json for the written folder: the source's, with mlx-lm's ``quantization``
    entry, and the rope given also as ``rope_theta`` + ``rope_scaling`` (mlx-lm 0.32 reads only
    these; transformers 5 writes ``rope_parameters``, which mlx-lm silently ignores)."""
    out = dict(config)
    for key in ("quantization", "quantization_config"):
        out.pop(key, None)
    if bits is not None:
        q = {"group_size": group_size, "bits": bits, "mode": "affine"}
        out["quantization"], out["quantization_config"] = q, dict(q)
    rope = dict(config.get("rope_parameters") or {})
    if rope:
        out.setdefault("rope_theta", rope.pop("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in out:
            out["rope_scaling"] = rope
    return out


def write_mlx_folder(
    out: str | os.PathLike,
    config: dict,
    tensors: Iterable[tuple[str, mx.array]],
    quantize_params: Callable[[str], dict | None],
    dtype: mx.Dtype | None = None,
    copy_from: Path | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Write an mlx-lm folder at ``out`` from (Hugging Face name, array) pairs.

    ``quantize_params(name)`` gives {group_size, bits, mode} for a weight to quantize, None to
    keep it as it is (cast to ``dtype`` if given). ``copy_from``: a folder whose tokenizer and
    other side files are copied. The folder is built beside ``out`` and renamed into place at
    the end: an interrupted conversion leaves no ``out``.
    """
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists; choose another --out or delete it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()

    def evaluated() -> Iterator[tuple[str, mx.array]]:
        for name, w in tensors:
            p = quantize_params(name)
            if p is not None:
                w = w.astype(dtype) if dtype is not None else w
                q, s, b = mx.quantize(w, p["group_size"], p["bits"], mode=p["mode"])
                mx.eval(q, s, b)
                del w
                base = name[: -len(".weight")]
                yield name, q
                yield f"{base}.scales", s
                yield f"{base}.biases", b
            else:
                if dtype is not None and mx.issubdtype(w.dtype, mx.floating):
                    w = w.astype(dtype)
                mx.eval(w)
                yield name, w

    def save(shard: dict, path: str) -> None:
        mx.save_safetensors(path, shard, metadata={"format": "mlx"})

    try:
        save_shards(evaluated(), tmp, shard_bytes, save=save)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if copy_from is not None:
            for f in sorted(Path(copy_from).iterdir()):
                side = f.suffix in (".json", ".txt", ".model", ".jinja", ".tiktoken")
                if f.is_file() and side and f.name not in _NOT_COPIED:
                    shutil.copy2(f, tmp / f.name)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    quantize: int | None = 4,
    group_size: int = 64,
    dtype: str | None = None,
) -> Path:
    """Convert ``source`` (anything ``load_model`` takes) into an mlx-lm folder at ``out``.

    quantize: bits (2, 3, 4, 5, 6, 8) or None for a float copy; group_size: 32, 64 or 128;
    dtype: 'float32', 'float16' or 'bfloat16' for the float tensors and the scales (default:
    as stored). Returns ``out``.
    """
    from .model import read_checkpoint

    folder, config, arch, stored = read_checkpoint(source, dtype, _DTYPES)
    if stored is not None:
        raise quantized.QuantizationError(
            f"{folder} is already quantized ({stored['bits']}-bit); convert a float checkpoint"
        )
    if arch.__name__ != llama.__name__:
        raise quantized.QuantizationError(
            f"convert supports Llama-family models only; {source} is "
            f"{config.get('model_type')!r}: load it directly, without convert or --quantize"
        )
    # The checkpoint's own layers (no fused projections): one model tensor per stored one.
    args = dataclasses.replace(arch.ModelArgs.from_hf_config(config), fuse_projections=False)
    model = arch.Model(args)  # the structure only: its random parameters are never evaluated
    if quantize is not None:
        predicate = quantized.on_load_predicate(group_size, quantize)
        quantized.quantize(model, group_size, quantize, predicate)
    paths = quantized.quantized_paths(model)
    from mlx.utils import tree_flatten

    from .model import read_weights

    weights = read_weights(folder)  # lazy: nothing is read until evaluated
    # Our name for each stored tensor (the rename the loader applies); dropped ones are absent.
    ours = {hf: name for name, hf in arch.Model.sanitize({n: n for n in weights}, args).items()}
    packed = {f"{p}.{leaf}" for p in paths for leaf in ("scales", "biases")}
    missing = sorted({k for k, _ in tree_flatten(model.parameters())} - set(ours.values()) - packed)
    if missing:
        raise ModelSourceError(f"weights in {folder} lack {', '.join(missing[:5])}")

    def tensors() -> Iterator[tuple[str, mx.array]]:
        for name in list(weights):
            w = weights.pop(name)
            if name in ours:
                yield name, w

    def params(name: str) -> dict | None:
        path, leaf = ours[name].rsplit(".", 1)
        return paths.get(path) if leaf == "weight" else None

    return write_mlx_folder(
        out,
        mlx_lm_config(config, quantize, group_size),
        tensors(),
        params,
        None if dtype is None else _DTYPES[dtype],
        copy_from=folder,
    )
