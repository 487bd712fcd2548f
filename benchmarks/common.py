"""Timing and memory helpers shared by every benchmark.

Figures are medians over repeated runs after a warm-up, with the spread (min and max);
MLX work is synchronised with ``mx.eval`` inside the timed function, torch work runs
eagerly on the CPU (``torch.mps.synchronize()`` on a Mac). Peak memory is the process's
own peak resident set size, so a task that needs its own figure runs in a fresh process
(``run_isolated``).

Honest figures: every timing records the 1-minute load average before and after, this
process's CPU time per run, and (on Linux, from /proc/stat) how many cores *other*
processes kept busy meanwhile. A figure is marked unreliable, with the reason, when the
spread is large or the machine was busy with other work; ratios are measured in
interleaved rounds (A B A B ...) so that both sides see the same machine, and a ratio is
only as reliable as both of its figures. Report writers must not state an unreliable
figure as a finding.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mlx_interp.system import peak_rss_mb  # noqa: F401  (re-exported for the benchmarks)

# A figure is unreliable when (max - min) / median exceeds MAX_SPREAD, or when other
# processes kept more than MAX_OTHER_CORES cores busy on average while it was measured
# (without /proc/stat: when the 1-minute load average exceeded the core count).
MAX_SPREAD = 0.25
MAX_OTHER_CORES = 0.25


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine spent busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in parts[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """What the machine did while a block ran: wall and own CPU seconds, other processes'
    busy cores (Linux), the 1-minute load average before and after."""

    def __enter__(self) -> LoadMeter:
        self.load_before = os.getloadavg()[0]
        self._busy0, self._own0, self._t0 = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = _own_cpu_seconds() - self._own0
        busy1 = _busy_seconds()
        self.other_cores = (
            None
            if busy1 is None or self._busy0 is None
            else max(0.0, (busy1 - self._busy0 - self.cpu_s) / max(self.wall_s, 1e-9))
        )
        self.load_after = os.getloadavg()[0]

    def as_dict(self) -> dict:
        return {
            "load_avg": [round(self.load_before, 2), round(self.load_after, 2)],
            "other_cores": None if self.other_cores is None else round(self.other_cores, 3),
        }


def judge(spread: float, other_cores: float | None, load_avg: list[float]) -> str:
    """'' when a figure can be stated, else why not (one short phrase)."""
    why = []
    if spread > MAX_SPREAD:
        why.append(f"spread {100 * spread:.0f}% > {100 * MAX_SPREAD:.0f}%")
    if other_cores is not None:
        if other_cores > MAX_OTHER_CORES:
            why.append(f"other processes used {other_cores:.2f} cores")
    elif max(load_avg) > (os.cpu_count() or 1):
        why.append(f"load average {max(load_avg):.1f} on {os.cpu_count()} cores")
    return "; ".join(why)


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    cpu_s: float = 0.0  # this process's CPU seconds per run (median)
    load_avg: list = field(default_factory=list)  # 1-minute load average before, after
    other_cores: float | None = None  # cores other processes kept busy meanwhile (Linux)
    unreliable: str = ""  # why the figure must not be stated as a finding; '' if it may

    @property
    def reliable(self) -> bool:
        return not self.unreliable

    def per_second(self, work: float) -> float:
        """Throughput: units of work per second at the median time."""
        return work / self.median_s

    def as_dict(self) -> dict:
        return {**asdict(self), "reliable": self.reliable}


def _timing(times: list[float], cpus: list[float], meter: LoadMeter) -> Timing:
    med = statistics.median(times)
    m = meter.as_dict()
    spread = (max(times) - min(times)) / med if med > 0 else 0.0
    return Timing(
        med, min(times), max(times), len(times), statistics.median(cpus), m["load_avg"],
        m["other_cores"], judge(spread, m["other_cores"], m["load_avg"]),
    )  # fmt: skip


def time_it(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``fn`` must finish its work before returning (``mx.eval`` the results).
    """
    for _ in range(warmup):
        fn()
    times, cpus = [], []
    with LoadMeter() as meter:
        for _ in range(repeats):
            c0, t0 = _own_cpu_seconds(), time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            cpus.append(_own_cpu_seconds() - c0)
    return _timing(times, cpus, meter)


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds (A B C A B C ...) on the same machine
    state: each gets a median over ``rounds``; all share one load measurement, so that a
    ratio between two of them is never a comparison of a quiet moment with a busy one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    with LoadMeter() as meter:
        for _ in range(rounds):
            for k, fn in fns.items():
                c0, t0 = _own_cpu_seconds(), time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
                cpus[k].append(_own_cpu_seconds() - c0)
    return {k: _timing(times[k], cpus[k], meter) for k in fns}


def ratio(a: dict | Timing, b: dict | Timing) -> dict:
    """Speed of a relative to b (b's median time / a's), reliable only when both are."""
    a = a.as_dict() if isinstance(a, Timing) else a
    b = b.as_dict() if isinstance(b, Timing) else b
    whys = [(x.get("unreliable") or "") if "reliable" in x else "no load record" for x in (a, b)]
    why = "; ".join(sorted({part for w in whys for part in w.split("; ") if part}))
    return {"ratio": b["median_s"] / a["median_s"], "unreliable": why, "reliable": not why}


def fmt_ratio(r: dict) -> str:
    """'1.52x', or '1.52x (unreliable: ...)' for a ratio that is not a finding."""
    s = f"{r['ratio']:.2f}x"
    return (
        s if r.get("reliable") else f"{s} (unreliable: {r.get('unreliable') or 'no load record'})"
    )


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


def note(row: dict) -> str:
    """The load a figure was measured under, and 'UNRELIABLE: why' when it is not a finding."""
    load = row.get("load_avg") or []
    s = f"load {max(load):.1f}" if load else "load not recorded"
    if row.get("other_cores") is not None:
        s += f", others {row['other_cores']:.2f} cores"
    if not row.get("reliable"):
        s += f"; UNRELIABLE: {row.get('unreliable') or 'no load record'}"
    return s


def median_range(row: dict, scale: float = 1e3, digits: int = 0) -> str:
    """'median (min-max)' of a timed row, in seconds x ``scale`` (default: milliseconds)."""
    m, lo, hi = (scale * row[k] for k in ("median_s", "min_s", "max_s"))
    return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"
