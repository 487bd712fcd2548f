"""Forward-pass throughput: MLX vs torch_ref, full pass vs stop_at_layer.

    python -m benchmarks.bench_forward [--model smollm2-135m] [--batch 4] [--seq 128]

Extracting one middle-layer hook with stop_at_layer should cost about (layer + 1) /
n_layers of a full pass (plus the unembedding the full pass also pays); this measures it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import peak_rss_mb, time_it


def bench(
    model_name: str, batch: int, seq: int, layer: int | None, repeats: int, dtypes: list[str]
):
    import mlx.core as mx
    import torch

    from mlx_interp import load_model
    from mlx_interp.system import blas_info, mlx_device
    from torch_ref import load_model as load_torch

    rows = []
    for dtype in dtypes:
        model = load_model(model_name, dtype=dtype)
        n = model.cfg.n_layers
        L = n // 2 if layer is None else layer
        hook = f"blocks.{L}.hook_resid_post"
        tokens = mx.array(np.random.default_rng(0).integers(0, model.cfg.d_vocab, (batch, seq)))
        full = time_it(lambda: model.run_with_cache(tokens, names_filter=[hook]), repeats)  # noqa: B023
        stop = time_it(
            lambda: model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=L + 1),  # noqa: B023
            repeats,
        )
        for mode, t in [("full pass", full), (f"stop_at_layer={L + 1}", stop)]:
            rows.append(dict(backend="mlx", device=mlx_device(), dtype=dtype, mode=mode,
                             hook=hook, **t.as_dict(), tokens_per_s=t.per_second(batch * seq)))  # fmt: skip
        rows[-1]["speedup_vs_full"] = full.median_s / stop.median_s
        rows[-1]["expected_speedup"] = n / (L + 1)

    ref = load_torch(model_name, dtype="float32")
    t_tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)
    full = time_it(lambda: ref.run_with_cache(t_tokens, names_filter=[hook]), repeats)
    stop = time_it(
        lambda: ref.run_with_cache(t_tokens, names_filter=[hook], stop_at_layer=L + 1), repeats
    )
    for mode, t in [("full pass", full), (f"stop_at_layer={L + 1}", stop)]:
        rows.append(dict(backend="torch", device="cpu", dtype="float32", mode=mode, hook=hook,
                         **t.as_dict(), tokens_per_s=t.per_second(batch * seq)))  # fmt: skip
    rows[-1]["speedup_vs_full"] = full.median_s / stop.median_s
    return {"model": model_name, "batch": batch, "seq": seq, "blas": blas_info(),
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "rows": rows}  # fmt: skip


def format_table(result: dict) -> str:
    lines = [
        f"forward pass, {result['model']}, batch {result['batch']} x {result['seq']} tokens; "
        f"MLX BLAS: {result['blas']}",
        "| backend | device | dtype | mode | median ms (min-max) | tokens/s | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        speedup = f"{r['speedup_vs_full']:.2f}x" if "speedup_vs_full" in r else ""
        if "expected_speedup" in r:
            speedup += f" (ideal {r['expected_speedup']:.2f}x)"
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['dtype']} | {r['mode']} | "
            f"{1e3 * r['median_s']:.0f} ({1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}) | "
            f"{r['tokens_per_s']:.0f} | {speedup} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=None, help="hook layer (default: the middle)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = p.parse_args(argv)
    result = bench(a.model, a.batch, a.seq, a.layer, a.repeats, a.dtypes.split(","))
    print(json.dumps(result) if a.json else format_table(result))


if __name__ == "__main__":
    main()
