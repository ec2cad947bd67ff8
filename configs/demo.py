"""The demo: runs anywhere (CPU, offline) in well under two minutes with the small model and tokenizer stored
in the repository, and writes real outputs to results/demo/ (results.jsonl, summary.json, heatmap.png)::

    python main.py --config=configs/demo.py

The model (infini_jax/assets/demo_model: 3.6M parameters, hidden 256, 4 layers, 4 heads, segments of 256
tokens, bf16 weights) was trained on an H200 with ``configs/train_demo.py`` in nanotron's rotated memory-query
mode (model_card.json, training_config.json and evaluation_h200.json beside it; results in docs/training.md:
100% exact match from 8K to 1M tokens, 308 prompts per length, and at 16M, 66 prompts; on CPU 100% at 1K). The
tokenizer is the byte-level demo tokenizer (one token per byte). Prompts are generated at 1024, 4096 and 8192
tokens (4, 16 and 32 segments) with 5-digit pass keys: exact multiples of the segment length, so the answer opens
a fresh segment and must come from the compressive memory alone. Expected: 30 of 30 right.
Use your own checkpoint with --config.ckpt_path=... --config.tokenizer=... .
"""

import os

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "infini_jax", "assets")


def get_config():
    c = common.get_config()
    c.ckpt_path = os.path.join(ASSETS, "demo_model")  # converted dir shipped in the repo
    c.tokenizer = os.path.join(ASSETS, "demo_tokenizer")  # byte-level, 260 ids
    c.model_name = "Demo"
    c.dtype = "float32"  # CPU
    c.dataset = "generate"
    c.context_lengths = (1024, 4096, 8192)  # tokens: 4, 16 and 32 segments of 256
    c.depths = (0, 25, 50, 75, 100)
    c.num_samples = 2  # per (context length, depth): 30 prompts
    c.num_digits = 5  # the demo model was trained on 5-digit keys
    c.haystack = "classic"  # the grass-is-green filler
    c.max_new_tokens = 6
    c.batch_size = 10  # one batch per (context length)
    c.save_path = "results/demo"
    c.overwrite = True  # always a fresh run (the model may have been replaced)
    return c
