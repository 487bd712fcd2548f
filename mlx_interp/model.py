"""HookedModel: a loaded model with its tokenizer, run_with_cache and run_with_hooks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .hooks import (
    ActivationCache,
    HookFn,
    HookState,
    hook_state,
    name_hook_points,
    select_names,
    unknown_name_error,
)
from .io import check_safetensors
from .models import architecture_for, llama, quantized
from .sources import ModelSourceError, resolve_model_dir, weight_files

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

TokensLike = "str | Sequence[str] | mx.array | np.ndarray | Sequence[Sequence[int]]"


_SCORES = "hook_attn_scores"


def _all_finite(named: list[tuple[str, mx.array]]) -> mx.array | None:
    """A lazy boolean scalar: no NaN or infinity in any array (masked attention scores may
    be -inf). One reduction per array."""
    flags = []
    for name, a in named:
        if name.endswith(_SCORES):
            flags.append(mx.logical_not(mx.any(mx.isnan(a) | (a == mx.inf))))
        elif a.dtype == mx.float32:
            flags.append(mx.isfinite(mx.sum(a)))  # NaN and inf survive a float32 sum
        else:
            flags.append(mx.all(mx.isfinite(a)))
    return mx.all(mx.stack(flags)) if flags else None


def layer_of(name: str) -> int | None:
    """The block index of a hook name ('blocks.3.attn.hook_q' -> 3), None outside blocks."""
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


def _computed_before(name: str, stop: int) -> bool:
    """Whether a forward pass stopped before block ``stop`` computes this hook point.

    Blocks before ``stop`` run, and the residual stream they hand on is visible at
    ``blocks.{stop}.hook_resid_pre`` (as in TransformerLens).
    """
    layer = layer_of(name)
    if layer is None:
        return not name.startswith("ln_final")
    return layer < stop or name == f"blocks.{stop}.hook_resid_pre"


def _computed_from(name: str, start: int) -> bool:
    """Whether a forward pass started at block ``start`` (on a given residual stream)
    computes this hook point: those of blocks from ``start`` on and of the final norm."""
    layer = layer_of(name)
    return name.startswith("ln_final") if layer is None else layer >= start


class HookedModel:
    """A transformer with named hook points (see ``hook_names``) and its tokenizer.

    ``cfg`` holds the sizes (d_model, n_layers, n_heads, n_kv_heads, d_head, d_mlp,
    d_vocab, n_ctx) and the architecture name.
    """

    def __init__(
        self, model: nn.Module, tokenizer=None, source: str = "", folder: Path | None = None
    ):
        self.model = model
        self.cfg = model.args
        self.tokenizer = tokenizer
        self.source = source
        self.folder = folder
        # {bits, group_size, mode, n_quantized_layers} for a quantized model, else None.
        self.quantization: dict | None = quantized.summary(model)
        name_hook_points(model)
        self.hook_names: list[str] = self._trace_hook_names()

    def _trace_hook_names(self) -> list[str]:
        # MLX is lazy: this builds a one-token graph, records the visit order, evaluates nothing.
        state = HookState(record_order=True)
        with hook_state(state):
            self.model(mx.zeros((1, 1), dtype=mx.int32))
        return state.visited

    @property
    def dtype(self) -> mx.Dtype:
        return self.model.blocks[0].ln1.weight.dtype

    # ----------------------------------------------------------------- tokens
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"no tokenizer files in {self.folder}; pass token ids instead of text")
        return self.tokenizer

    def tokenize(
        self, texts: str | Sequence[str], prepend_bos: bool | None = None
    ) -> tuple[mx.array, mx.array | None]:
        """Texts -> (tokens (batch, pos) int32, attention_mask (batch, pos) or None).

        Right-padded. The mask is None when no padding was needed. ``prepend_bos``: None
        follows the tokenizer's own default; True/False force a BOS token on or off.
        """
        tok = self._require_tokenizer()
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to tokenize")
        add_special = prepend_bos is None
        rows = [tok.encode(t, add_special_tokens=add_special) for t in texts]
        if prepend_bos:
            if tok.bos_token_id is None:
                raise ValueError("prepend_bos=True, but the tokenizer has no BOS token")
            rows = [[tok.bos_token_id, *r] for r in rows]
        if any(len(r) == 0 for r in rows):
            raise ValueError("an empty text gives no tokens; pass prepend_bos=True or drop it")
        n = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        tokens = np.full((len(rows), n), pad, dtype=np.int32)
        mask = np.zeros((len(rows), n), dtype=np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return mx.array(tokens), (None if mask.all() else mx.array(mask))

    def to_tokens(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> mx.array:
        """Texts -> tokens (batch, pos), right-padded with the pad token."""
        return self.tokenize(texts, prepend_bos)[0]

    def to_str_tokens(self, text: str | mx.array, prepend_bos: bool | None = None) -> list[str]:
        """One text (or a 1-D row of token ids) -> the string of each token."""
        tok = self._require_tokenizer()
        ids = self.to_tokens(text, prepend_bos)[0] if isinstance(text, str) else text
        return [tok.decode([i]) for i in np.asarray(ids).reshape(-1).tolist()]

    def to_string(self, tokens: mx.array | Sequence[int]) -> str | list[str]:
        """Token ids (pos,) or (batch, pos) -> text(s)."""
        tok = self._require_tokenizer()
        arr = np.asarray(tokens)
        if arr.ndim == 1:
            return tok.decode(arr.tolist())
        return [tok.decode(row) for row in arr.tolist()]

    def _prepare(self, tokens, attention_mask, prepend_bos) -> tuple[mx.array, mx.array | None]:
        """Accept text or token ids; check ids and length; return int32 arrays."""
        if isinstance(tokens, str) or (
            isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)
        ):
            if attention_mask is not None:
                raise ValueError("pass attention_mask with token ids, not with text")
            tokens, mask = self.tokenize(tokens, prepend_bos)
            self._check_length(tokens.shape[1], "the text gives")
            return tokens, mask
        arr = np.asarray(tokens)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"tokens must be integer ids of shape (batch, pos), got {arr.dtype} {arr.shape}"
            )
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.cfg.d_vocab})")
        self._check_length(arr.shape[1])
        if attention_mask is not None:
            m = np.asarray(attention_mask)
            m = m[None] if m.ndim == 1 else m
            if m.shape != arr.shape:
                raise ValueError(f"attention_mask shape {m.shape} != tokens shape {arr.shape}")
            attention_mask = None if m.all() else mx.array(m.astype(np.int32))
        return mx.array(arr.astype(np.int32)), attention_mask

    def _check_length(self, n: int, what: str = "") -> None:
        if n > self.cfg.n_ctx:
            raise ValueError(
                f"{what + ' ' if what else ''}{n} tokens, more than the model's context length "
                f"n_ctx={self.cfg.n_ctx}; truncate or split the input"
            )

    # --------------------------------------------------------------- forward
    def _check_stop(self, stop_at_layer: int | None) -> int | None:
        if stop_at_layer is None:
            return None
        n = self.cfg.n_layers
        stop = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer
        if not 0 <= stop <= n:
            raise ValueError(f"stop_at_layer={stop_at_layer} is outside [-{n}, {n}]")
        return stop

    def _hook_table(self, fwd_hooks) -> dict[str, list[HookFn]]:
        table: dict[str, list[HookFn]] = {}
        for name, fn in fwd_hooks:
            for n in select_names(name, self.hook_names):
                table.setdefault(n, []).append(fn)
        return table

    def _check_start(self, start_at_layer, resid, tokens, stop) -> int | None:
        if start_at_layer is None:
            if resid is not None:
                raise ValueError("resid is the input of start_at_layer: pass both or neither")
            return None
        n = self.cfg.n_layers
        start = start_at_layer + n if start_at_layer < 0 else start_at_layer
        if not 0 <= start <= n or (stop is not None and start > stop):
            raise ValueError(
                f"start_at_layer={start_at_layer} is outside [-{n}, {n}]"
                + (f" or after stop_at_layer={stop}" if stop is not None else "")
            )
        want = (*tokens.shape, self.cfg.d_model)
        if resid is None or tuple(resid.shape) != want:
            got = "nothing" if resid is None else f"shape {tuple(resid.shape)}"
            raise ValueError(
                f"start_at_layer needs resid, the residual stream of shape {want} "
                f"(batch, pos, d_model) that block {start} receives; got {got}"
            )
        return start

    def _run(
        self, tokens, attention_mask, prepend_bos, cache_names, hooks, stop_at_layer,
        start_at_layer=None, resid=None,
    ):  # fmt: skip
        tokens, attention_mask = self._prepare(tokens, attention_mask, prepend_bos)
        stop = self._check_stop(stop_at_layer)
        start = self._check_start(start_at_layer, resid, tokens, stop)
        for name in [*cache_names, *hooks]:
            if stop is not None and not _computed_before(name, stop):
                raise ValueError(f"{name} is not computed with stop_at_layer={stop_at_layer}")
            if start is not None and not _computed_from(name, start):
                raise ValueError(f"{name} is not computed with start_at_layer={start_at_layer}")
        if resid is not None:
            resid = resid.astype(self.dtype)
        state = HookState(cache_names, hooks)
        with hook_state(state):
            logits = self.model(tokens, attention_mask, stop, start, resid)
        cache = ActivationCache((n, state.cache[n]) for n in self.hook_names if n in state.cache)
        checked = [("logits", logits)] if logits is not None else list(cache.items())
        ok = _all_finite(checked)
        mx.eval(logits, cache, ok)
        if ok is not None and not ok.item():
            self._locate_non_finite(tokens, attention_mask, hooks, stop, start, resid)
        return logits, cache

    def _locate_non_finite(self, tokens, attention_mask, hooks, stop, start, resid) -> None:
        """Rerun with every hook point cached and raise naming the first one, in forward
        order, that holds NaN or infinity (masked attention scores are -inf by design)."""
        names = [n for n in self.hook_names if start is None or _computed_from(n, start)]
        state = HookState(names, hooks)
        with hook_state(state):
            logits = self.model(tokens, attention_mask, stop, start, resid)
        named = [(n, state.cache[n]) for n in self.hook_names if n in state.cache]
        if logits is not None:
            named.append(("logits", logits))
        for name, a in named:
            if _all_finite([(name, a)]).item():
                continue
            x = np.asarray(a.astype(mx.float32))
            bad = np.isnan(x) | (x == np.inf) if name.endswith(_SCORES) else ~np.isfinite(x)
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"batch row {idx[0]}"
            if not name.endswith((_SCORES, "hook_pattern")) and len(idx) > 1:
                where += f", position {idx[1]}"
            layer = layer_of(name)
            at = f"{name} (layer {layer}, {where})" if layer is not None else f"{name} ({where})"
            dtype = str(self.dtype).split(".")[-1]
            if np.isinf(x[idx]) and dtype != "float32":
                raise ValueError(
                    f"{dtype} overflow in the forward pass: {at} is the first hook point with an "
                    f"infinite value; load the model with dtype float32 (--dtype float32)"
                )
            kind = "NaN" if np.isnan(x[idx]) else "infinity"
            raise ValueError(
                f"non-finite values in the forward pass: {at} is the first hook point holding "
                f"{kind}; check the model's weights and any hook functions"
            )
        raise ValueError("non-finite values in the forward pass")

    def __call__(self, tokens: TokensLike, attention_mask=None, prepend_bos=None) -> mx.array:
        """Logits (batch, pos, d_vocab)."""
        return self._run(tokens, attention_mask, prepend_bos, (), {}, None)[0]

    def run_with_cache(
        self,
        tokens: TokensLike,
        names_filter: None | str | Sequence[str] | Callable[[str], bool] = None,
        stop_at_layer: int | None = None,
        attention_mask: mx.array | None = None,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        prepend_bos: bool | None = None,
        start_at_layer: int | None = None,
        resid: mx.array | None = None,
    ) -> tuple[mx.array | None, ActivationCache]:
        """Run and keep the activations named by ``names_filter`` (all when None).

        Returns (logits (batch, pos, d_vocab), cache). With ``stop_at_layer=L`` only blocks
        before L run and logits is None. With ``start_at_layer=L`` only blocks from L on
        run, on ``resid`` (batch, pos, d_model): what ``blocks.L.hook_resid_pre`` held in
        an earlier pass (as in TransformerLens; ``tokens`` still give the shape and the
        padding). Hooks in ``fwd_hooks`` run first; the cache holds the activations after
        them.
        """
        names = select_names(names_filter, self.hook_names)
        if names_filter is None or callable(names_filter):
            stop = self._check_stop(stop_at_layer)
            if stop is not None:
                names = [n for n in names if _computed_before(n, stop)]
            if start_at_layer is not None:
                start = start_at_layer + self.cfg.n_layers * (start_at_layer < 0)
                names = [n for n in names if _computed_from(n, start)]
        return self._run(
            tokens, attention_mask, prepend_bos, names, self._hook_table(fwd_hooks), stop_at_layer,
            start_at_layer, resid,
        )  # fmt: skip

    def run_with_hooks(
        self,
        tokens: TokensLike,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        attention_mask: mx.array | None = None,
        prepend_bos: bool | None = None,
        start_at_layer: int | None = None,
        resid: mx.array | None = None,
    ) -> mx.array:
        """Logits with each hook fn(activation, hook) applied at its hook point.

        A hook returns the replacement activation (same shape) or None to leave it as is.
        The name may also be a predicate over hook names. ``start_at_layer``, ``resid``:
        run only the blocks from that layer on, on that residual stream (run_with_cache).
        """
        return self._run(
            tokens, attention_mask, prepend_bos, (), self._hook_table(fwd_hooks), None,
            start_at_layer, resid,
        )[0]  # fmt: skip

    def generate(
        self,
        prompt: str | TokensLike,
        max_new_tokens: int = 20,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        temperature: float = 0.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str:
        """The continuation of ``prompt`` (text, without the prompt), token by token.

        Greedy when temperature is 0, else sampled from softmax(logits / temperature) with
        ``seed``. ``fwd_hooks`` apply at every step, to the whole sequence (no KV cache, so
        a hook sees every position each time, as in run_with_hooks).
        """
        tokens, _ = self._prepare(prompt, None, None)
        if tokens.shape[0] != 1:
            raise ValueError("generate takes one prompt")
        check_generate_args(tokens.shape[1], max_new_tokens, temperature, self.cfg.n_ctx)
        table = self._hook_table(fwd_hooks)
        key = mx.random.key(seed)
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits = self._run(tokens, None, None, (), table, None)[0][:, -1].astype(mx.float32)
            if temperature > 0:
                key, sub = mx.random.split(key)
                nxt = mx.random.categorical(logits / temperature, key=sub)
            else:
                nxt = mx.argmax(logits, axis=-1)
            t = int(nxt.item())
            new.append(t)
            if stop_at_eos and t == eos:
                break
            tokens = mx.concatenate([tokens, nxt.astype(mx.int32)[:, None]], axis=1)
        return self._require_tokenizer().decode(new)

    def unembed(self, resid: mx.array) -> mx.array:
        """Logits from a residual stream (..., d_model) through the final norm and unembedding."""
        return self.model.unembed(resid)

    def check_hook_name(self, name: str) -> str:
        """Return name if it is a hook point, else raise the close-matches error."""
        if name not in self.hook_names:
            raise unknown_name_error(name, self.hook_names)
        return name

    def __repr__(self) -> str:
        c, q = self.cfg, self.quantization
        quant = f", {q['bits']}-bit (group {q['group_size']})" if q else ""
        return (
            f"HookedModel({self.source!r}: {c.architecture}, {c.n_layers} layers, d_model={c.d_model}, "
            f"{c.n_heads} heads ({c.n_kv_heads} kv), d_vocab={c.d_vocab}, {self.dtype}{quant})"
        )


def check_generate_args(n_prompt: int, max_new_tokens: int, temperature: float, n_ctx: int):
    """One-line errors for generate's arguments (shared by both backends)."""
    import math

    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, np.integer))
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if (
        not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if n_prompt + max_new_tokens > n_ctx:
        raise ValueError(
            f"the prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} exceed the "
            f"model's context length n_ctx={n_ctx}; shorten the prompt or generate fewer tokens"
        )


# -------------------------------------------------------------------- loading
def read_weights(folder: Path) -> dict[str, mx.array]:
    """All tensors of a checkpoint folder (safetensors, sharded or not, or pytorch_model.bin)."""
    weights: dict[str, mx.array] = {}
    for f in weight_files(folder):
        try:
            if f.suffix == ".safetensors":
                check_safetensors(f, "")
                weights.update(mx.load(str(f)))
            else:
                import torch

                state = torch.load(f, map_location="cpu", weights_only=True)
                for k, t in state.items():
                    t = t.float() if t.dtype == torch.bfloat16 else t
                    weights[k] = mx.array(t.numpy())
        except Exception as e:  # noqa: BLE001 - any reader failure means the same to a user
            raise ModelSourceError(
                f"cannot read weights file {f} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "it may be truncated or corrupt: delete it and download or convert it again"
            ) from None
    return weights


def read_checkpoint(source, dtype: str | None = None, dtypes=DTYPES):
    """(folder, config.json, architecture module, stored quantization or None) of ``source``
    (anything ``load_model`` takes); checks ``dtype`` against ``dtypes`` first."""
    if dtype is not None and dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(dtypes)}")
    folder = resolve_model_dir(source)
    _, arch, config = read_model_config(folder)  # one-line errors naming config.json
    return folder, config, arch, quantized.stored_quantization(config)


def load_model(
    source: str | Path = "smollm2-135m",
    dtype: str = "float32",
    quantize: int | None = None,
    group_size: int = 64,
) -> HookedModel:
    """Load a model: the embedded 'smollm2-135m', a local HF folder, an HF repo id, or a .gguf.

    dtype: the activations' dtype, 'float32', 'float16' or 'bfloat16' (and that of every
    float weight; a quantized layer's scales and biases keep their stored dtype).
    A folder quantized by mlx-lm (or ``mlx-interp convert --quantize``) loads quantized, as
    its config.json says. ``quantize=4`` (or 2, 3, 5, 6, 8) quantizes a float checkpoint
    while loading, one layer at a time, so the float model never exists in memory at once;
    ``group_size`` (32, 64 or 128) as in mlx-lm. Llama-family models only.
    """
    if source is None or not str(source).strip():
        raise ValueError(
            "no model given; pass an embedded alias, a folder, a .gguf file or a repo id"
        )
    folder, config, arch, stored = read_checkpoint(source, dtype, DTYPES)
    if quantize is not None:
        quantized.check_params(quantize, group_size)
        if stored is not None:
            raise quantized.QuantizationError(
                f"{folder} is already quantized ({stored['bits']}-bit, group size "
                f"{stored['group_size']}); load it without quantize / --quantize"
            )
    if (quantize is not None or stored is not None) and arch.__name__ != llama.__name__:
        raise quantized.QuantizationError(
            f"quantization supports Llama-family models only; {source} is "
            f"{config.get('model_type')!r}: load it without quantize / --quantize"
        )
    args = arch.ModelArgs.from_hf_config(config)
    if stored is not None or quantize is not None:
        # Quantized layers stay as stored (mlx-lm's names, per-layer settings): no fusion.
        args = dataclasses.replace(args, fuse_projections=False)
    model = arch.Model(args)
    weights = arch.Model.sanitize(read_weights(folder), args)
    if stored is None and quantize is None:
        _check_weights(model, weights, folder)
    if stored is not None:
        overrides = {
            llama.rename_hf(k): v for k, v in stored.items() if isinstance(v, (dict, bool))
        }
        predicate = quantized.stored_predicate(stored, overrides, weights, str(folder))
        quantized.quantize(model, stored["group_size"], stored["bits"], predicate)
    elif quantize is not None:
        quantized.quantize(
            model, group_size, quantize, quantized.on_load_predicate(group_size, quantize)
        )
        weights = _quantize_weights(model, weights, DTYPES[dtype])
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelSourceError(
            f"weights in {folder} do not fit its config.json: {' '.join(str(e).split())}"
        ) from None
    del weights
    _cast_float_params(model, DTYPES[dtype])
    mx.eval(model.parameters())
    if dtype != "float32":  # a weight beyond the half-precision range became infinite
        from mlx.utils import tree_flatten

        params = [(k, v) for k, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]  # fmt: skip
        ok = mx.stack([mx.all(mx.isfinite(v)) for _, v in params]).tolist()
        bad = [k for (k, _), good in zip(params, ok, strict=True) if not good]
        if bad:
            raise ModelSourceError(
                f"weights in {folder}: {bad[0]} holds values outside the {dtype} range; load "
                "the model with dtype float32 (--dtype float32)"
            )
    return HookedModel(model, _load_tokenizer(folder), str(source), folder)


def _quantize_weights(
    model: nn.Module, weights: dict[str, mx.array], dtype: mx.Dtype
) -> dict[str, mx.array]:
    """Float weights -> the quantized model's parameters, one tensor evaluated at a time.

    Each float tensor (read lazily from its file) is cast, quantized and evaluated, and its
    float copy dropped before the next one is read: the peak is one float tensor on top of
    the quantized model.
    """
    paths = quantized.quantized_paths(model)
    out: dict[str, mx.array] = {}
    for name in list(weights):
        w = weights.pop(name)
        path, leaf = name.rsplit(".", 1)
        if path in paths and leaf == "weight":
            p = paths[path]
            if w.ndim != 2:
                raise ModelSourceError(f"{name} has shape {tuple(w.shape)}; expected a matrix")
            q, s, b = mx.quantize(w.astype(dtype), p["group_size"], p["bits"], mode=p["mode"])
            mx.eval(q, s, b)
            out[name], out[f"{path}.scales"], out[f"{path}.biases"] = q, s, b
        else:
            out[name] = w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w
            mx.eval(out[name])
        del w
    return out


def _cast_float_params(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast every float parameter to dtype, except quantized layers' scales and biases."""
    from mlx.utils import tree_flatten

    params = tree_flatten(model.parameters())
    cast = [
        (k, v.astype(dtype))
        for k, v in params
        if mx.issubdtype(v.dtype, mx.floating)
        and v.dtype != dtype
        and not quantized.is_quantization_param(k)
    ]
    if cast:
        model.load_weights(cast, strict=False)
    for _, m in model.named_modules():
        if isinstance(m, quantized.QuantizedEmbedding):
            m.compute_dtype = dtype


def read_model_config(folder: Path):
    """(ModelArgs, architecture module, config dict) from a folder's config.json; one-line errors naming
    the file for invalid JSON, a missing or nonsensical size, an unsupported architecture."""
    path = Path(folder) / "config.json"
    fix = "fix it, or download or convert the model again"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path} is not a model config (a JSON object); {fix}")
    try:
        arch = architecture_for(config.get("model_type", "?"))
        args = arch.ModelArgs.from_hf_config(config)
    except KeyError as e:
        raise ModelSourceError(
            f"{path} has no {e.args[0]!r}, which a {config.get('model_type')} config needs; {fix}"
        ) from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelSourceError(f"{path}: {e}; {fix}") from None
    sizes = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")
    for key in sizes:
        v = getattr(args, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelSourceError(f"{path}: {key}={v!r} must be a positive integer; {fix}")
    if args.n_heads % args.n_kv_heads:
        raise ModelSourceError(
            f"{path}: {args.n_heads} attention heads cannot be grouped into {args.n_kv_heads} "
            f"key/value heads; {fix}"
        )
    if args.architecture == "gpt2" and args.d_head * args.n_heads != args.d_model:
        raise ModelSourceError(
            f"{path}: n_embd={args.d_model} is not divisible by n_head={args.n_heads}; {fix}"
        )
    eps = getattr(args, "norm_eps", 1e-5)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ModelSourceError(f"{path}: the norm epsilon {eps!r} must be in (0, 1); {fix}")
    return args, arch, config


def _check_weights(model: nn.Module, weights: dict[str, mx.array], folder: Path) -> None:
    """Missing, unexpected, misshapen or non-finite tensors: one line naming them."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    fix = "the checkpoint is incomplete or not of this architecture; download or convert it again"
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelSourceError(
            f"weights in {folder} do not fit its config.json: {len(missing)} tensors are missing "
            f"({', '.join(missing[:3])}{more}); {fix}"
        )
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ModelSourceError(
            f"weights in {folder} do not fit its config.json: {len(extra)} tensors are unexpected "
            f"({', '.join(extra[:3])}{more}); {fix}"
        )
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ModelSourceError(
                f"weights in {folder} do not fit its config.json: {k} has shape "
                f"{tuple(weights[k].shape)}, the config implies {tuple(v.shape)}; {fix}"
            )
    names = [k for k, w in weights.items() if mx.issubdtype(w.dtype, mx.floating)]
    if names:
        ok = mx.stack([mx.all(mx.isfinite(weights[k])) for k in names]).tolist()
        bad = [k for k, good in zip(names, ok, strict=True) if not good]
        if bad:
            raise ModelSourceError(
                f"weights in {folder}: {bad[0]} holds NaN or infinite values"
                f"{f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''}; "
                "the checkpoint is corrupt: download or convert it again"
            )


def _load_tokenizer(folder: Path):
    if not any(
        (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - whatever transformers says, the files are bad
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelSourceError(
            f"cannot load the tokenizer in {folder} ({type(e).__name__}: {first}); its tokenizer "
            "files are damaged: download or convert the model again"
        ) from None
