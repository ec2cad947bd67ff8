"""Writes the small *untrained* (randomly initialised) demo model to ``infini_jax/assets/demo_model``.

    python scripts/make_random_demo_model.py [--output_dir infini_jax/assets/demo_model] [--seed 0]

The model matches the byte-level demo tokenizer (``infini_jax/assets/demo_tokenizer``, 260 ids; the
vocabulary is padded to 384 as nanotron pads it), is tiny (hidden 64, 2 layers, 4 heads, segments of 64
tokens, bf16 storage: ~0.3 MB) and lets ``python main.py --config=configs/demo.py`` run offline in
seconds. Its weights are random, so it does not retrieve pass keys: the demo shows the pipeline, not
accuracy. ``model_card.json`` beside the weights says so (``"trained": false``); the evaluation logs it.
A trained demo model (``configs/train_*.py``) can replace the directory with ``"trained": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax import ModelConfig, random_model  # noqa: E402
from infini_jax.checkpoint import save_converted  # noqa: E402
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH, DEMO_VOCAB_SIZE  # noqa: E402

DEMO_MODEL_PATH = os.path.join(os.path.dirname(DEMO_TOKENIZER_PATH), "demo_model")
MODEL_CARD = "model_card.json"

DEMO_CONFIG = ModelConfig(
    vocab_size=384,  # >= the demo tokenizer's 260 ids, padded like nanotron's make_vocab_size_divisible_by
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    segment_length=64,
    max_position_embeddings=2048,  # informational: RoPE restarts every segment
    bos_token_id=1,  # the demo tokenizer's <s>, </s>, <pad>
    eos_token_id=2,
    pad_token_id=3,
    param_dtype="bfloat16",  # storage; load with dtype="float32" on CPU
)


def make_random_demo_model(output_dir: str = DEMO_MODEL_PATH, seed: int = 0, overwrite: bool = True) -> str:
    """Saves a random ``DEMO_CONFIG`` model as a converted directory plus its ``model_card.json``."""
    assert DEMO_CONFIG.vocab_size >= DEMO_VOCAB_SIZE
    model = random_model(DEMO_CONFIG, seed=seed)
    out = save_converted(model, output_dir, overwrite=overwrite)
    card = {
        "trained": False,
        "description": "Randomly initialised demo model (untrained): it shows the evaluation pipeline, "
        "it does not retrieve pass keys.",
        "made_by": "scripts/make_random_demo_model.py",
        "seed": seed,
        "tokenizer": "infini_jax/assets/demo_tokenizer",
    }
    with open(os.path.join(out, MODEL_CARD), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=DEMO_MODEL_PATH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = make_random_demo_model(args.output_dir, args.seed)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"Saved the random demo model to {out} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
