"""The final evaluation of the training job: greedy generation on freshly generated passkey prompts.

Prompts use the training wording (``train_data.PasskeyBatcher.eval_prompts``, identical to
``infini_jax.data.prompts``) with held-out pass keys (``eval.seed``) and held-out haystack text
(``eval.varied_seed`` for the generated style). A sample is an exact match when the first ``num_digits``
generated tokens spell the key (``correct`` / ``correct_strict`` follow ``infini_jax.results.score``).
Records go to ``workdir/eval/results.jsonl`` (resumable; ``summary.json`` and ``heatmap.png`` beside it) and
the exact-match table per context length, depth and haystack to ``workdir/eval.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from absl import logging

from infini_jax.config import config_value as _get
from infini_jax.miss_kinds import format_misses, summarize_misses
from infini_jax.model import InfiniLlama
from infini_jax.train_data import PasskeyBatcher, haystack_text, key_digit_pattern

EVAL_FILE = "eval.json"
EVAL_DIR = "eval"
MODEL_ID_FILE = "model_id.json"
# A needle counts as cut by a segment boundary when one falls within this many tokens of a copy of the key
# (``PasskeyBatcher.needle_near_boundary``): the places where the demo runs' errors concentrate (docs/training.md).
BOUNDARY_WINDOW = 8


def evaluate_passkey(model: InfiniLlama, tokenizer, batcher: PasskeyBatcher, *, context_lengths: Iterable[int],
                     depths: Iterable[float], num_samples: int, haystack_names: Iterable[str], seed: int,
                     batch_size: int = 8, prefill_chunk_tokens: int | None = None,
                     results_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Greedy exact match of the key's digits on fresh prompts (keys from ``seed``; one prompt layout per
    haystack of ``batcher``, named ``haystack_names``). Resumable through ``results_dir/results.jsonl``."""
    from infini_jax.data.prompts import draw_passkeys
    from infini_jax.generate import GenerationConfig, Generator
    from infini_jax.results import ResultsWriter, score, segment_info

    seg = model.cfg.segment_length
    d = batcher.num_digits
    lengths = [int(c) for c in context_lengths if int(c) > batcher.fixed_tokens(with_answer=False)]
    skipped = [int(c) for c in context_lengths if int(c) not in lengths]
    if skipped:
        logging.warning("eval: context lengths %s are too short for the %d-token template; skipped.", skipped,
                        batcher.fixed_tokens(with_answer=False))
    depths = [float(x) for x in depths]
    names = list(haystack_names)
    chunk = int(prefill_chunk_tokens) if prefill_chunk_tokens else None
    if chunk:
        chunk = max(seg, chunk // seg * seg)
    gen = Generator(model, GenerationConfig(max_new_tokens=d, batch_size=int(batch_size), prefill_chunk_tokens=chunk))
    writer = ResultsWriter(results_dir) if results_dir is not None else None
    done = {r["id"]: r for r in writer.records()} if writer else {}
    records = []
    for ctx in lengths:
        for depth in depths:
            # One generate call per (length, depth): every haystack's samples together.
            group = []
            for k, name in enumerate(names):
                # Keys from (seed, haystack, length, depth) alone: stable when lengths or sample counts change.
                rng = np.random.default_rng([int(seed), k, ctx, int(round(depth * 1000))])
                ks = draw_passkeys(num_samples, d, rng)
                group += [(f"train-eval-{name}-{ctx}-{depth:g}-{i}", name, k, key) for i, key in enumerate(ks)]
            stale = [g[0] for g in group if g[0] in done and done[g[0]]["answer"] != g[3]]
            if stale:
                raise ValueError(f"{results_dir} holds results for other keys ({stale[:3]}...): the evaluation "
                                 "settings changed; delete that directory to evaluate afresh.")
            todo = [g for g in group if g[0] not in done]
            rows, starts = {}, {}
            for k in sorted({g[2] for g in todo}):
                mine = [g for g in todo if g[2] == k]
                ids, start = batcher.eval_prompts([g[3] for g in mine], ctx, depth, k)
                for g, row, st in zip(mine, ids, start, strict=True):
                    rows[g[0]], starts[g[0]] = row, int(st)
            t0 = time.perf_counter()
            outs = gen.generate([rows[g[0]] for g in todo]) if todo else []
            sec = (time.perf_counter() - t0) / max(1, len(todo))
            new = {}
            for (sid, name, _, key), out in zip(todo, outs, strict=True):
                text = tokenizer.decode(out, skip_special_tokens=True)
                correct, strict = score(key, text)
                needle_seg, n_seg = segment_info(starts[sid], ctx, seg)
                new[sid] = {"id": sid, "dataset": f"train-eval-{name}", "context_length": ctx, "num_tokens": ctx,
                            "depth_percent": depth, "needle_token_index": starts[sid], "needle_segment": needle_seg,
                            "num_segments": n_seg, "answer": key, "generation": text, "correct": correct,
                            "correct_strict": strict, "exact": text[:d] == key, "haystack": name, "seconds": sec,
                            "key_near_segment_boundary": bool(batcher.needle_near_boundary(starts[sid],
                                                                                           BOUNDARY_WINDOW))}
                if writer is not None:
                    writer.write(new[sid])
            records += [done.get(g[0]) or new[g[0]] for g in group]
        acc = np.mean([r["exact"] for r in records if r["context_length"] == ctx])
        logging.info("eval: %d tokens: exact match %.3f", ctx, acc)
    return summarize_eval(records)


def summarize_eval(records: list[dict]) -> dict[str, Any]:
    """Exact match overall, per context length, per depth, per (length, depth), per haystack, and for needles
    with a segment boundary within ``BOUNDARY_WINDOW`` tokens of a key copy ("near") against the rest
    ("elsewhere"; "unknown" for records written before that field existed), and per key digit pattern
    (``key_digit_pattern``: distinct digits, an adjacent pair, a digit repeated apart), and the inexact answers by
    kind and first wrong digit (``infini_jax.miss_kinds``)."""

    def acc(rs):
        return {"exact_match": float(np.mean([r["exact"] for r in rs])) if rs else None,
                "nanotron_correct": float(np.mean([r["correct"] for r in rs])) if rs else None, "num_samples": len(rs)}

    def by(keyf):
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(keyf(r), []).append(r)
        return {k: acc(v) for k, v in groups.items()}

    far = [r for r in records if r["needle_segment"] is not None and r["needle_segment"] < r["num_segments"] - 1]
    return {"overall": acc(records), "far_needles": acc(far),
            "by_context_length": by(lambda r: str(r["context_length"])),
            "by_depth": by(lambda r: f"{r['depth_percent']:g}"),
            "by_context_length_and_depth": by(lambda r: f"{r['context_length']}/{r['depth_percent']:g}"),
            "by_haystack": by(lambda r: r["haystack"]),
            "by_needle_near_boundary": by(lambda r: {True: "near", False: "elsewhere"}.get(
                r.get("key_near_segment_boundary"), "unknown")),
            "by_key_digits": by(lambda r: key_digit_pattern(r["answer"])),
            "misses": summarize_misses(records, correct_field="exact")}


def _fresh_results(results_dir: str, model_id: dict | None) -> None:
    """Keeps the finished samples of ``results_dir`` only if they were produced by the same model."""
    if model_id is None:
        return
    path = os.path.join(results_dir, MODEL_ID_FILE)
    previous = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    if previous != model_id:
        if os.path.isdir(results_dir):
            shutil.rmtree(results_dir)
        os.makedirs(results_dir)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(model_id, f)


def evaluation_batcher(tokenizer, segment_length: int, *, num_digits: int = 5,
                       haystack_names: Iterable[str] = ("classic", "varied"), varied_haystack: str = "generated",
                       varied_seed: int = 12345) -> PasskeyBatcher:
    """The prompt builder of the evaluation: one haystack per name, where "varied" is the training style
    (``varied_haystack``) with held-out text (``varied_seed``) and any other name a ``haystack_text`` kind.
    The defaults are those of the training configs' evaluation (``configs/train_common.py``)."""
    texts = {name: haystack_text(varied_haystack, seed=varied_seed) if name == "varied" else haystack_text(name)
             for name in haystack_names}
    return PasskeyBatcher(tokenizer, segment_length=segment_length, num_digits=num_digits, haystacks=texts)


def config_evaluation_batcher(config, tokenizer, segment_length: int,
                              varied_seed: int | None = None) -> PasskeyBatcher:
    """:func:`evaluation_batcher` with a training config's evaluation haystacks (``eval.haystacks``), key length
    (``data.num_digits``), varied style (``data.varied_haystack``) and held-out text (``varied_seed``, default
    ``eval.varied_seed``)."""
    ev, d = _get(config, "eval"), config.data
    return evaluation_batcher(tokenizer, segment_length, num_digits=int(_get(d, "num_digits", 5)),
                              haystack_names=list(_get(ev, "haystacks", ("classic", "varied"))),
                              varied_haystack=str(_get(d, "varied_haystack", "generated")),
                              varied_seed=int(_get(ev, "varied_seed", 12345) if varied_seed is None else varied_seed))


def run_eval(config, model: InfiniLlama, tokenizer, workdir: str | os.PathLike,
             model_id: dict | None = None) -> dict[str, Any] | None:
    """The evaluation described by ``config.eval`` (a training config); None when disabled.

    Writes ``workdir/eval/results.jsonl`` (+ summary.json, heatmap.png) and ``workdir/eval.json``. Samples already
    in ``results.jsonl`` are reused when ``model_id`` (e.g. the training step) matches the one they were made with.
    """
    ev = _get(config, "eval")
    if ev is None or not bool(_get(ev, "enabled", True)):
        return None
    d = config.data
    names = list(_get(ev, "haystacks", ("classic", "varied")))
    batcher = config_evaluation_batcher(config, tokenizer, model.cfg.segment_length)
    workdir = os.fspath(workdir)
    results_dir = os.path.join(workdir, EVAL_DIR)
    if model_id is not None:  # what decides a prompt besides its id: a change starts the evaluation afresh
        model_id = {**model_id, "eval": {"seed": int(_get(ev, "seed", 1234)), "num_digits": batcher.num_digits,
                                         "haystacks": names, "varied_seed": int(_get(ev, "varied_seed", 12345)),
                                         "varied_haystack": str(_get(d, "varied_haystack", "generated"))}}
    _fresh_results(results_dir, model_id)
    t0 = time.perf_counter()
    summary = evaluate_passkey(
        model, tokenizer, batcher, context_lengths=_get(ev, "context_lengths", ()),
        depths=_get(ev, "depths", (0, 50, 100)), num_samples=int(_get(ev, "num_samples", 2)), haystack_names=names,
        seed=int(_get(ev, "seed", 1234)), batch_size=int(_get(ev, "batch_size", 8)),
        prefill_chunk_tokens=_get(ev, "prefill_chunk_tokens"), results_dir=results_dir)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with open(os.path.join(workdir, EVAL_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    if summary["overall"]["num_samples"]:
        try:
            from infini_jax import analyze

            analyze.write_summary(results_dir, segment_length=model.cfg.segment_length,
                                  model_name="trained (infini_jax.train)")
        except Exception as e:  # the heatmap is a bonus; eval.json is the result
            logging.warning("Could not write the eval summary / heatmap: %s", e)
    logging.info("Final evaluation: exact match %s overall; per context length %s", summary["overall"]["exact_match"],
                 {k: v["exact_match"] for k, v in summary["by_context_length"].items()})
    if summary["misses"]["num_misses"]:
        logging.info("%s", format_misses(summary["misses"]))
    return summary
