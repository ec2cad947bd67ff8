"""The evaluation job (infini_jax.evaluate / infini_jax.runner) in-process, with a tiny model and byte tokenizer.

The compiled generator is shared between tests (same max_new_tokens / batch_size), so each prompt-length
bucket compiles once for the whole file.
"""

from __future__ import annotations

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import common
from infini_jax import GenerationConfig, Generator, ModelConfig, evaluate, random_model, runner
from infini_jax.checkpoint import load_converted, save_converted
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.tokenizer import load_tokenizer
from infini_jax.results import read_results

MAX_NEW = 4
BATCH = 4
TINY = ModelConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=2, segment_length=32, max_position_embeddings=128, pad_token_id=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_converted(random_model(TINY, seed=0), tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_TOKENIZER_PATH)


@pytest.fixture(scope="module")
def loaded(model_dir, tokenizer):
    """(model, tokenizer, generator) loaded and compiled once."""
    model = load_converted(model_dir, dtype="float32")
    gen = Generator(model, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=BATCH, eos_token_id=2,
                                            pad_token_id=3))
    return model, tokenizer, gen


def _config(model_dir, save_path, **overrides):
    c = common.get_config()
    c.ckpt_path = model_dir
    c.tokenizer = DEMO_TOKENIZER_PATH
    c.dtype = "float32"
    c.dataset = "generate"
    c.context_lengths = (256, 320)
    c.depths = (0, 50, 100)
    c.num_samples = 2
    c.num_digits = 4
    c.haystack = "classic"
    c.template = "needle"
    c.max_new_tokens = MAX_NEW
    c.batch_size = BATCH
    c.save_path = str(save_path)
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _run(config, loaded):
    model, tok, gen = loaded
    return evaluate.run(config, model=model, tokenizer=tok, generator=gen)


# ----------------------------------------------------------------------------- generated prompts


def test_generated_prompts_end_to_end(model_dir, loaded, tmp_path, caplog, capsys):
    caplog.set_level(logging.WARNING)
    summary = _run(_config(model_dir, tmp_path), loaded)
    recs = read_results(tmp_path)
    assert len(recs) == 12 and len({r["id"] for r in recs}) == 12
    for r in recs:
        assert r["num_tokens"] == r["context_length"]  # exact token counts
        assert r["context_length"] in (256, 320)
        assert r["needle_token_index"] is not None and r["num_segments"] == r["num_tokens"] // 32
        assert r["needle_segment"] == r["needle_token_index"] // 32
        assert len(r["generation_ids"]) == MAX_NEW
        assert r["generation"] == loaded[1].decode(r["generation_ids"], clean_up_tokenization_spaces=False)
        assert isinstance(r["correct"], bool) and isinstance(r["seconds"], float)
        assert len(r["answer"]) == 4
    for f in ("summary.json", "heatmap.png", "run_info.json"):
        assert os.path.isfile(tmp_path / f)
    assert summary["total_samples"] == 12 and summary["context_lengths"] == [256, 320]
    assert summary["segment_length"] == 32
    assert json.loads((tmp_path / "summary.json").read_text())["total_samples"] == 12
    out = capsys.readouterr().out
    assert "PASSKEY RETRIEVAL ANALYSIS" in out and "EVALUATION RESULTS" not in out  # several (ctx, depth)
    # 192 tokens > max_position_embeddings=128: a warning that explains why that is fine, not an error.
    assert any("max_position_embeddings" in r.getMessage() and "RoPE" in r.getMessage() for r in caplog.records)


def test_single_pair_prints_needle_block_and_results_file(model_dir, loaded, tmp_path, capsys):
    results_file = tmp_path / "out" / "fork.json"
    cfg = _config(model_dir, tmp_path / "r", context_length=256, depth_percent=50.0, num_samples=3,
                  results_file=str(results_file), verbose=True)
    _run(cfg, loaded)
    out = capsys.readouterr().out
    assert "EVALUATION RESULTS" in out and "Context Length: 256" in out and "Depth Percent: 50" in out
    assert "Total Samples: 3" in out and "Accuracy: " in out
    fork = json.loads(results_file.read_text())
    assert fork["evaluation_summary"]["total_samples"] == 3
    (depth,) = fork["depth_results"]
    assert depth["depth_percent"] == 50 and depth["total"] == 3 and 0 <= depth["accuracy"] <= 1
    assert {"response", "target", "correct"} <= set(depth["samples"][0])


# ----------------------------------------------------------------------------- resume


def test_resume_never_duplicates_nor_recomputes(model_dir, loaded, tmp_path, monkeypatch):
    model, tok, gen = loaded
    _run(_config(model_dir, tmp_path, max_samples=5), loaded)
    first = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(first) == 5

    # A crash in the middle of the next run: the batches finished before it are kept.
    calls = {"n": 0, "prompts": 0}
    real = gen.generate_batch

    def crashing(prompts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["prompts"] += len(prompts)
        return real(prompts)

    monkeypatch.setattr(gen, "generate_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        _run(_config(model_dir, tmp_path), loaded)
    after_crash = (tmp_path / "results.jsonl").read_text().splitlines()
    assert after_crash[:5] == first and len(after_crash) == 5 + calls["prompts"]

    calls.update(n=10, prompts=0)  # no more crashes
    _run(_config(model_dir, tmp_path), loaded)
    final = (tmp_path / "results.jsonl").read_text().splitlines()
    assert final[: len(after_crash)] == after_crash  # finished samples untouched
    ids = [json.loads(line)["id"] for line in final]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert calls["prompts"] == 12 - len(after_crash)  # only the missing ones were generated

    # Rerunning a finished run generates nothing and still summarises everything.
    calls.update(prompts=0)
    assert _run(_config(model_dir, tmp_path), loaded)["total_samples"] == 12
    assert calls["prompts"] == 0


def test_resume_refuses_mixing_runs(model_dir, loaded, tmp_path):
    _run(_config(model_dir, tmp_path, context_lengths=(256,), depths=(0,), num_samples=1), loaded)
    with pytest.raises(ValueError, match="different seed"):
        _run(_config(model_dir, tmp_path, context_lengths=(256,), depths=(0,), num_samples=1, seed=7), loaded)
    with pytest.raises(ValueError, match="different run"):
        _run(_config(model_dir, tmp_path, context_lengths=(256,), depths=(0,), num_samples=1, max_new_tokens=5),
             loaded)
    with pytest.raises(ValueError, match="prompts"):  # same ids and keys, another haystack
        _run(_config(model_dir, tmp_path, context_lengths=(256,), depths=(0,), num_samples=1, haystack="default"),
             loaded)
    # overwrite=True starts afresh.
    _run(_config(model_dir, tmp_path, context_lengths=(256,), depths=(0,), num_samples=1, seed=7, overwrite=True),
         loaded)
    assert len(read_results(tmp_path)) == 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides, exc, match",
    [
        (dict(depth_percent=101.0), ValueError, "outside 0..100"),
        (dict(depths=(0, 50, -5)), ValueError, "outside 0..100"),
        (dict(context_lengths=(40,)), ValueError, "too small"),
        (dict(ckpt_path=None), ValueError, r"set --config.ckpt_path=\.\.\. to a nanotron checkpoint dir"),
        (dict(ckpt_path="/nonexistent/ckpt"), FileNotFoundError, "does not exist"),
        (dict(pp=2), ValueError, "pipeline parallelism is not needed"),
        (dict(dp=2, tp=2), ValueError, "devices requested"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(template="haiku"), ValueError, "template"),
    ],
)
def test_bad_config_errors(model_dir, tmp_path, overrides, exc, match):
    with pytest.raises(exc, match=match):
        evaluate.run(_config(model_dir, tmp_path, **overrides))
    assert not os.path.exists(tmp_path / "results.jsonl")


def test_empty_dir_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        evaluate.run(_config(str(tmp_path / "ckpt"), tmp_path / "r"))


def test_dataset_without_prompt_answer(model_dir, tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 2], "depth_percent": [0, 0]}), path)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['prompt', 'answer'\]"):
        evaluate.run(_config(model_dir, tmp_path / "r", dataset=str(path), depths=(0,)))


def test_dataset_without_matching_rows(model_dir, tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["x The pass key is 12."], "answer": [12], "depth_percent": [50]}), path)
    with pytest.raises(ValueError, match="No rows"):
        evaluate.run(_config(model_dir, tmp_path / "r", dataset=str(path), depths=(0,), context_lengths=()))


def test_tokenizer_larger_than_vocab(tmp_path):
    small = save_converted(random_model(TINY.replace(vocab_size=128), seed=0), tmp_path / "small")
    with pytest.raises(ValueError, match="vocab_size is 128"):
        evaluate.run(_config(str(small), tmp_path / "r", context_lengths=(256,), depths=(0,), num_samples=1))


# ----------------------------------------------------------------------------- benchmark suite


def test_benchmark_suite_combined_report(model_dir, loaded, tmp_path, capsys, monkeypatch):
    # Reuse the module's compiled generator (same shapes): the suite's orchestration is what is tested here.
    monkeypatch.setattr(evaluate, "load_eval_model", lambda config, mesh=None: loaded[0])
    monkeypatch.setattr(evaluate, "make_generator", lambda config, model, tokenizer, mesh=None: loaded[2])
    cfg = _config(model_dir, tmp_path, job="benchmark_suite", depths=(0, 100), num_samples=1)
    combined = runner.run(cfg)
    assert combined["context_lengths"] == [256, 320] and combined["total_samples"] == 4
    for ctx in (256, 320):
        assert len(read_results(tmp_path / f"ctx_{ctx}")) == 2
        assert os.path.isfile(tmp_path / f"ctx_{ctx}" / "heatmap.png")
    assert os.path.isfile(tmp_path / "summary.json") and os.path.isfile(tmp_path / "heatmap.png")
    out = capsys.readouterr().out
    assert "COMPARISON" in out and "BY CONTEXT LENGTH" in out


def test_unknown_job(model_dir, tmp_path):
    with pytest.raises(ValueError, match="Unknown job"):
        runner.run(_config(model_dir, tmp_path, job="serve"))


def test_numerics_options_of_the_eval_config_reach_the_model(model_dir, tmp_path):
    config = _config(model_dir, tmp_path)
    assert evaluate.load_eval_model(config).cfg.memory_precision == "highest"  # defaults: the checkpoint's
    config.memory_query, config.memory_precision = "unrotated", "default"
    config.dtype, config.attention_impl = "bfloat16", "xla"
    cfg = evaluate.load_eval_model(config).cfg
    assert (cfg.memory_query.value, cfg.memory_precision, cfg.dtype, cfg.attention_impl) == (
        "unrotated", "default", "bfloat16", "xla")
    config.memory_precision = "fast"
    with pytest.raises(ValueError, match="memory_precision 'fast' is unknown"):
        evaluate.load_eval_model(config)
