"""Matryoshka BatchTopK against plain BatchTopK at the same budget: held-out explained
variance of each dictionary prefix (latents 0..w-1 alone) and of the whole SAE.

    python -m benchmarks.matryoshka_prefixes [--steps 400] [--out benchmarks/results/matryoshka_prefixes.json]

Data: the sparse-dictionary proxy of ``benchmarks.sae_recipe_sweep`` (d_in 64, power-law
firing rates, so that some features are far more frequent than others); 1024 latents, k 8,
batch 512, the trainer's default recipe; prefixes 64, 256, 1024. A BatchTopK SAE's latents
come in no order, so its prefixes are arbitrary subsets: the comparison shows what the
nested losses buy (coarse, frequent features in the first latents) and what they cost at
full width. The load average is recorded: timings on a shared machine are contended.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.sae_recipe_sweep import synthetic_data

WIDTHS = [64, 256, 1024]


def run(steps: int) -> dict:
    import mlx.core as mx

    from mlx_interp.sae import SAE
    from mlx_interp.sae.metrics import PrefixMetrics
    from mlx_interp.sae.training import TrainConfig, train_sae

    train = synthetic_data(512 * steps, 64, data_seed=1)
    heldout = synthetic_data(20000, 64, data_seed=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("batchtopk", "matryoshka_batchtopk"):
            extra = {"matryoshka_widths": WIDTHS} if arch != "batchtopk" else {}
            tc = TrainConfig(architecture=arch, d_sae=1024, k=8, batch_size=512,
                             tokens=512 * steps, log_every=100, **extra)  # fmt: skip
            t0 = time.perf_counter()
            s = train_sae(train, "h", 64, tc, Path(tmp) / arch, progress=False, warn=lambda m: None)
            seconds = time.perf_counter() - t0
            sae = SAE.load(Path(tmp) / arch / "h")
            p = sae.numpy_params()
            pm = PrefixMetrics(WIDTHS, p["W_dec"], p["b_dec"])
            pm.add(heldout, np.array(sae.encode(mx.array(heldout))))
            rows.append({"architecture": arch, "steps": steps, "seconds": round(seconds, 1),
                         "dead_fraction": s["log"][-1]["h"]["dead_fraction"],
                         "prefixes": pm.result()})  # fmt: skip
    return {"rows": rows, "load_average": os.getloadavg(), "widths": WIDTHS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    res = run(args.steps)
    print("| run | " + " | ".join(f"EV of latents 0..{w - 1}" for w in WIDTHS) + " | dead |")
    print("| --- |" + " --- |" * (len(WIDTHS) + 1))
    for r in res["rows"]:
        evs = " | ".join(f"{p['explained_variance']:.3f}" for p in r["prefixes"])
        print(f"| {r['architecture']} ({r['steps']} steps) | {evs} | {r['dead_fraction']:.1%} |")
    print(f"load average {res['load_average']}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
