"""Decode: ms per token at batch 1 and tokens/s at batch 32, against the memory-bandwidth roofline.

The loop is the Generator's: ``model.decode_step`` then greedy argmax, ``n_steps`` (128) of them in one
compiled ``lax.scan`` with a static trip count, no host round trip per token. The compiled loop is run as a
chain of 1 and of 3 calls (each call continuing from the cache and token the previous one returned, one
synchronisation at the end); per-token time = (t(3 calls) - t(1 call)) / (2 x n_steps), which removes the
dispatch and the final synchronisation from the figure. One compile serves both.

The cache is synthetic (no prefill is compiled): every row starts at position L + 17, i.e. one segment
already folded into the compressive memory and the second under way, with random positive values in M, z
and the segment buffers (a step's cost does not depend on them). With L = 64 (the 8B config) the loop
crosses segment boundaries, so its per-token time includes the amortised memory folds; with L >= 1024 it
does not cross one.

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

        def loop(state, tok, cache, n_steps):
            m = nnx.merge(self.graphdef, state)

            def body(carry, _):
                tok, cache = carry
                logits, cache = m.decode_step(tok, cache)
                return (jnp.argmax(logits, axis=-1).astype(jnp.int32), cache), None

            return jax.lax.scan(body, (tok, cache), None, length=n_steps)[0]

        self.fn = jax.jit(loop, static_argnames=("n_steps",))

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


def interleaved(fn_a, fn_b, reps: int, budget_s: float) -> tuple[list[float], list[float]]:
    """Times a and b alternately (after one warm-up call of each), so that drift hits both alike."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn_a())
    jax.block_until_ready(fn_b())
    ta, tb = [], []
    for _ in range(reps):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return ta, tb


def chain_calls(compiled, state, tok, cache, calls: int):
    """``calls`` compiled calls of the decode loop, each continuing from the token and cache of the last."""
    carry = (tok, cache)
    for _ in range(calls):
        carry = compiled(state, *carry)
    return carry


def time_per_step(compiled, state, tok, cache, n_steps: int, reps: int, budget_s: float):
    """Seconds per decode step: (t(3 calls) - t(1 call)) / (2 n_steps), medians of interleaved timings.
    Returns (seconds per step, times of 1 call, times of 3 calls)."""
    one, three = interleaved(functools.partial(chain_calls, compiled, state, tok, cache, 1),
                             functools.partial(chain_calls, compiled, state, tok, cache, 3), reps, budget_s)
    return (common.median(three) - common.median(one)) / (2 * n_steps), one, three


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
    n = args.n_steps
    for batch in batches:
        rec = dict(kind="decode", batch=batch, n_steps=n, start_position=cfg.segment_length + 17,
                   roofline_bytes=common.decode_bytes(cfg, batch), **base)
        if not deadline.fits(10):
            emit(status="skipped", note="time budget", **rec)
            continue
        try:
            cache = bench.cache(batch)
            tok = jnp.zeros((batch,), jnp.int32)
            t0 = time.perf_counter()
            compiled = bench.fn.lower(bench.state, tok, cache, n_steps=n).compile()
            compile_s = time.perf_counter() - t0
            per_step, one, three = time_per_step(compiled, bench.state, tok, cache, n, args.reps,
                                                 budget_s=max(1.0, min(20.0, deadline.left() / 2)))
        except Exception as e:  # noqa: BLE001
            emit.error(e, **rec)
            continue
        emit(status="ok", compile_s=compile_s, times_1call_s=one, times_3calls_s=three, s_per_step=per_step,
             ms_per_token=per_step * 1e3, tokens_per_s=batch / per_step if per_step > 0 else None,
             peak_bytes=common.peak_bytes(), **rec)
        del compiled, cache
        jax.clear_caches()


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--configs", default="300m,1b,8b")
    p.add_argument("--batches", default=None, help=f"default {DEFAULT_BATCHES}")
    p.add_argument("--n_steps", type=int, default=128, help="decode steps per compiled call")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if args.smoke:
        args.n_steps = min(args.n_steps, 16)
    batches = common.int_list(args.batches or ("1,4" if args.smoke else DEFAULT_BATCHES))
    emit = common.Emitter(args.jsonl, "decode")
    names = common.str_list(args.configs)
    start = time.perf_counter()
    for i, name in enumerate(names):
        left = args.budget_s - (time.perf_counter() - start)
        run_config(name, batches, args, emit, common.Deadline(left / (len(names) - i)))


if __name__ == "__main__":
    main()
