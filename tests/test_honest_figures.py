"""Benchmark figures carry their load record; a contended or noisy figure is marked
unreliable and the report never states it as a finding (no timing is asserted)."""

from __future__ import annotations

import json

from benchmarks.common import fmt_ratio, judge, note, ratio, time_interleaved, time_it
from mlx_interp.report import build_report


def test_timings_record_load_and_cpu_time():
    t = time_it(lambda: sum(range(1000)), repeats=3)
    d = t.as_dict()
    assert len(d["load_avg"]) == 2 and d["cpu_s"] >= 0 and "reliable" in d
    both = time_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, rounds=3)
    assert set(both) == {"a", "b"} and both["a"].load_avg == both["b"].load_avg


def test_judge_marks_spread_and_contention():
    assert judge(0.05, 0.0, [0.1, 0.1]) == ""
    assert "spread" in judge(0.6, 0.0, [0.1, 0.1])
    assert "other processes" in judge(0.05, 1.5, [3.0, 3.0])
    assert "load average" in judge(0.05, None, [99.0, 99.0])


def test_a_ratio_is_only_as_reliable_as_both_figures():
    quiet = {"median_s": 1.0, "reliable": True, "unreliable": "", "load_avg": [0.1, 0.1]}
    busy = {"median_s": 4.0, "reliable": False, "unreliable": "spread 80% > 25%",
            "load_avg": [9.0, 9.0]}  # fmt: skip
    r = ratio(quiet, busy)
    assert r["ratio"] == 4.0 and not r["reliable"] and "spread" in fmt_ratio(r)
    assert ratio(quiet, quiet)["reliable"] and fmt_ratio(ratio(quiet, quiet)) == "1.00x"
    assert not ratio(quiet, {"median_s": 2.0})["reliable"]  # no load record
    assert "UNRELIABLE" in note(busy) and "UNRELIABLE" not in note(quiet)


def _bench_run(tmp_path, reliable: bool):
    run = tmp_path / ("quiet" if reliable else "busy")
    (run / "bench").mkdir(parents=True)
    extra = {"reliable": reliable, "unreliable": "" if reliable else "other processes used 5.0 cores",
             "load_avg": [0.2, 0.3] if reliable else [12.9, 14.0]}  # fmt: skip
    fwd = [
        {"backend": "mlx", "dtype": "float32", "mode": "full pass", "device": "cpu",
         "tokens_per_s": 1380.0, **extra},
        {"backend": "torch", "dtype": "float32", "mode": "full pass", "device": "cpu",
         "tokens_per_s": 100.0, **extra},
    ]  # fmt: skip
    (run / "bench" / "m.json").write_text(json.dumps({"forward": fwd}))
    (run / "bench" / "m.md").write_text("# Performance\n\n(table)\n")
    return run


def test_report_never_states_a_contended_ratio(tmp_path):
    text = build_report(_bench_run(tmp_path, False), pdf=False).read_text()
    conclusions = text.split("## Conclusions", 1)[1]
    assert "13.8x" in text and "not a finding" in text  # shown, with the reason
    assert "13.8x" not in conclusions and "as many tokens" not in conclusions
    text = build_report(_bench_run(tmp_path, True), pdf=False).read_text()
    assert "13.8x as many tokens per second" in text.split("## Conclusions", 1)[1]


def test_report_does_not_trust_figures_without_a_load_record(tmp_path):
    run = _bench_run(tmp_path, True)
    data = json.loads((run / "bench" / "m.json").read_text())
    for row in data["forward"]:
        del row["reliable"], row["load_avg"]
    (run / "bench" / "m.json").write_text(json.dumps(data))
    text = build_report(run, pdf=False).read_text()
    assert "as many tokens" not in text.split("## Conclusions", 1)[1]
