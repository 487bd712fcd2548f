"""Sparse autoencoders in plain PyTorch: the reference for ``mlx_interp.sae``.

Written independently of the MLX code, for clarity rather than speed: TopK uses
``torch.topk`` and ``scatter``, the straight-through estimators are
``torch.autograd.Function``s. Only the file format (``mlx_interp.sae.files``, which
reads and writes bytes and does no math) is shared, so both backends load the same file.

    x_in = x - b_dec (if apply_b_dec_to_input);  pre = x_in @ W_enc + b_enc
    standard: relu(pre)     topk: relu of the k largest per row
    batchtopk: training keeps the k*batch largest relu(pre) of the batch; inference uses
               pre > threshold      jumprelu: relu(pre) * (pre > threshold)
    matryoshka_batchtopk: batchtopk, trained to reconstruct from every prefix of widths w:
               x_hat_w = f[:, :w] @ W_dec[:w] + b_dec
    x_hat = f @ W_dec + b_dec
    transcoders (cfg.d_out): the target is another hook's y; b_dec (d_out) is never
    subtracted; a skip transcoder predicts f @ W_dec + b_dec + x @ W_skip.T
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mlx_interp.sae.config import SAEConfig, weight_names
from mlx_interp.sae.files import load_sae_folder, save_sae_folder


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """z * H(z - theta); gradient H(z - theta) to z, -(theta/eps) K((z - theta)/eps) to theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = grad * (z > theta).to(z.dtype)
        grad_theta = (-(theta / eps) * rectangle((z - theta) / eps) * grad).sum(dim=0)
        return grad_z, grad_theta, None


class StepFn(torch.autograd.Function):
    """H(z - theta); no gradient to z, -(1/eps) K((z - theta)/eps) to theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(1.0 / eps) * rectangle((z - theta) / eps) * grad).sum(dim=0)
        return torch.zeros_like(z), grad_theta, None


def encoder_pre(p: dict, x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    if cfg.apply_b_dec_to_input:
        x = x - p["b_dec"]
    return x @ p["W_enc"] + p["b_enc"]


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    top = torch.topk(pre, k, dim=-1)
    out = torch.zeros_like(pre)
    return out.scatter(-1, top.indices, torch.relu(top.values))


def batch_topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    acts = torch.relu(pre)
    flat = acts.flatten()
    top = torch.topk(flat, k * pre.shape[0])
    out = torch.zeros_like(flat).scatter(0, top.indices, top.values)
    return out.reshape(acts.shape)


def forward_loss(
    p: dict,
    x: torch.Tensor,
    cfg: SAEConfig,
    sparsity_coeff: float = 0.0,
    dead_mask: torch.Tensor | None = None,
    aux_k: int | None = None,
    aux_coeff: float = 1 / 32,
    bandwidth: float = 0.05,
    target: torch.Tensor | None = None,
    matryoshka_aux: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Training loss (see mlx_interp.sae.sae.loss_terms for the definitions); ``target``:
    what a transcoder predicts (None: x); ``matryoshka_aux``: AuxK per prefix block."""
    y = x if target is None else target
    pre = encoder_pre(p, x, cfg)
    arch = cfg.architecture
    if arch == "standard":
        f = torch.relu(pre)
    elif arch == "topk":
        f = topk_relu(pre, cfg.k)
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        f = batch_topk_relu(pre, cfg.k)
    else:
        theta = torch.exp(p["log_threshold"])
        f = JumpReLUFn.apply(pre, theta, bandwidth)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    if cfg.skip:
        x_hat = x_hat + x @ p["W_skip"].T
    mse = ((x_hat - y) ** 2).sum(dim=-1).mean()
    loss = mse
    parts = {"mse": mse, "l0": (f > 0).float().sum(dim=-1).mean()}
    if arch == "matryoshka_batchtopk":
        # each shorter prefix decoded on its own; the loss is the sum of all prefixes' MSE
        prefix_mse = []
        for w in cfg.matryoshka_widths[:-1]:
            x_hat_w = f[:, :w] @ p["W_dec"][:w] + p["b_dec"]
            if cfg.skip:
                x_hat_w = x_hat_w + x @ p["W_skip"].T
            prefix_mse.append(((x_hat_w - y) ** 2).sum(dim=-1).mean())
        loss = loss + sum(prefix_mse)
        parts["prefix_mse"] = torch.stack([*prefix_mse, mse])
    if arch == "standard":
        sparsity = (f * p["W_dec"].norm(dim=-1)).sum(dim=-1).mean()
        loss = loss + sparsity_coeff * sparsity
        parts["sparsity"] = sparsity
    elif arch == "jumprelu":
        sparsity = StepFn.apply(pre, theta, bandwidth).sum(dim=-1).mean()
        loss = loss + sparsity_coeff * sparsity
        parts["sparsity"] = sparsity
    elif dead_mask is not None and matryoshka_aux and arch == "matryoshka_batchtopk":
        # one AuxK term per block of latents [start, w): its dead latents fit the residual of
        # the prefix ending there
        k_aux = min(aux_k or cfg.out_width // 2, cfg.d_sae)
        aux = torch.zeros(())
        start = 0
        for w in cfg.matryoshka_widths:
            n_dead = int(dead_mask[start:w].sum())
            if n_dead > 0:
                x_hat_w = f[:, :w] @ p["W_dec"][:w] + p["b_dec"]
                if cfg.skip:
                    x_hat_w = x_hat_w + x @ p["W_skip"].T
                residual = (y - x_hat_w).detach()
                block = torch.where(dead_mask[start:w], pre[:, start:w], -torch.inf)
                top = torch.topk(block, min(k_aux, n_dead), dim=-1)
                acts = torch.zeros_like(block).scatter(-1, top.indices, torch.relu(top.values))
                term = ((acts @ p["W_dec"][start:w] - residual) ** 2).sum(dim=-1).mean()
                aux = aux + min(n_dead / k_aux, 1.0) * term
            start = w
        loss = loss + aux_coeff * aux
        parts["aux"] = aux
    elif dead_mask is not None:
        k_aux = min(aux_k or cfg.out_width // 2, cfg.d_sae)
        n_dead = int(dead_mask.sum())
        residual = (y - x_hat).detach()
        if n_dead > 0:
            masked = torch.where(dead_mask, pre, torch.full_like(pre, -torch.inf))
            top = torch.topk(masked, min(k_aux, n_dead), dim=-1)
            aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            aux = ((aux_acts @ p["W_dec"] - residual) ** 2).sum(dim=-1).mean()
            loss = loss + aux_coeff * min(n_dead / k_aux, 1.0) * aux
        else:
            aux = (residual**2).sum(dim=-1).mean()
        parts["aux"] = aux
    return loss, {"x_hat": x_hat, "f": f, "pre": pre, **parts}


class SAE:
    """The PyTorch SAE: ``encode``, ``decode``, ``sae(x)`` -> (latents, reconstruction),
    ``SAE.load(folder)`` / ``save(folder)`` in SAELens's format. For a transcoder ``sae(x)``
    gives (latents, prediction), the skip term included; ``decode(f)`` leaves it out."""

    def __init__(self, cfg: SAEConfig, params: dict, device: str = "cpu", dtype=torch.float32):
        self.cfg = cfg
        shapes = weight_names(cfg)
        if set(params) != set(shapes):
            raise ValueError(f"SAE weights {sorted(params)} do not match {sorted(shapes)}")
        self.params = {
            k: torch.as_tensor(np.asarray(v), dtype=dtype, device=device).clone()
            for k, v in params.items()
        }
        for k, shape in shapes.items():
            if tuple(self.params[k].shape) != shape:
                raise ValueError(f"{k} has shape {tuple(self.params[k].shape)}, expected {shape}")

    def __getattr__(self, name):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)

    def _check(self, x: torch.Tensor, width: int) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.shape[-1] != width:
            raise ValueError(f"last dimension {x.shape[-1]}, but this SAE expects {width}")
        return x.to(self.params["W_enc"].dtype)

    @torch.no_grad()
    def encode(self, x) -> torch.Tensor:
        x = self._check(x, self.cfg.d_in)
        pre = encoder_pre(self.params, x, self.cfg)
        if self.cfg.architecture == "standard":
            return torch.relu(pre)
        if self.cfg.architecture == "topk":
            return topk_relu(pre, self.cfg.k)
        return torch.relu(pre) * (pre > self.params["threshold"]).to(pre.dtype)

    @torch.no_grad()
    def decode(self, f) -> torch.Tensor:
        f = self._check(f, self.cfg.d_sae)
        return f @ self.params["W_dec"] + self.params["b_dec"]

    @torch.no_grad()
    def __call__(self, x):
        f = self.encode(x)
        out = self.decode(f)
        if self.cfg.skip:
            out = out + self._check(x, self.cfg.d_in) @ self.params["W_skip"].T
        return f, out

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().float().numpy() for k, v in self.params.items()}

    def save(self, folder: str | os.PathLike):
        return save_sae_folder(folder, self.cfg, self.numpy_params())

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "cpu", dtype=torch.float32) -> SAE:
        cfg, weights = load_sae_folder(folder)
        return cls(cfg, weights, device=device, dtype=dtype)
