"""Teacher-forced answers of prompts whose answer opens a fresh segment, with optional write weights.

A prompt of exactly k x segment_length tokens makes the generated answer open a new segment; a model must then
continue the key from its compressive memory alone. This script appends each key to such prompts (the training
evaluation's layout, classic and held-out varied haystacks) and runs one forward pass per batch: the answer is
exact under teacher forcing exactly when greedy decoding writes it (every earlier digit is then right too). With
``--question_weights 1,4,16`` the question's memory writes are also counted 4x / 16x (``write_weight``), which
tests whether a model's errors depend on how strongly the question sits in the memory. With
``--haystack_weights 1,128,2048`` the haystack's memory writes count r times, as the training's virtual length
(``virtual_length_scope="haystack"``) counts them: an 8K prompt at r = 128 stands for a 1M-token one, so the
rates at r can be set beside the real long prompts' (the training's simulation against the real thing; at 8K with
``--haystack_weights 128 --keys_per_cell 4`` and depths 0-100 this is the training job's probe, ``train_probe``). With
``--repeated_digit_share 0.5`` half of the keys get a pair of equal adjacent digits (``55996``), and the rates are
also split between keys with and without such a pair::

    python scripts/aligned_answer_check.py --model infini_jax/assets/demo_model --lengths 2048,8192

Prints per (length, weights) the exact-match rate, per haystack too, and the wrong answers (key, teacher-forced
prediction). CPU, fp32.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from infini_jax import load_model
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.tokenizer import load_tokenizer
from infini_jax.train_data import key_digit_pattern
from infini_jax.train_eval import evaluation_batcher
from infini_jax.train_probe import jitted_forward, teacher_forced_answers


def has_adjacent_repeat(key: str) -> bool:
    """Whether ``key`` holds two equal adjacent digits (``55996``: yes; ``12608``: no)."""
    return key_digit_pattern(key) == "adjacent_pair"


def exact_rate(pairs: list[tuple[str, str]]) -> str:
    """``"0.950 (20)"``: the share of (key, prediction) pairs that agree, and their number."""
    if not pairs:
        return "- (0)"
    return f"{sum(k == g for k, g in pairs) / len(pairs):.3f} ({len(pairs)})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="infini_jax/assets/demo_model")
    p.add_argument("--tokenizer", default=str(DEMO_TOKENIZER_PATH))
    p.add_argument("--lengths", default="2048,8192", help="prompt lengths in tokens (multiples of the segment)")
    p.add_argument("--depths", default="10,30,50,70,90")
    p.add_argument("--keys_per_cell", type=int, default=2, help="keys per (depth, haystack)")
    p.add_argument("--question_weights", default="1")
    p.add_argument("--haystack_weights", default="1", help="virtual lengths r: the haystack's writes count r times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeated_digit_share", type=float, default=0.0,
                   help="fraction of keys given a pair of equal adjacent digits (0: uniform keys)")
    args = p.parse_args(argv)
    model = load_model(args.model, dtype="float32")
    seg = model.cfg.segment_length
    tok = load_tokenizer(args.tokenizer)
    batcher = evaluation_batcher(tok, seg)
    forward = jitted_forward(model, batcher.num_digits)  # compiled once per (batch, length)

    for length in [int(x) for x in args.lengths.split(",")]:
        if length % seg:
            raise ValueError(f"--lengths: {length} is not a multiple of the segment length {seg}.")
        for qw, hw in itertools.product([float(x) for x in args.question_weights.split(",")],
                                        [float(x) for x in args.haystack_weights.split(",")]):
            rng = np.random.default_rng(args.seed)
            pairs, by_haystack = [], {}
            for source, name in enumerate(s.name for s in batcher.sources):
                for depth in [float(x) for x in args.depths.split(",")]:
                    drawn = batcher.draw_keys(rng, args.keys_per_cell, args.repeated_digit_share)
                    keys = ["".join(map(str, k)) for k in drawn]
                    got = list(zip(keys, teacher_forced_answers(forward, batcher, keys, length, depth, source, qw, hw),
                                   strict=True))
                    pairs += got
                    by_haystack.setdefault(name, []).extend(got)
            wrong = [(k, g) for k, g in pairs if k != g]
            repeated = [pr for pr in pairs if has_adjacent_repeat(pr[0])]
            other = [pr for pr in pairs if not has_adjacent_repeat(pr[0])]
            per_haystack = ", ".join(f"{name} {exact_rate(got)}" for name, got in by_haystack.items())
            print(f"{length:>9} tokens, question weight {qw:g}, haystack weight {hw:g}: exact {exact_rate(pairs)} "
                  f"({per_haystack}); keys with a repeated adjacent digit {exact_rate(repeated)}, without "
                  f"{exact_rate(other)}; wrong: {wrong[:8]}", flush=True)


if __name__ == "__main__":
    main()
