"""The GPU benchmark scripts still run (tiny configs on CPU, seconds) and their parsers read what they should.
Timings are not checked here: performance is measured on the GPU by benchmarks/run_all.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))


def _run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_hlo_counts_reads_opcodes_of_tuple_and_array_results():
    from decode_profile import hlo_counts

    text = "\n".join([
        "  %while.1 = (s32[], f32[2]{0}) while(%tuple.3), condition=%cond, body=%body",
        "  %fusion.2 = bf16[4096]{0} fusion(%p0, %p1), kind=kInput, calls=%fused_reduce.2",
        '  %gemm = (bf16[8,16]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm"',
        "  %copy.1 = f32[2]{0} copy(%x)",
        "ROOT %t = (f32[2]{0}) tuple(%copy.1)",
    ])
    counts = hlo_counts(text)
    assert (counts["while"], counts["fusion"], counts["custom-call"], counts["cublas_gemm"], counts["copy"]) == (
        1, 1, 1, 1, 1)


def test_trace_summary_counts_kernels_and_busy_time(tmp_path):
    from decode_profile import trace_summary

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        # Two steps of two kernels; the second pair overlaps by 1 us (busy = union of intervals).
        {"ph": "X", "pid": 1, "tid": 7, "name": "gemm", "ts": 0, "dur": 4},
        {"ph": "X", "pid": 1, "tid": 7, "name": "reduce", "ts": 4, "dur": 2},
        {"ph": "X", "pid": 1, "tid": 7, "name": "gemm", "ts": 10, "dur": 4},
        {"ph": "X", "pid": 1, "tid": 7, "name": "reduce", "ts": 13, "dur": 2},
        {"ph": "X", "pid": 2, "tid": 1, "name": "host op", "ts": 0, "dur": 50},
    ]
    run_dir = tmp_path / "plugins" / "profile" / "run"
    run_dir.mkdir(parents=True)
    with gzip.open(run_dir / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    out = trace_summary(str(tmp_path), n_steps=2)
    (thread,) = out["threads"].values()
    assert thread["events"] == 4 and thread["events_per_step"] == 2
    assert thread["busy_us"] == 11 and thread["span_us"] == 15
    assert out["top_kernels"][0] == {"name": "gemm", "count": 2, "total_us": 8, "us_per_step": 4, "mean_us": 4}


@pytest.mark.parametrize("variants", ["pad1,pad8"])
def test_decode_profile_smoke(tmp_path, variants):
    _run("decode_profile.py", "--smoke", "--configs", "300m", "--variants", variants, "--trace_variants", "none",
         "--n_steps", "4", "--reps", "1", "--out_dir", str(tmp_path))
    results = json.loads((tmp_path / "decode_profile.json").read_text())
    assert [r["variant"] for r in results] == variants.split(",")
    assert all(r.get("error") is None and r["ms_per_token"] is not None and r["hlo"]["while"] >= 1
               for r in results), results


def test_memory_precision_and_prefill_smoke(tmp_path):
    jsonl = tmp_path / "out.jsonl"
    _run("memory_precision.py", "--smoke", "--precisions", "highest,default", "--jsonl", str(jsonl))
    _run("prefill.py", "--smoke", "--configs", "300m", "--lengths", "512,2048", "--sweep_chunks", "none",
         "--memory_precision", "default", "--jsonl", str(jsonl))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    precision = [r for r in records if r["section"] == "memory_precision"]
    assert len(precision) == 1 and precision[0]["precision"] == "default" and precision[0]["status"] == "ok"
    prefill = [r for r in records if r["section"] == "prefill" and "tokens" in r]
    assert [r["tokens"] for r in prefill] == [512, 2048] and all(r["status"] == "ok" for r in prefill)
    assert all(r["memory_precision"] == "default" for r in prefill)


def test_train_throughput_smoke(tmp_path):
    """Every stage shape of the training config timed per variant, from the same weights and batch (equal first
    losses on CPU, where the memory precision changes nothing); cuDNN variants are skipped without a GPU."""
    jsonl = tmp_path / "train.jsonl"
    _run("train_throughput.py", "--smoke", "--variants", "xla/highest,xla/default,cudnn/default", "--jsonl",
         str(jsonl))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "train_step"]
    assert [r["variant"] for r in steps] == ["xla/highest", "xla/default"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in steps)
    assert steps[0]["seq_len"] == 384 and steps[0]["first_loss_minus_reference"] == 0.0
    assert abs(steps[1]["first_loss_minus_reference"]) < 1e-5
    skipped = [r for r in records if r["status"] == "skipped"]
    assert [r["variant"] for r in skipped] == ["cudnn/default"] and "needs a GPU" in skipped[0]["reason"]
    with pytest.raises(AssertionError, match="ATTENTION/PRECISION"):
        _run("train_throughput.py", "--smoke", "--variants", "flash/highest")
