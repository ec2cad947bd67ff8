"""Finished training runs side by side, and how many meet a target (``infini_jax.train_report``).

A run is ``NAME=WORKDIR`` (the training job's workdir: its metrics.jsonl, and its eval/ when the job evaluated)
or ``NAME=WORKDIR,EVAL[,EVAL...]`` with more evaluations to pool with WORKDIR/eval (``--config.eval_only``
workdirs, their eval/ folders or results.jsonl files, e.g. at other lengths or eval seeds)::

    python scripts/training_runs.py G0=runs/G0,runs/G0_eval,runs/G0_16M G1=runs/G1,runs/G1_eval \\
        --json runs/summary.json

Prints a markdown table (closing far-needle accuracy, stage-0 exit and trajectory, the probes, exact match per
length, the misses by kind and first wrong digit, the target verdict) and, with ``--json``, writes every figure.
Default target: the demo model's (>= 99% at 32K, 128K and 1M, >= 95% at 16M); ``--target 8192:0.99,16384:0.99``
sets another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax.results import results_path  # noqa: E402
from infini_jax.train_report import DEMO_TARGET, markdown_table, parse_target, summarize_runs  # noqa: E402


def parse_run(spec: str) -> tuple[str, Path, list[Path]]:
    """``NAME=WORKDIR[,EVAL...]`` -> (name, workdir, results files): WORKDIR/eval when present, then each EVAL
    (a results.jsonl, a folder holding one, or an eval_only workdir holding eval/results.jsonl), each file once."""
    name, sep, paths = spec.partition("=")
    parts = [Path(p).expanduser() for p in paths.split(",") if p]
    if not sep or not name or os.sep in name or not parts:
        raise SystemExit(f"Bad run {spec!r}: write NAME=WORKDIR or NAME=WORKDIR,EVAL,... (e.g. G0=runs/G0).")
    workdir = parts[0]
    if not (workdir / "metrics.jsonl").is_file():
        raise SystemExit(f"{workdir} has no metrics.jsonl: the first path of {name!r} must be a training workdir.")
    files: list[Path] = []
    for candidate in ([workdir / "eval"] if (workdir / "eval" / "results.jsonl").is_file() else []) + parts[1:]:
        if (candidate / "eval" / "results.jsonl").is_file():
            candidate = candidate / "eval"
        path = Path(results_path(candidate)).resolve()
        if not path.is_file():
            raise SystemExit(f"{candidate}: no evaluation results there (pass a results.jsonl, a folder holding one, "
                             "or an eval_only workdir).")
        if path not in files:
            files.append(path)
    return name, workdir, files


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR[,EVAL_RESULTS...]")
    parser.add_argument("--target", default=",".join(f"{k}:{v}" for k, v in DEMO_TARGET.items()),
                        help="length:minimum exact match, comma-separated (default: the demo model's targets)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    runs = [parse_run(spec) for spec in args.runs]
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        raise SystemExit(f"Run names must differ: {names}.")
    try:
        summary = summarize_runs(runs, parse_target(args.target))
    except ValueError as err:  # bad target, results without exact match, a run without far-needle accuracy
        raise SystemExit(str(err)) from None
    print(markdown_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
