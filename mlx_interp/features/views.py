"""An SAE feature's activation at every token of some texts, as an interactive view."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis.views import View, _special_mask, token_values_view
from ..backends import to_numpy
from ..sae import load_sae
from .collect import check_sae_for_model, encoder


def feature_view(model, sae, texts: Sequence[str] | str, feature: int) -> View:
    """Feature ``feature`` of ``sae`` (a folder or an SAE object) at every token of ``texts``:
    the model's activations at the SAE's hook, encoded by the SAE. Position 0 and special
    tokens (the massive activations) are greyed and kept out of the colour scale."""
    sae = load_sae(sae)
    hook = check_sae_for_model(sae.cfg, model, None, sae.cfg.model_name or str(model.source))
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"the SAE has {sae.cfg.d_sae} features; {feature} is out of range")
    texts = [texts] if isinstance(texts, str) else list(texts)
    encode = encoder(sae)
    toks, vals, outs = [], [], []
    for text in texts:
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        x = to_numpy(cache[hook][0], np.float32)
        vals.append(encode(x)[:, feature])
        toks.append(model.to_str_tokens(tokens[0]))
        outs.append(_special_mask(model, np.asarray(tokens[0]).tolist()))
    return token_values_view(toks, vals, f"feature {feature}", left_out=outs,
                             title=f"SAE feature {feature} ({hook})",
                             meta=f"{model.source} · {sae.cfg.architecture} SAE, d_sae {sae.cfg.d_sae} · "
                                  f"{len(texts)} texts")  # fmt: skip
