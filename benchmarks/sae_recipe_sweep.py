"""The sweep behind the SAE trainer's default recipe (README, "Training recipe").

Every point trains a TopK SAE and scores explained variance on held-out rows. Data:

- ``--train DIR --heldout DIR``: two ``mlx-interp extract`` folders (real activations);
- ``--synthetic D_IN`` (default 64): a sparse-dictionary proxy: 32 x D_IN unit directions
  with power-law firing rates (about 12 active per row), log-normal scales, a mean offset and
  noise; cheap enough for a sweep on a busy CPU.

A plan file has one run per line: ``STEPS NAME field=value ...`` (TrainConfig fields, values
Python literals; defaults: TopK, k 8, d_sae 1024, batch 512 for the synthetic data, TopK k 32,
16x, batch 4096 for extractions); tokens = STEPS x batch_size. One JSON line per run is
appended to ``OUT/sweep.jsonl`` (settings, resolved lr and warm-up, held-out EV, dead
fraction, seconds, load average) and ``OUT/sweep.md`` is rewritten as a table:

    python -m benchmarks.sae_recipe_sweep --plan plan.txt --out runs/sweep [--synthetic 64]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np


def synthetic_data(n: int, d: int = 64, seed: int = 0, data_seed: int = 1) -> np.ndarray:
    """(n, d) float32 rows of the sparse-dictionary proxy (the dictionary fixed by ``seed``)."""
    n_feat = 32 * d
    g = np.random.default_rng(seed)
    dirs = g.standard_normal((n_feat, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_feat + 1) ** 0.8
    p = np.minimum(p * 12 / p.sum(), 0.5).astype(np.float32)
    mu = g.standard_normal(d) * 2.0
    scale = np.exp(g.standard_normal(n_feat) * 0.5).astype(np.float32)
    dirs = dirs.astype(np.float32)
    r = np.random.default_rng(data_seed)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 4096):
        m = min(4096, n - i)
        active = r.random((m, n_feat), dtype=np.float32) < p
        mags = np.abs(r.standard_normal((m, n_feat), dtype=np.float32) * 0.5 + 1.0) * scale
        out[i : i + m] = (active * mags) @ dirs + mu + 0.05 * r.standard_normal((m, d))
    return out


def heldout_ev(sae_folder: Path, rows: np.ndarray) -> dict:
    import mlx.core as mx

    from mlx_interp.sae import SAE
    from mlx_interp.sae.metrics import MetricAccumulator

    sae = SAE.load(sae_folder)
    acc = MetricAccumulator(sae.cfg.d_sae)
    for i in range(0, len(rows), 4096):
        xb = rows[i : i + 4096]
        f = sae.encode(mx.array(xb))
        acc.add(xb, np.asarray(sae.decode(f)), np.asarray(f))
    return acc.result()


def _read_extraction(folder: str, hook: str, max_rows: int) -> np.ndarray:
    from mlx_interp.sae.stream import extraction_source

    parts, n = [], 0
    for _, chunk in extraction_source(folder, [hook])(0):
        parts.append(chunk[hook])
        n += len(chunk[hook])
        if n >= max_rows:
            break
    return np.concatenate(parts)[:max_rows]


def run(steps: int, name: str, sets: list[str], args) -> dict:
    from mlx_interp.sae.stream import extraction_source
    from mlx_interp.sae.training import TrainConfig, train_sae

    hook = args.hook
    if args.train:
        cfg = {"architecture": "topk", "k": 32, "expansion": 16, "batch_size": 4096}
    else:
        cfg = {"architecture": "topk", "k": 8, "d_sae": 1024, "batch_size": 512}
    cfg.update(log_every=10**6, checkpoint_every=10**9)
    for item in sets:
        key, value = item.split("=", 1)
        try:
            cfg[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            cfg[key] = value
    cfg["tokens"] = steps * cfg["batch_size"]
    if args.train:
        source = extraction_source(args.train, [hook], epochs=args.epochs)
        held = _read_extraction(args.heldout, hook, 40_000)
    else:
        source = synthetic_data(cfg["tokens"], args.synthetic, data_seed=1)
        held = synthetic_data(8192, args.synthetic, data_seed=2)
    folder = Path(args.out) / "runs" / f"{name}_{steps}"
    shutil.rmtree(folder, ignore_errors=True)
    load0, t0 = os.getloadavg(), time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = train_sae(source, hook, tc=TrainConfig(**cfg), out=folder, progress=False)
    seconds = time.time() - t0
    m = heldout_ev(folder / hook, held)
    resolved = s["train_config"][hook]
    row = {
        "name": name,
        "steps": steps,
        "data": args.train or f"synthetic d_in={args.synthetic}",
        "settings": sets,
        "lr": resolved["lr"],
        "warmup_steps": resolved["lr_warmup_steps"],
        "d_sae": resolved["d_sae"],
        "heldout_ev": m["explained_variance"],
        "heldout_dead": m["dead_fraction"],
        "heldout_l0": m["l0"],
        "seconds": seconds,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    shutil.rmtree(folder, ignore_errors=True)
    return row


def write_table(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines() if line]
    lines = [
        "| data | steps | run | lr | warm-up | held-out EV | dead | s | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['steps']} | {r['name']} ({' '.join(r['settings']) or 'defaults'}) "
            f"| {r['lr']:.2g} | {r['warmup_steps']} | {r['heldout_ev']:.4f} | "
            f"{r['heldout_dead']:.3f} | {r['seconds']:.0f} | {r['loadavg_start'][0]:.1f} |"
        )
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True, help="one run per line: STEPS NAME field=value ...")
    ap.add_argument("--out", required=True)
    ap.add_argument("--synthetic", type=int, default=64, help="d_in of the synthetic proxy")
    ap.add_argument("--train", help="an extract folder (real activations) to train on")
    ap.add_argument("--heldout", help="an extract folder to score on (with --train)")
    ap.add_argument("--hook", default="h", help="the hook (with --train)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)
    if args.train and not args.heldout:
        ap.error("--train needs --heldout")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for line in Path(args.plan).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        steps, name, *sets = line.split()
        row = run(int(steps), name, sets, args)
        print(json.dumps(row), flush=True)
        with open(out / "sweep.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        write_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
