"""SAE training throughput: MLX (sparse and dense TopK decode) vs torch_ref, by d_sae.

    python -m benchmarks.bench_sae [--d-in 576] [--d-sae 2304,4608,9216] [--k 32] [--batch 2048]

One timed unit is one full optimisation step of a TopK SAE (forward, backward, Adam,
decoder renormalisation, dead-latent counts) on a fixed batch, through the same backend
objects the trainer uses (``MLXBackend`` with its compiled step; torch_ref's
``TorchBackend``). "sparse" decodes from the k active latents by gathering their decoder
rows; "dense" multiplies the (batch, d_sae) activations by the whole decoder. The AuxK
term (only computed while latents are dead) is timed apart, as "+aux". Also timed: the
inference reconstruction (encode + decode) alone.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import median_range, peak_rss_mb, time_it


def bench(d_in: int, d_saes: list[int], k: int, batch: int, repeats: int, aux: bool) -> dict:
    import mlx.core as mx
    import torch

    from mlx_interp.sae import SAE
    from mlx_interp.sae.sae import init_params
    from mlx_interp.sae.training import MLXBackend, TrainConfig
    from mlx_interp.system import blas_info
    from torch_ref.sae_train import TorchBackend

    x = np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32)
    rows = []
    for d_sae in d_saes:
        variants = [("mlx", "sparse", False), ("mlx", "dense", False), ("torch", "dense", False)]
        if aux:
            variants += [("mlx", "sparse", True), ("torch", "dense", True)]
        for backend, decode, with_aux in variants:
            tc = TrainConfig(architecture="topk", d_sae=d_sae, k=k, batch_size=batch,
                             sparse_decode=decode == "sparse").resolve(d_in)  # fmt: skip
            cfg = tc.sae_config(d_in, "bench", None)
            params = init_params(cfg, seed=0)
            cls = MLXBackend if backend == "mlx" else TorchBackend
            be = cls(cfg, tc, params, 1.0)
            if with_aux:  # half the latents dead
                if backend == "mlx":
                    be.state["since_fired"] = mx.array(
                        np.where(np.arange(d_sae) % 2 == 0, 10**8, 0).astype(np.int32)
                    )
                else:
                    be.since_fired = torch.tensor(
                        np.where(np.arange(d_sae) % 2 == 0, 10**8, 0).astype(np.int32)
                    )
            step = {"t": 1}

            def run(be=be, with_aux=with_aux, step=step):
                step["t"] += 1
                be.step(x, 1e-4, 0.0, step["t"], with_aux)

            t = time_it(run, repeats)
            rows.append(dict(kind="train step", backend=backend, decode=decode + ("+aux" if with_aux else ""),
                             d_sae=d_sae, **t.as_dict(), tokens_per_s=t.per_second(batch)))  # fmt: skip
        # inference: reconstruct a batch
        cfg = (
            TrainConfig(architecture="topk", d_sae=d_sae, k=k)
            .resolve(d_in)
            .sae_config(d_in, None, None)
        )
        sae = SAE(cfg, init_params(cfg, seed=0))
        xm = mx.array(x)
        t_sparse = time_it(lambda sae=sae, xm=xm: mx.eval(sae.reconstruct(xm)), repeats)
        t_dense = time_it(lambda sae=sae, xm=xm: mx.eval(sae.decode(sae.encode(xm))), repeats)
        for decode, t in [("sparse", t_sparse), ("dense", t_dense)]:
            rows.append(dict(kind="encode+decode", backend="mlx", decode=decode, d_sae=d_sae,
                             **t.as_dict(), tokens_per_s=t.per_second(batch)))  # fmt: skip
    return {"d_in": d_in, "k": k, "batch": batch, "blas": blas_info(),
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "rows": rows}  # fmt: skip


def format_table(result: dict) -> str:
    lines = [
        f"TopK SAE, d_in {result['d_in']}, k {result['k']}, batch {result['batch']} tokens; "
        f"MLX BLAS: {result['blas']}; torch threads {result['torch_threads']}",
        "| what | backend | decode | d_sae | median ms (min-max) | tokens/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        cells = [
            r["kind"],
            r["backend"],
            r["decode"],
            r["d_sae"],
            median_range(r),
            f"{r['tokens_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", default="2304,4608,9216", help="comma-separated latent counts")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--aux", action="store_true", help="also time steps with the AuxK loss")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = p.parse_args(argv)
    d_saes = [int(s) for s in a.d_sae.split(",")]
    result = bench(a.d_in, d_saes, a.k, a.batch, a.repeats, a.aux)
    print(json.dumps(result) if a.json else format_table(result))


if __name__ == "__main__":
    main()
