"""The evaluation job: samples -> batched greedy generation -> ``results.jsonl`` -> summary and heatmap.

The JAX equivalent of nanotron's ``run_evals.py`` (needle in a haystack) and ``run_passkey_eval.py``
(passkey over the HF parquet datasets), driven by a ``configs/*.py`` ConfigDict (``configs/common.py``
documents every field)::

    python main.py --config=configs/passkey_16k.py --config.ckpt_path=ckpts/30000 --config.num_samples=25

Steps of :func:`run`:

1. Validate the config up front (depths, lengths, dp/tp/pp against the devices, the checkpoint path).
2. Load the tokenizer and the samples: a dataset (HF hub name, local parquet file or directory,
   ``save_to_disk`` directory; filtered per depth like nanotron) or generated prompts of exact token
   lengths (``dataset="generate"``). Dataset prompts are tokenised with the tokenizer's default special
   tokens, as nanotron does.
3. Load the model, check the tokenizer fits its vocabulary.
4. Generate greedily in batches of similar length (``infini_jax.generate.Generator``) and append each
   finished sample to ``save_path/results.jsonl`` at once: an interrupted run loses at most the batch in
   flight, a rerun skips the finished ids (never duplicates them).
5. Write ``summary.json`` and ``heatmap.png`` (all the records of ``save_path``), print the analysis
   report, the ``run_evals.py`` block when a single (context length, depth) was evaluated, and the fork's
   ``--results_file`` JSON when ``results_file`` is set.

Bugs of nanotron's scripts that do not exist here: see ``docs/evaluation.md``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from collections import defaultdict
from typing import Any

import jax
from absl import logging

from infini_jax import analyze, sharding
from infini_jax.api import detect_format, load_model
from infini_jax.config import config_value as _opt
from infini_jax.data.prompts import TEMPLATES, PromptSample
from infini_jax.data.tokenizer import check_vocab, load_tokenizer
from infini_jax.eval_samples import (  # noqa: F401  (re-exported: the job's sample API)
    DEFAULT_GENERATED_DIGITS,
    GENERATE,
    SampleGroup,
    eval_context_lengths,
    eval_depths,
    sample_groups,
    tokenize_samples,
)
from infini_jax.generate import GenerationConfig, Generator, bucket_length
from infini_jax.results import ResultsWriter, read_results, results_path, score, segment_info

RUN_INFO_FILENAME = "run_info.json"
MODEL_CARD_FILENAME = "model_card.json"
RULE = "=" * 50
SEPARATOR = "-" * 50
PP_MESSAGE = (
    "pp={pp}: pipeline parallelism is not needed (nor supported) in infini-jax. nanotron uses it to fit "
    "a model that is too large for one GPU; here tensor parallelism does that (tp splits every weight "
    "matrix over the GPUs) and data parallelism (dp) splits the batch. Set --config.pp=1 and use "
    "--config.tp / --config.dp instead."
)


# ----------------------------------------------------------------------------- config checks


def validate_config(config) -> None:
    """Checks the config before anything expensive runs; raises ``ValueError`` naming the fix."""
    ckpt = _opt(config, "ckpt_path")
    if not ckpt:
        raise ValueError(
            "No checkpoint: set --config.ckpt_path=... to a nanotron checkpoint dir containing config.yaml "
            "(e.g. checkpoints/my_run/30000), a converted infini-jax directory, or a Hugging Face Llama "
            "folder (with --config.segment_length)."
        )
    detect_format(ckpt)  # FileNotFoundError with the expected layout when it is not a checkpoint
    eval_depths(config)
    eval_context_lengths(config)
    for name in ("max_new_tokens", "batch_size"):
        if int(_opt(config, name, 1)) < 1:
            raise ValueError(f"{name}={_opt(config, name)} must be >= 1.")
    num_samples = _opt(config, "num_samples")
    if num_samples is not None and int(num_samples) < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1 (samples per depth).")
    if int(_opt(config, "num_shots", 0)) < 0 or int(_opt(config, "num_digits", 0)) < 0:
        raise ValueError("num_shots and num_digits must be >= 0 (num_digits=0: any number of digits).")
    if _opt(config, "dataset", GENERATE) == GENERATE and _opt(config, "template", "passkey") not in TEMPLATES:
        raise ValueError(f"template={config.template!r} is unknown: use one of {TEMPLATES}.")
    check_parallelism(config)


def check_parallelism(config, num_devices: int | None = None) -> tuple[int, int]:
    """(dp, tp) after checking them (and pp) against the devices; raises ``ValueError`` otherwise."""
    dp, tp, pp = (int(_opt(config, k, 1)) for k in ("dp", "tp", "pp"))
    if pp != 1:
        raise ValueError(PP_MESSAGE.format(pp=pp))
    if dp < 1 or tp < 1:
        raise ValueError(f"dp={dp} and tp={tp} must be >= 1 (nanotron's 0 = 'from the checkpoint' is 1 here).")
    n = jax.device_count() if num_devices is None else num_devices
    if dp * tp > n:
        raise ValueError(
            f"dp * tp = {dp} * {tp} = {dp * tp} devices requested but only {n} "
            f"{jax.devices()[0].platform} device(s) are visible: lower --config.dp / --config.tp so that "
            f"dp * tp <= {n} (JAX uses every visible GPU of the process; no torchrun needed)."
        )
    batch = int(_opt(config, "batch_size", 1))
    if batch % dp:
        raise ValueError(f"batch_size={batch} is not a multiple of dp={dp}: dp splits each batch over the "
                         f"devices; use --config.batch_size={dp * max(1, batch // dp)}.")
    return dp, tp


def _mesh(config):
    dp, tp = check_parallelism(config)
    if dp * tp == 1:
        return None
    logging.info("Device mesh: dp=%d (batch split) x tp=%d (weights split) over %d of %d devices", dp, tp,
                 dp * tp, jax.device_count())
    return sharding.make_mesh(dp, tp, devices=jax.devices()[: dp * tp])


# ----------------------------------------------------------------------------- model


def load_eval_model(config, mesh=None):
    """``load_model(config.ckpt_path, dtype=config.dtype, ...)`` and a log line about what was loaded."""
    path = config.ckpt_path
    overrides: dict[str, Any] = {}
    for name in ("memory_query", "attention_impl", "memory_precision"):
        if _opt(config, name):
            overrides[name] = config[name]
    if _opt(config, "segment_length"):  # only used for Hugging Face Llama folders
        overrides["segment_length"] = int(config.segment_length)
    if mesh is not None:
        overrides["mesh"] = mesh
    t0 = time.time()
    model = load_model(path, dtype=_opt(config, "dtype", "bfloat16"), **overrides)
    cfg = model.cfg
    logging.info(
        "Loaded %s (%s) in %.1fs: %d layers, hidden %d, vocab %d, segment_length %d, dtype %s, memory_query %s",
        os.path.abspath(path), detect_format(path), time.time() - t0, cfg.num_layers, cfg.hidden_size,
        cfg.vocab_size, cfg.segment_length, cfg.dtype, cfg.memory_query.value,
    )
    card = os.path.join(path, MODEL_CARD_FILENAME)
    if os.path.isfile(card):
        with open(card, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("trained") is False:
            logging.warning("%s is an UNTRAINED (randomly initialised) model: expect ~0%% accuracy; the run "
                            "shows the pipeline, not retrieval. (%s)", path, info.get("description", ""))
    return model


# ----------------------------------------------------------------------------- resumable results


def checkpoint_signature(path: str) -> str:
    """A cheap identity of a checkpoint directory: its files' relative paths, sizes and mtimes."""
    h = hashlib.sha1()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            h.update(f"{os.path.relpath(os.path.join(root, f), path)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def run_fingerprint(config, model, tokenizer) -> dict:
    """What must not change between a run and its resumption (else results would mix models)."""
    return {
        "ckpt_path": os.path.abspath(config.ckpt_path),
        "checkpoint_signature": checkpoint_signature(config.ckpt_path),
        "model_config": model.cfg.to_dict(),
        "tokenizer": str(_opt(config, "tokenizer", "")),
        "tokenizer_num_ids": len(tokenizer),
        "max_new_tokens": int(config.max_new_tokens),
        "stop_at_eos": bool(_opt(config, "stop_at_eos", False)),
        "prompts": _prompt_fingerprint(config),
    }


def _prompt_fingerprint(config) -> dict:
    """What shapes a prompt without showing in its id or its answer (generated prompts keep their exact length
    and key whatever the haystack, template or shots): a change must not resume into old results."""
    dataset = str(_opt(config, "dataset", "generate"))
    if dataset != "generate":
        return {"dataset": dataset}
    haystack_dir = _opt(config, "haystack_dir", None)
    return {"dataset": dataset, "template": str(_opt(config, "template", "passkey")),
            "haystack": str(_opt(config, "haystack", "default")),
            "haystack_dir": os.path.abspath(haystack_dir) if haystack_dir else None,
            "num_shots": int(_opt(config, "num_shots", 0) or 0)}


def prepare_save_path(config, fingerprint: dict) -> str:
    """Creates ``save_path`` (emptied of our files when ``overwrite``) and checks/writes ``run_info.json``."""
    save_path = str(_opt(config, "save_path", "results/eval"))
    os.makedirs(save_path, exist_ok=True)
    ours = (results_path(save_path), os.path.join(save_path, RUN_INFO_FILENAME),
            os.path.join(save_path, analyze.SUMMARY_FILENAME), os.path.join(save_path, analyze.HEATMAP_FILENAME))
    if _opt(config, "overwrite", False):
        for f in ours:
            if os.path.exists(f):
                os.remove(f)
    info_path = ours[1]
    if os.path.isfile(info_path) and os.path.isfile(ours[0]):
        with open(info_path, encoding="utf-8") as f:
            previous = json.load(f).get("fingerprint", {})
        diff = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if diff:
            raise ValueError(
                f"{save_path} holds results of a different run (changed: {diff}), so resuming there would mix "
                "them. Pass a new --config.save_path, or --config.overwrite=True to discard the old results."
            )
    info = {"fingerprint": fingerprint, "config": _config_dict(config),
            "updated": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, default=str)
        f.write("\n")
    return save_path


def _previous_records(save_path: str, writer: ResultsWriter | None) -> dict[str, dict]:
    """Records already in ``save_path`` by id. Multi-host: process 0 prepares the directory, then the others
    read it (``save_path`` must be on a filesystem every host sees)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("infini_jax.evaluate: results directory ready")
    if writer is not None:
        return {r["id"]: r for r in writer.records()}
    path = results_path(save_path)
    return {r["id"]: r for r in read_results(path)} if os.path.isfile(path) else {}


def _config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _check_resumed(done: dict[str, dict], samples: list[PromptSample]) -> None:
    for s in samples:
        r = done.get(s.id)
        if r is not None and (str(r.get("answer")) != s.answer or r.get("num_tokens") != len(s.input_ids)):
            raise ValueError(
                f"results.jsonl already has id {s.id!r} with answer {r.get('answer')!r} and "
                f"{r.get('num_tokens')} tokens, but this run's sample has answer {s.answer!r} and "
                f"{len(s.input_ids)} tokens (a different seed, dataset or tokenizer?). Pass a new "
                "--config.save_path or --config.overwrite=True."
            )


# ----------------------------------------------------------------------------- generation loop


def make_record(sample: PromptSample, new_ids: list[int], text: str, seconds: float,
                segment_length: int) -> dict:
    """One ``results.jsonl`` line (fields of ``infini_jax.results``) plus ``generation_ids`` and provenance."""
    correct, strict = score(sample.answer, text)
    n = len(sample.input_ids)
    needle_segment, num_segments = segment_info(sample.needle_token_index, n, segment_length)
    return {
        "id": sample.id,
        "dataset": sample.dataset,
        "context_length": int(sample.context_length) or n,  # a dataset without the column: the real length
        "num_tokens": n,
        "depth_percent": sample.depth_percent,
        "needle_token_index": sample.needle_token_index,
        "needle_segment": needle_segment,
        "num_segments": num_segments,
        "answer": sample.answer,
        "generation": text,
        "correct": correct,
        "correct_strict": strict,
        "seconds": round(seconds, 4),
        "generation_ids": [int(t) for t in new_ids],
        "num_shots": sample.num_shots,
        "num_digits": sample.num_digits,
    }


def _preview(tokenizer, sample: PromptSample, head: int = 200, tail: int = 100) -> str:
    """``<start of the prompt> ... [needle at token i: "..."] ... <end of the prompt>``, newlines escaped."""
    ids = sample.input_ids
    if sample.prompt is not None:
        start, end = sample.prompt[:head], sample.prompt[-tail:]
        m = re.search(rf"[Tt]he pass key is {re.escape(sample.answer)}\b[^.]*\.", sample.prompt)
        needle = m.group(0) if m else None
    else:
        start, end = tokenizer.decode(ids[:head]), tokenizer.decode(ids[-tail:])
        start, end = start[:head], end[-tail:]
        needle = sample.extra.get("needle_text")
    where = "" if sample.needle_token_index is None else f" at token {sample.needle_token_index}"
    middle = f" ... [needle{where}: {needle.strip()!r}] ... " if needle else " ... "
    return f"{start}{middle}{end} ({len(ids)} tokens)".replace("\n", "\\n")


def _batches(samples: list[PromptSample], batch_size: int, segment_length: int, chunk: int | None):
    """Batches of samples in the same length bucket (one compiled shape each), shortest first."""
    buckets: dict[int, list[PromptSample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: len(s.input_ids)):
        buckets[bucket_length(len(s.input_ids), segment_length, chunk)].append(s)
    for key in sorted(buckets):
        group = buckets[key]
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def evaluate_group(group: SampleGroup, *, generator: Generator, tokenizer, writer: ResultsWriter | None,
                   done: dict[str, dict], segment_length: int, verbose: bool, budget: int | None) -> list[dict]:
    """Generates the group's samples not in ``done``; each record is written as soon as its batch is done.

    ``writer`` is None on the processes of a multi-host run other than process 0 (they generate, not write).
    """
    from tqdm import tqdm

    _check_resumed(done, group.samples)
    todo = [s for s in group.samples if s.id not in done]
    skipped = len(group.samples) - len(todo)
    if budget is not None:
        todo = todo[:budget]
    label = f"context {group.context_length}" if group.context_length else "dataset"
    logging.info("%s: %d samples, %d already in results.jsonl, %d to run", label, len(group.samples), skipped,
                 len(todo))
    cfgn = generator.config
    bar = tqdm(total=len(todo), desc=label, unit="sample", disable=verbose or not todo, dynamic_ncols=True)
    new = []
    try:
        for batch in _batches(todo, cfgn.batch_size, segment_length, cfgn.prefill_chunk_tokens):
            t0 = time.time()
            outs = generator.generate_batch([s.input_ids for s in batch])
            per_sample = (time.time() - t0) / len(batch)
            for s, ids in zip(batch, outs, strict=True):
                text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # special tokens kept
                rec = make_record(s, ids, text, per_sample, segment_length)
                if writer is not None:
                    writer.write(rec)
                new.append(rec)
                if verbose:
                    logging.info("input: %s", _preview(tokenizer, s))
                    logging.info("generation: %r", text)
                    logging.info("answer: %s -> %s (depth %g%%, %d tokens, needle in segment %s of %s)", s.answer,
                                 "success" if rec["correct"] else "failure", s.depth_percent, rec["num_tokens"],
                                 rec["needle_segment"], rec["num_segments"])
                    logging.info(SEPARATOR)
            bar.update(len(batch))
    finally:
        bar.close()
    return new


# ----------------------------------------------------------------------------- outputs


def needle_block(records: list[dict]) -> str | None:
    """``run_evals.py``'s EVALUATION RESULTS block when the records share one (context length, depth)."""
    keys = {(r["context_length"], r["depth_percent"]) for r in records}
    if len(keys) != 1:
        return None
    ctx, depth = next(iter(keys))
    n, c = len(records), sum(bool(r["correct"]) for r in records)
    return "\n".join([
        RULE, "EVALUATION RESULTS", RULE, f"Context Length: {ctx}", f"Depth Percent: {analyze._num(depth)}",
        f"Total Samples: {n}", f"Correct Predictions: {c}", f"Accuracy: {100.0 * c / n:.2f}%", RULE,
    ])


def fork_results(records: list[dict], config) -> dict:
    """The nanotron fork's ``--results_file`` JSON (accuracy as a fraction, per-depth samples)."""
    by_depth: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        by_depth[r["depth_percent"]].append(r)
    total, correct = len(records), sum(bool(r["correct"]) for r in records)
    depth_results = []
    for d in sorted(by_depth):
        rs = by_depth[d]
        c = sum(bool(r["correct"]) for r in rs)
        depth_results.append({
            "depth_percent": analyze._num(d), "accuracy": c / len(rs), "correct": c, "total": len(rs),
            "samples": [{"response": r["generation"], "target": r["answer"], "correct": bool(r["correct"])}
                        for r in rs],
        })
    return {
        "evaluation_summary": {
            "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
            "checkpoint_path": str(config.ckpt_path), "dataset_path": str(_opt(config, "dataset", GENERATE)),
            "num_samples": _opt(config, "num_samples"), "seed": _opt(config, "seed"),
            "overall_accuracy": correct / total if total else 0.0, "total_correct": correct, "total_samples": total,
        },
        "depth_results": depth_results,
    }


def finish(config, save_path: str, writer: ResultsWriter, current: list[dict], segment_length: int) -> dict:
    """summary.json + heatmap.png over every record of ``save_path``; prints the reports."""
    records = writer.records()
    model_name = str(_opt(config, "model_name", "Infini-Attention"))
    summary = analyze.write_summary(save_path, records, model_name=model_name, segment_length=segment_length)
    summary_path = os.path.join(save_path, analyze.SUMMARY_FILENAME)
    if len(records) != len(current):
        logging.info("The summary covers all %d records of %s (%d from this config's samples).", len(records),
                     save_path, len(current))
    print(analyze.format_report(summary, summary_path), flush=True)
    block = needle_block(current) if current else None
    if block:
        print(block, flush=True)
    if _opt(config, "results_file"):
        path = str(config.results_file)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(fork_results(current, config), f, indent=2)
            f.write("\n")
        print(f"Results file (nanotron fork format) saved to: {path}", flush=True)
    print(f"Heatmap saved to: {os.path.join(save_path, analyze.HEATMAP_FILENAME)}", flush=True)
    return summary


def _warn_positions(model, longest: int) -> None:
    mpe = model.cfg.max_position_embeddings
    if longest > mpe:
        logging.warning(
            "Prompts of up to %d tokens exceed the model's max_position_embeddings=%d. That is fine for "
            "Infini-Attention: RoPE positions restart at 0 in every segment of %d tokens, so no position "
            "beyond %d is ever used; longer contexts only add segments to the compressive memory (nanotron's "
            "guide limit 'context_length <= max_position_embeddings' does not apply).",
            longest, mpe, model.cfg.segment_length, model.cfg.segment_length - 1)


def _prefill_chunk(config, segment_length: int) -> int | None:
    chunk = _opt(config, "prefill_chunk_tokens")
    if not chunk:
        return None
    chunk = int(chunk)
    rounded = max(segment_length, chunk // segment_length * segment_length)
    if rounded != chunk:
        logging.info("prefill_chunk_tokens %d rounded to %d (a multiple of segment_length %d).", chunk, rounded,
                     segment_length)
    return rounded


def make_generator(config, model, tokenizer, mesh=None) -> Generator:
    pad = tokenizer.pad_token_id
    gcfg = GenerationConfig(
        max_new_tokens=int(config.max_new_tokens), batch_size=int(_opt(config, "batch_size", 1)),
        eos_token_id=tokenizer.eos_token_id, stop_at_eos=bool(_opt(config, "stop_at_eos", False)),
        prefill_chunk_tokens=_prefill_chunk(config, model.cfg.segment_length),
        pad_token_id=int(pad) if pad is not None and 0 <= pad < model.cfg.vocab_size else 0,
    )
    return Generator(model, gcfg) if mesh is None else Generator(model, gcfg, mesh=mesh)


# ----------------------------------------------------------------------------- entry point


def run(config, *, model=None, tokenizer=None, generator=None) -> dict:
    """Runs the evaluation described by ``config`` (see ``configs/common.py``); returns the summary dict.

    ``model`` / ``tokenizer`` / ``generator``: reuse already loaded ones (the benchmark suite does).
    """
    validate_config(config)
    mesh = _mesh(config) if model is None else None
    if tokenizer is None:
        tokenizer = load_tokenizer(_opt(config, "tokenizer"))
    tokenizer.model_max_length = 1 << 40  # no "sequence longer than the maximum" warnings: Infini is unbounded
    groups = sample_groups(config, tokenizer)  # datasets are loaded, filtered and tokenised here
    if model is None:
        model = load_eval_model(config, mesh)
    check_vocab(tokenizer, model.cfg.vocab_size)
    seg = model.cfg.segment_length
    if generator is None:
        generator = make_generator(config, model, tokenizer, mesh)
    is_main = jax.process_index() == 0
    save_path = str(_opt(config, "save_path", "results/eval"))
    writer = ResultsWriter(prepare_save_path(config, run_fingerprint(config, model, tokenizer))) if is_main else None
    done = _previous_records(save_path, writer)  # every process skips the same finished samples
    budget = _opt(config, "max_samples") or None
    current: list[dict] = []
    warned = False
    t0 = time.time()
    for group in groups:
        longest = max(len(s.input_ids) for s in group.samples)
        if not warned and longest > model.cfg.max_position_embeddings:
            _warn_positions(model, longest)
            warned = True
        new = evaluate_group(group, generator=generator, tokenizer=tokenizer, writer=writer, done=done,
                             segment_length=seg, verbose=bool(_opt(config, "verbose", False)), budget=budget)
        if budget is not None:
            budget -= len(new)
        by_id = {r["id"]: r for r in new}
        current += [by_id.get(s.id) or done[s.id] for s in group.samples if s.id in by_id or s.id in done]
    logging.info("Evaluated in %.1fs; results in %s", time.time() - t0, save_path)
    if not is_main:
        return {}
    if not writer.records():
        raise ValueError(f"No results in {save_path}: nothing to summarise.")
    return finish(config, save_path, writer, current, seg)
