"""``python main.py --config=configs/...`` end to end (subprocesses), and every config file.

Both nanotron HF dataset schemas (written here as parquet: the 1K one with num_shots / num_digits, the 16K
one without) run through main.py with a tiny converted model and the byte-level tokenizer.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infini_jax import ModelConfig, random_model
from infini_jax.checkpoint import save_converted
from infini_jax.data.demo_tokenizer import build_byte_tokenizer
from infini_jax.data.prompts import generate_passkey_samples

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(vocab_size=288, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=2, segment_length=64, max_position_embeddings=512)
DEPTHS = (0, 50, 100)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny converted model, a byte tokenizer directory and text prompts made with them."""
    root = tmp_path_factory.mktemp("main_assets")
    model = str(save_converted(random_model(TINY, seed=1), root / "model"))
    tok_dir = root / "tokenizer"
    tok = build_byte_tokenizer(tok_dir)
    samples = generate_passkey_samples(tok, context_lengths=[320], depths=DEPTHS, num_samples=4, num_digits=4,
                                       haystack="classic", seed=3)
    prompts = [(s, tok.decode(s.input_ids, skip_special_tokens=True)) for s in samples]
    return dict(model=model, tokenizer=str(tok_dir), prompts=prompts, root=root)


def _main(*args, timeout=240):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def _common_flags(assets, save_path):
    return [f"--config.ckpt_path={assets['model']}", f"--config.tokenizer={assets['tokenizer']}",
            f"--config.save_path={save_path}", "--config.dtype=float32", "--config.max_new_tokens=4",
            "--config.batch_size=8", "--config.depths=(0, 50, 100)"]


def _check_outputs(save_path, n):
    lines = (save_path / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert len(recs) == n and len({r["id"] for r in recs}) == n
    summary = json.loads((save_path / "summary.json").read_text())
    assert summary["total_samples"] == n
    assert sorted(d["depth_percent"] for d in summary["results_by_depth"]) == list(DEPTHS)
    assert (save_path / "heatmap.png").stat().st_size > 1000
    return recs


def test_main_1k_schema(assets, tmp_path):
    """llama3-1024 schema: num_shots / num_digits columns, non-unique ids, int answers."""
    rows = []
    for shots in (0, 1):
        for i, (s, text) in enumerate(assets["prompts"]):
            rows.append(dict(id=i % 4, prompt=text, answer=int(s.answer), context_length=1024,
                             token_count=len(s.input_ids), num_shots=shots, num_digits=4,
                             depth_percent=int(s.depth_percent)))
    data = tmp_path / "llama3-1024" / "train-00000-of-00001.parquet"
    data.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), data)
    save = tmp_path / "out"
    proc = _main("--config=configs/passkey_1k.py", f"--config.dataset={data.parent}", "--config.num_samples=3",
                 "--config.num_digits=4", *_common_flags(assets, save))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _check_outputs(save, 9)  # 3 depths x 3 samples of the num_shots=0 rows
    assert all(r["num_shots"] == 0 and r["num_digits"] == 4 for r in recs)
    assert all("-row" in r["id"] for r in recs)  # the dataset's ids repeat: made unique with the row index
    # The needle is located in the tokenised prompt (BOS added by the tokenizer, as nanotron does).
    by_answer = {s.answer: s for s, _ in assets["prompts"]}
    for r in recs:
        assert r["num_tokens"] == len(by_answer[r["answer"]].input_ids)
        assert r["needle_token_index"] == by_answer[r["answer"]].needle_token_index + 2  # ". The pass key"
    assert "PASSKEY RETRIEVAL ANALYSIS" in proc.stdout and "Detailed summary saved to" in proc.stdout


def test_main_16k_schema(assets, tmp_path):
    """llama3-16k schema: no num_shots / num_digits (nanotron's script raised KeyError), num_tokens."""
    rows = [dict(id=f"r{i}", prompt=text, answer=int(s.answer), context_length=16384, num_tokens=len(s.input_ids),
                 depth_percent=int(s.depth_percent)) for i, (s, text) in enumerate(assets["prompts"])]
    data = tmp_path / "sixteen.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    save = tmp_path / "out"
    results_file = tmp_path / "fork.json"
    proc = _main("--config=configs/passkey_16k.py", f"--config.dataset={data}", f"--config.results_file={results_file}",
                 "--config.verbose=True", *_common_flags(assets, save))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _check_outputs(save, 12)  # num_samples=25 > 4 rows per depth: all of them
    assert {r["id"] for r in recs} == {f"r{i}" for i in range(12)}
    assert all(r["context_length"] == 16384 and r["num_shots"] is None for r in recs)
    assert "input: " in proc.stderr and "generation: " in proc.stderr and "-" * 50 in proc.stderr
    fork = json.loads(results_file.read_text())
    assert fork["evaluation_summary"]["total_samples"] == 12 and len(fork["depth_results"]) == 3


def test_main_demo(tmp_path):
    """The README's demo command (shortened: one length, one sample per depth)."""
    proc = _main("--config=configs/demo.py", f"--config.save_path={tmp_path}", "--config.context_lengths=(512,)",
                 "--config.num_samples=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all(r["num_tokens"] == 512 for r in recs)
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "heatmap.png").is_file()
    assert "PASSKEY RETRIEVAL ANALYSIS - DEMO MODEL" in proc.stdout


def test_main_refuses_a_repeated_override(tmp_path):
    # ml_collections would concatenate the two tuples ((512, 1024)) instead of keeping the last.
    proc = _main("--config=configs/demo.py", f"--config.save_path={tmp_path}", "--config.context_lengths=(512,)",
                 "--config.context_lengths=(1024,)")
    assert proc.returncode != 0
    assert "--config.context_lengths given more than once" in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_main_missing_ckpt_path(tmp_path):
    proc = _main("--config=configs/passkey_16k.py", f"--config.save_path={tmp_path}")
    assert proc.returncode != 0
    assert "set --config.ckpt_path=... to a nanotron checkpoint dir containing config.yaml" in proc.stderr


# ----------------------------------------------------------------------------- config files


def _load(name, arg=None):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config() if arg is None else module.get_config(arg)


def test_every_config_file_loads():
    names = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__",))
    base = set(_load("common").keys())
    for name in names:
        if name.startswith("train"):
            continue  # training configs are tested with the trainer
        cfg = _load(name)
        assert set(cfg.keys()) >= base, name
        assert cfg.job in ("eval", "train", "benchmark_suite")
    for name in ("passkey_1k", "passkey_16k", "needle", "long_context", "benchmark", "demo"):
        assert name in names


def test_config_values():
    one_k, sixteen = _load("passkey_1k"), _load("passkey_16k")
    assert one_k.dataset == "nanotron/llama3-1024-passkey-retrieval-eval" and one_k.num_samples == 50
    assert sixteen.dataset == "nanotron/llama3-16k-passkey-retrieval-eval" and sixteen.num_samples == 25
    for c in (one_k, sixteen):
        assert c.depths == tuple(range(0, 101, 5)) and (c.num_shots, c.num_digits, c.seed) == (0, 0, 42)
        assert c.max_new_tokens == 15 and (c.dp, c.tp, c.pp) == (1, 1, 1)
    needle = _load("needle")
    assert needle.dataset == "nanotron/simple_needle_in_a_hay_stack" and needle.max_new_tokens == 30
    assert needle.depths == (50,) and needle.context_lengths == (16384,) and needle.depth_percent is None
    gen = _load("needle", "generate")
    assert gen.dataset == "generate" and gen.template == "needle"
    with pytest.raises(ValueError, match="Unknown variant"):
        _load("needle", "nope")
    lc = _load("long_context")
    assert lc.context_lengths == (32768, 65536, 131072, 262144, 524288, 1048576)
    assert lc.depths == (0, 25, 50, 75, 100) and lc.batch_size == 1 and lc.prefill_chunk_tokens > 0
    one = _load("long_context", "32768,25")
    assert one.context_lengths == (32768,) and one.num_samples == 25
    assert _load("long_context", "65536").context_lengths == (65536,)
    bench = _load("benchmark")
    assert bench.job == "benchmark_suite" and bench.context_lengths == (1024, 2048, 4096, 8192)
    demo = _load("demo")
    assert os.path.isdir(demo.ckpt_path) and os.path.isdir(demo.tokenizer) and demo.dtype == "float32"
