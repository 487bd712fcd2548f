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
``exclude_massive=True`` drops them (position 0, special tokens, and rows whose norm at
any requested hook exceeds ``massive_factor`` times the batch median) and counts each kind.
"""

from __future__ import annotations

import difflib
import math
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from .io import atomic_path, ensure_writable_dir, write_json
from .model import layer_of

# Per-token kinds in the token stream.
NORMAL, BOUNDARY, LAST, PAD = 0, 1, 2, 3
_NOT_PER_TOKEN = ("hook_attn_scores", "hook_pattern")
META_FILE = "metadata.json"


class SimulatedInterruption(RuntimeError):
    """Raised by extract(_stop_after_shards=N): a crash after N shards, for resume tests."""


FORMAT_VERSION = 1


# ------------------------------------------------------------------ tokens
def boundary_token(tokenizer) -> int:
    """The token put before every document and at the start of every window.

    '<|endoftext|>' when the vocabulary has it (GPT-2; SmolLM2's pretraining separator),
    else the EOS token, else the BOS token.
    """
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has no <|endoftext|>, EOS or BOS token to separate documents")


def resolve_token(tokenizer, token: str | int) -> int:
    """A token id from an id or a string that is exactly one token (e.g. ' bank')."""
    if isinstance(token, (int, np.integer)):
        if not 0 <= int(token) < len(tokenizer):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {len(tokenizer)})")
        return int(token)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{token!r} is {len(ids)} tokens {pieces}, not one; give a string that is a single "
            "token (mind the leading space, e.g. ' bank')"
        )
    return int(ids[0])


def _token_stream(tokenizer, texts: Iterable[str], boundary: int, chunk: int = 64):
    """Yield (ids, doc_ids, kinds) per document: boundary token first, last token marked LAST."""
    buf: list[str] = []
    doc = 0

    def flush(docs: list[str], first_doc: int):
        encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(encoded):
            if not ids:
                continue
            n = len(ids) + 1
            kinds = np.zeros(n, np.int8)
            kinds[0], kinds[-1] = BOUNDARY, LAST
            yield (
                np.array([boundary, *ids], np.int32),
                np.full(n, first_doc + i, np.int64),
                kinds,
            )

    for text in texts:
        buf.append(text)
        if len(buf) == chunk:
            yield from flush(buf, doc)
            doc += len(buf)
            buf = []
    if buf:
        yield from flush(buf, doc)


@dataclass
class Windows:
    """A group of context windows: tokens, doc_ids and kinds, each (n_windows, context_length)."""

    tokens: np.ndarray
    doc_ids: np.ndarray
    kinds: np.ndarray
    first_window: int  # global index of the first window


def iter_windows(
    tokenizer,
    texts: Iterable[str],
    context_length: int,
    batch_size: int,
    pack: bool = True,
) -> Iterator[Windows]:
    """Fixed-shape windows, ``batch_size`` at a time, in a fixed order.

    pack=True: the token stream is cut into windows of a boundary token plus
    ``context_length - 1`` stream tokens (documents run across windows). pack=False: each
    document starts its own window(s). The last window is padded (kind PAD); the last group
    may hold fewer windows.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    boundary = boundary_token(tokenizer)
    body = context_length - 1
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_done = 0

    def window(ids, docs, kinds):
        n = len(ids)
        t = np.full(context_length, boundary, np.int32)
        d = np.full(context_length, docs[0] if n else -1, np.int64)
        k = np.full(context_length, PAD, np.int8)
        t[1 : n + 1], d[1 : n + 1], k[1 : n + 1] = ids, docs, kinds
        k[0] = BOUNDARY
        if n:
            d[0] = docs[0]
        return t, d, k

    def group():
        nonlocal rows, n_done
        g = Windows(*(np.stack(x) for x in zip(*rows, strict=True)), first_window=n_done)
        n_done += len(rows)
        rows = []
        return g

    pend_ids: list[np.ndarray] = []
    pend_docs: list[np.ndarray] = []
    pend_kinds: list[np.ndarray] = []
    pending = 0
    for ids, docs, kinds in _token_stream(tokenizer, texts, boundary):
        if not pack:
            ids, docs, kinds = ids[1:], docs[1:], kinds[1:]  # the window's own boundary serves
            for s in range(0, len(ids), body):
                rows.append(window(ids[s : s + body], docs[s : s + body], kinds[s : s + body]))
                if len(rows) == batch_size:
                    yield group()
            continue
        pend_ids.append(ids)
        pend_docs.append(docs)
        pend_kinds.append(kinds)
        pending += len(ids)
        if pending < body:
            continue
        cat_ids, cat_docs, cat_kinds = (
            np.concatenate(pend_ids),
            np.concatenate(pend_docs),
            np.concatenate(pend_kinds),
        )
        n_full = len(cat_ids) // body
        for w in range(n_full):
            s = slice(w * body, (w + 1) * body)
            rows.append(window(cat_ids[s], cat_docs[s], cat_kinds[s]))
            if len(rows) == batch_size:
                yield group()
        rest = slice(n_full * body, None)
        pend_ids, pend_docs, pend_kinds = [cat_ids[rest]], [cat_docs[rest]], [cat_kinds[rest]]
        pending = len(pend_ids[0])
    if pack and pending:
        rows.append(
            window(np.concatenate(pend_ids), np.concatenate(pend_docs), np.concatenate(pend_kinds))
        )
    if rows:
        yield group()


# -------------------------------------------------------------- generator
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


def check_hooks(model, hooks: Iterable[str]) -> list[str]:
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
    model,
    hooks: list[str],
    texts: Iterable[str] | None = None,
    *,
    batch_size: int = 8,
    context_length: int = 128,
    max_tokens: int | None = None,
    positions: str | int = "all",
    exclude_massive: bool = False,
    massive_factor: float = 10.0,
    pack: bool = True,
    seed: int | None = None,
    start_window: int = 0,
    progress: bool = False,
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
        over ``massive_factor`` x the batch median; ``n_excluded`` counts each reason.
    pack: pack documents into windows (True) or start each document in its own window.
    seed: if set, the rows of each batch come in a random order (fixed by seed and batch).
    start_window: skip this many windows first (no forward pass); resuming uses it.
    progress: show a progress bar in tokens/s.

    Only the blocks up to the last requested hook run (stop_at_layer).
    """
    tok = model._require_tokenizer()
    hooks = check_hooks(model, hooks)
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
        from .data import default_corpus

        texts = default_corpus("train")
    stop = stop_layer_for(hooks, model.cfg.n_layers)
    special = np.array(sorted(set(tok.all_special_ids) | {boundary_token(tok)}), np.int32)
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
                model,
                hooks,
                win,
                batch_size,
                stop,
                mode,
                target,
                special,
                exclude_massive,
                massive_factor,
                seed,
                seen,
            )
            if bar is not None:
                bar.update(int((win.kinds != PAD).sum()))
            if batch is not None:
                n_yielded += batch.n_rows
                yield batch
    finally:
        if bar is not None:
            bar.close()
    if mode == "token" and n_yielded == 0 and start_window == 0:
        raise ValueError(_never_occurs(tok, target, seen))


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
    special,
    exclude_massive,
    massive_factor,
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
    if exclude_massive:
        pos0 = select & (np.arange(n_win * C) % C == 0)
        spec = select & ~pos0 & np.isin(token_ids, special)
        excluded = {"position_0": int(pos0.sum()), "special_token": int(spec.sum())}
        select &= ~(pos0 | spec)
    if not select.any():
        return None
    tokens = win.tokens
    if n_win < batch_size:  # keep one shape for every forward pass
        filler = np.full((batch_size - n_win, C), tokens[0, 0], np.int32)
        tokens = np.concatenate([tokens, filler])
    _, cache = model.run_with_cache(mx.array(tokens), names_filter=hooks, stop_at_layer=stop)
    flat = {h: cache[h][:n_win].reshape(n_win * C, -1) for h in hooks}
    if exclude_massive:
        idx = np.nonzero(select)[0]
        idx_mx = mx.array(idx)
        norms = [mx.linalg.norm(flat[h][idx_mx].astype(mx.float32), axis=-1) for h in hooks]
        norms = np.stack([np.asarray(n) for n in norms])  # one transfer per batch
        med = np.median(norms, axis=1, keepdims=True)
        outlier = (norms > massive_factor * np.maximum(med, 1e-12)).any(axis=0)
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


# ------------------------------------------------------------- on disk
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
    model,
    hooks: list[str],
    out: str | Path,
    texts: Iterable[str] | None = None,
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

    data_id names the data for the resume check (the CLI passes the file path, size and
    mtime; None with texts=None means the default corpus). Returns the final metadata.
    """
    out = Path(out)
    tok = model._require_tokenizer()
    hooks = check_hooks(model, hooks)
    _position_mode(tok, positions)  # fail on a bad token before creating anything
    if texts is None and data_id is None:
        from .data import CORPUS_VERSION

        data_id = f"default corpus v{CORPUS_VERSION}, train split"
    settings = _settings(
        model, hooks, data_id, context_length, max_tokens, positions, exclude_massive, pack
    )
    created = not out.exists()
    ensure_writable_dir(out)
    meta = _resume_state(out, settings)
    if meta.get("complete"):
        return meta
    dims = {h: int(np.prod(_hook_shape(model, h))) for h in hooks}
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
            _save(out / f"rows_{k:05d}.safetensors", rows)
            _save(out / f"shard_{k:05d}.safetensors", acts)
            meta["shards"].append(
                {
                    "file": f"shard_{k:05d}.safetensors",
                    "rows_file": f"rows_{k:05d}.safetensors",
                    "n_rows": n_buf,
                    "windows": [meta["windows_done"], windows_done],
                }
            )
            meta["n_rows"] += n_buf
        meta["windows_done"] = windows_done
        meta["tokens_done"] = tokens_done
        meta["n_excluded"] = dict(excluded)
        write_json(out / META_FILE, meta)
        buf, n_buf = [], 0
        n_written_now += 1

    windows_done, tokens_done = meta["windows_done"], meta["tokens_done"]
    try:
        for batch in iter_activations(
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
            progress=progress,
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
        if not meta["shards"]:  # nothing of value written: leave nothing behind
            (out / META_FILE).unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                shutil.rmtree(out, ignore_errors=True)
        raise
    # windows skipped without a forward pass at the end (positions=TOKEN) are done too
    flush(windows_done, tokens_done)
    meta["complete"] = True
    write_json(out / META_FILE, meta)
    return meta


def _hook_shape(model, hook: str) -> tuple[int, ...]:
    _, cache = model.run_with_cache(
        mx.zeros((1, 2), mx.int32),
        names_filter=[hook],
        stop_at_layer=stop_layer_for([hook], model.cfg.n_layers),
    )
    return tuple(cache[hook].shape[2:])


def _save(path: Path, arrays: dict[str, mx.array]) -> None:
    with atomic_path(path) as tmp:
        mx.save_safetensors(str(tmp), arrays)


def _resume_state(out: Path, settings: dict) -> dict:
    import json

    path = out / META_FILE
    if not path.exists():
        if any(p.name.startswith("shard_") for p in out.iterdir()):
            raise ValueError(f"{out} holds shards but no {META_FILE}; choose an empty --out folder")
        return {
            **settings,
            "shards": [],
            "n_rows": 0,
            "windows_done": 0,
            "tokens_done": 0,
            "n_excluded": {},
            "complete": False,
        }
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e}); remove it or choose another --out") from None
    differ = [k for k, v in settings.items() if meta.get(k) != v]
    if differ:
        k = differ[0]
        raise ValueError(
            f"{out} holds an extraction with other settings ({k}: {meta.get(k)!r} there, "
            f"{settings[k]!r} now); choose another --out folder"
        )
    for s in meta["shards"]:
        for f in (s["file"], s["rows_file"]):
            if not (out / f).exists():
                raise ValueError(f"{out / f} is listed in {META_FILE} but missing")
    # shards written after the last metadata update are incomplete work: drop them
    listed = {f for s in meta["shards"] for f in (s["file"], s["rows_file"])}
    for p in out.glob("*_*.safetensors"):
        if p.name not in listed:
            p.unlink()
    return meta


# ------------------------------------------------------------- reading back
def load_extraction(out: str | Path, hooks: list[str] | None = None) -> tuple[dict, dict, dict]:
    """Read an extraction folder: (metadata, {hook: np.ndarray (rows, d)}, {row field: array}).

    Loads everything into memory; for large extractions iterate ``iter_shards``.
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
    return meta, cat, {k: np.concatenate(v) for k, v in rows.items()}


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
    import json

    path = Path(out) / META_FILE
    if not path.exists():
        raise ValueError(f"{out} holds no extraction ({META_FILE} is missing)")
    return json.loads(path.read_text())
