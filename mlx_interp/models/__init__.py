"""One file per architecture, each with ModelArgs, Model and Model.sanitize (mlx-lm style)."""

from types import ModuleType

from . import gpt2, llama

# Hugging Face config.json model_type -> architecture module
ARCHITECTURES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama}


def architecture_for(model_type: str) -> ModuleType:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        ) from None
