"""Where the extraction forward pass spends its time: a component profile, CPU time and wall.

    python -m benchmarks.profile_extract [--batches 1,16] [--seq 128] [--repeats 3]

For the embedded SmolLM2 (float32) up to ``blocks.15.hook_resid_post`` (16 blocks), it times
the real forward pass (``run_with_cache`` with ``stop_at_layer``), with fused projections
(the default) and without (the checkpoint's separate q/k/v and gate/up layers), interleaved;
then each kind of work of those 16 blocks on its own, at the same shapes: the matrix
products (separate and fused), attention (``mx.fast.scaled_dot_product_attention``, causal),
rotary, the two RMS norms, silu(gate) * up, and the exponential alone against NumPy's.
Each line gives the process CPU time (what the work costs, less sensitive to other
processes than wall time) and its share of the forward pass's CPU time. The 1-minute load
average is printed: a profile taken beside other work is indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import mlx.core as mx  # benchmarks/__init__ imports mlx_interp first (the optimised BLAS)
import mlx.nn as nn
import numpy as np

LAYER = 15


def _once(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) after one warm-up call."""
    fn()
    runs = [_once(fn) for _ in range(repeats)]
    return float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs]))


def _load(fuse: bool):
    from mlx_interp.model import load_model
    from mlx_interp.models import llama

    real = llama.ModelArgs.from_hf_config
    llama.ModelArgs.from_hf_config = classmethod(
        lambda cls, c: dataclasses.replace(real(c), fuse_projections=fuse)
    )
    try:
        return load_model("smollm2-135m")
    finally:
        llama.ModelArgs.from_hf_config = real


def components(cfg, b: int, seq: int) -> dict:
    """name -> a function doing that work of LAYER + 1 blocks at batch b x seq."""
    n_blocks, d, f = LAYER + 1, cfg.d_model, cfg.d_mlp
    nq, nkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    r = mx.random.normal
    x, h = r((b, seq, d)), r((b, seq, f))
    q, kv = r((b, nq, seq, dh)), r((b, nkv, seq, dh))
    sep = [r((nq * dh, d)), r((nkv * dh, d)), r((nkv * dh, d)), r((d, nq * dh)), r((f, d)), r((f, d)), r((d, f))]  # fmt: skip
    fused = [r(((nq + 2 * nkv) * dh, d)), r((d, nq * dh)), r((2 * f, d)), r((d, f))]
    ones = mx.ones((d,))
    mx.eval(x, h, q, kv, ones, *sep, *fused)
    freqs = mx.array(np.float32(cfg.rope_theta) ** (np.arange(0, dh, 2, dtype=np.float32) / dh))
    silu_up = mx.compile(lambda g, u: nn.silu(g) * u)
    hn = np.array(h)

    def rep(make):
        return lambda: mx.eval([make() for _ in range(n_blocks)])

    return {
        "matmuls, separate": rep(lambda: [x @ sep[i].T for i in (0, 1, 2, 3, 4, 5)] + [h @ sep[6].T]),
        "matmuls, fused": rep(lambda: [x @ fused[0].T, x @ fused[1].T, x @ fused[2].T, h @ fused[3].T]),
        "attention (sdpa)": rep(lambda: mx.fast.scaled_dot_product_attention(q, kv, kv, scale=dh**-0.5, mask="causal")),
        "rotary q, k": rep(lambda: [mx.fast.rope(a, dh, traditional=False, base=None, scale=1.0, offset=0, freqs=freqs) for a in (q, kv)]),
        "rms_norm x2": rep(lambda: [mx.fast.rms_norm(x, ones, 1e-5) for _ in range(2)]),
        "silu(gate) * up": rep(lambda: silu_up(h, h)),
        "exp (MLX), d_mlp wide": rep(lambda: mx.exp(h)),
        "exp (NumPy), d_mlp wide": lambda: [np.exp(hn) for _ in range(n_blocks)],
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    hook = f"blocks.{LAYER}.hook_resid_post"
    models = {"forward, fused": _load(True), "forward, separate": _load(False)}
    cfg = models["forward, fused"].cfg
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for b in [int(s) for s in a.batches.split(",")]:
        tokens = mx.array(rng.integers(0, cfg.d_vocab, (b, a.seq)))

        def forward(m, tokens=tokens):
            _, cache = m.run_with_cache(tokens, names_filter=[hook], stop_at_layer=LAYER + 1)
            mx.eval(cache[hook])

        # interleaved: fused, separate, fused, separate, ...
        runs = {k: [] for k in models}
        for m in models.values():
            forward(m)  # warm-up
        for _ in range(a.repeats):
            for k, m in models.items():
                runs[k].append(_once(lambda m=m: forward(m)))
        res = {k: tuple(np.median(v, axis=0)) for k, v in runs.items()}
        res.update({k: _time(fn, a.repeats) for k, fn in components(cfg, b, a.seq).items()})
        base = res["forward, fused"][0]
        print(f"batch {b} x {a.seq} ({b * a.seq} tokens), {LAYER + 1} blocks; "
              f"load average now {os.getloadavg()[0]:.2f}")  # fmt: skip
        for k, (cpu, wall) in res.items():
            print(
                f"  {k:26s} CPU {cpu * 1e3:8.0f} ms ({100 * cpu / base:4.0f}%)  wall {wall * 1e3:8.0f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
