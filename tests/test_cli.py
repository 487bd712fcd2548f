"""The mlx-interp command line, run in-process on the random fixture checkpoints."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

from mlx_interp.cli import main


def test_info_lists_sizes_device_blas_and_hooks(checkpoint_dir, capsys):
    assert main(["info", "--model", str(checkpoint_dir("llama-gqa-untied"))]) == 0
    out = capsys.readouterr().out
    assert "architecture llama" in out
    assert "n_kv_heads=2" in out
    assert "mlx device" in out and "blas" in out
    assert "attn.hook_rot_q" in out and "hook points  56 in all" in out


def test_parity_passes_and_writes_json(checkpoint_dir, tmp_path, capsys):
    report = tmp_path / "parity.json"
    code = main(["parity", "--model", str(checkpoint_dir("gpt2-peaked")), "--text", "The quick brown fox",
                 "--text", "1, 2, 3", "--json", str(report)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "blocks.2.attn.hook_pattern" in out and "PASS" in out
    data = json.loads(report.read_text())
    assert data["ok"] and data["rows"][-1]["name"] == "logits"


def test_parity_fails_over_tolerance_and_names_the_first_divergence(
    checkpoint_dir, tmp_path, capsys
):
    """Corrupt one MLX weight through a hook-free route: the report must blame its first hook."""
    import mlx.core as mx

    from mlx_interp import load_model
    from mlx_interp.parity import compare_backends

    folder = checkpoint_dir("llama-mha-tied")
    model = load_model(folder)
    mlp = model.model.blocks[1].mlp
    d_mlp = mlp.down_proj.weight.shape[1]  # gate_up_proj: the gate rows, then the up rows
    w = mlp.gate_up_proj.weight
    mlp.gate_up_proj.weight = mx.concatenate([w[:d_mlp], w[d_mlp:] * 1.01])
    mx.eval(model.model.parameters())
    report = compare_backends(str(folder), "The quick brown fox", mlx_model=model)
    assert not report.ok
    assert report.first_divergence.name == "blocks.1.mlp.hook_pre_linear"


def test_unknown_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx-interp info: error:") and "\n" not in err


def test_demo_finds_the_benchmarks_of_its_checkout():
    """The demo's bench stage runs ``python -m benchmarks`` from the source checkout (it
    wrote SKIPPED.md when it looked one folder too low)."""
    from pathlib import Path

    from mlx_interp.cli.demo import source_checkout

    assert source_checkout() == Path(__file__).resolve().parent.parent


def test_demo_runs_every_stage_resumes_and_reports(checkpoint_dir, tmp_path, capsys, monkeypatch):
    import importlib.util
    import re

    import mlx_interp.cli.demo as pipeline

    out = tmp_path / "demo"
    model = str(checkpoint_dir("gpt2"))
    args = ["demo", "--model", model, "--out", str(out), "--quick", "--skip", "bench"]

    # an interruption in the middle: the features stage fails once
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_features", interrupted)
    assert main(args) == 130
    assert (out / ".done" / "sae").exists() and not (out / ".done" / "features").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "sae: done already" in log and "features done" in log

    basics = {p.name for p in (out / "basics").iterdir()}
    assert {"predictions.json", "parity.txt", "parity.json", "residual_norms.png",
            "residual_norms.csv", "machine.json"} <= basics  # fmt: skip
    assert not [n for n in basics if n.startswith(".")]  # no temporary files left behind
    preds = json.loads((out / "basics" / "predictions.json").read_text())
    assert len(preds) == 5 and all(len(p["top"]) == 5 for p in preds)
    rows = list(csv.reader(open(out / "basics" / "residual_norms.csv")))
    assert rows[0][:3] == ["position", "token", "embed"] and len(rows[0]) == 3 + 3  # 3 layers
    for f in [
        "analysis/index.md",
        "sae/training.json",
        "sae_eval/metrics.json",
        "features/index.html",
    ]:
        assert (out / f).exists(), f

    assert not (out / "sae" / "activations").exists()  # extracted once, trained on, deleted
    assert json.loads((out / "sae" / "training.json").read_text())["data"]["epochs"] == 3
    report = (out / "report.md").read_text()
    assert "activations extracted once and read 3 times" in report
    for heading in ["## Set-up", "## Activation experiments", "## Sparse autoencoder", "## Feature analysis",
                    "## Parity between the backends", "## Performance", "## Conclusions and research proposal"]:  # fmt: skip
        assert heading in report, heading
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 8 and all((out / link).exists() for link in links), links
    metrics = json.loads((out / "sae_eval" / "metrics.json").read_text())
    assert (
        f"| explained variance | {metrics['explained_variance']:.4g} |" in report
    )  # numbers from artefacts
    assert f"| `kl_div_score` | {metrics['saebench']['kl_div_score']:.4g} |" in report
    assert "_Not run: no `bench/`" in report
    views = re.findall(r"\]\((analysis/views/[^)]+\.html)\)", report)  # linked interactive views
    assert {"analysis/views/p0_attention.html", "analysis/views/p0_logit_lens.html"} <= set(views)
    assert all((out / v).exists() for v in views)
    if importlib.util.find_spec("markdown"):  # a dependency (missing in a venv made before it)
        page = (out / "report.html").read_text()  # the HTML beside it: figures embedded
        assert page.count('src="data:image/png;base64,') == len(links)


def test_report_on_a_missing_run_is_an_error(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_output_folder_that_is_a_file_is_an_error(checkpoint_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--model", str(checkpoint_dir("gpt2")), "--out", str(f)]) == 2
    assert "not writable" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("mlx-interp") or os.path.join(os.path.dirname(sys.executable), "mlx-interp")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "parity" in out and "demo" in out and "info" in out
