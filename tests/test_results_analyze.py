"""Resumable results (infini_jax.results) and their analysis (infini_jax.analyze)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from infini_jax.analyze import categorize, consistency, format_report, plot_heatmap, summarize, write_summary
from infini_jax.results import RECORD_FIELDS, ResultsWriter, read_results, score, segment_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(i, *, ctx=1024, depth=0, answer="1234", generation=" 1234.", idx=None, seg_len=1024, **kw):
    c, s = score(answer, generation)
    ns, n = segment_info(idx, ctx, seg_len) if idx is not None else (None, None)
    rec = dict(
        id=f"r{ctx}-{depth}-{i}",
        dataset="test",
        context_length=ctx,
        num_tokens=ctx,
        depth_percent=depth,
        needle_token_index=idx,
        needle_segment=ns,
        num_segments=n,
        answer=answer,
        generation=generation,
        correct=c,
        correct_strict=s,
        seconds=0.5,
    )
    rec.update(kw)
    return rec


def _single_segment_records():
    """ctx 1024: depth 0 -> 3/4 (one of them not strict), depth 50 -> 2/4, depth 100 -> 4/4."""
    ok, miss, loose = " 1234. The", " 99.", " 12345"
    gens = {0: [ok, ok, loose, miss], 50: [ok, miss, ok, miss], 100: [ok, ok, ok, ok]}
    return [_record(i, depth=d, generation=g) for d, gs in gens.items() for i, g in enumerate(gs)]


def _four_segment_records():
    """ctx 4096, segments of 1024: the needle 3, 1 and 0 segments back at depths 0, 50, 100."""
    out = []
    for depth, idx, gens in (
        (0, 100, [" 5.", " 6."]),
        (50, 2100, [" 1234", " 7"]),
        (100, 4000, [" 1234"] * 2),
    ):
        out += [_record(i, ctx=4096, depth=depth, idx=idx, generation=g) for i, g in enumerate(gens)]
    return out


# ----------------------------------------------------------------------------- results


def test_score():
    assert score("1234", "The pass key is 1234.") == (True, True)
    assert score("1234", " 1234") == (True, True)
    assert score("1234", "12345") == (True, False)
    assert score("1234", "The pass key is 99. Or 1234") == (True, False)
    assert score("1234", "123") == (False, False)
    assert score("1234", "") == (False, False)
    assert score("", "1234") == (False, False)
    assert score("abc", "abc, I think") == (True, True)


def test_segment_info():
    assert segment_info(0, 1024, 1024) == (0, 1)
    assert segment_info(1024, 1025, 1024) == (1, 2)
    assert segment_info(None, 4096, 1024) == (None, 4)
    assert segment_info(5, 4096, None) == (None, None)


def test_writer_resumes_after_crash(tmp_path):
    w = ResultsWriter(tmp_path / "run")
    assert w.path == str(tmp_path / "run" / "results.jsonl") and w.done_ids() == set()
    for i in range(3):
        w.write(_record(i))
    assert set(RECORD_FIELDS) <= set(read_results(tmp_path / "run")[0])
    with pytest.raises(ValueError, match="already has a result for id 'r1024-0-1'"):
        w.write(_record(1))
    # Simulate a crash in the middle of writing the 4th line.
    with open(w.path, "a") as f:
        f.write('{"id": "r1024-0-3", "answ')
    assert len(read_results(w.path)) == 3  # readers skip the cut line without touching the file
    w2 = ResultsWriter(w.path)
    assert w2.done_ids() == {"r1024-0-0", "r1024-0-1", "r1024-0-2"}
    with open(w.path) as f:
        assert f.read().endswith("}\n")  # the cut line is gone
    for i in range(3, 5):
        if str(f"r1024-0-{i}") not in w2.done_ids():
            w2.write(_record(i))
    recs = read_results(tmp_path / "run")
    assert [r["id"] for r in recs] == [f"r1024-0-{i}" for i in range(5)]
    # A complete last line whose newline was lost is kept, and the next record goes on its own line.
    with open(w.path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        f.truncate()
    w3 = ResultsWriter(tmp_path / "run")
    assert len(w3.done_ids()) == 5
    w3.write(_record(5))
    assert len(read_results([tmp_path / "run", tmp_path / "run"])) == 12
    with pytest.raises(ValueError, match="No results file"):
        read_results(tmp_path / "nothing")


def test_writer_numpy_values_and_bad_middle_line(tmp_path):
    w = ResultsWriter(tmp_path / "x.jsonl")
    w.write(_record(0, context_length=np.int64(1024), seconds=np.float32(0.25), correct=np.bool_(True)))
    rec = read_results(tmp_path / "x.jsonl")[0]
    assert rec["context_length"] == 1024 and rec["correct"] is True
    with open(w.path, "a") as f:
        f.write("not json\n" + json.dumps(_record(1)) + "\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        ResultsWriter(w.path)


# ----------------------------------------------------------------------------- analysis


def test_summary_numbers_by_hand():
    s = summarize(_single_segment_records(), segment_length=1024)
    assert s["context_length"] == 1024 and s["total_samples"] == 12 and s["total_correct"] == 9
    by_depth = {d["depth_percent"]: d for d in s["results_by_depth"]}
    assert by_depth[0] == dict(
        depth_percent=0, accuracy=75.0, num_samples=4, correct=3, strict_accuracy=50.0, correct_strict=2
    )
    assert by_depth[50]["accuracy"] == 50.0 and by_depth[100]["accuracy"] == 100.0
    st = s["summary_stats"]
    assert st["average_accuracy"] == pytest.approx(75.0)
    assert st["std_dev"] == pytest.approx(math.sqrt((0 + 25**2 + 25**2) / 3), abs=1e-3)
    assert (st["min_accuracy"], st["min_depth"], st["max_accuracy"], st["max_depth"]) == (
        50.0,
        50,
        100.0,
        100,
    )
    assert s["overall_accuracy"] == 75.0 and s["overall_strict_accuracy"] == pytest.approx(800 / 12, abs=1e-3)
    perf = s["performance"]
    assert (perf["category"], perf["status"], perf["consistency"]) == ("FAIR", "WARN", "INCONSISTENT")
    assert perf["segment_count"] == 1 and perf["expected_degradation"] == 0
    assert s["misses"]["num_misses"] == 3 and s["misses"]["by_kind"]["wrong_length"] == 3  # " 99." for 1234
    assert s["misses"]["by_first_wrong_digit"] == {"1": 3}
    report = format_report(s, "somewhere/summary.json")
    assert "Misses: 3 (wrong_length 3; first wrong digit 1: 3)" in report
    older = {k: v for k, v in s.items() if k != "misses"}  # a summary.json written before the misses were counted
    assert "Misses" not in format_report(older) and "Average Accuracy: 75.00%" in format_report(older)
    assert "PASSKEY RETRIEVAL ANALYSIS - INFINI-ATTENTION MODEL" in report
    assert "Depth   0%: ████████████████████████          75.00% (3/4)" in report
    assert "Average Accuracy: 75.00%" in report and "⚠ FAIR" in report
    assert report.endswith("Detailed summary saved to: somewhere/summary.json")


def test_segments_back_and_within_cross():
    s = summarize(_four_segment_records())
    back = {b["segments_back"]: (b["correct"], b["num_samples"]) for b in s["results_by_segments_back"]}
    assert back == {0: (2, 2), 1: (1, 2), 3: (0, 2)}
    seg = s["segment_analysis"]
    assert seg["method"] == "needle_segment" and seg["num_segments"] == 4
    assert (seg["within_segment_avg"], seg["within_segment_count"]) == (100.0, 2)
    assert (seg["cross_segment_avg"], seg["cross_segment_count"]) == (25.0, 4)
    perf = s["performance"]  # average 50 with 4 segments: thresholds 75/65/55/45
    assert (perf["category"], perf["expected_degradation"], perf["segment_count"]) == ("FAIR", 20, 4)
    # A different segment length given on the command line recomputes the segments from the positions.
    s512 = summarize(_four_segment_records(), segment_length=512)
    assert s512["performance"]["segment_count"] == 8
    assert {b["segments_back"] for b in s512["results_by_segments_back"]} == {0, 3, 7}
    # Without any segment information: the fork's ctx / 1024 and its depth heuristic.
    bare = [
        {k: v for k, v in r.items() if k not in ("needle_segment", "num_segments", "needle_token_index")}
        for r in _four_segment_records()
    ]
    sb = summarize(bare)
    assert sb["performance"]["segment_count"] == 4 and sb["segment_analysis"]["method"] == "depth_heuristic"
    assert sb["results_by_segments_back"] == []


def test_mixed_context_lengths_and_plain_types(tmp_path):
    recs = _single_segment_records() + _four_segment_records()
    # numpy types as an evaluator might leave them
    recs[0] = dict(
        recs[0], context_length=np.int64(1024), depth_percent=np.float64(0.0), correct=np.bool_(True)
    )
    s = summarize(recs, model_name="300M Infini-Attention")
    assert s["context_lengths"] == [1024, 4096] and s["context_length"] == 4096
    per = {c["context_length"]: c for c in s["results_by_context_length"]}
    assert (per[1024]["accuracy"], per[1024]["num_segments"], per[1024]["category"]) == (75.0, 1, "FAIR")
    assert (per[4096]["accuracy"], per[4096]["num_segments"]) == (50.0, 4)
    assert s["performance"]["segment_count"] == 4  # the largest context length decides
    heat = {
        (c["context_length"], c["depth_percent"]): c["accuracy"]
        for c in s["results_by_depth_and_context_length"]
    }
    assert heat == {
        (1024, 0): 75.0,
        (1024, 50): 50.0,
        (1024, 100): 100.0,
        (4096, 0): 0.0,
        (4096, 50): 50.0,
        (4096, 100): 100.0,
    }

    def walk(x):
        assert type(x) in (dict, list, str, int, float, bool, type(None)), (type(x), x)
        for v in x.values() if isinstance(x, dict) else x if isinstance(x, list) else []:
            walk(v)

    walk(s)
    assert json.loads(json.dumps(s)) == s
    png = plot_heatmap(recs, tmp_path / "heatmap.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000


def test_unknown_depths_group_together(tmp_path):
    recs = _single_segment_records() + [_record(i, depth=None) for i in range(2)]
    recs.append(_record(9, depth=float("nan"), generation=" 0"))
    s = summarize(recs)
    assert s["results_by_depth"][-1] == dict(
        depth_percent=None,
        accuracy=pytest.approx(200 / 3, abs=1e-3),
        num_samples=3,
        correct=2,
        strict_accuracy=pytest.approx(200 / 3, abs=1e-3),
        correct_strict=2,
    )
    assert "Depth n/a%" in format_report(s)
    plot_heatmap(s, tmp_path / "h.png")


def test_categories():
    one = [
        (95, "EXCELLENT"),
        (94.9, "VERY_GOOD"),
        (90, "VERY_GOOD"),
        (80, "GOOD"),
        (70, "FAIR"),
        (69.9, "POOR"),
    ]
    for acc, cat in one:
        assert categorize(acc, 1)["category"] == cat, acc
    two = [
        (85, "EXCELLENT"),
        (84.9, "VERY_GOOD"),
        (75, "VERY_GOOD"),
        (65, "GOOD"),
        (55, "FAIR"),
        (54.9, "POOR"),
    ]
    for acc, cat in two:
        assert categorize(acc, 2)["category"] == cat, acc
    assert categorize(75, 32)["category"] == "EXCELLENT" and categorize(44.9, 32)["category"] == "POOR"
    assert categorize(44.9, 32)["status"] == "FAIL" and categorize(60, 32)["status"] == "OK"
    assert "32 segments" in categorize(80, 32)["message"]
    assert [consistency(x) for x in (14.9, 15, 24.9, 25)] == [
        "CONSISTENT",
        "INCONSISTENT",
        "INCONSISTENT",
        "VERY_INCONSISTENT",
    ]
    with pytest.raises(ValueError, match="No result records"):
        summarize([])


def test_write_summary_and_cli(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, recs in ((a, _single_segment_records()), (b, _four_segment_records())):
        w = ResultsWriter(d)
        for r in recs:
            w.write(r)
    s = write_summary(a)
    with open(a / "summary.json") as f:
        assert json.load(f) == s
    assert (a / "heatmap.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no results.jsonl"):
        write_summary(tmp_path)

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "infini_jax.analyze", *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli(a, b, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (
        "COMPARISON" in r.stdout and "Average Accuracy: 75.00%" in r.stdout and "Depth   0%" not in r.stdout
    )
    table = r.stdout.split("COMPARISON")[1].splitlines()
    row_a = next(line for line in table if line.split() and line.split()[0].endswith("/a"))
    row_b = next(line for line in table if line.split() and line.split()[0].endswith("/b"))
    assert row_a.split()[1:] == ["1024", "12", "75.00%", "66.67%", "FAIR"]
    assert row_b.split()[1:] == ["4096", "6", "50.00%", "50.00%", "FAIR"]
    assert (b / "summary.json").exists() and (b / "heatmap.png").exists()
    r = cli(a, "--json-only", "--segment_length", "1024")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_samples"] == 12
    r = cli(a, tmp_path / "missing", "-q")
    assert r.returncode != 0 and "results.jsonl" in r.stderr
