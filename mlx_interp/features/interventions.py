"""Interventions on one SAE feature: steering (add or clamp) and ablation, in both backends.

With d_j the feature's decoder row (its direction in the hook's activation space) and
f_j(x) its activation at a position:

- add:    x -> x + value * d_j                      (a steering vector, at every position)
- clamp:  x -> x + (value - f_j(x)) * d_j           (the feature set to ``value``; the rest of
                                                     x, the SAE's error included, untouched)
- ablate: clamp to 0, i.e. x -> x - f_j(x) d_j

For a transcoder, f_j is read at its input hook and x is its output hook (d_j lives there):
the clamp and the ablation replace the feature's share of the transcoder's prediction.

Position 0 is left untouched (its activations are massive in SmolLM2 and the SAE was not
trained on them). The model may be ``mlx_interp`` or ``torch_ref``; the SAE runs in the
model's backend (a folder is loaded in it), with only arithmetic both share, so results
agree number for number (``parity_tests/test_feature_parity.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..analysis.interventions import _check_hook, _loss_and_logprobs
from ..backends import HookedModelLike, backend_of, from_numpy, is_torch, to_numpy


def sae_for_model(model: HookedModelLike, sae, force: bool = False):
    """The SAE in the model's backend: a folder is loaded there; an object must match.
    An SAE trained on another model is refused unless ``force``."""
    from ..sae import load_sae
    from ..sae.config import check_sae_for_model

    backend = backend_of(model)
    sae = load_sae(sae, backend)
    if backend_of(sae) != backend:
        raise ValueError(
            f"the SAE is a {backend_of(sae)} object but the model runs in {backend}; "
            "pass the SAE folder and it is loaded in the model's backend"
        )
    if sae.cfg.hook_name is not None and hasattr(model, "check_hook_name"):
        check_sae_for_model(sae.cfg, model, force=force)
    return sae


def _check(model, sae, feature: int) -> str:
    """The hook the feature's direction is written at (a transcoder's output hook)."""
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)):
        raise ValueError(f"feature must be an integer index, not {feature!r}")
    if not 0 <= int(feature) < sae.cfg.d_sae:
        raise ValueError(f"feature {feature} is out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")  # fmt: skip
    if sae.cfg.hook_name is None:
        raise ValueError("the SAE's cfg.json names no hook point")
    if sae.cfg.is_transcoder:
        if sae.cfg.hook_name_out is None:
            raise ValueError("the transcoder's cfg.json names no output hook (hook_name_out)")
        _check_hook(model, sae.cfg.hook_name)
        return _check_hook(model, sae.cfg.hook_name_out)
    return _check_hook(model, sae.cfg.hook_name)


def feature_hooks(
    model: HookedModelLike, sae, feature: int, mode: str = "add", value: float = 1.0
) -> list[tuple[str, object]]:
    """Forward hooks, as (hook name, function) pairs, that add or clamp ``feature``: one at
    ``sae.cfg.hook_name``; for a transcoder one that reads f_j at its input hook and one
    that writes at its output hook (later in the same forward pass)."""
    if mode not in ("add", "clamp"):
        raise ValueError(f"mode must be 'add' or 'clamp', not {mode!r}")
    j = int(feature)
    d = from_numpy(np.asarray(sae.numpy_params()["W_dec"][j], np.float32), model)
    seen = {}

    def read(x, hook):  # a transcoder's input: f_j of this forward pass
        seen["f"] = sae.encode(x)[..., j : j + 1]
        return x

    def hook_fn(x, hook):
        n = x.shape[1]
        keep0 = np.ones((1, n, 1), np.float32)
        keep0[:, 0] = 0
        m = from_numpy(keep0, model)
        if mode == "add":
            return x + m * (value * d)
        f = seen.pop("f") if sae.cfg.is_transcoder else sae.encode(x)[..., j : j + 1]
        f = f.to(x.dtype) if is_torch(model) else f.astype(x.dtype)
        return x + m * ((value - f) * d)

    hook = _check(model, sae, feature)
    if sae.cfg.is_transcoder and mode == "clamp":
        return [(sae.cfg.hook_name, read), (hook, hook_fn)]
    return [(hook, hook_fn)]


def feature_hook(model: HookedModelLike, sae, feature: int, mode: str = "add", value: float = 1.0):
    """The forward hook for ``sae.cfg.hook_name`` that adds or clamps ``feature`` (an SAE's;
    a transcoder needs two: ``feature_hooks``)."""
    hooks = feature_hooks(model, sae, feature, mode, value)
    if len(hooks) != 1:
        raise ValueError("a transcoder's clamp needs two hooks: use feature_hooks")
    return hooks[0][1]


def steer_feature(
    model: HookedModelLike,
    sae,
    prompt: str,
    feature: int,
    mode: str = "add",
    value: float = 10.0,
    max_new_tokens: int = 20,
    force: bool = False,
) -> dict:
    """Greedy continuations of ``prompt`` without and with the feature added / clamped
    (an SAE of another model is refused unless ``force``)."""
    import math

    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"value must be a finite number, got {value!r}")
    sae = sae_for_model(model, sae, force)
    hooks = feature_hooks(model, sae, feature, mode, value)
    return {
        "prompt": prompt,
        "feature": int(feature),
        "mode": mode,
        "value": value,
        "normal": model.generate(prompt, max_new_tokens),
        "steered": model.generate(prompt, max_new_tokens, fwd_hooks=hooks),
    }


@dataclass
class FeatureAblationResult:
    """Next-token loss (mean cross entropy, nats) with and without each feature ablated."""

    hook: str
    clean_loss: float
    ablated_loss: dict[int, float]
    kl: dict[int, float]  # mean KL(clean || ablated) over positions, nats
    active: dict[int, int]  # positions (after the first) where the feature was active

    def effect(self, feature: int) -> float:
        return self.ablated_loss[feature] - self.clean_loss


def feature_ablation(
    model: HookedModelLike, sae, text: str, features: Sequence[int], force: bool = False
) -> FeatureAblationResult:
    """Ablate each feature in turn (clamp to 0) and measure the next-token loss on ``text``
    (an SAE of another model is refused unless ``force``)."""
    sae = sae_for_model(model, sae, force)
    if isinstance(features, (int, np.integer)):
        features = [features]
    hook = None
    for j in features:
        hook = _check(model, sae, j)
    if hook is None:
        raise ValueError("no features given")
    tokens = model.to_tokens(text)
    if int(tokens.shape[1]) < 2:
        raise ValueError("the text must have at least two tokens to measure a loss")
    tok_np = to_numpy(tokens).astype(np.int64)
    read = sae.cfg.hook_name  # where the features are read (a transcoder's input hook)
    logits, cache = model.run_with_cache(tokens, names_filter=[read])
    clean, clean_lp = _loss_and_logprobs(to_numpy(logits, np.float64), tok_np)
    f = to_numpy(sae.encode(cache[read]), np.float64)[0, 1:]
    losses, kls, active = {}, {}, {}
    for j in features:
        fns = feature_hooks(model, sae, j, "clamp", 0.0)
        loss, lp = _loss_and_logprobs(to_numpy(model.run_with_hooks(tokens, fwd_hooks=fns), np.float64), tok_np)  # fmt: skip
        losses[int(j)] = loss
        kls[int(j)] = float((np.exp(clean_lp) * (clean_lp - lp)).sum(-1).mean())
        active[int(j)] = int((f[:, int(j)] > 0).sum())
    return FeatureAblationResult(hook, clean, losses, kls, active)
