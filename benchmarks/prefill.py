"""Long-context prefill: tokens/s, model TFLOP/s and peak device memory of ``model.prefill`` (batch 1).

The prompt streams through the model ``chunk_tokens`` at a time (``chunk_segments = chunk_tokens / L``: a
``lax.scan`` carrying the per-layer memory), so device memory should not grow with the length. One process
runs one config: lengths in ascending order with one chunk size, then (time permitting) other chunk sizes
at ``--sweep_length``.

Timing: the jitted function is compiled ahead of time (``lower().compile()``, reported as compile_s), run
once as warm-up, then timed (median); lengths whose single run would be long get fewer repetitions, and a
length that would not fit the time budget is skipped (recorded as such). FLOPs: ``common.prefill_flops``.

Peak memory: ``peak_bytes_in_use`` of the device allocator read after each length. It is a high-water mark
since the process started, so with lengths run in ascending order the value after length P bounds that
length's own peak from above; the first length's value is its own. XLA's static buffer sizes of each
executable (arguments = weights + ids, temporaries) are reported too (``xla_*``), exact per length.
"""

from __future__ import annotations

import functools
import time

import common

DEFAULT_LENGTHS = "32K,128K,1M"
DEFAULT_CHUNK = {"300m": 32768, "1b": 32768, "8b": 16384}
DEFAULT_SWEEP = {"300m": "65536", "1b": "65536", "8b": "none"}  # besides DEFAULT_CHUNK, at --sweep_length
SMOKE_LENGTHS, SMOKE_CHUNK, SMOKE_SWEEP, SMOKE_SWEEP_LENGTH = "512,2048,8192", 256, "128,512", 2048


class Prefill:
    """One model, jitted prefill, compiled per (length, chunk)."""

    def __init__(self, cfg, seed: int = 0):
        import jax
        from flax import nnx

        from infini_jax.api import random_model

        self.cfg = cfg
        t0 = time.perf_counter()
        model = random_model(cfg, seed=seed)
        self.graphdef, self.state = nnx.split(model)
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t0
        self.weights_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.state))

        def run(state, ids, lengths, chunk_segments):
            m = nnx.merge(self.graphdef, state)
            return m.prefill(ids, lengths, chunk_segments=chunk_segments)

        self.fn = jax.jit(run, static_argnames=("chunk_segments",))

    def inputs(self, length: int, batch: int = 1, seed: int = 0):
        import jax.numpy as jnp
        import numpy as np

        rng = np.random.default_rng(seed)
        ids = jnp.asarray(rng.integers(0, self.cfg.vocab_size, (batch, length), dtype=np.int32))
        return ids, jnp.full((batch,), length, jnp.int32)

    def compile(self, length: int, chunk_tokens: int, batch: int = 1):
        seg = self.cfg.segment_length
        chunk = min(chunk_tokens, length)
        if length % seg or chunk % seg or length % chunk:
            raise ValueError(f"length {length} / chunk {chunk} must be multiples of L={seg} and of each other")
        chunk_segments = None if chunk == length else chunk // seg
        ids, lengths = self.inputs(length, batch)
        t0 = time.perf_counter()
        compiled = self.fn.lower(self.state, ids, lengths, chunk_segments=chunk_segments).compile()
        return compiled, (ids, lengths), chunk, time.perf_counter() - t0


def _reps_for(pred_s: float | None) -> tuple[int, int]:
    """(warm-up runs, timed runs) by predicted seconds per run."""
    if pred_s is None or pred_s < 0.5:
        return 1, 5
    if pred_s < 3.0:
        return 1, 3
    return 1, 1


def run_config(name: str, args, emit, deadline: common.Deadline):
    import jax

    impl = common.pick_attention(args.attention)
    cfg = common.model_config(name, smoke=args.smoke, attention_impl=impl, memory_precision=args.memory_precision)
    lengths = sorted(common.int_list(args.lengths or (SMOKE_LENGTHS if args.smoke else DEFAULT_LENGTHS)))
    chunk_tokens = args.chunk_tokens or (SMOKE_CHUNK if args.smoke else DEFAULT_CHUNK[name])
    sweep_text = args.sweep_chunks or (SMOKE_SWEEP if args.smoke else DEFAULT_SWEEP[name])
    sweep = [] if sweep_text == "none" else common.int_list(sweep_text)
    sweep_length = args.sweep_length or (SMOKE_SWEEP_LENGTH if args.smoke else 131072)
    base = dict(config=name, params=cfg.num_params(), segment_length=cfg.segment_length, batch=1,
                memory_precision=cfg.memory_precision)
    try:
        bench = Prefill(cfg)
    except Exception as e:  # noqa: BLE001
        emit.error(e, kind="init", **base)
        return
    emit(kind="init", status="ok", init_s=bench.init_s, weights_bytes=bench.weights_bytes,
         bytes_in_use=common.bytes_in_use(), attention_impl=impl, **base)

    state = dict(tps=None, compile_s=None)

    def measure(length: int, chunk_tokens: int, kind: str):
        nonlocal bench, impl
        rec = dict(kind=kind, tokens=length, chunk_tokens=min(chunk_tokens, length), attention_impl=impl, **base)
        pred = length / state["tps"] if state["tps"] else None
        compile_est = state["compile_s"] if state["compile_s"] is not None else 30.0
        warm, reps = _reps_for(pred)
        if pred is not None and not deadline.fits(compile_est + (warm + 1) * pred):
            if deadline.fits(compile_est + pred):
                warm, reps = 0, 1
            else:
                emit(status="skipped", note=f"time budget: predicted {pred:.1f} s per run + {compile_est:.0f} s "
                     f"compile > {deadline.left():.0f} s left", predicted_s=pred, **rec)
                return None
        try:
            try:
                compiled, inputs, chunk, compile_s = bench.compile(length, chunk_tokens)
            except Exception as e:  # noqa: BLE001
                if impl != "cudnn" or common.classify_error(e) == "OOM":
                    raise
                emit.error(e, **{**rec, "kind": "cudnn_failed"})
                impl = "xla"
                bench = Prefill(cfg.replace(attention_impl="xla"))
                rec["attention_impl"] = "xla (cudnn failed)"
                compiled, inputs, chunk, compile_s = bench.compile(length, chunk_tokens)
            state["compile_s"] = compile_s
            mem = common.memory_analysis(compiled)
            times = common.timed(functools.partial(compiled, bench.state, *inputs), warmup=warm, reps=reps,
                                 budget_s=max(1.0, min(20.0, deadline.left() - 5)))
        except Exception as e:  # noqa: BLE001
            return emit.error(e, **rec)
        t = common.median(times)
        flops = common.prefill_flops(bench.cfg, length)
        state["tps"] = length / t
        out = emit(status="ok", compile_s=compile_s, warmup_runs=warm, times_s=times, time_s=t,
                   tokens_per_s=length / t, flops=flops, model_tflops=flops["total"] / t / 1e12,
                   anchor_def_tflops=flops["anchor_def"] / t / 1e12, peak_bytes=common.peak_bytes(),
                   bytes_in_use=common.bytes_in_use(), weights_bytes=bench.weights_bytes,
                   **{f"xla_{k}": v for k, v in mem.items()}, **{**rec, "chunk_tokens": chunk})
        del compiled
        jax.clear_caches()
        return out

    for length in lengths:
        if not deadline.fits(5):
            emit(status="skipped", note="time budget", kind="length", tokens=length, **base)
            continue
        measure(length, chunk_tokens, "length")
    for chunk in sweep:
        if chunk == chunk_tokens or chunk > sweep_length:
            continue
        if not deadline.fits(10):
            emit(status="skipped", note="time budget", kind="chunk_sweep", tokens=sweep_length, chunk_tokens=chunk,
                 **base)
            continue
        measure(sweep_length, chunk, "chunk_sweep")


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--configs", default="300m,1b,8b")
    p.add_argument("--lengths", default=None, help=f"prompt lengths (default {DEFAULT_LENGTHS})")
    p.add_argument("--chunk_tokens", type=int, default=None, help=f"streaming chunk (default {DEFAULT_CHUNK})")
    p.add_argument("--sweep_chunks", default=None, help="other chunk sizes tried at --sweep_length ('none': no sweep)")
    p.add_argument("--sweep_length", type=int, default=None)
    p.add_argument("--memory_precision", default="highest", choices=("highest", "bf16_3x", "default"),
                   help="precision of the memory einsums (ModelConfig.memory_precision)")
    args = p.parse_args(argv)
    emit = common.Emitter(args.jsonl, "prefill")
    names = common.str_list(args.configs)
    start = time.perf_counter()
    for i, name in enumerate(names):
        # Split what is left evenly over the configs still to run.
        left = args.budget_s - (time.perf_counter() - start)
        run_config(name, args, emit, common.Deadline(left / (len(names) - i)))


if __name__ == "__main__":
    main()
