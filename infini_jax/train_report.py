"""What finished training runs say, side by side: their training logs and their evaluations (uses no JAX).

A run's outcome on a GPU is a draw (docs/training.md, seventh session: the same config and seeds trained twice gave
52-71% and then 97-99%), so recipes are compared by counting the runs that meet a target. For each run this reads

* its ``metrics.jsonl``: steps, stage transitions (step, progress, the accuracy the gate saw, why), the first
  logged step with far-needle training accuracy >= 0.5 and >= 0.9, the mean far-needle accuracy of the first
  stage's last ``stage_window_steps`` steps, and of the run's last ``closing_window_steps`` steps (the figure the
  training job warns on);
* any number of evaluation ``results.jsonl`` files (the training job's ``eval/``, or ``--config.eval_only`` runs
  at other lengths or eval seeds), pooled per context length;
* the virtual-length probe's exact match per r and the cut-key probe's (``probe.json`` of the workdir or of an
  evaluation directory);

and checks the pooled exact match against a target (default: the demo model's, >= 99% at 32K, 128K and 1M tokens
and >= 95% at 16M). ``scripts/training_runs.py`` is the command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infini_jax.miss_kinds import format_misses, summarize_misses
from infini_jax.results import read_results

CLOSING_WINDOW_STEPS = 500  # the training job's end-of-run figure (far_accuracy_last_500_steps)
STAGE_WINDOW_STEPS = 2000
DEMO_TARGET: dict[int, float] = {32768: 0.99, 131072: 0.99, 1048576: 0.99, 16777216: 0.95}


def read_metric_lines(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every readable line of a ``metrics.jsonl`` (a line cut short by a crash is skipped);
    [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def _far_accuracies(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(step, far-needle accuracy) of the logged training intervals that had a far needle."""
    return [(int(r["step"]), float(r["far_accuracy"])) for r in records
            if "loss" in r and r.get("far_accuracy") is not None]


def mean_far_accuracy(records: Iterable[Mapping[str, Any]], last_step: int, window_steps: int) -> float | None:
    """Mean far-needle training accuracy of the logged intervals ending in ``(last_step - window_steps,
    last_step]``; None when none of them had a far needle (e.g. text-only data)."""
    values = [a for s, a in _far_accuracies(records) if last_step - window_steps < s <= last_step]
    return sum(values) / len(values) if values else None


def closing_far_accuracy(records, last_step: int, window_steps: int = CLOSING_WINDOW_STEPS) -> float | None:
    """The training job's end-of-run figure: :func:`mean_far_accuracy` over the last ``window_steps`` steps."""
    return mean_far_accuracy(records, last_step, window_steps)


def training_log_summary(metrics_path: str | os.PathLike, *, closing_window_steps: int = CLOSING_WINDOW_STEPS,
                         stage_window_steps: int = STAGE_WINDOW_STEPS) -> dict[str, Any]:
    """The figures of one run's ``metrics.jsonl`` (see the module docstring)."""
    records = [rec for _, rec in read_metric_lines(metrics_path)]
    far = _far_accuracies(records)
    if not far:
        raise ValueError(f"{metrics_path}: no logged training interval with a far-needle accuracy: pass the "
                         "metrics.jsonl of a passkey training run (its workdir).")
    last_step = max(int(r["step"]) for r in records if "loss" in r)
    exits = [{"from": r["from"], "to": r["to"], "step": int(r["step"]), "progress": float(r["progress"]),
              "far_accuracy": r.get("far_accuracy"), "reason": r.get("reason")}
             for r in records if r.get("event") == "stage" and "from" in r]
    stage_0_end = exits[0]["step"] if exits else last_step
    first = {f"first_step_far_accuracy_ge_{t}": next((s for s, a in far if a >= t), None) for t in (0.5, 0.9)}
    return {"steps": last_step, "stage_exits": exits, **first,
            f"stage_0_far_accuracy_last_{stage_window_steps}_steps": mean_far_accuracy(records, stage_0_end,
                                                                                       stage_window_steps),
            f"far_accuracy_last_{closing_window_steps}_steps": closing_far_accuracy(records, last_step,
                                                                                    closing_window_steps)}


def exact_match_by_length(results: Iterable[str | os.PathLike]) -> dict[int, tuple[int, int]]:
    """{context length: (exact, prompts)} pooled over evaluation results files or directories."""
    return pooled_exact_match(read_results(list(results)))


def pooled_exact_match(records: Iterable[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """{context length: (exact, prompts)} over evaluation records (a training job's: with ``exact``)."""
    pooled: dict[int, list[int]] = {}
    for record in records:
        if "context_length" not in record or "exact" not in record:
            raise ValueError(f"Result record {record.get('id')!r} lacks context_length / exact: pass the results of "
                             "a training job's evaluation (its eval/, or an --config.eval_only workdir's).")
        counts = pooled.setdefault(int(record["context_length"]), [0, 0])
        counts[0] += bool(record["exact"])
        counts[1] += 1
    return {length: (ok, n) for length, (ok, n) in sorted(pooled.items())}


def target_shortfalls(by_length: Mapping[int, tuple[int, int]], target: Mapping[int, float]) -> list[str]:
    """What keeps a run from the target: lengths not evaluated, or below their minimum exact match ([] = met)."""
    out = []
    for length, need in sorted(target.items()):
        if length not in by_length:
            out.append(f"{_short(length)}: not evaluated")
            continue
        ok, n = by_length[length]
        if ok < need * n - 1e-9:
            out.append(f"{_short(length)}: {ok}/{n} = {ok / n:.1%} < {_percent(need)}")
    return out


def parse_target(text: str) -> dict[int, float]:
    """``"32768:0.99,16777216:0.95"`` -> {32768: 0.99, 16777216: 0.95}."""
    target = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        length, sep, need = item.partition(":")
        try:
            length_tokens, minimum = int(length), float(need)
        except ValueError:
            length_tokens, minimum = 0, -1.0
        if not sep or length_tokens <= 0 or not 0 <= minimum <= 1:
            raise ValueError(f"Bad target entry {item!r}: write <context length>:<minimum exact match in [0, 1]>, "
                             "e.g. 32768:0.99.")
        target[length_tokens] = minimum
    if not target:
        raise ValueError("The target is empty: write e.g. 32768:0.99,131072:0.99.")
    return target


def _probe_files(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The ``probe.json`` results found beside these workdirs or results, in order: in a directory, in a results
    file's directory, or in the run directory above an ``eval/`` one."""
    found = []
    for path in map(Path, paths):
        base = path.parent if path.is_file() else path
        for folder in (base, base.parent) if base.name == "eval" else (base,):
            probe = folder / "probe.json"
            if probe.is_file():
                found.append(json.loads(probe.read_text(encoding="utf-8")))
    return found


def probe_rates(paths: Iterable[str | os.PathLike]) -> dict[str, float] | None:
    """{virtual length r: exact match} of the first ``probe.json`` (the virtual-length probe,
    ``infini_jax.train_probe``) found beside these workdirs or results (``_probe_files``). None when there is
    none."""
    for result in _probe_files(paths):
        return {r: float(v["exact_match"]) for r, v in result["by_virtual_length"].items()}
    return None


def cut_key_rate(paths: Iterable[str | os.PathLike]) -> float | None:
    """The cut-key probe's exact match of the first ``probe.json`` found beside these workdirs or results that
    measured one (``probe.cut_keys_per_place`` and cut-key places at its length). None when none did."""
    for result in _probe_files(paths):
        rate = (result.get("cut_key") or {}).get("exact_match")
        if rate is not None:
            return float(rate)
    return None


def summarize_runs(runs: Sequence[tuple[str, str | os.PathLike, Sequence[str | os.PathLike]]],
                   target: Mapping[int, float] = DEMO_TARGET) -> dict[str, Any]:
    """``runs``: (name, training workdir, evaluation results files or directories). Returns per run its log
    summary, its virtual-length and cut-key probes (``probe.json`` of the workdir or of an evaluation directory),
    pooled exact match per length, the inexact answers by kind (``infini_jax.miss_kinds``), target shortfalls, and
    how many runs met the target."""
    out = []
    for name, workdir, results in runs:
        summary = training_log_summary(Path(workdir) / "metrics.jsonl")
        records = read_results(list(results)) if results else []  # read once for the rates and the misses
        by_length = pooled_exact_match(records)
        short = target_shortfalls(by_length, target)
        out.append({"name": name, "workdir": str(workdir), **summary,
                    "probe_exact_match": probe_rates([workdir, *results]),
                    "probe_cut_key_exact_match": cut_key_rate([workdir, *results]),
                    "exact_match_by_context_length": {str(k): {"exact": ok, "of": n, "exact_match": ok / n}
                                                      for k, (ok, n) in by_length.items()},
                    "misses": summarize_misses(records, correct_field="exact") if results else None,
                    "meets_target": not short, "shortfalls": short})
    return {"target": {str(k): v for k, v in sorted(target.items())}, "runs": out,
            "runs_meeting_target": sum(r["meets_target"] for r in out), "num_runs": len(out)}


def markdown_table(summary: Mapping[str, Any]) -> str:
    """One row per run: training-log figures, exact match per evaluated length, the misses by kind and first wrong
    digit, the target verdict."""
    runs = summary["runs"]
    lengths = sorted({int(k) for r in runs for k in r["exact_match_by_context_length"]})
    stage_key = next((k for k in runs[0] if k.startswith("stage_0_far_accuracy_last_")), None) if runs else None
    closing_key = next((k for k in runs[0] if k.startswith("far_accuracy_last_")), None) if runs else None

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    probed = any(r.get("probe_exact_match") or r.get("probe_cut_key_exact_match") is not None for r in runs)
    head = ["run", "steps", "stage 0 exit", "first >= 0.5", "stage 0 mean", "closing"]
    head += ["probe"] if probed else []
    head += [_short(n) for n in lengths] + ["misses (kind; first wrong digit)", "target"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        exit0 = r["stage_exits"][0] if r["stage_exits"] else None
        cells = [r["name"], str(r["steps"]),
                 f"{exit0['step']} ({fmt(exit0['far_accuracy'])})" if exit0 else "-",
                 str(r["first_step_far_accuracy_ge_0.5"] or "-"), fmt(r.get(stage_key)), fmt(r.get(closing_key))]
        if probed:
            rates = [f"r {k}: {v:.3f}" for k, v in (r.get("probe_exact_match") or {}).items()]
            if r.get("probe_cut_key_exact_match") is not None:
                rates.append(f"cut key: {r['probe_cut_key_exact_match']:.3f}")
            cells.append(", ".join(rates) or "-")
        for n in lengths:
            e = r["exact_match_by_context_length"].get(str(n))
            cells.append("-" if e is None else f"{e['exact_match']:.1%} ({e['exact']}/{e['of']})")
        misses = r.get("misses")  # None: not evaluated
        cells.append("-" if misses is None else format_misses(misses).removeprefix("Misses: ") or "none")
        cells.append("met" if r["meets_target"] else "missed: " + "; ".join(r["shortfalls"]))
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(f"\n{summary['runs_meeting_target']} of {summary['num_runs']} runs meet the target "
                f"({', '.join(f'{_short(int(k))} >= {_percent(v)}' for k, v in summary['target'].items())}).")
    return "\n".join(rows)


def _percent(fraction: float) -> str:
    """0.99 -> '99%', 0.995 -> '99.5%'."""
    return f"{fraction * 100:.6g}%"


def _short(length: int) -> str:
    """1048576 -> '1M', 32768 -> '32K', 1000 -> '1000'."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if length >= size and length % size == 0:
            return f"{length // size}{unit}"
    return str(length)
