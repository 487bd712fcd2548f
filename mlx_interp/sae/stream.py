"""Activation sources for the SAE trainer: the model itself, or an extraction on disk.

Both wrap the activation pipeline of ``mlx_interp.activations`` (context windows of the
data, one forward pass per batch up to the last hook, massive rows left out) and present it
as a resumable source for the shuffle buffer (``mlx_interp.sae.buffer``): the cursor counts
context windows (streaming) or shards (extraction) already consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import distributed
from ..activations.rows import (
    COUNTERS,
    MASSIVE_FACTOR,
    RowFilter,
    add_counts,
    row_norms,
    zero_counts,
)
from ..distributed import World
from .buffer import check_finite

if TYPE_CHECKING:
    from ..model import HookedModel


def model_source(
    model: HookedModel,
    hooks: list[str],
    texts: Callable[[], Iterable[str]],
    *,
    batch_size: int = 8,
    context_length: int = 128,
    massive_factor: float = MASSIVE_FACTOR,
    stats: dict | None = None,
    world: World | None = None,
):
    """Stream rows from ``model`` at ``hooks``; the row rule (``activations.rows``: position 0,
    special tokens and rows with a norm over ``massive_factor`` x the batch median at any
    hook) leaves rows out, counted in ``stats['n_excluded']``.

    Several ranks (``world``, default ``mlx_interp.distributed.world()``): rank r runs the
    model on batches r, r + N, ... only, and the ranks exchange their rows, so that every
    rank sees the whole stream in the order one process would (data-parallel training
    slices each global batch from it) while the forward passes are shared out.
    """
    from .. import checks
    from ..activations import check_hooks, iter_activations
    from ..activations.store import hook_width

    check_hooks(model, hooks)
    world = world or distributed.world()
    checks.integer("batch_size", batch_size)
    checks.context_length(model, context_length)
    checks.number("massive_factor", massive_factor, low=1, low_open=True)
    if stats is None:
        stats = {}
    stats.setdefault("n_excluded", zero_counts())
    stats.setdefault("rows", 0)
    dims = {h: hook_width(model, h) for h in hooks} if world.size > 1 else {}

    def own_batches(cursor: int):
        for batch in iter_activations(
            model,
            hooks,
            texts(),
            batch_size=batch_size,
            context_length=context_length,
            exclude_massive=True,
            massive_factor=massive_factor,
            start_window=cursor,
            shard=(world.rank, world.size),
        ):
            chunk = {h: np.asarray(batch.acts[h], dtype=np.float32) for h in hooks}
            check_finite(chunk)
            counts = [batch.n_excluded.get(k, 0) for k in COUNTERS]
            header = (batch.first_window + len(batch.windows), *counts)
            yield batch.first_window // batch_size, header, chunk

    def open_at(cursor: int):
        for _, header, chunk in world.merge_streams(own_batches(cursor), dims, 1 + len(COUNTERS)):
            add_counts(stats["n_excluded"], dict(zip(COUNTERS, header[1:], strict=True)))
            stats["rows"] += len(next(iter(chunk.values())))
            yield header[0], chunk

    return open_at


def extraction_source(
    folder: str | Path,
    hooks: list[str],
    massive_factor: float = MASSIVE_FACTOR,
    epochs: int = 1,
    stats: dict | None = None,
):
    """Rows from an ``mlx-interp extract`` folder, shard by shard (``epochs`` times over).
    If the extraction kept all rows, the row rule (``activations.rows.RowFilter``) is applied
    here, per shard, and the rows left out are counted in ``stats['n_excluded']``."""
    from .. import checks
    from ..activations import read_metadata

    checks.integer("epochs", epochs)
    checks.number("massive_factor", massive_factor, low=1, low_open=True)
    meta = read_metadata(Path(folder))
    missing = [h for h in hooks if h not in meta["hooks"]]
    if missing:
        raise ValueError(
            f"the extraction in {folder} has no {', '.join(missing)} (it has {', '.join(meta['hooks'])})"
        )
    rule = None
    if not meta.get("exclude_massive", False):
        rule = RowFilter(
            factor=massive_factor, special_ids=tuple(meta.get("special_token_ids", ()))
        )
    if stats is None:
        stats = {}
    stats.setdefault("n_excluded", zero_counts())
    stats.setdefault("rows", 0)

    n_shards = len(meta["shards"])
    if n_shards == 0:
        raise ValueError(f"the extraction in {folder} holds no finished shard yet")

    def open_at(cursor: int):
        for i in range(cursor, n_shards * epochs):
            shard = meta["shards"][i % n_shards]
            acts = _read_shard(folder, shard["file"], hooks)
            chunk = {h: acts[h].reshape(acts[h].shape[0], -1) for h in hooks}
            for h, rows in chunk.items():
                bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
                if len(bad):
                    raise ValueError(
                        f"{Path(folder) / shard['file']}: row {bad[0]} of {h} holds NaN or "
                        f"infinity ({len(bad)} rows); extract again from a model without "
                        "non-finite values"
                    )
            if rule is not None:
                rows = _read_rows(folder, shard["rows_file"])
                norms = np.stack([row_norms(a) for a in chunk.values()])
                sel = rule(rows["token_ids"], rows["positions"], norms)
                add_counts(stats["n_excluded"], sel.counts)
                chunk = {h: a[sel.keep] for h, a in chunk.items()}
            stats["rows"] += next(iter(chunk.values())).shape[0]
            yield i + 1, chunk

    open_at.max_rows = int(sum(s["n_rows"] for s in meta["shards"])) * epochs  # at most
    if rule is None:  # the rows on disk are the training rows: the count is exact
        open_at.n_rows = open_at.max_rows
    return open_at


def _read_shard(folder, name: str, hooks: list[str]) -> dict[str, np.ndarray]:
    import mlx.core as mx

    from ..io import check_safetensors

    path = Path(folder) / name
    fix = f"the extraction in {folder} is damaged: delete it and extract again"
    check_safetensors(path, fix)
    try:
        a = mx.load(str(path))
        return {h: np.asarray(a[h].astype(mx.float32)) for h in hooks}
    except Exception as e:  # noqa: BLE001 - any reader failure means a damaged shard
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); {fix}") from None


def _read_rows(folder, name: str) -> dict[str, np.ndarray]:
    from ..io import load_safetensors

    return load_safetensors(
        Path(folder) / name, f"the extraction in {folder} is damaged: delete it and extract again"
    )
