"""Several ranks on mx.distributed (2 local ring processes on 127.0.0.1, as MLX's own CI).

Each test runs a small script under ``mlx-interp-launch -n 2 --backend ring`` (mlx.launch
without its busy wait, ``mlx_interp.launch``) and compares with a
one-process run of the same call: the rows must be bit-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_interp import load_model
from mlx_interp.activations import extract, load_extraction
from mlx_interp.distributed import World

try:  # what the mlx.launch script runs; called through this interpreter
    from mlx._distributed_utils import launch as _launch_module  # noqa: F401

    HAVE_LAUNCH = True
except ImportError:
    HAVE_LAUNCH = False
pytestmark = pytest.mark.skipif(not HAVE_LAUNCH, reason="this mlx has no mlx.launch")

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n" * 2,
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Sparse autoencoders turn activations into features that people can read. " * 2,
] * 4


MLX_LAUNCH = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]  # fmt: skip


def launch(
    script: str, tmp_path: Path, n: int = 2, timeout: float = 240, launcher: list | None = None
) -> subprocess.CompletedProcess:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    # mlx.launch, without its busy wait (mlx_interp/launch.py)
    launcher = launcher or [sys.executable, "-m", "mlx_interp.launch"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(
        [*launcher, "-n", str(n), "--backend", "ring", "--", sys.executable, str(path)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
    )  # fmt: skip


EXTRACT = """
import json, sys
import mlx_interp
from mlx_interp import load_model
from mlx_interp.activations import extract
texts = json.loads(open({texts!r}).read())
model = load_model({model!r})
extract(model, {hooks!r}, {out!r}, texts, data_id="t", batch_size=2, context_length=16,
        shard_mb=0.002, exclude_massive=True{extra})
"""


@pytest.mark.parametrize("name", ["llama-gqa-untied"])
def test_two_ranks_extract_bit_identical(checkpoint_dir, tmp_path, name):
    ckpt = str(checkpoint_dir(name))
    hooks = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    texts = tmp_path / "texts.json"
    texts.write_text(__import__("json").dumps(TEXTS))
    one = extract(load_model(ckpt), hooks, tmp_path / "one", TEXTS, data_id="t", batch_size=2,
                  context_length=16, shard_mb=0.002, exclude_massive=True)  # fmt: skip
    out = tmp_path / "two"
    r = launch(
        EXTRACT.format(texts=str(texts), model=ckpt, hooks=hooks, out=str(out), extra=""), tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    meta2, acts2, rows2 = load_extraction(out)
    _, acts1, rows1 = load_extraction(tmp_path / "one")
    assert meta2["world_size"] == 2 and meta2["complete"]
    assert {s["rank"] for s in meta2["shards"]} == {0, 1}
    assert meta2["n_rows"] == one["n_rows"] and meta2["n_excluded"] == one["n_excluded"]
    assert meta2["tokens_done"] == one["tokens_done"]
    for k in rows1:
        np.testing.assert_array_equal(rows2[k], rows1[k])
    for h in hooks:
        np.testing.assert_array_equal(acts2[h], acts1[h])  # bit-identical


def test_two_ranks_resume_after_kill(checkpoint_dir, tmp_path):
    """Rank 1 dies after one shard; the rerun resumes each rank and gives the same rows."""
    ckpt = str(checkpoint_dir("llama-mha-tied"))
    hooks = ["blocks.1.hook_resid_post"]
    texts = tmp_path / "texts.json"
    texts.write_text(__import__("json").dumps(TEXTS))
    out = tmp_path / "two"
    kill = (", _stop_after_shards=(1 if __import__('mlx_interp').distributed.world().rank == 1 "
            "else None)")  # fmt: skip
    r = launch(
        EXTRACT.format(texts=str(texts), model=ckpt, hooks=hooks, out=str(out), extra=kill),
        tmp_path,
    )
    # mlx.launch stops every rank when one fails (its own exit status is 0 all the same)
    assert "rank 1 exited with code 1" in r.stderr
    assert not (out / "metadata.json").exists()
    assert (out / "metadata.rank1.json").exists()
    r = launch(
        EXTRACT.format(texts=str(texts), model=ckpt, hooks=hooks, out=str(out), extra=""), tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    extract(load_model(ckpt), hooks, tmp_path / "one", TEXTS, data_id="t", batch_size=2,
            context_length=16, shard_mb=0.002, exclude_massive=True)  # fmt: skip
    _, a1, r1 = load_extraction(tmp_path / "one")
    _, a2, r2 = load_extraction(out)
    np.testing.assert_array_equal(r2["window_ids"], r1["window_ids"])
    np.testing.assert_array_equal(a2[hooks[0]], a1[hooks[0]])


def test_ranks_with_other_settings_are_refused(checkpoint_dir, tmp_path):
    ckpt = str(checkpoint_dir("llama-mha-tied"))
    texts = tmp_path / "texts.json"
    texts.write_text(__import__("json").dumps(TEXTS))
    script = EXTRACT.format(texts=str(texts), model=ckpt, hooks=["blocks.0.hook_resid_post"],
                            out=str(tmp_path / "x"), extra="").replace(
        "context_length=16", "context_length=16 if __import__('mlx_interp').distributed.world().rank == 0 else 32")  # fmt: skip
    r = launch(script, tmp_path)
    assert "other settings than rank 0" in r.stderr + r.stdout
    assert not (tmp_path / "x" / "metadata.json").exists()


def test_world_of_one_is_a_no_op():
    w = World(0, 1)
    w.check_same("x", {"a": 1})
    w.barrier("x")
    assert w.is_main and w.all_sum(3) == 3


TRAIN = """
import numpy as np
import mlx_interp
from mlx_interp.sae.buffer import array_source
from mlx_interp.sae.training import TrainConfig, train_sae
rng = np.random.default_rng(0)
x = (rng.standard_normal((16384, 24)) @ rng.standard_normal((24, 24))).astype(np.float32)
tc = TrainConfig(architecture={arch!r}, d_sae=96, k=6, tokens=50 * 256, batch_size=256,
                 lr=1e-3, lr_warmup_steps=5, init_rows=2048, buffer_rows=4096,
                 dead_tokens=2048, log_every=10, checkpoint_every=20)
train_sae(array_source({{"h": x}}, chunk_rows=1024), ["h"], 24, tc, {out!r}, progress=False,
          stop_after_steps={stop})
"""


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "h" / "sae_weights.safetensors"))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "standard", "matryoshka_batchtopk"])
def test_two_ranks_train_like_one(tmp_path, arch):
    """A 2-rank run equals a 1-rank run with the same global batch: weights within 1e-5."""
    one, two = tmp_path / "one", tmp_path / "two"
    exec(TRAIN.format(arch=arch, out=str(one), stop=None), {})  # one process, in this one
    r = launch(TRAIN.format(arch=arch, out=str(two), stop=None), tmp_path)
    assert r.returncode == 0 and (two / "training.json").exists(), r.stderr[-2000:]
    w1, w2 = _weights(one), _weights(two)
    for k in w1:
        err = np.linalg.norm(w2[k] - w1[k]) / max(np.linalg.norm(w1[k]), 1e-12)
        assert err < 1e-5, (k, err)
    import json

    log1 = json.loads((one / "training.json").read_text())["log"]
    log2 = json.loads((two / "training.json").read_text())["log"]
    for a, b in zip(log1, log2, strict=True):
        for key in ("mse", "l0", "explained_variance", "dead_fraction"):
            assert b["h"][key] == pytest.approx(a["h"][key], rel=1e-4, abs=1e-6), key
        if arch == "matryoshka_batchtopk":  # default widths 6, 24, 96: each prefix alike
            pa, pb = a["h"]["prefix_explained_variance"], b["h"]["prefix_explained_variance"]
            assert len(pa) == 3 and pb == pytest.approx(pa, rel=1e-4, abs=1e-6)


def test_two_ranks_train_resume(tmp_path):
    """Stopped after 20 steps (a checkpoint by rank 0), rerun: the same SAE as one go."""
    two, one = tmp_path / "two", tmp_path / "one"
    r = launch(TRAIN.format(arch="topk", out=str(two), stop=20), tmp_path)
    assert r.returncode == 0 and (two / "checkpoint").is_dir(), r.stderr[-2000:]
    r = launch(TRAIN.format(arch="topk", out=str(two), stop=None), tmp_path)
    assert r.returncode == 0 and (two / "training.json").exists(), r.stderr[-2000:]
    exec(TRAIN.format(arch="topk", out=str(one), stop=None), {})
    w1, w2 = _weights(one), _weights(two)
    for k in w1:
        err = np.linalg.norm(w2[k] - w1[k]) / max(np.linalg.norm(w1[k]), 1e-12)
        assert err < 1e-5, (k, err)


def test_batch_size_not_divisible_is_refused(tmp_path):
    script = TRAIN.format(arch="topk", out=str(tmp_path / "x"), stop=None).replace(
        "batch_size=256", "batch_size=255"
    )
    r = launch(script, tmp_path)
    assert "not divisible by the 2 ranks" in r.stderr
    assert not (tmp_path / "x" / "training.json").exists()


def test_two_ranks_train_from_the_model_like_one(checkpoint_dir, tmp_path):
    """train-sae streaming from the model: the ranks share out the forward passes and
    exchange rows; the SAE equals a one-process run's (weights within 1e-5)."""
    ckpt = str(checkpoint_dir("llama-gqa-untied"))
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(TEXTS * 12))
    args = ["train-sae", "--model", ckpt, "--hook", "blocks.1.hook_resid_post", "--data",
            str(data), "--d-sae", "128", "--k", "8", "--tokens", "2048", "--batch-size", "128",
            "--lr", "1e-3", "--lr-warmup-steps", "2", "--model-batch-size", "4",
            "--context-length", "16", "--buffer-rows", "1024", "--log-every", "4"]  # fmt: skip
    script = "import sys\nfrom mlx_interp.cli import main\nsys.exit(main({args!r}))\n"
    from mlx_interp.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    r = launch(script.format(args=[*args, "--out", str(tmp_path / "two")]), tmp_path)
    hook = "blocks.1.hook_resid_post"
    assert (tmp_path / "two" / hook / "sae_weights.safetensors").exists(), r.stderr[-3000:]
    from safetensors.numpy import load_file

    w1 = load_file(str(tmp_path / "one" / hook / "sae_weights.safetensors"))
    w2 = load_file(str(tmp_path / "two" / hook / "sae_weights.safetensors"))
    for k in w1:
        err = np.linalg.norm(w2[k] - w1[k]) / max(np.linalg.norm(w1[k]), 1e-12)
        assert err < 1e-5, (k, err)


def test_unit_stats_merge_equals_one_pass():
    """Batches split between two accumulators (as two ranks split them), merged: the same
    statistics as one accumulator over every batch."""
    from mlx_interp.features.stats import StatsConfig, UnitStats

    rng = np.random.default_rng(0)
    cfg = StatsConfig(top_k=5, context_left=2, context_right=1)
    one, a, b = (UnitStats(7, 20, cfg) for _ in range(3))
    for i in range(8):
        acts = rng.standard_normal((3, 10, 7)).astype(np.float32)
        toks = rng.integers(0, 20, (3, 10))
        keep = np.ones((3, 10), bool)
        keep[:, 0] = False
        docs = rng.integers(0, 4, (3, 10))
        args = (acts, toks, keep, np.ones_like(keep), docs, 3 * i)
        one.update(*args)
        (a if i % 2 == 0 else b).update(*args)
    a.merge([b.state()])
    x, y = one.arrays(), a.arrays()
    for k in x:  # float64 sums added in another order: equal to rounding
        np.testing.assert_allclose(y[k], x[k], rtol=1e-12, atol=0, err_msg=k)


FEATURES = """
import sys
from mlx_interp.cli import main
sys.exit(main({args!r}))
"""


def test_two_ranks_features_like_one(checkpoint_dir, tmp_path):
    """mlx-interp features on 2 ranks: merged statistics equal a one-process pass."""
    import random

    from safetensors.numpy import load_file

    from mlx_interp.cli import main
    from mlx_interp.sae import SAE, SAEConfig
    from mlx_interp.sae.sae import init_params

    folder = checkpoint_dir("llama-gqa-untied")
    hook = "blocks.1.hook_resid_post"
    cfg = SAEConfig(d_in=64, d_sae=96, architecture="topk", k=6, hook_name=hook,
                    model_name=str(folder))  # fmt: skip
    p = init_params(cfg, seed=0)
    p["b_enc"] = np.random.default_rng(1).normal(0, 0.05, 96).astype(np.float32)
    SAE(cfg, p).save(tmp_path / "sae")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while sparse features read text".split()
    docs = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(60)]
    (tmp_path / "text.txt").write_text("\n\n".join(docs))
    args = ["features", "--model", str(folder), "--sae", str(tmp_path / "sae"), "--data",
            str(tmp_path / "text.txt"), "--split", "all", "--tokens", "1500",
            "--max-features", "2", "--top-k", "6"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    r = launch(FEATURES.format(args=[*args, "--out", str(tmp_path / "two")]), tmp_path)
    assert (tmp_path / "two" / "summary.json").exists(), r.stderr[-3000:]
    for sub in ("sae", "neurons__blocks.1.hook_resid_post"):
        d1, d2 = tmp_path / "one" / "store" / sub, tmp_path / "two" / "store" / sub
        files = sorted(f.name for f in d1.glob("*.safetensors"))
        assert files
        for f in files:
            x, y = load_file(str(d1 / f)), load_file(str(d2 / f))
            for k in x:
                np.testing.assert_allclose(
                    y[k], x[k], rtol=1e-6, atol=1e-6, err_msg=f"{sub}/{f}/{k}"
                )


TRAIN_TRANSCODER = """
import numpy as np
from mlx_interp.sae.buffer import array_source
from mlx_interp.sae.training import TrainConfig, train_sae
rng = np.random.default_rng(0)
x = (rng.standard_normal((8192, 24)) + 0.5).astype(np.float32)
y = (np.maximum(x @ rng.standard_normal((24, 48)) / 5, 0) @ rng.standard_normal((48, 16)) / 7
     + 2.0).astype(np.float32)
tc = TrainConfig(architecture="batchtopk", d_sae=96, k=6, tokens=30 * 256, batch_size=256,
                 lr=1e-3, init_rows=2048, buffer_rows=4096, log_every=10, skip_transcoder=True)
train_sae(array_source({{"x": x, "y": y}}, chunk_rows=1024), [("x", "y")], None, tc, {out!r},
          progress=False)
"""


def test_two_ranks_train_a_skip_transcoder_like_one(tmp_path):
    """A BatchTopK skip transcoder on 2 ranks equals the 1-rank run (weights within 1e-5)."""
    from safetensors.numpy import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    exec(TRAIN_TRANSCODER.format(out=str(one)), {})
    r = launch(TRAIN_TRANSCODER.format(out=str(two)), tmp_path)
    assert r.returncode == 0 and (two / "training.json").exists(), r.stderr[-2000:]
    w1, w2 = (load_file(str(d / "x_to_y" / "sae_weights.safetensors")) for d in (one, two))
    assert "W_skip" in w1
    for k in w1:
        err = np.linalg.norm(w2[k] - w1[k]) / max(np.linalg.norm(w1[k]), 1e-12)
        assert err < 1e-5, (k, err)


def test_launcher_select_waits_instead_of_spinning():
    """mlx-interp-launch's select: a writable pipe (a rank's stdin) does not wake it, output
    to read does at once; mlx.launch's own select returns at once on the writable pipe."""
    import select
    import time

    from mlx_interp.launch import quiet_select

    r, w = os.pipe()
    try:
        assert select.select([r], [w], [], 1.0)[1] == [w]  # why mlx.launch spins
        t = time.perf_counter()
        assert quiet_select([r], [w], [], 0.3) == ([], [], [])
        assert time.perf_counter() - t >= 0.25
        os.write(w, b"x")
        t = time.perf_counter()
        assert quiet_select([r], [w], [], 5.0)[0] == [r]
        assert time.perf_counter() - t < 2.0
    finally:
        os.close(r)
        os.close(w)


def test_ranks_lower_a_spinning_mlx_launch_to_nice_19(tmp_path):
    """Under MLX's own launcher every rank finds it among its ancestors and gives each of its
    threads (it busy-waits in them) the lowest priority."""
    script = """
    import os
    from pathlib import Path
    from mlx_interp.distributed import world, _process
    w = world()
    pid = os.getppid()
    while "_distributed_utils.launch" not in (_process(pid)[0] or ""):
        pid = _process(pid)[1]
    nice = sorted({os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()})
    print("RANK", w.rank, w.size, "NICE", nice)
    """
    if not Path("/proc/self/task").is_dir():
        pytest.skip("reads thread priorities from /proc (Linux)")
    r = launch(script, tmp_path, launcher=MLX_LAUNCH)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("RANK"))
    assert lines == ["RANK 0 2 NICE [19]", "RANK 1 2 NICE [19]"], r.stdout + r.stderr[-2000:]
