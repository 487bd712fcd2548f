"""Timing and memory helpers shared by every benchmark.

Figures are medians over repeated runs after a warm-up, with the spread (min and max);
MLX work is synchronised with ``mx.eval`` inside the timed function, torch work runs
eagerly on the CPU (``torch.mps.synchronize()`` on a Mac). Peak memory is the process's
own peak resident set size, so a task that needs its own figure runs in a fresh process
(``run_isolated``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mlx_interp.system import peak_rss_mb  # noqa: F401  (re-exported for the benchmarks)


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def per_second(self, work: float) -> float:
        """Throughput: units of work per second at the median time."""
        return work / self.median_s

    def as_dict(self) -> dict:
        return asdict(self)


def time_it(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``fn`` must finish its work before returning (``mx.eval`` the results).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def run_isolated(module: str, args: list[str], timeout: float = 3600) -> dict:
    """Run ``python -m module args...`` in a fresh process; it prints one JSON line last.

    A fresh process makes the peak memory of one task its own, not the sum of the tasks
    before it.
    """
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=timeout, env=os.environ.copy(),
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
