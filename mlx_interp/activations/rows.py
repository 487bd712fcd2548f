"""Which rows count: the one rule for leaving rows out, and its counter names (NumPy only).

SmolLM2's residual stream (and many others') has *massive activations*: position 0 and
separator or special tokens reach norms of 10,000-25,000 against a few hundred for
ordinary tokens. Left in, they carry almost all the variance, and every mean-squared
quantity (SAE loss, explained variance, similarity) describes three tokens. So extraction
(``exclude_massive``), SAE training, SAE evaluation, the feature pass and the analyses
leave out, by one rule:

- ``position_0``: the first position of a context window;
- ``special_token``: a special token of the tokenizer or the document boundary token
  (at any other position);
- ``norm_outlier``: a row whose norm, at any of the hooks read, is over ``factor`` x the
  median norm of the remaining rows of the batch (per hook).

Every artefact reports the rows left out under the names in ``COUNTERS``, always all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

COUNTERS = ("position_0", "special_token", "norm_outlier")
MASSIVE_FACTOR = 10.0


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's special token ids and the boundary token put before every document."""
    from .windows import boundary_token

    return tuple(sorted(set(tokenizer.all_special_ids) | {boundary_token(tokenizer)}))


def row_norms(rows: np.ndarray) -> np.ndarray:
    """(n_rows, d) -> (n_rows,) L2 norms, computed in float64."""
    return np.linalg.norm(np.asarray(rows, np.float64).reshape(len(rows), -1), axis=-1)


def over_median(
    norms: np.ndarray, factor: float, median: np.ndarray | None = None, axis: int = -1
) -> np.ndarray:
    """The norm test, elementwise: ``norms > factor * median`` (the median kept above 1e-12).

    norms: any shape (NaN where there is no row); median: broadcastable to norms (None: the
    NaN-ignoring median along ``axis``). This is the only copy of the test in mlx_interp.
    """
    norms = np.asarray(norms, np.float64)
    if median is None:
        median = np.nanmedian(norms, axis=axis, keepdims=True)
    return norms > factor * np.maximum(np.asarray(median, np.float64), 1e-12)


def zero_counts() -> dict[str, int]:
    """The left-out counters, all at zero."""
    return dict.fromkeys(COUNTERS, 0)


def add_counts(total: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """Add ``counts`` into ``total`` (in place) and return it."""
    for k, v in counts.items():
        total[k] = total.get(k, 0) + int(v)
    return total


class Selection(NamedTuple):
    """What ``RowFilter`` decided about a batch of rows."""

    keep: np.ndarray
    """(n_rows,) bool: the rows that count."""
    outlier: np.ndarray
    """(n_rows,) bool: the rows left out by the norm test (some reports score them apart)."""
    counts: dict[str, int]
    """The rows left out, by reason: every key of ``COUNTERS``."""


@dataclass(frozen=True)
class RowFilter:
    """The rule for which rows count (see the module docstring).

    position_0, special_tokens: leave those rows out. factor: leave out rows whose norm is
    over ``factor`` x the median (None: no norm test). special_ids: the ids that count as
    special (``RowFilter.for_tokenizer`` fills them in).
    """

    position_0: bool = True
    special_tokens: bool = True
    factor: float | None = MASSIVE_FACTOR
    special_ids: tuple[int, ...] = ()

    @classmethod
    def for_tokenizer(cls, tokenizer, factor: float | None = MASSIVE_FACTOR, **kw) -> RowFilter:
        return cls(factor=factor, special_ids=special_token_ids(tokenizer), **kw)

    def by_token(
        self, token_ids: np.ndarray, positions: np.ndarray, select: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, int]]:
        """The part of the rule that needs no activations.

        token_ids, positions: (n_rows,) ints; select: (n_rows,) bool, the rows under
        consideration (None: all). Returns (keep (n_rows,) bool, counts): ``keep`` is
        ``select`` without position 0 and special tokens; counts has every COUNTERS key.
        """
        keep = np.ones(len(token_ids), bool) if select is None else np.array(select, bool)
        counts = zero_counts()
        if self.position_0:
            pos0 = keep & (np.asarray(positions) == 0)
            counts["position_0"] = int(pos0.sum())
            keep &= ~pos0
        if self.special_tokens and self.special_ids:
            spec = keep & np.isin(token_ids, np.asarray(self.special_ids, np.int64))
            counts["special_token"] = int(spec.sum())
            keep &= ~spec
        return keep, counts

    def outliers(self, norms: np.ndarray, median: np.ndarray | None = None) -> np.ndarray:
        """True where a row's norm is over ``factor`` x the median, at any hook.

        norms: (n_rows,) or (n_hooks, n_rows) (NaN for rows that are not there); median:
        the reference, broadcastable to norms (None: the median of each hook's row norms).
        Returns (n_rows,) bool (all False when ``factor`` is None).
        """
        norms = np.asarray(norms, np.float64)
        n2 = norms.reshape(-1, norms.shape[-1])
        if self.factor is None or n2.shape[-1] == 0:
            return np.zeros(norms.shape[-1], bool)
        if median is not None:
            median = np.asarray(median, np.float64).reshape(-1, 1)
        return over_median(n2, self.factor, median).any(axis=0)

    def __call__(
        self,
        token_ids: np.ndarray,
        positions: np.ndarray,
        norms: np.ndarray,
        select: np.ndarray | None = None,
    ) -> Selection:
        """The whole rule over one batch of rows.

        token_ids, positions: (n_rows,); norms: (n_rows,) or (n_hooks, n_rows), the rows'
        norms at the hooks read (``row_norms``); select: the rows under consideration (None:
        all). The median is taken over the rows that pass ``by_token``.
        """
        keep, counts = self.by_token(token_ids, positions, select)
        idx = np.nonzero(keep)[0]
        outlier = np.zeros(len(keep), bool)
        outlier[idx] = self.outliers(np.asarray(norms)[..., idx])
        counts["norm_outlier"] = int(outlier.sum())
        return Selection(keep & ~outlier, outlier, counts)

    def settings(self) -> dict:
        """What an artefact records about the rule."""
        return {
            "position_0": self.position_0,
            "special_tokens": self.special_tokens,
            "norm_factor": self.factor,
        }

    def describe(self) -> str:
        parts = ["position 0"] if self.position_0 else []
        if self.special_tokens:
            parts.append("special tokens")
        if self.factor is not None:
            parts.append(f"rows with norm > {self.factor:g} x the batch median")
        return ", ".join(parts) or "nothing"
