"""The activation-analysis commands: extract, tokens, analyze (registered by cli.py)."""

from __future__ import annotations

import time
from pathlib import Path

from .common import add_split


def add_commands(sub, add_model) -> None:
    sp = sub.add_parser(
        "extract",
        help="write activations at some hook points over a data set as safetensors shards",
        description="Write activations as safetensors shards plus metadata.json; rerun the "
        "same command to resume an interrupted run.",
    )
    add_model(sp)
    sp.add_argument("--hooks", required=True, help="comma-separated hook points")
    _add_data(sp)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--positions",
        default="all",
        help="'all', 'last' (last token of each document) or a token, e.g. ' bank' ('id:123' for an id)",
    )
    sp.add_argument("--max-tokens", type=int, help="stop after this many tokens")
    sp.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    sp.add_argument("--context-length", type=int, default=128, help="tokens per window")
    sp.add_argument(
        "--exclude-massive",
        action="store_true",
        help="drop position 0, special tokens and rows with norm > 10x the batch median",
    )
    sp.add_argument("--shard-mb", type=float, default=256.0, help="shard size (default 256 MB)")
    sp.set_defaults(func=cmd_extract)

    sp = sub.add_parser(
        "tokens", help="the activations of one token across contexts, with where it occurs"
    )
    add_model(sp)
    sp.add_argument("--token", required=True, help="a string that is one token, e.g. ' bank'")
    sp.add_argument("--hooks", required=True, help="comma-separated hook points")
    sp.add_argument("--text", action="append", help="a context (repeat); else --data")
    _add_data(sp)
    sp.add_argument("--context-length", type=int, default=128)
    sp.add_argument("--max-tokens", type=int, help="read at most this many tokens of data")
    sp.add_argument("--out", help="also write activations, occurrences and similarity plots here")
    sp.set_defaults(func=cmd_tokens)

    sp = sub.add_parser(
        "analyze",
        help="norm and neuron heatmaps, similarity, semantic groups, positions, logit lens",
    )
    add_model(sp)
    sp.add_argument("--prompts", help="a text file, one prompt per line (default: a few built in)")
    sp.add_argument("--out", required=True, help="output folder (index.md lists what was made)")
    sp.add_argument(
        "--neuron-hook", help="hook of the neuron heatmap (default: middle mlp.hook_post)"
    )
    sp.add_argument("--layers", help="comma-separated layers for similarity and position plots")
    sp.add_argument("--max-prompts", type=int, default=4)
    sp.add_argument("--data", help="text for the positional analyses (default: the default corpus)")
    add_split(sp, None)  # default: all of --data; the held-out split of the default corpus
    sp.add_argument("--max-tokens", type=int, default=2048, help="tokens for positional analyses")
    sp.add_argument(
        "--atp",
        nargs=4,
        metavar=("CLEAN", "CORRUPTED", "ANSWER", "WRONG"),
        help="attribution patching of every hook point, head, MLP neuron (and --atp-sae "
        "latent) for logit(ANSWER) - logit(WRONG), e.g. --atp 'When Mary and John went to "
        "the store, John gave a drink to' 'When John and Mary went to the store, Mary gave a "
        "drink to' ' Mary' ' John'",
    )
    sp.add_argument(
        "--atp-direction",
        choices=("noising", "denoising"),
        default="noising",
        help="noising (default): corrupted patched into the clean run, gradient at the clean "
        "run (Kramar et al.); denoising: clean into corrupted, gradient at the corrupted run",
    )
    sp.add_argument(
        "--atp-sae", action="append", default=[], metavar="FOLDER",
        help="an SAE folder (cfg.json names its hook) whose latents AtP scores too; repeat",
    )  # fmt: skip
    sp.add_argument("--atp-top", type=int, default=20, help="rows of each kind in atp_top.md")
    sp.add_argument("--atp-only", action="store_true", help="run attribution patching alone")
    sp.set_defaults(func=cmd_analyze)


def _add_data(sp) -> None:
    sp.add_argument(
        "--data",
        help="a text file (one document per line, or blank-line separated), a folder of .txt "
        "files, a .jsonl file with a 'text' field, or a cached Hugging Face dataset name; "
        "default: the offline default corpus",
    )
    add_split(sp, "train")


def _hooks(arg: str) -> list[str]:
    hooks = [h.strip() for h in arg.split(",") if h.strip()]
    if not hooks:
        raise ValueError("--hooks is empty; give comma-separated hook points")
    return hooks


def _positions(arg: str) -> str | int:
    """'all', 'last', a token string, or 'id:N' (a token id; anything else after 'id:' is
    an error, not a token string)."""
    if arg.startswith("id:"):
        try:
            tid = int(arg[3:])
        except ValueError:
            raise ValueError(f"{arg!r}: after 'id:' give a token id (an integer)") from None
        if tid < 0:
            raise ValueError(f"{arg!r}: token ids are >= 0")
        return tid
    if not arg:
        raise ValueError("the token is empty; give 'all', 'last', a token string or id:N")
    return arg


def open_data(data: str | None, split: str):
    """The DataSource of --data/--split, checked before anything runs."""
    from ..data import DataSource

    return DataSource(data, split).check()


def cmd_extract(args) -> int:
    from .. import checks
    from ..activations import extract
    from ..io import check_writable
    from .common import model_from_args

    hooks = _hooks(args.hooks)
    positions = _positions(args.positions)
    checks.integer("--batch-size", args.batch_size)
    checks.integer("--context-length", args.context_length, minimum=2)
    checks.integer("--max-tokens", args.max_tokens, none_ok=True)
    checks.number("--shard-mb", args.shard_mb, low=0, low_open=True)
    out = check_writable(args.out)  # creates nothing: extract creates and locks the folder
    source = open_data(args.data, args.split)
    model = model_from_args(args)
    t0 = time.perf_counter()
    meta = extract(
        model,
        hooks,
        out,
        source,
        batch_size=args.batch_size,
        context_length=args.context_length,
        max_tokens=args.max_tokens,
        positions=positions,
        exclude_massive=args.exclude_massive,
        shard_mb=args.shard_mb,
        progress=True,
    )
    dt = time.perf_counter() - t0
    excluded = ", ".join(f"{k} {v}" for k, v in meta["n_excluded"].items() if v) or "none"
    print(
        f"{args.out}: {meta['n_rows']} rows of {', '.join(hooks)} from {meta['tokens_done']} tokens "
        f"in {len(meta['shards'])} shards ({dt:.0f} s this run); excluded: {excluded}"
    )
    return 0


def cmd_tokens(args) -> int:
    from .. import checks
    from ..activations import token_activations
    from .common import model_from_args

    hooks = _hooks(args.hooks)
    checks.integer("--context-length", args.context_length, minimum=2)
    checks.integer("--max-tokens", args.max_tokens, none_ok=True)
    if args.text:
        docs = [t for t in args.text if t.strip()]
        if not docs:
            raise ValueError("every --text is empty")
    else:
        docs = open_data(args.data, args.split).documents()
    if args.out:
        from ..io import check_writable

        check_writable(args.out)
    model = model_from_args(args)
    ta = token_activations(
        model,
        _positions(args.token),
        docs,
        hooks,
        context_length=args.context_length,
        max_tokens=args.max_tokens,
    )
    print(f"{ta.token!r} (id {ta.token_id}): {len(ta)} occurrences")
    head = "  #   doc  pos  " + "  ".join(f"‖{h}‖" for h in hooks) + "  context"
    print(head)
    norms = {h: ta.norms(h) for h in hooks}
    for i in range(len(ta)):
        cells = "  ".join(f"{norms[h][i]:{len(h) + 2}.1f}" for h in hooks)
        print(f"{i:3d} {ta.doc_ids[i]:5d} {ta.positions[i]:4d}  {cells}  {ta.contexts[i]!r}")
    if args.out:
        from ..analysis.plots import token_occurrences_report

        written = token_occurrences_report(ta, args.out, title_model=args.model)
        print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def read_prompts(path) -> list[str]:
    """The non-empty lines of a prompts file, stripped."""
    from ..data import _read

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ValueError(f"prompts file {path} {what}")
    prompts = [line.strip() for line in _read(path).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt")
    return prompts


def run_analysis(
    model,
    out,
    prompts: list[str] | None = None,
    texts=None,
    *,
    model_name: str = "",
    neuron_hook: str | None = None,
    layers: list[int] | None = None,
    max_prompts: int = 4,
    max_tokens: int = 2048,
    log=print,
    **atp,
) -> list[Path]:
    """The ``analyze`` command as a function: every analysis on the first ``max_prompts`` of
    ``prompts`` (None: two built in), positional ones over ``texts`` (None: the default
    corpus, held-out split), written into ``out`` with ``index.md``; returns the paths.
    ``atp``, ``atp_direction``, ``atp_saes``, ``atp_top``, ``atp_only``: as in ``run_all``."""
    from .. import checks
    from ..analysis import run_all
    from ..data import PROMPTS as DEFAULT_PROMPTS

    checks.integer("max_prompts", max_prompts)
    prompts = list(prompts or DEFAULT_PROMPTS[:2])[:max_prompts]
    t0 = time.perf_counter()
    written = run_all(
        model,
        prompts,
        out,
        texts,
        model_name=model_name,
        neuron_hook=neuron_hook,
        layers=layers,
        max_tokens=max_tokens,
        **atp,
    )
    log(f"wrote {len(written)} files to {out} ({time.perf_counter() - t0:.0f} s); see index.md")
    return written


def cmd_analyze(args) -> int:
    from .. import checks
    from ..data import DataSource
    from ..io import check_writable
    from ..sae.sae import SAE
    from .common import model_from_args

    checks.integer("--max-prompts", args.max_prompts)
    checks.integer("--max-tokens", args.max_tokens)
    checks.integer("--atp-top", args.atp_top)
    for f in args.atp_sae:
        if not (Path(f) / "cfg.json").is_file():
            raise ValueError(f"--atp-sae {f}: not an SAE folder (no cfg.json)")
    if args.atp_only and not args.atp:
        raise ValueError("--atp-only needs --atp CLEAN CORRUPTED ANSWER WRONG")
    prompts = read_prompts(args.prompts) if args.prompts else None
    split = args.split or ("all" if args.data else "heldout")
    texts = None if args.atp_only else list(DataSource(args.data, split).check().documents())
    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    except ValueError:
        raise ValueError(f"--layers {args.layers!r}: give comma-separated layer numbers") from None
    check_writable(args.out)  # fail before loading anything; creates nothing
    model = model_from_args(args)
    run_analysis(
        model,
        args.out,
        prompts,
        texts,
        model_name=args.model,
        neuron_hook=args.neuron_hook,
        layers=layers,
        max_prompts=args.max_prompts,
        max_tokens=args.max_tokens,
        atp=args.atp,
        atp_direction=args.atp_direction,
        atp_saes=[SAE.load(f) for f in args.atp_sae],
        atp_top=args.atp_top,
        atp_only=args.atp_only,
    )
    return 0
