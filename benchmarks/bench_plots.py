"""Time to make the standard figures on the embedded model.

    python -m benchmarks.bench_plots [--quick]

Two figure sets: the residual-norm heatmap of one prompt (what the demo draws), and every
analysis of ``mlx-interp analyze`` for one prompt (norms, neurons, token similarity,
logit lens, word groups, positional effects over held-out text). Model time is included:
this is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import peak_rss_mb, time_it


def task(quick: bool) -> dict:
    from mlx_interp import load_model
    from mlx_interp.analysis import run_all
    from mlx_interp.analysis.plots import residual_norm_heatmap
    from mlx_interp.data import HEATMAP_TEXT, default_corpus

    model = load_model("smollm2-135m")
    repeats = 2 if quick else 3
    texts = [t for t, _ in zip(default_corpus("heldout"), range(50), strict=False)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        heat = time_it(
            lambda: residual_norm_heatmap(model, HEATMAP_TEXT, Path(tmp) / "r.png"), repeats
        )
        rows.append(dict(what="residual-norm heatmap", files=2, **heat.as_dict()))
        files: list = []

        def analyze():
            files[:] = run_all(model, [HEATMAP_TEXT], Path(tmp) / "all", texts,
                               max_tokens=256 if quick else 2048, log=lambda *a: None)  # fmt: skip

        t = time_it(analyze, repeats=1 if quick else 2, warmup=0 if quick else 1)
        rows.append(dict(what="mlx-interp analyze, 1 prompt", files=len(files), **t.as_dict()))
    n_tokens = int(model.to_tokens(HEATMAP_TEXT).shape[1])
    return {
        "model": "smollm2-135m",
        "n_tokens": n_tokens,
        "rows": rows,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(task(a.quick)))


if __name__ == "__main__":
    main()
