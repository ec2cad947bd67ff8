"""The demo: runs anywhere (CPU, offline) in well under two minutes with the small model and tokenizer stored
in the repository, and writes real outputs to results/demo/ (results.jsonl, summary.json, heatmap.png)::

    python main.py --config=configs/demo.py

The model (infini_jax/assets/demo_model: hidden 64, 2 layers, segments of 64 tokens) is a converted
directory; its model_card.json says whether it was trained (scripts/make_random_demo_model.py writes an
untrained, random one: it shows the pipeline, not retrieval, and scores ~0%). The tokenizer is the byte-level
demo tokenizer (one token per byte). Prompts are generated at 512, 1024 and 2048 tokens (8, 16 and 32
segments; the template takes ~255 of them).
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
    c.context_lengths = (512, 1024, 2048)  # tokens: 8, 16 and 32 segments of 64 (~255 are template)
    c.depths = (0, 25, 50, 75, 100)
    c.num_samples = 2  # per (context length, depth): 30 prompts
    c.num_digits = 4
    c.haystack = "classic"  # the grass-is-green filler
    c.max_new_tokens = 8
    c.batch_size = 10  # one batch per (context length)
    c.save_path = "results/demo"
    c.overwrite = True  # always a fresh run (the model may have been replaced)
    return c
