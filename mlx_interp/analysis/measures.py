"""Analyses of activations that return numbers (the figures are in ``plots``).

Massive activations: in many models (SmolLM2 among them) position 0 and a few separator
tokens carry residual norms 10-100x those of ordinary tokens, and point in one shared
direction. The functions here flag them by the norm test of the row rule (``activations.rows``;
``massive_mask``: norm over ``MASSIVE_FACTOR`` x the median of the text at that layer, and
always position 0) and leave them out of
similarity statistics, returning the flags so a figure can say what it left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ..activations.rows import MASSIVE_FACTOR, over_median
from ..backends import to_numpy

if TYPE_CHECKING:
    from ..model import HookedModel

DEFAULT_GROUPS: dict[str, list[str]] = {
    "animals": [" dog", " cat", " horse", " cow", " lion", " rabbit", " sheep", " tiger"],
    "vehicles": [" car", " truck", " bus", " train", " bicycle", " plane", " boat", " tractor"],
    "fruits": [" apple", " banana", " orange", " grape", " pear", " cherry", " lemon", " peach"],
}
DEFAULT_TEMPLATES = [
    "I saw the{} yesterday.",
    "She told me about the{} again.",
    "There was a picture of the{} on the wall.",
    "We talked about the{} for a while.",
]


def resid_name(layer: int) -> str:
    """The residual stream after block ``layer``; layer -1 is the embeddings."""
    return "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"


def resid_names(n_layers: int) -> list[str]:
    """The residual stream at every depth: embeddings (blocks.0.hook_resid_pre), then each block."""
    return [resid_name(L) for L in range(-1, n_layers)]


def layer_labels(n_layers: int) -> list[str]:
    return ["embed"] + [f"L{i}" for i in range(n_layers)]


def massive_mask(norms: np.ndarray, factor: float = MASSIVE_FACTOR) -> np.ndarray:
    """Positions with massive activations: norm > factor x the median over positions, and 0.

    norms: (..., pos). Returns a boolean array of the same shape.
    """
    mask = over_median(norms, factor, np.median(norms, axis=-1, keepdims=True))
    mask[..., 0] = True
    return mask


def cosine_matrix(a: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, n) cosine similarities, in float64."""
    a = np.asarray(a, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    return a @ a.T


# -------------------------------------------------------------- one prompt
@dataclass
class NeuronActivations:
    """The most active neurons of one hook on one prompt: values (pos, k)."""

    str_tokens: list[str]
    hook: str
    neurons: np.ndarray  # (k,) neuron indices, most active first
    values: np.ndarray  # (pos, k)
    skipped_first: bool


def top_neurons(
    model: HookedModel, text: str, hook: str, k: int = 20, skip_first: bool = True
) -> NeuronActivations:
    """The k neurons of ``hook`` with the largest |activation| on any token of ``text``.

    skip_first: rank neurons without position 0 (whose activations are massive in many
    models), though its values are still returned.
    """
    model.check_hook_name(hook)
    tokens = model.to_tokens(text)
    from ..activations import stop_layer_for

    stop = stop_layer_for([hook], model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=stop)
    acts = to_numpy(cache[hook][0], np.float32).reshape(tokens.shape[1], -1)
    ranked = acts[1:] if skip_first and len(acts) > 1 else acts
    k = min(k, acts.shape[1])
    order = np.argsort(-np.abs(ranked).max(axis=0), kind="stable")[:k]
    return NeuronActivations(
        model.to_str_tokens(tokens[0]), hook, order, acts[:, order], skip_first and len(acts) > 1
    )


@dataclass
class TokenSimilarity:
    """Token-by-token cosine similarity of the residual stream at some layers."""

    str_tokens: list[str]
    layers: list[int]  # block index; -1 means the embeddings
    sims: np.ndarray  # (n_layers_chosen, pos, pos)
    norms: np.ndarray  # (n_layers_chosen, pos)
    massive: np.ndarray  # (n_layers_chosen, pos) bool


def token_similarity(model: HookedModel, text: str, layers: Sequence[int]) -> TokenSimilarity:
    """Cosine similarity between the tokens of ``text`` after each block in ``layers``.

    Layer -1 is the embeddings. ``massive`` flags position 0 and massive-norm positions.
    """
    names = [resid_name(L) for L in layers]
    for n in names:
        model.check_hook_name(n)
    tokens = model.to_tokens(text)
    stop = min(model.cfg.n_layers, max(layers) + 1)
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=stop)
    acts = [to_numpy(cache[n][0], np.float32) for n in names]
    norms = np.stack([np.linalg.norm(a, axis=-1) for a in acts])
    return TokenSimilarity(
        model.to_str_tokens(tokens[0]),
        list(layers),
        np.stack([cosine_matrix(a) for a in acts]),
        norms,
        massive_mask(norms),
    )


@dataclass
class LogitLens:
    """Each layer's residual stream read through the final norm and unembedding."""

    str_tokens: list[str]
    labels: list[str]  # 'embed', 'L0', ...
    top_ids: np.ndarray  # (n_rows, pos, k)
    top_probs: np.ndarray  # (n_rows, pos, k)
    top_strs: list[list[list[str]]]
    final_ids: np.ndarray  # (pos,) the model's own top prediction
    final_probs: np.ndarray  # (n_rows, pos): probability of that prediction at each layer

    def table(self) -> list[dict]:
        rows = []
        for i, lab in enumerate(self.labels):
            for p, t in enumerate(self.str_tokens):
                rows.append(
                    {
                        "layer": lab,
                        "position": p,
                        "token": t,
                        "top": [
                            {"token": s, "p": round(float(q), 4)}
                            for s, q in zip(self.top_strs[i][p], self.top_probs[i, p], strict=True)
                        ],
                    }
                )
        return rows


def logit_lens(model: HookedModel, text: str, k: int = 5) -> LogitLens:
    """Top-k next-token predictions of every layer at every position of ``text``."""
    n = model.cfg.n_layers
    names = resid_names(n)
    tokens = model.to_tokens(text)
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    stacked = mx.stack([cache[nm][0] for nm in names])  # (n + 1, pos, d)
    probs = mx.softmax(model.unembed(stacked).astype(mx.float32), axis=-1)
    top = mx.argsort(-probs, axis=-1)[..., :k]
    top_p = mx.take_along_axis(probs, top, axis=-1)
    final = mx.argmax(logits[0], axis=-1)
    final_idx = mx.broadcast_to(final[None, :, None], (n + 1, final.size, 1))
    final_p = mx.take_along_axis(probs, final_idx, axis=-1)[..., 0]
    mx.eval(top, top_p, final, final_p)
    top, top_p = np.asarray(top), np.asarray(top_p)
    decode = model.tokenizer.decode
    strs = [[[decode([int(t)]) for t in row] for row in layer] for layer in top]
    return LogitLens(
        model.to_str_tokens(tokens[0]),
        layer_labels(n),
        top,
        top_p,
        strs,
        np.asarray(final),
        np.asarray(final_p),
    )


# -------------------------------------------------------- word groups
@dataclass
class SemanticSimilarity:
    """Within- vs between-group cosine similarity of words in shared templates, per layer.

    ``sims[l, i, j]``: cosine of words i and j at row l, averaged over the templates (each
    comparison within one template, so the context is the same). "centered" subtracts the
    mean over all words of each template and layer first, removing what every word shares
    (the template, the position, the common direction of the residual stream).
    """

    words: list[str]
    groups: list[str]  # group of each word
    labels: list[str]  # 'embed', 'L0', ...
    sims: np.ndarray  # (n_rows, W, W)
    sims_centered: np.ndarray
    within: np.ndarray  # (n_rows,)
    between: np.ndarray
    within_centered: np.ndarray
    between_centered: np.ndarray
    n_massive: int = 0  # word positions flagged massive (left in; reported)
    templates: list[str] = field(default_factory=list)


def semantic_similarity(
    model: HookedModel,
    groups: dict[str, list[str]] | None = None,
    templates: Sequence[str] | None = None,
) -> SemanticSimilarity:
    """Compare related and unrelated words (e.g. animals vs vehicles) layer by layer.

    Each word is put into each template ('{}' marks it, words carry their leading space);
    its vector is the residual stream at its last token. Returns the similarity matrices
    and the mean within-group and between-group similarity per layer, raw and centered.
    """
    groups = groups or DEFAULT_GROUPS
    templates = list(templates or DEFAULT_TEMPLATES)
    if len(groups) < 2:
        raise ValueError("give at least two groups of words")
    if any("{}" not in t for t in templates):
        raise ValueError("every template needs a '{}' where the word goes")
    words = [w for ws in groups.values() for w in ws]
    group_of = [g for g, ws in groups.items() for _ in ws]
    texts, idx = [], []
    for t in templates:
        prefix = t[: t.index("{}")]
        for w in words:
            texts.append(t.format(w))
            idx.append(len(model.to_tokens(prefix + w)[0]) - 1)
    n = model.cfg.n_layers
    names = resid_names(n)
    tokens, mask = model.tokenize(texts)
    _, cache = model.run_with_cache(
        tokens, names_filter=names, stop_at_layer=n, attention_mask=mask
    )
    rows = mx.arange(len(texts))
    pos = mx.array(idx)
    acts = np.stack([to_numpy(cache[nm][rows, pos], np.float32) for nm in names])  # (L, T*W, d)
    all_norms = np.stack(
        [to_numpy(mx.linalg.norm(cache[nm], axis=-1), np.float32) for nm in names]
    )  # (L, T*W, pos)
    if mask is not None:
        all_norms = np.where(np.asarray(mask)[None] > 0, all_norms, np.nan)
    med = np.nanmedian(all_norms, axis=-1)
    n_massive = int(over_median(np.linalg.norm(acts, axis=-1), MASSIVE_FACTOR, med).sum())
    W, T = len(words), len(templates)
    acts = acts.reshape(len(names), T, W, -1)
    centered = acts - acts.mean(axis=2, keepdims=True)

    def mean_sims(a):
        return np.stack(
            [np.mean([cosine_matrix(a[i, t]) for t in range(T)], axis=0) for i in range(len(names))]
        )

    sims, sims_c = mean_sims(acts), mean_sims(centered)
    g = np.array(group_of)
    same = g[:, None] == g[None, :]
    off = ~np.eye(W, dtype=bool)
    return SemanticSimilarity(
        words, group_of, layer_labels(n), sims, sims_c,
        sims[:, same & off].mean(1), sims[:, ~same].mean(1),
        sims_c[:, same & off].mean(1), sims_c[:, ~same].mean(1),
        n_massive, templates,
    )  # fmt: skip


# ------------------------------------------------------------- positions
@dataclass
class PositionNorms:
    """Residual norm by position over many windows: median and quartiles per layer."""

    labels: list[str]
    median: np.ndarray  # (n_rows, context_length)
    q25: np.ndarray
    q75: np.ndarray
    n_windows: int
    massive_share: np.ndarray  # (n_rows, context_length): share of rows flagged massive


def position_norms(
    model: HookedModel,
    texts: Iterable[str] | None = None,
    layers: Sequence[int] | None = None,
    context_length: int = 64,
    max_tokens: int = 4096,
    batch_size: int = 8,
) -> PositionNorms:
    """Residual-stream norm against position in packed windows of the texts (default corpus).

    Position 0 is the window's boundary token. Medians and quartiles, not means, so that
    a few massive rows do not set the curve; ``massive_share`` says how many there were.
    """
    from ..activations import iter_activations

    n = model.cfg.n_layers
    layers = list(layers) if layers is not None else _spread(n)
    names = [resid_name(L) for L in layers]
    norms: list[list[np.ndarray]] = [[] for _ in names]
    positions = []
    for b in iter_activations(
        model,
        names,
        texts,
        batch_size=batch_size,
        context_length=context_length,
        max_tokens=max_tokens,
    ):
        for i, nm in enumerate(names):
            norms[i].append(
                to_numpy(mx.linalg.norm(b.acts[nm].astype(mx.float32), axis=-1), np.float32)
            )
        positions.append(b.positions)
    pos = np.concatenate(positions)
    N = np.stack([np.concatenate(x) for x in norms])  # (L, rows)
    shape = (len(names), context_length)
    med, q25, q75, share = (np.full(shape, np.nan) for _ in range(4))
    overall = np.median(N[:, pos > 0], axis=1)
    for p in range(context_length):
        sel = pos == p
        if sel.any():
            v = N[:, sel]
            med[:, p] = np.median(v, 1)
            q25[:, p], q75[:, p] = np.percentile(v, 25, 1), np.percentile(v, 75, 1)
            share[:, p] = over_median(v, MASSIVE_FACTOR, overall[:, None]).mean(1)
    labels = ["embed" if L == -1 else f"L{L}" for L in layers]
    return PositionNorms(labels, med, q25, q75, int((pos == 0).sum()), share)


@dataclass
class SameTokenPositions:
    """One token at many positions: cosine similarity against the distance between them."""

    token: str
    labels: list[str]
    distance_bins: np.ndarray  # (n_bins + 1,) edges
    mean_sim: np.ndarray  # (n_rows, n_bins)
    positions: np.ndarray  # (n_occurrences,)
    sims: np.ndarray  # (n_rows, n, n), occurrences sorted by position
    n_excluded: int


def same_token_positions(
    model: HookedModel,
    token: str | int = " the",
    texts: Iterable[str] | None = None,
    layers: Sequence[int] | None = None,
    context_length: int = 64,
    max_tokens: int = 4096,
    max_occurrences: int = 200,
) -> SameTokenPositions:
    """How the representation of one token changes with its position.

    Gathers the token's occurrences in packed windows (default corpus) and compares them
    pairwise; occurrences with a massive norm at any layer are left out (counted).
    """
    from ..activations import iter_activations

    n = model.cfg.n_layers
    layers = list(layers) if layers is not None else _spread(n)
    names = [resid_name(L) for L in layers]
    acts: list[list[np.ndarray]] = [[] for _ in names]
    pos = []
    tid = None
    n_excluded = 0
    for b in iter_activations(
        model, names, texts, context_length=context_length, max_tokens=max_tokens,
        positions=token, exclude_massive=True, massive_factor=MASSIVE_FACTOR,
    ):  # fmt: skip
        for i, nm in enumerate(names):
            acts[i].append(to_numpy(b.acts[nm], np.float32))
        pos.append(b.positions)
        tid = int(b.token_ids[0])
        n_excluded += sum(b.n_excluded.values())
    pos = np.concatenate(pos)
    A = [np.concatenate(a) for a in acts]
    n_total = len(pos)
    if n_total > max_occurrences:  # an even spread over the occurrences, deterministic
        keep = np.linspace(0, n_total - 1, max_occurrences).round().astype(int)
        pos, A = pos[keep], [a[keep] for a in A]
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    sims = np.stack([cosine_matrix(a[order]) for a in A])
    dist = np.abs(pos[:, None] - pos[None, :])
    edges = np.unique(np.linspace(0, context_length, 9).round()).astype(int)
    iu = np.triu_indices(len(pos), 1)
    mean_sim = np.full((len(names), len(edges) - 1), np.nan)
    for j in range(len(edges) - 1):
        sel = (dist[iu] >= edges[j]) & (dist[iu] < edges[j + 1])
        if sel.any():
            mean_sim[:, j] = sims[:, iu[0][sel], iu[1][sel]].mean(1)
    labels = ["embed" if L == -1 else f"L{L}" for L in layers]
    return SameTokenPositions(
        model.tokenizer.decode([tid]), labels, edges, mean_sim, pos, sims, n_excluded
    )


@dataclass
class PositionEmbeddings:
    """GPT-2's learned position embeddings W_pos (n_ctx, d_model)."""

    w_pos: np.ndarray
    sims: np.ndarray  # (n_ctx, n_ctx) cosine similarity
    pcs: np.ndarray  # (n_ctx, 3) projections on the top principal components
    explained: np.ndarray  # (3,) share of variance
    norms: np.ndarray  # (n_ctx,)


def position_embeddings(model: HookedModel) -> PositionEmbeddings | None:
    """The structure of learned position embeddings; None for rotary models (Llama)."""
    wpe = getattr(model.model, "wpe", None)
    if wpe is None:
        return None
    w = to_numpy(wpe.weight, np.float32).astype(np.float64)
    c = w - w.mean(0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    var = s**2 / (s**2).sum()
    return PositionEmbeddings(
        w, cosine_matrix(w), u[:, :3] * s[:3], var[:3], np.linalg.norm(w, axis=1)
    )


def _spread(n_layers: int) -> list[int]:
    """A few layers spread over the depth: embeddings, then about a quarter apart."""
    picks = sorted({0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
    return [-1, *picks]


def residual_norms(model: HookedModel, text: str) -> tuple[list[str], np.ndarray]:
    """Norms of the residual stream: (str_tokens, norms (n_layers + 1, pos)).

    Row 0 is the embedding (blocks.0.hook_resid_pre), row L + 1 is blocks.L.hook_resid_post.
    """
    n = model.cfg.n_layers
    names = resid_names(n)
    tokens = model.to_tokens(text)
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=n)
    norms = mx.stack([mx.linalg.norm(cache[k][0].astype(mx.float32), axis=-1) for k in names])
    return model.to_str_tokens(tokens[0]), np.array(norms)
