"""benchmarks.bench_8b's code path at a tiny shape: the random mlx-lm folder is written one
tensor at a time through convert.write_mlx_folder, loads in mlx_lm and here, and runs with a
hook on every MLP. (The 8B shape itself is too big for CI.)"""

from __future__ import annotations

import json

import mlx.core as mx

from benchmarks import bench_8b


def test_tiny_shape_builds_loads_and_runs(tmp_path):
    import mlx_lm

    folder = tmp_path / "tiny"
    row = bench_8b.build("tiny", folder, shard_bytes=200_000)  # several shards and an index
    assert row["step"] == "convert" and row["peak_rss_mb"] > 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["num_hidden_layers"] == 2
    assert (folder / "model.safetensors.index.json").exists()
    w = mx.load(str(next(folder.glob("model-00001-*.safetensors"))))
    assert w["model.embed_tokens.scales"].dtype == mx.bfloat16  # as mlx-community's folders
    ref, _ = mlx_lm.utils.load_model(folder)  # the folder has no tokenizer: weights only
    ref.set_dtype(mx.float32)  # float32 activations, as ours (upcasting the scales is exact)
    out = bench_8b.measure(folder, 16)
    assert out["hooked"] == 2 and out["quantization"]["n_quantized_layers"] == 2 * 7 + 2
    from mlx_interp.model import load_model

    x = mx.arange(12)[None]
    ours = load_model(folder)(x)
    assert float(mx.linalg.norm(ours - ref(x)) / mx.linalg.norm(ref(x))) < 1e-5


def test_cpu_path_comparison_runs():
    row = bench_8b.cpu_path(4, 64, 128, rounds=1)
    assert set(row["gflops"]) == {"quantized_matmul", "dequantize + matmul (our CPU path)", "float32 matmul"}  # fmt: skip
