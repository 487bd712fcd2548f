"""A catalogue of bad inputs: every one gets one clear line, and nothing is left on disk.

Each CLI case runs ``mlx-interp`` in-process on tiny random checkpoints and asserts the exit
code, that stderr is exactly one line (no traceback) naming the problem, and that the output
folder was not created (or, for an existing one, not changed). The API cases check that the
Python functions raise one-line ValueErrors for the same kinds of mistakes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_interp.cli import main

HOOK = "blocks.1.hook_resid_post"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(checkpoint_dir, tmp_path_factory):
    """Paths the cases refer to as {name}: models (good and broken), data files, an
    extraction, a trained SAE and broken copies of it."""
    from safetensors.numpy import load_file, save_file

    from conftest import write_checkpoint
    from mlx_interp.model import load_model
    from mlx_interp.sae import SAE
    from mlx_interp.sae.config import SAEConfig

    root = tmp_path_factory.mktemp("bad")
    p: dict[str, str] = {"root": str(root)}
    gpt2 = checkpoint_dir("gpt2")
    p["gpt2"], p["llama"] = str(gpt2), str(checkpoint_dir("llama-mha-tied"))
    p["other"] = str(write_checkpoint(root / "other", "gpt2", {}, seed=1))

    def broken(name: str, edit) -> None:
        folder = root / name
        shutil.copytree(gpt2, folder)
        edit(folder)
        p[name] = str(folder)

    def cfg_edit(change):
        def edit(folder):
            cfg = json.loads((folder / "config.json").read_text())
            change(cfg)
            (folder / "config.json").write_text(json.dumps(cfg))

        return edit

    def weights_edit(change):
        def edit(folder):
            w = load_file(str(folder / "model.safetensors"))
            change(w)
            save_file(w, str(folder / "model.safetensors"))

        return edit

    def truncate(path: Path, keep: float = 0.5) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    broken("bad_json", lambda f: (f / "config.json").write_text("{not json"))
    broken("no_n_embd", cfg_edit(lambda c: c.pop("n_embd")))
    broken("bad_heads", cfg_edit(lambda c: c.update(n_head=5)))
    broken("zero_layers", cfg_edit(lambda c: c.update(n_layer=0)))
    broken("bert", cfg_edit(lambda c: c.update(model_type="bert")))
    broken("no_config", lambda f: (f / "config.json").unlink())
    broken("truncated", lambda f: truncate(f / "model.safetensors"))
    broken("no_weights", lambda f: (f / "model.safetensors").unlink())
    broken("missing_tensor", weights_edit(lambda w: w.pop("transformer.h.1.mlp.c_fc.weight")))

    def nan_weight(w):
        w["transformer.h.1.attn.c_attn.weight"][0, 0] = np.nan

    broken("nan_weight", weights_edit(nan_weight))

    def overflow(w):  # float16 overflows in block 1's MLP (every weight stays in range)
        w["transformer.h.1.ln_2.weight"] *= 1e3
        w["transformer.h.1.mlp.c_fc.weight"] *= 1e3

    broken("overflow", weights_edit(overflow))

    def huge(w):
        w["transformer.h.0.mlp.c_fc.weight"][0, 0] = 1e6

    broken("huge_weight", weights_edit(huge))

    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, 40)) for _ in range(60)]
    (root / "data.txt").write_text("\n\n".join(docs))
    (root / "empty.txt").write_text("  \n\n ")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    (root / "nofield.jsonl").write_text('{"body": "no text field"}\n')
    (root / "emptydir").mkdir()
    (root / "afile").write_text("a file, not a folder\n")
    (root / "prompts_empty.txt").write_text("\n\n")
    for k in ("data", "empty", "latin1"):
        p[k] = str(root / f"{k}.txt")
    p["bad_jsonl"], p["nofield"] = str(root / "bad.jsonl"), str(root / "nofield.jsonl")
    p["emptydir"], p["afile"] = str(root / "emptydir"), str(root / "afile")
    p["prompts_empty"] = str(root / "prompts_empty.txt")

    # an extraction, a truncated copy of it, and one with NaN rows
    acts = root / "acts"
    assert main(["extract", "--model", p["gpt2"], "--hooks", HOOK, "--data", p["data"],
                 "--out", str(acts), "--max-tokens", "512", "--context-length", "32",
                 "--shard-mb", "0.02"]) == 0  # fmt: skip
    p["acts"] = str(acts)
    for name, edit in (("acts_trunc", "truncate"), ("acts_meta", "meta"), ("acts_nan", "nan")):
        shutil.copytree(acts, root / name)
        shard = root / name / "shard_00001.safetensors"
        if edit == "truncate":
            truncate(shard)
        elif edit == "meta":
            (root / name / "metadata.json").write_text("{truncated")
        else:
            a = load_file(str(shard))
            a[HOOK][3, 5] = np.nan
            save_file(a, str(shard))
        p[name] = str(root / name)

    # a trained SAE, and broken copies
    sae_run = root / "sae_run"
    assert main(["train-sae", "--model", p["gpt2"], "--hook", HOOK, "--activations", str(acts),
                 "--expansion", "2", "--k", "4", "--tokens", "512", "--batch-size", "128",
                 "--out", str(sae_run), "--epochs", "4", "--keep-checkpoint"]) == 0  # fmt: skip
    sae = sae_run / HOOK
    p["sae"], p["sae_run"] = str(sae), str(sae_run)

    def sae_copy(name: str, edit) -> None:
        shutil.copytree(sae, root / name)
        edit(root / name)
        p[name] = str(root / name)

    sae_copy("sae_trunc", lambda f: truncate(f / "sae_weights.safetensors"))
    sae_copy("sae_badjson", lambda f: (f / "cfg.json").write_text("[1, 2"))
    sae_copy("sae_noweights", lambda f: (f / "sae_weights.safetensors").unlink())

    def no_d_in(f):
        cfg = json.loads((f / "cfg.json").read_text())
        cfg.pop("d_in")
        (f / "cfg.json").write_text(json.dumps(cfg))

    sae_copy("sae_nod_in", no_d_in)

    def nan_sae(f):
        w = load_file(str(f / "sae_weights.safetensors"))
        w["W_enc"][0, 0] = np.nan
        save_file(w, str(f / "sae_weights.safetensors"))

    sae_copy("sae_nan", nan_sae)

    def other_model(f):
        cfg = json.loads((f / "cfg.json").read_text())
        cfg["metadata"]["model_name"] = p["other"]
        (f / "cfg.json").write_text(json.dumps(cfg))

    sae_copy("sae_other", other_model)
    narrow = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name=HOOK,
                           model_name=p["gpt2"]))  # fmt: skip
    narrow.save(root / "sae_narrow")
    p["sae_narrow"] = str(root / "sae_narrow")

    # a training run with a damaged checkpoint
    for name in ("ckpt_json", "ckpt_trunc"):
        shutil.copytree(sae_run, root / name)
        ck = root / name / "checkpoint"
        if name == "ckpt_json":
            (ck / "trainer.json").write_text("{")
        else:
            truncate(ck / f"{HOOK}.safetensors")
        p[name] = str(root / name)

    # a demo-like run folder with a corrupt metrics.json
    (root / "run_bad" / "sae").mkdir(parents=True)
    (root / "run_bad" / "sae" / "training.json").write_text('{"hooks": [')
    p["run_bad"] = str(root / "run_bad")
    (root / "run_odd" / "sae").mkdir(parents=True)
    (root / "run_odd" / "sae" / "training.json").write_text('{"tokens": 3}')
    p["run_odd"] = str(root / "run_odd")
    p["model_obj"] = load_model(p["gpt2"])  # type: ignore[assignment]
    return p


def _snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {
        str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns)
        for f in folder.rglob("*")
    }


# ------------------------------------------------------------------ the CLI catalogue
# (id, argv with {placeholders}, exit code, a regular expression the message must match,
#  the folder that must not change ('out': a fresh folder that must not be created))
E = 2
EXTRACT = "extract --model {gpt2} --hooks " + HOOK + " --data {data} --out {out}"
TRAIN = "train-sae --model {gpt2} --hook " + HOOK + " --data {data} --out {out} --tokens 1024 --batch-size 256"  # fmt: skip
TRAIN_ACTS = "train-sae --model {gpt2} --hook " + HOOK + " --out {out} --tokens 512 --batch-size 128"  # fmt: skip
EVAL = "eval-sae --model {gpt2} --data {data} --out {out} --tokens 64"
FEAT = "features --model {gpt2} --data {data} --out {out} --tokens 64"
ANALYZE = "analyze --model {gpt2} --out {out} --max-tokens 64"
TOKENS = "tokens --model {gpt2} --hooks " + HOOK + " --text hello --out {out}"

CASES = [
    # --- extract: arguments
    ("extract-batch-0", EXTRACT + " --batch-size 0", E, r"batch-size.*positive", "out"),
    ("extract-batch-neg", EXTRACT + " --batch-size -3", E, r"batch-size.*positive", "out"),
    ("extract-batch-text", EXTRACT + " --batch-size abc", E, r"invalid int value", "out"),
    ("extract-ctx-1", EXTRACT + " --context-length 1", E, r"context-length.*>= 2", "out"),
    ("extract-ctx-long", EXTRACT + " --context-length 100000", E, r"n_ctx=128", "out"),
    ("extract-max-tokens-0", EXTRACT + " --max-tokens 0", E, r"max-tokens.*positive", "out"),
    ("extract-max-tokens-neg", EXTRACT + " --max-tokens -5", E, r"max-tokens", "out"),
    ("extract-shard-0", EXTRACT + " --shard-mb 0", E, r"shard-mb must be > 0", "out"),
    ("extract-shard-nan", EXTRACT + " --shard-mb nan", E, r"shard-mb must be a finite", "out"),
    ("extract-shard-neg", EXTRACT + " --shard-mb -1", E, r"shard-mb", "out"),
    ("extract-hooks-empty", EXTRACT.replace(HOOK, "' , '"), E, r"--hooks is empty", "out"),
    (
        "extract-hook-unknown",
        EXTRACT.replace(HOOK, "blocks.9.hook_resid_post"),
        E,
        r"unknown hook point",
        "out",
    ),  # fmt: skip
    (
        "extract-hook-typo",
        EXTRACT.replace(HOOK, "blocks.1.hook_resid_pst"),
        E,
        r"did you mean blocks.1.hook_resid_post",
        "out",
    ),  # fmt: skip
    (
        "extract-hook-pattern",
        EXTRACT.replace(HOOK, "blocks.0.attn.hook_pattern"),
        E,
        r"attention pattern",
        "out",
    ),  # fmt: skip
    ("extract-hook-twice", EXTRACT.replace(HOOK, f"{HOOK},{HOOK}"), E, r"listed twice", "out"),
    ("extract-id-neg", EXTRACT + " --positions id:-1", E, r"token ids are >= 0", "out"),
    ("extract-id-text", EXTRACT + " --positions id:abc", E, r"after 'id:' give a token id", "out"),
    ("extract-id-range", EXTRACT + " --positions id:99999", E, r"outside the vocabulary", "out"),
    ("extract-token-multi", EXTRACT + " --positions ' quick brown fox'", E, r"not one", "out"),
    ("extract-split", EXTRACT + " --split test", E, r"invalid choice", "out"),
    ("extract-dtype", EXTRACT + " --dtype int8", E, r"invalid choice", "out"),
    ("extract-unknown-flag", EXTRACT + " --frobnicate", E, r"unrecognized arguments", "out"),
    # --- extract: data
    ("data-missing", EXTRACT.replace("{data}", "{root}/nope.txt"), E, r"does not exist", "out"),
    ("data-empty", EXTRACT.replace("{data}", "{empty}"), E, r"holds no text", "out"),
    ("data-latin1", EXTRACT.replace("{data}", "{latin1}"), E, r"not UTF-8.*0xe9", "out"),
    (
        "data-bad-jsonl",
        EXTRACT.replace("{data}", "{bad_jsonl}"),
        E,
        r"bad.jsonl:2: not valid JSON",
        "out",
    ),  # fmt: skip
    (
        "data-jsonl-field",
        EXTRACT.replace("{data}", "{nofield}"),
        E,
        r"no string field 'text'",
        "out",
    ),  # fmt: skip
    ("data-empty-dir", EXTRACT.replace("{data}", "{emptydir}"), E, r"holds no .txt files", "out"),
    # --- models
    ("model-missing", EXTRACT.replace("{gpt2}", "{root}/no_model"), E, r"not found", "out"),
    ("model-no-config", EXTRACT.replace("{gpt2}", "{no_config}"), E, r"No config.json", "out"),
    (
        "model-bad-json",
        EXTRACT.replace("{gpt2}", "{bad_json}"),
        E,
        r"config.json is not valid JSON",
        "out",
    ),  # fmt: skip
    (
        "model-no-n-embd",
        EXTRACT.replace("{gpt2}", "{no_n_embd}"),
        E,
        r"config.json has no 'n_embd'",
        "out",
    ),  # fmt: skip
    (
        "model-bad-heads",
        EXTRACT.replace("{gpt2}", "{bad_heads}"),
        E,
        r"not divisible by n_head=5",
        "out",
    ),  # fmt: skip
    (
        "model-zero-layers",
        EXTRACT.replace("{gpt2}", "{zero_layers}"),
        E,
        r"n_layers=0 must be a positive",
        "out",
    ),  # fmt: skip
    (
        "model-bert",
        EXTRACT.replace("{gpt2}", "{bert}"),
        E,
        r"model_type 'bert' is not supported",
        "out",
    ),  # fmt: skip
    (
        "model-truncated",
        EXTRACT.replace("{gpt2}", "{truncated}"),
        E,
        r"model.safetensors.*truncated",
        "out",
    ),  # fmt: skip
    ("model-no-weights", EXTRACT.replace("{gpt2}", "{no_weights}"), E, r"No weights", "out"),
    (
        "model-missing-tensor",
        EXTRACT.replace("{gpt2}", "{missing_tensor}"),
        E,
        r"1 tensors are missing \(blocks.1.mlp.c_fc.weight\)",
        "out",
    ),  # fmt: skip
    (
        "model-nan-weight",
        EXTRACT.replace("{gpt2}", "{nan_weight}"),
        E,
        r"blocks.1.attn.c_attn.weight holds NaN",
        "out",
    ),  # fmt: skip
    (
        "model-fp16-overflow",
        EXTRACT.replace("{gpt2}", "{overflow}").replace(HOOK, "blocks.2.hook_resid_post")
        + " --dtype float16",
        E,
        r"float16 overflow.*blocks.1.mlp.hook_pre \(layer 1",
        "out",
    ),  # fmt: skip
    (
        "model-fp16-weight-range",
        EXTRACT.replace("{gpt2}", "{huge_weight}") + " --dtype float16",
        E,
        r"blocks.0.mlp.c_fc.weight.*outside the float16 range",
        "out",
    ),  # fmt: skip
    ("info-model-missing", "info --model {root}/no_model", E, r"not found", None),
    ("info-model-file", "info --model {afile}", E, r"is a file, not a model folder", None),
    # --- output folders
    ("out-is-file", EXTRACT.replace("{out}", "{afile}"), E, r"is a file", None),
    (
        "out-resume-other",
        EXTRACT.replace("{out}", "{acts}").replace(HOOK, "blocks.0.hook_resid_post"),
        E,
        r"other settings \(hooks",
        "acts",
    ),  # fmt: skip
    (
        "out-resume-trunc",
        EXTRACT.replace("{out}", "{acts_trunc}")
        + " --max-tokens 512 --context-length 32 --shard-mb 0.02",
        E,
        r"shard_00001.safetensors is truncated or corrupt.*extract again",
        "acts_trunc",
    ),  # fmt: skip
    (
        "out-resume-meta",
        EXTRACT.replace("{out}", "{acts_meta}"),
        E,
        r"metadata.json is not valid JSON",
        "acts_meta",
    ),  # fmt: skip
    # --- train-sae: arguments
    ("train-expansion-0", TRAIN + " --expansion 0", E, r"expansion must be a positive", "out"),
    ("train-expansion-neg", TRAIN + " --expansion -1", E, r"expansion must be a positive", "out"),
    ("train-dsae-0", TRAIN + " --d-sae 0", E, r"d_sae must be a positive", "out"),
    ("train-both-sizes", TRAIN + " --d-sae 64 --expansion 2", E, r"not allowed with", "out"),
    ("train-lr-nan", TRAIN + " --lr nan", E, r"lr must be a finite number", "out"),
    ("train-lr-inf", TRAIN + " --lr inf", E, r"lr must be a finite number", "out"),
    ("train-lr-neg", TRAIN + " --lr -1", E, r"lr must be in \(0, 1\]", "out"),
    ("train-lr-0", TRAIN + " --lr 0", E, r"lr must be in \(0, 1\]", "out"),
    ("train-lr-huge", TRAIN + " --lr 5", E, r"lr must be in \(0, 1\]", "out"),
    ("train-dead-neg", TRAIN + " --dead-tokens -1", E, r"dead_tokens must be a positive", "out"),
    (
        "train-ckpt-0",
        TRAIN + " --checkpoint-every 0",
        E,
        r"checkpoint_every must be a positive",
        "out",
    ),  # fmt: skip
    ("train-log-0", TRAIN + " --log-every 0", E, r"log_every must be a positive", "out"),
    ("train-tokens-0", TRAIN + " --tokens 0", E, r"tokens must be a positive", "out"),
    ("train-tokens-lt-batch", TRAIN + " --tokens 100", E, r"at least one batch", "out"),
    ("train-batch-0", TRAIN + " --batch-size 0", E, r"batch_size must be a positive", "out"),
    ("train-k-0", TRAIN + " --k 0", E, r"k must be a positive", "out"),
    ("train-k-big", TRAIN + " --d-sae 16 --k 32", E, r"k=32 must be between 1 and d_sae=16", "out"),
    ("train-decay", TRAIN + " --lr-decay-frac 1.5", E, r"lr_decay_frac must be in \[0, 1\]", "out"),
    (
        "train-sparsity-neg",
        TRAIN + " --sparsity-coeff -1",
        E,
        r"sparsity_coeff must be >= 0",
        "out",
    ),  # fmt: skip
    ("train-sparsity-warm", TRAIN + " --sparsity-warmup-frac 2", E, r"sparsity_warmup_frac", "out"),
    (
        "train-warmup-neg",
        TRAIN + " --lr-warmup-steps -1",
        E,
        r"lr_warmup_steps must be an integer >= 0",
        "out",
    ),  # fmt: skip
    ("train-buffer-0", TRAIN + " --buffer-rows 0", E, r"buffer_rows must be a positive", "out"),
    ("train-seed-neg", TRAIN + " --seed -1", E, r"seed must be an integer >= 0", "out"),
    ("train-arch", TRAIN + " --arch relu", E, r"invalid choice", "out"),
    (
        "train-ctx-1",
        TRAIN + " --context-length 1",
        E,
        r"context_length must be an integer >= 2",
        "out",
    ),  # fmt: skip
    ("train-ctx-long", TRAIN + " --context-length 4096", E, r"n_ctx=128", "out"),
    (
        "train-model-batch-0",
        TRAIN + " --model-batch-size 0",
        E,
        r"batch_size must be a positive",
        "out",
    ),  # fmt: skip
    (
        "train-hook-unknown",
        TRAIN.replace(HOOK, "blocks.7.hook_resid_post"),
        E,
        r"unknown hook point",
        "out",
    ),  # fmt: skip
    ("train-hook-twice", TRAIN + " --hook " + HOOK, E, r"listed twice|each hook point once", "out"),
    ("train-data-and-acts", TRAIN + " --activations {acts}", E, r"not allowed with", "out"),
    ("train-data-missing", TRAIN.replace("{data}", "{root}/nope.txt"), E, r"does not exist", "out"),
    (
        "train-epochs-0",
        TRAIN_ACTS + " --activations {acts} --epochs 0",
        E,
        r"epochs must be a positive",
        "out",
    ),  # fmt: skip
    (
        "train-acts-missing",
        TRAIN_ACTS + " --activations {root}/nope",
        E,
        r"holds no extraction",
        "out",
    ),  # fmt: skip
    (
        "train-acts-hook",
        TRAIN_ACTS.replace(HOOK, "blocks.0.hook_resid_post") + " --activations {acts}",
        E,
        r"has no blocks.0.hook_resid_post",
        "out",
    ),  # fmt: skip
    (
        "train-acts-trunc",
        TRAIN_ACTS + " --activations {acts_trunc} --epochs 4",
        E,
        r"shard_00001.safetensors is truncated",
        "out",
    ),  # fmt: skip
    (
        "train-acts-meta",
        TRAIN_ACTS + " --activations {acts_meta}",
        E,
        r"metadata.json is not valid JSON",
        "out",
    ),  # fmt: skip
    (
        "train-acts-nan",
        TRAIN_ACTS + " --activations {acts_nan} --epochs 4",
        E,
        r"shard_00001.safetensors: row 3 of " + HOOK + " holds NaN",
        "out",
    ),  # fmt: skip
    (
        "train-ckpt-json",
        TRAIN_ACTS.replace("{out}", "{ckpt_json}")
        + " --activations {acts} --expansion 2 --k 4 --epochs 4",
        E,
        r"trainer.json is not valid JSON.*--no-resume",
        "ckpt_json",
    ),  # fmt: skip
    (
        "train-ckpt-trunc",
        TRAIN_ACTS.replace("{out}", "{ckpt_trunc}")
        + " --activations {acts} --expansion 2 --k 4 --epochs 4",
        E,
        r"truncated or corrupt.*--no-resume",
        "ckpt_trunc",
    ),  # fmt: skip
    (
        "train-ckpt-other",
        TRAIN_ACTS.replace("{out}", "{sae_run}")
        + " --activations {acts} --expansion 4 --k 4 --epochs 4",
        E,
        r"other settings",
        "sae_run",
    ),  # fmt: skip
    # --- eval-sae
    ("eval-sae-missing", EVAL + " --sae {root}/nope", E, r"not an SAE folder", "out"),
    (
        "eval-sae-noweights",
        EVAL + " --sae {sae_noweights}",
        E,
        r"no sae_weights.safetensors",
        "out",
    ),  # fmt: skip
    (
        "eval-sae-trunc",
        EVAL + " --sae {sae_trunc}",
        E,
        r"sae_weights.safetensors is truncated or corrupt",
        "out",
    ),  # fmt: skip
    ("eval-sae-badjson", EVAL + " --sae {sae_badjson}", E, r"cfg.json is not valid JSON", "out"),
    ("eval-sae-no-d-in", EVAL + " --sae {sae_nod_in}", E, r"cfg.json has no 'd_in'", "out"),
    ("eval-sae-nan", EVAL + " --sae {sae_nan}", E, r"W_enc holds NaN", "out"),
    ("eval-sae-other-model", EVAL + " --sae {sae_other}", E, r"trained on model .*--force", "out"),
    (
        "eval-sae-other-hook",
        EVAL + " --sae {sae} --hook blocks.0.hook_resid_post",
        E,
        r"trained on blocks.1.hook_resid_post, not blocks.0.hook_resid_post.*--force",
        "out",
    ),  # fmt: skip
    ("eval-sae-narrow", EVAL + " --sae {sae_narrow}", E, r"d_in=32 but .* width 64", "out"),
    (
        "eval-sae-narrow-force",
        EVAL + " --sae {sae_narrow} --force",
        E,
        r"d_in=32 but .* width 64",
        "out",
    ),  # fmt: skip
    ("eval-tokens-0", EVAL + " --sae {sae} --tokens 0", E, r"tokens must be a positive", "out"),
    ("eval-ctx-long", EVAL + " --sae {sae} --context-length 500", E, r"n_ctx=128", "out"),
    (
        "eval-batch-0",
        EVAL + " --sae {sae} --model-batch-size 0",
        E,
        r"batch_size must be a positive",
        "out",
    ),  # fmt: skip
    ("eval-out-file", EVAL.replace("{out}", "{afile}") + " --sae {sae}", E, r"is a file", None),
    # --- features
    ("feat-topk-0", FEAT + " --sae {sae} --top-k 0", E, r"top_k must be a positive", "out"),
    (
        "feat-maxfeat-neg",
        FEAT + " --sae {sae} --max-features -1",
        E,
        r"max_features must be an integer >= 0",
        "out",
    ),  # fmt: skip
    ("feat-tokens-0", FEAT + " --sae {sae} --tokens 0", E, r"tokens must be a positive", "out"),
    (
        "feat-feature-range",
        FEAT + " --sae {sae} --feature 99999",
        E,
        r"feature 99999 is out of range",
        "out",
    ),  # fmt: skip
    (
        "feat-feature-neg",
        FEAT + " --sae {sae} --feature -1",
        E,
        r"feature must be an integer >= 0",
        "out",
    ),  # fmt: skip
    ("feat-other-model", FEAT + " --sae {sae_other}", E, r"trained on model .*--force", "out"),
    (
        "feat-neurons-unknown",
        FEAT + " --sae {sae} --neurons blocks.1.mlp.hook_postt",
        E,
        r"did you mean",
        "out",
    ),  # fmt: skip
    (
        "feat-ctx-0",
        FEAT + " --sae {sae} --context-length 0",
        E,
        r"context_length must be an integer >= 2",
        "out",
    ),  # fmt: skip
    ("feat-sae-trunc", FEAT + " --sae {sae_trunc}", E, r"truncated or corrupt", "out"),
    # --- analyze, tokens
    (
        "analyze-max-prompts-0",
        ANALYZE + " --max-prompts 0",
        E,
        r"max-prompts must be a positive",
        "out",
    ),  # fmt: skip
    (
        "analyze-layers-range",
        ANALYZE + " --layers 0,99",
        E,
        r"layer must be at most 2, got 99",
        "out",
    ),  # fmt: skip
    ("analyze-layers-text", ANALYZE + " --layers a,b", E, r"comma-separated layer numbers", "out"),
    (
        "analyze-prompts-missing",
        ANALYZE + " --prompts {root}/nope.txt",
        E,
        r"does not exist",
        "out",
    ),
    ("analyze-prompts-empty", ANALYZE + " --prompts {prompts_empty}", E, r"holds no prompt", "out"),
    (
        "analyze-neuron-hook",
        ANALYZE + " --neuron-hook blocks.1.mlp.hook_pst",
        E,
        r"did you mean",
        "out",
    ),  # fmt: skip
    (
        "analyze-max-tokens-0",
        ANALYZE + " --max-tokens 0",
        E,
        r"max-tokens must be a positive",
        "out",
    ),  # fmt: skip
    ("tokens-empty-token", TOKENS + " --token ''", E, r"empty", "out"),
    ("tokens-multi", TOKENS + " --token ' quick brown'", E, r"not one", "out"),
    (
        "tokens-ctx-0",
        TOKENS + " --token hello --context-length 0",
        E,
        r"context-length must be an integer >= 2",
        "out",
    ),  # fmt: skip
    (
        "tokens-text-empty",
        TOKENS.replace("--text hello", "--text ' '") + " --token a",
        E,
        r"every --text is empty",
        "out",
    ),  # fmt: skip
    # --- report, parity, demo
    ("report-empty", "report --run {emptydir} --no-pdf", E, r"holds no run artefacts", "emptydir"),
    ("report-missing", "report --run {root}/nope --no-pdf", E, r"does not exist", None),
    (
        "report-corrupt",
        "report --run {run_bad} --no-pdf",
        E,
        r"training.json is not valid JSON",
        "run_bad",
    ),  # fmt: skip
    (
        "report-malformed",
        "report --run {run_odd} --no-pdf",
        E,
        r"read by the sae section is malformed",
        "run_odd",
    ),  # fmt: skip
    ("parity-text-empty", "parity --model {gpt2} --text ' '", E, r"--text is empty", None),
    (
        "parity-against-missing",
        "parity --model {gpt2} --against {root}/nope",
        E,
        r"not found",
        None,
    ),  # fmt: skip
    (
        "parity-against-arch",
        "parity --model {gpt2} --against {llama}",
        E,
        r"differ in architecture",
        None,
    ),  # fmt: skip
    ("parity-json-dir", "parity --model {gpt2} --json {emptydir}", E, r"is a folder", "emptydir"),
    (
        "demo-sae-tokens-0",
        "demo --model {gpt2} --out {out} --sae-tokens 0",
        E,
        r"sae_tokens must be a positive",
        "out",
    ),  # fmt: skip
    (
        "demo-sae-tokens-below-batch",
        "demo --model {gpt2} --out {out} --quick --sae-tokens 100",
        E,
        r"at least one training batch \(512\), got 100",
        "out",
    ),  # fmt: skip
    (
        "demo-hook-unknown",
        "demo --model {gpt2} --out {out} --hook blocks.1.hook_nope",
        E,
        r"unknown hook point",
        "out",
    ),  # fmt: skip
    ("no-command", "", E, r"required: command", None),
    ("out-empty", EXTRACT.replace("{out}", "''"), E, r"--out is empty", None),
    (
        "model-fake-gguf",
        EXTRACT.replace("{gpt2}", "{afile}.gguf"),
        E,
        r"not found|not a GGUF file",
        "out",
    ),  # fmt: skip
    (
        "train-tokens-gt-rows",
        TRAIN_ACTS.replace("--tokens 512", "--tokens 999999") + " --activations {acts}",
        E,
        r"hold at most 512 rows",
        "out",
    ),  # fmt: skip
    (
        "mlp-layer-range",
        "mlp-analysis --model {gpt2} --out {out} --layers 99",
        E,
        r"layer 99 does not exist",
        "out",
    ),  # fmt: skip
    (
        "features-topk-huge",
        FEAT + " --sae {sae} --top-k 100000000",
        E,
        r"top_k must be at most",
        "out",
    ),  # fmt: skip
]


def _argv(template: str, env: dict, out: Path) -> list[str]:
    import shlex

    values = {k: v for k, v in env.items() if isinstance(v, str)}
    return shlex.split(template.format(**values, out=str(out)))


@pytest.mark.parametrize(
    "template,code,pattern,keep", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cli_bad_input(env, tmp_path, capsys, template, code, pattern, keep):
    import re

    out = tmp_path / "out"
    watched = out if keep == "out" else Path(env[keep]) if keep else None
    before = _snapshot(watched) if watched is not None else None
    capsys.readouterr()
    rc = main(_argv(template, env, out))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith("mlx-interp"), lines[0]
    if keep == "out":
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    elif watched is not None:
        assert _snapshot(watched) == before


def test_catalogue_size():
    assert len(CASES) + len(API_CASES) >= 80


# ------------------------------------------------------------------ the API catalogue
def _api_cases():
    from mlx_interp.features.stats import StatsConfig
    from mlx_interp.sae.config import SAEConfig
    from mlx_interp.sae.training import TrainConfig

    long_text = "the quick brown fox " * 200  # > n_ctx = 128 tokens

    return [
        (
            "model-text-too-long",
            lambda m: m(long_text),
            r"more than the model's context length n_ctx=128",
        ),  # fmt: skip
        ("run-with-hooks-too-long", lambda m: m.run_with_hooks(long_text), r"n_ctx=128"),
        ("run-with-cache-too-long", lambda m: m.run_with_cache([long_text, "a"]), r"n_ctx=128"),
        ("tokens-too-long", lambda m: m(np.zeros((1, 129), np.int32)), r"129 tokens.*n_ctx=128"),
        ("generate-too-long", lambda m: m.generate(long_text), r"n_ctx=128"),
        (
            "generate-fills-context",
            lambda m: m.generate(np.zeros((1, 120), np.int32), max_new_tokens=20),
            r"plus max_new_tokens=20 exceed",
        ),  # fmt: skip
        (
            "generate-neg-tokens",
            lambda m: m.generate("hi", max_new_tokens=-1),
            r"max_new_tokens must be",
        ),  # fmt: skip
        (
            "generate-temp-nan",
            lambda m: m.generate("hi", temperature=math.nan),
            r"temperature must be",
        ),  # fmt: skip
        ("token-id-range", lambda m: m(np.array([[1, 600]])), r"outside the vocabulary"),
        (
            "iter-no-documents",
            lambda m: list(
                __import__("mlx_interp.activations", fromlist=["x"]).iter_activations(m, [HOOK], [])
            ),
            r"the data holds no text",
        ),  # fmt: skip
        (
            "sae-nan-weights",
            lambda m: __import__("mlx_interp.sae", fromlist=["x"]).SAE(
                SAEConfig(d_in=2, d_sae=2, architecture="standard"),
                {
                    "W_enc": np.full((2, 2), np.nan, np.float32),
                    "b_enc": np.zeros(2, np.float32),
                    "W_dec": np.zeros((2, 2), np.float32),
                    "b_dec": np.zeros(2, np.float32),
                },
            ),
            r"W_enc holds NaN",
        ),  # fmt: skip
        (
            "hook-returns-nan",
            lambda m: m.run_with_hooks(
                "hello world", fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x * np.nan)]
            ),
            r"blocks.0.hook_mlp_out \(layer 0, batch row 0, position 0\) is the first hook point holding NaN",
        ),  # fmt: skip
        ("saeconfig-d-in-0", lambda m: SAEConfig(d_in=0, d_sae=4), r"d_in must be a positive"),
        (
            "saeconfig-d-sae-float",
            lambda m: SAEConfig(d_in=4, d_sae=2.5),
            r"d_sae must be an integer",
        ),  # fmt: skip
        ("saeconfig-k-big", lambda m: SAEConfig(d_in=4, d_sae=8, k=9), r"k=9 must be between"),
        (
            "saeconfig-arch",
            lambda m: SAEConfig(d_in=4, d_sae=8, architecture="relu"),
            r"unknown SAE architecture",
        ),  # fmt: skip
        (
            "saeconfig-threshold-nan",
            lambda m: SAEConfig(d_in=4, d_sae=8, architecture="batchtopk", k=2, threshold=math.nan),
            r"threshold must be a finite",
        ),  # fmt: skip
        ("trainconfig-lr-nan", lambda m: TrainConfig(lr=math.nan), r"lr must be a finite"),
        (
            "trainconfig-betas",
            lambda m: TrainConfig(adam_betas=(0.9, 1.0)),
            r"adam_betas must be in",
        ),  # fmt: skip
        ("trainconfig-eps", lambda m: TrainConfig(adam_eps=0), r"adam_eps must be > 0"),
        (
            "trainconfig-bool",
            lambda m: TrainConfig(batch_size=True),
            r"batch_size must be an integer",
        ),  # fmt: skip
        (
            "trainconfig-b-dec",
            lambda m: TrainConfig(b_dec_init="median"),
            r"b_dec_init must be one of",
        ),  # fmt: skip
        (
            "trainconfig-bandwidth",
            lambda m: TrainConfig(jumprelu_bandwidth=0),
            r"jumprelu_bandwidth must be > 0",
        ),  # fmt: skip
        ("statsconfig-topk", lambda m: StatsConfig(top_k=0), r"top_k must be a positive"),
        (
            "statsconfig-context",
            lambda m: StatsConfig(context_left=-1),
            r"context_left must be an integer >= 0",
        ),  # fmt: skip
    ]


API_CASES = [c[0] for c in _api_cases()]


@pytest.mark.parametrize("case", API_CASES)
def test_api_bad_input(env, case):
    import re

    fn, pattern = next((f, p) for name, f, p in _api_cases() if name == case)
    with pytest.raises(ValueError) as e:
        fn(env["model_obj"])
    msg = str(e.value)
    assert "\n" not in msg and re.search(pattern, msg), msg


# ---------------------------------------------------------------- behaviours, not messages
def test_sae_encode_propagates_nan(env):
    import mlx.core as mx

    from mlx_interp.sae import SAE

    sae = SAE.load(env["sae"])
    x = np.ones((3, sae.cfg.d_in), np.float32)
    x[1, 0] = np.nan
    x[2, 3] = np.inf
    f, x_hat = sae(x)
    bad_f = np.isnan(np.asarray(f)).any(axis=1)
    bad_x = np.isnan(np.asarray(x_hat)).any(axis=1)
    assert bad_f.tolist() == [False, True, True] and bad_x.tolist() == [False, True, True]
    values, _ = sae.encode_sparse(mx.array(x))
    assert np.isnan(np.asarray(values)).any(axis=1).tolist() == [False, True, True]


def test_write_json_is_strict(tmp_path):
    from mlx_interp.io import write_json

    with pytest.raises(ValueError, match=r"metrics.ev is not a finite number"):
        write_json(tmp_path / "m.json", {"metrics": {"ev": float("nan")}})
    assert list(tmp_path.iterdir()) == []


def test_files_honour_the_umask(tmp_path):
    from mlx_interp.io import write_folder_atomic, write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
        folder = write_folder_atomic(tmp_path / "f", lambda t: (t / "w").write_text("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "w").stat().st_mode & 0o777 == 0o644


def test_stray_temporaries_are_cleaned_and_a_cut_swap_is_undone(tmp_path):
    from mlx_interp.io import output_folder

    out = tmp_path / "run"
    (out / ".checkpoint.tmp-abc").mkdir(parents=True)
    (out / ".checkpoint.tmp-abc" / "x.safetensors").write_bytes(b"0" * 100)
    (out / ".metrics.json.tmp-123.json").write_text("{")
    # killed between parking the old checkpoint and moving the new one in
    (out / ".checkpoint.old-xyz" / "x").mkdir(parents=True)
    (out / ".checkpoint.old-xyz" / "x" / "trainer.json").write_text("{}")
    (out / "keep.txt").write_text("mine")
    with output_folder(out):
        names = sorted(p.name for p in out.iterdir())
    assert names == [".mlx-interp.lock", "checkpoint", "keep.txt"]
    assert (out / "checkpoint" / "trainer.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "keep.txt"]


def test_a_second_writer_is_refused_with_the_pid(env, tmp_path, capsys):
    out = tmp_path / "locked"
    holder = textwrap.dedent(f"""
        import sys, time
        from mlx_interp.io import output_folder
        with output_folder({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        rc = main(_argv(EXTRACT, env, out))
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"PID {proc.pid}" in err and "\n" not in err
        assert sorted(p.name for p in out.iterdir()) == [".mlx-interp.lock"]
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the lock of the killed holder: the folder is usable again
    from mlx_interp.io import output_folder

    with output_folder(out):
        pass


def test_an_early_failure_removes_the_parents_it_created(env, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "c"
    rc = main(_argv(EXTRACT + " --positions id:99999", env, out))
    assert rc == 2 and not (tmp_path / "a").exists()


def test_eval_sae_force_uses_an_sae_of_another_model(env, tmp_path, capsys):
    rc = main(_argv(EVAL + " --sae {sae_other} --force", env, tmp_path / "ev"))
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert math.isfinite(m["explained_variance"])


def test_parity_against_finds_the_perturbed_layer(env, tmp_path, capsys):
    """Fault injection: one weight tensor with 1e-3 relative noise is found at its layer."""
    from safetensors.numpy import load_file, save_file

    twin = tmp_path / "twin"
    shutil.copytree(env["gpt2"], twin)
    w = load_file(str(twin / "model.safetensors"))
    name = "transformer.h.1.mlp.c_proj.weight"
    rng = np.random.default_rng(0)
    w[name] = (w[name] * (1 + 1e-3 * rng.standard_normal(w[name].shape))).astype(np.float32)
    save_file(w, str(twin / "model.safetensors"))
    capsys.readouterr()
    rc = main(["parity", "--model", env["gpt2"], "--against", str(twin), "--text", "hello world",
               "--failures-only"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1 and "first divergence at blocks.1.hook_mlp_out" in text
    assert "MLX vs " + str(twin) in text
    # identical checkpoints: exact agreement
    rc = main(["parity", "--model", env["gpt2"], "--against", env["gpt2"], "--text", "hello"])
    assert rc == 0 and "PASS" in capsys.readouterr().out
