"""``mlx.launch`` without its busy wait: ``mlx-interp-launch`` takes exactly mlx.launch's
arguments (``-n``, ``--hostfile``, ``--backend``, ...) and runs MLX's own launcher.

MLX 0.32's launcher spins a core while its ranks run: each rank's I/O thread selects on
the child's stdin pipe, which is always writable, so ``select`` never blocks; and its main
loop polls our stdin, which at end of file (``< /dev/null``, CI, a pipe) is always
readable. Measured on a 2-core machine: the launcher took 85 % of a core, and two ranks
stepping an SAE (2048 rows each) took 2.4 s a step instead of 1.3 s; 2-rank training in
benchmarks/bench_distributed.py ran at 0.75x one process instead of 1.1x. Here ``select``
waits only for the ranks' output; keyboard input is not passed on to the ranks (no
mlx-interp command reads it). Ranks under plain ``mlx.launch`` lower its priority instead
(``distributed.calm_launcher``), which only helps where it runs on a rank's machine.
"""

from __future__ import annotations

import select as _select_module
import sys
import time

__all__ = ["main", "quiet_select"]


def quiet_select(rlist, wlist, xlist, timeout=None):
    """``select.select`` that never waits on writability (the ranks' stdin pipes) and
    sleeps instead of polling a stdin that is not a terminal."""
    if not rlist or (list(rlist) == [_stdin_fd()] and not sys.stdin.isatty()):
        time.sleep(timeout or 0)
        return [], [], []
    ready, _, exc = _select_module.select(rlist, [], xlist, timeout)
    return ready, [], exc


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # closed, or replaced (pytest's capture)
        return None


def main(argv: list[str] | None = None) -> int:
    """Run ``mlx.launch`` (MLX's own launcher) with ``quiet_select``."""
    from mlx._distributed_utils import launch

    launch.select = quiet_select
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return launch.main() or 0


if __name__ == "__main__":
    sys.exit(main())
