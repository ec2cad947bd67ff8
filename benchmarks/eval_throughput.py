"""Evaluation throughput: prompts/s of ``Generator`` (the passkey pipeline's path) on passkey-shaped prompts.

Prompts are random token ids of ``--prompt_lengths`` tokens (default 16000 and 1000, the size of the
fork's "1K" and "16K" passkey prompts, which stay inside 1 and 16 segments of 1024), ``--new_tokens`` (15)
greedy tokens each, batch sizes ``--batches``; the 300M config. Each (length, batch) compiles once (first
call, reported as first_call_s), then ``generate_batch`` is timed end to end (host ids in, host tokens out:
prefill, the compiled decode loop and the transfers), median over the repetitions.
prompts/s = batch / median time; s/prompt = its inverse.
"""

from __future__ import annotations

import time

import common

DEFAULT_LENGTHS, DEFAULT_BATCHES, DEFAULT_CHUNK = "16000,1000", "1,16", 16384  # 16K first: the targets use it


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--config", default="300m")
    p.add_argument("--prompt_lengths", default=None, help=f"default {DEFAULT_LENGTHS}")
    p.add_argument("--batches", default=None, help=f"default {DEFAULT_BATCHES}")
    p.add_argument("--new_tokens", type=int, default=15)
    p.add_argument("--prefill_chunk_tokens", type=int, default=None, help=f"default {DEFAULT_CHUNK}")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    emit = common.Emitter(args.jsonl, "eval")
    deadline = common.Deadline(args.budget_s)

    import jax
    import numpy as np

    from infini_jax.api import random_model
    from infini_jax.generate import GenerationConfig, Generator

    impl = common.pick_attention(args.attention)
    cfg = common.model_config(args.config, smoke=args.smoke, attention_impl=impl)
    lengths = common.int_list(args.prompt_lengths or ("60,1000" if args.smoke else DEFAULT_LENGTHS))
    batches = common.int_list(args.batches or ("1,4" if args.smoke else DEFAULT_BATCHES))
    chunk = args.prefill_chunk_tokens or (4 * cfg.segment_length if args.smoke else DEFAULT_CHUNK)
    model = random_model(cfg)
    rng = np.random.default_rng(0)
    for length in lengths:
        for batch in batches:
            rec = dict(kind="generate", config=args.config, prompt_tokens=length, batch=batch,
                       new_tokens=args.new_tokens, prefill_chunk_tokens=chunk, attention_impl=impl)
            if not deadline.fits(10):
                emit(status="skipped", note="time budget", **rec)
                continue
            try:
                gen = Generator(model, GenerationConfig(max_new_tokens=args.new_tokens, batch_size=batch,
                                                        prefill_chunk_tokens=chunk))
                prompts = [rng.integers(3, cfg.vocab_size, length).tolist() for _ in range(batch)]
                t0 = time.perf_counter()
                out = gen.generate_batch(prompts)
                first = time.perf_counter() - t0
                assert len(out) == batch and all(len(o) == args.new_tokens for o in out)
                times = common.timed(lambda g=gen, pr=prompts: g.generate_batch(pr), warmup=0, reps=args.reps,
                                     budget_s=max(1.0, min(20.0, deadline.left() / 4)), sync=lambda x: x)
            except Exception as e:  # noqa: BLE001
                emit.error(e, **rec)
                continue
            t = common.median(times)
            emit(status="ok", first_call_s=first, times_s=times, time_s=t, prompts_per_s=batch / t,
                 s_per_prompt=t / batch, peak_bytes=common.peak_bytes(), **rec)
            del gen
            jax.clear_caches()


if __name__ == "__main__":
    main()
