"""The performance table of this machine: ``python -m benchmarks [--quick]`` (or ``make bench``).

Runs, for each backend and device this machine has (MLX on its default device, PyTorch
on the CPU and, on a Mac, MPS), the same work on the same inputs:

- activation extraction (forward passes): the embedded model and GPT-2 small/medium
  shapes, a middle-layer hook with and without stop_at_layer, float32 and half precision;
- SAE training steps: TopK by width, sparse vs dense decode, MLX vs torch_ref;
- plotting: the time to make the standard analysis figures;
- scaling: extraction time and peak memory as the number of tokens grows tenfold.

Each figure is a median over repeats after a warm-up, with min and max; each task runs in
a fresh process so its peak memory (resident set size) is its own. Writes
``benchmarks/results/<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_forward
from benchmarks.common import fmt_ratio, median_range, note, ratio, run_isolated

RESULTS = Path(__file__).parent / "results"


def chip_name() -> str:
    """The processor's marketing name (Apple M2, AMD EPYC ...), as the OS reports it."""
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
        )
        return out.stdout.strip() or platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_id(chip: str, cores: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", chip.lower()).strip("-")
    return f"{platform.system().lower()}-{slug}-{cores}cores"


def section_machine() -> dict:
    import os

    from benchmarks.peak import mlx_matmul_gflops, numpy_peak_gflops
    from mlx_interp.system import machine_summary, package_versions

    cores = os.cpu_count() or 0
    chip = chip_name()
    return {
        "id": machine_id(chip, cores),
        "chip": chip,
        "cores": cores,
        "memory_gb": _memory_gb(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **machine_summary(),
        "versions": package_versions(("mlx", "torch", "transformers", "numpy", "matplotlib")),
        "numpy_matmul": numpy_peak_gflops(),
        "mlx_matmul": mlx_matmul_gflops(),
    }


def _memory_gb() -> float:
    import os

    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def section_sae(quick: bool) -> dict:
    args = ["--json", "--d-sae", "1152,2304" if quick else "2304,4608,9216",
            "--batch", "512" if quick else "2048", "--repeats", "2" if quick else "3"]  # fmt: skip
    return run_isolated("benchmarks.bench_sae", args)


def section_plots(quick: bool) -> dict:
    return run_isolated("benchmarks.bench_plots", ["--quick"] if quick else [])


def section_scaling(quick: bool) -> dict:
    from benchmarks.bench_extract import _task_args
    from mlx_interp.data import default_corpus

    next(default_corpus("train"))  # build the corpus cache outside the timings
    sizes = [500, 5000] if quick else [1000, 10000, 100000]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        for n in sizes:
            r = run_isolated(
                "benchmarks.bench_extract", _task_args("smollm2-135m", 15, n, f"{tmp}/n{n}", 8, 128)
            )
            rows.append(r)
    return {"model": "smollm2-135m", "hook": "blocks.15.hook_resid_post", "rows": rows}


def markdown(result: dict) -> str:
    m = result["machine"]
    peak = m["numpy_matmul"]["gflops"]
    out = [
        f"# Performance: {m['chip']} ({m['cores']} cores, {m['memory_gb']} GB)",
        "",
        f"{m['date']}, {m['os']} {m['machine']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        f"MLX device: {m['mlx_device']}; MLX BLAS: {m['blas']}; large buffers: {m.get('allocator', 'not recorded')}.",
        f"Measured peak (float32 {m['numpy_matmul']['n']}³ matrix product): NumPy {peak:.0f} GFLOP/s, "
        f"MLX {m['mlx_matmul']['gflops']:.0f} GFLOP/s. `% of peak` below is against NumPy's.",
        f"Mode: {'quick' if result['quick'] else 'full'}; medians over repeats after a warm-up, "
        "(min-max) in brackets; every task in its own process (peak RSS is its own); total "
        f"{result['seconds']:.0f} s.",
        "",
        "## Activation extraction (forward pass to a middle-layer hook)",
        "",
        bench_forward.format_table(result["forward"], peak),
        "",
    ]
    fwd = result["forward"]
    ratio_rows = []
    for r in fwd:
        if r["backend"] == "mlx" and r["dtype"] == "float32":
            t = next(
                (
                    x
                    for x in fwd
                    if x["backend"] == "torch"
                    and x["model"] == r["model"]
                    and x["mode"] == r["mode"]
                ),
                None,
            )
            if t:
                ratio_rows.append(f"| {r['model']} | {r['mode']} | {fmt_ratio(ratio(r, t))} |")
    if ratio_rows:
        out += ["MLX float32 / PyTorch float32 (CPU) extraction throughput, same run (a ratio is "
                "unreliable when either figure is):", "",
                "| model | mode | MLX / PyTorch |", "| --- | --- | --- |", *ratio_rows, ""]  # fmt: skip
    sae = result["sae"]
    out += [
        f"## SAE training (TopK, d_in {sae['d_in']}, k {sae['k']}, batch {sae['batch']} tokens)",
        "",
        "| what | backend | decode | d_sae | median ms (min-max) | tokens/s | GFLOP/s | % of peak | load, reliability |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sae["rows"]:
        # Dense work only: a training step is 10 d_in d_sae FLOPs per token (encoder forward
        # and weight gradient, decoder forward, weight and input gradients), inference 4.
        # The sparse decode does less work, so a FLOP rate would not compare.
        extra = "- | -"
        if r["decode"] == "dense":
            per_token = (10 if r["kind"] == "train step" else 4) * sae["d_in"] * r["d_sae"]
            gf = per_token * r["tokens_per_s"] / 1e9
            extra = f"{gf:.1f} | {100 * gf / peak:.0f}%"
        out.append(
            f"| {r['kind']} | {r['backend']} | {r['decode']} | {r['d_sae']} | {median_range(r)} | "
            f"{r['tokens_per_s']:.0f} | {extra} | {note(r)} |"
        )
    plots = result["plots"]
    out += ["", f"## Plotting ({plots['model']}, {plots['n_tokens']}-token prompt)", "",
            "| figure set | median s (min-max) | files |", "| --- | --- | --- |"]  # fmt: skip
    for r in plots["rows"]:
        out.append(f"| {r['what']} | {median_range(r, 1, 2)} | {r['files']} |")
    sc = result["scaling"]
    out += ["", f"## Scaling: extraction of {sc['hook']} ({sc['model']}) as tokens grow", "",
            "| tokens | seconds | tokens/s | peak RSS MiB | load, reliability |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in sc["rows"]:
        out.append(
            f"| {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {note(r)} |"
        )
    first, last = sc["rows"][0], sc["rows"][-1]
    out += ["", f"From {first['tokens']} to {last['tokens']} tokens ({last['tokens'] / first['tokens']:.0f}x): "
            f"time x{last['seconds'] / first['seconds']:.1f}, peak memory x{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}.", ""]  # fmt: skip
    if "compare" in result:
        from benchmarks.bench_compare import format_tables

        out += ["## Against the alternatives (interleaved rounds, `python -m benchmarks.bench_compare`)",
                "", format_tables(result["compare"]), ""]  # fmt: skip
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="CI-sized: small inputs, few repeats")
    p.add_argument("--out", default=str(RESULTS), help="folder for <machine>.md and .json")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated sections: forward, sae, plots, scaling, compare (mlx-interp "
        "against transformers, TransformerLens, SAELens); default all, without compare "
        "with --quick",
    )
    p.add_argument(
        "--render", metavar="JSON", help="only rewrite the Markdown table of a result JSON"
    )
    a = p.parse_args(argv)
    from mlx_interp.io import ensure_writable_dir, write_json, write_text

    if a.render:
        import json

        md = Path(a.render).with_suffix(".md")
        write_text(md, markdown(json.loads(Path(a.render).read_text())))
        print(f"wrote {md}")
        return 0

    out = ensure_writable_dir(a.out)
    t0 = time.perf_counter()
    default = "forward,sae,plots,scaling" + ("" if a.quick else ",compare")
    sections = set((a.only or default).split(","))
    print("machine and peak ...", flush=True)
    result = {"quick": a.quick, "machine": section_machine()}
    models = (
        ["smollm2-135m"] if a.quick else ["smollm2-135m", "gpt2-small-shape", "gpt2-medium-shape"]
    )
    steps = [
        ("forward", lambda: bench_forward.run_all(models, a.quick)),
        ("sae", lambda: section_sae(a.quick)),
        ("plots", lambda: section_plots(a.quick)),
        ("scaling", lambda: section_scaling(a.quick)),
        (
            "compare",
            lambda: run_isolated(
                "benchmarks.bench_compare", ["--json"] + (["--quick"] if a.quick else [])
            ),
        ),
    ]
    for name, fn in steps:
        if name in sections:
            print(f"{name} ...", flush=True)
            result[name] = fn()
    result["seconds"] = time.perf_counter() - t0
    stem = result["machine"]["id"] + ("-quick" if a.quick else "")
    write_json(out / f"{stem}.json", result)
    if sections >= {"forward", "sae", "plots", "scaling"}:
        md = markdown(result)
        write_text(out / f"{stem}.md", md)
        print(md)
    print(f"\nwrote {out / stem}.md and .json ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
