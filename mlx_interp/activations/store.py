"""Activations on disk: ``extract`` writes safetensors shards that survive interruption.

``shard_NNNNN.safetensors`` holds one 2-D tensor per hook, ``rows_NNNNN.safetensors`` the
token id, position, document and window of every row, ``metadata.json`` the settings and the
list of finished shards; everything is written atomically, and a rerun resumes after the
last complete shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from .. import checks, distributed
from ..data import DataSource
from ..distributed import World
from ..io import atomic_path, check_safetensors, output_folder, read_json, write_json
from .rows import special_token_ids
from .stream import ActivationBatch, _position_mode, check_hooks, iter_activations, stop_layer_for

if TYPE_CHECKING:
    from ..model import HookedModel

META_FILE = "metadata.json"


class SimulatedInterruption(RuntimeError):
    """Raised by extract(_stop_after_shards=N): a crash after N shards, for resume tests."""


FORMAT_VERSION = 1


def _settings(model, hooks, data_id, context_length, max_tokens, positions, exclude_massive, pack):
    return {
        "format_version": FORMAT_VERSION,
        "model": str(model.source),
        "architecture": model.cfg.architecture,
        "d_model": model.cfg.d_model,
        "hooks": hooks,
        "dtype": str(model.dtype).split(".")[-1],
        "data": data_id,
        "context_length": context_length,
        "max_tokens": max_tokens,
        "positions": positions,
        "exclude_massive": exclude_massive,
        "pack": pack,
    }


def extract(
    model: HookedModel,
    hooks: list[str],
    out: str | Path,
    texts: Iterable[str] | DataSource | None = None,
    *,
    data_id: str | None = None,
    batch_size: int = 8,
    context_length: int = 128,
    max_tokens: int | None = None,
    positions: str | int = "all",
    exclude_massive: bool = False,
    pack: bool = True,
    shard_mb: float = 256.0,
    progress: bool = False,
    world: World | None = None,
    _stop_after_shards: int | None = None,
) -> dict:
    """Write activations to ``out`` as safetensors shards; resume an interrupted run.

    Files: ``shard_NNNNN.safetensors`` (one (rows, d) tensor per hook, named by the hook),
    ``rows_NNNNN.safetensors`` (token_ids, positions, doc_ids, window_ids of the same rows)
    and ``metadata.json`` (model, hooks, dtype, settings, the shards, how far the data was
    read). Each file is written under a temporary name and renamed; metadata.json is
    rewritten after every shard, and only shards listed there count. A rerun with the same
    settings skips the windows of the listed shards and continues: no row is duplicated or
    missing. Memory: one batch plus one shard buffer (``shard_mb``).

    texts: documents, or a ``mlx_interp.data.DataSource`` (None: the default corpus, train
    split); metadata.json's ``data_source`` records a DataSource's split and fingerprint.
    data_id names the data for the resume check (default, for a DataSource: its path, size,
    mtime and split). Returns the final metadata.

    Several processes (``mlx.launch -n N -- mlx-interp extract ...``; ``world`` defaults to
    ``mlx_interp.distributed.world()``): rank r runs the batches whose index is r mod N and
    writes its own ``shard_rR_*``/``rows_rR_*`` files and progress file
    ``metadata.rankR.json``, and resumes from it on its own; when every rank is done, rank 0
    writes ``metadata.json`` listing all shards, with ``world_size``. Read back in window
    order (``load_extraction``), the rows are bit-identical to a one-process run.
    """
    out = Path(out)
    checks.integer("batch_size", batch_size)
    checks.context_length(model, context_length)
    checks.integer("max_tokens", max_tokens, none_ok=True)
    checks.number("shard_mb", shard_mb, low=0, low_open=True)
    world = world or distributed.world()
    if world.size > 1:  # each rank writes its own files: its own lock, no cleaning of others'
        lock = output_folder(out, lock_name=f".mlx-interp.rank{world.rank}.lock", clean=False)
    else:
        lock = output_folder(out)
    with lock:
        return _extract(model, hooks, out, texts, data_id=data_id, batch_size=batch_size,
                        context_length=context_length, max_tokens=max_tokens, positions=positions,
                        exclude_massive=exclude_massive, pack=pack, shard_mb=shard_mb,
                        progress=progress, world=world, _stop_after_shards=_stop_after_shards)  # fmt: skip


def _extract(model, hooks, out, texts, *, data_id, batch_size, context_length, max_tokens,
             positions, exclude_massive, pack, shard_mb, progress, world, _stop_after_shards):  # fmt: skip
    out = Path(out)
    tok = model._require_tokenizer()
    hooks = check_hooks(model, hooks)
    _position_mode(tok, positions)  # fail on a bad token before creating anything
    if texts is None:
        texts = DataSource(None, "train")
    record = {"data": data_id or "given texts", "split": None, "fingerprint": None}
    if isinstance(texts, DataSource):
        data_id = data_id or texts.resume_id()
        record = texts.record()
        texts = texts.documents()
    settings = _settings(
        model, hooks, data_id, context_length, max_tokens, positions, exclude_massive, pack
    )
    world = world or distributed.world()
    ranked = world.size > 1
    if ranked:
        settings["world_size"] = world.size
        settings["batch_size"] = batch_size  # which rank runs which batch depends on it
        world.check_same("extract", settings)
    prefix = f"r{world.rank}_" if ranked else ""
    progress_file = f"metadata.rank{world.rank}.json" if ranked else META_FILE
    if ranked and (out / META_FILE).exists():
        merged = _resume_state(out, settings, META_FILE, "r")
        if merged.get("complete"):
            return merged
    meta = _resume_state(out, settings, progress_file, prefix)
    if meta.get("complete") and not ranked:
        return meta
    # recorded, not compared on resume: the data (its split and fingerprint, which the SAE
    # trained on these rows keeps) and what the row rule needs to be applied to the rows later
    meta.setdefault("data_source", record)
    meta.setdefault("special_token_ids", list(special_token_ids(tok)))
    dims = {h: hook_width(model, h) for h in hooks}
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[settings["dtype"]]
    shard_rows = max(1, int(shard_mb * 2**20 / (itemsize * sum(dims.values()))))

    buf: list[ActivationBatch] = []
    n_buf = 0
    excluded = dict(meta["n_excluded"])
    n_written_now = 0

    def flush(windows_done: int, tokens_done: int):
        nonlocal buf, n_buf, n_written_now
        k = len(meta["shards"])
        if buf:
            acts = {h: mx.concatenate([b.acts[h] for b in buf]) for h in hooks}
            rows = {
                key: mx.array(np.concatenate([b.rows_table()[key] for b in buf]))
                for key in ("token_ids", "positions", "doc_ids", "window_ids")
            }
            _save(out / f"rows_{prefix}{k:05d}.safetensors", rows)
            _save(out / f"shard_{prefix}{k:05d}.safetensors", acts)
            meta["shards"].append(
                {
                    "file": f"shard_{prefix}{k:05d}.safetensors",
                    "rows_file": f"rows_{prefix}{k:05d}.safetensors",
                    "n_rows": n_buf,
                    "windows": [meta["windows_done"], windows_done],
                }
            )
            meta["n_rows"] += n_buf
        meta["windows_done"] = windows_done
        meta["tokens_done"] = tokens_done
        meta["n_excluded"] = dict(excluded)
        write_json(out / progress_file, meta)
        buf, n_buf = [], 0
        n_written_now += 1

    windows_done, tokens_done = meta["windows_done"], meta["tokens_done"]
    try:
        for batch in (
            ()
            if meta.get("complete")
            else iter_activations(
                model,
                hooks,
                texts,
                batch_size=batch_size,
                context_length=context_length,
                max_tokens=max_tokens,
                positions=positions,
                exclude_massive=exclude_massive,
                pack=pack,
                start_window=meta["windows_done"],
                progress=progress and world.is_main,
                shard=(world.rank, world.size),
            )
        ):
            buf.append(batch)
            n_buf += batch.n_rows
            for key, v in batch.n_excluded.items():
                excluded[key] = excluded.get(key, 0) + v
            windows_done = batch.first_window + len(batch.windows)
            tokens_done += batch.n_tokens
            if n_buf >= shard_rows:
                flush(windows_done, tokens_done)
                if _stop_after_shards is not None and n_written_now >= _stop_after_shards:
                    raise SimulatedInterruption(f"stopped after {n_written_now} shards")
    except ValueError:
        if not meta["shards"] and not ranked:  # nothing of value written: leave nothing behind
            (out / META_FILE).unlink(missing_ok=True)
        raise
    if not meta.get("complete"):
        # windows skipped without a forward pass at the end (positions=TOKEN) are done too
        flush(windows_done, tokens_done)
        meta["complete"] = True
        write_json(out / progress_file, meta)
    if not ranked:
        return meta
    world.barrier("extract: waiting for every rank to finish its shards")
    if world.is_main:
        _merge_ranks(out, settings, world.size)
    world.barrier("extract: waiting for rank 0 to write metadata.json")
    return read_metadata(out)


def _merge_ranks(out: Path, settings: dict, size: int) -> dict:
    """Rank 0: one metadata.json over every rank's finished progress file."""
    import json

    parts = [json.loads((out / f"metadata.rank{r}.json").read_text()) for r in range(size)]
    recorded = {k: parts[0][k] for k in ("data_source", "special_token_ids") if k in parts[0]}
    unfinished = [r for r, m in enumerate(parts) if not m.get("complete")]
    if unfinished:
        raise ValueError(f"{out}: ranks {unfinished} did not finish; rerun the same command")
    excluded: dict[str, int] = {}
    for m in parts:
        for k, v in m["n_excluded"].items():
            excluded[k] = excluded.get(k, 0) + v
    shards = [dict(s, rank=r) for r, m in enumerate(parts) for s in m["shards"]]
    meta = {
        **settings,
        **recorded,
        "shards": sorted(shards, key=lambda s: (s["windows"][0], s["rank"])),
        "n_rows": sum(m["n_rows"] for m in parts),
        "windows_done": max(m["windows_done"] for m in parts),
        "tokens_done": sum(m["tokens_done"] for m in parts),
        "n_excluded": excluded,
        "complete": True,
    }
    if settings["positions"] not in ("all", "last") and meta["n_rows"] == 0:
        raise ValueError(f"token {settings['positions']!r} never occurs in the data")
    write_json(out / META_FILE, meta)
    return meta


def _hook_shape(model, hook: str) -> tuple[int, ...]:
    _, cache = model.run_with_cache(
        mx.zeros((1, 2), mx.int32),
        names_filter=[hook],
        stop_at_layer=stop_layer_for([hook], model.cfg.n_layers),
    )
    return tuple(cache[hook].shape[2:])


def hook_width(model, hook: str) -> int:
    """The number of values per token at ``hook`` (its trailing dims flattened, as rows)."""
    return int(np.prod(_hook_shape(model, hook)))


def _save(path: Path, arrays: dict[str, mx.array]) -> None:
    with atomic_path(path) as tmp:
        mx.save_safetensors(str(tmp), arrays)


def _resume_state(out: Path, settings: dict, meta_file: str = META_FILE, prefix: str = "") -> dict:
    """The progress in ``meta_file`` (fresh if none); drops this writer's unlisted files.

    prefix: the shard-name prefix this writer owns (``rR_`` for rank R of several).
    """

    path = out / meta_file
    if not path.exists():
        if any(p.name.startswith(f"shard_{prefix}") for p in out.iterdir()):
            raise ValueError(f"{out} holds shards but no {meta_file}; choose an empty --out folder")
        return {
            **settings,
            "shards": [],
            "n_rows": 0,
            "windows_done": 0,
            "tokens_done": 0,
            "n_excluded": {},
            "complete": False,
        }
    meta = read_json(path, f"delete {out} and extract again, or choose another --out")
    if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list):
        raise ValueError(f"{path} is not an extraction's metadata; choose another --out")
    differ = [k for k, v in settings.items() if meta.get(k) != v]
    if differ:
        k = differ[0]
        raise ValueError(
            f"{out} holds an extraction with other settings ({k}: {meta.get(k)!r} there, "
            f"{settings[k]!r} now); choose another --out folder"
        )
    verify_shards(out, meta, meta_file)
    # shards written after the last metadata update are incomplete work: drop them
    listed = {f for s in meta["shards"] for f in (s["file"], s["rows_file"])}
    for kind in ("shard", "rows"):
        for p in out.glob(f"{kind}_{prefix}*.safetensors"):
            if p.name not in listed:
                p.unlink()
    return meta


def verify_shards(out: Path, meta: dict, meta_file: str = META_FILE) -> None:
    """Check that every shard listed in the metadata is on disk, whole, with its rows."""
    fix = f"the extraction in {out} is damaged: delete the folder and extract again"
    try:
        for s in meta["shards"]:
            n = int(s["n_rows"])
            for f, names in ((s["file"], meta["hooks"]), (s["rows_file"], ["token_ids"])):
                if not (out / f).exists():
                    raise ValueError(f"{out / f} is listed in {meta_file} but missing; {fix}")
                header = check_safetensors(out / f, fix)
                for name in names:
                    if name not in header or int(header[name]["shape"][0]) != n:
                        raise ValueError(
                            f"{out / f} does not hold the {n} rows of {name} that {meta_file} "
                            f"lists; {fix}"
                        )
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{out / meta_file} is malformed ({e!r}); {fix}") from None


# ------------------------------------------------------------- reading back
def load_extraction(out: str | Path, hooks: list[str] | None = None) -> tuple[dict, dict, dict]:
    """Read an extraction folder: (metadata, {hook: np.ndarray (rows, d)}, {row field: array}).

    Loads everything into memory; for large extractions iterate ``iter_shards``. Rows come
    in window order (as a one-process run wrote them), also from several ranks' shards.
    """
    meta = read_metadata(Path(out))
    acts: dict[str, list] = {}
    rows: dict[str, list] = {}
    for _, a, r in iter_shards(out, hooks):
        for k, v in a.items():
            acts.setdefault(k, []).append(v)
        for k, v in r.items():
            rows.setdefault(k, []).append(v)
    cat = {k: np.concatenate(v) for k, v in acts.items()}
    table = {k: np.concatenate(v) for k, v in rows.items()}
    if meta.get("world_size", 1) > 1 and table:
        order = np.argsort(table["window_ids"], kind="stable")
        cat = {k: v[order] for k, v in cat.items()}
        table = {k: v[order] for k, v in table.items()}
    return meta, cat, table


def iter_shards(out: str | Path, hooks: list[str] | None = None):
    """Yield (metadata, {hook: np.ndarray}, {row field: np.ndarray}) shard by shard."""
    out = Path(out)
    meta = read_metadata(out)
    for s in meta["shards"]:
        a = mx.load(str(out / s["file"]))
        a = {h: np.asarray(a[h].astype(mx.float32)) for h in hooks or meta["hooks"]}
        r = {k: np.asarray(v) for k, v in mx.load(str(out / s["rows_file"])).items()}
        yield meta, a, r


def read_metadata(out: Path) -> dict:
    """The metadata.json of an extraction folder (a one-line error when there is none)."""

    path = Path(out) / META_FILE
    if not path.exists():
        raise ValueError(f"{out} holds no extraction ({META_FILE} is missing)")
    meta = read_json(path, f"delete {out} and extract again")
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("shards"), list)
        or "hooks" not in meta
    ):
        raise ValueError(f"{path} is not an extraction's metadata; delete {out} and extract again")
    if meta.get("shards"):
        verify_shards(Path(out), meta)
    return meta
