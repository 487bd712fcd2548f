"""``mlx-interp convert``: a model into an mlx-lm folder, quantized or not."""

from __future__ import annotations

import time


def add_commands(sub) -> None:
    sp = sub.add_parser(
        "convert",
        help="write a model as an mlx-lm folder (quantized with --quantize) that mlx_lm.load reads",
    )
    sp.add_argument("source", help="'smollm2-135m', an HF folder or repo id, or a .gguf file")
    sp.add_argument("--out", required=True, help="the folder to write (must not exist)")
    sp.add_argument(
        "--quantize", type=int, metavar="BITS", help="4 or 8 (2, 3, 5, 6 too); none: float"
    )
    sp.add_argument(
        "--group-size", type=int, default=64, help="quantization group size (32, 64, 128)"
    )
    sp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="dtype of the float tensors and the scales (default: as stored)")  # fmt: skip
    sp.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from ..convert import convert
    from ..system import peak_rss_mb

    t0 = time.perf_counter()
    out = convert(args.source, args.out, args.quantize, args.group_size, args.dtype)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e9
    what = f"{args.quantize}-bit, group size {args.group_size}" if args.quantize else "float"
    print(
        f"wrote {out} ({what}, {size:.2f} GB) in {time.perf_counter() - t0:.0f} s, "
        f"peak RSS {peak_rss_mb():.0f} MB; load it with --model {out} or mlx_lm.load"
    )
    return 0
