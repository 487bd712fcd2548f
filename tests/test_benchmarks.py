"""The benchmark suite runs end to end in --quick mode (no speed is asserted: CI is noisy)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_benchmark_writes_the_table(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=1200)  # fmt: skip
    (md,) = tmp_path.glob("*-quick.md")
    result = json.loads(md.with_suffix(".json").read_text())
    text = md.read_text()
    for heading in ["Activation extraction", "SAE training", "Plotting", "Scaling"]:
        assert f"## {heading}" in text or heading in text
    assert result["machine"]["blas"] and result["machine"]["numpy_matmul"]["gflops"] > 0
    backends = {(r["backend"], r["mode"].split("=")[0]) for r in result["forward"]}
    assert {("mlx", "full pass"), ("mlx", "stop_at_layer"), ("torch", "full pass")} <= backends
    assert all(
        r["tokens_per_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
        for r in result["forward"]
    )
    assert [r["tokens"] for r in result["scaling"]["rows"]] == sorted(
        r["tokens"] for r in result["scaling"]["rows"]
    )
    assert "MLX / PyTorch" in text
