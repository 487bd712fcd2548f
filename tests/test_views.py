"""Interactive views: their data is the model's own numbers, and the pages stand alone."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.analysis import logit_lens
from mlx_interp.analysis.views import (
    attention_view,
    logit_lens_view,
    neuron_view,
    token_values_view,
)
from mlx_interp.backends import to_numpy

TEXT = "the quick brown fox </script><b>jumps</b> over"


@pytest.fixture(scope="module")
def peaked(checkpoint_dir):
    return load_model(checkpoint_dir("llama-gqa-untied"))  # GQA, rotary, peaked attention


def page_data(view) -> dict:
    m = re.search(r"<script type='application/json' id='data'>(.*?)</script>", view.html(), re.S)
    return json.loads(m.group(1))


def test_attention_view_is_the_cached_pattern(peaked):
    v = attention_view(peaked, TEXT)
    data = page_data(v)  # what the page's script reads
    assert data == json.loads(json.dumps(v.data))
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(peaked.cfg.n_layers)]
    _, cache = peaked.run_with_cache(peaked.to_tokens(TEXT), names_filter=names)
    assert data["layers"] == list(range(peaked.cfg.n_layers))
    assert data["tokens"] == peaked.to_str_tokens(TEXT)
    for li, name in enumerate(names):
        p = to_numpy(cache[name][0], np.float32)  # (heads, q, k)
        assert data["n_heads"] == p.shape[0] == peaked.cfg.n_heads
        for h in range(p.shape[0]):
            rows = data["patterns"][li][h]
            assert [len(r) for r in rows] == list(range(1, p.shape[1] + 1))  # causal lower triangle
            full = np.zeros_like(p[h])
            for q, r in enumerate(rows):
                full[q, : q + 1] = r
            np.testing.assert_allclose(full, p[h], atol=6e-6)  # rounded to 5 decimals
            np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-4)  # post-softmax
    assert max(max(r) for r in data["patterns"][0][0][1:]) > 0.5  # peaked: not uniform
    sub = attention_view(peaked, TEXT, layers=[-1])
    assert sub.data["layers"] == [peaked.cfg.n_layers - 1]
    # (the other layers ran without their pattern hooks: on the CPU the fused path, within 1e-6)
    np.testing.assert_allclose(np.concatenate([np.concatenate(r) for r in sub.data["patterns"][0]]),
                               np.concatenate([np.concatenate(r) for r in data["patterns"][-1]]),
                               atol=2e-5)  # fmt: skip


def test_pages_stand_alone_and_escape_text(peaked, tmp_path):
    views = [attention_view(peaked, TEXT), neuron_view(peaked, [TEXT, "a lazy dog"], "blocks.1.mlp.hook_post", 5),
             logit_lens_view(peaked, TEXT)]  # fmt: skip
    for v in views:
        page = v.html()
        assert (
            "<b>jumps" not in page and page.count("</script>") == 2
        )  # data cannot close the script
        assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)  # no network, no CDN
        assert "<script src" not in page
        frame = v._repr_html_()  # inline in Jupyter: the page in an iframe's srcdoc
        assert frame.startswith("<iframe srcdoc=") and html.unescape(frame.split('"')[1]) == page
        path = v.save(tmp_path / f"{v.kind}.html")
        assert path.read_text() == page


def test_neuron_view_values(peaked):
    hook, j = "blocks.1.mlp.hook_post", 7
    v = neuron_view(peaked, [TEXT, "a lazy dog"], hook, j)
    for text, t in zip([TEXT, "a lazy dog"], v.data["texts"], strict=True):
        _, cache = peaked.run_with_cache(peaked.to_tokens(text), names_filter=[hook])
        np.testing.assert_allclose(
            t["values"], to_numpy(cache[hook][0], np.float32)[:, j], rtol=1e-6
        )
        assert t["left_out"][0] and not any(t["left_out"][1:])
    counted = [abs(x) for t in v.data["texts"] for x, o in zip(t["values"], t["left_out"], strict=True) if not o]  # fmt: skip
    assert v.data["max_abs"] == pytest.approx(max(counted))
    with pytest.raises(ValueError, match="out of range"):
        neuron_view(peaked, TEXT, hook, 10**6)
    with pytest.raises(ValueError, match="hook"):
        neuron_view(peaked, TEXT, "blocks.1.mlp.hook_postt", 0)
    with pytest.raises(ValueError, match="tokens but"):
        token_values_view([["a", "b"]], [[1.0]], "x")


def test_logit_lens_view_matches_logit_lens(peaked):
    ll = logit_lens(peaked, TEXT)
    d = logit_lens_view(ll).data
    assert d["labels"] == ll.labels and d["top_strs"] == ll.top_strs
    np.testing.assert_allclose(d["top_probs"], ll.top_probs, atol=1e-4)
    np.testing.assert_allclose(d["final_probs"], ll.final_probs, atol=1e-4)
    assert d["final_strs"] == [ll.top_strs[-1][p][0] for p in range(len(ll.str_tokens))]


def test_feature_view(peaked, tmp_path):
    from mlx_interp.features import features_for_text
    from mlx_interp.features.views import feature_view
    from mlx_interp.sae import SAE, SAEConfig
    from mlx_interp.sae.sae import init_params

    cfg = SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post",
                    model_name=str(peaked.source))  # fmt: skip
    SAE(cfg, init_params(cfg, seed=0)).save(tmp_path / "sae")
    per_token = features_for_text(peaked, tmp_path / "sae", TEXT, top=32)
    j = next(d["feature"] for row in per_token[1:] for d in row["features"])
    v = feature_view(peaked, tmp_path / "sae", TEXT, j)
    want = [
        next((d["act"] for d in row["features"] if d["feature"] == j), 0.0) for row in per_token
    ]
    np.testing.assert_allclose(v.data["texts"][0]["values"], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        feature_view(peaked, tmp_path / "sae", TEXT, 32)
