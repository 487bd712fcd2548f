"""The written report, assembled from the saved artefacts of a run folder.

A run folder holds what the pipeline stages wrote (``mlx-interp demo`` makes one):

    basics/     predictions.json, parity.json, residual_norms.png/.csv, machine.json
    analysis/   index.md and the figures of ``mlx-interp analyze``
    sae/        training.json and the SAE folder(s) of ``mlx-interp train-sae``
    sae_eval/   metrics.json, feature_density.png of ``mlx-interp eval-sae``
    features/   summary.json, comparison.json/.png, index.html, cards/ of ``mlx-interp features``
    mlp/        summary.json, mlp_by_layer.png, neuron_rank_heatmap.png of ``mlx-interp mlp-analysis``
    diff/       summary.json, diff_by_layer.png of ``mlx-interp diff``
    bench/      <machine>.md/.json of ``python -m benchmarks``

Every number in the report is read from those files; a missing stage is said to be
missing, not filled in. ``mlx-interp report --run DIR --out report.md``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .io import write_text
from .system import CHROMIUM_FLAGS, find_chromium


def _load(path: Path):
    """A run artefact's JSON, None when the stage did not write it; a one-line error naming
    the file when it is there but damaged."""
    from .io import read_json

    if not path.is_file():
        return None
    return read_json(
        path, "rerun the stage that wrote it (delete its folder and run the demo again)"
    )


class Report:
    def __init__(self, run: Path, out: Path):
        self.run, self.out, self.lines = run, out, []
        self.observations: list[str] = []  # measured facts that seed the conclusions

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.out.parent).replace(os.sep, "/")

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, path: Path, caption: str) -> None:
        if path.exists():
            self.add(f"![{caption}]({self.rel(path)})", "", f"*{caption}*", "")

    def missing(self, stage: str, command: str) -> None:
        self.add(f"_Not run: no `{stage}/` in the run folder (`{command}`)._", "")

    def artefact(self, name: str, command: str):
        """The JSON file ``name`` (``stage/file.json``) of the run, or None after saying
        that its stage was not run (by ``command``)."""
        data = _load(self.run / name)
        if not data:
            self.missing(name.split("/")[0], command)
        return data


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def setup_section(r: Report) -> None:
    machine = _load(r.run / "basics" / "machine.json") or {}
    training = _load(r.run / "sae" / "training.json") or {}
    bench = (
        next(iter(sorted((r.run / "bench").glob("*.json"))), None)
        if (r.run / "bench").exists()
        else None
    )
    bench_machine = (_load(bench) or {}).get("machine", {}) if bench else {}
    r.add("## Set-up", "")
    rows = [
        ("machine", f"{bench_machine.get('chip', machine.get('processor', '?'))}, "
                    f"{bench_machine.get('cores', '?')} cores, {bench_machine.get('memory_gb', '?')} GB"),
        ("OS", f"{machine.get('os', '?')} {machine.get('machine', '')}"),
        ("MLX device / BLAS", f"{machine.get('mlx_device', '?')} / {machine.get('blas', '?')}"),
        ("versions", ", ".join(f"{k.removesuffix('_version')} {v}" for k, v in machine.items() if k.endswith("_version"))),
    ]  # fmt: skip
    pipeline = _load(r.run / "pipeline.json") or {}
    if pipeline:
        rows += [("model", pipeline.get("model", "?")), ("data", pipeline.get("data", "?")),
                 ("seed", str(pipeline.get("seed", "?")))]  # fmt: skip
    for hook, tc in (training.get("train_config") or {}).items():
        keys = ("architecture", "d_sae", "k", "tokens", "batch_size", "lr", "seed", "sparse_decode")
        rows.append((f"SAE training ({hook})", ", ".join(f"{k}={tc[k]}" for k in keys if k in tc)))
    r.add("| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], "")


def activations_section(r: Report) -> None:
    r.add("## Activation experiments", "")
    basics = r.run / "basics"
    preds = _load(basics / "predictions.json")
    if preds:
        r.add("Next-token predictions of the model (top 5, probability):", "",
              "| prompt | predictions |", "| --- | --- |")  # fmt: skip
        for p in preds:
            shown = ", ".join(f"{t['token']!r} ({t['p']:.2f})" for t in p["top"])
            r.add(f"| {p['prompt']!r} | {shown} |")
        r.add("")
    r.figure(
        basics / "residual_norms.png",
        "Residual-stream norm by token and layer (log scale); numbers in residual_norms.csv",
    )
    norms_csv = basics / "residual_norms.csv"
    if norms_csv.exists():
        import csv

        with open(norms_csv, newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        vals = np.array([[float(v) for v in row[2:]] for row in body])
        pos0, rest = vals[0], np.median(vals[1:], axis=0) if len(vals) > 1 else vals[0]
        ratio = pos0 / np.maximum(rest, 1e-9)
        j = int(np.argmax(ratio))
        r.observations.append(
            f"position 0 carries a massive activation: at {header[2 + j]} its residual norm is "
            f"{pos0[j]:.0f}, {ratio[j]:.0f}x the median of the other tokens ({rest[j]:.0f})"
        )
    analysis = r.run / "analysis"
    index = analysis / "index.md"
    if not index.exists():
        r.missing("analysis", "mlx-interp analyze")
        return
    for line in index.read_text().splitlines()[3:]:  # its own title and model line are ours
        line = line.replace("](", f"]({r.rel(analysis)}/") if line.startswith("![") else line
        line = line.replace("](views/", f"]({r.rel(analysis)}/views/")  # interactive views
        if line.startswith("Numbers: "):
            line = "Numbers: " + ", ".join(
                f"`{r.rel(analysis)}/{n.strip(' `')}`" for n in line[9:].split(",")
            )
        r.add(("##" + line) if line.startswith("#") else line)  # under this section
    r.add("")
    sem = _load(analysis / "semantic_similarity.json")
    if sem and sem.get("best_layer"):
        r.observations.append(
            f"related words (animals, vehicles, fruits in shared templates) separate most clearly at "
            f"{sem['best_layer']} (the largest within-group minus between-group centred similarity)"
        )


def sae_section(r: Report) -> None:
    r.add("## Sparse autoencoder", "")
    training = r.artefact("sae/training.json", "mlx-interp train-sae")
    if not training:
        return
    hook = next(iter(training["hooks"]))
    log = training.get("log") or []
    if log:
        png = r.run / "sae" / "training_curves.png"
        _training_curves(log, hook, png)
        r.figure(
            png,
            f"Training curves of the SAE at {hook} ({training['tokens']} tokens, {training['backend']})",
        )
    final = training["hooks"][hook].get("final") or {}
    epochs = (training.get("data") or {}).get("epochs", 1)
    reads = f", activations extracted once and read {epochs} times" if epochs > 1 else ""
    window = (training.get("train_config") or {}).get(hook, {}).get("dead_tokens")
    dead = f"dead fraction {_fmt(final.get('dead_fraction'))}"
    if window and window >= training["tokens"]:  # no latent can go unfired that long
        dead += f" (a latent counts as dead after {window} tokens unfired, more than the run)"
    r.add(f"Trained for {training['steps']} steps ({training['tokens']} tokens{reads}) with the "
          f"{training['backend']} backend; at the end of training: L0 {_fmt(final.get('l0'))}, "
          f"explained variance {_fmt(final.get('explained_variance'))}, {dead}.", "")  # fmt: skip
    metrics = r.artefact("sae_eval/metrics.json", "mlx-interp eval-sae")
    if not metrics:
        return
    r.add(f"Evaluated on {metrics['n_rows']} held-out tokens ({metrics.get('data', '?')}):", "",
          "| metric | value |", "| --- | --- |")  # fmt: skip
    for key, label in [("l0", "L0"), ("explained_variance", "explained variance"),
                       ("normalized_mse", "normalised MSE"), ("cosine_similarity", "cosine similarity"),
                       ("dead_fraction", "dead fraction"), ("dense_fraction", "dense fraction (> 10 %)"),
                       ("ce_loss_clean", "CE loss, clean"), ("ce_loss_sae", "CE loss, SAE spliced in"),
                       ("ce_loss_zero_ablation", "CE loss, zero ablation"),
                       ("ce_loss_recovered", "CE loss recovered"), ("kl_div", "KL(clean ‖ SAE), nats")]:  # fmt: skip
        if key in metrics:
            r.add(f"| {label} | {_fmt(metrics[key], 4)} |")
    prefixes = metrics.get("matryoshka_prefixes")
    if prefixes:  # a Matryoshka SAE: each nested dictionary on its own
        r.add("", "Matryoshka prefixes (the first w latents alone):", "",
              "| width | L0 | explained variance |", "| --- | --- | --- |")  # fmt: skip
        for pr in prefixes:
            r.add(f"| {pr['width']} | {_fmt(pr['l0'], 2)} | {_fmt(pr['explained_variance'], 4)} |")
    core = metrics.get("saebench")
    if core:  # SAEBench's core metrics, under SAEBench's names (mlx_interp.sae.metrics)
        r.add("", "SAEBench core metrics (Karvonen et al. 2025; definitions in "
              "`mlx_interp/sae/metrics.py`):", "", "| SAEBench metric | value |", "| --- | --- |")  # fmt: skip
        for key in ("kl_div_score", "ce_loss_score", "l2_ratio", "relative_reconstruction_bias",
                    "frac_alive", "average_max_decoder_cosine_sim", "freq_over_1_percent",
                    "freq_over_10_percent"):  # fmt: skip
            if key in core:
                r.add(f"| `{key}` | {_fmt(core[key], 4)} |")
    r.add("", metrics.get("note", ""), "")
    r.figure(
        r.run / "sae_eval" / "feature_density.png",
        "log10 feature density over the evaluation tokens",
    )
    r.observations.append(
        f"the {metrics.get('architecture', '')} SAE at {metrics.get('hook', hook)} reaches explained variance "
        f"{_fmt(metrics.get('explained_variance'))} at L0 {_fmt(metrics.get('l0'))}, recovers "
        f"{_fmt(metrics.get('ce_loss_recovered'))} of the cross-entropy loss, with "
        f"{_fmt(metrics.get('dead_fraction'))} of its latents dead"
    )


def _training_curves(log: list[dict], hook: str, png: Path) -> None:
    from .analysis.plots import plt, save_figure

    steps = [row.get("step", i) for i, row in enumerate(log)]
    keys = [
        ("mse", "MSE"),
        ("explained_variance", "explained variance"),
        ("l0", "L0"),
        ("dead_fraction", "dead fraction"),
    ]
    keys = [(k, label) for k, label in keys if k in log[0].get(hook, {})]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0))
    for ax, (k, label) in zip(np.atleast_1d(axes), keys, strict=True):
        ax.plot(steps, [row[hook][k] for row in log])
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"SAE training at {hook}")
    fig.tight_layout()
    save_figure(fig, png)


def features_section(r: Report) -> None:
    r.add("## Feature analysis", "")
    f = r.run / "features"
    summary = _load(f / "summary.json")
    if not summary:
        r.missing("features", "mlx-interp features")
        return
    cmp_md = f / "comparison.md"
    if cmp_md.exists():
        r.add(*cmp_md.read_text().splitlines(), "")
    r.figure(
        f / "comparison.png",
        "Monosemanticity of SAE features vs the model's neurons (held-out data)",
    )
    cmp = _load(f / "comparison.json") or {}
    s, neurons = cmp.get("sae", {}), cmp.get("neurons", {})
    for name, n in neurons.items():
        try:
            sp, np_ = s["purity"]["median"], n["purity"]["median"]
            se, ne = s["entropy_bits"]["median"], n["entropy_bits"]["median"]
        except (KeyError, TypeError):
            continue
        r.observations.append(
            f"on held-out text, SAE features are {'more' if sp > np_ else 'not more'} monosemantic than "
            f"the neurons of {name}: median top-token purity {sp:.3f} vs {np_:.3f}, median "
            f"top-token entropy {se:.2f} vs {ne:.2f} bits"
        )
    r.add(f"Dashboards: [{r.rel(f / 'index.html')}]({r.rel(f / 'index.html')}) (open in a browser; "
          "sortable by density, max activation and monosemanticity, with a token search).", "")  # fmt: skip
    cards = sorted((f / "cards").glob("*.png"))[:4]
    for card in cards:
        r.figure(card, f"Feature card {card.stem.split('_')[-1]}")


def mlp_section(r: Report) -> None:
    """Only when the run has an ``mlp/`` folder (``mlx-interp mlp-analysis``)."""
    m = r.run / "mlp"
    s = _load(m / "summary.json")
    if not s:
        return
    r.add("## MLP neurons across layers", "",
          f"{s['tokens_counted']} tokens of {s['data']}, {len(s['layers'])} layers x {s['d_mlp']} neurons "
          f"(`blocks.L.mlp.hook_post`; position 0, special tokens and massive rows left out), "
          f"{s['tokens_per_s']:.0f} tokens/s, peak RSS {s['peak_rss_mb']:.0f} MiB.", "",
          "| layer | mean ‖MLP out‖ | ‖MLP out‖ / ‖resid‖ | dead | dense | median purity | median entropy (bits) | median explanation |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    rows = s["by_layer"]
    step = max(1, len(rows) // 12)
    for row in rows[::step]:
        r.add(f"| {row['layer']} | {_fmt(row['mlp_out_norm'])} | {_fmt(row['mlp_out_relative'])} | "
              f"{_fmt(row['dead_fraction'])} | {_fmt(row['dense_fraction'])} | {_fmt(row['median_purity'])} | "
              f"{_fmt(row['median_entropy_bits'])} | {_fmt(row['median_explanation'])} |")  # fmt: skip
    r.add("")
    r.figure(m / "mlp_by_layer.png", "MLP neurons by layer: norms, firing, monosemanticity")
    r.figure(m / "neuron_rank_heatmap.png", "Layer x neuron rank: density and max activation")
    per_token = m / "top_neurons_per_token.md"
    if per_token.exists():
        r.add(*per_token.read_text().splitlines()[:12], "")
    r.add(f"Neuron dashboards: [{r.rel(m / 'index.html')}]({r.rel(m / 'index.html')}).", "")
    pur = [(row["median_purity"], row["layer"]) for row in rows if row["median_purity"] is not None]
    if pur:
        best = max(pur)
        r.observations.append(
            f"MLP neurons are most monosemantic at layer {best[1]} (median top-token purity {best[0]:.2f}); "
            f"dense neurons (density > 0.1) make up {min(x['dense_fraction'] for x in rows):.2f} to "
            f"{max(x['dense_fraction'] for x in rows):.2f} of each layer"
        )


def diff_section(r: Report) -> None:
    """Only when the run has a ``diff/`` folder (``mlx-interp diff``)."""
    d = r.run / "diff"
    s = _load(d / "summary.json")
    if not s:
        return
    r.add("## Model diff", "")
    md = d / "diff.md"
    if md.exists():
        r.add(*md.read_text().splitlines(), "")
    r.figure(d / "diff_by_layer.png", f"{s['tuned']} against {s['base']}, per layer")
    r.figure(d / "neuron_change_heatmap.png", "Change of each layer's MLP neurons, by rank")
    fd = s.get("first_difference")
    r.observations.append(
        f"{s['tuned']} first departs from {s['base']} at {fd['hook']} (relative difference "
        f"{fd['rel_diff']:.3g}); its MLP output changes most at layer {s['most_changed_mlp_layer']}, "
        f"and the output distributions differ by {s['output_kl']:.3g} nats (KL)"
        if fd
        else f"{s['tuned']} and {s['base']} compute the same activations on these tokens"
    )


def parity_section(r: Report) -> None:
    from .parity import ParityReport, Row

    r.add("## Parity between the backends", "")
    data = r.artefact("basics/parity.json", "mlx-interp parity")
    if not data:
        return
    rep = ParityReport(data["source"], data["dtype"], data["n_tokens"],
                       [Row(x["name"], tuple(x["shape"]), x["rel_error"], x["tolerance"]) for x in data["rows"]])  # fmt: skip
    r.add(rep.summary() + ".", "", rep.by_kind(), "")
    r.observations.append(
        f"MLX and the PyTorch reference agree at every hook point ({rep.summary()})"
    )
    if (r.run / "basics" / "quantization_error.png").exists():
        r.add("What 4-bit and 8-bit weights (mlx-lm's affine quantization, group size 64) "
              "change, layer by layer, against float32 (`mlx-interp parity --quantize 4`):", "")  # fmt: skip
        r.figure(r.run / "basics" / "quantization_error.png", "Quantization error per layer")


def bench_section(r: Report) -> None:
    r.add("## Performance", "")
    mds = sorted((r.run / "bench").glob("*.md")) if (r.run / "bench").exists() else []
    if not mds:
        r.missing("bench", "python -m benchmarks --quick")
        return
    text = mds[0].read_text().splitlines()
    r.add(*[("#" + line) if line.startswith("#") else line for line in text[1:]], "")
    data = _load(mds[0].with_suffix(".json")) or {}
    fwd = data.get("forward", [])
    mlx = next(
        (
            x
            for x in fwd
            if x["backend"] == "mlx" and x["dtype"] == "float32" and x["mode"] == "full pass"
        ),
        None,
    )
    tch = next((x for x in fwd if x["backend"] == "torch" and x["mode"] == "full pass"), None)
    if mlx and tch:
        ratio = mlx["tokens_per_s"] / tch["tokens_per_s"]
        why = [w for w in (_unreliable(mlx), _unreliable(tch)) if w]
        if why:  # a contended figure is printed in the table, never stated as a finding
            r.add(
                f"The MLX / PyTorch extraction ratio of this run ({ratio:.1f}x) is not a finding: "
                f"{'; '.join(sorted(set(why)))}. Rerun `python -m benchmarks` on an idle machine.",
                "",
            )
        else:
            r.observations.append(
                f"on this machine MLX ({mlx['device']}) extracts {ratio:.1f}x as many tokens per "
                f"second as PyTorch ({tch['device']}) in float32 (load average "
                f"{max(mlx['load_avg'] + tch['load_avg']):.1f}, measured by `python -m benchmarks`)"
            )


def _unreliable(row: dict) -> str:
    """Why a benchmark figure must not be stated as a finding ('' when it may be): the
    benchmark marks contended or noisy figures; one without a load record is not trusted."""
    if "reliable" not in row or "load_avg" not in row:
        return "measured without a load record"
    return "" if row["reliable"] else row.get("unreliable") or "marked unreliable"


def conclusions_section(r: Report) -> None:
    r.add("## Conclusions and research proposal", "",
          "Measured in this run (each sentence is generated from the artefacts above):", "")  # fmt: skip
    r.add(
        *[f"- {o[0].upper()}{o[1:]}." for o in r.observations] or ["- (no stage produced numbers)"],
        "",
    )
    r.add(
        "Proposal, seeded by these observations (to be completed by the author):",
        "",
        "1. *Massive activations.* Characterise the direction carried by position 0: which block writes it, "
        "whether attention sinks read it, and whether an SAE trained with those rows included spends latents on it.",
        "2. *Where meaning separates.* Train SAEs at the layer where word groups separate most and at an earlier "
        "layer; compare feature purity and explanation scores between the two.",
        "3. *Monosemanticity vs width.* Repeat the SAE-vs-neuron comparison across expansion factors and k, on "
        "held-out text, to see where features stop becoming purer.",
        "4. *Causal checks.* For the purest features, steer and ablate (`mlx_interp.features.interventions`) and "
        "measure the next-token loss change on held-out text, in both backends.",
        "",
    )


def build_report(
    run: str | os.PathLike, out: str | os.PathLike | None = None, pdf: bool = True
) -> Path:
    """Write the report for ``run``: Markdown (default ``run/report.md``), the same as HTML
    beside it (``report.html``: figures embedded, styled tables, links to the dashboards and
    views) and, when ``pdf`` and Chromium is installed, ``report.pdf`` printed from the HTML
    by headless Chromium (else by pandoc, when installed). Returns the Markdown path."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"run folder {run} does not exist; run `mlx-interp demo` or pass --run")
    if not any(not p.name.startswith((".", "report.")) for p in run.iterdir()):
        raise ValueError(
            f"{run} holds no run artefacts (pipeline.json, basics/, sae/, ...); run `mlx-interp "
            f"demo --out {run}` first, or pass the run folder with --run"
        )
    out = Path(out) if out else run / "report.md"
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the Markdown file to write")
    r = Report(run, out.resolve() if out.is_absolute() else (Path.cwd() / out))
    pipeline = _load(run / "pipeline.json") or {}
    title = f"mlx-interp report: {pipeline.get('model', run.name)}"
    r.add(f"# {title}", "")
    for section in (setup_section, pages_section, activations_section, sae_section, features_section,
                    mlp_section, diff_section, parity_section, bench_section, conclusions_section):  # fmt: skip
        try:
            section(r)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            stage = section.__name__.removesuffix("_section")
            raise ValueError(
                f"an artefact in {run} read by the {stage} section is malformed ({type(e).__name__}: "
                f"{e}); rerun the stage that wrote it"
            ) from None
    from .io import output_folder

    with output_folder(out.parent):
        write_text(out, "\n".join(r.lines) + "\n")
    try:
        html_path = write_html(out, title)
    except ImportError:  # an environment set up before `markdown` became a dependency
        print("no report.html: it needs the markdown package (pip install markdown)")
        return out
    pdf_path = out.with_suffix(".pdf")
    if pdf and find_chromium():
        html_to_pdf(html_path, pdf_path)
    elif pdf and shutil.which("pandoc"):
        subprocess.run(["pandoc", out.name, "-o", pdf_path.name],
                       cwd=out.parent, capture_output=True, check=False)  # fmt: skip
    return out


def pages_section(r: Report) -> None:
    """Links to the interactive pages of the run: views (attention, activations, logit lens)
    and the feature dashboards."""
    views = sorted((r.run / "analysis" / "views").glob("*.html"))
    index = r.run / "features" / "index.html"
    if not views and not index.exists():
        return
    r.add("## Interactive pages", "",
          "Standalone HTML (no server, no network): open them in a browser beside this report.", "")  # fmt: skip
    kinds = {"attention": "attention patterns of every head (hover a token: what it attends to)",
             "logit_lens": "logit lens (hover a cell: the top predictions of that layer)",
             "neuron": "a neuron's activation at every token"}  # fmt: skip
    for v in views:
        what = next((d for k, d in kinds.items() if k in v.stem), v.stem)
        prompt = v.stem.split("_")[0]
        label = f"{prompt}: {what}" if prompt.startswith("p") and prompt[1:].isdigit() else what
        r.add(f"- [{r.rel(v)}]({r.rel(v)}): {label}")
    if index.exists():
        r.add(f"- [{r.rel(index)}]({r.rel(index)}): the SAE feature dashboards "
              "(sortable, searchable; a page per feature)")  # fmt: skip
    r.add("")


# ----------------------------------------------------------------------------- HTML and PDF
REPORT_CSS = """
:root{--ink:#1f2328;--muted:#59636e;--rule:#d1d9e0;--head:#f0f3f6;--accent:#0b5cad}
html{font-family:"Source Sans 3","Helvetica Neue",Helvetica,Arial,sans-serif;color:var(--ink);
 font-size:15px;line-height:1.5}
body{max-width:58em;margin:2em auto;padding:0 1.5em}
h1{font-size:1.9em;margin:0 0 .2em;border-bottom:3px solid var(--accent);padding-bottom:.25em}
h2{font-size:1.35em;margin:1.8em 0 .5em;border-bottom:1px solid var(--rule);padding-bottom:.15em;color:var(--accent)}
h3{font-size:1.12em;margin:1.4em 0 .4em} h4{font-size:1em;margin:1.2em 0 .3em}
h2,h3,h4{break-after:avoid} p,li{orphans:3;widows:3} a{color:var(--accent)}
.meta{color:var(--muted);font-size:.9em;margin-bottom:1.2em}
nav.toc{background:#f6f8fa;border:1px solid var(--rule);border-radius:6px;padding:.6em 1.2em;margin:1em 0 1.5em}
nav.toc ol{margin:.3em 0;padding-left:1.4em} nav.toc b{font-size:.95em}
table{border-collapse:collapse;margin:.8em 0 1.2em;font-size:.86em;font-variant-numeric:tabular-nums;
 break-inside:auto}
th,td{border:1px solid var(--rule);padding:.28em .6em;vertical-align:top}
th{background:var(--head);text-align:left;font-weight:600} tr:nth-child(even) td{background:#fafbfc}
tr{break-inside:avoid} table.wide{font-size:.72em} table.wide th,table.wide td{padding:.2em .35em}
td:not(:first-child){font-variant-numeric:tabular-nums}
code{font-family:"JetBrains Mono",Menlo,Consolas,monospace;font-size:.88em;background:#f3f4f6;
 padding:.05em .3em;border-radius:3px}
pre{background:#f6f8fa;padding:.6em;border-radius:4px;overflow-x:auto}
figure{margin:1.2em 0;text-align:center;break-inside:avoid}
figure img{max-width:92%;max-height:118mm;border:1px solid #eee}
figcaption{color:var(--muted);font-size:.88em;font-style:italic;margin-top:.3em}
@page{size:A4;margin:15mm 13mm 16mm}
@media print{html{font-size:10.5pt} body{max-width:none;margin:0;padding:0}
 a{color:inherit;text-decoration:none} nav.toc{break-inside:avoid} h2{break-before:auto}}
"""


def markdown_to_html(text: str, base: Path, title: str) -> str:
    """The report's Markdown as one standalone HTML page: images relative to ``base`` embedded
    as data URIs, ``![x](f)`` + ``*caption*`` as figures, a table of contents of the sections."""
    import base64
    import datetime
    import html as html_lib
    import re

    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists", "toc"])
    # The report is generated Markdown with no HTML of its own: text such as a token '<b>'
    # must show as text, so raw HTML is not passed through.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    body = md.convert(text)

    def embed(m: re.Match) -> str:
        src = html_lib.unescape(m.group(2))
        path = base / src
        if not re.match(r"^[a-z]+:", src) and path.is_file():
            mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(
                path.suffix.lower(), "application/octet-stream"
            )
            src = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        return f'<img alt="{m.group(1)}" src="{src}" />'

    body = re.sub(r'<img alt="([^"]*)" src="([^"]*)" ?/?>', embed, body)
    body = re.sub(r'<p>(<img [^>]*/>)</p>\s*<p><em>(.*?)</em></p>',
                  r"<figure>\1<figcaption>\2</figcaption></figure>", body)  # fmt: skip
    body = re.sub(r"<p>(<img [^>]*/>)</p>", r"<figure>\1</figure>", body)

    def table(m: re.Match) -> str:
        head = m.group(0).split("</tr>", 1)[0]
        return m.group(0).replace("<table>", '<table class="wide">', 1) if head.count("<th") > 7 else m.group(0)  # fmt: skip

    body = re.sub(r"<table>.*?</table>", table, body, flags=re.S)
    sections = [
        t for top in md.toc_tokens for t in (top["children"] if top["level"] == 1 else [top])
    ]
    toc = "".join(f'<li><a href="#{t["id"]}">{t["name"]}</a></li>' for t in sections)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = (f'<div class="meta">Generated {when} by <code>mlx-interp report</code> from the '
            f"artefacts of the run folder; the same text as report.md.</div>")  # fmt: skip
    if toc:
        meta += f'<nav class="toc"><b>Contents</b><ol>{toc}</ol></nav>'
    body = body.replace("</h1>", "</h1>" + meta, 1)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html_lib.escape(title)}</title><style>{REPORT_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_html(md_path: Path, title: str | None = None) -> Path:
    """``report.html`` beside ``md_path``, from its Markdown."""
    md_path = Path(md_path)
    text = md_path.read_text()
    title = title or next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), md_path.stem)
    return write_text(md_path.with_suffix(".html"), markdown_to_html(text, md_path.parent, title))


def html_to_pdf(html_path: Path, pdf_path: Path, chromium: str | None = None, timeout: float = 180) -> Path:  # fmt: skip
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (A4, no header or footer).
    Raises RuntimeError when Chromium is missing or fails; the PDF is written whole or not at all."""
    import tempfile

    from .io import atomic_path

    chromium = chromium or find_chromium()
    if not chromium:
        raise RuntimeError(
            "no Chromium found: install chromium (or Chrome), or set MLX_INTERP_CHROMIUM"
        )
    with (
        tempfile.TemporaryDirectory(prefix="mlx-interp-chromium-") as profile,
        atomic_path(pdf_path) as tmp,
    ):
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
               "--print-to-pdf-no-header", "--virtual-time-budget=10000", f"--print-to-pdf={tmp}",
               Path(html_path).resolve().as_uri()]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"Chromium did not print {html_path} within {timeout:.0f} s"
            ) from None
        if proc.returncode != 0 or tmp.stat().st_size == 0 or tmp.read_bytes()[:5] != b"%PDF-":
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(
                f"Chromium could not print {html_path} (exit {proc.returncode}): {tail[0]}"
            )
    return Path(pdf_path)
