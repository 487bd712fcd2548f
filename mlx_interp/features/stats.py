"""Per-unit statistics from one streamed pass: SAE features, or a model's raw neurons.

A *unit* is an SAE latent or one dimension of a hook's activation (a "neuron"). Its
activation a is clipped at zero (a+ = max(a, 0); SAE latents are non-negative already),
and it *fires* on a token when a+ > 0. Over the ordinary tokens of the data (position 0,
special tokens and massive rows, norm over 10x the batch median at the SAE's hook, are
left out and counted: the row rule of ``activations.rows``) ``UnitStats`` gathers, batch by batch, in NumPy:

- fires, sum of a+ (so density = fires / n_tokens, mean activation when firing);
- a histogram of log10(a+) over the tokens where the unit fires (fixed bins);
- the top ``top_k`` activations with their token, document and a context window of
  tokens and of the unit's activations around them (NaN at left-out positions): a
  bounded top-k per unit, merged with each batch's candidates (``(n_units, top_k)``
  arrays, never all activations);
- a token table: for each (token, unit) pair seen firing, the count and the sum of a+,
  split into two halves of the data (by document parity) for the held-out explanation
  score (``monosemanticity.py``); and per-token counts.

Memory is bounded by the unit count (top-k arrays, histograms) and by the distinct
(token, unit) pairs (at most vocabulary x units; pruned beyond ``max_pairs``), not by the
number of tokens. All work is vectorised per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..options import option

# log10(a+) histogram bins: 8 per decade from 1e-3 to 1e4 (values outside go to the ends)
HIST_EDGES = np.linspace(-3.0, 4.0, 57)


@dataclass
class StatsConfig:
    top_k: int = option(32, "top activations (with contexts) kept per feature")
    context_left: int = 12  # tokens of context before the maximum
    context_right: int = 4  # and after
    max_pairs: int = 8_000_000  # (token, unit) pairs kept in the token table
    compact_every: int = 4_000_000  # pending pairs that trigger a compaction of the table
    token_table: bool = True  # False: no (token, unit) table (no explanation score), faster

    def __post_init__(self) -> None:
        from ..checks import integer

        self.top_k = integer("top_k", self.top_k, maximum=100_000)
        self.context_left = integer("context_left", self.context_left, minimum=0)
        self.context_right = integer("context_right", self.context_right, minimum=0)
        self.max_pairs = integer("max_pairs", self.max_pairs)


class SparseTable:
    """Sums and counts over int64 keys, appended per batch and compacted now and then."""

    def __init__(self, max_pairs: int, compact_every: int = 4_000_000):
        self.keys = np.zeros(0, np.int64)
        self.sums = np.zeros(0, np.float64)
        self.counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._extra_counts: list[np.ndarray] = []  # counts of merged parts (see UnitStats.merge)
        self._n_pending = 0
        self.max_pairs, self.compact_every = max_pairs, compact_every
        self.pruned = 0  # pairs dropped to stay under max_pairs

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys):
            self._pending.append((keys, values))
            self._n_pending += len(keys)
            if self._n_pending > max(self.compact_every, len(self.keys)):
                self.compact()

    def compact(self) -> None:
        if not self._pending:
            return
        k = np.concatenate([self.keys] + [p[0] for p in self._pending])
        v = np.concatenate([self.sums] + [p[1] for p in self._pending])
        n_merged = len(self._extra_counts)
        ones = [
            np.ones(len(p[0]), np.int64) for p in self._pending[: len(self._pending) - n_merged]
        ]
        c = np.concatenate([self.counts, *ones, *self._extra_counts])
        self._pending, self._extra_counts, self._n_pending = [], [], 0
        uk, inv = np.unique(k, return_inverse=True)
        self.keys = uk
        self.sums = np.bincount(inv, weights=v, minlength=len(uk))
        self.counts = np.bincount(inv, weights=c, minlength=len(uk)).astype(np.int64)
        if len(uk) > self.max_pairs:  # keep the pairs that fire most often
            keep = np.sort(np.argpartition(-self.counts, self.max_pairs - 1)[: self.max_pairs])
            self.pruned += len(uk) - len(keep)
            self.keys, self.sums, self.counts = uk[keep], self.sums[keep], self.counts[keep]


class UnitStats:
    """The streaming accumulator of one set of units (see the module docstring)."""

    def __init__(self, n_units: int, vocab_size: int, cfg: StatsConfig | None = None):
        self.cfg = cfg = cfg or StatsConfig()
        self.n_units, self.vocab_size = int(n_units), int(vocab_size)
        K, W = cfg.top_k, cfg.context_left + 1 + cfg.context_right
        self.n_tokens = 0
        self.fires = np.zeros(n_units, np.int64)
        self.sum_act = np.zeros(n_units, np.float64)
        self.fires_left_out = np.zeros(n_units, np.int64)  # firings at left-out positions
        self.hist = np.zeros((n_units, len(HIST_EDGES) - 1), np.int64)
        self.top_vals = np.full((n_units, K), -np.inf, np.float32)
        self.top_token = np.full((n_units, K), -1, np.int32)
        self.top_doc = np.full((n_units, K), -1, np.int64)
        self.top_window = np.full((n_units, K), -1, np.int64)
        self.top_pos = np.full((n_units, K), -1, np.int32)
        self.ctx_tokens = np.full((n_units, K, W), -1, np.int32)
        self.ctx_acts = np.full((n_units, K, W), np.nan, np.float32)
        # the token table, per half of the data (document parity)
        self.token_count = np.zeros((2, vocab_size), np.int64)
        self.tables = [SparseTable(cfg.max_pairs, cfg.compact_every) for _ in range(2)]
        self.half_n = np.zeros(2, np.int64)
        self.half_sum = np.zeros((2, n_units), np.float64)
        self.half_sumsq = np.zeros((2, n_units), np.float64)

    def update(
        self,
        acts: np.ndarray,
        tokens: np.ndarray,
        keep: np.ndarray,
        real: np.ndarray,
        docs: np.ndarray,
        first_window: int,
    ) -> None:
        """One batch of windows.

        acts: (n_windows, C, n_units) activations (any value at padding); tokens, docs:
        (n_windows, C); keep: the ordinary tokens counted; real: not padding.
        """
        n_win, C, U = acts.shape
        if U != self.n_units:
            raise ValueError(f"got {U} units, expected {self.n_units}")
        a = np.maximum(acts.reshape(n_win * C, U), 0).astype(np.float32, copy=False)
        keep, real = keep.reshape(-1), real.reshape(-1)
        tok, doc = tokens.reshape(-1).astype(np.int64), docs.reshape(-1)
        self.fires_left_out += (a[real & ~keep] > 0).sum(0)
        A = np.where(keep[:, None], a, 0)
        self.n_tokens += int(keep.sum())
        rows, units = np.nonzero(A)
        vals = A[rows, units]
        self.fires += np.bincount(units, minlength=U)
        self.sum_act += np.bincount(units, weights=vals, minlength=U)
        nb = len(HIST_EDGES) - 1
        b = np.clip(np.searchsorted(HIST_EDGES, np.log10(vals), side="right") - 1, 0, nb - 1)
        self.hist += np.bincount(units * nb + b, minlength=U * nb).reshape(U, nb)
        # token table and per-half moments (for the explanation score)
        half = (doc % 2).astype(np.int64)
        for h in (0, 1):
            rows_h = keep & (half == h)
            self.token_count[h] += np.bincount(tok[rows_h], minlength=self.vocab_size)
            self.half_n[h] += int(rows_h.sum())
            Ah = A[rows_h]
            self.half_sum[h] += Ah.sum(0, dtype=np.float64)
            self.half_sumsq[h] += (Ah.astype(np.float64) ** 2).sum(0)
            if not self.cfg.token_table:
                continue
            sel = half[rows] == h
            self.tables[h].add(tok[rows[sel]] * U + units[sel], vals[sel].astype(np.float64))
        self._merge_top(A, a, keep, real, tok, doc, n_win, C, first_window, (rows, units, vals))

    def _candidates(self, A: np.ndarray, kk: int, nonzero) -> tuple[np.ndarray, np.ndarray]:
        """(batch rows, values), each (U, kk): each unit's kk largest positive values in the
        batch (-inf where it has fewer)."""
        R, U = A.shape
        rows, units, vals = nonzero
        if len(vals) > R * U // 16:  # dense (neurons): a partition of every unit's column
            AT = np.ascontiguousarray(A.T)  # selecting along a contiguous axis is 2-3x faster
            cand_rows = np.argpartition(-AT, kk - 1, axis=1)[:, :kk]
            cand_vals = np.take_along_axis(AT, cand_rows, axis=1)
            return cand_rows, np.where(cand_vals > 0, cand_vals, -np.inf).astype(np.float32)
        # sparse (SAE features: k of d_sae fire per row): rank the firings within each unit,
        # largest first, an earlier row first among equals; 30x less work at k 32 of 9216
        order = np.lexsort((rows, -vals, units))
        u = units[order]
        rank = np.arange(len(u)) - np.searchsorted(u, u)
        top = order[rank < kk]
        cand_rows = np.zeros((U, kk), np.int64)
        cand_vals = np.full((U, kk), -np.inf, np.float32)
        cand_rows[units[top], rank[rank < kk]] = rows[top]
        cand_vals[units[top], rank[rank < kk]] = vals[top]
        return cand_rows, cand_vals

    def _merge_top(self, A, a, keep, real, tok, doc, n_win, C, first_window, nonzero) -> None:
        K = self.cfg.top_k
        kk = min(K, A.shape[0])
        cand_rows, cand_vals = self._candidates(A, kk, nonzero)
        all_vals = np.concatenate([self.top_vals, cand_vals], axis=1)
        order = np.argsort(-all_vals, axis=1, kind="stable")[:, :K]  # old entries win ties
        is_new = order >= K
        self.top_vals = np.take_along_axis(all_vals, order, axis=1)
        old = np.where(is_new, 0, order)
        for name in ("top_token", "top_doc", "top_window", "top_pos"):
            setattr(self, name, np.take_along_axis(getattr(self, name), old, axis=1))
        self.ctx_tokens = np.take_along_axis(self.ctx_tokens, old[:, :, None], axis=1)
        self.ctx_acts = np.take_along_axis(self.ctx_acts, old[:, :, None], axis=1)
        nu, ns = np.nonzero(is_new)
        if not len(nu):
            return
        r = cand_rows[nu, order[nu, ns] - K]  # batch row of each new entry
        w, p = r // C, r % C
        self.top_token[nu, ns] = tok[r]
        self.top_doc[nu, ns] = doc[r]
        self.top_window[nu, ns] = first_window + w
        self.top_pos[nu, ns] = p
        q = p[:, None] + np.arange(-self.cfg.context_left, self.cfg.context_right + 1)
        inside = (q >= 0) & (q < C)
        g = w[:, None] * C + np.clip(q, 0, C - 1)  # grid row of each context position
        inside &= real[g]
        self.ctx_tokens[nu, ns] = np.where(inside, tok[g], -1)
        shown = np.where(keep[g], a[g, nu[:, None]], np.nan)
        self.ctx_acts[nu, ns] = np.where(inside, shown, np.nan)

    # the fields that one pass accumulates: summed over parts, or the bounded top-k
    SUMMED = ("n_tokens", "fires", "sum_act", "fires_left_out", "hist", "token_count",
              "half_n", "half_sum", "half_sumsq")  # fmt: skip
    TOP = ("top_vals", "top_token", "top_doc", "top_window", "top_pos", "ctx_tokens", "ctx_acts")

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to merge this accumulator with others (``merge``), as arrays."""
        for t in self.tables:
            t.compact()
        out = {k: np.asarray(getattr(self, k)) for k in (*self.SUMMED, *self.TOP)}
        for h, t in enumerate(self.tables):
            out[f"table{h}_keys"], out[f"table{h}_sums"] = t.keys, t.sums
            out[f"table{h}_counts"] = t.counts
        return out

    def merge(self, parts: list[dict[str, np.ndarray]]) -> None:
        """Add the ``state()`` of other passes over other batches (e.g. other ranks).

        Counts, sums and histograms add up; the top-k keeps the k largest over all parts,
        an earlier window first among equal values (as one pass over every batch keeps
        the earlier one); the token tables add pair by pair.
        """
        for part in parts:
            for k in self.SUMMED:
                setattr(self, k, getattr(self, k) + part[k])
            self.n_tokens = int(self.n_tokens)
            for h, t in enumerate(self.tables):
                t._pending.append((part[f"table{h}_keys"], part[f"table{h}_sums"]))
                t._n_pending += len(part[f"table{h}_keys"])
                t._extra_counts.append(part[f"table{h}_counts"])
        for t in self.tables:
            t.compact()
        K = self.cfg.top_k
        every = [{k: getattr(self, k) for k in self.TOP}]
        every += [{k: part[k] for k in self.TOP} for part in parts]
        vals = np.concatenate([e["top_vals"] for e in every], axis=1)
        win = np.concatenate([e["top_window"] for e in every], axis=1)
        win = np.where(np.isfinite(vals), win, np.iinfo(np.int64).max)
        order = np.lexsort((win, -vals), axis=1)[:, :K]  # by value, then the earlier window
        for k in self.TOP:
            cat = np.concatenate([e[k] for e in every], axis=1)
            idx = order if cat.ndim == 2 else order[:, :, None]
            setattr(self, k, np.take_along_axis(cat, idx, axis=1))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything gathered, as named arrays (the token table merged over both halves)."""
        t0, t1 = self.tables
        t0.compact()
        t1.compact()
        keys, inv = np.unique(np.concatenate([t0.keys, t1.keys]), return_inverse=True)
        sums = np.bincount(inv, weights=np.concatenate([t0.sums, t1.sums]), minlength=len(keys))
        counts = np.bincount(inv, weights=np.concatenate([t0.counts, t1.counts]), minlength=len(keys))  # fmt: skip
        return {
            "fires": self.fires,
            "sum_act": self.sum_act,
            "sumsq_act": self.half_sumsq.sum(0),
            "fires_left_out": self.fires_left_out,
            "hist": self.hist,
            "hist_edges": HIST_EDGES,
            "top_vals": self.top_vals,
            "top_token": self.top_token,
            "top_doc": self.top_doc,
            "top_window": self.top_window,
            "top_pos": self.top_pos,
            "ctx_tokens": self.ctx_tokens,
            "ctx_acts": self.ctx_acts,
            "token_count": self.token_count.sum(0),
            "pair_keys": keys,
            "pair_sums": sums.astype(np.float32),
            "pair_counts": counts.astype(np.int64),
        }


@dataclass
class BatchGrid:
    """One ActivationBatch laid out on its (n_windows, C) grid of positions, with the rows
    that count by the one row rule (``activations.rows.RowFilter``).

    ``grid`` (n_rows,) is each row's index on the flattened grid; ``real``, ``keep``
    (n_windows * C,) flag real and counted positions; ``tokens`` and ``docs`` (n_windows, C)
    hold the token and document ids (-1 documents at padding); ``left_out`` counts each
    reason (``rows.COUNTERS``) over this batch.
    """

    grid: np.ndarray
    tokens: np.ndarray
    docs: np.ndarray
    real: np.ndarray
    keep: np.ndarray
    first_window: int
    left_out: dict[str, int]

    def to_grid(self, rows: np.ndarray) -> np.ndarray:
        """Rows (n_rows, d) -> (n_windows, C, d) on the grid (zeros at padding)."""
        n_win, C = self.tokens.shape
        g = np.zeros((n_win * C, rows.shape[1]), np.float32)
        g[self.grid] = rows
        return g.reshape(n_win, C, -1)

    def update_args(self) -> tuple:
        """The arguments of ``UnitStats.update`` after the activations."""
        return self.tokens, self.keep, self.real, self.docs, self.first_window


def batch_grid(batch, rows, norms: np.ndarray) -> BatchGrid:
    """The grid of ``batch`` (an ActivationBatch of every position) and its counted rows.

    rows: a ``RowFilter``; norms: the rows' norms, (n_rows,) or (n_hooks, n_rows), for its
    norm test (``activations.rows.row_norms``).
    """
    n_win, C = batch.windows.shape
    grid = (batch.window_ids - batch.first_window) * C + batch.positions
    real = np.zeros(n_win * C, bool)
    real[grid] = True
    sel = rows(batch.token_ids, batch.positions, norms)
    keep = np.zeros(n_win * C, bool)
    keep[grid[sel.keep]] = True
    docs = np.full(n_win * C, -1, np.int64)
    docs[grid] = batch.doc_ids
    tokens = batch.windows.reshape(n_win, C).astype(np.int64)
    return BatchGrid(grid, tokens, docs.reshape(n_win, C), real, keep, batch.first_window, sel.counts)  # fmt: skip
