"""Attribution patching (AtP) with torch autograd: the reference for
``mlx_interp.analysis.attribution``, written separately.

score = (a_source - a_base) . d metric / d a at the base run, elementwise, then summed
over the feature dimension. "noising": base = clean, source = corrupted; "denoising":
base = corrupted, source = clean. The gradients come from one backward pass
(torch.autograd.grad) with every hook's tensor kept in the graph; the embeddings are made
leaves that require a gradient, so nothing is computed for the weights. SAE latents are
not spliced into the forward here: for a linear decoder the gradient on the latents is
W_dec @ (the gradient at the hook), which is used directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from torch_ref.hooks import attached, select_names

PATTERN_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern")


@dataclass
class Attribution:
    """Scores as in mlx_interp's AttributionResult (numpy, summed over the prompt pairs)."""

    direction: str
    clean_metric: float
    corrupted_metric: float
    scores: dict[str, np.ndarray]
    neurons: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    sae_error: dict[str, np.ndarray] = field(default_factory=dict)


def _one_token(tokenizer, s) -> int:
    if isinstance(s, (int, np.integer)):
        return int(s)
    ids = tokenizer.encode(s, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{s!r} is {len(ids)} tokens, not one")
    return ids[0]


def _tokens(model, x) -> torch.Tensor:
    if isinstance(x, str) or (isinstance(x, (list, tuple)) and isinstance(x[0], str)):
        tokens, mask = model.tokenize(x)
        if not bool(mask.all()):
            raise ValueError("every prompt must have the same number of tokens")
        return tokens
    t = torch.as_tensor(np.asarray(x), dtype=torch.long, device=model.device)
    return t[None] if t.ndim == 1 else t


def attribution_patching(
    model,
    clean,
    corrupted,
    answer=None,
    wrong=None,
    *,
    metric: Callable | None = None,
    hooks=None,
    saes=(),
    direction: str = "noising",
) -> Attribution:
    """AtP scores of every hook in ``hooks`` (None: all), with ``saes`` (torch_ref SAE objects
    with cfg.hook_name). metric: logits (batch, pos, d_vocab) tensor -> scalar tensor;
    default logit[answer] - logit[wrong] at the last position."""
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction {direction!r} is not 'noising' or 'denoising'")
    clean_tok, corr_tok = _tokens(model, clean), _tokens(model, corrupted)
    if clean_tok.shape != corr_tok.shape:
        raise ValueError("clean and corrupted prompts must have the same number of tokens")
    if metric is None:
        b = clean_tok.shape[0]

        def ids(x):  # one token for every pair, or one per pair
            xs = [x] * b if isinstance(x, (str, int, np.integer)) else list(x)
            return torch.tensor([_one_token(model.tokenizer, t) for t in xs])

        a, w = ids(answer), ids(wrong)

        def metric(logits):
            last = logits[:, -1].float()
            rows = torch.arange(last.shape[0])
            return (last[rows, a] - last[rows, w]).mean()

    sae_at = {s.cfg.hook_name: s for s in saes}
    wanted = set(select_names(hooks, model.hook_names)) | set(sae_at)
    names = [n for n in model.hook_names if n in wanted]
    base_tok, src_tok = (clean_tok, corr_tok) if direction == "noising" else (corr_tok, clean_tok)

    with torch.no_grad():
        src_logits, src = model.run_with_cache(src_tok, names_filter=names)
        src_value = float(metric(src_logits))

    kept: dict[str, torch.Tensor] = {}

    def leaf(x, hook):  # the graph starts here, not at the weights
        return x.detach().requires_grad_(True)

    def keep(x, hook):
        kept[hook.name] = x
        return None

    first = [n for n in model.hook_names if n in ("hook_embed", "hook_pos_embed")]
    fwd = [(n, leaf) for n in first] + [(n, keep) for n in names]
    with torch.enable_grad(), attached(model.hook_dict, fwd_hooks=fwd):
        logits = model.model(base_tok)
        value = metric(logits)
        grads = torch.autograd.grad(value, [kept[n] for n in names], allow_unused=True)
    grad = {
        n: (torch.zeros_like(kept[n]) if g is None else g)
        for n, g in zip(names, grads, strict=True)
    }

    scores, neurons, features, sae_error = {}, {}, {}, {}
    for n in names:
        delta = src[n].double() - kept[n].detach().double()
        prod = torch.nan_to_num(delta * grad[n].double(), nan=0.0).sum(0)
        if n.endswith(PATTERN_HOOKS):
            scores[n] = prod.numpy()
        else:
            scores[n] = prod.sum(-1).numpy()
            if n.endswith("mlp.hook_post"):
                neurons[n] = prod.numpy()
    for h, sae in sae_at.items():
        b, p = base_tok.shape
        xs = src[h].reshape(b, p, -1).float()
        xb = kept[h].detach().reshape(b, p, -1).float()
        g = grad[h].reshape(b, p, -1).double()
        fs, fb = sae.encode(xs), sae.encode(xb)
        g_f = g @ sae.params["W_dec"].double().T  # d metric / d latent
        features[h] = ((fs - fb).double() * g_f).sum(0).numpy()
        es, eb = xs - sae.decode(fs), xb - sae.decode(fb)
        sae_error[h] = ((es - eb).double() * g).sum(-1).sum(0).numpy()
    base_value = float(value.detach())
    clean_v, corr_v = (base_value, src_value) if direction == "noising" else (src_value, base_value)
    return Attribution(direction, clean_v, corr_v, scores, neurons, features, sae_error)
