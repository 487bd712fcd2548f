"""SAE folders in SAELens's format: ``cfg.json`` + ``sae_weights.safetensors``.

This module only reads and writes files (NumPy arrays in, NumPy arrays out), so that
both backends load the very same bytes; the math lives in each backend separately.
A folder is written whole into a temporary sibling and moved into place in one step,
so an interrupted save never leaves a half-written SAE.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import load_safetensors, read_json, to_json, write_folder_atomic
from .config import BATCH_TOPK, SAEConfig, weight_names

__all__ = ["load_sae_folder", "save_sae_folder", "write_folder_atomic"]

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


def save_sae_folder(folder: str | os.PathLike, cfg: SAEConfig, weights: dict[str, np.ndarray]):
    """Write cfg.json and sae_weights.safetensors (float32 unless cfg.dtype says otherwise)."""
    from safetensors.numpy import save_file

    expected = weight_names(cfg)
    if set(weights) != set(expected):
        raise ValueError(f"weights {sorted(weights)} do not match {sorted(expected)}")
    arrays = {}
    for name, shape in expected.items():
        a = np.ascontiguousarray(weights[name], dtype=np.dtype(cfg.dtype))
        if a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
        arrays[name] = a

    def write(tmp: Path) -> None:
        save_file(arrays, str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(to_json(cfg.to_saelens(), folder) + "\n")

    return write_folder_atomic(folder, write)


def load_sae_folder(folder: str | os.PathLike) -> tuple[SAEConfig, dict[str, np.ndarray]]:
    """Read a SAELens SAE folder into (config, float32 NumPy weights), checking every shape."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not an SAE folder: no {CFG_FILENAME}")
    if not w_path.is_file():
        raise FileNotFoundError(f"{folder} is not an SAE folder: no {WEIGHTS_FILENAME}")
    fix = f"the SAE folder {folder} is damaged: train or copy it again"
    raw = read_json(cfg_path, fix)
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} is not an SAE config (a JSON object); {fix}")
    try:
        cfg = SAEConfig.from_saelens(raw)
    except (TypeError, KeyError) as e:
        raise ValueError(f"{cfg_path} is not a valid SAE config ({e}); {fix}") from None
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    tensors = load_safetensors(w_path, fix)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = np.exp(tensors.pop("log_threshold"))
    if "topk_threshold" in tensors and "threshold" not in tensors:
        # a SAELens BatchTopK training file: the one global threshold, a scalar
        t = np.asarray(tensors.pop("topk_threshold"), np.float32).reshape(())
        tensors["threshold"] = np.full(cfg.d_sae, t, np.float32)
    weights = {}
    for name, shape in weight_names(cfg).items():
        if name not in tensors:
            if name == "b_enc":  # some SAE files have no encoder bias
                tensors[name] = np.zeros(shape, np.float32)
            else:
                raise ValueError(f"{w_path} has no tensor {name!r}")
        a = np.asarray(tensors[name], dtype=np.float32)
        if a.shape != shape:
            raise ValueError(
                f"{w_path}: {name} has shape {a.shape}, expected {shape} for d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{w_path}: {name} holds NaN or infinite values; {fix}")
        weights[name] = a
    cfg.dtype = "float32"
    if raw.get("rescale_acts_by_decoder_norm") and cfg.architecture in ("topk", *BATCH_TOPK):
        # BatchTopK: the threshold is on the rescaled pre-activations, as after the folding
        weights = fold_decoder_norms(weights)
    if cfg.architecture in BATCH_TOPK and cfg.threshold is None:
        t = weights["threshold"]
        cfg.threshold = float(t[0]) if np.all(t == t[0]) else None
    return cfg, weights


def fold_decoder_norms(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A SAELens TopK SAE with ``rescale_acts_by_decoder_norm=true`` (its default) as a plain
    TopK SAE that computes the same thing: SAELens ranks and keeps ``pre_i * ||W_dec_i||`` and
    decodes ``(f_i / ||W_dec_i||) @ W_dec``; with ``n_i = ||W_dec_i||``, ``W_enc[:, i] * n_i``,
    ``b_enc_i * n_i`` and ``W_dec_i / n_i`` give the same latents f and the same reconstruction
    (exact up to float rounding). Latents whose decoder row is zero never fire in either."""
    n = np.linalg.norm(weights["W_dec"].astype(np.float64), axis=1)
    safe = np.where(n > 0, n, 1.0)
    out = dict(weights)
    out["W_enc"] = (weights["W_enc"].astype(np.float64) * n[None, :]).astype(np.float32)
    out["b_enc"] = (weights["b_enc"].astype(np.float64) * n).astype(np.float32)
    out["W_dec"] = (weights["W_dec"].astype(np.float64) / safe[:, None]).astype(np.float32)
    return out
