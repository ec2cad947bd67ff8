"""Analysis of passkey / needle results: ``summary.json``, a terminal report and ``heatmap.png``.

The equivalent of the nanotron fork's ``analyze_passkey_results.py``, reading the ``results.jsonl`` files
written by the evaluation (see ``infini_jax.results``)::

    python -m infini_jax.analyze results/passkey_1k results/passkey_16k [--quiet] [--json_only]
                                 [--segment_length 1024]

``summary.json`` keeps the fork's fields (model, context_length, total_samples, results_by_depth,
summary_stats, segment_analysis, performance) and adds accuracy by context length, by depth x context
length (the heatmap) and by segments back (query segment minus needle segment), strict accuracy, and the misses
by kind and first wrong digit (``misses``; ``infini_jax.miss_kinds``).

Differences from the fork:

* the category thresholds use the real segment count, ``ceil(context_length / segment_length)``
  (or the records' ``num_segments``; ``ceil(context_length / 1024)`` when neither is known). The fork
  meant to do this but read the context length as ``numpy.int64``, failed its ``isinstance(x, (int,
  float))`` check and always applied the single-segment thresholds;
* "within / cross segment" compares samples whose needle is in the query's own segment with those
  whose needle is in an earlier one (the fork split depth <= 50 from > 50, a heuristic kept only as a
  fallback when the needle position is unknown);
* scoring is nanotron's ``answer in generation`` (the fork also accepted e.g. a bare "1" for 1234);
* everything is plain Python numbers, so the summary is always JSON serialisable;
* with several context lengths each one is reported and categorised; the overall category uses the
  segment count of the largest context length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable

from infini_jax.miss_kinds import format_misses, summarize_misses
from infini_jax.results import RESULTS_FILENAME, read_results, score, segment_info

SUMMARY_FILENAME = "summary.json"
HEATMAP_FILENAME = "heatmap.png"
FALLBACK_SEGMENT_LENGTH = 1024  # the fork's ctx / 1024
BAR_WIDTH = 32
RULE, THIN = "=" * 70, "-" * 70
STATUS_SYMBOL = {"OK": "✓", "WARN": "⚠", "FAIL": "✗"}
_MESSAGES = {
    "EXCELLENT": (
        "Excellent retrieval within segment",
        "Excellent retrieval across {n} segments: the memory carries the pass key",
    ),
    "VERY_GOOD": ("Strong performance within segment", "Strong cross-segment retrieval over {n} segments"),
    "GOOD": ("Good performance within segment", "Good cross-segment retrieval over {n} segments"),
    "FAIR": (
        "Fair performance: retrieval is unreliable within one segment",
        "Fair: retrieval degrades across {n} segments (check balance_factor_lr / segment_length)",
    ),
    "POOR": (
        "Poor performance: the pass key is not retrieved",
        "Poor: the pass key is lost across {n} segments (is the memory working?)",
    ),
}


# ----------------------------------------------------------------------------- helpers


def _num(x: float) -> int | float:
    """A plain int when ``x`` is integral, else a plain float."""
    x = float(x)
    return int(x) if x.is_integer() else x


def _pct(correct: int, n: int) -> float:
    return round(100.0 * correct / n, 4) if n else 0.0


def _fmt_depth(d: float | None) -> str:
    return "n/a" if d is None else f"{_num(d)}"


def _depth_key(d: float | None) -> tuple[bool, float]:
    """Sort key of depths; unknown depths (None) last."""
    return (d is None, 0.0 if d is None else float(d))


def categorize(average_accuracy: float, segment_count: int) -> dict:
    """The fork's performance category, with thresholds lowered by ``min(20, 5 * segments)`` points."""
    deg = 0 if segment_count <= 1 else min(20, 5 * segment_count)
    thresholds = (95, 90, 80, 70) if segment_count <= 1 else (95 - deg, 85 - deg, 75 - deg, 65 - deg)
    names = ("EXCELLENT", "VERY_GOOD", "GOOD", "FAIR")
    category = next((c for c, t in zip(names, thresholds, strict=True) if average_accuracy >= t), "POOR")
    status = {"FAIR": "WARN", "POOR": "FAIL"}.get(category, "OK")
    single, multi = _MESSAGES[category]
    return {
        "category": category,
        "status": status,
        "message": single if segment_count <= 1 else multi.format(n=segment_count),
        "expected_degradation": deg,
        "segment_count": int(segment_count),
    }


def consistency(std_dev: float) -> str:
    """CONSISTENT (< 15 points std across depths), INCONSISTENT (< 25) or VERY_INCONSISTENT."""
    return "CONSISTENT" if std_dev < 15 else "INCONSISTENT" if std_dev < 25 else "VERY_INCONSISTENT"


def _normalise(records: Iterable[dict], segment_length: int | None) -> list[dict]:
    """Plain copies of the records with scores and (when computable) segments filled in."""
    out = []
    for r in records:
        r = dict(r)
        if "correct" not in r or "correct_strict" not in r:
            c, s = score(str(r.get("answer", "")), str(r.get("generation", "")))
            r.setdefault("correct", c)
            r.setdefault("correct_strict", s)
        r["correct"], r["correct_strict"] = bool(r["correct"]), bool(r["correct_strict"])
        r["context_length"] = int(r.get("context_length") or 0)
        d = r.get("depth_percent")
        r["depth_percent"] = None if d is None or math.isnan(float(d)) else float(d)
        if segment_length and r.get("needle_token_index") is not None and r.get("num_tokens"):
            r["needle_segment"], r["num_segments"] = segment_info(
                r["needle_token_index"], int(r["num_tokens"]), segment_length
            )
        out.append(r)
    return out


def _group_stats(recs: list[dict]) -> dict:
    n, c = len(recs), sum(r["correct"] for r in recs)
    cs = sum(r["correct_strict"] for r in recs)
    return {
        "accuracy": _pct(c, n),
        "num_samples": n,
        "correct": c,
        "strict_accuracy": _pct(cs, n),
        "correct_strict": cs,
    }


def _segment_count(ctx: int, recs: list[dict], segment_length: int | None) -> int:
    if segment_length:
        return max(1, math.ceil(ctx / segment_length))
    known = [int(r["num_segments"]) for r in recs if r.get("num_segments")]
    if known:
        return max(known)
    return max(1, math.ceil(ctx / FALLBACK_SEGMENT_LENGTH))


def _by_depth(recs: list[dict]) -> list[dict]:
    groups: dict[float | None, list[dict]] = defaultdict(list)
    for r in recs:
        groups[r["depth_percent"]].append(r)
    return [
        {"depth_percent": None if d is None else _num(d), **_group_stats(groups[d])}
        for d in sorted(groups, key=_depth_key)
    ]


def _stats(by_depth: list[dict]) -> dict:
    accs = [d["accuracy"] for d in by_depth]
    lo = min(by_depth, key=lambda d: d["accuracy"])
    hi = max(by_depth, key=lambda d: d["accuracy"])
    return {
        "average_accuracy": round(statistics.fmean(accs), 4),
        "std_dev": round(statistics.pstdev(accs), 4),
        "min_accuracy": lo["accuracy"],
        "max_accuracy": hi["accuracy"],
        "min_depth": lo["depth_percent"],
        "max_depth": hi["depth_percent"],
    }


def _segment_analysis(recs: list[dict], segment_length: int | None, segment_count: int) -> dict:
    known = [r for r in recs if r.get("needle_segment") is not None and r.get("num_segments")]
    if known:
        method = "needle_segment"
        within = [r for r in known if int(r["needle_segment"]) >= int(r["num_segments"]) - 1]
        cross = [r for r in known if int(r["needle_segment"]) < int(r["num_segments"]) - 1]
    else:  # the fork's heuristic
        method = "depth_heuristic"
        within = [r for r in recs if r["depth_percent"] is not None and r["depth_percent"] <= 50]
        cross = [r for r in recs if r["depth_percent"] is not None and r["depth_percent"] > 50]

    def avg(group):
        return _pct(sum(r["correct"] for r in group), len(group)) if group else None

    return {
        "method": method,
        "segment_length": segment_length,
        "num_segments": segment_count,
        "within_segment_avg": avg(within),
        "cross_segment_avg": avg(cross),
        "within_segment_count": len(within),
        "cross_segment_count": len(cross),
    }


def _by_segments_back(recs: list[dict]) -> list[dict]:
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in recs:
        if r.get("needle_segment") is not None and r.get("num_segments"):
            groups[int(r["num_segments"]) - 1 - int(r["needle_segment"])].append(r)
    return [{"segments_back": k, **_group_stats(groups[k])} for k in sorted(groups)]


# ----------------------------------------------------------------------------- summary


def summarize(
    records: Iterable[dict], *, model_name: str = "Infini-Attention", segment_length: int | None = None
) -> dict:
    """The summary of a list of result records (see ``infini_jax.results`` for their fields)."""
    recs = _normalise(records, segment_length)
    if not recs:
        raise ValueError(
            "No result records to summarise: run the evaluation first (it writes results.jsonl)."
        )
    by_ctx: dict[int, list[dict]] = defaultdict(list)
    for r in recs:
        by_ctx[r["context_length"]].append(r)
    largest = max(by_ctx)
    seg_counts = {ctx: _segment_count(ctx, by_ctx[ctx], segment_length) for ctx in by_ctx}

    by_depth = _by_depth(recs)
    stats = _stats(by_depth)
    perf = categorize(stats["average_accuracy"], seg_counts[largest])
    perf["consistency"] = consistency(stats["std_dev"])

    per_ctx = []
    for ctx in sorted(by_ctx):
        ctx_depths = _by_depth(by_ctx[ctx])
        ctx_stats = _stats(ctx_depths)
        cat = categorize(ctx_stats["average_accuracy"], seg_counts[ctx])
        per_ctx.append(
            {
                "context_length": ctx,
                **_group_stats(by_ctx[ctx]),
                "num_segments": seg_counts[ctx],
                "average_accuracy": ctx_stats["average_accuracy"],
                "std_dev": ctx_stats["std_dev"],
                "category": cat["category"],
                "status": cat["status"],
            }
        )
    heat = [
        {
            "context_length": ctx,
            "depth_percent": d["depth_percent"],
            "accuracy": d["accuracy"],
            "num_samples": d["num_samples"],
            "correct": d["correct"],
        }
        for ctx in sorted(by_ctx)
        for d in _by_depth(by_ctx[ctx])
    ]

    total = _group_stats(recs)
    summary = {
        "model": model_name,
        "segment_length": segment_length,
        "context_length": largest,
        "context_lengths": sorted(by_ctx),
        "total_samples": total["num_samples"],
        "total_correct": total["correct"],
        "overall_accuracy": total["accuracy"],
        "overall_strict_accuracy": total["strict_accuracy"],
        "results_by_depth": by_depth,
        "summary_stats": stats,
        "segment_analysis": _segment_analysis(recs, segment_length, seg_counts[largest]),
        "performance": perf,
        "results_by_context_length": per_ctx,
        "results_by_depth_and_context_length": heat,
        "results_by_segments_back": _by_segments_back(recs),
        "misses": summarize_misses(recs),
    }
    json.dumps(summary)  # fail here, not later, if anything is not JSON serialisable
    return summary


# ----------------------------------------------------------------------------- report


def _bar(accuracy: float) -> str:
    return "█" * round(accuracy / 100 * BAR_WIDTH)


def _bar_line(label: str, g: dict, suffix: str = "") -> str:
    counts = f"({g['correct']}/{g['num_samples']})"
    return f"{label}: {_bar(g['accuracy']):<{BAR_WIDTH}} {g['accuracy']:6.2f}% {counts}{suffix}"


def _summary_lines(s: dict) -> list[str]:
    st, perf = s["summary_stats"], s["performance"]
    return [
        "SUMMARY STATISTICS:",
        f"Average Accuracy: {st['average_accuracy']:.2f}%",
        f"Std Deviation: {st['std_dev']:.2f}%",
        f"Min Accuracy: {st['min_accuracy']:.2f}% (at depth {_fmt_depth(st['min_depth'])}%)",
        f"Max Accuracy: {st['max_accuracy']:.2f}% (at depth {_fmt_depth(st['max_depth'])}%)",
        f"Overall Accuracy: {s['overall_accuracy']:.2f}% ({s['total_correct']}/{s['total_samples']}), "
        f"strict: {s['overall_strict_accuracy']:.2f}%",
        *([format_misses(s["misses"])] if (s.get("misses") or {}).get("num_misses") else []),
        "",
        THIN,
        "PERFORMANCE ASSESSMENT:",
        f"{STATUS_SYMBOL[perf['status']]} {perf['category']}: {perf['message']}",
        f"Consistency: {perf['consistency']} (std dev: {st['std_dev']:.2f}%)",
    ]


def format_report(summary: dict, summary_path: str | None = None, *, quiet: bool = False) -> str:
    """The terminal report in the style of the fork's analyze_passkey_results.py."""
    s = summary
    seg = f" (segment_length={s['segment_length']})" if s.get("segment_length") else ""
    ctxs = ", ".join(str(c) for c in s["context_lengths"])
    lines: list[str] = []
    if not quiet:
        lines += [
            RULE,
            f"PASSKEY RETRIEVAL ANALYSIS - {s['model'].upper()} MODEL",
            RULE,
            f"Model: {s['model']}{seg}",
            f"Context Length: {ctxs} tokens",
            f"Total Samples: {s['total_samples']}",
            f"Expected Segments: {s['performance']['segment_count']}",
            RULE,
        ]
        lines += [_bar_line(f"Depth {_fmt_depth(d['depth_percent']):>3}%", d) for d in s["results_by_depth"]]
        if len(s["results_by_context_length"]) > 1:
            lines += ["", THIN, "BY CONTEXT LENGTH:"]
            lines += [
                _bar_line(
                    f"Context {c['context_length']:>8}", c, f" [{c['num_segments']} seg, {c['category']}]"
                )
                for c in s["results_by_context_length"]
            ]
        back = s["results_by_segments_back"]
        if back and (len(back) > 1 or back[0]["segments_back"] != 0):
            lines += ["", THIN, "BY SEGMENTS BACK (query segment - needle segment):"]
            lines += [_bar_line(f"Back {b['segments_back']:>5}", b) for b in back]
        lines += ["", THIN]
    lines += _summary_lines(s)
    if summary_path:
        lines += ["", f"Detailed summary saved to: {summary_path}"]
    return "\n".join(lines)


def format_comparison(summaries: dict[str, dict]) -> str:
    """A side-by-side table of several results directories."""
    header = (
        f"{'results dir':<40} {'context lengths':<20} {'samples':>8} {'accuracy':>9} {'strict':>8}  category"
    )
    lines = [RULE, "COMPARISON", RULE, header, THIN]
    for d, s in summaries.items():
        name = d if len(d) <= 40 else "..." + d[-37:]
        ctx = ",".join(str(c) for c in s["context_lengths"])
        lines.append(
            f"{name:<40} {ctx:<20} {s['total_samples']:>8} {s['overall_accuracy']:>8.2f}% "
            f"{s['overall_strict_accuracy']:>7.2f}%  {s['performance']['category']}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- heatmap


def plot_heatmap(
    records: Iterable[dict] | dict,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    segment_length: int | None = None,
) -> str:
    """Writes the depth (rows) x context length (columns) accuracy heatmap, red (0%) to green (100%).

    ``records`` may also be a summary from ``summarize``.
    """
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    summary = records if isinstance(records, dict) else summarize(records, segment_length=segment_length)
    cells = summary["results_by_depth_and_context_length"]
    ctxs = sorted({c["context_length"] for c in cells})
    depths = sorted({c["depth_percent"] for c in cells}, key=_depth_key)
    grid = np.full((len(depths), len(ctxs)), np.nan)
    for c in cells:
        grid[depths.index(c["depth_percent"]), ctxs.index(c["context_length"])] = c["accuracy"]

    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    cmap = cmap.with_extremes(bad="#DDDDDD")
    fig = Figure(figsize=(max(6.0, 2.0 + 0.9 * len(ctxs)), max(4.0, 1.2 + 0.38 * len(depths))))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(ctxs)):
            text = "–" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black")
    ax.set_xticks(range(len(ctxs)), [str(c) for c in ctxs], rotation=45 if len(ctxs) > 6 else 0)
    ax.set_yticks(range(len(depths)), [_fmt_depth(d) for d in depths])
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Depth (%)")
    ax.set_title(title or f"{summary['model']}: pass key retrieval accuracy (%)", fontsize=10)
    fig.colorbar(im, ax=ax, label="Accuracy (%)")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    return os.fspath(path)


# ----------------------------------------------------------------------------- files and CLI


def write_summary(
    results_dir: str | os.PathLike,
    records: list[dict] | None = None,
    *,
    model_name: str = "Infini-Attention",
    segment_length: int | None = None,
    heatmap: bool = True,
) -> dict:
    """Summarises ``results_dir/results.jsonl`` into ``summary.json`` (and ``heatmap.png``) there."""
    results_dir = os.fspath(results_dir)
    if records is None:
        if not os.path.isfile(os.path.join(results_dir, RESULTS_FILENAME)):
            raise ValueError(
                f"{results_dir!r} has no {RESULTS_FILENAME}: pass a directory written by the "
                "evaluation (python main.py --config=configs/<job>.py writes it)."
            )
        records = read_results(results_dir)
    summary = summarize(records, model_name=model_name, segment_length=segment_length)
    with open(os.path.join(results_dir, SUMMARY_FILENAME), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    if heatmap:
        plot_heatmap(summary, os.path.join(results_dir, HEATMAP_FILENAME))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infini_jax.analyze", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", help="results directories (each holding results.jsonl)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary lines")
    parser.add_argument(
        "--json_only",
        "--json-only",
        dest="json_only",
        action="store_true",
        help="print only the summary JSON",
    )
    parser.add_argument(
        "--segment_length",
        "--segment-length",
        dest="segment_length",
        type=int,
        default=None,
        help="the model's segment length (segments are then computed from needle positions)",
    )
    parser.add_argument("--model_name", "--model-name", dest="model_name", default="Infini-Attention")
    parser.add_argument("--no_heatmap", "--no-heatmap", dest="heatmap", action="store_false")
    args = parser.parse_args(argv)

    for d in args.dirs:
        if not os.path.isfile(os.path.join(d, RESULTS_FILENAME)):
            print(
                f"error: {d!r} has no {RESULTS_FILENAME}: pass directories written by the evaluation.",
                file=sys.stderr,
            )
            return 2
    summaries: dict[str, dict] = {}
    for d in args.dirs:
        summaries[d] = write_summary(
            d, model_name=args.model_name, segment_length=args.segment_length, heatmap=args.heatmap
        )
        if not args.json_only:
            if len(args.dirs) > 1 or args.quiet:
                print(f"\n=== {d} ===")
            print(format_report(summaries[d], os.path.join(d, SUMMARY_FILENAME), quiet=args.quiet))
    if args.json_only:
        out = summaries[args.dirs[0]] if len(args.dirs) == 1 else summaries
        print(json.dumps(out, indent=2))
    elif len(args.dirs) > 1:
        print()
        print(format_comparison(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
