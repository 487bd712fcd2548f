"""Find a model's files: an embedded alias, a GGUF file, a local folder or a Hugging Face repo id.

Everything resolves to a local Hugging Face-format folder (``config.json``, weights as
safetensors or ``pytorch_model*.bin``, tokenizer files), which both backends load. A GGUF
file (llama architecture) is converted once, dequantised to float32, into
``cache_root()/models/`` and reused afterwards; ``EMBEDDED`` names GGUF models that ship
inside installed Python packages, so a real pretrained model is available offline.

This module finds and converts files only: it imports neither MLX nor PyTorch (the
conversion uses ``gguf``, ``numpy``, ``safetensors`` and ``transformers``' configuration
and tokenizer classes).
"""

from .cache import MARKER, ModelSourceError, cache_root
from .gguf import convert_gguf
from .resolve import EMBEDDED, EmbeddedModel, resolve_model_dir, weight_files

__all__ = [
    "EMBEDDED",
    "MARKER",
    "EmbeddedModel",
    "ModelSourceError",
    "cache_root",
    "convert_gguf",
    "resolve_model_dir",
    "weight_files",
]
