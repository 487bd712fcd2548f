"""Feature statistics, metrics, store queries, dashboards, interventions and the features
command on a tiny random SAE over a random Llama checkpoint."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.cli import main
from mlx_interp.data import DataSource
from mlx_interp.features import load_feature_store
from mlx_interp.features.monosemanticity import explanation_scores, token_classes
from mlx_interp.features.stats import StatsConfig, UnitStats
from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(checkpoint_dir, tmp_path_factory):
    folder = checkpoint_dir("llama-gqa-untied")
    tmp = tmp_path_factory.mktemp("feat")
    cfg = SAEConfig(d_in=64, d_sae=96, architecture="topk", k=6, hook_name=HOOK, model_name=str(folder))  # fmt: skip
    p = init_params(cfg, seed=0)
    p["b_enc"] = np.random.default_rng(1).normal(0, 0.05, 96).astype(np.float32)
    SAE(cfg, p).save(tmp / "sae")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    docs = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(80)]
    (tmp / "text.txt").write_text("\n\n".join(docs))
    return {"model": load_model(folder), "folder": folder, "sae": tmp / "sae", "text": tmp / "text.txt", "tmp": tmp}  # fmt: skip


# ------------------------------------------------------------------ the accumulator
def _feed(acc, batches):
    for b, (acts, toks, keep, docs) in enumerate(batches):
        acc.update(acts, toks, keep, np.ones_like(keep), docs, b * acts.shape[0])


def _batches(n=6, n_win=3, C=10, U=7, V=20, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acts = rng.standard_normal((n_win, C, U)).astype(np.float32)
        toks = rng.integers(0, V, (n_win, C))
        keep = np.ones((n_win, C), bool)
        keep[:, 0] = False
        docs = rng.integers(0, 4, (n_win, C))
        out.append((acts, toks, keep, docs))
    return out


def test_unit_stats_match_brute_force():
    batches = _batches()
    cfg = StatsConfig(top_k=5, context_left=2, context_right=1)
    acc = UnitStats(7, 20, cfg)
    _feed(acc, batches)
    a = np.concatenate([np.maximum(b[0], 0).reshape(-1, 7) for b in batches])
    keep = np.concatenate([b[2].reshape(-1) for b in batches])
    ak = a[keep]
    assert acc.n_tokens == keep.sum()
    np.testing.assert_array_equal(acc.fires, (ak > 0).sum(0))
    np.testing.assert_allclose(acc.sum_act, ak.sum(0), rtol=1e-6)
    np.testing.assert_array_equal(acc.hist.sum(1), acc.fires)
    assert acc.fires_left_out.tolist() == (a[~keep] > 0).sum(0).tolist()
    top = -np.sort(-ak, axis=0)[:5].T
    np.testing.assert_allclose(acc.top_vals, top, rtol=1e-6)
    # each kept context has the maximum's token and activation at its centre
    for u in range(7):
        for s in range(5):
            assert acc.ctx_tokens[u, s, 2] == acc.top_token[u, s]
            assert acc.ctx_acts[u, s, 2] == pytest.approx(acc.top_vals[u, s])
            w, p = acc.top_window[u, s], acc.top_pos[u, s]
            b, wi = divmod(int(w), 3)
            assert batches[b][1][wi, p] == acc.top_token[u, s]
            if p == 1:  # position 0 is left out: shown as NaN
                assert np.isnan(acc.ctx_acts[u, s, 1])


def test_unit_stats_of_sparse_units_match_brute_force():
    """SAE features fire rarely: the sparse candidate path gives the same top-k and context
    as the dense one would (here 8 of 40 units fire on a row, many units on fewer than
    top_k tokens: the rest of their top-k stays empty, -inf)."""
    batches = _batches(U=40)
    rng = np.random.default_rng(1)
    for acts, *_ in batches:
        acts[rng.random(acts.shape) > 0.05] = 0.0
    cfg = StatsConfig(top_k=5, context_left=2, context_right=1)
    acc = UnitStats(40, 20, cfg)
    _feed(acc, batches)
    a = np.concatenate([np.maximum(b[0], 0).reshape(-1, 40) for b in batches])
    keep = np.concatenate([b[2].reshape(-1) for b in batches])
    top = -np.sort(-a[keep], axis=0)[:5].T
    np.testing.assert_allclose(acc.top_vals, np.where(top > 0, top, -np.inf), rtol=1e-6)
    assert (acc.fires < 5).any() and (acc.fires >= 5).any()
    filled = np.isfinite(acc.top_vals)
    np.testing.assert_allclose(acc.ctx_acts[:, :, 2][filled], acc.top_vals[filled], rtol=1e-6)
    for u, s in zip(*np.nonzero(filled), strict=True):
        b, wi = divmod(int(acc.top_window[u, s]), 3)
        assert batches[b][0][wi, acc.top_pos[u, s], u] == acc.top_vals[u, s]


def test_memory_is_bounded_by_units_not_tokens():
    cfg = StatsConfig(top_k=4, max_pairs=50)
    acc = UnitStats(7, 20, cfg)
    shapes = None
    for i in range(3):
        _feed(acc, _batches(n=5, seed=i))
        s = {k: v.shape for k, v in acc.arrays().items() if not k.startswith("pair_")}
        assert shapes is None or s == shapes
        shapes = s
        assert all(len(t.keys) <= 50 for t in acc.tables)
    assert sum(t.pruned for t in acc.tables) > 0


def test_explanation_score_is_one_for_a_token_function_and_low_for_noise():
    rng = np.random.default_rng(0)
    V, acc = 30, UnitStats(2, 30, StatsConfig(top_k=8))
    value = rng.uniform(0, 3, V) * (rng.random(V) < 0.3)
    for b in range(20):
        toks = rng.integers(0, V, (4, 16))
        acts = np.stack([value[toks], rng.exponential(1, toks.shape) * (rng.random(toks.shape) < 0.3)], -1)  # fmt: skip
        acc.update(acts.astype(np.float32), toks, np.ones(toks.shape, bool), np.ones(toks.shape, bool), rng.integers(0, 10, toks.shape), b * 4)  # fmt: skip
    r, _ = explanation_scores(acc)
    assert r[0] > 0.99 and abs(r[1]) < 0.2


def test_token_classes_merge_case_and_space():
    c = token_classes([" The", "the", "The", " cat", "cat "])
    assert c[0] == c[1] == c[2] and c[3] == c[4] and c[0] != c[3]


# ------------------------------------------------------------------ the command and store
@pytest.fixture(scope="module")
def run(setup):
    out = setup["tmp"] / "out"
    rc = main(["features", "--model", str(setup["folder"]), "--sae", str(setup["sae"]), "--data",
               str(setup["text"]), "--split", "all", "--out", str(out), "--tokens", "2000",
               "--max-features", "4", "--feature", "3", "--top-k", "8"])  # fmt: skip
    assert rc == 0
    return out


def test_features_command_writes_everything(run, setup):
    for name in ["summary.json", "features.csv", "comparison.json", "comparison.md", "comparison.png",
                 "index.html", "store/sae/stats.safetensors", "store/sae/store.json",
                 f"store/neurons__{HOOK}/store.json", "store/neurons__blocks.1.mlp.hook_post/store.json"]:  # fmt: skip
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["rendered_features"][0] == 3 and len(s["rendered_features"]) == 4
    assert (run / "pages" / "feature_00003.html").exists() and (run / "cards" / "feature_00003.png").stat().st_size > 5000  # fmt: skip
    assert s["left_out"]["position_0"] > 0 and s["tokens_counted"] > 1500
    src = s["data_source"]
    assert src["split"] == "all" and src["fingerprint"].startswith("sha256:")
    assert s["trained_on"] is None  # this SAE's cfg.json does not say what it was trained on
    store = load_feature_store(run)
    assert store.n_units == 96
    f = store.feature(3)
    assert f["density"] == pytest.approx(f["fires"] / f["n_tokens"])
    assert len(f["promoted"]) == 10 and len(f["top"]) <= 8
    for ex in f["top"]:
        assert ex["context"][ex["max_index"]][0] == ex["token"]
    csv = (run / "features.csv").read_text().splitlines()
    assert len(csv) == 97
    with pytest.raises(ValueError, match="out of range"):
        store.feature(96)
    neurons = load_feature_store(run, "blocks.1.mlp.hook_post")
    assert neurons.n_units == 160 and neurons.feature(0)["promoted"] is None


def test_features_for_token_and_text(run, setup):
    from mlx_interp.features import features_for_text, features_for_token

    store = load_feature_store(run)
    hits = features_for_token(store, " fox")
    assert hits and all(0 < h["fire_rate_on_token"] <= 1 for h in hits)
    j = hits[0]["feature"]
    assert store.arrays["fires"][j] >= hits[0]["fire_rate_on_token"] * hits[0]["token_occurrences"] - 1e-9  # fmt: skip
    with pytest.raises(ValueError, match="not one token"):
        features_for_token(store, "zebra-not-a-token")
    per_tok = features_for_text(setup["model"], setup["sae"], "the quick brown fox", top=3, store=store)  # fmt: skip
    assert per_tok[1]["features"] and "top_tokens" in per_tok[1]["features"][0]


def test_html_is_escaped(run):
    from mlx_interp.features.dashboards import index_page, show_token

    assert show_token("<b>&") == "&lt;b&gt;&amp;"
    store = load_feature_store(run)
    store.vocab = ["</script><b>x"] * len(store.vocab)
    page = index_page(store, {})
    assert "</script><b>" not in page


def test_bad_input_is_one_line_errors(setup, tmp_path, capsys):
    base = ["features", "--model", str(setup["folder"]), "--out", str(tmp_path / "o"), "--tokens", "500", "--split", "all"]  # fmt: skip
    # an SAE of another hook width
    cfg = SAEConfig(d_in=160, d_sae=32, architecture="topk", k=4, hook_name=HOOK, model_name=str(setup["folder"]))  # fmt: skip
    SAE(cfg).save(tmp_path / "wide")
    # an SAE of a hook the model does not have, and of another model
    SAE(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.9.hook_resid_post")).save(tmp_path / "deep")  # fmt: skip
    SAE(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name=HOOK, model_name="gpt2")).save(tmp_path / "other")  # fmt: skip
    (tmp_path / "empty.txt").write_text("")
    # an SAE trained on the train split of the text: the text's documents are its training data
    trained = DataSource(setup["text"], "train").record()
    meta = {"dataset_path": trained["data"], "dataset_split": "train", "dataset_fingerprint": trained["fingerprint"]}  # fmt: skip
    SAE(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name=HOOK, model_name=str(setup["folder"]), metadata=meta)).save(tmp_path / "trained")  # fmt: skip
    cases = [
        (["--sae", str(tmp_path / "wide"), "--data", str(setup["text"])], "d_in=160"),
        (["--sae", str(tmp_path / "deep"), "--data", str(setup["text"])], "blocks.9.hook_resid_post"),
        (["--sae", str(tmp_path / "other"), "--data", str(setup["text"])], "trained on model 'gpt2'"),
        (["--sae", str(setup["sae"]), "--data", str(tmp_path / "empty.txt")], "empty"),
        (["--sae", str(setup["sae"]), "--data", str(setup["text"]), "--feature", "500"], "out of range"),
        (["--sae", str(tmp_path), "--data", str(setup["text"])], "not an SAE folder"),
    ]  # fmt: skip
    for extra, msg in cases:
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, (extra, err)
    # refused before anything is written
    rc = main(base[:4] + [str(tmp_path / "o2"), "--split", "all", "--sae", str(tmp_path / "trained"), "--data", str(setup["text"])])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-train-data" in err and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------ interventions
def test_feature_interventions(setup):
    from mlx_interp.features.interventions import feature_ablation, steer_feature

    model, sae = setup["model"], setup["sae"]
    text = "the quick brown fox jumps over a lazy dog"
    r = feature_ablation(model, sae, text, [0, 1, 2])
    assert set(r.ablated_loss) == {0, 1, 2}
    for j in (0, 1, 2):
        if r.active[j] == 0:  # never active: ablating it changes nothing
            assert r.effect(j) == pytest.approx(0, abs=1e-6)
        assert r.kl[j] >= -1e-9
    s = steer_feature(model, sae, "the quick", 0, "add", 0.0, max_new_tokens=4)
    assert s["normal"] == s["steered"]
    s = steer_feature(model, sae, "the quick", 0, "add", 200.0, max_new_tokens=4)
    assert s["normal"] != s["steered"]
    s = steer_feature(model, sae, "the quick", 5, "clamp", 50.0, max_new_tokens=4)
    assert isinstance(s["steered"], str)
    with pytest.raises(ValueError, match="out of range"):
        feature_ablation(model, sae, text, [96])
    with pytest.raises(ValueError, match="mode"):
        steer_feature(model, sae, "the", 0, "multiply", 1.0)


def test_logit_effects_are_the_sorted_extremes_of_the_unembedded_directions(setup):
    import mlx.core as mx

    from mlx_interp.features.collect import logit_effects

    model = setup["model"]
    d = np.random.default_rng(0).standard_normal((7, model.cfg.d_model)).astype(np.float32)
    pos_ids, pos_vals, neg_ids, neg_vals = logit_effects(model, d, top=10, chunk=3)
    base = np.asarray(model.unembed(mx.zeros((1, d.shape[1]))), np.float64)
    eff = np.asarray(model.unembed(mx.array(d)), np.float64) - base
    order = np.argsort(-eff, axis=1)
    np.testing.assert_array_equal(pos_ids, order[:, :10])
    np.testing.assert_array_equal(neg_ids, order[:, ::-1][:, :10])
    np.testing.assert_allclose(pos_vals, np.take_along_axis(eff, order[:, :10], 1), rtol=1e-5)
    np.testing.assert_allclose(
        neg_vals, np.take_along_axis(eff, order[:, ::-1][:, :10], 1), rtol=1e-5
    )
