"""Activations at scale: fixed-shape context windows, a batched generator, shards on disk.

The data flow::

    documents -> token stream (a boundary token before each document)
              -> context windows of ``context_length`` tokens (packed, or one document each)
              -> batches of ``batch_size`` windows -> run_with_cache(stop_at_layer=last hook + 1)
              -> rows: one per selected token position, (n_rows, d) per hook

``iter_activations`` yields those rows batch by batch (the SAE trainer consumes it
directly); ``extract`` writes them as safetensors shards that survive interruption.

Every window has the same shape (the last one is padded at its end, which a causal model
never looks back at), so one compiled shape serves the whole run, and each batch is
evaluated once. Memory is bounded by one batch (plus one shard's buffer when writing).

Massive activations: in SmolLM2's middle layers, position 0 and boundary/special tokens
reach residual norms of 10,000-25,000 against a few hundred for ordinary tokens.
``exclude_massive=True`` drops them by the one row rule of ``rows.py`` (position 0, special
tokens, and rows whose norm at any requested hook exceeds ``massive_factor`` times the batch
median) and counts each kind.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ..model import layer_of
from ..system import mlx_device
from .rows import MASSIVE_FACTOR, RowFilter
from .windows import LAST, PAD, Windows, iter_windows, resolve_token

if TYPE_CHECKING:
    from ..model import HookedModel

_NOT_PER_TOKEN = ("hook_attn_scores", "hook_pattern")
# On the CPU a batch runs as forward passes of at most this many windows (1024 tokens at the
# default context), which bounds the temporaries. (It was chosen when large passes were
# slower, 555 against 660 tokens/s for 64 windows: their buffers over 32 MB were mapped
# afresh each time; since allocator.py, passes of 8 to 64 windows run alike, 1020-1075.)
# The rows are the same: a window never sees another. A GPU takes the whole batch at once.
CPU_PASS_WINDOWS = 8


@dataclass
class ActivationBatch:
    """The activations of one batch of windows, one row per selected token position.

    ``acts[hook]`` is an mx.array (n_rows, d) (trailing dims flattened, e.g. hook_z's heads);
    the row arrays (NumPy, (n_rows,)) say where each row comes from: its token id, its
    position in its context window, the index of its document in the data, and the global
    index of its window. ``windows`` holds this batch's windows (n_windows, context_length)
    so that ``windows[window_ids - first_window]`` is each row's context.
    """

    acts: dict[str, mx.array]
    token_ids: np.ndarray
    positions: np.ndarray
    doc_ids: np.ndarray
    window_ids: np.ndarray
    windows: np.ndarray
    first_window: int
    n_tokens: int  # real (unpadded) token positions that went through the model
    n_excluded: dict[str, int] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.token_ids)

    def rows_table(self) -> dict[str, np.ndarray]:
        return {
            "token_ids": self.token_ids,
            "positions": self.positions,
            "doc_ids": self.doc_ids,
            "window_ids": self.window_ids,
        }


def stop_layer_for(hooks: list[str], n_layers: int) -> int | None:
    """The stop_at_layer that computes every hook and no later block (None: all of them)."""
    if any(h.startswith("ln_final") for h in hooks):
        return None
    layers = [layer_of(h) for h in hooks if layer_of(h) is not None]
    stop = max(layers) + 1 if layers else 0
    return None if stop >= n_layers else stop


def check_hooks(model: HookedModel, hooks: Iterable[str]) -> list[str]:
    """Hook names that exist and hold per-token activations (not attention patterns)."""
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    if not hooks:
        raise ValueError("no hook points given")
    for h in hooks:
        model.check_hook_name(h)
        if h.endswith(_NOT_PER_TOKEN):
            raise ValueError(f"{h} is an attention pattern (query x key), not one row per token")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"a hook point is listed twice: {hooks}")
    return hooks


def iter_activations(
    model: HookedModel,
    hooks: list[str],
    texts: Iterable[str] | None = None,
    *,
    batch_size: int = 8,
    context_length: int = 128,
    max_tokens: int | None = None,
    positions: str | int = "all",
    exclude_massive: bool = False,
    massive_factor: float = MASSIVE_FACTOR,
    pack: bool = True,
    seed: int | None = None,
    start_window: int = 0,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ActivationBatch]:
    """Yield the activations at ``hooks`` over ``texts``, one ActivationBatch per batch of windows.

    texts: documents (strings); None means the default corpus, train split
        (``mlx_interp.data.default_corpus``).
    batch_size, context_length: each forward pass runs (batch_size, context_length) tokens;
        every window starts with a boundary token (see ``boundary_token``).
    max_tokens: stop after this many window positions (rounded up to whole windows).
    positions: 'all'; 'last' (the last token of each document); or a token, as an id or a
        string that is one token (e.g. ' bank'): only its occurrences. Batches with no
        selected row are skipped without running the model. A token that never occurs
        raises ValueError naming tokens of the data that look like it.
    exclude_massive: drop position 0, special tokens, and rows whose norm at any hook is
        over ``massive_factor`` x the batch median (``rows.RowFilter``); ``n_excluded``
        counts each reason (``rows.COUNTERS``).
    pack: pack documents into windows (True) or start each document in its own window.
    seed: if set, the rows of each batch come in a random order (fixed by seed and batch).
    start_window: skip this many windows first (no forward pass); resuming uses it.
    progress: show a progress bar in tokens/s.
    shard: (rank, world_size): run only the batches whose index (first window //
        batch_size) is ``rank`` modulo ``world_size``; every batch is the very batch a
        one-process run computes, so the rows are bit-identical (also the massive-row rule,
        which looks at the batch median).

    Only the blocks up to the last requested hook run (stop_at_layer).
    """
    tok = model._require_tokenizer()
    hooks = check_hooks(model, hooks)
    rank, n_shards = shard
    if not 0 <= rank < n_shards:
        raise ValueError(
            f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}"
        )
    if context_length > model.cfg.n_ctx:
        raise ValueError(
            f"context_length {context_length} exceeds the model's n_ctx {model.cfg.n_ctx}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    mode, target = _position_mode(tok, positions)
    if texts is None:
        from ..data import default_corpus

        texts = default_corpus("train")
    stop = stop_layer_for(hooks, model.cfg.n_layers)
    row_filter = RowFilter.for_tokenizer(tok, massive_factor) if exclude_massive else None
    max_windows = None if max_tokens is None else math.ceil(max_tokens / context_length)
    bar = _progress_bar(progress, max_tokens, start_window * context_length)
    seen: set[int] = set()
    n_yielded = 0
    try:
        for win in iter_windows(tok, texts, context_length, batch_size, pack):
            n_win = len(win.tokens)
            end = win.first_window + n_win
            if max_windows is not None and win.first_window >= max_windows:
                break
            if (win.first_window // batch_size) % n_shards != rank:
                continue  # another rank's batch
            if max_windows is not None and end > max_windows:
                keep = max_windows - win.first_window
                win = Windows(
                    win.tokens[:keep], win.doc_ids[:keep], win.kinds[:keep], win.first_window
                )
                n_win, end = keep, max_windows
            if end <= start_window:
                continue
            if win.first_window < start_window:  # resume inside a group: drop the done windows
                cut = start_window - win.first_window
                win = Windows(win.tokens[cut:], win.doc_ids[cut:], win.kinds[cut:], start_window)
                n_win = len(win.tokens)
            batch = _batch(
                model, hooks, win, batch_size, stop, mode, target, row_filter, seed, seen
            )
            if bar is not None:
                bar.update(int((win.kinds != PAD).sum()))
            if batch is not None:
                n_yielded += batch.n_rows
                yield batch
    finally:
        if bar is not None:
            bar.close()
    if mode == "token" and n_yielded == 0 and start_window == 0 and n_shards == 1:
        raise ValueError(_never_occurs(tok, target, seen))


def run_in_passes(model, tokens: np.ndarray, hooks: list[str], stop: int | None) -> dict:
    """``run_with_cache`` of (n_windows, pos) tokens up to block ``stop``: {hook: (n_windows,
    pos, ...) activations}, lazy. On the CPU in passes of at most ``CPU_PASS_WINDOWS``."""
    step = CPU_PASS_WINDOWS if mlx_device() == "cpu" else len(tokens)
    parts = [
        model.run_with_cache(mx.array(tokens[i : i + step]), names_filter=hooks, stop_at_layer=stop)[1]
        for i in range(0, len(tokens), step)
    ]  # fmt: skip
    return {h: mx.concatenate([p[h] for p in parts]) if len(parts) > 1 else parts[0][h] for h in hooks}  # fmt: skip


def _position_mode(tok, positions) -> tuple[str, int | None]:
    if isinstance(positions, str) and positions in ("all", "last"):
        return positions, None
    return "token", resolve_token(tok, positions)


def _batch(
    model,
    hooks,
    win,
    batch_size,
    stop,
    mode,
    target,
    row_filter,
    seed,
    seen,
) -> ActivationBatch | None:
    """Run one group of windows and keep the selected rows (None: no row selected)."""
    n_win, C = win.tokens.shape
    kinds = win.kinds.reshape(-1)
    token_ids = win.tokens.reshape(-1)
    select = kinds != PAD
    if mode == "last":
        select &= kinds == LAST
    elif mode == "token":
        seen.update(np.unique(token_ids[select]).tolist())
        select &= token_ids == target
    n_tokens = int((kinds != PAD).sum())
    excluded: dict[str, int] = {}
    if row_filter is not None:
        select, excluded = row_filter.by_token(token_ids, np.arange(n_win * C) % C, select)
    if not select.any():
        return None
    tokens = win.tokens
    if n_win < batch_size:  # keep one shape for every forward pass
        filler = np.full((batch_size - n_win, C), tokens[0, 0], np.int32)
        tokens = np.concatenate([tokens, filler])
    cache = run_in_passes(model, tokens, hooks, stop)
    flat = {h: cache[h][:n_win].reshape(n_win * C, -1) for h in hooks}
    if row_filter is not None:
        idx = np.nonzero(select)[0]
        idx_mx = mx.array(idx)
        norms = [mx.linalg.norm(flat[h][idx_mx].astype(mx.float32), axis=-1) for h in hooks]
        outlier = row_filter.outliers(np.stack([np.asarray(n) for n in norms]))  # one transfer
        excluded["norm_outlier"] = int(outlier.sum())
        select[idx[outlier]] = False
        if not select.any():
            return None
    idx = np.nonzero(select)[0]
    if seed is not None:
        idx = np.random.default_rng([seed, win.first_window]).permutation(idx)
    idx_mx = mx.array(idx)
    acts = {h: flat[h][idx_mx] for h in hooks}
    mx.eval(acts)
    return ActivationBatch(
        acts=acts,
        token_ids=token_ids[idx].astype(np.int32),
        positions=(idx % C).astype(np.int32),
        doc_ids=win.doc_ids.reshape(-1)[idx],
        window_ids=(win.first_window + idx // C).astype(np.int64),
        windows=win.tokens,
        first_window=win.first_window,
        n_tokens=n_tokens,
        n_excluded=excluded,
    )


def _never_occurs(tok, target: int, seen: set[int]) -> str:
    name = tok.decode([target])
    strings = {tok.decode([i]): i for i in sorted(seen)}
    close = difflib.get_close_matches(name, list(strings), n=5, cutoff=0.6)
    hint = (
        f"; tokens in the data that look like it: {', '.join(repr(c) for c in close)}"
        if close
        else ""
    )
    return f"token {name!r} (id {target}) never occurs in the data ({len(seen)} distinct tokens seen){hint}"


def _progress_bar(progress: bool, total: int | None, initial: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=min(initial, total or initial),
        unit="tok",
        unit_scale=True,
        desc="activations",
        smoothing=0.1,
        dynamic_ncols=True,
    )
