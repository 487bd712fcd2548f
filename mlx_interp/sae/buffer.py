"""Activations for SAE training: sources and the shuffle buffer (NumPy only).

This is bookkeeping, not SAE math, so both trainers (MLX and torch_ref) use it: the same
seed gives both the same batches, which is what lets their loss curves be compared.

A *source* is a callable ``open(cursor) -> iterator of (next_cursor, {hook: rows})``
yielding float32 NumPy chunks of shape (n_rows, d_in) for every hook (the same rows,
token for token, across hooks). ``cursor`` is an integer the source can restart from
without redoing earlier work, so that a resumed run reads exactly what it would have read.

The shuffle buffer's order is exact and does not depend on how the source cuts its chunks:
block b holds the rows left over from block b-1 (fewer than a batch; none for b = 0)
followed by exactly the next ``buffer_rows`` rows of the source, in source order (fewer only
when the source ends); the block is permuted with ``numpy.random.default_rng([seed, b])``
and batch j of the block is rows ``perm[j * batch_size:(j + 1) * batch_size]``; what is left
(fewer than a batch) opens block b + 1. ``buffer_rows`` below ``batch_size`` counts as
``batch_size``. The state is small (the block number, the source cursor and row offset of
the block's first fresh row, the leftover rows and how many batches of the block were given
out), so a checkpoint can hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Chunk = dict[str, np.ndarray]
Source = Callable[[int], Iterator[tuple[int, Chunk]]]


def check_finite(chunk: Chunk) -> None:
    for hook, rows in chunk.items():
        if not np.all(np.isfinite(rows)):
            bad = np.flatnonzero((~np.isfinite(rows)).any(axis=-1))
            raise ValueError(
                f"activations of {hook} contain NaN or inf ({len(bad)} rows, the first row "
                f"{int(bad[0])} of this chunk); check the model or the arrays given"
            )


# --- sources -----------------------------------------------------------------------------------


def array_source(arrays: Chunk, chunk_rows: int = 65536) -> Source:
    """A source over in-memory (or memory-mapped) arrays, one per hook, same row count."""
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError("every hook needs the same number of rows")
    (n_rows,) = n

    def open_at(cursor: int):
        for start in range(cursor, n_rows, chunk_rows):
            stop = min(start + chunk_rows, n_rows)
            yield stop, {h: np.asarray(a[start:stop], dtype=np.float32) for h, a in arrays.items()}

    open_at.n_rows = n_rows
    return open_at


# --- the shuffle buffer ---------------------------------------------------------------------------


class ShuffleBuffer:
    """Fixed-size shuffled batches from a source, resumable from a small state dict."""

    def __init__(self, source: Source, batch_size: int, buffer_rows: int, seed: int, state=None):
        if buffer_rows < batch_size:
            buffer_rows = batch_size
        self.source, self.batch_size, self.buffer_rows, self.seed = (
            source,
            batch_size,
            buffer_rows,
            seed,
        )
        state = state or {}
        self.block = int(state.get("block", 0))
        self.block_cursor = int(state.get("block_cursor", 0))
        self.block_offset = int(state.get("block_offset", 0))
        self.carry: Chunk | None = state.get("carry")
        self.emitted = int(state.get("emitted", 0))
        self.exhausted = False

    def state(self) -> dict:
        """The position: resuming from it gives the batches that were still to come."""
        return {
            "block": self.block,
            "block_cursor": self.block_cursor,
            "block_offset": self.block_offset,
            "carry": self.carry,
            "emitted": self.emitted,
        }

    def _pieces(self, cursor: int, offset: int):
        """(cursor, offset, rows, next cursor): the source's chunks from ``cursor``, the
        first without its first ``offset`` rows."""
        for nxt, chunk in self.source(cursor):
            check_finite(chunk)
            if offset:
                chunk = {h: a[offset:] for h, a in chunk.items()}
            yield cursor, offset, chunk, nxt
            cursor, offset = nxt, 0

    def __iter__(self) -> Iterator[Chunk]:
        stream = self._pieces(self.block_cursor, self.block_offset)
        pending = None  # a piece of the source not yet (wholly) in a block
        skip = self.emitted
        while True:
            parts = [self.carry] if self.carry else []
            fresh, start = 0, (self.block_cursor, self.block_offset)
            while fresh < self.buffer_rows:
                if pending is None:
                    try:
                        pending = next(stream)
                    except StopIteration:
                        self.exhausted = True
                        break
                cur, off, chunk, nxt = pending
                m = next(iter(chunk.values())).shape[0]
                take = min(m, self.buffer_rows - fresh)
                parts.append({h: a[:take] for h, a in chunk.items()})
                fresh += take
                if take == m:
                    pending, start = None, (nxt, 0)
                else:
                    rest = {h: a[take:] for h, a in chunk.items()}
                    pending, start = (cur, off + take, rest, nxt), (cur, off + take)
            n = sum(next(iter(p.values())).shape[0] for p in parts)
            if n < self.batch_size:
                return
            hooks = list(parts[0])
            block = {h: np.concatenate([p[h] for p in parts]) for h in hooks}
            perm = np.random.default_rng([self.seed, self.block]).permutation(n)
            n_batches = n // self.batch_size
            for b in range(skip, n_batches):
                rows = perm[b * self.batch_size : (b + 1) * self.batch_size]
                self.emitted = b + 1
                yield {h: block[h][rows] for h in hooks}
            skip = 0
            rest = perm[n_batches * self.batch_size :]
            self.carry = {h: block[h][rest] for h in hooks} if len(rest) else None
            self.block += 1
            self.block_cursor, self.block_offset = start
            self.emitted = 0
            if self.exhausted:
                return
