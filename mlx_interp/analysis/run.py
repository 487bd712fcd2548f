"""``mlx-interp analyze``: every analysis on a few prompts, each figure with its numbers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import plots, views
from .measures import (
    MASSIVE_FACTOR,
    _spread,
    logit_lens,
    position_embeddings,
    position_norms,
    same_token_positions,
    semantic_similarity,
    token_similarity,
    top_neurons,
)

if TYPE_CHECKING:
    from ..model import HookedModel


def run_all(
    model: HookedModel,
    prompts: Sequence[str],
    out,
    texts: Iterable[str] | None = None,
    *,
    model_name: str = "",
    neuron_hook: str | None = None,
    layers: Sequence[int] | None = None,
    max_tokens: int = 2048,
    context_length: int = 64,
    token: str = " the",
    log=print,
    atp: Sequence[str] | None = None,
    atp_direction: str = "noising",
    atp_saes: Sequence = (),
    atp_top: int = 20,
    atp_only: bool = False,
) -> list:
    """Every analysis, for ``mlx-interp analyze``: per prompt the norm heatmap, neuron
    heatmap, token similarity and logit lens; once the word-group similarity, positional
    effects (over ``texts``, default: the default corpus's held-out split) and, for GPT-2,
    the position embeddings. Writes the figures, their numbers and ``index.md``; returns
    the paths written.

    ``atp=(clean, corrupted, answer, wrong)`` adds attribution patching
    (``attribution.attribution_patching`` with ``atp_direction`` and the SAEs ``atp_saes``):
    the layer x position and layer x head heatmaps and the top ``atp_top`` components of
    each kind. ``atp_only``: that section alone.
    """
    from pathlib import Path

    from .. import checks
    from ..io import output_folder

    n = model.cfg.n_layers
    layers = list(layers) if layers is not None else _spread(n)
    for layer in layers:
        checks.integer("layer", layer, minimum=-1, maximum=n - 1)  # -1: the embeddings
    if not layers:
        raise ValueError("no layers given")
    neuron_hook = neuron_hook or f"blocks.{n // 2}.mlp.hook_post"
    model.check_hook_name(neuron_hook)
    checks.integer("max_tokens", max_tokens)
    checks.context_length(model, context_length)
    prompts = list(prompts)
    if atp is not None:
        from .attribution import check_atp

        atp_saes = check_atp(model, atp, atp_direction, atp_saes, atp_top)
    elif atp_only:
        raise ValueError("atp_only needs atp=(clean, corrupted, answer, wrong)")
    if not atp_only:
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("give at least one prompt, and no empty ones")
        for p in prompts:
            model._check_length(len(model.to_tokens(p)[0]), f"the prompt {p[:30]!r} gives")
    atp_args = None if atp is None else (tuple(atp), atp_direction, atp_saes, atp_top)
    with output_folder(out):
        return _run_all(model, [] if atp_only else prompts, Path(out), texts, model_name,
                        neuron_hook, layers, max_tokens, context_length, token, log, atp_args,
                        atp_only)  # fmt: skip


def _run_all(model, prompts, out, texts, model_name, neuron_hook, layers, max_tokens,
             context_length, token, log, atp_args=None, atp_only=False) -> list:  # fmt: skip
    from pathlib import Path

    from ..io import write_text

    name = model_name or str(model.source)
    if texts is None and not atp_only:
        from ..data import default_corpus

        texts = default_corpus("heldout")
    texts = list(texts) if not isinstance(texts, list) and texts is not None else texts
    md = [f"# Activation analysis: {name}", "", f"{model}", ""]
    written: list[Path] = []

    def section(title: str, files: list[Path], text: str) -> None:
        written.extend(files)
        md.extend([f"## {title}", "", text, "", f"![{title}]({files[0].name})", ""])
        md.append("Numbers: " + ", ".join(f"`{f.name}`" for f in files[1:]))
        md.append("")

    if atp_args is not None:
        _atp_section(model, out, name, atp_args, log, section, written, md)
    if atp_only:
        written.append(write_text(out / "index.md", "\n".join(md)))
        return written
    for i, prompt in enumerate(prompts):
        log(f"[prompt {i + 1}/{len(prompts)}] {prompt!r}")
        tag = f"p{i}"
        md.extend([f"# Prompt {i}: {prompt!r}", ""])
        png = plots.residual_norm_heatmap(model, prompt, out / f"{tag}_norms.png")
        section(
            "Residual norm, tokens x layers",
            [png, png.with_suffix(".csv")],
            "L2 norm of the residual stream after each block, log colour scale: massive "
            "activations (position 0, separators) stand out against ordinary tokens.",
        )
        na = top_neurons(model, prompt, neuron_hook)
        section(
            f"Most active neurons at {neuron_hook}",
            plots.neuron_heatmap(na, out / f"{tag}_neurons.png", name),
            f"The {len(na.neurons)} neurons with the largest |activation| on the prompt "
            "(ranked without position 0).",
        )
        ts = token_similarity(model, prompt, layers)
        section(
            "Token-by-token cosine similarity",
            plots.similarity_grid(ts, out / f"{tag}_similarity.png", name),
            "Cosine similarity between positions at several depths. Position 0 and "
            f"massive-norm tokens (>{MASSIVE_FACTOR:g}x the median) are masked grey: they "
            "share one direction and would otherwise dominate.",
        )
        ll = logit_lens(model, prompt)
        section(
            "Logit lens",
            plots.logit_lens_plot(ll, out / f"{tag}_logit_lens.png", name),
            "Each layer's residual stream through the final norm and the unembedding: the "
            f"top next-token prediction and its probability. Final prediction at the last "
            f"position: {ll.top_strs[-1][-1][0]!r} ({ll.top_probs[-1, -1, 0]:.2f}).",
        )
        pages = [
            views.attention_view(model, prompt, title=f"Attention patterns: {prompt!r}").save(
                out / "views" / f"{tag}_attention.html"
            ),
            views.logit_lens_view(ll).save(out / "views" / f"{tag}_logit_lens.html"),
        ]
        if i == 0:  # the prompt's most active neuron, over every prompt
            pages.append(
                views.neuron_view(model, prompts, neuron_hook, int(na.neurons[0])).save(
                    out / "views" / f"neuron_{int(na.neurons[0])}.html"
                )
            )
        written.extend(pages)
        md.extend(["## Interactive views", "", "Open in a browser (standalone HTML): " + ", ".join(
            f"[{p.stem.removeprefix(tag + '_').replace('_', ' ')}](views/{p.name})" for p in pages
        ) + ".", ""])  # fmt: skip

    md.extend(["# Across prompts", ""])
    log("[semantic similarity] word groups in shared templates")
    ss = semantic_similarity(model)
    gap = ss.within_centered - ss.between_centered
    best = int(np.argmax(gap))
    section(
        "Semantic similarity: related vs unrelated words",
        plots.semantic_similarity_plot(ss, out / "semantic_similarity.png", name),
        f"Groups {', '.join(dict.fromkeys(ss.groups))}; within-group minus between-group "
        f"similarity (centered) is largest at {ss.labels[best]} ({gap[best]:.3f}); "
        f"{ss.n_massive} word positions had massive norms.",
    )
    log(f"[positions] norms over {max_tokens} tokens")
    pn = position_norms(model, texts, layers, context_length=context_length, max_tokens=max_tokens)
    section(
        "Positional effects: norm vs position",
        plots.position_norm_plot(pn, out / "position_norms.png", name),
        "Median residual norm at each position of packed windows (quartile band); the "
        "boundary token at position 0 is starred.",
    )
    try:
        stp = same_token_positions(
            model, token, texts, layers, context_length=context_length, max_tokens=max_tokens
        )
    except ValueError as e:
        log(f"  skipped the same-token analysis: {e}")
    else:
        section(
            f"Positional effects: {stp.token!r} at different positions",
            plots.same_token_plot(stp, out / "same_token_positions.png", name),
            "Cosine similarity between occurrences of the same token against the distance "
            f"between their positions ({stp.n_excluded} massive-norm rows left out).",
        )
    pe = position_embeddings(model)
    if pe is not None:
        section(
            "Learned position embeddings (GPT-2)",
            plots.position_embedding_plot(pe, out / "position_embeddings.png", name),
            "Cosine similarity between the position embeddings and their top principal components.",
        )
    else:
        md.extend(
            ["## Position embeddings", "", "Rotary model: no learned position embeddings.", ""]
        )
    written.append(write_text(out / "index.md", "\n".join(md)))
    return written


def _atp_section(model, out, name, atp_args, log, section, written, md) -> None:
    """Attribution patching: the two heatmaps (with CSVs) and the table of top components."""
    from .attribution import attribution_patching

    (clean, corrupted, answer, wrong), direction, saes, top = atp_args
    log(f"[attribution patching] {clean!r} vs {corrupted!r}, {answer!r} - {wrong!r} ({direction})")
    ar = attribution_patching(
        model, clean, corrupted, answer, wrong, saes=saes, direction=direction
    )
    md.extend(["# Attribution patching", "",
               f"Clean {clean!r}, corrupted {corrupted!r}; metric logit({answer!r}) - "
               f"logit({wrong!r}) at the last position: clean {ar.clean_metric:.3f}, corrupted "
               f"{ar.corrupted_metric:.3f}.", ""])  # fmt: skip
    how = (
        "the corrupted activation patched into the clean run (noising), estimated with the "
        "gradient at the clean run"
        if direction == "noising"
        else "the clean activation patched into the corrupted run (denoising), estimated with "
        "the gradient at the corrupted run"
    )
    note = (
        f"Each cell is (a_source - a_base) . d metric / d a: the first-order estimate of the "
        f"change of the metric with {how}. One forward and one backward pass; it can be far "
        "off where patching changes an activation a lot (e.g. the token embeddings)."
    )
    section("AtP: hook points, layer x position", plots.attribution_heatmap(ar, out / "atp_hooks.png", name), note)  # fmt: skip
    section(
        "AtP: attention heads, layer x head",
        plots.attribution_head_heatmap(ar, out / "atp_heads.png", name),  # fmt: skip
        "Each head's output (hook_z) patched at every position.",
    )
    files = plots.attribution_table(ar, out / "atp_top.md", top)
    written.extend(files)
    md.extend([f"## AtP: top {top} components of each kind", "",
               (out / "atp_top.md").read_text(encoding="utf-8"),
               f"Numbers: `{files[1].name}`", ""])  # fmt: skip
