"""infini_jax.train_report and scripts/training_runs.py on run directories written here: training-log figures,
exact match pooled over evaluations, the target check, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from infini_jax.train_report import (
    DEMO_TARGET,
    cut_key_rate,
    exact_match_by_length,
    parse_target,
    probe_rates,
    summarize_runs,
    target_shortfalls,
    training_log_summary,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import training_runs  # noqa: E402  (scripts/ is not a package)


def _write_run(workdir, far_by_step, exit_step, cut_last_line=False):
    """A metrics.jsonl as the trainer writes it: a stage event at 0, one record per 25 steps, a stage exit."""
    workdir.mkdir(parents=True)
    lines = [{"event": "stage", "step": 0, "to": "memory_first", "progress": 0.0}]
    for step, far in far_by_step:
        lines.append({"step": step, "stage": "x", "loss": 1.0, "far_accuracy": far})
        if step == exit_step:
            lines.append({"event": "stage", "from": "memory_first", "to": "virtual_8k", "step": step,
                          "progress": 0.5, "far_accuracy": far, "reason": "gate passed"})
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if cut_last_line:
        text += '{"step": 99999, "loss": 1.0, "far_acc'  # a crash mid-line: skipped
    (workdir / "metrics.jsonl").write_text(text)


def _write_results(directory, length, exact, total):
    directory.mkdir(parents=True)
    rows = [{"id": f"r{length}-{i}", "context_length": length, "exact": i < exact, "answer": "12345",
             "generation": "12345." if i < exact else "92345."} for i in range(total)]  # misses: the first digit
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_log_summary_reads_the_figures_of_a_metrics_file(tmp_path):
    far = [(25 * i, a) for i, a in enumerate([0.0, 0.2, 0.6, 0.95, 0.8, 0.9, None, 1.0, 0.98], start=1)]
    _write_run(tmp_path / "run", far, exit_step=100, cut_last_line=True)
    s = training_log_summary(tmp_path / "run" / "metrics.jsonl", closing_window_steps=75, stage_window_steps=50)
    assert s["steps"] == 225
    assert s["stage_exits"] == [{"from": "memory_first", "to": "virtual_8k", "step": 100, "progress": 0.5,
                                 "far_accuracy": 0.95, "reason": "gate passed"}]
    assert s["first_step_far_accuracy_ge_0.5"] == 75 and s["first_step_far_accuracy_ge_0.9"] == 100
    assert s["stage_0_far_accuracy_last_50_steps"] == pytest.approx((0.6 + 0.95) / 2)  # steps 75, 100
    assert s["far_accuracy_last_75_steps"] == pytest.approx((1.0 + 0.98) / 2)  # 175 has no far needle
    _write_run(tmp_path / "text", [], exit_step=0)
    with pytest.raises(ValueError, match="no logged training interval"):
        training_log_summary(tmp_path / "text" / "metrics.jsonl")


def test_exact_match_is_pooled_over_evaluations_and_checked_against_the_target(tmp_path):
    _write_results(tmp_path / "a", 32768, 300, 308)
    _write_results(tmp_path / "b", 16777216, 21, 22)
    _write_results(tmp_path / "c", 16777216, 20, 22)
    pooled = exact_match_by_length([tmp_path / "a", tmp_path / "b", tmp_path / "c" / "results.jsonl"])
    assert pooled == {32768: (300, 308), 16777216: (41, 44)}
    assert target_shortfalls(pooled, DEMO_TARGET) == [
        "32K: 300/308 = 97.4% < 99%", "128K: not evaluated", "1M: not evaluated", "16M: 41/44 = 93.2% < 95%"]
    assert target_shortfalls({32768: (305, 308)}, {32768: 0.99}) == []  # 305 >= 0.99 x 308 = 304.9
    assert target_shortfalls({32768: (304, 308)}, {32768: 0.99}) == ["32K: 304/308 = 98.7% < 99%"]
    assert target_shortfalls({16777216: (41, 44)}, {16777216: 0.95}) == ["16M: 41/44 = 93.2% < 95%"]
    assert target_shortfalls({32768: (306, 308)}, {32768: 0.995}) == ["32K: 306/308 = 99.4% < 99.5%"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.jsonl").write_text(json.dumps({"id": "x", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="lacks context_length"):
        exact_match_by_length([tmp_path / "d"])


def test_parse_target_refuses_bad_entries():
    assert parse_target("32768:0.99, 16777216:0.95") == {32768: 0.99, 16777216: 0.95}
    for bad in ("32768", "32K:0.99", "32768:99", "32768:x", ""):
        with pytest.raises(ValueError, match="target"):
            parse_target(bad)


def test_the_script_tables_the_runs_and_counts_those_meeting_the_target(tmp_path, capsys):
    far = [(25 * i, 0.99) for i in range(1, 9)]
    _write_run(tmp_path / "good", far, exit_step=100)
    _write_results(tmp_path / "good" / "eval", 32768, 308, 308)  # the training job's own eval/
    _write_results(tmp_path / "good_16M" / "eval", 16777216, 22, 22)  # an eval_only workdir
    _write_run(tmp_path / "bad", far, exit_step=100)
    _write_results(tmp_path / "bad_eval" / "eval", 32768, 290, 308)
    out_json = tmp_path / "summary.json"
    good = f"good={tmp_path / 'good'},{tmp_path / 'good_16M'},{tmp_path / 'good' / 'eval' / 'results.jsonl'}"
    summary = training_runs.main([good, f"bad={tmp_path / 'bad'},{tmp_path / 'bad_eval'}",
                                  "--target", "32768:0.99,16777216:0.95", "--json", str(out_json)])
    printed = capsys.readouterr().out
    # The workdir's own eval/ is pooled with the extra evaluation, and a file given twice counts once.
    good_row = "| good | 200 | 100 (0.990) | 25 | 0.990 | 0.990 | 100.0% (308/308) | 100.0% (22/22) | none | met |"
    assert good_row in printed
    misses = "| 94.2% (290/308) | - | 18 (one_digit 18; first wrong digit 1: 18) | missed: 32K: 290/308"
    assert misses in printed  # the inexact answers by kind
    assert "1 of 2 runs meet the target (32K >= 99%, 16M >= 95%)." in printed
    assert json.loads(out_json.read_text()) == summary and summary["runs_meeting_target"] == 1
    # A probe.json (the training job's, or an eval_only run's) adds a column.
    probe = {"by_virtual_length": {"128": {"exact_match": 0.852, "num_samples": 88}},
             "cut_key": {"exact_match": 0.6167, "num_samples": 120}}
    (tmp_path / "bad_eval" / "probe.json").write_text(json.dumps(probe))
    training_runs.main([good, f"bad={tmp_path / 'bad'},{tmp_path / 'bad_eval'}"])
    printed = capsys.readouterr().out
    assert "| closing | probe | 32K |" in printed
    assert "| 0.990 | r 128: 0.852, cut key: 0.617 | 94.2% (290/308) |" in printed
    assert "| 0.990 | - | 100.0% (308/308) |" in printed  # good has none
    no_places = {"by_virtual_length": {"128": {"exact_match": 1.0, "num_samples": 88}},
                 "cut_key": {"exact_match": None, "num_samples": 0}}  # a length without cut-key places
    (tmp_path / "good_16M" / "probe.json").write_text(json.dumps(no_places))
    assert probe_rates([tmp_path / "good_16M"]) == {"128": 1.0} and cut_key_rate([tmp_path / "good_16M"]) is None
    # The first probe.json that measured cut keys gives the figure, even after one that did not.
    assert cut_key_rate([tmp_path / "good_16M", tmp_path / "bad_eval"]) == 0.6167
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        training_runs.main([f"x={tmp_path / 'bad_eval'}"])
    with pytest.raises(SystemExit, match="Bad run"):
        training_runs.main([str(tmp_path / "good")])
    with pytest.raises(SystemExit, match="no evaluation results there"):
        training_runs.main([f"good={tmp_path / 'good'},{tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="names must differ"):
        training_runs.main([f"a={tmp_path / 'good'}", f"a={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit, match="Bad target entry"):
        training_runs.main([f"a={tmp_path / 'good'}", "--target", "32K:0.99"])
    assert summarize_runs([("none", tmp_path / "good", [])], {32768: 0.99})["runs"][0]["shortfalls"] == [
        "32K: not evaluated"]
