"""The activation generator, the shard writer and its resume, on random checkpoints."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_interp.activations import (
    BOUNDARY,
    LAST,
    PAD,
    SimulatedInterruption,
    extract,
    iter_activations,
    iter_windows,
    load_extraction,
    stop_layer_for,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "Sparse autoencoders turn activations into features that people can read.",
] * 3


def test_packed_windows_reproduce_the_token_stream(gpt2):
    tok = gpt2.tokenizer
    groups = list(iter_windows(tok, TEXTS, context_length=16, batch_size=3))
    assert all(g.tokens.shape[1] == 16 for g in groups)
    assert [g.first_window for g in groups] == [3 * i for i in range(len(groups))]
    tokens = np.concatenate([g.tokens for g in groups])
    kinds = np.concatenate([g.kinds for g in groups])
    assert (kinds[:, 0] == BOUNDARY).all()
    body = tokens[:, 1:][kinds[:, 1:] != PAD]
    stream = []
    for t in TEXTS:
        stream += [0, *tok.encode(t, add_special_tokens=False)]
    assert body.tolist() == stream
    # the last token of every document is marked, once
    assert (kinds == LAST).sum() == len(TEXTS)


def test_unpacked_windows_start_each_document(gpt2):
    groups = list(iter_windows(gpt2.tokenizer, TEXTS[:5], 64, 8, pack=False))
    docs = np.concatenate([g.doc_ids for g in groups])
    assert docs[:, 0].tolist() == list(range(5))
    assert (docs[:, 1:][np.concatenate([g.kinds for g in groups])[:, 1:] != PAD].size) > 0


def test_rows_match_run_with_cache(llama):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"]
    batches = list(iter_activations(llama, hooks, TEXTS, batch_size=2, context_length=12))
    assert sum(b.n_tokens for b in batches) == sum(int(b.windows.size) for b in batches) - (
        sum((g.kinds == PAD).sum() for g in iter_windows(llama.tokenizer, TEXTS, 12, 2))
    )
    for b in batches[:3] + batches[-1:]:
        _, cache = llama.run_with_cache(mx.array(b.windows), names_filter=hooks)
        w = b.window_ids - b.first_window
        for h in hooks:
            want = np.asarray(cache[h]).reshape(len(b.windows), 12, -1)[w, b.positions]
            np.testing.assert_allclose(np.asarray(b.acts[h]), want, rtol=1e-5, atol=1e-6)
        assert (b.windows[w, b.positions] == b.token_ids).all()
    assert batches[0].acts["blocks.1.attn.hook_z"].shape[1] == 4 * 16


def test_a_batch_in_several_cpu_passes_gives_the_same_rows(llama, monkeypatch):
    """On the CPU a batch runs in passes of CPU_PASS_WINDOWS windows (9 = 4 + 4 + 1 here);
    every row equals the one pass of the whole batch."""
    from mlx_interp.activations import stream

    hooks = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    kw = dict(batch_size=9, context_length=12, exclude_massive=True)
    monkeypatch.setattr(stream, "CPU_PASS_WINDOWS", 4)
    split = list(iter_activations(llama, hooks, TEXTS, **kw))
    monkeypatch.setattr(stream, "CPU_PASS_WINDOWS", 1000)
    whole = list(iter_activations(llama, hooks, TEXTS, **kw))
    assert len(split) == len(whole) > 1
    for a, b in zip(split, whole, strict=True):
        assert (a.token_ids == b.token_ids).all() and (a.window_ids == b.window_ids).all()
        for h in hooks:
            np.testing.assert_allclose(np.asarray(a.acts[h]), np.asarray(b.acts[h]), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_stop_layer_is_the_last_hook_plus_one():
    assert stop_layer_for(["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"], 3) == 2
    assert stop_layer_for(["hook_embed"], 3) == 0
    assert stop_layer_for(["blocks.2.hook_resid_post"], 3) is None
    assert stop_layer_for(["ln_final.hook_normalized"], 3) is None


def test_positions_last_and_token(gpt2):
    hook = "blocks.0.hook_resid_post"
    last = list(iter_activations(gpt2, [hook], TEXTS, positions="last", context_length=16))
    ids = np.concatenate([b.token_ids for b in last])
    want = [gpt2.tokenizer.encode(t, add_special_tokens=False)[-1] for t in TEXTS]
    assert ids.tolist() == want
    assert np.concatenate([b.doc_ids for b in last]).tolist() == list(range(len(TEXTS)))

    the = gpt2.tokenizer.encode(" capital", add_special_tokens=False)
    assert len(the) == 1
    rows = list(iter_activations(gpt2, [hook], TEXTS, positions=" capital", context_length=16))
    assert sum(b.n_rows for b in rows) == 2 * 3
    assert all((b.token_ids == the[0]).all() for b in rows)


def test_token_that_never_occurs_is_a_clear_error(gpt2):
    with pytest.raises(ValueError, match="never occurs in the data"):
        list(iter_activations(gpt2, ["blocks.0.hook_resid_post"], ["a b c"], positions=" fox"))
    with pytest.raises(ValueError, match="not one"):
        list(iter_activations(gpt2, ["blocks.0.hook_resid_post"], TEXTS, positions=" zebra"))


def test_bad_hooks_are_clear_errors(gpt2):
    with pytest.raises(ValueError, match="unknown hook point"):
        list(iter_activations(gpt2, ["blocks.0.hook_resid_pst"], TEXTS))
    with pytest.raises(ValueError, match="attention pattern"):
        list(iter_activations(gpt2, ["blocks.0.attn.hook_pattern"], TEXTS))


def test_exclude_massive_drops_position_zero_and_counts(gpt2):
    hook = "blocks.1.hook_resid_post"
    full = list(iter_activations(gpt2, [hook], TEXTS, context_length=16, batch_size=4))
    kept = list(
        iter_activations(gpt2, [hook], TEXTS, context_length=16, batch_size=4, exclude_massive=True)
    )
    assert not any((b.positions == 0).any() for b in kept)
    n_ex = {}
    for b in kept:
        for k, v in b.n_excluded.items():
            n_ex[k] = n_ex.get(k, 0) + v
    assert n_ex["position_0"] == sum(len(b.windows) for b in full)
    assert sum(b.n_rows for b in kept) + sum(n_ex.values()) == sum(b.n_rows for b in full)


def test_max_tokens_rounds_up_to_whole_windows(gpt2):
    b = list(iter_activations(gpt2, ["hook_embed"], TEXTS, context_length=16, max_tokens=40))
    assert sum(len(x.windows) for x in b) == 3


def test_seed_shuffles_rows_deterministically(gpt2):
    kw = dict(context_length=16, batch_size=4, seed=3)
    a = next(iter_activations(gpt2, ["hook_embed"], TEXTS, **kw))
    b = next(iter_activations(gpt2, ["hook_embed"], TEXTS, **kw))
    assert (a.positions == b.positions).all() and not (np.diff(a.positions) >= 0).all()


# ------------------------------------------------------------------ on disk
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]


def _extract(model, out, **kw):
    kw = {"batch_size": 2, "context_length": 16, "shard_mb": 0.01, "data_id": "TEXTS", **kw}
    return extract(model, HOOKS, out, TEXTS, **kw)


def test_extract_writes_shards_and_metadata(llama, tmp_path):
    meta = _extract(llama, tmp_path / "x")
    assert meta["complete"] and len(meta["shards"]) > 2
    on_disk = json.loads((tmp_path / "x" / "metadata.json").read_text())
    assert on_disk == meta and on_disk["hooks"] == HOOKS and on_disk["dtype"] == "float32"
    meta2, acts, rows = load_extraction(tmp_path / "x")
    assert acts[HOOKS[0]].shape == (meta["n_rows"], 64)
    assert acts[HOOKS[1]].shape == (meta["n_rows"], 160)
    ref = list(iter_activations(llama, HOOKS, TEXTS, batch_size=2, context_length=16))
    for h in HOOKS:
        np.testing.assert_array_equal(acts[h], np.concatenate([np.asarray(b.acts[h]) for b in ref]))
    assert rows["token_ids"].tolist() == np.concatenate([b.token_ids for b in ref]).tolist()
    assert set(rows) == {"token_ids", "positions", "doc_ids", "window_ids"}
    assert not list((tmp_path / "x").glob(".*"))  # no temporary files left


def test_interrupted_extraction_resumes_without_duplicates_or_gaps(llama, tmp_path):
    whole = _extract(llama, tmp_path / "whole")
    with pytest.raises(SimulatedInterruption):
        _extract(llama, tmp_path / "cut", _stop_after_shards=2)
    part = json.loads((tmp_path / "cut" / "metadata.json").read_text())
    assert len(part["shards"]) == 2 and not part["complete"]
    (tmp_path / "cut" / "shard_00002.safetensors").write_bytes(b"half-written junk")
    resumed = _extract(llama, tmp_path / "cut", batch_size=3)  # batch size may differ
    assert resumed["n_rows"] == whole["n_rows"]
    _, a1, r1 = load_extraction(tmp_path / "whole")
    _, a2, r2 = load_extraction(tmp_path / "cut")
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k])
    for h in HOOKS:
        np.testing.assert_allclose(a1[h], a2[h], rtol=1e-5, atol=1e-6)


def test_extract_with_other_settings_in_the_folder_is_an_error(llama, tmp_path):
    _extract(llama, tmp_path / "x")
    with pytest.raises(ValueError, match="other settings .context_length"):
        _extract(llama, tmp_path / "x", context_length=8)


def test_extract_token_that_never_occurs_leaves_nothing(gpt2, tmp_path):
    with pytest.raises(ValueError, match="never occurs"):
        extract(gpt2, HOOKS, tmp_path / "y", ["a b c"], positions=" fox", data_id="abc")
    assert not (tmp_path / "y").exists()


def test_row_filter_is_the_one_rule():
    from mlx_interp.activations.rows import COUNTERS, RowFilter, over_median

    rule = RowFilter(factor=10.0, special_ids=(7,))
    token_ids = np.array([7, 1, 7, 2, 3, 4, 5])
    positions = np.array([0, 1, 2, 3, 4, 5, 6])
    norms = np.array([[500.0, 1, 1, 1, 1, 30, 1], [1, 1, 1, 1, 12, 1, 1]])  # two hooks
    sel = rule(token_ids, positions, norms)
    assert tuple(sel.counts) == COUNTERS
    assert sel.counts == {"position_0": 1, "special_token": 1, "norm_outlier": 2}
    assert sel.keep.tolist() == [False, True, False, True, False, False, True]
    assert sel.outlier.tolist() == [False] * 4 + [True, True, False]
    # nothing left out when the rule is off; the norm test alone, elementwise
    off = RowFilter(position_0=False, special_tokens=False, factor=None)(
        token_ids, positions, norms
    )
    assert off.keep.all() and sum(off.counts.values()) == 0
    assert over_median(np.array([1.0, 1, 11]), 10.0).tolist() == [False, False, True]
