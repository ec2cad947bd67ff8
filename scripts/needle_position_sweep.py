"""Teacher-forced pass-key answers at many needle positions of one prompt length: which places of the needle fail.

The evaluation's cells share their needle's place (one depth, one haystack), so a model that fails at one place
fails the whole cell. This script moves the needle in small depth steps (each snapped to a sentence end, as the
evaluation does), answers ``--keys_per_position`` keys at each distinct place with
``infini_jax.train_probe.teacher_forced_answers`` (exact under teacher forcing = what greedy decoding writes), and
reports where in its segment each copy of the key sits (the needle holds the key twice). The summary splits the
places by whether a segment boundary falls within ``--window`` tokens of a copy of the key (before, inside or
after it; ``infini_jax.train_data.key_copy_near_boundary``)::

    python scripts/needle_position_sweep.py --model infini_jax/assets/demo_model --length 16384 --haystack varied

Writes one JSON line per place to ``--out`` (if given) and prints the summary. CPU, fp32.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from infini_jax import load_model
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.tokenizer import load_tokenizer
from infini_jax.train_data import PasskeyBatcher, key_copy_near_boundary
from infini_jax.train_eval import evaluation_batcher
from infini_jax.train_probe import jitted_forward, teacher_forced_answers

HAYSTACKS = ("classic", "varied")


def sweep(forward, batcher: PasskeyBatcher, length: int, source: int, depths, keys_per_position: int,
          rng: np.random.Generator) -> list[dict]:
    """One record per distinct needle place: depth, needle start, copy offsets, keys, answers, exact flags."""
    records, seen = [], set()
    for depth in depths:
        _, start = batcher.eval_prompts(["1" * batcher.num_digits], length, float(depth), source)
        start = int(start[0])
        if start in seen:
            continue
        seen.add(start)
        keys = ["".join(map(str, k)) for k in batcher.draw_keys(rng, keys_per_position)]
        got = teacher_forced_answers(forward, batcher, keys, length, float(depth), source)
        first, second = (int(o) for o in batcher.key_copy_offsets(start))
        records.append({"depth": float(depth), "needle_start": start, "first_copy_offset": first,
                        "second_copy_offset": second, "keys": keys, "answers": got,
                        "exact": [k == g for k, g in zip(keys, got, strict=True)]})
    return records


def summarize(records: list[dict], num_digits: int, segment_length: int, window: int) -> dict:
    """Places (and failing places: any key wrong) near a boundary and elsewhere."""
    def near(r):
        return any(bool(key_copy_near_boundary(r[k], num_digits, segment_length, window))
                   for k in ("first_copy_offset", "second_copy_offset"))

    groups = {"near_boundary": [r for r in records if near(r)], "elsewhere": [r for r in records if not near(r)]}
    return {name: {"places": len(rs), "failing_places": sum(not all(r["exact"]) for r in rs),
                   "prompts": sum(len(r["exact"]) for r in rs), "wrong": sum(not e for r in rs for e in r["exact"])}
            for name, rs in groups.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="infini_jax/assets/demo_model")
    p.add_argument("--tokenizer", default=str(DEMO_TOKENIZER_PATH))
    p.add_argument("--length", type=int, default=16384, help="prompt tokens (a multiple of the segment length)")
    p.add_argument("--haystack", default="varied", choices=HAYSTACKS,
                   help="classic filler, or the held-out generated text of the training evaluation")
    p.add_argument("--depth_start", type=float, default=5.0)
    p.add_argument("--depth_stop", type=float, default=95.0)
    p.add_argument("--depth_step", type=float, default=0.5)
    p.add_argument("--keys_per_position", type=int, default=2)
    p.add_argument("--window", type=int, default=8, help="tokens from a boundary that count as near it")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=None, help="JSON lines, one per needle place")
    args = p.parse_args(argv)
    model = load_model(args.model, dtype="float32")
    seg = model.cfg.segment_length
    if args.length % seg:
        raise ValueError(f"--length {args.length} is not a multiple of the segment length {seg}.")
    batcher = evaluation_batcher(load_tokenizer(args.tokenizer), seg)
    forward = jitted_forward(model, batcher.num_digits)
    depths = np.arange(args.depth_start, args.depth_stop + 1e-9, args.depth_step)
    records = sweep(forward, batcher, args.length, HAYSTACKS.index(args.haystack), depths, args.keys_per_position,
                    np.random.default_rng(args.seed))
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    summary = summarize(records, batcher.num_digits, seg, args.window)
    print(json.dumps({"length": args.length, "haystack": args.haystack, "window": args.window, **summary}))
    for r in records:
        if not all(r["exact"]):
            print(f"depth {r['depth']:g}: key copies at segment offsets {r['first_copy_offset']} and "
                  f"{r['second_copy_offset']}: {list(zip(r['keys'], r['answers'], strict=True))}")
    return summary


if __name__ == "__main__":
    main()
