"""Activation extraction at scale: throughput, peak memory against the number of tokens,
and an extraction killed mid-run and restarted.

    python -m benchmarks.bench_extract [--sizes 25000,50000,100000] [--layer 15] [--kill-at 50000]

Each size runs ``mlx_interp.activations.extract`` on the default corpus in a fresh process
(its peak resident memory is its own). Bounded memory means the peak stays flat as the
number of tokens grows. The restart check SIGKILLs an extraction once it has written a few
shards, reruns it to completion, and compares it row by row with the uninterrupted run of
the same size: same token ids, positions, documents and windows (no duplicates, no gaps)
and the same activations. ``--sizes 1000000`` is the full test (about 30 minutes per
million tokens at a middle layer of SmolLM2 on a 2-core CPU with OpenBLAS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import LoadMeter, judge, peak_rss_mb, run_isolated

SHARD_MB = 16.0


def task(model_name: str, layer: int, n_tokens: int, out: str, batch: int, ctx: int) -> dict:
    """One extraction in this process; prints one JSON line."""
    from mlx_interp import load_model
    from mlx_interp.activations import extract
    from mlx_interp.data import default_corpus
    from mlx_interp.system import blas_info

    model = load_model(model_name)
    texts = default_corpus("train")
    with LoadMeter() as meter:
        meta = extract(
            model,
            [f"blocks.{layer}.hook_resid_post"],
            out,
            texts,
            batch_size=batch,
            context_length=ctx,
            max_tokens=n_tokens,
            shard_mb=SHARD_MB,
        )
    dt = meter.wall_s
    load = meter.as_dict()
    why = judge(0.0, load["other_cores"], load["load_avg"])
    return {
        "tokens": meta["tokens_done"],
        "rows": meta["n_rows"],
        "shards": len(meta["shards"]),
        "seconds": dt,
        "tokens_per_s": meta["tokens_done"] / dt,
        "peak_rss_mb": peak_rss_mb(),
        "blas": blas_info(),
        "cpu_s": meter.cpu_s,
        **load,
        "unreliable": why,
        "reliable": not why,
    }


def _task_args(model, layer, n, out, batch, ctx) -> list[str]:
    return ["--task", model, str(layer), str(n), out, str(batch), str(ctx)]


def kill_and_resume(model, layer, n, out, batch, ctx, after_shards: int = 2) -> dict:
    """SIGKILL an extraction after ``after_shards`` shards, then rerun it to the end."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_extract",
        *_task_args(model, layer, n, out, batch, ctx),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta_path = Path(out) / "metadata.json"
    shards = 0
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            shards = len(json.loads(meta_path.read_text())["shards"])
        except (OSError, ValueError):
            continue
        if shards >= after_shards:
            time.sleep(1.5)  # let it get somewhere into the next shard
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    killed_at = json.loads(meta_path.read_text())
    resumed = run_isolated("benchmarks.bench_extract", _task_args(model, layer, n, out, batch, ctx))
    return {
        "killed_after_shards": len(killed_at["shards"]),
        "killed_after_tokens": killed_at["tokens_done"],
        "resumed": resumed,
    }


def same_rows(a: str, b: str) -> dict:
    """Compare two extraction folders row by row."""
    from mlx_interp.activations import load_extraction

    _, acts_a, rows_a = load_extraction(a)
    _, acts_b, rows_b = load_extraction(b)
    keys = ("window_ids", "positions")
    ids_a = set(zip(*(rows_a[k].tolist() for k in keys), strict=True))
    same = all(np.array_equal(rows_a[k], rows_b[k]) for k in rows_a)
    hook = next(iter(acts_a))
    return {
        "rows": len(rows_a["token_ids"]),
        "rows_resumed": len(rows_b["token_ids"]),
        "duplicates": len(rows_b["token_ids"])
        - len(set(zip(*(rows_b[k].tolist() for k in keys), strict=True))),
        "missing": len(ids_a - set(zip(*(rows_b[k].tolist() for k in keys), strict=True))),
        "row_metadata_identical": bool(same),
        "max_abs_diff": float(np.abs(acts_a[hook] - acts_b[hook]).max()) if same else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=15, help="middle layer of SmolLM2 (30 layers)")
    p.add_argument("--sizes", default="25000,50000,100000", help="token counts")
    p.add_argument(
        "--kill-at", type=int, default=50000, help="size of the kill/restart run (0: skip)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/bench_extract.json")
    p.add_argument("--task", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.task:
        model, layer, n, out, batch, ctx = a.task
        print(json.dumps(task(model, int(layer), int(n), out, int(batch), int(ctx))))
        return 0

    from mlx_interp.data import default_corpus

    next(default_corpus("train"))  # build the corpus cache once, outside the timings
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    results: dict = {"model": a.model, "hook": f"blocks.{a.layer}.hook_resid_post",
                     "batch_size": a.batch_size, "context_length": a.context_length,
                     "shard_mb": SHARD_MB, "sizes": []}  # fmt: skip
    try:
        for n in [int(s) for s in a.sizes.split(",")]:
            r = run_isolated(
                "benchmarks.bench_extract",
                _task_args(a.model, a.layer, n, str(tmp / f"n{n}"), a.batch_size, a.context_length),
            )
            results["sizes"].append(r)
            print(
                f"{r['tokens']:>9} tokens  {r['tokens_per_s']:7.0f} tok/s  peak RSS {r['peak_rss_mb']:6.0f} MiB"
                f"  {r['shards']} shards  ({r['seconds']:.0f} s)",
                flush=True,
            )
        if a.kill_at:
            ref = tmp / f"n{a.kill_at}"
            if not ref.exists():
                run_isolated("benchmarks.bench_extract", _task_args(a.model, a.layer, a.kill_at, str(ref), a.batch_size, a.context_length))  # fmt: skip
            k = kill_and_resume(
                a.model, a.layer, a.kill_at, str(tmp / "killed"), a.batch_size, a.context_length
            )
            k["comparison"] = same_rows(str(ref), str(tmp / "killed"))
            results["kill_and_resume"] = k
            c = k["comparison"]
            print(
                f"killed after {k['killed_after_shards']} shards ({k['killed_after_tokens']} tokens), resumed: "
                f"{c['rows_resumed']}/{c['rows']} rows, {c['duplicates']} duplicates, {c['missing']} missing, "
                f"row metadata identical: {c['row_metadata_identical']}, max |diff| {c['max_abs_diff']}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["blas"] = results["sizes"][0]["blas"] if results["sizes"] else None
    from mlx_interp.io import write_json

    os.makedirs(Path(a.out).parent, exist_ok=True)
    write_json(a.out, results)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
