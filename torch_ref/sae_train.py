"""The torch_ref SAE training step: Adam, decoder renormalisation, dead-latent counts.

Plugs into the backend-neutral driver ``mlx_interp.sae.training.train_sae`` (which only
does bookkeeping: batches, schedules, logging, checkpoints) in place of the MLX step,
so that the same run can be made in both backends and the curves compared.
"""

from __future__ import annotations

import numpy as np
import torch

from .sae import forward_loss


class TorchBackend:
    name = "torch"

    def __init__(self, cfg, tc, params: dict, scale: float, scale_out: float | None = None):
        self.cfg, self.tc = cfg, tc
        p = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in params.items()}
        self.threshold = 0.0
        if cfg.architecture == "jumprelu":
            p["log_threshold"] = torch.log(p.pop("threshold"))
        elif cfg.architecture in ("batchtopk", "matryoshka_batchtopk"):
            self.threshold = float(p.pop("threshold")[0])
        self.params = p
        self.m = {k: torch.zeros_like(v) for k, v in p.items()}
        self.v = {k: torch.zeros_like(v) for k, v in p.items()}
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.int32)
        self.scale = float(scale)
        # a transcoder's target has its own normalisation factor
        self.scale_out = float(scale if scale_out is None else scale_out)
        self.acc: list[dict] = []

    def step(self, x: np.ndarray, lr: float, coeff: float, t: int, with_aux: bool,
             y: np.ndarray | None = None) -> None:  # fmt: skip
        cfg, tc = self.cfg, self.tc
        x = torch.from_numpy(np.asarray(x, np.float32)) * torch.tensor(
            self.scale, dtype=torch.float32
        )
        target = None
        if y is not None:
            target = torch.from_numpy(np.asarray(y, np.float32)) * torch.tensor(
                self.scale_out, dtype=torch.float32
            )
        params = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
        dead = (self.since_fired > tc.dead_tokens) if with_aux else None
        loss, out = forward_loss(
            params,
            x,
            cfg,
            sparsity_coeff=coeff,
            dead_mask=dead,
            aux_k=tc.aux_k,
            aux_coeff=tc.aux_coeff,
            matryoshka_aux=tc.matryoshka_aux,
            bandwidth=tc.jumprelu_bandwidth,
            target=target,
        )
        loss.backward()
        b1, b2 = tc.adam_betas
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        unit_norm = cfg.architecture in ("topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")
        with torch.no_grad():
            grads = {name: p.grad for name, p in params.items()}
            if unit_norm and tc.decoder_constraint == "project":
                w, g = params["W_dec"], grads["W_dec"]
                grads["W_dec"] = g - torch.einsum("ij,ij->i", g, w)[:, None] * w
            clip = tc.grad_clip
            if clip is not None:
                norm = torch.sqrt(sum(torch.sum(g * g) for g in grads.values()))
                grads = {k: g * min(1.0, clip / (float(norm) + 1e-12)) for k, g in grads.items()}
            for name, p in params.items():
                g = grads[name]
                self.m[name] = b1 * self.m[name] + (1 - b1) * g
                self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
                step = (self.m[name] / bc1) / (torch.sqrt(self.v[name] / bc2) + tc.adam_eps)
                self.params[name] = p.detach() - lr * step
            if unit_norm:
                w = self.params["W_dec"]
                self.params["W_dec"] = w / w.norm(dim=-1, keepdim=True)
            f = out["f"]
            fired = (f > 0).any(dim=0)
            self.since_fired = torch.where(
                fired, torch.zeros_like(self.since_fired), self.since_fired + x.shape[0]
            )
            if cfg.architecture in ("batchtopk", "matryoshka_batchtopk") and (f > 0).any():
                low = float(f[f > 0].min())
                r = tc.batchtopk_threshold_rate
                self.threshold = low if self.threshold == 0 else (1 - r) * self.threshold + r * low
            y_all = x if target is None else target
            centred = y_all - y_all.mean(dim=0)
            row = {
                "loss": float(loss),
                "mse": float(out["mse"]),
                "var": float((centred**2).sum(dim=-1).mean()),
                "l0": float(out["l0"]),
            }
            if "prefix_mse" in out:
                row["prefix_mse"] = out["prefix_mse"].double().numpy()
            self.acc.append(row)

    def pop_metrics(self) -> dict:
        n = len(self.acc)
        s = {k: sum(a[k] for a in self.acc) for k in self.acc[0]}
        self.acc = []
        out = {
            "loss": s["loss"] / n,
            "mse": s["mse"] / n,
            "explained_variance": 1 - s["mse"] / s["var"] if s["var"] > 0 else 0.0,
            "l0": s["l0"] / n,
        }
        if "prefix_mse" in s:
            out["prefix_explained_variance"] = [
                1 - float(m) / s["var"] if s["var"] > 0 else 0.0 for m in s["prefix_mse"]
            ]
        return out

    def n_dead(self) -> int:
        return int((self.since_fired > self.tc.dead_tokens).sum())

    def state_numpy(self) -> dict[str, np.ndarray]:
        out = {f"params.{k}": v.numpy() for k, v in self.params.items()}
        out.update({f"m.{k}": v.numpy() for k, v in self.m.items()})
        out.update({f"v.{k}": v.numpy() for k, v in self.v.items()})
        out["since_fired"] = self.since_fired.numpy()
        out["threshold"] = np.array(self.threshold, np.float32)
        out["scale"] = np.array(self.scale, np.float32)
        if self.cfg.is_transcoder:
            out["scale_out"] = np.array(self.scale_out, np.float32)
        return out

    def load_state_numpy(self, d: dict[str, np.ndarray]) -> None:
        groups = {"params": {}, "m": {}, "v": {}}
        for key, val in d.items():
            if "." in key:
                g, name = key.split(".", 1)
                groups[g][name] = torch.tensor(np.asarray(val))
        self.params, self.m, self.v = groups["params"], groups["m"], groups["v"]
        self.since_fired = torch.tensor(np.asarray(d["since_fired"]))
        self.threshold = float(d["threshold"])
        self.scale = float(d["scale"])
        self.scale_out = float(d.get("scale_out", d["scale"]))

    def raw_params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.params.items()}

    def global_threshold(self) -> float:
        return float(self.threshold)
