"""The feature pass: model -> SAE -> statistics, streamed once over the data.

``compute_feature_stats`` streams the data once through the model up to the SAE's hook,
encodes every batch with the SAE (MLX or torch_ref), and feeds the SAE's latents, and the
raw neurons of the chosen baseline hooks, to ``UnitStats`` accumulators. The same rows are
counted for all of them: position 0, special tokens and rows whose norm at the SAE's hook is
over ``massive_factor`` x the batch median are left out (and counted).
``store.write_store`` writes the result to disk; ``queries`` answers questions about it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .. import distributed
from ..activations.rows import COUNTERS, MASSIVE_FACTOR, add_counts
from ..data import DataSource
from ..distributed import World
from ..sae import load_sae, numpy_runner
from ..sae.config import trained_on
from .stats import StatsConfig, UnitStats, batch_grid

if TYPE_CHECKING:
    from ..model import HookedModel


# ------------------------------------------------------------------ the SAE and its checks
def encoder(sae):
    """NumPy (rows, d_in) float32 -> NumPy (rows, d_sae) latents, in the SAE's backend."""
    return numpy_runner(sae)


from ..sae.config import check_sae_for_model  # noqa: E402 - one check for every command


def check_data_for_sae(source: DataSource, sae_cfg, allow_train_data: bool = False) -> None:
    """A one-line ValueError when ``source`` shares documents with the SAE's training data."""
    source.check().check_not_trained_on(trained_on(sae_cfg), allow_train_data)


def default_neuron_hooks(hook: str, model: HookedModel) -> list[str]:
    """The baselines: the SAE's own hook (its basis) and the MLP neurons of the same layer."""
    from ..model import layer_of

    out = [hook]
    L = layer_of(hook)
    if L is not None and f"blocks.{L}.mlp.hook_post" in model.hook_names:
        out.append(f"blocks.{L}.mlp.hook_post")
    return out


def vocab_strings(tokenizer, size: int) -> list[str]:
    n = len(tokenizer)
    return [tokenizer.decode([i]) if i < n else "" for i in range(size)]


# ------------------------------------------------------------------ logit effects
def logit_effects(model: HookedModel, directions: np.ndarray, top: int = 10, chunk: int = 256):
    """Tokens each direction most promotes and suppresses through the final norm and the
    unembedding: effect = unembed(d) - unembed(0) (ranks as the direct path d -> logits).

    Returns (pos_ids, pos_vals, neg_ids, neg_vals), each (n, top), sorted by effect.
    """
    import mlx.core as mx

    from ..sae.sae import topk_indices

    n = len(directions)
    out = [np.zeros((n, top), np.int32), np.zeros((n, top), np.float32)] * 2
    out = [a.copy() for a in out]
    base = model.unembed(mx.zeros((1, directions.shape[1]), model.dtype)).astype(mx.float32)
    for s in range(0, n, chunk):
        d = mx.array(np.asarray(directions[s : s + chunk], np.float32)).astype(model.dtype)
        eff = model.unembed(d).astype(mx.float32) - base  # (chunk, d_vocab), never to NumPy
        for j, sign in ((0, 1), (2, -1)):
            # the two-stage exact top-k of the SAE trainer: 10 of 49,152 in a fraction of a
            # full partition's time (which took 9.5 of the feature pass's 75 s on SmolLM2)
            idx = topk_indices(sign * eff, top)
            v = mx.take_along_axis(eff, idx, axis=1)
            o = mx.argsort(-sign * v, axis=1)
            out[j][s : s + chunk] = np.asarray(mx.take_along_axis(idx, o, axis=1))
            out[j + 1][s : s + chunk] = np.asarray(mx.take_along_axis(v, o, axis=1))
    return tuple(out)


# ------------------------------------------------------------------ the pass
def compute_feature_stats(
    model: HookedModel,
    sae,
    texts: Iterable[str] | DataSource | None = None,
    *,
    tokens: int = 100_000,
    neuron_hooks: list[str] | None = None,
    backend: str = "mlx",
    hook: str | None = None,
    batch_size: int = 8,
    context_length: int = 128,
    stats_config: StatsConfig | None = None,
    massive_factor: float = MASSIVE_FACTOR,
    model_name: str | None = None,
    progress: bool = False,
    allow_train_data: bool = False,
    world: World | None = None,
) -> dict:
    """One pass over ``texts``: documents, or a ``mlx_interp.data.DataSource`` (None: the
    default corpus, held-out split). A DataSource that shares documents with the SAE's
    training data raises a one-line ValueError unless ``allow_train_data``.

    Returns {"sae": UnitStats, "neurons": {hook: UnitStats}, "info": {...}}. neuron_hooks:
    baselines counted on the same rows (None: ``default_neuron_hooks``; [] for none).

    Several ranks (``world``, default ``mlx_interp.distributed.world()``; run as
    ``mlx.launch -n N -- mlx-interp features ...``): rank r runs batches r, r + N, ..., and
    the statistics are merged on every rank (counts and histograms summed, top-k merged),
    equal to a one-process pass.
    """
    from ..activations import iter_activations
    from ..activations.rows import RowFilter, row_norms, zero_counts

    sae = load_sae(sae, backend)
    if texts is None:
        texts = DataSource(None, "heldout")
    data_name, data_record = "given texts", None
    if isinstance(texts, DataSource):
        check_data_for_sae(texts, sae.cfg, allow_train_data)
        data_name, data_record = texts.describe(), texts.record()
        texts = texts.documents()
    hook = check_sae_for_model(sae.cfg, model, hook, model_name)
    from ..activations.store import hook_width

    width = hook_width(model, hook)
    if width != sae.cfg.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but {hook} has width {width}")
    if neuron_hooks is None:
        neuron_hooks = default_neuron_hooks(hook, model)
    for h in neuron_hooks:
        model.check_hook_name(h)
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    tok = model._require_tokenizer()
    world = world or distributed.world()
    V = max(len(tok), model.cfg.d_vocab)
    cfg = stats_config or StatsConfig()
    enc = encoder(sae)
    hooks = list(dict.fromkeys([hook, *neuron_hooks]))
    acc = UnitStats(sae.cfg.d_sae, V, cfg)
    neurons: dict[str, UnitStats] = {}
    rows = RowFilter.for_tokenizer(tok, massive_factor)
    left_out = zero_counts()
    t0 = time.perf_counter()
    n_batches = 0
    for batch in iter_activations(
        model,
        hooks,
        texts,
        batch_size=batch_size,
        context_length=context_length,
        max_tokens=tokens,
        progress=progress and world.is_main,
        shard=(world.rank, world.size),
    ):
        import mlx.core as mx

        x = np.asarray(batch.acts[hook].astype(mx.float32))
        if not np.all(np.isfinite(x)):
            raise ValueError(f"activations at {hook} contain NaN or inf")
        g = batch_grid(batch, rows, row_norms(x))
        add_counts(left_out, g.left_out)
        acc.update(g.to_grid(enc(x)), *g.update_args())
        for h in neuron_hooks:
            xa = x if h == hook else np.asarray(batch.acts[h].astype(mx.float32))
            if h not in neurons:
                neurons[h] = UnitStats(xa.shape[1], V, cfg)
            neurons[h].update(g.to_grid(xa), *g.update_args())
        n_batches += 1
    if world.size > 1:
        n_batches, left_out = _merge_ranks(
            world, acc, neurons, neuron_hooks, n_batches, left_out, V, cfg
        )
    if acc.n_tokens == 0:
        raise ValueError(
            "no tokens to analyse: the data is empty (or holds only special tokens)"
            if n_batches == 0
            else f"every token was left out ({rows.describe()})"
        )
    info = {
        "hook": hook,
        "model": str(model_name or model.source),
        "sae_architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "backend": backend,
        "data": data_name,
        "data_source": data_record,
        "trained_on": trained_on(sae.cfg),
        "tokens_requested": tokens,
        "tokens_counted": acc.n_tokens,
        "left_out": left_out,
        "massive_factor": massive_factor,
        "context_length": context_length,
        "batch_size": batch_size,
        "top_k": cfg.top_k,
        "context_left": cfg.context_left,
        "context_right": cfg.context_right,
        "seconds": time.perf_counter() - t0,
    }
    return {"sae": acc, "neurons": neurons, "info": info, "sae_obj": sae}


def _merge_ranks(world, acc, neurons, neuron_hooks, n_batches, left_out, V, cfg):
    """Every rank's statistics merged into ``acc`` / ``neurons`` on every rank."""
    mine = {f"sae/{k}": v for k, v in acc.state().items()}
    for h, st in neurons.items():
        mine.update({f"{h}/{k}": v for k, v in st.state().items()})
    mine["n_batches"] = np.array([n_batches])
    mine["left_out"] = np.array([left_out[k] for k in COUNTERS])
    others = [p for r, p in enumerate(world.gather_arrays(mine)) if r != world.rank]

    def of(part, prefix):
        return {k[len(prefix) + 1 :]: v for k, v in part.items() if k.startswith(prefix + "/")}

    acc.merge([of(p, "sae") for p in others])
    for h in neuron_hooks:
        with_h = [of(p, h) for p in others if any(k.startswith(h + "/") for k in p)]
        if h not in neurons and with_h:
            neurons[h] = UnitStats(with_h[0]["fires"].shape[0], V, cfg)
        if with_h:
            neurons[h].merge(with_h)
    n_batches += sum(int(p["n_batches"][0]) for p in others)
    for p in others:
        add_counts(left_out, dict(zip(COUNTERS, map(int, p["left_out"]), strict=True)))
    return n_batches, left_out
