"""Forward-pass throughput for activation extraction: MLX vs torch_ref, full vs stop_at_layer.

    python -m benchmarks.bench_forward [--models smollm2-135m,gpt2-small-shape] [--quick]

Each (model, backend, dtype) runs in a fresh process so its peak memory is its own.
Extracting one middle-layer hook with stop_at_layer should cost about (layer + 1) /
n_layers of a full pass plus the unembedding the full pass also pays; this measures it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import median_range, note, peak_rss_mb, run_isolated, time_it


def task(model_name: str, backend: str, dtype: str, batch: int, seq: int, repeats: int) -> dict:
    """One (model, backend, dtype): full pass and stop_at_layer at the middle layer."""
    from benchmarks.models import forward_flops, model_source

    source = model_source(model_name)
    if backend == "mlx":
        import mlx.core as mx

        from mlx_interp import load_model
        from mlx_interp.system import mlx_device

        model = load_model(source, dtype=dtype)
        device = mlx_device()
        tokens = mx.array(np.random.default_rng(0).integers(0, model.cfg.d_vocab, (batch, seq)))
    else:
        import torch

        from torch_ref import load_model as load_torch

        device = "mps" if torch.backends.mps.is_available() and backend == "torch-mps" else "cpu"
        model = load_torch(source, device=device, dtype=dtype)
        tokens = torch.tensor(np.random.default_rng(0).integers(0, model.cfg.d_vocab, (batch, seq)))
        tokens = tokens.to(device)
    cfg = model.cfg
    L = cfg.n_layers // 2
    hook = f"blocks.{L}.hook_resid_post"

    def run(stop):
        out = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=stop)
        if backend == "torch-mps":
            import torch

            torch.mps.synchronize()
        return out

    n = batch * seq
    rows = []
    for mode, stop in [("full pass", None), (f"stop_at_layer={L + 1}", L + 1)]:
        t = time_it(lambda s=stop: run(s), repeats)
        flops = forward_flops(cfg, n, seq, layers=stop, logits=stop is None)
        rows.append(dict(
            model=model_name, backend=backend, device=device, dtype=dtype, mode=mode, hook=hook,
            tokens=n, **t.as_dict(), tokens_per_s=t.per_second(n), gflops_per_s=flops / t.median_s / 1e9,
        ))  # fmt: skip
    rows[1]["speedup_vs_full"] = rows[0]["median_s"] / rows[1]["median_s"]
    rows[1]["ideal_speedup"] = forward_flops(cfg, n, seq) / forward_flops(cfg, n, seq, L + 1, False)
    peak = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = peak
    return {"rows": rows}


def run_all(models: list[str], quick: bool) -> list[dict]:
    """Every model × backend × dtype, each in its own process."""
    import torch

    from mlx_interp.system import mlx_device

    batch, seq, repeats = (2, 64, 2) if quick else (4, 128, 3)
    backends = [("mlx", "float32"), ("mlx", "bfloat16"), ("torch", "float32")]
    if not quick and mlx_device() == "gpu":  # on the CPU half precision has no BLAS: ~10x slower
        backends.insert(2, ("mlx", "float16"))
    if quick and mlx_device() == "cpu":  # and takes half a minute of the quick run for that
        backends.remove(("mlx", "bfloat16"))
    if torch.backends.mps.is_available():
        backends.append(("torch-mps", "float32"))
    rows = []
    for i, model in enumerate(models):
        for backend, dtype in backends:
            if i > 0 and dtype != "float32" and mlx_device() == "cpu":
                continue  # CPU half precision: measured once, on the first model
            args = ["--task", model, backend, dtype, str(batch), str(seq), str(repeats)]
            rows += run_isolated("benchmarks.bench_forward", args)["rows"]
    return rows


def format_table(rows: list[dict], peak_gflops: float | None = None) -> str:
    head = "| model | backend | device | dtype | mode | median ms (min-max) | tokens/s | GFLOP/s"
    head += " | % of peak |" if peak_gflops else " |"
    lines = [
        head + " speed-up | peak RSS MiB | load, reliability |",
        "|" + " --- |" * (12 if peak_gflops else 11),
    ]
    for r in rows:
        speedup = ""
        if "speedup_vs_full" in r:
            speedup = f"{r['speedup_vs_full']:.2f}x (ideal {r['ideal_speedup']:.2f}x)"
        pct = f" {100 * r['gflops_per_s'] / peak_gflops:.0f}% |" if peak_gflops else ""
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['device']} | {r['dtype']} | {r['mode']} | {median_range(r)} | "
            f"{r['tokens_per_s']:.0f} | {r['gflops_per_s']:.1f} |{pct} {speedup} | {r['peak_rss_mb']:.0f} | {note(r)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="smollm2-135m")
    p.add_argument("--quick", action="store_true", help="small batch, two repeats")
    p.add_argument("--task", nargs=6, metavar=("MODEL", "BACKEND", "DTYPE", "BATCH", "SEQ", "REPEATS"),
                   help=argparse.SUPPRESS)  # fmt: skip
    a = p.parse_args(argv)
    if a.task:
        m, backend, dtype, batch, seq, repeats = a.task
        print(json.dumps(task(m, backend, dtype, int(batch), int(seq), int(repeats))))
        return
    print(format_table(run_all(a.models.split(","), a.quick)))


if __name__ == "__main__":
    main()
