"""Sparse autoencoders in MLX: standard (ReLU + L1), TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK.

The math is a set of pure functions of a parameter dict, so that the trainer can
``mx.compile`` and differentiate them; the ``SAE`` class wraps them for use.

    x_in = x - b_dec                  (if apply_b_dec_to_input)
    pre  = x_in @ W_enc + b_enc       (batch, d_sae)
    f    = standard:  relu(pre)
           topk:      relu(pre) on the k largest entries of pre per row, 0 elsewhere
           batchtopk: training: the k * batch largest entries of relu(pre) in the batch
                      inference: pre where pre > threshold (one global threshold)
           jumprelu:  relu(pre) where pre > threshold_i (one threshold per latent)
           matryoshka_batchtopk: as batchtopk
    x_hat = f @ W_dec + b_dec
    Matryoshka (training): x_hat_m = f[:, :w_m] @ W_dec[:w_m] + b_dec for each prefix width w_m

A transcoder (``cfg.d_out``) encodes x from one hook and predicts y at another: the same
encoder, b_dec never subtracted, W_dec (d_sae, d_out); a skip transcoder adds ``x @ W_skip.T``.

For TopK, ``decode_sparse`` reconstructs from the k active latents only, gathering their
k decoder rows instead of multiplying by all d_sae of them.
"""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np

from ..system import mlx_device
from .config import BATCH_TOPK, SAEConfig, weight_names
from .files import load_sae_folder, save_sae_folder

# --- activation functions --------------------------------------------------------------


def _group_size(n: int, k: int) -> int:
    """The group width for the two-stage top-k of k among n (1: a plain partition pays)."""
    best, cost = 1, n
    for g in (2, 4, 8, 16, 32, 64):
        if n % g == 0 and n // g > k and n // g + k * g < cost:
            best, cost = g, n // g + k * g
    return best if cost <= n // 2 else 1


def topk_indices(pre: mx.array, k: int) -> mx.array:
    """Indices (..., k) of the k largest entries along the last axis (in no particular order).

    Exact, in two stages when it pays: the last axis is cut into groups of g neighbours;
    the k groups with the largest maxima hold every one of the k largest entries (an entry
    outside them is beaten by k group maxima), so one partition of n / g group maxima and
    one of the k * g candidates replace a partition of all n (for k 32 of 9216 latents:
    576 + 512 entries per row instead of 9216, about 4x less time on the CPU).
    """
    n = pre.shape[-1]
    g = _group_size(n, k)
    if g == 1:
        return mx.argpartition(pre, kth=n - k, axis=-1)[..., n - k :]
    lead = pre.shape[:-1]
    groups = pre.reshape(-1, n // g, g)
    m = n // g
    top_groups = mx.argpartition(groups.max(axis=-1), kth=m - k, axis=-1)[:, m - k :]
    cand = mx.take_along_axis(groups, top_groups[..., None], axis=1).reshape(-1, k * g)
    local = mx.argpartition(cand, kth=k * g - k, axis=-1)[:, k * g - k :]
    idx = mx.take_along_axis(top_groups, local // g, axis=-1) * g + local % g
    return idx.reshape(*lead, k)


def topk_sparse(pre: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """(values, indices), each (batch, k): relu of the k largest pre-activations per row."""
    idx = topk_indices(mx.stop_gradient(pre), k)
    return mx.maximum(mx.take_along_axis(pre, idx, axis=-1), 0), idx


def sparse_transpose_product(
    indices: mx.array, values: mx.array, dense: mx.array, n: int, sparse: bool | None = None
) -> mx.array:
    """F.T @ dense, (n, N), for the sparse (batch, n) matrix F holding values[b, j] at column
    indices[b, j] (pairs of one row may share a column: they add up); dense (batch, N).

    The weight gradients of a TopK SAE (F: k of d_sae per row). On the CPU, with few
    entries per row (m <= n / 64, ``sparse`` None), the pairs are sorted by column and each
    column's rows summed by ``mx.segmented_mm``: it gathers batch x m rows of ``dense``
    (about 0.6 ns an element) where the dense product makes batch x n x N multiply-adds
    (about 0.01 ns each): 4096 x 9216 x 576, k 32: 57 ms against 220 ms. Otherwise F is
    laid out densely for one product (always on a GPU: no sort, no gather).
    """
    b, m = indices.shape
    if sparse is None:
        sparse = mlx_device() == "cpu" and m * 64 <= n
    if not sparse:
        f = mx.zeros((b, n), values.dtype).at[mx.arange(b)[:, None], indices].add(values)
        return f.T @ dense
    cols = indices.reshape(-1)
    order = mx.argsort(cols)
    counts = mx.zeros((n,), mx.int32).at[cols].add(1)
    ends = mx.cumsum(counts)
    segments = mx.stack([ends - counts, ends], axis=1)
    out = mx.segmented_mm(values.reshape(-1)[order][None], dense[order // m], segments)
    return out.reshape(n, dense.shape[1])


_ENCODE_TOPK_CACHE: dict[tuple[int, bool], object] = {}


def encode_topk_train(
    params: dict,
    x: mx.array,
    k: int,
    apply_b_dec_to_input: bool = True,
    dead_mask: mx.array | None = None,
    k_aux: int = 0,
    aux_cols: mx.array | None = None,
) -> tuple[mx.array, ...]:
    """Training encoder of a TopK SAE, fused with its top-k: (values, indices), each (batch, k).

    values = relu(pre) at the k largest pre-activations of each row, as ``topk_sparse``,
    with a hand-written backward pass that does only the work the sparsity needs: the
    gradient at the chosen entries is laid into a (batch, d_sae) matrix once for the one
    encoder weight product, the encoder bias gets a scatter of the chosen entries' gradients,
    and b_dec (subtracted from the input) gets (sum of the bias gradient) @ W_enc.T, a
    vector product, where automatic differentiation would multiply the whole (batch, d_sae)
    gradient by W_enc.T. ``x`` is data: no gradient flows to it (zeros).

    With ``dead_mask`` (d_sae,) also the AuxK selection, from the same pre-activations and
    into the same backward pass: (values, indices, aux_values, aux_indices), the aux pair
    (batch, k_aux) holding relu(pre) of the k_aux largest pre-activations among dead
    latents (0 where a row has fewer dead latents than k_aux). With ``aux_cols`` (C,), the
    latents that can be dead (``dead_columns``), the selection looks at those C columns of
    pre only and its indices count within them (latent aux_cols[i]): with few dead
    latents, a partition of C entries per row instead of d_sae.
    """
    aux = dead_mask is not None
    compact = aux and aux_cols is not None
    key = (k, apply_b_dec_to_input, k_aux if aux else 0, compact)
    if key not in _ENCODE_TOPK_CACHE:

        @mx.custom_function
        def encode(x, w_enc, b_enc, b_dec, dead, cols):
            x_in = x - b_dec if apply_b_dec_to_input else x
            pre = mx.addmm(b_enc, x_in, w_enc)
            idx = topk_indices(pre, k)
            out = [mx.take_along_axis(pre, idx, axis=-1), idx]
            if aux:
                pre_c, dead_c = (mx.take(pre, cols, axis=1), dead[cols]) if compact else (pre, dead)
                aux_idx = topk_indices(mx.where(dead_c, pre_c, -mx.inf), min(k_aux, pre_c.shape[1]))
                out += [mx.take_along_axis(pre_c, aux_idx, axis=-1), aux_idx]
            return tuple(out)

        @encode.vjp
        def encode_vjp(primals, cotangents, outputs):
            x, w_enc, b_enc, b_dec, dead, cols = primals
            idx, d_top = outputs[1], cotangents[0]
            x_in = x - b_dec if apply_b_dec_to_input else x
            # the pre-activation gradient is d_top at the k chosen entries of each row (and
            # AuxK's d_aux at its k_aux, added: a latent may be in both)
            d_w_enc = sparse_transpose_product(idx, d_top, x_in, w_enc.shape[1]).T
            d_b_enc = mx.zeros_like(b_enc).at[idx.reshape(-1)].add(d_top.reshape(-1))
            if aux:  # k_aux is large (d_in / 2): one dense product over AuxK's columns
                d_aux, aux_idx = cotangents[2], outputs[3]
                width = cols.shape[0] if compact else w_enc.shape[1]
                d_pre = mx.put_along_axis(mx.zeros((x.shape[0], width), d_aux.dtype), aux_idx,
                                          d_aux, axis=-1)  # fmt: skip
                if compact:
                    d_w_enc = d_w_enc.at[:, cols].add(x_in.T @ d_pre)
                    aux_idx = cols[aux_idx]
                else:
                    d_w_enc = d_w_enc + x_in.T @ d_pre
                d_b_enc = d_b_enc.at[aux_idx.reshape(-1)].add(d_aux.reshape(-1))
            d_b_dec = -(d_b_enc @ w_enc.T) if apply_b_dec_to_input else mx.zeros_like(b_dec)
            return (mx.zeros_like(x), mx.contiguous(d_w_enc), d_b_enc, d_b_dec,
                    mx.zeros_like(dead), mx.zeros_like(cols))  # fmt: skip

        _ENCODE_TOPK_CACHE[key] = encode
    dead = dead_mask if aux else mx.zeros((1,), mx.bool_)
    cols = aux_cols if compact else mx.zeros((1,), mx.int32)
    out = _ENCODE_TOPK_CACHE[key](x, params["W_enc"], params["b_enc"], params["b_dec"], dead, cols)
    values, idx = mx.maximum(out[0], 0), mx.stop_gradient(out[1])
    if not aux:
        return values, idx
    aux_idx = mx.stop_gradient(out[3])
    dead_c = dead_mask[cols] if compact else dead_mask
    aux_values = mx.where(dead_c[aux_idx], mx.maximum(out[2], 0), 0)
    return values, idx, aux_values, aux_idx


def dead_columns(dead_mask: mx.array, capacity: int) -> mx.array:
    """(capacity,) int32: the dead latents of ``dead_mask`` (d_sae,) in index order, then
    live ones to fill ``capacity`` (every dead latent is among them when capacity >= their
    number). AuxK's columns: it only ever reads dead latents."""
    n = dead_mask.shape[0]
    order = mx.argsort(mx.where(dead_mask, 0, n) + mx.arange(n, dtype=mx.int32))
    return order[:capacity].astype(mx.int32)


def aux_capacity_for(n_dead: int, d_sae: int, smallest: int = 256) -> int | None:
    """How many columns AuxK looks at for ``n_dead`` dead latents: a power of two (few
    distinct shapes, so few compiled steps) at least n_dead; None (all d_sae columns) once
    that is over half of them, where gathering the columns would cost more than it saves."""
    c = max(smallest, 1 << max(n_dead - 1, 0).bit_length())
    return c if c <= d_sae // 2 else None


def topk_dense(pre: mx.array, k: int) -> mx.array:
    """relu(pre) on the k largest entries of each row, zero elsewhere (batch, d_sae)."""
    p = mx.stop_gradient(pre)
    kth = mx.min(mx.take_along_axis(p, topk_indices(p, k), axis=-1), axis=-1, keepdims=True)
    return mx.where(pre >= kth, mx.maximum(pre, 0), 0)


def batchtopk_dense(pre: mx.array, k: int, world_size: int = 1) -> mx.array:
    """Keep the k * batch largest entries of relu(pre) over the whole batch.

    world_size > 1 (data-parallel training): ``pre`` is this rank's slice of a global batch
    ``world_size`` times larger, and the threshold is the global batch's: every rank's
    candidates are gathered (``mx.distributed.all_gather``), so the selection is the one a
    single process makes over the whole batch.
    """
    acts = mx.maximum(pre, 0)
    flat = acts.reshape(-1)
    n_keep = k * acts.shape[0] * world_size
    top = mx.topk(flat, min(n_keep, flat.size))
    if world_size > 1:
        top = mx.topk(mx.distributed.all_gather(top), n_keep)
    kth = mx.stop_gradient(mx.min(top))
    return mx.where((acts >= kth) & (acts > 0), acts, 0)


def _rect(u: mx.array) -> mx.array:
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


_STE_CACHE: dict[float, tuple] = {}


def jumprelu_ste(bandwidth: float):
    """JumpReLU z * H(z - theta) and the step H(z - theta) with straight-through gradients.

    Rajamanoharan et al. (2024): with a rectangle kernel K of width ``bandwidth`` (eps),
    d jumprelu / d theta = -(theta / eps) K((z - theta) / eps), d step / d theta =
    -(1 / eps) K((z - theta) / eps); d jumprelu / dz = H(z - theta), d step / dz = 0.
    """
    if bandwidth in _STE_CACHE:
        return _STE_CACHE[bandwidth]
    eps = float(bandwidth)

    @mx.custom_function
    def jumprelu(z, theta):
        return z * (z > theta).astype(z.dtype)

    @jumprelu.vjp
    def jumprelu_vjp(primals, cotangent, output):
        z, theta = primals
        gz = cotangent * (z > theta).astype(z.dtype)
        gt = -(theta / eps) * _rect((z - theta) / eps) * cotangent
        return gz, gt.reshape(-1, theta.shape[-1]).sum(axis=0)

    @mx.custom_function
    def step(z, theta):
        return (z > theta).astype(z.dtype)

    @step.vjp
    def step_vjp(primals, cotangent, output):
        z, theta = primals
        gt = -(1.0 / eps) * _rect((z - theta) / eps) * cotangent
        return mx.zeros_like(z), gt.reshape(-1, theta.shape[-1]).sum(axis=0)

    _STE_CACHE[bandwidth] = (jumprelu, step)
    return jumprelu, step


# --- encode / decode ---------------------------------------------------------------------


def pre_activations(params: dict, x: mx.array, apply_b_dec_to_input: bool = True) -> mx.array:
    x_in = x - params["b_dec"] if apply_b_dec_to_input else x
    return x_in @ params["W_enc"] + params["b_enc"]


def activate(params: dict, pre: mx.array, cfg: SAEConfig) -> mx.array:
    """Inference activation (batch, d_sae) from pre-activations."""
    arch = cfg.architecture
    if arch == "standard":
        return mx.maximum(pre, 0)
    if arch == "topk":
        return topk_dense(pre, cfg.k)
    # jumprelu and batchtopk (whose per-latent thresholds all equal the global one)
    return mx.maximum(pre, 0) * (pre > params["threshold"]).astype(pre.dtype)


def decode_dense(params: dict, f: mx.array) -> mx.array:
    return f @ params["W_dec"] + params["b_dec"]


def add_skip(params: dict, out: mx.array, x: mx.array) -> mx.array:
    """``out + x @ W_skip.T`` for a skip transcoder (W_skip (d_out, d_in)); ``out`` otherwise."""
    return out + x @ params["W_skip"].T if "W_skip" in params else out


def decode_prefixes(params: dict, f: mx.array, widths: list[int]) -> list[mx.array]:
    """Matryoshka reconstructions, one (batch, d_in) per prefix width: the latents below
    w_m decoded, f[:, :w_m] @ W_dec[:w_m] + b_dec. Built up block by block (each block's
    product added to the previous prefix's), so all of them cost one dense decode."""
    out, start, x_hat = [], 0, params["b_dec"]
    for w in widths:
        x_hat = mx.addmm(x_hat, f[:, start:w], params["W_dec"][start:w])
        out.append(x_hat)
        start = w
    return out


@mx.custom_function
def _gather_decode(values: mx.array, indices: mx.array, w_dec: mx.array) -> mx.array:
    return (values[:, None, :] @ w_dec[indices])[:, 0, :]


@_gather_decode.vjp
def _gather_decode_vjp(primals, cotangent, output):
    # d values: the same k rows against the output gradient; d W_dec: the sparse
    # activations' transpose times it (a scatter-add of batch x k rows is slow on MLX's CPU)
    values, indices, w_dec = primals
    d_values = (w_dec[indices] @ cotangent[:, :, None])[..., 0]
    d_w_dec = sparse_transpose_product(indices, values, cotangent, w_dec.shape[0])
    return d_values, mx.zeros_like(indices), d_w_dec


def decode_sparse(params: dict, values: mx.array, indices: mx.array) -> mx.array:
    """sum_j values[b, j] * W_dec[indices[b, j]] + b_dec: a gather of k decoder rows per row."""
    return _gather_decode(values, indices, params["W_dec"]) + params["b_dec"]


# --- training losses -----------------------------------------------------------------------


def loss_terms(
    params: dict,
    x: mx.array,
    cfg: SAEConfig,
    *,
    sparsity_coeff: float | mx.array = 0.0,
    dead_mask: mx.array | None = None,
    aux_k: int | None = None,
    aux_coeff: float = 1 / 32,
    bandwidth: float = 0.05,
    sparse_decode: bool = True,
    world_size: int = 1,
    target: mx.array | None = None,
    matryoshka_aux: bool = False,
    aux_capacity: int | None = None,
) -> tuple[mx.array, dict]:
    """The training loss of one batch and its parts; every term is a mean over the batch.

    ``target`` (transcoders): what to predict, (batch, d_out); None: x itself (an SAE). Below,
    x_hat is then the prediction (with the skip term of a skip transcoder) and x the target.

    world_size > 1: ``x`` is this rank's equal slice of the global batch (data-parallel
    training; the mean of the ranks' gradients is the global batch's gradient); only
    BatchTopK's selection looks across the slices.

    mse      = mean_b sum_d (x_hat - x)^2
    standard:  + sparsity_coeff * mean_b sum_i f_i ||W_dec_i||                (L1, decoder norms)
    matryoshka_batchtopk: mse is the whole dictionary's; the loss adds the MSE of every
               shorter prefix reconstruction (sum over prefixes, as SAELens); "prefix_mse"
               (n_prefixes,) holds all of them, the last equal to mse
    topk, batchtopk, matryoshka_batchtopk:
               + aux_coeff * min(n_dead / k_aux, 1) * mean_b sum_d (e_hat - e)^2 (AuxK)
               e = x - x_hat (no gradient), e_hat = the k_aux largest dead latents' relu(pre)
               decoded without b_dec (Gao et al. 2024); zero when no latent is dead
               matryoshka_aux: instead one such term per prefix block [w_{m-1}, w_m), its
               dead latents (at most k_aux) fitting that prefix's residual x - x_hat_m,
               scaled by min(n_dead in the block / k_aux, 1); summed (SAELens's
               use_matryoshka_aux_loss)
    jumprelu:  + sparsity_coeff * mean_b sum_i H(pre_i - theta_i)              (L0, STE)
    For jumprelu ``params`` holds ``log_threshold`` (theta = exp(log_threshold)).

    ``aux_capacity`` (static; at least the number of dead latents, see ``aux_capacity_for``):
    AuxK selects and decodes within that many columns (``dead_columns``), the dead latents
    among them, instead of all d_sae: the same term, without a second pass as wide as the
    dictionary (forward, and both backward products) when few latents are dead.
    """
    arch = cfg.architecture
    parts = {}
    k_aux = min(aux_k or cfg.out_width // 2, cfg.d_sae)
    y = x if target is None else target
    fused_aux = None
    # the columns AuxK reads: the dead latents (and a few live ones), or all of them
    cols = None
    per_prefix_aux = matryoshka_aux and arch == "matryoshka_batchtopk"
    if dead_mask is not None and aux_capacity is not None and not per_prefix_aux:
        cols = dead_columns(dead_mask, aux_capacity)
    if arch == "topk" and sparse_decode:
        # the fused path: no dense pre-activation gradient, no d x_in product
        values, idx, *fused_aux = encode_topk_train(
            params, x, cfg.k, cfg.apply_b_dec_to_input, dead_mask, k_aux, cols
        )
        x_hat = decode_sparse(params, values, idx)
        f = pre = None
        parts["indices"], parts["values"] = idx, values
        l0 = (values > 0).sum(axis=-1).astype(mx.float32).mean()
    else:
        pre = pre_activations(params, x, cfg.apply_b_dec_to_input)
        if arch == "standard":
            f = mx.maximum(pre, 0)
        elif arch == "topk":
            f = topk_dense(pre, cfg.k)
        elif arch in BATCH_TOPK:
            f = batchtopk_dense(pre, cfg.k, world_size)
        else:
            jumprelu, step = jumprelu_ste(bandwidth)
            theta = mx.exp(params["log_threshold"])
            f = jumprelu(pre, theta)
        if arch == "matryoshka_batchtopk":
            x_hats = decode_prefixes(params, f, cfg.matryoshka_widths)
            x_hat = x_hats[-1]
        else:
            x_hat = decode_dense(params, f)
        l0 = (f > 0).sum(axis=-1).astype(mx.float32).mean()
    x_hat = add_skip(params, x_hat, x)
    err = x_hat - y
    mse = (err * err).sum(axis=-1).mean()
    loss = mse
    parts["mse"] = mse
    if arch == "matryoshka_batchtopk":
        prefix = [((add_skip(params, xh, x) - y) ** 2).sum(axis=-1).mean() for xh in x_hats[:-1]]
        loss = loss + sum(prefix)
        parts["prefix_mse"] = mx.stack([*prefix, mse])
    if arch == "standard":
        dec_norm = mx.sqrt((params["W_dec"] ** 2).sum(axis=-1))
        sparsity = (f * dec_norm).sum(axis=-1).mean()
        loss = loss + sparsity_coeff * sparsity
        parts["sparsity"] = sparsity
    elif arch == "jumprelu":
        sparsity = step(pre, theta).sum(axis=-1).mean()
        loss = loss + sparsity_coeff * sparsity
        parts["sparsity"] = sparsity
    elif dead_mask is not None and per_prefix_aux:
        aux, start = 0.0, 0
        for w, xh in zip(cfg.matryoshka_widths, x_hats, strict=True):
            block_dead = dead_mask[start:w]
            acts = _auxk_acts(pre[:, start:w], block_dead, min(k_aux, w - start))
            e = mx.stop_gradient(y - add_skip(params, xh, x))
            term = ((acts @ params["W_dec"][start:w] - e) ** 2).sum(axis=-1).mean()
            aux = aux + mx.minimum(block_dead.sum().astype(mx.float32) / k_aux, 1.0) * term
            start = w
        loss = loss + aux_coeff * aux
        parts["aux"] = aux
    elif dead_mask is not None:
        w_dec = params["W_dec"] if cols is None else params["W_dec"][cols]
        if fused_aux:  # the k_aux chosen dead latents, laid out densely for one product
            aux_values, aux_idx = fused_aux
            aux_acts = mx.put_along_axis(
                mx.zeros((x.shape[0], w_dec.shape[0]), aux_values.dtype), aux_idx, aux_values,
                axis=-1,
            )  # fmt: skip
        else:
            pre_c, dead_c = (pre, dead_mask) if cols is None else (mx.take(pre, cols, axis=1), dead_mask[cols])  # fmt: skip
            aux_acts = _auxk_acts(pre_c, dead_c, min(k_aux, dead_c.shape[0]))
        e = mx.stop_gradient(y - x_hat)
        e_hat = aux_acts @ w_dec
        aux = ((e_hat - e) ** 2).sum(axis=-1).mean()
        scale = mx.minimum(dead_mask.sum().astype(mx.float32) / k_aux, 1.0)
        loss = loss + aux_coeff * scale * aux
        parts["aux"] = aux
    parts["l0"] = l0
    return loss, {"x_hat": x_hat, "f": f, "pre": pre, **parts}


def _auxk_acts(pre: mx.array, dead_mask: mx.array, k_aux: int) -> mx.array:
    """AuxK's activations (batch, n): relu(pre) at each row's k_aux largest pre-activations
    among the dead latents (all of them where a row has fewer), 0 elsewhere."""
    aux_pre = mx.stop_gradient(mx.where(dead_mask, pre, -mx.inf))
    aux_top = mx.take_along_axis(aux_pre, topk_indices(aux_pre, k_aux), axis=-1)
    kth = mx.min(aux_top, axis=-1, keepdims=True)
    return mx.where(dead_mask & (aux_pre >= kth), mx.maximum(pre, 0), 0)


def renormalise_decoder(params: dict) -> dict:
    """Scale every decoder row to unit norm (TopK, BatchTopK, JumpReLU)."""
    w = params["W_dec"]
    return {**params, "W_dec": w / mx.sqrt((w * w).sum(axis=-1, keepdims=True))}


# --- initialisation --------------------------------------------------------------------------


def geometric_median(x: np.ndarray, iters: int = 30, tol: float = 1e-6) -> np.ndarray:
    """Weiszfeld's algorithm in float64, starting from the mean."""
    x = np.asarray(x, dtype=np.float64)
    y = x.mean(axis=0)
    for _ in range(iters):
        d = np.maximum(np.linalg.norm(x - y, axis=1), 1e-12)
        w = 1.0 / d
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if np.linalg.norm(y_new - y) <= tol * max(np.linalg.norm(y), 1.0):
            return y_new
        y = y_new
    return y


def init_params(
    cfg: SAEConfig,
    seed: int = 0,
    data_sample: np.ndarray | None = None,
    b_dec_init: str = "geometric_median",
    threshold_init: float = 0.01,
    dec_norm: float | None = None,
) -> dict[str, np.ndarray]:
    """NumPy initial weights (the same for both backends, from one seed).

    W_dec rows: random directions with unit norm (``dec_norm`` for the standard SAE,
    0.1 by default as in Anthropic's April 2024 update); W_enc = W_dec.T; b_enc = 0;
    b_dec = the geometric median (or mean, or zero) of ``data_sample``; thresholds
    ``threshold_init`` (jumprelu) and 0 (batchtopk, set from the first batch).
    A transcoder's W_enc columns are their own random directions (the input and output
    spaces differ) of norm 0.1, so that its first predictions stay near b_dec (with norm 1,
    random directions predict noise: on a toy MLP the explained variance after 120 steps
    was 0.37 against 0.76 with 0.1, which 0.03 matched); ``data_sample`` is the target's, and
    W_skip starts at zero.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cfg.d_sae, cfg.out_width))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    norm = 0.1 if cfg.architecture == "standard" else 1.0
    norm = norm if dec_norm is None else dec_norm
    w *= norm
    w_enc = w.T
    if cfg.is_transcoder:
        w_enc = rng.standard_normal((cfg.d_in, cfg.d_sae))
        w_enc *= 0.1 / np.linalg.norm(w_enc, axis=0, keepdims=True)
    params = {
        "W_dec": w.astype(np.float32),
        "W_enc": np.ascontiguousarray(w_enc).astype(np.float32),
        "b_enc": np.zeros(cfg.d_sae, np.float32),
        "b_dec": np.zeros(cfg.out_width, np.float32),
    }
    if cfg.skip:
        params["W_skip"] = np.zeros((cfg.out_width, cfg.d_in), np.float32)
    if data_sample is not None and b_dec_init != "zeros":
        if b_dec_init == "geometric_median":
            params["b_dec"] = geometric_median(data_sample).astype(np.float32)
        elif b_dec_init == "mean":
            params["b_dec"] = np.asarray(data_sample, np.float64).mean(0).astype(np.float32)
        else:
            raise ValueError(
                f"b_dec_init must be geometric_median, mean or zeros, not {b_dec_init!r}"
            )
    if cfg.architecture == "jumprelu":
        params["threshold"] = np.full(cfg.d_sae, threshold_init, np.float32)
    elif cfg.architecture in BATCH_TOPK:
        params["threshold"] = np.full(cfg.d_sae, cfg.threshold or 0.0, np.float32)
    return params


# --- the SAE ------------------------------------------------------------------------------


def _nan_rows(x: mx.array) -> mx.array:
    """(rows, 1): 0 for a finite row, NaN for one holding NaN or infinity (0 * inf = NaN)."""
    return 0 * mx.sum(x, axis=-1, keepdims=True)


class SAE:
    """An SAE in MLX. ``encode(x)`` -> (..., d_sae), ``decode(f)`` -> (..., d_in),
    ``sae(x)`` -> (latents, reconstruction); ``SAE.load(folder)`` / ``sae.save(folder)``
    read and write SAELens folders.

    A transcoder (``cfg.d_out``) is the same object: ``decode(f)`` -> (..., d_out) is
    ``f @ W_dec + b_dec``, and ``sae(x)`` / ``reconstruct(x)`` give the prediction of the
    output hook, the skip term ``x @ W_skip.T`` included (as SAELens's ``forward``)."""

    def __init__(self, cfg: SAEConfig, params: dict | None = None, seed: int = 0):
        self.cfg = cfg
        if params is None:
            params = init_params(cfg, seed)
        expected = weight_names(cfg)
        if set(params) != set(expected):
            raise ValueError(f"SAE weights {sorted(params)} do not match {sorted(expected)}")
        for k, v in params.items():
            if not np.all(np.isfinite(np.asarray(v, np.float32))):
                raise ValueError(f"SAE weight {k} holds NaN or infinite values")
        self.params = {k: mx.array(np.asarray(v, np.float32)) for k, v in params.items()}
        for k, shape in expected.items():
            if tuple(self.params[k].shape) != shape:
                raise ValueError(f"{k} has shape {tuple(self.params[k].shape)}, expected {shape}")

    # the weights by name, as in SAELens
    def __getattr__(self, name):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)

    def _flat(self, x, width: int, what: str):
        x = mx.array(x) if not isinstance(x, mx.array) else x
        if x.shape[-1] != width:
            raise ValueError(
                f"{what} has last dimension {x.shape[-1]}, but this SAE expects {width}"
                + (f" (hook {self.cfg.hook_name})" if self.cfg.hook_name else "")
            )
        return x.reshape(-1, width).astype(mx.float32), x.shape[:-1]

    def encode(self, x) -> mx.array:
        """Latents (..., d_sae). A row holding NaN or infinity gives a NaN row (ReLU and
        top-k would otherwise turn it into finite-looking zeros)."""
        x2, lead = self._flat(x, self.cfg.d_in, "input")
        pre = pre_activations(self.params, x2, self.cfg.apply_b_dec_to_input)
        f = activate(self.params, pre, self.cfg) + _nan_rows(x2)
        return f.reshape(*lead, self.cfg.d_sae)

    def encode_sparse(self, x) -> tuple[mx.array, mx.array]:
        """TopK only: (values, indices), each (batch, k)."""
        if self.cfg.architecture != "topk":
            raise ValueError("encode_sparse is for TopK SAEs")
        x2, _ = self._flat(x, self.cfg.d_in, "input")
        values, idx = topk_sparse(
            pre_activations(self.params, x2, self.cfg.apply_b_dec_to_input), self.cfg.k
        )
        return values + _nan_rows(x2), idx

    def decode(self, f) -> mx.array:
        """f @ W_dec + b_dec (..., d_in or d_out); a skip transcoder's skip term needs the
        input: ``reconstruct(x)`` or ``sae(x)`` add it."""
        f2, lead = self._flat(f, self.cfg.d_sae, "latents")
        return decode_dense(self.params, f2).reshape(*lead, self.cfg.out_width)

    def decode_sparse(self, values: mx.array, indices: mx.array) -> mx.array:
        return decode_sparse(self.params, values, indices)

    def reconstruct(self, x) -> mx.array:
        """decode(encode(x)) (+ the skip term), through the sparse path for TopK."""
        x2, lead = self._flat(x, self.cfg.d_in, "input")
        if self.cfg.architecture == "topk":
            out = decode_sparse(self.params, *self.encode_sparse(x2))
        else:
            out = decode_dense(self.params, self.encode(x2))
        return add_skip(self.params, out, x2).reshape(*lead, self.cfg.out_width)

    def __call__(self, x) -> tuple[mx.array, mx.array]:
        """(latents, reconstruction or, for a transcoder, prediction)."""
        f = self.encode(x)
        x2, lead = self._flat(x, self.cfg.d_in, "input")
        out = add_skip(self.params, decode_dense(self.params, f.reshape(-1, self.cfg.d_sae)), x2)
        return f, out.reshape(*lead, self.cfg.out_width)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.params.items()}

    def save(self, folder: str | os.PathLike):
        return save_sae_folder(folder, self.cfg, self.numpy_params())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SAE:
        cfg, weights = load_sae_folder(folder)
        return cls(cfg, weights)

    def __repr__(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.k else ""
        if c.is_transcoder:
            kind = "SkipTranscoder" if c.skip else "Transcoder"
            return (
                f"{kind}({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}"
                f"{extra}, hook={c.hook_name} -> {c.hook_name_out})"
            )
        return f"SAE({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{extra}, hook={c.hook_name})"
