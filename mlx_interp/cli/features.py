"""The ``features`` command (registered in ``mlx_interp.cli``) and ``run_features``, its API.

Output folder (``--out``)::

    summary.json         settings, tokens counted and left out, time, peak memory, and the
                         summary metrics of the SAE and of each neuron baseline
    features.csv         one row per SAE feature: density, mean/max activation, entropy,
                         purity, explanation score, top tokens
    comparison.json/.md/.png   SAE features vs raw neurons, side by side
    index.html           sortable, searchable table of every feature; links to the pages
    pages/feature_NNNNN.html, cards/feature_NNNNN.png   per rendered feature
    store/sae/           the feature store (load_feature_store(out))
    store/neurons__HOOK/ the same for each neuron baseline
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import distributed
from ..features.stats import StatsConfig
from ..options import add_options
from .common import ReadOptions, add_sae_and_data, model_from_args, reading


def add_commands(sub, add_model) -> None:
    from .sae import add_force

    sp = sub.add_parser(
        "features", help="feature statistics, monosemanticity vs neurons, dashboards of an SAE"
    )
    add_model(sp)
    add_sae_and_data(sp)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--tokens", type=int, default=100_000, help="tokens to analyse")
    add_options(sp, StatsConfig)
    sp.add_argument("--max-features", type=int, default=100, help="feature pages/cards to render")
    sp.add_argument("--feature", type=int, action="append", help="render this feature (repeat)")
    sp.add_argument(
        "--neurons",
        action="append",
        help="baseline hook for raw neurons (repeat; default: the SAE's hook and its layer's "
        "mlp.hook_post; 'none' for no baseline)",
    )
    add_options(sp, ReadOptions)
    add_force(sp)
    sp.add_argument("--seed", type=int, default=0, help="which features get pages (sampled)")
    sp.set_defaults(func=cmd_features)


def run_features(
    model,
    sae_folder,
    out,
    texts=None,
    *,
    data_name: str | None = None,
    tokens: int = 100_000,
    top_k: int = 32,
    neuron_hooks: list[str] | None = None,
    max_features: int = 100,
    features: list[int] | None = None,
    backend: str = "mlx",
    context_length: int = 128,
    batch_size: int = 8,
    model_name: str | None = None,
    seed: int = 0,
    progress: bool = False,
    allow_train_data: bool = False,
    log=print,
) -> dict:
    """The whole ``features`` command as a function: writes ``out`` (see the module
    docstring), logs a summary and returns summary.json's content. texts: documents or a
    ``mlx_interp.data.DataSource`` (None: the default corpus, held-out split); one that
    shares documents with the SAE's training data is refused, before anything is written,
    unless ``allow_train_data``."""
    from .. import checks
    from ..data import DataSource
    from ..features.collect import check_data_for_sae, compute_feature_stats
    from ..io import check_writable, output_folder
    from ..sae import load_sae

    checks.integer("tokens", tokens)
    stats_config = StatsConfig(top_k=top_k)
    if top_k > tokens:
        raise ValueError(f"top_k={top_k} is more than the tokens analysed ({tokens})")
    checks.integer("max_features", max_features, minimum=0)
    checks.context_length(model, context_length)
    checks.integer("batch_size", batch_size)
    checks.integer("seed", seed, minimum=0)
    check_writable(out)
    t0 = time.perf_counter()
    sae = load_sae(sae_folder, backend)
    if isinstance(texts, DataSource):
        check_data_for_sae(texts, sae.cfg, allow_train_data)
    for j in features or ():
        checks.integer("feature", j, minimum=0)
        if not 0 <= j < sae.cfg.d_sae:
            raise ValueError(f"feature {j} is out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")  # fmt: skip
    r = compute_feature_stats(
        model,
        sae,
        texts,
        tokens=tokens,
        neuron_hooks=neuron_hooks,
        backend=backend,
        batch_size=batch_size,
        context_length=context_length,
        stats_config=stats_config,
        model_name=model_name,
        progress=progress,
        allow_train_data=allow_train_data,
    )
    info = r["info"]
    info["sae"] = str(sae_folder)
    if not distributed.world().is_main:  # several ranks: rank 0 writes the merged results
        distributed.world().barrier("features: waiting for rank 0 to write the results")
        return info
    if data_name:
        info["data"] = data_name
    t_pass = time.perf_counter() - t0
    with output_folder(out):
        return _write_features(model, sae, Path(out), r, info, t0, t_pass, max_features, features, seed, log)  # fmt: skip


def _write_features(model, sae, out, r, info, t0, t_pass, max_features, features, seed, log) -> dict:  # fmt: skip
    import numpy as np

    from ..features.collect import logit_effects, vocab_strings
    from ..features.compare import write_comparison
    from ..features.dashboards import write_dashboards, write_features_csv
    from ..features.store import write_store
    from ..io import write_json
    from ..system import peak_rss_mb

    vocab = vocab_strings(model._require_tokenizer(), r["sae"].vocab_size)
    d_model = model.cfg.d_model
    w_dec = np.array(sae.numpy_params()["W_dec"])
    # decoder rows live in the output space (a transcoder's output hook)
    lg = logit_effects(model, w_dec) if sae.cfg.out_width == d_model else None
    write_store(out / "store" / "sae", r["sae"], info, vocab, lg, kind="sae")
    stores = {}
    for h, st in r["neurons"].items():
        lgn = logit_effects(model, np.eye(st.n_units, dtype=np.float32)) if st.n_units == d_model else None  # fmt: skip
        write_store(out / "store" / f"neurons__{h}", st, {**info, "hook": h}, vocab, lgn, kind="neurons")  # fmt: skip
        stores[h] = out / "store" / f"neurons__{h}"
    cmp = write_comparison(out, out / "store" / "sae", stores)
    write_features_csv(out)
    rendered = write_dashboards(out, max_features=max_features, features=features, seed=seed)
    summary = {
        **info,
        "seconds_pass": t_pass,
        "seconds_total": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "sae_summary": cmp["sae"],
        "neuron_summaries": cmp["neurons"],
        "rendered_features": rendered,
    }
    write_json(out / "summary.json", summary)
    sm = summary["sae_summary"]
    log(
        f"{summary['tokens_counted']} tokens of {summary['data']} at {summary['hook']} "
        f"({sum(summary['left_out'].values())} left out) in {t_pass:.0f} s; "
        f"peak RSS {summary['peak_rss_mb']:.0f} MiB"
    )
    log((out / "comparison.md").read_text())
    log(f"SAE: dead {sm['dead_fraction']:.3f}, dense {sm['dense_fraction']:.4f}")
    log(f"wrote {out}/index.html ({len(rendered)} feature pages), summary.json, comparison.md")
    distributed.world().barrier("features: rank 0 wrote the results")
    return summary


def cmd_features(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    neurons = args.neurons
    if neurons is not None and [n.lower() for n in neurons] == ["none"]:
        neurons = []
    from ..data import DataSource
    from ..sae import load_sae

    texts = DataSource(args.data, args.split).check()

    sae_cfg = load_sae(args.sae, args.backend).cfg
    name = sae_cfg.model_name if args.force else str(args.model)
    run_features(
        model,
        args.sae,
        Path(args.out),
        texts,
        tokens=args.tokens,
        top_k=args.top_k,
        neuron_hooks=neurons,
        max_features=args.max_features,
        features=args.feature,
        model_name=name,
        seed=args.seed,
        progress=True,
        allow_train_data=args.allow_train_data,
        **reading(args),
    )
    return 0
