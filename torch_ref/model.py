"""The common API over both architectures: loading, tokenization, run_with_cache, run_with_hooks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from torch_ref.config import ModelConfig, config_from_hf
from torch_ref.gpt2 import GPT2, gpt2_weights
from torch_ref.hooks import HookFn, NameFilter, attached, name_hook_points, select_names
from torch_ref.llama import Llama, llama_weights

ARCHITECTURES = {"gpt2": (GPT2, gpt2_weights), "llama": (Llama, llama_weights)}
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class HookedModel(nn.Module):
    """A GPT-2 or Llama model with TransformerLens-style hook points, and its tokenizer.

    `model` is the architecture module (torch_ref.gpt2.GPT2 or torch_ref.llama.Llama);
    hook names are dotted paths inside it, e.g. "blocks.3.attn.hook_pattern".
    """

    def __init__(self, cfg: ModelConfig, model: nn.Module, tokenizer=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.hook_dict = name_hook_points(model)
        self.eval()

    @property
    def hook_names(self) -> list[str]:
        """Every hook point name, in forward order."""
        return list(self.hook_dict)

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed.weight.dtype

    # ----- tokenization -----

    def tokenize(
        self, texts: str | list[str], prepend_bos: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and right-pad: (tokens (batch, pos) long, attention_mask (batch, pos) long).

        prepend_bos: None uses the tokenizer's own default (add_special_tokens=True);
        True adds no other special tokens and puts the BOS token first; False adds none.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer")
        if isinstance(texts, str):
            texts = [texts]
        add_special = prepend_bos is None
        ids = [self.tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
        if prepend_bos:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
            ids = [[bos, *seq] for seq in ids]
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        length = max(len(seq) for seq in ids)
        tokens = torch.full((len(ids), length), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return tokens.to(self.device), mask.to(self.device)

    def to_tokens(self, texts: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Token ids (batch, pos), right-padded with the pad id; see tokenize."""
        return self.tokenize(texts, prepend_bos=prepend_bos)[0]

    # ----- running -----

    def _check_inputs(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = torch.as_tensor(tokens, device=self.device)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(
                f"tokens must be integer ids of shape (batch, pos), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        tokens = tokens.long()
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is longer than the model's context n_ctx={self.cfg.n_ctx}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.d_vocab}); got min {int(tokens.min())}, max {int(tokens.max())}"
            )
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=self.device)
            if attention_mask.ndim == 1:
                attention_mask = attention_mask[None]
            if attention_mask.shape != tokens.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens shape {tuple(tokens.shape)}"
                )
            attention_mask = attention_mask.long()
        return tokens, attention_mask

    def _stop_layer(self, stop_at_layer: int | None) -> int | None:
        if stop_at_layer is None:
            return None
        n = self.cfg.n_layers
        if not -n <= stop_at_layer <= n:
            raise ValueError(f"stop_at_layer={stop_at_layer} is outside [-{n}, {n}]")
        return stop_at_layer % n if stop_at_layer < 0 else stop_at_layer

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens (batch, pos) -> logits (batch, pos, d_vocab)."""
        tokens, attention_mask = self._check_inputs(tokens, attention_mask)
        return self.model(tokens, attention_mask)

    @torch.no_grad()
    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names_filter: NameFilter = None,
        stop_at_layer: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Run and keep activations: (logits or None when stop_at_layer is set, {name: tensor}).

        names_filter: None (all), a name, a list of names, or a predicate name -> bool.
        stop_at_layer=L runs only blocks 0 .. L-1 (the later blocks are not computed); the
        residual they hand on is cached as blocks.L.hook_resid_pre.
        """
        tokens, attention_mask = self._check_inputs(tokens, attention_mask)
        names = select_names(names_filter, self.hook_names)
        stop = self._stop_layer(stop_at_layer)
        cache: dict[str, torch.Tensor] = {}
        with attached(self.hook_dict, cache=cache, cache_names=names):
            logits = self.model(tokens, attention_mask, stop)
        return logits, cache

    @torch.no_grad()
    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run with hook functions attached: fwd_hooks is [(name or predicate, fn)], where
        fn(tensor, hook) returns a replacement tensor or None. The hooks are removed after."""
        tokens, attention_mask = self._check_inputs(tokens, attention_mask)
        with attached(self.hook_dict, fwd_hooks=fwd_hooks):
            return self.model(tokens, attention_mask)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        temperature: float = 0.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str:
        """The text that follows prompt, one token at a time, recomputing the whole sequence
        each step with the hooks attached. Greedy when temperature is 0, else sampled."""
        tokens = self.to_tokens(prompt)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not temperature >= 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if tokens.shape[1] + max_new_tokens > self.cfg.n_ctx:
            raise ValueError(
                f"the prompt ({tokens.shape[1]} tokens) plus max_new_tokens={max_new_tokens} "
                f"exceed the model's context length n_ctx={self.cfg.n_ctx}"
            )
        generator = torch.Generator().manual_seed(seed)
        new_ids: list[int] = []
        for _ in range(max_new_tokens):
            logits = self.run_with_hooks(tokens, fwd_hooks)[0, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            else:
                next_id = int(logits.argmax())
            new_ids.append(next_id)
            if stop_at_eos and next_id == self.tokenizer.eos_token_id:
                break
            next_token = torch.tensor([[next_id]], dtype=tokens.dtype, device=tokens.device)
            tokens = torch.cat([tokens, next_token], dim=1)
        return self.tokenizer.decode(new_ids)


# ----- loading -----


def _resolve(source: str | Path) -> Path:
    """A local Hugging Face folder for source (a folder, or whatever mlx_interp can resolve)."""
    try:
        from mlx_interp.sources import resolve_model_dir
    except ImportError:
        resolve_model_dir = None
    if resolve_model_dir is not None:
        return Path(resolve_model_dir(source))
    path = Path(source)
    if not (path / "config.json").exists():
        raise ValueError(f"{source!s} is not a Hugging Face model folder (no config.json)")
    return path


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors in one .safetensors or .bin file; a one-line ValueError if it cannot be read."""
    if not path.exists():
        raise ValueError(f"weight file missing: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot read weight file {path}: {first_line}") from None


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards a model.safetensors.index.json (or
    pytorch_model.bin.index.json) names, else model*.safetensors, else pytorch_model*.bin."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"cannot read weight index {folder / index}: {exc}") from None
            return [folder / shard for shard in sorted(set(weight_map.values()))]
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ValueError(f"no weights in {folder} (expected model.safetensors or pytorch_model.bin)")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in folder, by their Hugging Face names."""
    weights: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        weights.update(_read_file(path))
    return weights


def _to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[dtype]


def load_model(
    source: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> HookedModel:
    """Load a GPT-2 or Llama Hugging Face checkpoint as a HookedModel.

    source: a local HF folder (or anything mlx_interp.sources.resolve_model_dir accepts);
    dtype: "float32" or "float64" (or a torch dtype); weights stored in other dtypes are cast.
    """
    torch_dtype = _to_dtype(dtype)
    device = torch.device(device)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but PyTorch's MPS backend is not available")
        if torch_dtype == torch.float64:
            raise ValueError("float64 is not supported on 'mps'; use device='cpu' for float64")

    folder = _resolve(source)
    config = json.loads((folder / "config.json").read_text())
    cfg = config_from_hf(config)
    hf_weights = read_weights(folder)
    quant = config.get("quantization") or config.get("quantization_config")
    if quant:  # an mlx-lm quantized folder: dequantized here, in float32
        from torch_ref.quant import dequantize_checkpoint

        hf_weights = dequantize_checkpoint(hf_weights, quant)
    if "lm_head.weight" not in hf_weights:
        cfg.tie_embeddings = True  # no separate unembedding stored: it is the embedding
    model_cls, rename = ARCHITECTURES[cfg.architecture]
    weights = {k: v.to(torch_dtype) for k, v in rename(hf_weights, cfg).items()}

    with torch.device("meta"):
        model = model_cls(cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"weights in {folder} do not match a {cfg.architecture} model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    try:
        model.load_state_dict(weights, assign=True)
    except RuntimeError as exc:  # shapes that do not fit the config
        detail = " ".join(str(exc).split())
        raise ValueError(f"weights in {folder} do not fit config.json: {detail}") from None
    model.to(device)

    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - a folder without a tokenizer still runs on token ids
        tokenizer = None
    return HookedModel(cfg, model, tokenizer)
