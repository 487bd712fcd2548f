"""SAE metrics, one definition each (the README lists the same).

Over a set of N evaluation rows x (the hook's activations at ordinary tokens: position 0,
special tokens and massive rows are left out and reported apart), with reconstructions
x_hat and latents f (N, d_sae):

- L0: mean over rows of the number of latents with f > 0.
- explained variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (mean over the rows).
- normalised MSE: sum ||x - x_hat||^2 / sum ||x||^2.
- cosine similarity: mean over rows of <x, x_hat> / (||x|| ||x_hat||).
- feature density of latent i: the fraction of the N rows on which f_i > 0.
- dead fraction: latents with density 0 over the N rows (the window is stated with them).
- dense fraction: latents with density over 0.1 (firing on more than 1 token in 10).
- log10 feature-density histogram: of log10(density) over the latents that fired.
With the SAE spliced into the model (its reconstruction replacing the hook's activation at
the evaluated rows; the rows left out keep their clean values), on next-token prediction:
- CE loss recovered: (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_zero replaces
  the same rows by zeros (zero ablation).
- KL divergence: mean over predicted positions of KL(p_clean || p_sae), in nats.

SAEBench's core metrics (Karvonen et al. 2025, "SAEBench"; definitions as in sae_bench 0.6.0,
``sae_bench/evals/core/main.py``), over the same rows and predictions as above:
- kl_div_score: (KL_ablation - KL_sae) / KL_ablation, KL_* the mean over predicted positions
  of KL(p_clean || p_*), the ablation being the zero ablation above.
- ce_loss_score: (CE_ablation - CE_sae) / (CE_ablation - CE_clean) (= CE loss recovered).
- l2_ratio: mean over rows of ||x_hat|| / ||x|| (||x|| under 1e-4 counts as 1).
- relative_reconstruction_bias: mean ||x_hat||^2 / mean <x, x_hat> (Rajamanoharan et al.
  2024, eq. 10: the scale gamma minimising E||x_hat / gamma - x||^2; 1 is unbiased, under 1
  shrinkage). SAEBench averages this ratio batch by batch; here it is one ratio over all rows.
- frac_alive: fraction of latents with f > 0 on at least one row (1 - dead fraction).
- average_max_decoder_cosine_sim: mean over latents of the largest cosine similarity of
  its decoder row with any other latent's (from the weights alone).
- feature density: each latent's fraction of rows with f > 0 (the histogram above);
  freq_over_1_percent / freq_over_10_percent: fraction of latents denser than 0.01 / 0.1;
  normalized_freq_over_1_percent / _10_: their share of the summed densities.

Matryoshka SAEs, per prefix of width w (the SAE's nested dictionaries): the metrics above
of the reconstruction from the first w latents alone, f[:, :w] @ W_dec[:w] + b_dec
(``PrefixMetrics``; the last prefix is the whole SAE).

``MetricAccumulator`` gathers the sums batch by batch in float64 NumPy, so the numbers do
not depend on the backend that computed x_hat and f.
"""

from __future__ import annotations

import numpy as np

DENSE_THRESHOLD = 0.1


class MetricAccumulator:
    def __init__(self, d_sae: int):
        self.n = 0
        self.sq_err = 0.0
        self.sq_norm = 0.0
        self.sum_x = None
        self.l0 = 0.0
        self.cos = 0.0
        self.l2_ratio = 0.0
        self.sq_hat = 0.0
        self.dot = 0.0
        self.fires = np.zeros(d_sae, np.int64)

    def add(self, x, x_hat, f) -> None:
        x = np.asarray(x, np.float64)
        x_hat = np.asarray(x_hat, np.float64)
        f = np.asarray(f)
        if len(x) == 0:
            return
        active = f > 0
        self.n += len(x)
        self.sq_err += float(((x - x_hat) ** 2).sum())
        self.sq_norm += float((x**2).sum())
        s = x.sum(axis=0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.l0 += float(active.sum())
        nx = np.linalg.norm(x, axis=1)
        nh = np.linalg.norm(x_hat, axis=1)
        dot = (x * x_hat).sum(axis=1)
        self.cos += float((dot / np.maximum(nx * nh, 1e-30)).sum())
        self.l2_ratio += float((nh / np.where(np.abs(nx) < 1e-4, 1.0, nx)).sum())
        self.sq_hat += float((nh * nh).sum())
        self.dot += float(dot.sum())
        self.fires += active.sum(axis=0)

    def density(self) -> np.ndarray:
        return self.fires / max(self.n, 1)

    def result(self) -> dict:
        if self.n == 0:
            return {"n_rows": 0}
        mu = self.sum_x / self.n
        total_var = self.sq_norm - self.n * float(mu @ mu)
        dens = self.density()
        return {
            "n_rows": self.n,
            "l0": self.l0 / self.n,
            "explained_variance": 1 - self.sq_err / total_var,
            "normalized_mse": self.sq_err / self.sq_norm,
            "cosine_similarity": self.cos / self.n,
            "dead_fraction": float((dens == 0).mean()),
            "dense_fraction": float((dens > DENSE_THRESHOLD).mean()),
            "density_window_tokens": self.n,
            "l2_ratio": self.l2_ratio / self.n,
            "relative_reconstruction_bias": self.sq_hat / self.dot if self.dot else float("nan"),
        }


class PrefixMetrics:
    """Reconstruction metrics of each Matryoshka prefix (widths increasing, the last d_sae):
    one MetricAccumulator per prefix, fed the prefix reconstruction built block by block."""

    KEYS = ("l0", "explained_variance", "normalized_mse", "cosine_similarity")

    def __init__(self, widths, w_dec: np.ndarray, b_dec: np.ndarray):
        self.widths = [int(w) for w in widths]
        self.w_dec = np.asarray(w_dec, np.float64)
        self.b_dec = np.asarray(b_dec, np.float64)
        self.accs = [MetricAccumulator(w) for w in self.widths]

    def add(self, x, f, x_hat=None) -> None:
        """``x_hat`` (optional): the SAE's own full reconstruction, used for the last prefix."""
        f = np.asarray(f, np.float64)
        rec, start = np.broadcast_to(self.b_dec, (len(f), len(self.b_dec))), 0
        for i, (w, acc) in enumerate(zip(self.widths, self.accs, strict=True)):
            rec = rec + f[:, start:w] @ self.w_dec[start:w]
            last = i == len(self.widths) - 1 and x_hat is not None
            acc.add(x, x_hat if last else rec, f[:, :w])
            start = w

    def result(self) -> list[dict]:
        out = []
        for w, acc in zip(self.widths, self.accs, strict=True):
            r = acc.result()
            out.append({"width": w, **{k: r[k] for k in self.KEYS if k in r}})
        return out


def max_decoder_cosine_sim(w_dec: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(d_sae,) for each latent the largest cosine similarity of its decoder row (W_dec is
    (d_sae, d_in)) with any other latent's row (SAEBench's calculate_max_cosine_sim)."""
    w = np.asarray(w_dec, np.float64)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(w))
    for start in range(0, len(w), chunk):
        sims = w[start : start + chunk] @ w.T
        idx = np.arange(start, min(start + chunk, len(w)))
        sims[idx - start, idx] = -np.inf
        out[start : start + chunk] = sims.max(axis=1)
    return out


def saebench_core(
    result: dict, density: np.ndarray, w_dec: np.ndarray, kl_sae: float, kl_ablation: float,
    ce_clean: float, ce_sae: float, ce_ablation: float,
) -> dict:  # fmt: skip
    """SAEBench's core metrics (see the module docstring) from our accumulated results."""
    d = np.asarray(density, np.float64)
    total = d.sum()
    return {
        "kl_div_score": (kl_ablation - kl_sae) / kl_ablation,
        "kl_div_with_sae": kl_sae,
        "kl_div_with_ablation": kl_ablation,
        "ce_loss_score": (ce_ablation - ce_sae) / (ce_ablation - ce_clean),
        "ce_loss_with_sae": ce_sae,
        "ce_loss_without_sae": ce_clean,
        "ce_loss_with_ablation": ce_ablation,
        "l2_ratio": result["l2_ratio"],
        "relative_reconstruction_bias": result["relative_reconstruction_bias"],
        "frac_alive": float((d > 0).mean()),
        "average_max_decoder_cosine_sim": float(max_decoder_cosine_sim(w_dec).mean()),
        "freq_over_1_percent": float((d > 0.01).mean()),
        "freq_over_10_percent": float((d > 0.1).mean()),
        "normalized_freq_over_1_percent": float(d[d > 0.01].sum() / total) if total else 0.0,
        "normalized_freq_over_10_percent": float(d[d > 0.1].sum() / total) if total else 0.0,
    }


def log10_density_histogram(density: np.ndarray, path, title: str = "") -> None:
    """Histogram of log10(feature density) over latents that fired; dead ones are counted
    in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(alive):
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    ax.axvline(np.log10(DENSE_THRESHOLD), color="tab:red", ls="--", lw=1, label="dense (0.1)")
    ax.set_xlabel("log10 feature density (fraction of tokens with f > 0)")
    ax.set_ylabel("latents")
    n_dead = int((density == 0).sum())
    ax.set_title(title or "feature density", fontsize=10)
    ax.legend(title=f"dead: {n_dead} of {len(density)}", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
