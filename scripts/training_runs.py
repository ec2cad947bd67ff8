"""Finished training runs side by side, and how many meet a target (``infini_jax.train_report``).

A run is ``NAME=WORKDIR`` (the training job's workdir: its metrics.jsonl, and its eval/ when the job evaluated)
or ``NAME=WORKDIR,EVAL[,EVAL...]`` with evaluation results files or directories to pool (``--config.eval_only``
runs at other lengths or eval seeds)::

    python scripts/training_runs.py G0=runs/G0,runs/G0_eval,runs/G0_16M G1=runs/G1,runs/G1_eval \\
        --json runs/summary.json

Prints a markdown table (closing far-needle accuracy, stage-0 exit and trajectory, exact match per length, the
target verdict) and, with ``--json``, writes every figure. Default target: the demo model's (>= 99% at 32K,
128K and 1M, >= 95% at 16M); ``--target 8192:0.99,16384:0.99`` sets another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infini_jax.train_report import DEMO_TARGET, markdown_table, parse_target, summarize_runs


def parse_run(spec: str) -> tuple[str, Path, list[Path]]:
    """``NAME=WORKDIR[,EVAL...]`` -> (name, workdir, evaluation results). Without EVAL: WORKDIR/eval if present."""
    name, sep, paths = spec.partition("=")
    parts = [Path(p) for p in paths.split(",") if p]
    if not sep or not name or not parts:
        raise SystemExit(f"Bad run {spec!r}: write NAME=WORKDIR or NAME=WORKDIR,EVAL_DIR,... (e.g. G0=runs/G0).")
    workdir, evals = parts[0], parts[1:]
    if not (workdir / "metrics.jsonl").is_file():
        raise SystemExit(f"{workdir} has no metrics.jsonl: the first path of {name!r} must be a training workdir.")
    if not evals and (workdir / "eval" / "results.jsonl").is_file():
        evals = [workdir / "eval"]
    return name, workdir, [e / "eval" if (e / "eval" / "results.jsonl").is_file() else e for e in evals]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR[,EVAL_RESULTS...]")
    parser.add_argument("--target", default=",".join(f"{k}:{v}" for k, v in DEMO_TARGET.items()),
                        help="length:minimum exact match, comma-separated (default: the demo model's targets)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    try:
        target = parse_target(args.target)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    summary = summarize_runs([parse_run(spec) for spec in args.runs], target)
    print(markdown_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
