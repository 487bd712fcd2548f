"""Data-parallel SAE training: 2 ranks x 1 thread against 1 process x 2 threads.

    python -m benchmarks.bench_distributed [--d-sae 9216] [--steps 20] [--rounds 2]

Both train the same TopK SAE (d_in 576, k 32, batch 4096) on the same synthetic rows from
memory, in interleaved rounds (single, ranks, single, ranks, ...); each reports the
training tokens/s between its last two logged steps (compilation excluded). On one machine
the two ranks share its cores: the ratio weighs the exchange against the core that MLX's
single-threaded CPU work leaves idle in one process. Bytes exchanged per step are computed
from the all-reduced tensors. Each run records its load and other processes' cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import LoadMeter, judge

SCRIPT = """
import json, sys, numpy as np
import mlx_interp
from mlx_interp.sae.buffer import array_source
from mlx_interp.sae.training import TrainConfig, train_sae
rng = np.random.default_rng(0)
x = rng.standard_normal(({steps} * 4096, {d_in}), dtype=np.float32)  # every step a new batch
tc = TrainConfig(d_sae={d_sae}, k=32, tokens={steps} * 4096, batch_size=4096, lr=1e-3,
                 lr_warmup_steps=2, log_every={log_every}, checkpoint_every=10**9,
                 init_rows=4096, buffer_rows=65536)
s = train_sae(array_source({{"h": x}}), ["h"], {d_in}, tc, sys.argv[1], progress=False)
a, b = s["log"][-2], s["log"][-1]  # steady state: between the last two logged steps
print(json.dumps({{"tokens_per_s": (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]),
                  "with_compile": b["tokens_per_s"]}}))
"""


def _run(cmd: list[str], env: dict) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {out.stderr[-800:]}")
    return json.loads(lines[0])["tokens_per_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-sae", type=int, default=9216)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--launcher",
        choices=["mlx-interp", "mlx"],
        default="mlx-interp",
        help="mlx-interp-launch (default) or MLX's own mlx.launch",
    )
    ap.add_argument("--out", help="also write the results as JSON here")
    a = ap.parse_args(argv)
    script = SCRIPT.format(d_in=a.d_in, d_sae=a.d_sae, steps=a.steps, log_every=a.steps // 2)
    # mlx.launch itself spins a core while the ranks run (mlx_interp/launch.py); --launcher mlx
    # measures it that way
    launch = {"mlx-interp": [sys.executable, "-m", "mlx_interp.launch"],
              "mlx": [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]}[a.launcher]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.py"
        path.write_text(script)
        for r in range(a.rounds):
            for kind, threads, cmd in (
                ("1 process x 2 threads", "2", [sys.executable, str(path)]),
                ("2 ranks x 1 thread", "1", [*launch, "-n", "2", "--backend", "ring", "--",
                                              sys.executable, str(path)]),
            ):  # fmt: skip
                env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
                with LoadMeter() as meter:  # the ranks are children: their CPU time is ours
                    tps = _run([*cmd, str(Path(tmp) / f"out{r}{threads}")], env)
                rows.append({"round": r, "setup": kind, "tokens_per_s": tps,
                             "wall_s": meter.wall_s, "cpu_s": meter.cpu_s, **meter.as_dict()})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    single = [x["tokens_per_s"] for x in rows if x["setup"].startswith("1")]
    ranks = [x["tokens_per_s"] for x in rows if x["setup"].startswith("2")]
    grads = 4 * (2 * a.d_in * a.d_sae + a.d_in + a.d_sae)  # W_enc, W_dec, b_enc, b_dec
    # unreliable when either setup's rounds disagree, or other processes used the machine
    spread = max((max(v) - min(v)) / statistics.median(v) for v in (single, ranks))
    others = [x["other_cores"] for x in rows]
    why = judge(spread, None if None in others else max(others), [v for x in rows for v in x["load_avg"]])  # fmt: skip
    result = {
        "d_in": a.d_in, "d_sae": a.d_sae, "batch": 4096, "launcher": a.launcher, "rows": rows,
        "ratio_ranks_over_single": min(ranks) / max(single), "ratio_best": max(ranks) / min(single),
        "allreduce_bytes_per_step": grads + 4 * a.d_sae + 4 * 8,  # + firing counts, metrics
        "rows_exchanged_bytes_per_step": 0,  # from memory: every rank holds the rows
        "reliable": not why, "unreliable": why,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
