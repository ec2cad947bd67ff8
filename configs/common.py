"""Defaults shared by every evaluation config (``passkey_1k``, ``passkey_16k``, ``needle``, ``long_context``,
``benchmark``, ``demo``). Not a job on its own: the other files start from ``get_config()`` here.

Every field can be overridden on the command line, e.g.::

    python main.py --config=configs/passkey_16k.py --config.ckpt_path=ckpts/30000 --config.num_samples=25 \
        --config.depths='(0, 50, 100)' --config.batch_size=4 --config.verbose=True
"""

import ml_collections
from ml_collections import config_dict

# nanotron's passkey scripts sweep these 21 depths (0, 5, ..., 100).
ALL_DEPTHS = tuple(range(0, 101, 5))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What main.py runs: "eval" (infini_jax.evaluate), "train" (infini_jax.train), "benchmark_suite"
    # (one eval per context length of `context_lengths`, one combined report).
    c.job = "eval"

    # ------------------------------------------------------------------ model
    # Checkpoint: a nanotron step dir (config.yaml + model/), a converted infini-jax dir
    # (converters/nanotron_to_flax.py) or a Hugging Face Llama folder (then set segment_length). Required.
    c.ckpt_path = config_dict.placeholder(str)
    # Compute dtype: "bfloat16" (nanotron's eval, GPUs) or "float32" (CPU, exact checks).
    c.dtype = "bfloat16"
    # Query that reads the compressive memory: None = the checkpoint's ("rotated": what nanotron computes),
    # "unrotated" = the paper's intent.
    c.memory_query = config_dict.placeholder(str)
    # Attention inside a segment: None/"xla" (any device and dtype) or "cudnn" (fused, GPU, bf16/fp16 only).
    c.attention_impl = config_dict.placeholder(str)
    # Memory einsums on GPU: None/"highest" (fp32, exact), "bf16_3x" (three bf16 passes), "default" (one pass,
    # fastest prefill). See benchmarks/results/2026-11-29_followup_H200.md.
    c.memory_precision = config_dict.placeholder(str)
    # Segment length, only for Hugging Face Llama folders (nanotron / converted dirs carry their own).
    c.segment_length = config_dict.placeholder(int)
    # Tokenizer: a hub name (must be in the HF cache when offline) or a local directory.
    c.tokenizer = "lvwerra/the-tokenizer-v1"
    # Name shown in the report and summary.json.
    c.model_name = "Infini-Attention"

    # ------------------------------------------------------------------ samples
    # "generate" (prompts built here, exact token lengths), or a dataset: HF hub name, local .parquet file,
    # directory of parquet files, or a datasets.save_to_disk directory. A hub name is also found as
    # ./<name>/train-*.parquet (nanotron's offline layout).
    c.dataset = "generate"
    # Where `datasets` caches hub / parquet data (None: its default cache).
    c.dataset_cache_dir = config_dict.placeholder(str)
    # Needle depths in percent of the haystack.
    c.depths = ALL_DEPTHS
    # A single depth (nanotron run_evals.py's --depth_percent); when set it replaces `depths`.
    c.depth_percent = config_dict.placeholder(float)
    # Samples per depth (per context length for generated prompts); None = every matching dataset row.
    c.num_samples = config_dict.placeholder(int)
    # Dataset: keep rows with this many shots (filter skipped when the column does not exist).
    # Generated: few-shot example passages before the haystack (0..3, "passkey" template only).
    c.num_shots = 0
    # Dataset: keep rows whose pass key has this many digits, 0 = any (as nanotron).
    # Generated: digits of the pass keys, 0 = 4 (nanotron's generate_data.py default).
    c.num_digits = 0
    # A single context length in tokens; when set it replaces `context_lengths`. Dataset: filter on the
    # context_length column (0 = no filter; simple_needle_in_a_hay_stack counts characters there).
    c.context_length = 0
    # Context lengths in tokens: generated prompt lengths, or dataset filters (empty: no filter).
    c.context_lengths = ()
    # Seed of nanotron's dataset shuffle(seed) and of the generated pass keys.
    c.seed = 42
    # Generated prompts: "passkey" (generate_data.py wording) or "needle" (simple_needle_in_a_hay_stack).
    c.template = "passkey"
    # Generated prompts: a directory of *.txt haystack files (None: the built-in haystack `haystack`).
    c.haystack_dir = config_dict.placeholder(str)
    # Built-in haystack: "default" (varied prose) or "classic" ("The grass is green. The sky is blue...").
    c.haystack = "default"

    # ------------------------------------------------------------------ generation
    # Greedy tokens generated per prompt (nanotron: exactly this many, no EOS stop).
    c.max_new_tokens = 15
    # Prompts per compiled batch (similar lengths are batched together). Must be a multiple of dp.
    c.batch_size = 8
    # Stream prompts through the model this many tokens at a time (rounded to whole segments): device
    # memory then depends on this, not on the prompt length. 0 = the whole prompt at once.
    c.prefill_chunk_tokens = 0
    # Stop a row at the tokenizer's EOS (nanotron never stops early).
    c.stop_at_eos = False
    # Stop after this many new samples in this run (0 = all); a rerun continues where it stopped.
    c.max_samples = 0

    # ------------------------------------------------------------------ outputs
    # Results directory: results.jsonl (resumable), run_info.json, summary.json, heatmap.png.
    c.save_path = "results/eval"
    # Also write the nanotron fork's --results_file JSON here (None: not written).
    c.results_file = config_dict.placeholder(str)
    # Discard save_path's previous results instead of resuming from them.
    c.overwrite = False
    # Log every sample (input / generation / success) like nanotron instead of a progress bar.
    c.verbose = False

    # ------------------------------------------------------------------ devices
    # Data parallel (batch split) and tensor parallel (weights split) degrees; dp * tp <= visible devices.
    c.dp = 1
    c.tp = 1
    # Pipeline parallel: must stay 1 (tp covers what nanotron needed pp for).
    c.pp = 1
    # Multi-host only: jax.distributed.initialize(coordinator_address, num_processes, process_id).
    c.coordinator_address = config_dict.placeholder(str)
    c.num_processes = config_dict.placeholder(int)
    c.process_id = config_dict.placeholder(int)
    return c
