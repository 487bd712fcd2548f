"""An 8B-shaped model in 4-bit, measured here: ``python -m benchmarks.bench_8b``.

A synthetic model with Llama-3-8B's real configuration (32 layers, d_model 4096, 32 heads,
8 KV heads, d_mlp 14336, vocabulary 128256, llama3 rope) and random weights is written once
as a 4-bit mlx-lm folder (group size 64, bfloat16 scales, as mlx-community's conversions)
under the cache, ``cache_root()/bench/llama3-8b-shaped-q4`` (about 4.5 GB). It is built one
tensor at a time through ``convert.write_mlx_folder``, the writer ``mlx-interp convert`` uses,
so the float32 model (32 GB) never exists. Then, in fresh processes, the folder is loaded and
run through all 32 layers with a hook on every ``mlp.hook_post`` (a running per-neuron sum, the
kind of statistic ``mlp-analysis`` gathers), for each number of tokens asked for.

Reports, as one JSON line per step and a table: the conversion's peak RSS and time, and per
token count the load time, peak RSS, forward time and tokens/s, each with the load average.
Not part of CI (too big); tests/test_bench_8b.py runs the same code at a tiny shape.

    python -m benchmarks.bench_8b [--tokens 32 128] [--shape tiny] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Llama-3-8B's config.json (Meta's, as on the Hugging Face hub), weights aside.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
# The same code path at a size a test runs in seconds.
TINY = {
    **LLAMA3_8B,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
}
SHAPES = {"8b": LLAMA3_8B, "tiny": TINY}
BITS, GROUP_SIZE = 4, 64


def folder_for(shape: str) -> Path:
    from mlx_interp.sources import cache_root

    return cache_root() / "bench" / f"llama3-{shape}-shaped-q{BITS}"


def random_tensors(config: dict, seed: int = 0) -> Iterator[tuple[str, object]]:
    """(Hugging Face name, lazy bfloat16 array) for every tensor of the model, in file order.

    Weights are Gaussian (std 0.02, like a fresh initialisation), taken from one pool of
    2**24 normal draws at a random offset per block: drawing 8B normals one by one takes over
    an hour on a busy 2-core CPU, and for memory and speed only shapes and dtypes matter.
    Norm weights are near one.
    """
    import mlx.core as mx

    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    size = min(1 << 24, max(v, f) * d)
    pool = (0.02 * mx.random.normal((size,), key=mx.random.key(seed))).astype(mx.bfloat16)
    mx.eval(pool)
    offsets = np.random.default_rng(seed).integers(0, size, size=1 << 16).tolist()
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    dh = d // nh

    def normal(shape):
        n, parts = shape[0] * shape[1], []
        while n > 0:
            o, m = offsets.pop(), min(n, size)
            parts.append(mx.concatenate([pool[o:], pool[:o]])[:m])
            n -= m
        return (parts[0] if len(parts) == 1 else mx.concatenate(parts)).reshape(shape)

    def norm():
        return 1 + 2 * normal((1, d))[0]

    yield "model.embed_tokens.weight", normal((v, d))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", norm()
        yield f"{p}.self_attn.q_proj.weight", normal((nh * dh, d))
        yield f"{p}.self_attn.k_proj.weight", normal((nkv * dh, d))
        yield f"{p}.self_attn.v_proj.weight", normal((nkv * dh, d))
        yield f"{p}.self_attn.o_proj.weight", normal((d, nh * dh))
        yield f"{p}.post_attention_layernorm.weight", norm()
        yield f"{p}.mlp.gate_proj.weight", normal((f, d))
        yield f"{p}.mlp.up_proj.weight", normal((f, d))
        yield f"{p}.mlp.down_proj.weight", normal((d, f))
    yield "model.norm.weight", norm()
    yield "lm_head.weight", normal((v, d))


def build(shape: str, out: Path | None = None, shard_bytes: int = 1 << 30) -> dict:
    """Write the quantized folder (4-bit, group 64, bf16 scales); return time and peak RSS."""
    import mlx.core as mx

    from mlx_interp.convert import mlx_lm_config, write_mlx_folder
    from mlx_interp.system import peak_rss_mb

    config = SHAPES[shape]
    out = out or folder_for(shape)
    params = {"group_size": GROUP_SIZE, "bits": BITS, "mode": "affine"}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    write_mlx_folder(
        out,
        mlx_lm_config(config, BITS, GROUP_SIZE),
        random_tensors(config),
        lambda name: (
            params
            if name.endswith("_proj.weight") or "embed" in name or "lm_head" in name
            else None
        ),  # fmt: skip
        dtype=mx.bfloat16,
        shard_bytes=shard_bytes,
    )
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "step": "convert", "shape": shape, "folder": str(out), "gb_on_disk": round(size / 1e9, 3),
        "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb()),
        "load_avg": [load0, os.getloadavg()[0]],
    }  # fmt: skip


def measure(folder: Path, n_tokens: int) -> dict:
    """Load the folder and run n_tokens through every layer with a hook on every MLP."""
    import mlx.core as mx

    import mlx_interp  # noqa: F401  (binds the optimised BLAS first)
    from mlx_interp.model import load_model
    from mlx_interp.system import blas_info, peak_rss_mb

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    model = load_model(folder)
    load_s, rss_loaded = time.perf_counter() - t0, peak_rss_mb()
    sums: dict[str, mx.array] = {}

    def neuron_sum(act, hook):  # (batch, pos, d_mlp) -> (d_mlp,): what mlp-analysis keeps
        sums[hook.name] = act.astype(mx.float32).sum(axis=(0, 1))

    tokens = mx.random.randint(0, model.cfg.d_vocab, (1, n_tokens), key=mx.random.key(1))
    t1 = time.perf_counter()
    logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("mlp.hook_post"), neuron_sum)])  # fmt: skip
    mx.eval(logits, sums)
    fwd_s = time.perf_counter() - t1
    assert len(sums) == model.cfg.n_layers and bool(mx.isfinite(logits).all())
    return {
        "step": "forward", "folder": str(folder), "n_tokens": n_tokens,
        "quantization": model.quantization, "device": str(mx.default_device()),
        "blas": blas_info(), "load_s": round(load_s, 1), "rss_after_load_mb": round(rss_loaded),
        "forward_s": round(fwd_s, 1), "tokens_per_s": round(n_tokens / fwd_s, 2),
        "peak_rss_mb": round(peak_rss_mb()), "hooked": len(sums),
        "load_avg": [load0, os.getloadavg()[0]],
    }  # fmt: skip


def cpu_path(t: int = 64, d: int = 1024, f: int = 4096, rounds: int = 3) -> dict:
    """The two ways to multiply by a 4-bit weight, interleaved (A B A B ...) on one shape:
    ``mx.quantized_matmul`` and what a quantized layer does on the CPU (dequantize, then a
    float32 matmul through the BLAS), with a float32 matmul for scale. GFLOP/s, best round."""
    import mlx.core as mx

    import mlx_interp  # noqa: F401  (binds the optimised BLAS first)
    from mlx_interp.models.quantized import _dequantized_product
    from mlx_interp.system import blas_info

    lin = __import__("mlx.nn", fromlist=["nn"]).QuantizedLinear(d, f, bias=False, group_size=64, bits=4)  # fmt: skip
    x, w = mx.random.normal((t, d)), mx.random.normal((f, d))
    mx.eval(lin.parameters(), x, w)
    ways = {
        "quantized_matmul": lambda: mx.quantized_matmul(
            x, lin.weight, lin.scales, lin.biases, transpose=True, group_size=64, bits=4
        ),  # fmt: skip
        "dequantize + matmul (our CPU path)": lambda: _dequantized_product(x, lin),
        "float32 matmul": lambda: x @ w.T,
    }
    best = dict.fromkeys(ways, float("inf"))
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for name, fn in ways.items():
            mx.eval(fn())
            t0 = time.perf_counter()
            mx.eval(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    flop = 2 * t * d * f
    return {
        "step": "cpu_path", "shape": f"({t} x {d}) @ ({d} x {f})", "blas": blas_info(),
        "device": str(mx.default_device()),
        "gflops": {k: round(flop / v / 1e9, 2) for k, v in best.items()},
        "load_avg": [load0, os.getloadavg()[0]],
    }  # fmt: skip


def _child(argv: list[str]) -> dict:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_8b", *argv],
        capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"bench_8b {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(shape: str = "8b", tokens=(32, 128), rebuild: bool = False) -> list[dict]:
    """Build the folder once (in a fresh process), then one fresh process per token count."""
    folder = folder_for(shape)
    rows = []
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    if not folder.exists():
        rows.append(_child(["--child-build", shape]))
        print(json.dumps(rows[-1]), flush=True)
    for n in tokens:
        rows.append(_child(["--child-measure", str(folder), str(n)]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| step | tokens | seconds | tokens/s | peak RSS (MB) | load avg |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        load = f"{max(r['load_avg']):.1f}"
        if r["step"] == "convert":
            lines.append(f"| convert ({r['gb_on_disk']} GB) | | {r['seconds']} | | {r['peak_rss_mb']} | {load} |")  # fmt: skip
        else:
            lines.append(
                f"| load + forward | {r['n_tokens']} | {r['load_s']} + {r['forward_s']} | "
                f"{r['tokens_per_s']} | {r['peak_rss_mb']} | {load} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_8b", description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    p.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    p.add_argument("--rebuild", action="store_true", help="write the folder again")
    p.add_argument("--cpu-path", action="store_true", help="only compare the two 4-bit products")
    p.add_argument("--child-build", help=argparse.SUPPRESS)
    p.add_argument("--child-measure", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_build:
        print(json.dumps(build(a.child_build)))
        return 0
    if a.child_measure:
        print(json.dumps(measure(Path(a.child_measure[0]), int(a.child_measure[1]))))
        return 0
    if a.cpu_path:
        print(json.dumps(cpu_path()))
        return 0
    rows = run(a.shape, a.tokens, a.rebuild)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
