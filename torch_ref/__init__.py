"""torch_ref: a plain PyTorch reference for GPT-2 and Llama with TransformerLens hook names.

Written independently of mlx_interp, for clarity rather than speed, so that the two
backends (and Hugging Face transformers) can check each other hook point by hook point.

    from torch_ref import load_model
    ref = load_model("path/to/hf-folder", dtype="float64")
    logits, cache = ref.run_with_cache(ref.to_tokens(["Hello world"]))
"""

from torch_ref.config import ModelConfig
from torch_ref.hooks import HookPoint
from torch_ref.model import HookedModel, load_model

__all__ = ["HookPoint", "HookedModel", "ModelConfig", "load_model"]
