"""The model configuration shared by both architectures, read from a Hugging Face config.json."""

from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    """Shapes and options of a GPT-2 or Llama model, in TransformerLens-style names.

    The first block of fields is common to both architectures; the rest are used by one.
    """

    architecture: str  # "gpt2" or "llama"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    norm_eps: float
    tie_embeddings: bool
    # GPT-2
    act_fn: str = "gelu_new"
    scale_attn_weights: bool = True
    # Llama
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_params: dict = field(default_factory=dict)
    attention_bias: bool = False
    mlp_bias: bool = False


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json (as a dict) into a ModelConfig."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config(hf)
    if model_type == "llama":
        return _llama_config(hf)
    raise ValueError(
        f"unsupported model_type {model_type!r} in config.json (supported: gpt2, llama)"
    )


def _gpt2_config(hf: dict) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag, False):
            raise ValueError(f"GPT-2 config option {flag}=True is not supported by torch_ref")
    act_fn = hf.get("activation_function", "gelu_new")
    if act_fn not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ValueError(
            f"unsupported GPT-2 activation_function {act_fn!r} (supported: gelu_new, gelu)"
        )
    d_model = hf["n_embd"]
    n_heads = hf["n_head"]
    return ModelConfig(
        architecture="gpt2",
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        act_fn="gelu" if act_fn == "gelu" else "gelu_new",
        scale_attn_weights=hf.get("scale_attn_weights", True),
    )


def _llama_config(hf: dict) -> ModelConfig:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"unsupported Llama hidden_act {act!r} (supported: silu)")
    n_heads = hf["num_attention_heads"]
    rope_theta, rope_type, rope_params = _rope_from_hf(hf)
    return ModelConfig(
        architecture="llama",
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_head=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=rope_theta,
        rope_type=rope_type,
        rope_params=rope_params,
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
    )


def _rope_from_hf(hf: dict) -> tuple[float, str, dict]:
    """Read (theta, type, scaling parameters) from either config style.

    transformers 5 writes `rope_parameters: {rope_type, rope_theta, factor, ...}`; older
    configs write `rope_theta` at the top level and `rope_scaling: {type | rope_type, ...}`.
    """
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    needed = {
        "default": (),
        "linear": ("factor",),
        "llama3": (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ),
    }[rope_type]
    missing = [key for key in needed if key not in params]
    if missing:
        raise ValueError(f"rope type {rope_type!r} needs {', '.join(missing)} in config.json")
    return theta, rope_type, {key: params[key] for key in needed}
