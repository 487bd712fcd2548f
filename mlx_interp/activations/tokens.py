"""The activations of one token (e.g. ' bank') across contexts, with where each occurrence is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..backends import to_numpy
from .stream import iter_activations
from .windows import boundary_token

if TYPE_CHECKING:
    from ..model import HookedModel


@dataclass
class TokenActivations:
    """Every occurrence of one token in the texts: acts[hook] is (n_occurrences, d)."""

    token: str
    token_id: int
    hooks: list[str]
    acts: dict[str, np.ndarray]
    doc_ids: np.ndarray  # index of the text each occurrence is in
    positions: np.ndarray  # position in its context window (0 is the boundary token)
    contexts: list[str]  # the text around it, the token in [[ ]]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def norms(self, hook: str) -> np.ndarray:
        return np.linalg.norm(self.acts[hook], axis=-1)

    def cosine_similarity(self, hook: str) -> np.ndarray:
        """(n, n) cosine similarity between the occurrences at one hook."""
        a = self.acts[hook].astype(np.float64)
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        return a @ a.T


def token_activations(
    model: HookedModel,
    token: str | int,
    texts: Iterable[str],
    hooks: Sequence[str],
    *,
    context_length: int = 128,
    batch_size: int = 8,
    max_tokens: int | None = None,
    window: int = 8,
) -> TokenActivations:
    """Gather the activations of ``token`` (an id, or a string that is one token) in ``texts``.

    Each text is run on its own (never packed with the others), in windows of
    ``context_length`` tokens that start with the boundary token. ``contexts`` shows up to
    ``window`` tokens either side. Raises ValueError if the token never occurs (naming
    tokens of the texts that look like it) or is several tokens.
    """
    tok = model._require_tokenizer()
    hooks = list(hooks)
    boundary = boundary_token(tok)
    acts: dict[str, list] = {h: [] for h in hooks}
    docs, pos, contexts = [], [], []
    token_id = None
    for b in iter_activations(
        model,
        hooks,
        texts,
        batch_size=batch_size,
        context_length=context_length,
        max_tokens=max_tokens,
        positions=token,
        pack=False,
    ):
        for h in hooks:
            acts[h].append(to_numpy(b.acts[h], np.float32))
        docs.append(b.doc_ids)
        pos.append(b.positions)
        token_id = int(b.token_ids[0])
        for w, p in zip(b.window_ids - b.first_window, b.positions, strict=True):
            row = b.windows[w]
            left = row[max(1, p - window) : p]
            right = row[p + 1 : p + 1 + window]
            right = right[: np.argmax(right == boundary)] if (right == boundary).any() else right
            contexts.append(
                f"{tok.decode(left.tolist())}[[{tok.decode([int(row[p])])}]]{tok.decode(right.tolist())}"
            )
    return TokenActivations(
        token=tok.decode([token_id]),
        token_id=token_id,
        hooks=hooks,
        acts={h: np.concatenate(v) for h, v in acts.items()},
        doc_ids=np.concatenate(docs),
        positions=np.concatenate(pos),
        contexts=contexts,
    )
