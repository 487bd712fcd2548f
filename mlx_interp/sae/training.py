"""Training SAEs: the configuration, a backend-neutral driver, and the MLX backend.

The driver (``train_sae``) pulls fixed-size batches from the shuffle buffer, sets the
learning rate (warm-up, then linear decay) and the sparsity coefficient (warm-up), asks
the backend for one optimisation step per hook, logs L0 / explained variance / dead
fraction every ``log_every`` steps, and writes a checkpoint every ``checkpoint_every``
steps (atomically: a killed run resumes from the last complete one). Several hook
points are trained from one stream of batches (one model forward pass feeds them all).
A transcoder is asked for as a pair (input hook, output hook): it reads the first hook's
rows and predicts the second's, from the same batch of the same stream.

The MLX backend's step is a pure function of (state, batch, schedule scalars) compiled
with ``mx.compile``; the batch shape never changes, and the host reads numbers back only
at logging steps. The optimiser is Adam with bias correction, written out (the torch_ref
trainer writes the same update independently).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .. import distributed
from ..distributed import World
from ..options import option
from .buffer import ShuffleBuffer, array_source, check_finite
from .config import (
    ARCHITECTURES,
    BATCH_TOPK,
    SAEConfig,
    matryoshka_widths,
    parse_matryoshka_widths,
)
from .files import write_folder_atomic
from .schedules import coeff_at, default_lr, lr_at, warmup_steps_for

UNIT_NORM_DECODER = ("topk", *BATCH_TOPK, "jumprelu")
# Fewer training tokens per latent than this draws a warning (see short_run_warning).
MIN_TOKENS_PER_LATENT = 100


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (shared by every hook point of the run)."""

    architecture: str | None = option(
        None,
        "SAE architecture (default topk; batchtopk for transcoders, which SAELens 6.54 loads "
        "as a jumprelu_transcoder: it has no TopK transcoder)",
        flag="--arch",
        choices=ARCHITECTURES,
    )
    d_sae: int | None = option(None, "number of latents", group="size")
    # d_sae = expansion * d_in when d_sae is not given
    expansion: int | None = option(None, "d_sae = expansion x d_in (default 16)", group="size")
    k: int | None = option(32, "active latents (topk, batchtopk, matryoshka_batchtopk)")
    matryoshka_widths: list[int] | None = option(
        None,
        "matryoshka_batchtopk: nested prefix widths, increasing (d_sae appended if missing; "
        "default x4 from 128: 128,512,2048,...,d_sae)",
        type=str,
        metavar="W1,W2,...",
    )
    matryoshka_aux: bool = option(
        False,
        "matryoshka_batchtopk: AuxK per prefix block, on that prefix's residual "
        "(SAELens's use_matryoshka_aux_loss)",
    )
    tokens: int = option(1_000_000, "training tokens")
    batch_size: int = option(4096, "tokens per step")
    lr: float | None = option(
        None, "peak learning rate (default 1.5e-3 x sqrt(2^14/d_sae), at most 5e-3)"
    )
    lr_warmup_steps: int | None = option(
        None, "steps of linear learning-rate warm-up (default: lr_warmup_frac of the steps)"
    )
    lr_warmup_frac: float = option(0.05, "warm-up as a fraction of the steps")
    lr_warmup_min_steps: int = option(
        10, "at least this many warm-up steps (at most 1/4 of the run)"
    )
    lr_decay_frac: float = option(0.2, "fraction of the steps, at the end, of decay to 0")
    lr_decay_shape: str = option("linear", "shape of the decay", choices=("linear", "cosine"))
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    sparsity_coeff: float | None = option(None, "L1 (standard, 5) or L0 (jumprelu, 1)")
    sparsity_warmup_frac: float = option(0.05, "fraction of the steps of sparsity warm-up")
    aux_coeff: float = 1 / 32
    aux_k: int | None = None  # None: d_in // 2
    decoder_constraint: str = option(
        "renorm",
        "unit-norm decoder rows: renormalise after each step, or project the gradient too (Gao et al.)",
        choices=("renorm", "project"),
    )
    grad_clip: float | None = option(None, "clip the global gradient norm to this")
    dec_init_norm: float | None = option(None, "decoder row norm at init (default 1; standard 0.1)")
    dead_tokens: int = option(1_000_000, "dead after this many tokens unfired")
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    batchtopk_threshold_rate: float = 0.01
    skip_transcoder: bool = option(
        False, "transcoders: add a linear skip term x @ W_skip.T (SAELens's SkipTranscoder)"
    )
    # scale inputs (and a transcoder's targets, each by its own factor) to mean norm sqrt(d)
    normalize_activations: bool = option(True, "train on raw activations", flag="--no-normalize")
    b_dec_init: str = "geometric_median"
    init_rows: int = 16384
    buffer_rows: int = option(
        65536, "rows per shuffle block, exactly, at most the run's tokens (see sae.buffer)"
    )
    sparse_decode: bool = option(True, "TopK: decode with a dense product", flag="--dense-decode")
    seed: int = option(0, "random seed")
    log_every: int = option(50, "steps between log lines")
    checkpoint_every: int = option(200, "steps between checkpoints")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One-line errors for values out of range (before anything runs or is written)."""
        from .. import checks as c

        if self.architecture is not None:
            c.choice("architecture", self.architecture, ARCHITECTURES)
        if self.d_sae is not None and self.expansion is not None:
            raise ValueError(f"give d_sae ({self.d_sae}) or expansion ({self.expansion}), not both")
        self.d_sae = c.integer("d_sae", self.d_sae, none_ok=True)
        self.expansion = c.integer("expansion", self.expansion, none_ok=True)
        self.k = c.integer(
            "k", self.k, none_ok=self.architecture not in ("topk", *BATCH_TOPK, None)
        )
        if self.matryoshka_widths is not None:
            if self.architecture != "matryoshka_batchtopk":
                raise ValueError(
                    "matryoshka_widths is for --arch matryoshka_batchtopk, not "
                    f"{self.architecture or 'the default'}"
                )
            self.matryoshka_widths = parse_matryoshka_widths(self.matryoshka_widths)
            if self.d_sae is not None:  # else checked in resolve, once d_sae is known
                matryoshka_widths(self.matryoshka_widths, self.d_sae)
        if self.matryoshka_aux and self.architecture != "matryoshka_batchtopk":
            raise ValueError(
                "matryoshka_aux is for --arch matryoshka_batchtopk, not "
                f"{self.architecture or 'the default'}"
            )
        self.tokens = c.integer("tokens", self.tokens)
        self.batch_size = c.integer("batch_size", self.batch_size)
        if self.tokens < self.batch_size:
            raise ValueError(
                f"tokens ({self.tokens}) must be at least one batch (batch_size {self.batch_size})"
            )
        c.number("lr", self.lr, low=0, low_open=True, high=1, none_ok=True)
        self.lr_warmup_steps = c.integer("lr_warmup_steps", self.lr_warmup_steps, minimum=0, none_ok=True)  # fmt: skip
        c.number("lr_warmup_frac", self.lr_warmup_frac, low=0, high=1)
        self.lr_warmup_min_steps = c.integer("lr_warmup_min_steps", self.lr_warmup_min_steps, minimum=0)  # fmt: skip
        c.number("lr_decay_frac", self.lr_decay_frac, low=0, high=1)
        c.choice("lr_decay_shape", self.lr_decay_shape, ("linear", "cosine"))
        c.choice("decoder_constraint", self.decoder_constraint, ("renorm", "project"))
        c.number("grad_clip", self.grad_clip, low=0, low_open=True, none_ok=True)
        c.number("dec_init_norm", self.dec_init_norm, low=0, low_open=True, none_ok=True)
        if len(tuple(self.adam_betas)) != 2:
            raise ValueError(f"adam_betas must be two numbers, got {self.adam_betas!r}")
        for b in self.adam_betas:
            c.number("adam_betas", b, low=0, high=1, high_open=True)
        c.number("adam_eps", self.adam_eps, low=0, low_open=True)
        c.number("sparsity_coeff", self.sparsity_coeff, low=0, none_ok=True)
        c.number("sparsity_warmup_frac", self.sparsity_warmup_frac, low=0, high=1)
        c.number("aux_coeff", self.aux_coeff, low=0)
        self.aux_k = c.integer("aux_k", self.aux_k, none_ok=True)
        self.dead_tokens = c.integer("dead_tokens", self.dead_tokens, maximum=2**31 - 1)
        c.number("jumprelu_bandwidth", self.jumprelu_bandwidth, low=0, low_open=True)
        c.number("jumprelu_init_threshold", self.jumprelu_init_threshold, low=0, low_open=True)
        c.number("batchtopk_threshold_rate", self.batchtopk_threshold_rate, low=0, low_open=True, high=1)  # fmt: skip
        c.choice("b_dec_init", self.b_dec_init, ("geometric_median", "mean", "zeros"))
        self.init_rows = c.integer("init_rows", self.init_rows)
        self.buffer_rows = c.integer("buffer_rows", self.buffer_rows)
        self.seed = c.integer("seed", self.seed, minimum=0)
        self.log_every = c.integer("log_every", self.log_every)
        self.checkpoint_every = c.integer("checkpoint_every", self.checkpoint_every)

    def resolve(self, d_in: int, transcoder: bool = False) -> TrainConfig:
        """Fill the derived fields for an input width (of an SAE, or of a transcoder when
        ``transcoder``: the default architecture is then BatchTopK); checks every value."""
        arch = self.architecture or ("batchtopk" if transcoder else "topk")
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}")
        if self.d_sae is not None and self.expansion is not None:
            raise ValueError(f"give d_sae ({self.d_sae}) or expansion ({self.expansion}), not both")
        d_sae = self.d_sae or (self.expansion or 16) * d_in
        out = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        out.d_sae, out.expansion, out.architecture = int(d_sae), None, arch
        out.skip_transcoder = bool(self.skip_transcoder and transcoder)
        if out.aux_k is not None and not 1 <= out.aux_k <= out.d_sae:
            raise ValueError(f"aux_k={out.aux_k} must be between 1 and d_sae={out.d_sae}")
        if out.lr_decay_shape not in ("linear", "cosine"):
            raise ValueError(
                f"lr_decay_shape must be 'linear' or 'cosine', not {out.lr_decay_shape!r}"
            )
        if out.decoder_constraint not in ("renorm", "project"):
            raise ValueError(
                f"decoder_constraint must be 'renorm' or 'project', not {out.decoder_constraint!r}"
            )
        if out.grad_clip is not None and not out.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (got {out.grad_clip})")
        if out.lr is None:
            out.lr = default_lr(out.d_sae)
        if out.sparsity_coeff is None:
            out.sparsity_coeff = {"standard": 5.0, "jumprelu": 1.0}.get(arch, 0.0)
        if arch in ("topk", *BATCH_TOPK):
            if self.k is None or not 1 <= self.k <= out.d_sae:
                raise ValueError(f"k={self.k} must be between 1 and d_sae={out.d_sae}")
        else:
            out.k = None
        if arch == "matryoshka_batchtopk":
            out.matryoshka_widths = matryoshka_widths(out.matryoshka_widths, out.d_sae)
        if out.batch_size < 1 or out.tokens < out.batch_size:
            raise ValueError(f"tokens ({out.tokens}) must be at least one batch ({out.batch_size})")
        out.adam_betas = tuple(out.adam_betas)
        if out.lr_warmup_steps is None:
            out.lr_warmup_steps = warmup_steps_for(
                out.total_steps, out.lr_warmup_frac, out.lr_warmup_min_steps
            )
        return out

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size

    def sae_config(
        self, d_in: int, hook: str | None, model_name: str | None,
        d_out: int | None = None, hook_out: str | None = None,
    ) -> SAEConfig:  # fmt: skip
        """The SAE's config (a transcoder's with ``d_out``, predicting ``hook_out``)."""
        return SAEConfig(
            d_in=d_in,
            d_sae=self.d_sae,
            architecture=self.architecture,
            hook_name=hook,
            model_name=model_name,
            k=self.k,
            d_out=d_out,
            hook_name_out=hook_out,
            skip=self.skip_transcoder and d_out is not None,
            matryoshka_widths=self.matryoshka_widths,
        )


# --- the MLX backend ---------------------------------------------------------------------------


class MLXBackend:
    """One SAE's training state in MLX and its compiled step."""

    name = "mlx"

    def __init__(
        self, cfg: SAEConfig, tc: TrainConfig, params: dict, scale: float, world_size: int = 1,
        scale_out: float | None = None,
    ):  # fmt: skip
        """``scale``: the input's normalisation factor; ``scale_out``: a transcoder's target's."""
        import mlx.core as mx

        self.mx, self.cfg, self.tc = mx, cfg, tc
        # data-parallel: this rank steps on its 1/world_size slice of every global batch
        self.world_size = world_size
        p = {k: mx.array(v) for k, v in params.items()}
        thr = 0.0
        if cfg.architecture == "jumprelu":
            p["log_threshold"] = mx.log(p.pop("threshold"))
        elif cfg.architecture in BATCH_TOPK:
            thr = float(np.asarray(params["threshold"])[0])
            p.pop("threshold")
        self.state = {
            "params": p,
            "m": {k: mx.zeros_like(v) for k, v in p.items()},
            "v": {k: mx.zeros_like(v) for k, v in p.items()},
            "since_fired": mx.zeros(cfg.d_sae, dtype=mx.int32),
            "threshold": mx.array(thr, dtype=mx.float32),
            "scale": mx.array(scale, dtype=mx.float32),
        }
        if cfg.is_transcoder:
            self.state["scale_out"] = mx.array(1.0 if scale_out is None else scale_out, mx.float32)
        self._steps = {}
        self._acc = None
        self._n_dead = None  # (mx scalar) latents dead after the last step

    def _make_step(self, with_aux: bool, capacity: int | None):
        """The compiled step; ``capacity``: AuxK's columns (``aux_capacity_for``), static."""
        mx, cfg, tc = self.mx, self.cfg, self.tc
        from .sae import loss_terms, renormalise_decoder

        b1, b2 = tc.adam_betas
        eps = tc.adam_eps
        n_ranks = self.world_size
        project = cfg.architecture in UNIT_NORM_DECODER and tc.decoder_constraint == "project"

        def mean_over_ranks(arrays: dict) -> dict:
            """The global batch's means of per-slice means, in ONE all_sum (one flat buffer:
            every collective is a round trip between the ranks)."""
            if n_ranks == 1:
                return arrays
            names = list(arrays)
            flat = mx.concatenate([arrays[k].reshape(-1).astype(mx.float32) for k in names])
            flat = mx.distributed.all_sum(flat) / n_ranks
            out, start = {}, 0
            for k in names:
                a = arrays[k]
                out[k] = flat[start : start + a.size].reshape(a.shape).astype(a.dtype)
                start += a.size
            return out

        def step(state, xs, lr, coeff, bc1, bc2):
            # xs: (x,) for an SAE, (x, y) for a transcoder (y: the target, scaled by its own factor)
            x = xs[0] * state["scale"]
            y = xs[1] * state["scale_out"] if cfg.is_transcoder else None
            dead = (state["since_fired"] > tc.dead_tokens) if with_aux else None

            def lossfn(p):
                return loss_terms(
                    p,
                    x,
                    cfg,
                    sparsity_coeff=coeff,
                    dead_mask=dead,
                    aux_k=tc.aux_k,
                    aux_coeff=tc.aux_coeff,
                    matryoshka_aux=tc.matryoshka_aux,
                    bandwidth=tc.jumprelu_bandwidth,
                    sparse_decode=tc.sparse_decode,
                    world_size=n_ranks,
                    target=y,
                    aux_capacity=capacity,
                )

            (loss, out), grads = mx.value_and_grad(lossfn)(state["params"])
            grads = mean_over_ranks(grads)
            if project:  # remove each decoder row's gradient along the row (Gao et al. 2024)
                w = state["params"]["W_dec"]
                g = grads["W_dec"]
                grads = {**grads, "W_dec": g - (g * w).sum(axis=-1, keepdims=True) * w}
            if tc.grad_clip is not None:
                norm = mx.sqrt(sum((g * g).sum() for g in grads.values()))
                factor = mx.minimum(1.0, tc.grad_clip / (norm + 1e-12))
                grads = {k: g * factor for k, g in grads.items()}
            new_p, new_m, new_v = {}, {}, {}
            for name, p in state["params"].items():
                g = grads[name]
                m = b1 * state["m"][name] + (1 - b1) * g
                v = b2 * state["v"][name] + (1 - b2) * g * g
                new_p[name] = p - lr * (m / bc1) / (mx.sqrt(v / bc2) + eps)
                new_m[name], new_v[name] = m, v
            if cfg.architecture in UNIT_NORM_DECODER:
                new_p = renormalise_decoder(new_p)
            if out["f"] is None:  # sparse TopK: latents that fired, from the indices
                hits = (out["values"] > 0).astype(mx.float32).reshape(-1)
                counts = mx.zeros(cfg.d_sae).at[out["indices"].reshape(-1)].add(hits)
                fired = counts > 0
            else:
                fired = (out["f"] > 0).any(axis=0)
            # the step's statistics, reduced over the ranks in one go; the variance explained
            # is the target's (x itself for an SAE)
            t = x if y is None else y
            stats = {"fired": fired.astype(mx.float32), "loss": loss, "mse": out["mse"],
                     "l0": out["l0"], "mean": t.mean(axis=0), "sq": (t * t).sum(axis=-1).mean()}  # fmt: skip
            if "prefix_mse" in out:  # Matryoshka: each prefix's reconstruction error
                stats["prefix_mse"] = out["prefix_mse"]
            if n_ranks > 1:
                stats = mean_over_ranks(stats)
                fired = stats["fired"] > 0  # fired on any rank's slice
            n = x.shape[0] * n_ranks
            since = mx.where(fired, 0, state["since_fired"] + n).astype(mx.int32)
            thr = state["threshold"]
            if cfg.architecture in BATCH_TOPK:
                f = out["f"]
                low = mx.min(mx.where(f > 0, f, mx.inf))
                if n_ranks > 1:
                    low = mx.distributed.all_min(low)
                r = tc.batchtopk_threshold_rate
                upd = mx.where(thr == 0, low, (1 - r) * thr + r * low)
                thr = mx.where(mx.isinf(low), thr, upd)
            if n_ranks == 1:
                centred = t - t.mean(axis=0)
                var = (centred * centred).sum(axis=-1).mean()
            else:  # about the global batch's mean: E|x|^2 - |E x|^2 over every slice
                var = stats["sq"] - (stats["mean"] * stats["mean"]).sum()
            metrics = {
                "loss": stats["loss"],
                "mse": stats["mse"],
                "var": var,
                "l0": stats["l0"],
                "n_dead": (since > tc.dead_tokens).sum(),
            }  # for the next step's capacity
            if "prefix_mse" in stats:
                metrics["prefix_mse"] = stats["prefix_mse"]
            new_state = {
                **state,
                "params": new_p,
                "m": new_m,
                "v": new_v,
                "since_fired": since,
                "threshold": thr,
            }
            return new_state, metrics

        return mx.compile(step)

    def step(
        self, x: np.ndarray, lr: float, coeff: float, t: int, with_aux: bool,
        y: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """One optimisation step on rows x (batch, d_in); ``y`` (batch, d_out): a
        transcoder's targets."""
        from .sae import aux_capacity_for

        mx = self.mx
        # AuxK reads only the columns that can be dead: as many as the last step left dead
        # (a count the step computed and evaluated with the state: no extra synchronisation)
        capacity = aux_capacity_for(self.n_dead(), self.cfg.d_sae) if with_aux else None
        key = (with_aux, capacity)
        if key not in self._steps:
            self._steps[key] = self._make_step(with_aux, capacity)
        b1, b2 = self.tc.adam_betas
        scalars = [mx.array(v, dtype=mx.float32) for v in (lr, coeff, 1 - b1**t, 1 - b2**t)]
        xs = (mx.array(x),) if y is None else (mx.array(x), mx.array(y))
        self.state, metrics = self._steps[key](self.state, xs, *scalars)
        self._n_dead = metrics.pop("n_dead")
        if self._acc is None:
            self._acc = {k: v for k, v in metrics.items()}
            self._acc["n"] = mx.array(1.0)
        else:
            self._acc = {k: self._acc[k] + metrics.get(k, 1.0) for k in self._acc}
        mx.eval(self.state, self._acc, self._n_dead)

    def pop_metrics(self) -> dict:
        acc = {k: np.array(v, np.float64) for k, v in self._acc.items()}
        self._acc = None
        return logged_metrics(acc, float(acc.pop("n")))

    def n_dead(self) -> int:
        if self._n_dead is None:  # a new or loaded state
            self._n_dead = (self.state["since_fired"] > self.tc.dead_tokens).sum()
        return int(self._n_dead.item())

    def state_numpy(self) -> dict[str, np.ndarray]:
        s = self.state
        out = {f"params.{k}": np.array(v) for k, v in s["params"].items()}
        out.update({f"m.{k}": np.array(v) for k, v in s["m"].items()})
        out.update({f"v.{k}": np.array(v) for k, v in s["v"].items()})
        for k in ("since_fired", "threshold", "scale", "scale_out"):
            if k in s:
                out[k] = np.array(s[k])
        return out

    def load_state_numpy(self, d: dict[str, np.ndarray]) -> None:
        mx = self.mx
        s = {"params": {}, "m": {}, "v": {}}
        for key, val in d.items():
            if "." in key:
                group, name = key.split(".", 1)
                s[group][name] = mx.array(val)
            else:
                s[key] = mx.array(val)
        self.state = s
        self._n_dead = None

    def raw_params(self) -> dict[str, np.ndarray]:
        """Trained parameters in the (normalised) training units, as NumPy."""
        return {k: np.array(v) for k, v in self.state["params"].items()}

    def global_threshold(self) -> float:
        return float(self.state["threshold"].item())


def logged_metrics(acc: dict, n: float) -> dict:
    """A log row's metrics from sums over ``n`` steps of the step metrics (loss, mse, var, l0;
    Matryoshka: prefix_mse, one per prefix), in both backends: means, and explained variance
    1 - mse / var of the whole SAE and (prefix_explained_variance) of each prefix."""
    var = float(acc["var"])

    def ev(mse):
        return 1 - float(mse) / var if var > 0 else 0.0

    out = {
        "loss": float(acc["loss"]) / n,
        "mse": float(acc["mse"]) / n,
        "explained_variance": ev(acc["mse"]),
        "l0": float(acc["l0"]) / n,
    }
    if "prefix_mse" in acc:
        out["prefix_explained_variance"] = [ev(m) for m in np.asarray(acc["prefix_mse"])]
    return out


def export_params(
    cfg: SAEConfig, raw: dict[str, np.ndarray], scale: float, threshold: float,
    scale_out: float | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Inference weights in the hook's raw units: the input scale s folded in
    (W_enc * s, W_dec / s, b_dec / s), thresholds as SAELens stores them. A transcoder's
    output is in its target's units (scale_out t): W_dec / t, b_dec / t, W_skip * s / t."""
    p = {k: np.asarray(v, np.float64) for k, v in raw.items()}
    s_out = scale if scale_out is None else scale_out
    out = {
        "W_enc": p["W_enc"] * scale,
        "b_enc": p["b_enc"],
        "W_dec": p["W_dec"] / s_out,
        "b_dec": p["b_dec"] / s_out,
    }
    if "W_skip" in p:
        out["W_skip"] = p["W_skip"] * scale / s_out
    if cfg.architecture == "jumprelu":
        out["threshold"] = np.exp(p["log_threshold"])
    elif cfg.architecture in BATCH_TOPK:
        out["threshold"] = np.full(cfg.d_sae, threshold)
        cfg.threshold = float(threshold)
    return {k: v.astype(np.float32) for k, v in out.items()}


# --- the driver ----------------------------------------------------------------------------------

CHECKPOINT_DIR = "checkpoint"


def _hook_file(hook: str) -> str:
    return hook.replace("/", "_")


class TrainingDiverged(ValueError):
    """NaN or infinity in the SAE's loss or weights (the last good checkpoint is kept)."""


def _diverged(hook: str, what: str, step: int) -> TrainingDiverged:
    return TrainingDiverged(
        f"training of {hook} diverged at step {step}: {what} is NaN or infinite; lower --lr "
        "(the last checkpoint before it is kept; rerun with --no-resume to start over)"
    )


def save_checkpoint(out: Path, meta: dict, backends: dict, buffer_state: dict) -> None:
    from safetensors.numpy import save_file

    from ..io import to_json

    states = {hook: be.state_numpy() for hook, be in backends.items()}
    for hook, st in states.items():
        for name, a in st.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise _diverged(hook, name, meta["step"])

    def write(tmp: Path) -> None:
        for hook, st in states.items():
            save_file(st, str(tmp / f"{_hook_file(hook)}.safetensors"))
        carry = buffer_state.get("carry")
        if carry:
            np.savez(tmp / "carry.npz", **{_hook_file(h): a for h, a in carry.items()})
        state = {k: v for k, v in buffer_state.items() if k != "carry"}
        (tmp / "trainer.json").write_text(
            to_json({**meta, "buffer": state}, "trainer.json", indent=1)
        )

    write_folder_atomic(out / CHECKPOINT_DIR, write)


def load_checkpoint(out: Path, hooks: list[str], source_hooks: list[str] | None = None):
    """(meta, the state of each of ``hooks`` (SAE names), the buffer's state) or None;
    ``source_hooks``: the hooks the source yields (the buffer's carry; default ``hooks``)."""
    from ..io import load_safetensors, read_json

    folder = out / CHECKPOINT_DIR
    if not (folder / "trainer.json").is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"the checkpoint {folder} has no trainer.json (damaged); rerun with --no-resume "
                "or delete it"
            )
        return None
    fix = f"rerun with --no-resume to start over, or delete {folder}"
    meta = read_json(folder / "trainer.json", fix)
    try:
        states = {}
        for h in hooks:
            path = folder / f"{_hook_file(h)}.safetensors"
            if not path.is_file():
                raise ValueError(f"the checkpoint {folder} has no state for {h}; {fix}")
            states[h] = load_safetensors(path, fix)
        buffer = dict(meta.pop("buffer"))
        carry_path = folder / "carry.npz"
        if carry_path.is_file():
            with np.load(carry_path) as z:
                buffer["carry"] = {h: z[_hook_file(h)] for h in source_hooks or hooks}
        for key in ("train_config", "hooks", "backend", "step", "log", "scales", "d_in"):
            meta[key]  # noqa: B018 - a KeyError here means a damaged trainer.json
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the reader says
        raise ValueError(
            f"the checkpoint {folder} is damaged ({type(e).__name__}: {e}); {fix}"
        ) from None
    return meta, states, buffer


def _init_sample(source, hooks: list[str], n_rows: int) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {h: [] for h in hooks}
    n = 0
    for _, chunk in source(0):
        check_finite(chunk)
        missing = [h for h in hooks if h not in chunk]
        if missing:
            raise ValueError(f"the activation source has no {', '.join(missing)}")
        for h in hooks:
            parts[h].append(chunk[h])
        n += next(iter(chunk.values())).shape[0]
        if n >= n_rows:
            break
    if n == 0:
        raise ValueError("the activation source is empty")
    return {h: np.concatenate(parts[h])[:n_rows] for h in hooks}


def as_source(source, hooks: list[str]):
    """``source`` as the trainer's source: a source function is kept; a NumPy or MLX array of
    shape (n_rows, d_in) (or (..., d_in), flattened) feeds the one hook given; a dict
    {hook: array} feeds several hooks (the same rows, row for row)."""
    if callable(source) and not hasattr(source, "shape"):
        return source
    if not isinstance(source, dict):
        if len(hooks) != 1:
            raise ValueError(
                f"one array feeds one hook; give a dict {{hook: array}} for {len(hooks)} hooks"
            )
        source = {hooks[0]: source}
    arrays = {}
    for h, a in source.items():
        if not hasattr(a, "shape"):
            raise TypeError(f"activations of {h} must be an array, not {type(a).__name__}")
        if not isinstance(a, np.ndarray):  # mx.array, torch tensor: to NumPy once
            a = np.asarray(a)
        if a.ndim < 2:
            raise ValueError(f"activations of {h} must be (n_rows, d_in), got shape {a.shape}")
        arrays[h] = a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a
    missing = [h for h in hooks if h not in arrays]
    if missing:
        raise ValueError(f"no activations given for {', '.join(missing)} (got {', '.join(arrays)})")
    return array_source({h: arrays[h] for h in hooks})


def short_run_warning(tc: TrainConfig) -> str | None:
    """A warning for a run too short for its width (``tc`` resolved), or None."""
    per_latent = tc.tokens / tc.d_sae
    if per_latent < MIN_TOKENS_PER_LATENT:
        return (
            f"{tc.tokens} training tokens for {tc.d_sae} latents ({per_latent:.0f} per latent, "
            f"{tc.total_steps} steps) is a short run: expect a lower explained variance than "
            f"with more data (at least {MIN_TOKENS_PER_LATENT * tc.d_sae} tokens, "
            f"{MIN_TOKENS_PER_LATENT} per latent, recommended)"
        )
    return None


def train_sae(
    source,
    hooks: str | list[str],
    d_in: int | dict[str, int] | None = None,
    tc: TrainConfig | None = None,
    out: str | os.PathLike = "sae_run",
    *,
    backend: str = "mlx",
    model_name: str | None = None,
    resume: bool = True,
    progress: bool = True,
    metadata: dict | None = None,
    stop_after_steps: int | None = None,
    world: World | None = None,
    keep_checkpoint: bool = False,
    warn=None,
) -> dict:
    """Train one SAE per hook on batches from ``source``; write ``out/<hook>/`` SAELens folders.

    ``source``: a NumPy or MLX array (n_rows, d_in) for one hook, a dict {hook: array}, or a
    source function (``mlx_interp.sae.stream.model_source`` / ``extraction_source``).
    ``hooks``: a hook name or a list of them. ``d_in`` (optional) is checked against the data.
    A pair (input hook, output hook) in the list trains a transcoder predicting the second
    hook's rows from the first's (a skip transcoder with ``tc.skip_transcoder``), written to
    ``out/<input>_to_<output>/``; ``source`` must then yield both hooks (a dict of two arrays,
    row for row, or a model source asked for both: one forward pass feeds both).

    Returns a summary dict (per hook: final metrics, the log) that is also written to
    ``out/training.json``. ``stop_after_steps`` ends early (leaving a checkpoint), as a
    killed run would; a later call with the same arguments resumes. A finished run removes
    ``out/checkpoint/`` unless ``keep_checkpoint``; calling again with the same settings
    returns the finished run's summary. ``warn(message)`` is told of a run too short for its
    width (default: ``warnings.warn``).

    Data-parallel (``mlx.launch -n N -- mlx-interp train-sae ...``; ``world`` defaults to
    ``mlx_interp.distributed.world()``): every rank reads the same global batches from
    ``source`` and steps on its own 1/N slice of each; gradients, firing counts (dead
    latents), BatchTopK's selection and threshold and every logged metric are reduced across
    the ranks inside the compiled step, so the result does not depend on N. Rank 0 writes
    the checkpoints, the SAE folders and training.json; every rank resumes from them.
    """
    from ..io import output_folder

    out = Path(out)
    tc = tc if tc is not None else TrainConfig()
    _backend_class(backend)
    if not isinstance(tc, TrainConfig):
        raise ValueError(f"tc must be a TrainConfig, got {type(tc).__name__}")
    tc.validate()
    units = sae_units(hooks)
    hooks = list(units)
    if tc.skip_transcoder and not any(hout for _, hout in units.values()):
        raise ValueError(
            "skip_transcoder (--skip-transcoder) is for transcoders: give (input, output) hook "
            "pairs (--hook IN --hook-out OUT)"
        )
    world = world or distributed.world()
    if world.size > 1:
        if backend != "mlx":
            raise ValueError("data-parallel training (several ranks) needs the mlx backend")
        if tc.batch_size % world.size:
            raise ValueError(
                f"batch_size {tc.batch_size} is not divisible by the {world.size} ranks; "
                f"give a multiple of {world.size}"
            )
    source = as_source(source, source_hooks(units))
    if stop_after_steps is not None and stop_after_steps < 1:
        raise ValueError(f"stop_after_steps must be a positive integer, got {stop_after_steps}")
    # rank 0 writes (and locks) the folder; the other ranks only read its checkpoint
    lock = output_folder(out) if world.is_main else contextlib.nullcontext()
    with lock:
        return _train_sae(source, units, d_in, tc, out, backend, model_name, resume, progress,
                          metadata, stop_after_steps, world, keep_checkpoint, warn)  # fmt: skip


def sae_units(hooks) -> dict[str, tuple[str, str | None]]:
    """The SAEs a ``hooks`` argument asks for: name -> (input hook, output hook or None).

    A hook name is an SAE named after it; a pair (input, output) a transcoder named
    ``<input>_to_<output>`` (its folder under the run's output)."""
    items = [hooks] if isinstance(hooks, str) else list(hooks)
    units: dict[str, tuple[str, str | None]] = {}
    for item in items:
        if isinstance(item, str):
            name, unit = item, (item, None)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(h, str) for h in item):  # fmt: skip
            if item[0] == item[1]:
                raise ValueError(f"a transcoder reads one hook and predicts another, got {item}")
            name, unit = f"{item[0]}_to_{item[1]}", (item[0], item[1])
        else:
            raise ValueError(
                f"a hook is a hook name, or a pair (input hook, output hook) for a transcoder; got {item!r}"
            )
        if name in units:
            raise ValueError(f"give each hook point once (got {items})")
        units[name] = unit
    if not units:
        raise ValueError("give at least one hook point")
    return units


def source_hooks(units: dict[str, tuple[str, str | None]]) -> list[str]:
    """The hooks the activation source must yield for ``units`` (each once, in order)."""
    out = []
    for hin, hout in units.values():
        out += [h for h in (hin, hout) if h is not None and h not in out]
    return out


def _train_sae(source, units, d_in, tc, out, backend, model_name, resume, progress, metadata,
               stop_after_steps, world, keep_checkpoint, warn) -> dict:  # fmt: skip
    from .sae import init_params

    make = _backend_class(backend)
    hooks, reads = list(units), source_hooks(units)
    ckpt = load_checkpoint(out, hooks, reads) if resume else None
    sample = None
    if ckpt is not None:
        d_ins = ckpt[0]["d_in"]
        d_outs = ckpt[0].get("d_out", {})
    else:
        # (the rows of the run's first steps; no more than the run will use)
        sample = _init_sample(source, reads, min(tc.init_rows, tc.total_steps * tc.batch_size))
        d_ins = {h: int(sample[units[h][0]].shape[1]) for h in hooks}
        d_outs = {h: int(sample[units[h][1]].shape[1]) for h in hooks if units[h][1]}
    widths = {units[h][0]: d_ins[h] for h in hooks}
    widths.update({units[h][1]: d_outs[h] for h in d_outs})
    if isinstance(d_in, int):
        d_in = {h: d_in for h in hooks}
    for h in hooks:
        if d_in is not None and d_in.get(h, d_ins[h]) != d_ins[h]:
            raise ValueError(f"{h} activations have width {d_ins[h]}, expected {d_in[h]}")
    tcs = {h: tc.resolve(d_ins[h], transcoder=h in d_outs) for h in hooks}
    tc = tcs[hooks[0]]
    world.check_same(
        "train-sae",
        {"train": {h: asdict(tcs[h]) for h in hooks}, "hooks": hooks, "d_in": d_ins,
         "resumed_at": ckpt[0]["step"] if ckpt is not None else 0},
    )  # fmt: skip
    part = slice(
        world.rank * tc.batch_size // world.size, (world.rank + 1) * tc.batch_size // world.size
    )
    make_backend = make if world.size == 1 else (lambda *a, **kw: make(*a, world_size=world.size, **kw))  # fmt: skip
    total = tc.total_steps
    meta_cfg = {h: asdict(tcs[h]) for h in hooks}
    n_rows = getattr(source, "n_rows", None)  # rows the source holds, where it knows
    max_rows = getattr(source, "max_rows", None)  # or at most this many (rows left out later)
    if n_rows is None and max_rows is not None and max_rows < tc.tokens:
        raise ValueError(
            f"{tc.tokens} training tokens asked for, but the activations hold at most {max_rows} "
            "rows (over all epochs); ask for fewer tokens, give more --epochs or more activations"
        )
    if n_rows is not None and n_rows // tc.batch_size < total:
        raise ValueError(
            f"{tc.tokens} training tokens asked for, but the activations hold {n_rows} rows "
            f"({n_rows // tc.batch_size} batches of {tc.batch_size}); ask for at most "
            f"{n_rows // tc.batch_size * tc.batch_size} tokens or give more activations"
        )
    if ckpt is None and resume:
        done = _finished_run(out, hooks, meta_cfg, backend)
        if done is not None:
            return done
    warning = short_run_warning(tc) if ckpt is None else None
    if warning:
        if warn is None:
            import warnings

            warnings.warn(warning, UserWarning, stacklevel=2)
        else:
            warn(warning)
    cfgs = {h: tcs[h].sae_config(d_ins[h], units[h][0], model_name, d_outs.get(h), units[h][1])
            for h in hooks}  # fmt: skip
    if ckpt is not None:
        meta, states, buffer_state = ckpt
        if meta["train_config"] != json.loads(json.dumps(meta_cfg)) or meta["hooks"] != hooks:
            raise ValueError(
                f"{out / CHECKPOINT_DIR} is from a run with other settings; use another --out, "
                "or rerun with --no-resume to start over"
            )
        if meta["backend"] != backend:
            raise ValueError(
                f"{out / CHECKPOINT_DIR} was written by the {meta['backend']} backend; give "
                f"--backend {meta['backend']}, or rerun with --no-resume to start over"
            )
        if meta.get("data") is not None and metadata is not None and meta["data"] != _data_identity(metadata):  # fmt: skip
            raise ValueError(
                f"{out / CHECKPOINT_DIR} is from a run on other data ({meta['data']}); give the "
                "same data, use another --out, or rerun with --no-resume to start over"
            )
        if meta.get("model_name") and model_name and meta["model_name"] != model_name:
            raise ValueError(
                f"{out / CHECKPOINT_DIR} is from a run on model {meta['model_name']!r}, not "
                f"{model_name!r}; use another --out, or rerun with --no-resume to start over"
            )
        backends = {}
        for h in hooks:
            be = make_backend(cfgs[h], tcs[h], _placeholder_params(cfgs[h]), 1.0)
            be.load_state_numpy(states[h])
            backends[h] = be
        step, log = meta["step"], meta["log"]
        scales, scales_out = meta["scales"], meta.get("scales_out", {})
    else:
        backends, scales, scales_out = {}, {}, {}

        def norm_scale(hook: str) -> tuple[np.ndarray, float]:
            rows = sample[hook].astype(np.float64)
            mean_norm = float(np.linalg.norm(rows, axis=1).mean())
            if mean_norm == 0:
                raise ValueError(f"the activations of {hook} are all zero: there is nothing to learn")  # fmt: skip
            return rows, (math.sqrt(rows.shape[1]) / mean_norm if tc.normalize_activations else 1.0)  # fmt: skip

        for i, h in enumerate(hooks):
            hin, hout = units[h]
            rows, scale = norm_scale(hin)
            if hout is not None:  # b_dec starts at the target's median, in its own units
                rows, scales_out[h] = norm_scale(hout)
            params = init_params(
                cfgs[h],
                seed=tc.seed + i,
                data_sample=rows[:4096] * scales_out.get(h, scale),
                b_dec_init=tc.b_dec_init,
                threshold_init=tc.jumprelu_init_threshold,
                dec_norm=tc.dec_init_norm,
            )
            extra = {"scale_out": scales_out[h]} if h in scales_out else {}
            backends[h] = make_backend(cfgs[h], tcs[h], params, scale, **extra)
            scales[h] = scale
        step, log, buffer_state = 0, [], None
    # a run shorter than a shuffle block shuffles its own rows: a whole block would make the
    # model compute (and the first step wait for) rows the run never uses
    buffer_rows = min(tc.buffer_rows, total * tc.batch_size)
    buffer = ShuffleBuffer(source, tc.batch_size, buffer_rows, tc.seed, buffer_state)
    with_aux = {h: False for h in hooks}
    if step > 0:
        with_aux = {h: _has_aux(tcs[h]) and backends[h].n_dead() > 0 for h in hooks}
    bar = _progress(total, step, progress and world.is_main)
    t0, tokens0, last_ckpt = time.perf_counter(), step * tc.batch_size, step
    meta = {
        "train_config": meta_cfg,
        "hooks": hooks,
        "d_in": d_ins,
        "scales": scales,
        **({"d_out": d_outs, "scales_out": scales_out, "units": units} if d_outs else {}),
        "backend": backend,
        "model_name": model_name,
        "data": _data_identity(metadata) if metadata is not None else None,
    }
    for batch in buffer:
        if step >= total:
            break
        for hook, width in widths.items():
            if batch[hook].shape[1] != width:
                raise ValueError(
                    f"{hook} activations have width {batch[hook].shape[1]}, but {out / CHECKPOINT_DIR} "
                    f"was trained on width {width}; rerun with --no-resume or use another --out"
                )
        for h in hooks:
            lr = _lr(tcs[h], step, total)
            coeff = coeff_at(step, tcs[h].sparsity_coeff, int(tc.sparsity_warmup_frac * total))
            hin, hout = units[h]
            target = batch[hout][part] if hout is not None else None
            backends[h].step(batch[hin][part], lr, coeff, step + 1, with_aux[h], target)
        step += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == total:
            elapsed = time.perf_counter() - t0
            row = {"step": step, "tokens": step * tc.batch_size}
            # since the start of this process's run (compilation included); elapsed_s lets a
            # benchmark take the steady rate between two rows
            row["tokens_per_s"] = (step * tc.batch_size - tokens0) / max(elapsed, 1e-9)
            row["elapsed_s"] = elapsed
            for h in hooks:
                m = backends[h].pop_metrics()
                for key in ("loss", "mse", "explained_variance", "l0"):
                    if not math.isfinite(m[key]):
                        raise _diverged(h, key, step)
                n_dead = backends[h].n_dead()
                m["dead_fraction"] = n_dead / tc.d_sae
                m["lr"] = _lr(tcs[h], step - 1, total)
                with_aux[h] = _has_aux(tcs[h]) and n_dead > 0
                row[h] = m
            log.append(row)
            first = row[hooks[0]]
            bar.set_postfix(
                L0=f"{first['l0']:.1f}",
                EV=f"{first['explained_variance']:.3f}",
                dead=f"{first['dead_fraction']:.3f}",
                tok_s=f"{row['tokens_per_s']:.0f}",
            )
        if step % tc.checkpoint_every == 0 or step == total:
            if world.is_main:
                save_checkpoint(out, {**meta, "step": step, "log": log}, backends, buffer.state())
            last_ckpt = step
        if stop_after_steps is not None and step >= stop_after_steps:
            break
    bar.close()
    if step > last_ckpt and world.is_main:
        save_checkpoint(out, {**meta, "step": step, "log": log}, backends, buffer.state())
    if step < total and stop_after_steps is None:
        # the schedule is set by the tokens asked for: this checkpoint cannot be finished
        # and would only block the corrected call
        import shutil

        if world.is_main:
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        raise ValueError(
            f"the activations ran out after {step} of {total} steps: {step * tc.batch_size} "
            f"training tokens of the {tc.tokens} asked for; ask for at most "
            f"{step * tc.batch_size} tokens or give more data"
        )
    summary = {"backend": backend, "steps": step, "tokens": step * tc.batch_size, "hooks": {}}
    summary["train_config"] = meta_cfg
    summary["data"] = meta["data"]  # what it was trained on (epochs > 1: read that many times)
    for h in hooks:
        be = backends[h]
        cfg = cfgs[h]
        cfg.metadata = dict(metadata or {})
        weights = export_params(
            cfg, be.raw_params(), scales[h], be.global_threshold(), scales_out.get(h)
        )
        if step >= total and world.is_main:
            _save_sae(out / h, cfg, weights)
        summary["hooks"][h] = {
            "folder": str(out / h),
            "final": log[-1][h] if log else None,
            "input_scale": scales[h],
        }
        if units[h][1] is not None:
            summary["hooks"][h].update(
                hook_in=units[h][0], hook_out=units[h][1], output_scale=scales_out[h]
            )
    summary["log"] = log
    if step >= total and world.is_main:
        from ..io import write_json

        write_json(out / "training.json", summary)
        if not keep_checkpoint:
            import shutil

            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    world.barrier("train-sae: waiting for rank 0 to write the SAE")
    return summary


def _finished_run(out: Path, hooks: list[str], meta_cfg: dict, backend: str) -> dict | None:
    """The summary of a run already finished in ``out`` with these settings (None if none);
    a finished run with other settings is an error, as its checkpoint would be."""
    path = out / "training.json"
    if not path.is_file() or not all((out / h / "cfg.json").is_file() for h in hooks):
        return None
    summary = json.loads(path.read_text())
    same = summary.get("train_config") == json.loads(json.dumps(meta_cfg))
    if not same or list(summary.get("hooks", {})) != hooks or summary.get("backend") != backend:
        raise ValueError(
            f"{out} holds a finished run with other settings; use another output folder, "
            "delete it, or train with resume off"
        )
    return summary


def _has_aux(tc: TrainConfig) -> bool:
    """Whether the architecture has the AuxK dead-latent loss."""
    return tc.architecture in ("topk", *BATCH_TOPK)


def _lr(tc: TrainConfig, step: int, total: int) -> float:
    return lr_at(step, total, tc.lr, tc.lr_warmup_steps, tc.lr_decay_frac, tc.lr_decay_shape)


def _data_identity(metadata: dict) -> dict:
    """What names the training data in ``metadata`` (compared when resuming)."""
    keys = ("dataset_path", "dataset_fingerprint", "dataset_split", "context_size", "activations",
            "epochs")  # fmt: skip
    return json.loads(json.dumps({k: metadata[k] for k in keys if k in metadata}))


def _save_sae(folder: Path, cfg: SAEConfig, weights: dict) -> None:
    from .files import save_sae_folder

    save_sae_folder(folder, cfg, weights)


def _placeholder_params(cfg: SAEConfig) -> dict[str, np.ndarray]:
    from .config import weight_names

    return {k: np.ones(s, np.float32) for k, s in weight_names(cfg).items()}


def _backend_class(name: str):
    if name == "mlx":
        return MLXBackend
    if name == "torch":
        from torch_ref.sae_train import TorchBackend

        return TorchBackend
    raise ValueError(f"backend must be 'mlx' or 'torch', not {name!r}")


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
