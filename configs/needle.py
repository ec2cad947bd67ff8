"""Needle in a haystack at one (context length, depth): nanotron's ``run_evals.py``.

    python main.py --config=configs/needle.py --config.ckpt_path=checkpoints/fineweb_200m_infini/200 \
        --config.context_length=8192 --config.depth_percent=25

reads ``nanotron/simple_needle_in_a_hay_stack`` (or ./simple_needle_in_a_hay_stack/*.parquet offline),
keeps the rows at that context_length and depth_percent (100 per pair, all of them unless num_samples is
set), generates 30 tokens and prints run_evals.py's block::

    EVALUATION RESULTS / Context Length / Depth Percent / Total Samples / Correct Predictions / Accuracy

Results are also saved (run_evals.py saved nothing): results.jsonl, summary.json, heatmap.png. Several
depths or lengths run into the same save_path add up into one heatmap; or sweep in one run (the fork's
run_depth_evals.sh): --config.depths='(0, 25, 50, 75, 95)' --config.context_lengths='(8192, 16384)'.

Notes:
* This dataset's context_length counts *characters* of haystack (1024 ... 32768), not tokens; the
  results record the real token count (num_tokens).
* nanotron parses --num_shots and --num_digits but never uses them (and the user guide's "num_shots = number of
  trials" is not what they do). Here: with the dataset they would filter the columns num_shots / num_digits,
  which this dataset lacks, so they are ignored, as in nanotron; use num_samples for the number of trials.
  With generated prompts (variant below) num_digits sets the pass-key length; num_shots must be 0 for the
  needle wording (use template="passkey" for shot passages).

Variant ``configs/needle.py:generate``: the same prompt wording, but generated here with an exact token length
(context_length in tokens) and num_digits-digit keys, so any length works without the dataset::

    python main.py --config=configs/needle.py:generate --config.ckpt_path=... --config.context_length=32768 \
        --config.depth_percent=90 --config.num_digits=8 --config.num_samples=50 --config.max_new_tokens=50
"""

from configs import common


def get_config(arg=None):
    c = common.get_config()
    c.dataset = "nanotron/simple_needle_in_a_hay_stack"  # 12.6k rows: 100 per (context_length, depth)
    c.context_lengths = (16384,)  # --context_length replaces it (this dataset: characters; generated: tokens)
    c.depths = (50,)  # --depth_percent replaces it, 0..100 (the dataset has 0, 5, ..., 100); several: a sweep
    c.num_shots = 0  # --num_shots: not used by the dataset (no such column), see the docstring
    c.num_digits = 0  # --num_digits: not used by the dataset; generated keys: digits (0 = 4)
    c.max_new_tokens = 30  # --max-new-tokens (run_evals.py's default)
    c.batch_size = 4
    c.prefill_chunk_tokens = 8192  # stream long prompts 8K tokens at a time
    c.save_path = "results/needle"
    if arg == "generate":
        c.dataset = "generate"  # build the prompts here, exact token lengths
        c.template = "needle"  # simple_needle_in_a_hay_stack's wording
        c.num_samples = 10  # prompts per (context length, depth): --num_shots as the guide describes it
        c.num_digits = 5  # pass-key digits
        c.save_path = "results/needle_generated"
    elif arg not in (None, ""):
        raise ValueError(f"Unknown variant {arg!r} of configs/needle.py: use configs/needle.py or "
                         "configs/needle.py:generate.")
    return c
