"""Analyses, plots and the extract/tokens/analyze commands, on random checkpoints."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mlx_interp.activations import token_activations
from mlx_interp.analysis import logit_lens, massive_mask, run_all, semantic_similarity
from mlx_interp.cli import main

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Sparse autoencoders turn activations into features that people can read.",
] * 6


def test_massive_mask_flags_position_zero_and_outliers():
    norms = np.array([[50.0, 1, 1.2, 30, 0.9]])
    assert massive_mask(norms).tolist() == [[True, False, False, True, False]]


def test_logit_lens_last_row_is_the_model_output(gpt2):
    ll = logit_lens(gpt2, "The quick brown fox", k=3)
    logits = np.asarray(gpt2("The quick brown fox"))[0]
    assert ll.top_ids.shape == (gpt2.cfg.n_layers + 1, 4, 3)
    assert (ll.top_ids[-1, :, 0] == logits.argmax(-1)).all()
    assert (ll.final_ids == logits.argmax(-1)).all()
    assert len(ll.table()) == (gpt2.cfg.n_layers + 1) * 4


def test_semantic_similarity_shapes(gpt2):
    ss = semantic_similarity(gpt2, {"a": [" fox", " dog"], "b": [" Paris", " Rome"]}, ["The{} is."])
    assert ss.sims.shape == (gpt2.cfg.n_layers + 1, 4, 4)
    assert np.allclose(np.diagonal(ss.sims, axis1=1, axis2=2), 1)
    with pytest.raises(ValueError, match="two groups"):
        semantic_similarity(gpt2, {"a": [" fox"]})


def test_token_activations_finds_every_occurrence(gpt2):
    ta = token_activations(gpt2, " capital", TEXTS[:4], ["blocks.1.hook_resid_post"])
    assert len(ta) == 2 and ta.doc_ids.tolist() == [1, 1]
    assert all("[[ capital]]" in c for c in ta.contexts)
    assert ta.acts["blocks.1.hook_resid_post"].shape == (2, 64)
    assert ta.cosine_similarity("blocks.1.hook_resid_post").shape == (2, 2)


def test_run_all_writes_figures_numbers_and_index(gpt2, tmp_path):
    written = run_all(
        gpt2, ["The quick brown fox"], tmp_path, TEXTS, max_tokens=512, log=lambda s: None
    )
    names = {p.name for p in written}
    for stem in ["p0_norms", "p0_neurons", "p0_similarity", "p0_logit_lens", "semantic_similarity",
                 "position_norms", "same_token_positions", "position_embeddings"]:  # fmt: skip
        assert f"{stem}.png" in names
    index = (tmp_path / "index.md").read_text()
    for p in written:
        if p.suffix == ".png":
            assert p.name in index and p.stat().st_size > 10_000
    assert "p0_logit_lens.md" in names and "semantic_similarity.csv" in names


# ----------------------------------------------------------------- CLI
def _data(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("\n".join(TEXTS) + "\n")
    return f


def test_extract_command_and_rerun(checkpoint_dir, tmp_path, capsys):
    model = str(checkpoint_dir("gpt2"))
    args = ["extract", "--model", model, "--hooks", "blocks.1.hook_resid_post,blocks.0.mlp.hook_post",
            "--data", str(_data(tmp_path)), "--out", str(tmp_path / "x"), "--context-length", "32"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((tmp_path / "x" / "metadata.json").read_text())
    assert meta["complete"] and meta["n_rows"] == meta["tokens_done"] > 0
    assert main(args) == 0  # a complete extraction is left as it is
    assert "rows of" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hooks", "blocks.1.hook_resid_pst"], "unknown hook point"),
        (["--positions", " zebra"], "not one"),
        (["--positions", " Paris", "--data", "EMPTY"], "holds no text"),
        (["--positions", " Paris", "--data", "NOPARIS"], "never occurs in the data"),
        (["--out", "FILE/sub"], "not writable"),
    ],
)
def test_extract_bad_input_is_one_line_and_writes_nothing(
    checkpoint_dir, tmp_path, capsys, extra, message
):
    (tmp_path / "EMPTY").write_text("\n\n")
    (tmp_path / "NOPARIS").write_text("a fox\nthe dog\n")
    (tmp_path / "FILE").write_text("")
    args = {"--model": str(checkpoint_dir("gpt2")), "--hooks": "blocks.1.hook_resid_post",
            "--data": str(_data(tmp_path)), "--out": str(tmp_path / "out")}  # fmt: skip
    for k, v in zip(extra[::2], extra[1::2], strict=True):
        args[k] = str(tmp_path / v) if v in ("EMPTY", "NOPARIS", "FILE/sub") else v
    assert main(["extract", *[x for kv in args.items() for x in kv]]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert last.startswith("mlx-interp extract: error:") and message in last
    assert not (tmp_path / "out").exists()


def test_tokens_command(checkpoint_dir, tmp_path, capsys):
    args = ["tokens", "--model", str(checkpoint_dir("gpt2")), "--token", " capital",
            "--hooks", "blocks.1.hook_resid_post", "--data", str(_data(tmp_path)),
            "--out", str(tmp_path / "t")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 occurrences" in out and "[[ capital]]" in out
    assert (tmp_path / "t" / "similarity_blocks.1.hook_resid_post.png").exists()
    with open(tmp_path / "t" / "occurrences.csv") as f:
        assert len(list(csv.reader(f))) == 13


def test_analyze_command(checkpoint_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("The quick brown fox\n\n")
    args = ["analyze", "--model", str(checkpoint_dir("llama-mha-tied")), "--prompts",
            str(tmp_path / "p.txt"), "--out", str(tmp_path / "a"), "--data", str(_data(tmp_path)),
            "--max-tokens", "256"]  # fmt: skip
    assert main(args) == 0
    index = (tmp_path / "a" / "index.md").read_text()
    assert "Logit lens" in index and "no learned position embeddings" in index
    (tmp_path / "empty.txt").write_text("")
    assert main([*args[:4], str(tmp_path / "empty.txt"), *args[5:]]) == 2
    assert "holds no prompt" in capsys.readouterr().err
