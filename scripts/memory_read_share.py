"""Which heads retrieve the pass key through the compressive memory, and how diluted their read is.

For a passkey prompt (the training evaluation's layout) and each layer and query head, at the prompt's last
position: the needle's share of the memory normaliser, ``sigma(q) . z_needle / sigma(q) . z`` (z sums sigma(k)
of every token written to the memory; the read ``sigma(q) M / sigma(q) . z`` weighs each written token by
``sigma(q) . sigma(k_t)``), and the head's gate g. A head that retrieves keeps a high share as the prompt
grows; normaliser dilution is that share falling with length::

    python scripts/memory_read_share.py --model infini_jax/assets/demo_model --lengths 4096,16384,65536

Runs on CPU in fp32 (a few seconds per 16K tokens for the demo model). Needle and question must lie in
different segments (the needle is written to the memory before the last segment).
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from infini_jax import load_model
from infini_jax.attention import gate_activation
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.tokenizer import load_tokenizer
from infini_jax.memory import sigma
from infini_jax.model import init_cache
from infini_jax.train_data import PasskeyBatcher, haystack_text


def read_shares(model, ids: np.ndarray, needle_start: int, needle_len: int) -> dict:
    """ids: [1, S] with S a multiple of L. Returns per layer: needle share [N] and gate [N] at the last token."""
    cfg = model.cfg
    seg, s = cfg.segment_length, ids.shape[1]
    last_seg_start = (s - 1) // seg * seg
    if needle_start + needle_len > last_seg_start:
        raise ValueError("The needle must end before the last segment (it is read from the memory there).")
    tokens = jnp.asarray(ids)
    x = model.embed(tokens)
    cache = init_cache(cfg, 1)
    positions = jnp.tile(jnp.arange(seg, dtype=jnp.int32), s // seg)[None]
    written = np.zeros(s, bool)
    written[:last_seg_start] = True
    needle = np.zeros(s, bool)
    needle[needle_start:needle_start + needle_len] = True
    out = []
    for block, layer_cache in zip(model.layers, cache.layers, strict=True):
        attn = block.attn
        q, k, _ = attn._project(block.input_layernorm(x))
        q_rot = attn._rope(q, positions)
        sq = np.asarray(attn._sigma_q(q, q_rot)[0, -1], np.float64)  # [K, G, D]
        sk = np.asarray(sigma(k.astype(jnp.float32))[0], np.float64)  # [S, K, D]
        z_all = sk[written].sum(0)  # [K, D]
        z_needle = sk[needle & written].sum(0)
        share = np.einsum("kgd,kd->kg", sq, z_needle) / np.einsum("kgd,kd->kg", sq, z_all)
        gate = np.asarray(gate_activation(attn.balance_factors[...], cfg.balance_act_type), np.float64)
        out.append({"needle_share": share.reshape(-1).round(4).tolist(), "gate": gate.round(3).tolist()})
        x, _ = block(x, layer_cache, seg_start=0, num_tokens=jnp.asarray([s], jnp.int32),
                     weight=jnp.ones((1, s), jnp.float32))
    return {"layers": out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="infini_jax/assets/demo_model")
    p.add_argument("--tokenizer", default=str(DEMO_TOKENIZER_PATH))
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--depth", type=float, default=20.0, help="needle depth in percent")
    p.add_argument("--haystack", default="classic", help="classic, generated (varied), default")
    p.add_argument("--key", default="48213")
    args = p.parse_args(argv)
    model = load_model(args.model, dtype="float32")
    tok = load_tokenizer(args.tokenizer)
    text = haystack_text(args.haystack, seed=12345) if args.haystack == "generated" else haystack_text(args.haystack)
    batcher = PasskeyBatcher(tok, segment_length=model.cfg.segment_length, num_digits=len(args.key),
                             haystacks={args.haystack: text})
    report = {"model": args.model, "depth": args.depth, "haystack": args.haystack, "lengths": {}}
    for length in [int(x) for x in args.lengths.split(",")]:
        ids, start = batcher.eval_prompts([args.key], length, args.depth, 0)
        report["lengths"][length] = read_shares(model, ids, int(start[0]), batcher.needle_len)
        heads = sorted(((share, li, h, g) for li, layer in enumerate(report["lengths"][length]["layers"])
                        for h, (share, g) in enumerate(zip(layer["needle_share"], layer["gate"], strict=True))),
                       reverse=True)[:3]
        print(f"{length:>9} tokens: highest needle shares: "
              + ", ".join(f"layer {li} head {h} {share:.4f} (gate {g:.2f})" for share, li, h, g in heads), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
