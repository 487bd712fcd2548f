"""Interventions with run_with_hooks: ablation, activation patching, steering.

Every function takes either backend's HookedModel (``mlx_interp.load_model`` or
``torch_ref.load_model``): the hook functions use only arithmetic that MLX arrays and torch
tensors share, and the hook names are the same, so the two can be compared number for
number (``parity_tests/test_interventions_parity.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends import HookedModelLike, from_numpy, is_torch, to_numpy


def _tokens(model, text: str):
    tokens = model.to_tokens(text)
    return tokens, int(tokens.shape[1])


def _single_token(model, s: str) -> int:
    from ..activations import resolve_token

    return resolve_token(model.tokenizer, s)


def _check_hook(model, name: str) -> str:
    if name not in model.hook_names:
        from ..hooks import unknown_name_error

        raise unknown_name_error(name, model.hook_names)
    return name


# ------------------------------------------------------------ ablation
def zero_ablation_hook(x, hook):
    """Replace the activation with zeros."""
    return x * 0


def mean_ablation_hook(mean):
    """A hook replacing the activation by ``mean`` (a backend array broadcastable to it)."""

    def hook_fn(x, hook):
        return x * 0 + mean

    return hook_fn


def mean_activations(
    model: HookedModelLike, hooks: Sequence[str], texts: Sequence[str]
) -> dict[str, np.ndarray]:
    """The mean activation of each hook over every token of ``texts`` but the first.

    Position 0 is left out: its activations are massive in many models and would set the mean.
    """
    sums: dict[str, np.ndarray] = {}
    count = 0
    for t in texts:
        tokens, n = _tokens(model, t)
        if n < 2:
            continue
        _, cache = model.run_with_cache(tokens, names_filter=[_check_hook(model, h) for h in hooks])
        for h in hooks:
            a = to_numpy(cache[h], np.float64)[0, 1:]
            sums[h] = sums.get(h, 0) + a.sum(0)
        count += n - 1
    if not count:
        raise ValueError("mean ablation needs texts of at least two tokens")
    return {h: s / count for h, s in sums.items()}


@dataclass
class AblationResult:
    """Loss (mean next-token cross entropy) with and without ablating each hook."""

    kind: str
    clean_loss: float
    ablated_loss: dict[str, float]
    kl: dict[str, float]  # mean KL(clean || ablated) of the next-token distributions

    def effect(self, hook: str) -> float:
        return self.ablated_loss[hook] - self.clean_loss


def _loss_and_logprobs(logits: np.ndarray, tokens: np.ndarray) -> tuple[float, np.ndarray]:
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)
    return float(nll.mean()), lp


def ablation_effects(
    model: HookedModelLike,
    text: str,
    hooks: Sequence[str],
    kind: str = "zero",
    means: dict[str, np.ndarray] | None = None,
) -> AblationResult:
    """Ablate each hook in turn (zero, or mean with ``means`` from ``mean_activations``)."""
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablation kind {kind!r} is not 'zero' or 'mean'")
    if kind == "mean" and not means:
        raise ValueError("mean ablation needs means=mean_activations(model, hooks, texts)")
    tokens, n = _tokens(model, text)
    if n < 2:
        raise ValueError("the text must have at least two tokens to measure a loss")
    tok_np = to_numpy(tokens).astype(np.int64)
    clean, clean_lp = _loss_and_logprobs(to_numpy(model.run_with_hooks(tokens), np.float64), tok_np)
    losses, kls = {}, {}
    for h in hooks:
        _check_hook(model, h)
        fn = (
            zero_ablation_hook
            if kind == "zero"
            else mean_ablation_hook(from_numpy(means[h], model))
        )
        loss, lp = _loss_and_logprobs(
            to_numpy(model.run_with_hooks(tokens, fwd_hooks=[(h, fn)]), np.float64), tok_np
        )
        losses[h] = loss
        kls[h] = float((np.exp(clean_lp) * (clean_lp - lp)).sum(-1).mean())
    return AblationResult(kind, clean, losses, kls)


# ------------------------------------------------------------ patching
@dataclass
class _LogitDiffPatching:
    """What every patching sweep measures: the logit difference answer - wrong at the last
    position, clean, corrupted and with each patch."""

    answer: str
    wrong: str
    clean_diff: float  # logit(answer) - logit(wrong) at the last position, clean run
    corrupted_diff: float
    patched_diff: np.ndarray  # one value per patch: (n_layers, pos) or (n_layers, n_heads)

    @property
    def recovered(self) -> np.ndarray:
        """(patched - corrupted) / (clean - corrupted): 1 = the clean behaviour restored."""
        return (self.patched_diff - self.corrupted_diff) / (self.clean_diff - self.corrupted_diff)


@dataclass
class PatchingResult(_LogitDiffPatching):
    """Activation patching from a clean into a corrupted prompt over (layer, position)."""

    str_tokens: list[str] = field(default_factory=list)  # the corrupted prompt's tokens
    labels: list[str] = field(default_factory=list)
    hook_template: str = ""


def activation_patching(
    model: HookedModelLike,
    clean: str,
    corrupted: str,
    answer: str,
    wrong: str,
    hook_template: str = "blocks.{L}.hook_resid_pre",
    layers: Sequence[int] | None = None,
) -> PatchingResult:
    """Patch the clean activation at ``hook_template`` into the corrupted run, one
    (layer, position) at a time, and measure the logit difference answer - wrong.

    The prompts must have the same number of tokens; answer and wrong must be one token
    each (with their leading space, e.g. ' Mary'). All positions of a layer run as one
    batch.
    """
    ans, wro = _single_token(model, answer), _single_token(model, wrong)
    clean_tok, n = _tokens(model, clean)
    corr_tok, m = _tokens(model, corrupted)
    if n != m:
        raise ValueError(
            f"clean and corrupted prompts must have the same number of tokens ({n} vs {m})"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [_check_hook(model, hook_template.format(L=L)) for L in layers]

    def diff(logits) -> np.ndarray:
        last = to_numpy(logits[:, -1], np.float64)
        return last[:, ans] - last[:, wro]

    clean_logits, cache = model.run_with_cache(clean_tok, names_filter=names)
    clean_diff = float(diff(clean_logits)[0])
    corrupted_diff = float(diff(model.run_with_hooks(corr_tok))[0])
    batch = _repeat(corr_tok, n)
    eye = from_numpy(np.eye(n), model)
    out = np.zeros((len(layers), n))
    for i, name in enumerate(names):
        src = cache[name]  # (1, pos, ...)

        def patch(x, hook, src=src):
            m = eye.reshape(tuple(eye.shape) + (1,) * (x.ndim - 2))
            return x * (1 - m) + src * m

        out[i] = diff(model.run_with_hooks(batch, fwd_hooks=[(name, patch)]))
    return PatchingResult(
        answer,
        wrong,
        clean_diff,
        corrupted_diff,
        out,
        str_tokens=[model.tokenizer.decode([int(t)]) for t in to_numpy(corr_tok)[0].astype(int)],
        labels=[hook_template.format(L=L).replace("blocks.", "L").split(".")[0] for L in layers],
        hook_template=hook_template,
    )


@dataclass
class HeadPatchingResult(_LogitDiffPatching):
    """Activation patching of each attention head's output (hook_z), at every position;
    ``patched_diff``: (len(layers), n_heads)."""

    layers: list[int] = field(default_factory=list)


def head_patching(
    model: HookedModelLike,
    clean: str,
    corrupted: str,
    answer: str,
    wrong: str,
    layers: Sequence[int] | None = None,
) -> HeadPatchingResult:
    """Patch one head's clean ``attn.hook_z`` (all positions) into the corrupted run at a
    time and measure the logit difference answer - wrong at the last position (as
    TransformerLens's ``get_act_patch_attn_head_out_all_pos``). The heads of a layer run
    as one batch. Swap clean and corrupted to patch the other way (noising)."""
    ans, wro = _single_token(model, answer), _single_token(model, wrong)
    clean_tok, n = _tokens(model, clean)
    corr_tok, m = _tokens(model, corrupted)
    if n != m:
        raise ValueError(
            f"clean and corrupted prompts must have the same number of tokens ({n} vs {m})"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [_check_hook(model, f"blocks.{L}.attn.hook_z") for L in layers]
    n_heads = model.cfg.n_heads

    def diff(logits) -> np.ndarray:
        last = to_numpy(logits[:, -1], np.float64)
        return last[:, ans] - last[:, wro]

    clean_logits, cache = model.run_with_cache(clean_tok, names_filter=names)
    clean_diff = float(diff(clean_logits)[0])
    corrupted_diff = float(diff(model.run_with_hooks(corr_tok))[0])
    batch = _repeat(corr_tok, n_heads)
    # Row h patches head h: (n_heads, 1, n_heads, 1) against z (batch, pos, n_heads, d_head).
    eye = from_numpy(np.eye(n_heads).reshape(n_heads, 1, n_heads, 1), model)
    out = np.zeros((len(layers), n_heads))
    for i, name in enumerate(names):
        src = cache[name]

        def patch(x, hook, src=src):
            return x * (1 - eye) + src * eye

        out[i] = diff(model.run_with_hooks(batch, fwd_hooks=[(name, patch)]))
    return HeadPatchingResult(answer, wrong, clean_diff, corrupted_diff, out, layers=layers)


def _repeat(tokens, n: int):
    if is_torch(tokens):
        return tokens.repeat(n, 1)
    import mlx.core as mx

    return mx.repeat(tokens, n, axis=0)


# ------------------------------------------------------------ steering
def steering_vector(
    model: HookedModelLike, hook: str, positive: Sequence[str], negative: Sequence[str]
) -> np.ndarray:
    """Mean activation at ``hook`` over the positive texts minus over the negative ones.

    Each text contributes the mean over its tokens but the first (position 0's massive
    activations would dominate).
    """
    pos = mean_activations(model, [hook], positive)[hook]
    neg = mean_activations(model, [hook], negative)[hook]
    return pos - neg


def steering_hook(model: HookedModelLike, vector: np.ndarray, coeff: float = 1.0):
    """A hook adding ``coeff * vector`` at every position."""
    v = from_numpy(coeff * np.asarray(vector), model)

    def hook_fn(x, hook):
        return x + v

    return hook_fn


def steer(
    model: HookedModelLike,
    prompt: str,
    hook: str,
    vector: np.ndarray,
    coeff: float = 1.0,
    max_new_tokens: int = 20,
) -> dict[str, str]:
    """Greedy continuations of ``prompt`` without and with the steering vector added."""
    _check_hook(model, hook)
    return {
        "prompt": prompt,
        "normal": model.generate(prompt, max_new_tokens),
        "steered": model.generate(
            prompt, max_new_tokens, fwd_hooks=[(hook, steering_hook(model, vector, coeff))]
        ),
    }
