"""Decode: ms per token at batch 1 and tokens/s at batch 32, against the memory-bandwidth roofline.

The loop is the Generator's step (``model.decode_step`` then greedy argmax, carried on the device in one
compiled loop, no host round trip per token), run ``n_short`` and ``n_long`` steps from the same cache;
per-token time = (t(n_long) - t(n_short)) / (n_long - n_short), which removes the dispatch and the final
synchronisation from the figure. The trip count is an argument (a device ``while`` loop), so one compile
serves both runs.

The cache is synthetic (no prefill is compiled): every row is at position L + 17, i.e. one segment
already folded into the compressive memory and the second segment under way, with random positive values
in M, z and the segment buffers (a step's cost does not depend on them). With L = 64 (the 8B config) the
loop crosses segment boundaries, so its per-token time includes the amortised memory folds.

Roofline bytes per step: ``common.decode_bytes`` (all weights once, the input embedding only as B rows;
per layer and row M, z and the RoPE'd key and value buffers); roofline time = bytes / measured copy
bandwidth (``run_all`` divides, with the bandwidth measured in the same run).
"""

from __future__ import annotations

import functools
import time

import common

DEFAULT_BATCHES = "1,32"


class Decode:
    def __init__(self, cfg, seed: int = 0):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from infini_jax.api import random_model

        self.cfg = cfg
        t0 = time.perf_counter()
        self.graphdef, self.state = nnx.split(random_model(cfg, seed=seed))
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t0

        def loop(state, tok, cache, n):
            m = nnx.merge(self.graphdef, state)

            def body(_, carry):
                tok, cache = carry
                logits, cache = m.decode_step(tok, cache)
                return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

            return jax.lax.fori_loop(0, n, body, (tok, cache))

        self.fn = jax.jit(loop)

    def cache(self, batch: int, seed: int = 1):
        import jax
        import jax.numpy as jnp

        from infini_jax.model import init_cache

        cache = init_cache(self.cfg, batch)
        leaves, treedef = jax.tree.flatten(cache.layers)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        leaves = [jax.random.uniform(k, x.shape, jnp.float32, 0.5, 1.5).astype(x.dtype)
                  if jnp.issubdtype(x.dtype, jnp.floating) else x for k, x in zip(keys, leaves, strict=True)]
        positions = jnp.full((batch,), self.cfg.segment_length + 17, jnp.int32)
        return cache._replace(layers=jax.tree.unflatten(treedef, leaves), positions=positions)


def run_config(name: str, batches: list[int], args, emit, deadline: common.Deadline):
    import jax
    import jax.numpy as jnp

    cfg = common.model_config(name, smoke=args.smoke, attention_impl="xla")  # decode never calls cuDNN
    base = dict(config=name, params=cfg.num_params(), segment_length=cfg.segment_length)
    try:
        bench = Decode(cfg)
    except Exception as e:  # noqa: BLE001
        emit.error(e, kind="init", **base)
        return
    n_short, n_long = args.n_short, args.n_long
    for batch in batches:
        rec = dict(kind="decode", batch=batch, n_short=n_short, n_long=n_long,
                   roofline_bytes=common.decode_bytes(cfg, batch), **base)
        if not deadline.fits(10):
            emit(status="skipped", note="time budget", **rec)
            continue
        try:
            cache = bench.cache(batch)
            tok = jnp.zeros((batch,), jnp.int32)
            t0 = time.perf_counter()
            compiled = bench.fn.lower(bench.state, tok, cache, jnp.int32(0)).compile()
            compile_s = time.perf_counter() - t0
            budget = max(1.0, min(15.0, deadline.left() / 3))
            short = common.timed(functools.partial(compiled, bench.state, tok, cache, jnp.int32(n_short)),
                                 warmup=1, reps=args.reps, budget_s=budget)
            long = common.timed(functools.partial(compiled, bench.state, tok, cache, jnp.int32(n_long)),
                                warmup=1, reps=args.reps, budget_s=budget)
        except Exception as e:  # noqa: BLE001
            emit.error(e, **rec)
            continue
        per_step = (common.median(long) - common.median(short)) / (n_long - n_short)
        emit(status="ok", compile_s=compile_s, times_short_s=short, times_long_s=long, s_per_step=per_step,
             ms_per_token=per_step * 1e3, tokens_per_s=batch / per_step if per_step > 0 else None,
             peak_bytes=common.peak_bytes(), **rec)
        del compiled, cache
        jax.clear_caches()


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--configs", default="300m,1b,8b")
    p.add_argument("--batches", default=None, help=f"default {DEFAULT_BATCHES}")
    p.add_argument("--n_short", type=int, default=16)
    p.add_argument("--n_long", type=int, default=144)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:
        args.n_short, args.n_long = min(args.n_short, 4), min(args.n_long, 20)
    batches = common.int_list(args.batches or ("1,4" if args.smoke else DEFAULT_BATCHES))
    emit = common.Emitter(args.jsonl, "decode")
    names = common.str_list(args.configs)
    start = time.perf_counter()
    for i, name in enumerate(names):
        left = args.budget_s - (time.perf_counter() - start)
        run_config(name, batches, args, emit, common.Deadline(left / (len(names) - i)))


if __name__ == "__main__":
    main()
