"""train-sae / eval-sae end to end on a random Llama checkpoint, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from mlx_interp.cli import main
from mlx_interp.data import is_heldout
from mlx_interp.sae import SAE


def test_train_then_eval(checkpoint_dir, text_file, tmp_path, capsys):
    model = str(checkpoint_dir("llama-gqa-untied"))
    out = tmp_path / "run"
    rc = main(["train-sae", "--model", model, "--hook", "blocks.1.hook_resid_post",
               "--hook", "blocks.2.mlp.hook_post", "--data", str(text_file), "--arch", "topk",
               "--expansion", "2", "--k", "4", "--tokens", "4096", "--batch-size", "512",
               "--out", str(out), "--log-every", "4"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "blocks.1.hook_resid_post: L0" in text and "tokens/s" in text
    # 4096 tokens for 128 latents: told on stderr in one line, not as a Python warning
    assert captured.err.count("warning: 4096 training tokens for 128 latents") == 1
    assert "UserWarning" not in captured.err
    sae = SAE.load(out / "blocks.2.mlp.hook_post")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (160, 320, 4)
    rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
               "--data", str(text_file), "--tokens", "1000", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert rc == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("l0", "explained_variance", "normalized_mse", "cosine_similarity", "dead_fraction",
                "dense_fraction", "ce_loss_recovered", "kl_div", "density_window_tokens"):  # fmt: skip
        assert key in m
    assert m["l0"] <= 4 and m["kl_div"] >= 0 and m["rows_left_out"]["position_0"] > 0
    # trained on the train split of the file, evaluated on its held-out documents, and both say so
    assert sae.cfg.metadata["dataset_split"] == "train"
    assert sae.cfg.metadata["dataset_fingerprint"].startswith("sha256:")
    assert set(sae.cfg.metadata["rows_left_out"]) == {"position_0", "special_token", "norm_outlier"}
    assert m["data_source"]["split"] == "heldout" and not m["overlaps_training_data"]
    assert m["data_source"]["fingerprint"] == sae.cfg.metadata["dataset_fingerprint"]
    assert str(text_file.resolve()) in m["data"] and "held-out" in m["data"]
    n_heldout = sum(is_heldout(d) for d in text_file.read_text().split("\n\n"))
    assert 0 < n_heldout < 300
    assert (tmp_path / "ev" / "feature_density.png").stat().st_size > 1000
    # the torch_ref backend gives the same metrics on the same SAE
    rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
               "--data", str(text_file), "--tokens", "1000", "--out", str(tmp_path / "ev2"),
               "--backend", "torch"])  # fmt: skip
    m2 = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert m2["explained_variance"] == pytest.approx(m["explained_variance"], rel=1e-4)
    assert m2["ce_loss_recovered"] == pytest.approx(m["ce_loss_recovered"], rel=1e-3, abs=1e-4)
    # SAEBench's core metrics, consistent with ours and alike in both backends
    core, core2 = m["saebench"], m2["saebench"]
    assert core["ce_loss_score"] == pytest.approx(m["ce_loss_recovered"])
    assert core["frac_alive"] == pytest.approx(1 - m["dead_fraction"])
    assert core["kl_div_with_sae"] == pytest.approx(m["kl_div"])
    assert 0 < core["kl_div_with_sae"] < core["kl_div_with_ablation"]
    assert -1 <= core["average_max_decoder_cosine_sim"] <= 1 and core["l2_ratio"] > 0
    for key, value in core.items():
        assert core2[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    assert not (out / "checkpoint").exists()  # removed after a finished run
    # the SAE's own training documents: refused in one line, nothing written, unless allowed
    capsys.readouterr()
    for split in ("train", "all"):
        rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
                   "--data", str(text_file), "--split", split, "--out", str(tmp_path / "ev3")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and "--allow-train-data" in err and err.count("\n") == 1
        assert not (tmp_path / "ev3").exists()
    rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
               "--data", str(text_file), "--split", "train", "--allow-train-data", "--tokens", "300",
               "--out", str(tmp_path / "ev3")])  # fmt: skip
    m3 = json.loads((tmp_path / "ev3" / "metrics.json").read_text())
    assert rc == 0 and m3["overlaps_training_data"] and m3["data_source"]["split"] == "train"
    assert "shares documents" in capsys.readouterr().out
    # errors: one line, exit 2
    capsys.readouterr()
    rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
               "--hook", "blocks.1.mlp.hook_post", "--data", str(text_file)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "trained on blocks.1.hook_resid_post" in err and err.count("\n") == 1
    # --force uses an SAE at another hook, but never one of another width
    rc = main(["eval-sae", "--model", model, "--sae", str(out / "blocks.1.hook_resid_post"),
               "--hook", "blocks.1.mlp.hook_post", "--data", str(text_file), "--force"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "d_in=64" in err and "width 160" in err and err.count("\n") == 1


def test_train_errors(checkpoint_dir, text_file, tmp_path, capsys):
    model = str(checkpoint_dir("llama-gqa-untied"))
    base = ["train-sae", "--model", model, "--data", str(text_file), "--out", str(tmp_path / "o"),
            "--tokens", "1024", "--batch-size", "256"]  # fmt: skip
    rc = main(base + ["--hook", "blocks.9.hook_resid_post"])
    err = capsys.readouterr().err
    assert rc == 2 and "blocks.9.hook_resid_post" in err and err.count("\n") == 1
    rc = main(base + ["--hook", "blocks.0.hook_resid_post", "--d-sae", "16", "--k", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and "k=64 must be between 1 and d_sae=16" in err


def test_train_from_an_extraction_keeps_the_row_rule_and_the_data(checkpoint_dir, text_file, tmp_path, capsys):  # fmt: skip
    model = str(checkpoint_dir("llama-gqa-untied"))
    hook = "blocks.1.hook_resid_post"
    acts = tmp_path / "acts"
    assert main(["extract", "--model", model, "--hooks", hook, "--data", str(text_file),
                 "--out", str(acts), "--max-tokens", "2048", "--context-length", "64"]) == 0  # fmt: skip
    meta = json.loads((acts / "metadata.json").read_text())
    assert meta["data_source"]["split"] == "train" and meta["special_token_ids"]
    rc = main(["train-sae", "--activations", str(acts), "--hook", hook, "--arch", "topk",
               "--expansion", "2", "--k", "4", "--tokens", "1024", "--batch-size", "256",
               "--out", str(tmp_path / "run"), "--epochs", "2"])  # fmt: skip
    assert rc == 0
    sae = SAE.load(tmp_path / "run" / hook)
    # the extraction kept every row: the trainer applied the row rule to them
    assert sae.cfg.metadata["rows_left_out"]["position_0"] > 0
    assert sae.cfg.metadata["dataset_fingerprint"] == meta["data_source"]["fingerprint"]
    capsys.readouterr()
    rc = main(["eval-sae", "--model", model, "--sae", str(tmp_path / "run" / hook),
               "--data", str(text_file), "--split", "all"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "trained on the train split" in err
