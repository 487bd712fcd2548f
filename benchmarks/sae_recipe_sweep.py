"""The sweep behind the SAE trainer's default recipe (README, "Training recipe").

Every point trains a TopK SAE from the same cached activations (an ``mlx-interp extract``
folder) and scores held-out explained variance on a second extraction (no model needed):

    python -m benchmarks.sae_recipe_sweep --train EXTRACT_DIR --heldout EXTRACT_DIR \\
        --out runs/sweep --steps 102 --set lr=1e-3 --set lr_warmup_frac=0.05 ...

``--set name=value`` sets a TrainConfig field (repeatable; values are Python literals);
``--steps`` sets tokens = steps x batch_size; one JSON line per run is appended to
``OUT/sweep.jsonl`` with the settings, the held-out metrics, the time and the load average.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np


def heldout_metrics(sae_folder: Path, heldout: str, hook: str, max_rows: int = 40000) -> dict:
    import mlx.core as mx

    from mlx_interp.sae import SAE
    from mlx_interp.sae.metrics import MetricAccumulator
    from mlx_interp.sae.stream import extraction_source

    sae = SAE.load(sae_folder)
    acc = MetricAccumulator(sae.cfg.d_sae)
    n = 0
    for _, chunk in extraction_source(heldout, [hook])(0):
        x = chunk[hook]
        for i in range(0, len(x), 4096):
            xb = x[i : i + 4096]
            f = sae.encode(mx.array(xb))
            acc.add(xb, np.asarray(sae.decode(f)), np.asarray(f))
        n += len(x)
        if n >= max_rows:
            break
    return acc.result()


def main(argv=None) -> int:
    from mlx_interp.sae.stream import extraction_source
    from mlx_interp.sae.training import TrainConfig, train_sae

    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=102)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    settings = {"architecture": "topk", "k": 32, "expansion": 16, "batch_size": 4096}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    settings["tokens"] = args.steps * settings["batch_size"]
    settings.setdefault("log_every", 10)
    settings.setdefault("checkpoint_every", 10**9)
    name = args.name or "_".join(s.replace("=", "") for s in args.set) or "defaults"
    run_dir = Path(args.out) / name / f"steps{args.steps}"
    shutil.rmtree(run_dir, ignore_errors=True)
    load0 = os.getloadavg()
    t0 = time.time()
    summary = train_sae(
        extraction_source(args.train, [args.hook], epochs=args.epochs),
        [args.hook],
        None,
        TrainConfig(**settings),
        run_dir,
        progress=False,
    )
    seconds = time.time() - t0
    m = heldout_metrics(run_dir / args.hook, args.heldout, args.hook)
    final = summary["hooks"][args.hook]["final"]
    row = {
        "name": name,
        "steps": args.steps,
        "settings": settings,
        "resolved": {
            k: summary["train_config"][args.hook][k]
            for k in ("lr", "lr_warmup_steps", "lr_decay_frac", "d_sae")
        },
        "train_ev_last_window": final["explained_variance"],
        "heldout_ev": m["explained_variance"],
        "heldout_l0": m["l0"],
        "heldout_dead": m["dead_fraction"],
        "heldout_rows": m["n_rows"],
        "seconds": seconds,
        "tokens_per_s": summary["tokens"] / seconds,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "sweep.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
