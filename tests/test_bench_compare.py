"""The comparison with SAELens / transformers runs on tiny sizes and writes its tables
(no speed is asserted); a contender that is not installed is a note, not a failure."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.bench_compare import format_tables, main, sae_training


def test_sae_comparison_tiny_interleaved():
    res = sae_training([64], batch=32, k=4, rounds=1)
    names = {r["contender"] for r in res["rows"]}
    assert {"mlx-interp (MLX)", "mlx-interp (torch)"} <= names
    if importlib.util.find_spec("sae_lens") is not None:
        assert "SAELens" in names, res["notes"]
    else:
        assert any("SAELens skipped" in n for n in res["notes"])
    for r in res["rows"]:
        assert r["tokens_per_s"] > 0 and len(r["load_avg"]) == 2 and "reliable" in r
        if r["contender"] != "mlx-interp (MLX)":
            assert set(r["mlx_speedup"]) == {"ratio", "reliable", "unreliable"}
    text = format_tables({"sae": res})
    assert "SAE training step" in text and "load" in text


def test_sae_comparison_with_dead_latents_runs_auxk():
    res = sae_training([64], batch=32, k=4, rounds=1, dead_frac=0.25)
    assert res["dead_fraction"] == 0.25 and all(r["dead_fraction"] > 0 for r in res["rows"])
    assert "of the latents dead (AuxK on)" in format_tables({"sae": res})


@pytest.mark.parametrize("value", ["-0.1", "1", "nan"])
def test_dead_fraction_outside_0_1_is_one_line_error(value, tmp_path, capsys):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        main(["--only", "sae", "--dead", value, "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--dead must be a fraction in [0, 1)" in err
