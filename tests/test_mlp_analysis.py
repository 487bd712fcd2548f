"""Multi-layer MLP analysis (mlx_interp.features.mlp, ``mlx-interp mlp-analysis``) on tiny
random checkpoints: its numbers against a direct computation (MLX and torch_ref), the
memory budget, the outputs, the report section and bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.activations import boundary_token, iter_windows
from mlx_interp.cli import main
from mlx_interp.features.mlp import (  # fmt: skip
    MLPConfig,
    layer_stores,
    neurons_for_token,
    parse_layers,
    run_mlp_analysis,
)

C = 32


def _docs(n=40, seed=0):
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]


@pytest.fixture(scope="module")
def run(checkpoint_dir, tmp_path_factory):
    folder = checkpoint_dir("llama-gqa-untied")
    model = load_model(folder)
    out = tmp_path_factory.mktemp("mlp")
    cfg = MLPConfig(tokens=8 * C, context_length=C, pages_per_layer=2, top_k=8)
    s = run_mlp_analysis(model, out, _docs(), cfg=cfg, tokens=[" fox"])
    return {"model": model, "folder": folder, "out": out, "summary": s}


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("2, 0,2", 4) == [0, 2]
    assert parse_layers("1-3", 4) == [1, 2, 3]
    assert parse_layers([3, 1], 4) == [1, 3]
    for bad, msg in [("4", "layer 4 does not exist"), ("a", "give 'all'"), ("-1", "does not exist"), ("", "give 'all'")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_layers(bad, 4)


def _direct(model, hooks, docs):
    """Every window of the pass through run_with_cache; the rows the pass counts."""
    tok = model.tokenizer
    acts = {h: [] for h in hooks}
    counted, ids = [], []
    special = set(tok.all_special_ids) | {boundary_token(tok)}
    for w in iter_windows(tok, docs, C, 8):
        _, cache = model.run_with_cache(w.tokens, names_filter=hooks)
        real = w.kinds.reshape(-1) != 3
        keep = real & (np.arange(w.tokens.size) % C != 0) & ~np.isin(w.tokens.reshape(-1), list(special))  # fmt: skip
        for h in hooks:
            acts[h].append(np.asarray(cache[h]).reshape(w.tokens.size, -1))
        counted.append(keep)
        ids.append(w.tokens.reshape(-1))
        if sum(len(k) for k in counted) >= 8 * C:
            break
    keep = np.concatenate(counted)
    return {h: np.concatenate(v)[keep] for h, v in acts.items()} | {
        "tokens": np.concatenate(ids)[keep]
    }


def test_numbers_match_a_direct_computation(run):
    model, s = run["model"], run["summary"]
    assert s["left_out"]["norm_outlier"] == 0  # random weights: only position 0 and specials
    L = model.cfg.n_layers
    hooks = [f"blocks.{i}.{h}" for i in range(L) for h in ("mlp.hook_post", "hook_mlp_out", "hook_resid_mid")]  # fmt: skip
    d = _direct(model, hooks, _docs())
    stores = layer_stores(run["out"])
    assert list(stores) == list(range(L))
    for i, st in stores.items():
        a = np.maximum(d[f"blocks.{i}.mlp.hook_post"], 0)
        assert st.meta["n_tokens"] == len(a) == s["tokens_counted"]
        np.testing.assert_allclose(st.arrays["density"], (a > 0).mean(0), atol=1e-9)
        np.testing.assert_allclose(st.arrays["max_act"], a.max(0), rtol=1e-5, atol=1e-7)
        fires = (a > 0).sum(0)
        mean_act = np.where(fires > 0, a.sum(0) / np.maximum(fires, 1), 0)
        np.testing.assert_allclose(st.arrays["mean_act"], mean_act, rtol=1e-4, atol=1e-7)
        row = s["by_layer"][i]
        n_out = np.linalg.norm(d[f"blocks.{i}.hook_mlp_out"], axis=-1)
        n_res = np.linalg.norm(d[f"blocks.{i}.hook_resid_mid"], axis=-1)
        assert row["mlp_out_norm"] == pytest.approx(n_out.mean(), rel=1e-5)
        assert row["mlp_out_relative"] == pytest.approx((n_out / n_res).mean(), rel=1e-5)
        assert row["dead_fraction"] == pytest.approx(((a > 0).sum(0) == 0).mean())


def test_max_activation_matches_torch_ref(run):
    torch_ref = pytest.importorskip("torch_ref")
    ref = torch_ref.load_model(run["folder"], dtype="float32")
    tok = run["model"].tokenizer
    w = next(iter_windows(tok, _docs(), C, 8))
    _, cache = ref.run_with_cache(
        w.tokens.astype(np.int64), names_filter=["blocks.1.mlp.hook_post"]
    )
    a = np.maximum(cache["blocks.1.mlp.hook_post"].numpy().reshape(w.tokens.size, -1), 0)
    keep = (np.arange(w.tokens.size) % C != 0) & (w.tokens.reshape(-1) != boundary_token(tok))
    st = layer_stores(run["out"])[1]
    np.testing.assert_allclose(st.arrays["max_act"], a[keep].max(0), rtol=1e-4, atol=1e-6)


def test_outputs_and_queries(run):
    out, s = run["out"], run["summary"]
    for f in ("summary.json", "layers.csv", "mlp_by_layer.png", "mlp_by_layer.csv", "neuron_rank_heatmap.png",
              "top_neurons_per_token.json", "top_neurons_per_token.md", "index.html"):  # fmt: skip
        assert (out / f).stat().st_size > 0, f
    layer = out / "layers" / "blocks.1.mlp.hook_post"
    assert (layer / "index.html").exists() and (layer / "features.csv").exists()
    assert len(s["rendered"]["1"]) == 2
    assert (
        len(list((layer / "pages").glob("*.html"))) == 2
        and len(list((layer / "cards").glob("*.png"))) == 2
    )
    page = (layer / "pages" / f"feature_{s['rendered']['1'][0]:05d}.html").read_text()
    assert "neuron " in page and "blocks.1.mlp.hook_post" in page
    assert "Neurons:" in (layer / "index.html").read_text()
    assert f"layers/{layer.name}/index.html" in (out / "index.html").read_text()
    per_token = json.loads((out / "top_neurons_per_token.json").read_text())
    assert per_token[0]["token"] == " fox" and per_token[0]["neurons"]
    # the z-score from the store is the one computed from the activations
    top = neurons_for_token(out, " fox", top=3)
    assert top == per_token[0]["neurons"][:3]
    assert all(t["z"] >= top[-1]["z"] for t in top)
    assert s["stats_mb_per_layer"] > 0 and s["peak_rss_mb"] > 0 and s["tokens_per_s"] > 0


def test_neurons_for_token_z_matches_activations(run):
    model = run["model"]
    d = _direct(model, ["blocks.2.mlp.hook_post"], _docs())
    a = np.maximum(d["blocks.2.mlp.hook_post"], 0)
    fox = model.tokenizer.encode(" fox", add_special_tokens=False)[0]
    on = d["tokens"] == fox
    std = a.std(0)
    z = np.where(std > 0, (a[on].mean(0) - a.mean(0)) / np.maximum(std, 1e-30), -np.inf)
    best = neurons_for_token({2: layer_stores(run["out"])[2]}, " fox", top=1)[0]
    assert best["neuron"] == int(np.argmax(z))
    assert best["z"] == pytest.approx(z.max(), rel=1e-3)


def test_token_tables_stay_in_the_pair_budget(run, tmp_path):
    cfg = MLPConfig(
        tokens=8 * C, context_length=C, pages_per_layer=0, pair_budget=60_000, layers="0,2"
    )
    from mlx_interp.features.mlp import compute_mlp_stats

    r = compute_mlp_stats(run["model"], _docs(), cfg)
    assert r["info"]["pairs_per_table"] == 15_000
    for st in r["stats"].values():
        for t in st.tables:
            t.compact()
            assert len(t.keys) <= 15_000


def test_cli_on_gpt2_and_the_report(checkpoint_dir, tmp_path, capsys):
    folder = checkpoint_dir("gpt2")
    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(_docs(20)))
    run_dir = tmp_path / "run"
    rc = main(["mlp-analysis", "--model", str(folder), "--layers", "0,2", "--tokens", "128", "--context-length", "32",
               "--pages-per-layer", "1", "--data", str(data), "--out", str(run_dir / "mlp")])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 layers x 256 neurons" in printed
    s = json.loads((run_dir / "mlp" / "summary.json").read_text())
    assert s["layers"] == [0, 2] and s["data"] == str(data)
    from mlx_interp.report import build_report

    text = build_report(run_dir, pdf=False).read_text()
    assert "## MLP neurons across layers" in text and "mlp/mlp_by_layer.png" in text


def test_bad_input_is_one_line_errors(checkpoint_dir, tmp_path, capsys):
    folder = str(checkpoint_dir("llama-gqa-untied"))
    cases = [
        (["--layers", "7"], "layer 7 does not exist: the model has layers 0..2"),
        (["--layers", "0;1"], "give 'all' or layer numbers"),
        (["--tokens", "0"], "--tokens must be positive"),
        (["--token", "quick brown"], "not one"),
    ]
    for extra, msg in cases:
        rc = main(["mlp-analysis", "--model", folder, "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_without_token_table(run):
    from mlx_interp.features.mlp import compute_mlp_stats

    cfg = MLPConfig(tokens=8 * C, context_length=C, layers="1", token_table=False)
    r = compute_mlp_stats(run["model"], _docs(), cfg)
    st = r["stats"][1]
    assert all(len(t.keys) == 0 and not t._pending for t in st.tables)
    np.testing.assert_array_equal(
        st.fires / st.n_tokens, layer_stores(run["out"])[1].arrays["density"]
    )
