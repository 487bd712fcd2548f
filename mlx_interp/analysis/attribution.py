"""Attribution patching (AtP): the first-order estimate of activation patching, for every
component at once, from one forward and one backward pass (Nanda 2023; Kramár et al. 2024).

For a component with activation ``a`` and a metric ``m`` (by default the logit difference
answer - wrong at the last position), patching the other prompt's activation in changes
the metric by about

    (a_source - a_base) . dm/da |_base

Direction ``"noising"`` (the default, Kramár et al.'s AtP): the base run is the clean
prompt and the source the corrupted one, so a score estimates m(clean with the component
taken from the corrupted run) - m(clean), the effect of breaking that component.
``"denoising"`` is what TransformerLens's attribution-patching notebook and
``activation_patching`` here do: the base is the corrupted run, the source the clean one,
and a score estimates m(corrupted with the clean component) - m(corrupted).

Every hook point is probed by adding a zero array to it (so the forward is unchanged) and
differentiating the metric with respect to those arrays (``mx.value_and_grad``): one
forward and one backward pass of the base prompt, plus one forward of the source prompt
for its activations. An SAE is spliced in at its hook with its error term kept,
``x -> x + decode(f + p) - decode(f)`` with a zero probe ``p`` on its latents ``f``, so the
forward is unchanged too and ``dm/dp`` is the gradient on each latent. Only activations
are differentiated, never weights, so quantized models work as float ones.

``torch_ref.attribution`` computes the same scores with torch autograd, independently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..model import HookedModel

DIRECTIONS = ("noising", "denoising")
# Hooks whose scores keep every entry: (n_heads, query_pos, key_pos).
_PATTERN_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern")
# The hook points the table ranks per position (the residual stream and what adds to it).
_TABLE_HOOKS = (".hook_resid_pre", ".hook_attn_out", ".hook_mlp_out")


@dataclass
class AttributionResult:
    """AtP scores, in metric units (logits for the default metric), summed over the batch
    of prompt pairs (the metric is the batch mean, so a score estimates patching that
    component in every pair at once).

    ``scores[hook]``: (pos,) for (batch, pos, d) hooks, summed over d; (pos, n_heads) for
    per-head hooks (q, k, v, rot_q, rot_k, z), summed over d_head; (n_heads, query_pos,
    key_pos) for the attention scores and pattern. ``neurons[hook]``: (pos, d_mlp) for each
    ``mlp.hook_post``. ``features[hook]``: (pos, d_sae) for each SAE; ``sae_error[hook]``:
    (pos,), the SAE's error term. The base run is clean for "noising", corrupted for
    "denoising"; a score estimates m(base with that component patched) - m(base).
    """

    str_tokens: list[str]  # the (first) clean prompt's tokens
    answer: str | None
    wrong: str | None
    direction: str
    clean_metric: float
    corrupted_metric: float
    n_layers: int
    n_heads: int
    scores: dict[str, np.ndarray]
    neurons: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    sae_error: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def base_metric(self) -> float:
        return self.clean_metric if self.direction == "noising" else self.corrupted_metric

    def _per_layer(self, hook: str) -> list[np.ndarray]:
        """``blocks.{L}.{hook}``'s scores for every layer, in order."""
        names = [f"blocks.{L}.{hook}" for L in range(self.n_layers)]
        missing = [n for n in names if n not in self.scores]
        if missing:
            raise KeyError(f"{missing[0]} was not attributed; pass it (or None) in hooks")
        return [self.scores[n] for n in names]

    def layer_pos(self, hook: str = "hook_resid_pre") -> np.ndarray:
        """(n_layers, pos): ``blocks.{L}.{hook}`` per layer and position (heads summed)."""
        if hook.endswith(_PATTERN_HOOKS):
            raise ValueError(f"{hook} has (head, query, key) scores, not positions")
        return np.stack([s.sum(-1) if s.ndim == 2 else s for s in self._per_layer(hook)])

    def heads(self, hook: str = "attn.hook_z", per_position: bool = False) -> np.ndarray:
        """(n_layers, n_heads) for patching a head's ``hook`` at every position
        ((n_layers, pos, n_heads) with per_position)."""
        if hook.endswith(_PATTERN_HOOKS):
            per_head = (lambda s: s.sum(2).T) if per_position else (lambda s: s.sum((1, 2)))
        else:
            per_head = (lambda s: s) if per_position else (lambda s: s.sum(0))
        return np.stack([per_head(s) for s in self._per_layer(hook)])

    def top(self, k: int = 20) -> list[dict]:
        """The ``k`` components with the largest |score| of each kind, largest first: rows
        {kind, component, layer, position, index, score}. Kinds: 'head' (hook_z, all
        positions), 'hook' (resid_pre, attn_out, mlp_out per position), 'neuron',
        'feature', 'sae_error'."""
        rows: list[dict] = []

        def add(kind, component, layer, pos, index, score):
            rows.append(dict(kind=kind, component=component, layer=layer, position=pos,
                             index=index, score=float(score)))  # fmt: skip

        def best(a: np.ndarray) -> list[tuple]:
            flat = np.abs(a).ravel()
            idx = np.argsort(-flat, kind="stable")[:k]
            return [np.unravel_index(i, a.shape) for i in idx if flat[i] > 0]

        layer_of = _layer
        z = [n for n in self.scores if n.endswith("attn.hook_z")]
        if z:
            per = np.stack([self.scores[n].sum(0) for n in z])  # (n hooks, n_heads)
            for i, h in best(per):
                add("head", f"L{layer_of(z[i])}H{h}", layer_of(z[i]), None, int(h), per[i, h])
        names = [n for n in self.scores if n.startswith("blocks.") and n.endswith(_TABLE_HOOKS)]
        if names:
            a = np.stack([self.scores[n] for n in names])  # (n hooks, pos)
            for i, p in best(a):
                add("hook", names[i], layer_of(names[i]), int(p), None, a[i, p])
        for kind, table in (("neuron", self.neurons), ("feature", self.features)):
            cand = []
            for name, a in table.items():
                cand += [(abs(a[p, j]), name, int(p), int(j), a[p, j]) for p, j in best(a)]
            for _, name, p, j, s in sorted(cand, key=lambda c: -c[0])[:k]:
                add(kind, name, layer_of(name), p, j, s)
        cand = [(abs(a[p]), name, int(p), a[p]) for name, a in self.sae_error.items() for (p,) in best(a)]  # fmt: skip
        for _, name, p, s in sorted(cand, key=lambda c: -c[0])[:k]:
            add("sae_error", name, layer_of(name), p, None, s)
        rank = {"head": 0, "hook": 1, "neuron": 2, "feature": 3, "sae_error": 4}
        rows.sort(key=lambda r: (rank[r["kind"]], -abs(r["score"])))
        return rows


def _label(tokenizer, token) -> str | None:
    """The answer as a string (a token id decoded; several joined by '/'), None without one."""
    if token is None or isinstance(token, str):
        return token
    if not isinstance(token, (int, np.integer)):
        return "/".join(_label(tokenizer, t) for t in token)
    return tokenizer.decode([int(token)]) if tokenizer is not None else str(token)


def _layer(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


def logit_diff_metric(answer_id, wrong_id) -> Callable:
    """logits (batch, pos, d_vocab) -> logit[answer] - logit[wrong] at the last position,
    mean over the batch (a scalar, float32). Each id is an int or one per batch row."""

    import mlx.core as mx

    def metric(logits):
        last = logits[:, -1].astype(mx.float32)
        rows = mx.arange(last.shape[0])
        a, w = (mx.broadcast_to(mx.array(i), rows.shape) for i in (answer_id, wrong_id))
        return (last[rows, a] - last[rows, w]).mean()

    return metric


def resolve_answers(model, answer, wrong, n_rows: int = 1) -> tuple[list[int], list[int]]:
    """Token ids of the answer and wrong tokens, one per row: each a string that is one
    token (' Mary'), an id, or a list of those with one per prompt pair."""
    from ..activations import resolve_token

    if answer is None or wrong is None:
        raise ValueError(
            "give both answer and wrong tokens for the logit-difference metric, or a metric"
        )
    out = []
    for what, x in (("answer", answer), ("wrong", wrong)):
        xs = [x] * n_rows if isinstance(x, (str, int, np.integer)) else list(x)
        if len(xs) != n_rows:
            raise ValueError(
                f"{len(xs)} {what} tokens for {n_rows} prompt pairs; give one per pair"
            )
        out.append([resolve_token(model.tokenizer, t) for t in xs])
    return out[0], out[1]


def _sae_input(x, d_in: int, hook: str):
    """(batch, pos, ...) -> (batch, pos, d_in): a per-head hook (batch, pos, heads, d_head)
    flattened as SAELens flattens hook_z."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    if flat.shape[-1] != d_in:
        raise ValueError(
            f"the SAE at {hook} expects d_in={d_in}, but the hook gives {tuple(x.shape[2:])} per position"
        )
    return flat


def check_saes(model, saes) -> dict[str, object]:
    """{hook: SAE} from MLX SAE objects (``mlx_interp.sae.SAE.load(folder)``), each at the
    hook its cfg names, or from {hook: SAE}."""
    from pathlib import Path

    out: dict[str, object] = {}
    items = saes.items() if isinstance(saes, Mapping) else [(None, s) for s in saes]
    for hook, sae in items:
        if isinstance(sae, (str, Path)):  # analysis sits above sae/ and does not load files
            raise ValueError(f"{sae}: pass an SAE object, mlx_interp.sae.SAE.load({str(sae)!r})")
        if not all(hasattr(sae, a) for a in ("encode", "decode", "cfg")):
            raise ValueError(f"{sae!r} is not an SAE (it needs encode, decode and cfg)")
        hook = hook or sae.cfg.hook_name
        if not hook:
            raise ValueError("an SAE without a hook_name in its cfg.json; pass saes={hook: sae}")
        model.check_hook_name(hook)
        if hook in out:
            raise ValueError(f"two SAEs at {hook}; give one SAE per hook point")
        out[hook] = sae
    return out


def prompt_pair(model: HookedModel, clean, corrupted):
    """(clean, corrupted) as (batch, pos) token arrays, from a text (or token ids) each or
    lists of them; one-line errors unless every prompt has the same number of tokens."""
    clean_tok, cmask = model._prepare(clean, None, None)
    corr_tok, xmask = model._prepare(corrupted, None, None)
    if cmask is not None or xmask is not None:
        raise ValueError(
            "every clean and corrupted prompt must have the same number of tokens (no padding)"
        )
    if clean_tok.shape[0] != corr_tok.shape[0]:
        raise ValueError(
            f"{clean_tok.shape[0]} clean and {corr_tok.shape[0]} corrupted prompts; give pairs"
        )
    if clean_tok.shape != corr_tok.shape:
        c, x = (model.to_str_tokens(t) if isinstance(t, str) else None for t in (clean, corrupted))
        shown = f": {c} vs {x}" if c and x else ""
        raise ValueError(
            f"clean and corrupted prompts must have the same number of tokens "
            f"({clean_tok.shape[1]} vs {corr_tok.shape[1]}{shown})"
        )
    return clean_tok, corr_tok


def check_atp(model: HookedModel, atp, direction: str, saes, top: int) -> dict[str, object]:
    """Check an ``analyze`` AtP request up front (one-line errors); returns {hook: SAE}."""
    from .. import checks

    atp = list(atp)
    if len(atp) != 4 or not all(isinstance(a, str) for a in atp):
        raise ValueError("--atp takes four texts: CLEAN CORRUPTED ANSWER WRONG")
    if direction not in DIRECTIONS:
        raise ValueError(f"AtP direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    checks.integer("atp_top", top)
    prompt_pair(model, atp[0], atp[1])
    resolve_answers(model, atp[2], atp[3])
    return check_saes(model, saes)


def attribution_patching(
    model: HookedModel,
    clean,
    corrupted,
    answer: str | int | None = None,
    wrong: str | int | None = None,
    *,
    metric: Callable | None = None,
    hooks=None,
    saes: Sequence | Mapping = (),
    direction: str = "noising",
) -> AttributionResult:
    """AtP scores of every hook point, attention head, MLP neuron and SAE latent.

    clean, corrupted: texts (or token ids) of the same number of tokens, or lists of them
    (prompt pairs, all of one length; scores are summed over the pairs). answer, wrong: one
    token each (' Mary'), or one per pair, for the default metric logit(answer) -
    logit(wrong) at the last position, averaged over pairs; or ``metric``: logits (batch, pos, d_vocab) mx.array
    -> scalar mx.array. hooks: a names_filter (None: every hook point). saes: MLX SAE
    objects (or {hook: SAE}), spliced in at their hooks with the error term kept.
    direction: 'noising' (gradient at the clean run, patching corrupted in) or 'denoising'
    (gradient at the corrupted run, patching clean in); see the module docstring.
    """
    import mlx.core as mx

    from ..hooks import HookState, hook_state, select_names

    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    clean_tok, corr_tok = prompt_pair(model, clean, corrupted)
    if metric is None:
        metric = logit_diff_metric(*resolve_answers(model, answer, wrong, clean_tok.shape[0]))
    sae_at = check_saes(model, saes)
    names = select_names(hooks, model.hook_names)
    names = [n for n in model.hook_names if n in set(names) | set(sae_at)]
    base_tok, src_tok = (clean_tok, corr_tok) if direction == "noising" else (corr_tok, clean_tok)

    # The source run: its activations (and SAE latents) only.
    src_logits, src = model.run_with_cache(src_tok, names_filter=names)
    src_feats = {h: sae.encode(_sae_input(src[h], sae.cfg.d_in, h)) for h, sae in sae_at.items()}

    probes = {
        "hooks": {n: mx.zeros(src[n].shape, src[n].dtype) for n in names},
        "saes": {h: mx.zeros((*src[h].shape[:2], sae.cfg.d_sae)) for h, sae in sae_at.items()},
    }

    def forward(probes):
        feats: dict[str, mx.array] = {}

        def add(p):
            return lambda x, hook: x + p

        def splice(h, sae, p):
            def fn(x, hook):
                f = mx.stop_gradient(sae.encode(_sae_input(x, sae.cfg.d_in, h)))
                feats[h] = f
                delta = sae.decode(f + p) - mx.stop_gradient(sae.decode(f))
                return x + delta.reshape(x.shape).astype(x.dtype)

            return fn

        table = {n: [add(probes["hooks"][n])] for n in names}
        for h, sae in sae_at.items():
            table[h].append(splice(h, sae, probes["saes"][h]))
        state = HookState(names, table)
        with hook_state(state):
            logits = model.model(base_tok)
        return metric(logits), dict(state.cache), feats

    (value, base, base_feats), grads = mx.value_and_grad(forward)(probes)

    scores, neurons, features, sae_error = {}, {}, {}, {}
    for n in names:
        delta = src[n].astype(mx.float32) - base[n].astype(mx.float32)
        prod = delta * grads["hooks"][n].astype(mx.float32)
        prod = mx.where(mx.isnan(prod), 0.0, prod).sum(0)  # -inf - -inf at masked scores
        if n.endswith(_PATTERN_HOOKS):
            scores[n] = prod
        else:
            scores[n] = prod.sum(-1)
            if n.endswith("mlp.hook_post"):
                neurons[n] = prod
    for h, sae in sae_at.items():
        features[h] = ((src_feats[h] - base_feats[h]) * grads["saes"][h]).sum(0)
        err = [_sae_input(a[h], sae.cfg.d_in, h).astype(mx.float32) for a in (src, base)]
        err = [e - sae.decode(f) for e, f in zip(err, (src_feats[h], base_feats[h]), strict=True)]
        g = _sae_input(grads["hooks"][h], sae.cfg.d_in, h).astype(mx.float32)
        sae_error[h] = ((err[0] - err[1]) * g).sum(-1).sum(0)
    src_value = metric(src_logits)
    mx.eval(value, src_value, scores, neurons, features, sae_error)
    base_v, src_v = float(value.item()), float(src_value.item())
    clean_v, corr_v = (base_v, src_v) if direction == "noising" else (src_v, base_v)
    tok = model.tokenizer
    ids = np.asarray(clean_tok)[0].tolist()
    return AttributionResult(
        str_tokens=[tok.decode([i]) for i in ids] if tok is not None else [str(i) for i in ids],
        answer=_label(tok, answer),
        wrong=_label(tok, wrong),
        direction=direction,
        clean_metric=clean_v,
        corrupted_metric=corr_v,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
        scores={n: np.array(v) for n, v in scores.items()},
        neurons={n: np.array(v) for n, v in neurons.items()},
        features={n: np.array(v) for n, v in features.items()},
        sae_error={n: np.array(v) for n, v in sae_error.items()},
    )
