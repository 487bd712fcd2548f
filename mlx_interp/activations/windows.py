"""Documents to fixed-shape context windows: the token stream and its per-token kinds.

Documents are packed into windows of ``context_length`` tokens; each document starts after
a boundary token. Every window has the same shape (the last one is padded at its end, which
a causal model never looks back at), so one compiled shape serves a whole run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

# Per-token kinds in the token stream.
NORMAL, BOUNDARY, LAST, PAD = 0, 1, 2, 3


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
    if n_done == 0:
        raise ValueError("the data holds no text: no documents, or only empty ones")
