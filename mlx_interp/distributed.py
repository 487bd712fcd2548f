"""Several processes on ``mx.distributed``: who am I, do we agree, wait for the others.

Started by ``mlx.launch -n N -- python ...`` (or ``-- mlx-interp ...``), every process gets
the same group; started alone, the group has one member and everything here is a no-op.
We use MLX's own launcher and collectives (ring over TCP or Thunderbolt, MPI, JACCL), never
a scheduler or socket protocol of our own.

A rank that dies makes the collectives of the others fail or hang; ``mlx.launch`` stops the
whole job when one process exits with an error, and ``barrier`` gives up after a bounded time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["World", "DistributedError", "world", "calm_launcher"]

BARRIER_TIMEOUT_S = float(os.environ.get("MLX_INTERP_BARRIER_TIMEOUT", "600"))


class DistributedError(ValueError):
    """Ranks that disagree, or a rank that did not answer in time. One line, says what to do."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` in ``0..size-1``; ``group`` is MLX's."""

    rank: int
    size: int
    group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_same(self, what: str, settings: dict) -> None:
        """Refuse to go on unless every rank was started with the same ``settings``.

        Compares a hash of the JSON of ``settings`` across ranks (all_gather of 8 bytes), so
        that two ranks started with different flags stop at once instead of writing a mix.
        """
        if self.size == 1:
            return
        import mlx.core as mx

        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        mine = np.frombuffer(digest.digest()[:8], dtype=np.int32).copy()  # 2 x int32
        every = np.asarray(self._run(lambda: mx.distributed.all_gather(mx.array(mine))))
        every = every.reshape(self.size, 2)
        differ = [r for r in range(self.size) if not np.array_equal(every[r], every[0])]
        if differ:
            raise DistributedError(
                f"{what}: ranks {differ} were started with other settings than rank 0; "
                "start every rank with the same command"
            )

    def all_sum(self, x):
        """Sum of ``x`` (an mx.array) over the ranks; ``x`` itself when alone."""
        if self.size == 1:
            return x
        import mlx.core as mx

        return self._run(lambda: mx.distributed.all_sum(x, group=self.group))

    def barrier(self, what: str) -> None:
        """Wait until every rank got here (bounded by ``BARRIER_TIMEOUT_S``)."""
        if self.size == 1:
            return
        import mlx.core as mx

        self._run(lambda: mx.distributed.all_sum(mx.array([1.0]), group=self.group), what)

    def gather_arrays(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every rank's ``arrays`` (any dtypes and shapes), on every rank, in rank order.

        Sent as one ``.npz`` byte string per rank (two ``all_gather`` calls: the lengths,
        then the bytes padded to the longest).
        """
        import io

        if self.size == 1:
            return [arrays]
        import mlx.core as mx

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = np.frombuffer(buf.getvalue(), np.uint8)
        sizes = np.asarray(
            self._run(lambda: mx.distributed.all_gather(mx.array([len(raw)], mx.int64)), "gather")
        )
        longest = int(sizes.max())
        pad = np.zeros(longest, np.uint8)
        pad[: len(raw)] = raw
        every = np.asarray(self._run(lambda: mx.distributed.all_gather(mx.array(pad)), "gather"))
        out = []
        for r in range(self.size):
            part = every[r * longest : r * longest + int(sizes[r])].tobytes()
            with np.load(io.BytesIO(part)) as z:
                out.append({k: z[k] for k in z.files})
        return out

    def merge_streams(self, items, dims: dict[str, int], header_len: int):
        """Every rank's stream merged, on every rank, into one stream in index order.

        items: this rank's iterator of ``(index, header, {name: (n, dims[name]) float32
        array})`` with increasing ``index`` (e.g. the global batch number) and a tuple of
        ``header_len`` integers. Yields ``(index, header, arrays)`` of every rank in
        increasing index order: what one process reading every batch would see. Each round
        moves one item per rank with two ``all_gather`` calls (the headers, then the rows
        padded to the longest).
        """
        if self.size == 1:
            yield from items
            return
        import mlx.core as mx

        names, width = list(dims), sum(dims.values())
        it = iter(items)
        pending: list[tuple] = []  # received, not yet handed out
        latest = [-1.0] * self.size  # the last index each rank sent (inf when it is done)
        while True:
            item = next(it, None) if latest[self.rank] != float("inf") else None
            if item is None:
                head, rows = [0] * (3 + header_len), np.zeros((0, width), np.float32)
            else:
                index, header, arrays = item
                rows = np.concatenate([arrays[n].reshape(len(arrays[n]), -1) for n in names], 1)
                head = [1, int(index), len(rows), *map(int, header)]
            heads = np.asarray(
                self._run(
                    lambda h=head: mx.distributed.all_gather(mx.array([h], mx.int64)), "merge"
                )
            )
            if not heads[:, 0].any():
                break
            longest = int(heads[:, 2].max())
            pad = np.zeros((max(longest, 1), width), np.float32)
            pad[: len(rows)] = rows
            every = np.asarray(
                self._run(lambda a=pad: mx.distributed.all_gather(mx.array(a)), "merge")
            )
            step = max(longest, 1)
            for r, h in enumerate(heads):
                if not h[0]:
                    latest[r] = float("inf")
                    continue
                latest[r] = float(h[1])
                block = every[r * step : r * step + int(h[2])]
                cols, start = {}, 0
                for n in names:
                    cols[n], start = block[:, start : start + dims[n]], start + dims[n]
                pending.append((int(h[1]), tuple(int(v) for v in h[3:]), cols))
            pending.sort(key=lambda t: t[0])
            ready = min(latest)
            while pending and pending[0][0] <= ready:
                yield pending.pop(0)
        yield from pending

    def _run(self, fn, what: str = "a collective operation"):
        """Evaluate ``fn()`` with a time limit: a dead rank must not hang the others for ever."""
        import mlx.core as mx

        result: dict = {}

        def target():
            try:
                out = fn()
                mx.eval(out)
                result["out"] = out
            except Exception as e:  # noqa: BLE001 - reported below, in one line
                result["error"] = e

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(BARRIER_TIMEOUT_S)
        if t.is_alive():
            raise DistributedError(
                f"rank {self.rank}: no answer from the other ranks after {BARRIER_TIMEOUT_S:.0f} s "
                f"({what}); a rank has probably died: see its output, then rerun the same "
                "command (each rank resumes)"
            )
        if "error" in result:
            e = result["error"]
            raise DistributedError(
                f"rank {self.rank}: {what} failed ({type(e).__name__}: {e}); a rank has "
                "probably died: rerun the same command (each rank resumes)"
            ) from None
        return result["out"]


_WORLD: World | None = None


def world() -> World:
    """This process's World (initialised once; one member when not started by mlx.launch)."""
    global _WORLD
    if _WORLD is None:
        if not _launched():
            _WORLD = World(0, 1)
        else:
            import mlx.core as mx

            g = mx.distributed.init()
            _WORLD = World(g.rank(), g.size(), g)
            if g.size() > 1:
                calm_launcher()
    return _WORLD


def calm_launcher() -> bool:
    """Give a local ``mlx.launch`` that started this rank the lowest CPU priority (nice 19).

    MLX 0.32's launcher busy-waits while the ranks run (``mlx_interp/launch.py``): on a
    machine whose cores the ranks use it takes a core from them (2-rank SAE training at
    0.75x one process instead of 1.1x, 2 cores). It only relays the ranks' output, so it
    loses nothing by running when a core is idle. Returns whether a launcher was found.
    """
    pid = os.getppid()
    for _ in range(4):  # this rank <- the launcher's shell <- the launcher
        cmd, parent = _process(pid)
        if cmd is None:
            return False
        if "mlx.launch" in cmd or "_distributed_utils.launch" in cmd:
            # on Linux a priority is per thread, and the launcher spins in its I/O threads
            tasks = Path(f"/proc/{pid}/task")
            ids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
            try:
                for tid in ids:
                    os.setpriority(os.PRIO_PROCESS, tid, 19)
            except (OSError, AttributeError):
                return False
            return True
        pid = parent
    return False


def _process(pid: int) -> tuple[str | None, int]:
    """(command line, parent pid) of a process; (None, 0) if unknown."""
    if pid <= 1:
        return None, 0
    try:  # Linux
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return cmd, parent
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS, BSD
        out = subprocess.run(["ps", "-o", "ppid=,command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.strip()  # fmt: skip
        parent, cmd = out.split(None, 1)
        return cmd, int(parent)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, 0


def _launched() -> bool:
    # mlx.launch sets these for the ring, MPI and JACCL backends; without them init() would
    # give a group of one anyway, but checking first keeps a plain run from loading anything.
    keys = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MLX_HOSTFILE", "MLX_JACCL_COORDINATOR")
    return any(k in os.environ for k in keys)
