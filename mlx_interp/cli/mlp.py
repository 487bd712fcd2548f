"""The ``mlp-analysis`` and ``diff`` commands (registered in ``mlx_interp.cli``): the
neurons of many layers in one pass, and two models compared layer by layer. The work is
in ``mlx_interp.features.mlp`` and ``mlx_interp.analysis.diff``; this module only parses."""

from __future__ import annotations

import argparse

from ..features.mlp import MLPConfig
from ..options import add_options, options_from_args


def add_commands(sub, add_model) -> None:
    sp = sub.add_parser(
        "mlp-analysis",
        help="MLP neurons of many layers in one pass: statistics, monosemanticity, dashboards",
    )
    add_model(sp)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--data", help="text data (default: the offline corpus, held-out split)")
    add_options(sp, MLPConfig)
    sp.add_argument("--token", action="append", default=[],
                    help="also list the top neurons of this token (one token, e.g. ' the'; repeat)")  # fmt: skip
    sp.set_defaults(func=cmd_mlp_analysis)
    add_diff_command(sub)


def _texts(args):
    if not args.data:
        return None, None
    from ..data import read_documents

    return read_documents(args.data), str(args.data)


def cmd_mlp_analysis(args: argparse.Namespace) -> int:
    from ..features.mlp import parse_layers, run_mlp_analysis
    from ..io import ensure_writable_dir
    from .common import model_from_args

    ensure_writable_dir(args.out)
    model = model_from_args(args)
    cfg = options_from_args(MLPConfig, args)
    parse_layers(cfg.layers, model.cfg.n_layers)
    texts, data_name = _texts(args)
    s = run_mlp_analysis(model, args.out, texts, cfg=cfg, data_name=data_name, tokens=args.token, progress=True)  # fmt: skip
    print(
        f"{s['tokens_counted']} tokens of {s['data']} ({sum(s['left_out'].values())} left out), "
        f"{len(s['layers'])} layers x {s['d_mlp']} neurons in {s['seconds_pass']:.0f} s "
        f"({s['tokens_per_s']:.0f} tokens/s); peak RSS {s['peak_rss_mb']:.0f} MiB"
    )
    print("layer  |mlp out|  dead   dense  med.purity  med.entropy  med.explanation")
    for r in s["by_layer"]:

        def f(v, spec):
            return "   n/a" if v is None else format(v, spec)

        print(f"{r['layer']:5d}  {r['mlp_out_norm']:9.3g}  {r['dead_fraction']:.3f}  {r['dense_fraction']:.3f}  "
              f"{f(r['median_purity'], '10.3f')}  {f(r['median_entropy_bits'], '11.2f')}  {f(r['median_explanation'], '15.3f')}")  # fmt: skip
    print(
        f"wrote {args.out}/index.html (neuron dashboards per layer), summary.json, layers.csv, plots"
    )
    return 0


def add_diff_command(sub) -> None:
    from ..analysis.diff import DiffConfig

    sp = sub.add_parser(
        "diff", help="two models (a base and its fine-tune) on the same tokens, layer by layer"
    )
    sp.add_argument("--base", required=True, help="the reference model (an HF folder, repo id, .gguf or 'smollm2-135m')")  # fmt: skip
    sp.add_argument("--tuned", required=True, help="the model compared with it (same architecture and tokenizer)")  # fmt: skip
    sp.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    sp.add_argument("--quantize", type=int, metavar="BITS",
                    help="quantize both (float Llama-family) models while loading (4 or 8); "
                    "a folder quantized by mlx-lm loads quantized anyway")  # fmt: skip
    sp.add_argument("--group-size", type=int, default=64, help="quantization group size (32, 64, 128)")  # fmt: skip
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--data", help="text data (default: the offline corpus, held-out split)")
    add_options(sp, DiffConfig)
    sp.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from ..analysis.diff import DiffConfig, run_diff

    cfg = options_from_args(DiffConfig, args)
    texts, data_name = _texts(args)
    r = run_diff(args.base, args.tuned, args.out, texts, cfg=cfg, dtype=args.dtype,
                 quantize=args.quantize, group_size=args.group_size, data_name=data_name, progress=True)  # fmt: skip
    fd = r["first_difference"]
    print(
        f"{r['tokens_counted']} tokens of {r['data']} ({sum(r['left_out'].values())} left out; "
        f"logit lens on {r['lens_tokens']}), resident: {r['resident']}, {r['seconds']:.0f} s "
        f"({r['tokens_per_s']:.0f} tokens/s per model); peak RSS {r['peak_rss_mb']:.0f} MiB"
    )
    print(f"first difference: {fd['hook']} (relative {fd['rel_diff']:.3g})" if fd else "first difference: none")  # fmt: skip
    print(f"output KL {r['output_kl']:.4g} nats; MLP output changes most at layer {r['most_changed_mlp_layer']}")  # fmt: skip
    print(f"wrote {args.out}/diff.md, summary.json, diff_by_layer.png, neuron_change_heatmap.png")
    return 0
