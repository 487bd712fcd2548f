"""Attribution patching (AtP) against real activation patching on every layer of a model
(README, "Attribution patching"): the numbers ``tests/test_attribution.py`` checks on a
few layers only.

Noising on a clean / corrupted pair: the real effect of a component is the corrupted
activation patched into the clean run (``activation_patching`` / ``head_patching`` with
the prompts' roles swapped) minus the clean metric; AtP estimates it from one backward
pass. Spearman rank correlation per component class (heads over hook_z at every
position; resid_pre, attn_out and mlp_out per layer and position), over all layers and
per band of layers, for the MLX AtP and for torch_ref's; the worst-estimated components;
seconds and the load average. Slow (every layer patched): minutes on a busy CPU.

    python -m benchmarks.atp_vs_patching --out benchmarks/results/atp_vs_patching.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When John and Mary went to the store, Mary gave a drink to"  # names swapped
CLEAN, CORRUPT = IOI_CLEAN, IOI_CORRUPT
HOOKS = ("hook_attn_out", "hook_mlp_out", "hook_resid_pre")


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""

    def rank(x):
        x = np.asarray(x, np.float64).ravel()
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - (counts - 1) / 2.0)[inv]

    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def _bands(n: int) -> list[tuple[int, int]]:
    edges = [0, 5, n // 3, 2 * n // 3, n]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


def _compare(effect: np.ndarray, atp: np.ndarray, labels) -> dict:
    worst = np.argsort(-np.abs(effect - atp).ravel())[:5]
    return {
        "spearman": spearman(effect, atp),
        "pearson": float(np.corrcoef(effect.ravel(), atp.ravel())[0, 1]),
        "bands": {
            f"layers {lo}-{hi - 1}": spearman(effect[lo:hi], atp[lo:hi])
            for lo, hi in _bands(len(effect))
        },  # fmt: skip
        "worst": [
            {
                "where": labels(np.unravel_index(i, effect.shape)),
                "patching": float(effect.ravel()[i]),
                "atp": float(atp.ravel()[i]),
            }
            for i in worst
        ],  # fmt: skip
    }


def main(argv=None) -> int:
    from mlx_interp import load_model
    from mlx_interp.analysis.attribution import attribution_patching
    from mlx_interp.analysis.interventions import activation_patching, head_patching
    from mlx_interp.io import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--hooks", default=",".join(HOOKS), help="per-position classes to patch")
    p.add_argument("--no-torch", action="store_true", help="skip torch_ref's AtP")
    args = p.parse_args(argv)
    model = load_model(args.model)
    ans, wrong = " Mary", " John"
    t0 = time.perf_counter()
    ar = attribution_patching(model, CLEAN, CORRUPT, ans, wrong)
    result = {
        "model": args.model, "clean": CLEAN, "corrupted": CORRUPT, "answer": ans, "wrong": wrong,
        "direction": "noising", "clean_metric": ar.clean_metric,
        "corrupted_metric": ar.corrupted_metric, "atp_s": time.perf_counter() - t0,
        "load_average_start": os.getloadavg()[0], "classes": {},
    }  # fmt: skip
    ests = {"mlx": ar}
    if not args.no_torch:
        import torch_ref
        from torch_ref.attribution import attribution_patching as torch_atp

        ests["torch_ref"] = torch_atp(torch_ref.load_model(args.model), CLEAN, CORRUPT, ans, wrong)
    toks = ar.str_tokens
    n = model.cfg.n_layers

    def per_layer(est, hook):
        return np.stack([est.scores[f"blocks.{L}.{hook}"] for L in range(n)])

    def heads(est):
        return np.stack([est.scores[f"blocks.{L}.attn.hook_z"].sum(0) for L in range(n)])

    t = time.perf_counter()
    hp = head_patching(model, CORRUPT, CLEAN, ans, wrong)
    effect = hp.patched_diff - hp.corrupted_diff
    result["classes"]["heads"] = {
        "patching_s": time.perf_counter() - t,
        **{k: _compare(effect, heads(e), lambda i: f"L{i[0]}H{i[1]}") for k, e in ests.items()},
    }
    print("heads", {k: round(v["spearman"], 3) for k, v in result["classes"]["heads"].items() if k in ests}, flush=True)  # fmt: skip
    for hook in [h.strip() for h in args.hooks.split(",") if h.strip()]:
        t = time.perf_counter()
        pr = activation_patching(model, CORRUPT, CLEAN, ans, wrong, "blocks.{L}." + hook)
        effect = pr.patched_diff - pr.corrupted_diff
        result["classes"][hook] = {
            "patching_s": time.perf_counter() - t,
            **{k: _compare(effect, per_layer(e, hook), lambda i: f"L{i[0]} {toks[i[1]]!r} (pos {i[1]})")
               for k, e in ests.items()},
        }  # fmt: skip
        print(hook, {k: round(v["spearman"], 3) for k, v in result["classes"][hook].items() if k in ests}, flush=True)  # fmt: skip
    result["load_average_end"] = os.getloadavg()[0]
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
