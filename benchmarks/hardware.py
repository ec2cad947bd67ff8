"""The two ceilings, measured in the same run as everything else (METHOD.md: measure them, don't quote them).

* matmul: an n x n x n bf16 ``jnp.dot`` (n = 8192), random inputs rotated over two sets (each 128 MiB, far
  more than the 60 MB L2), ``inner`` products dispatched back to back then synchronised, median over
  ``reps`` such groups; rate = 2 n^3 / time.
* copy: a 2 GiB bf16 array through a jitted copy and through y = x + 1; bandwidth counts bytes read plus
  bytes written (2 x 2 GiB / time), as the anchors and KINDS.md do; the larger of the two is used.
"""

from __future__ import annotations

import time

import common


def _group_time(fn, args_sets, inner: int, reps: int, warmup: int) -> list[float]:
    import jax

    for i in range(warmup):
        jax.block_until_ready(fn(*args_sets[i % len(args_sets)]))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = [fn(*args_sets[j % len(args_sets)]) for j in range(inner)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t0) / inner)
        del outs
    return times


def matmul_rate(n: int, *, inner: int, reps: int, warmup: int = 3) -> dict:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 4)
    sets = [(jax.random.normal(keys[0], (n, n), jnp.bfloat16), jax.random.normal(keys[1], (n, n), jnp.bfloat16)),
            (jax.random.normal(keys[2], (n, n), jnp.bfloat16), jax.random.normal(keys[3], (n, n), jnp.bfloat16))]
    dot = jax.jit(jnp.dot)
    times = _group_time(dot, sets, inner, reps, warmup)
    t = common.median(times)
    return dict(n=n, dtype="bfloat16", inner=inner, times_s=times, time_s=t, tflops=2.0 * n**3 / t / 1e12)


def copy_bandwidth(nbytes: int, *, inner: int, reps: int, warmup: int = 2) -> dict:
    import jax
    import jax.numpy as jnp

    count = nbytes // 2
    x = jax.random.normal(jax.random.key(1), (count,), jnp.bfloat16)
    results = {}
    kernels = {"copy": jax.jit(lambda a: jnp.array(a, copy=True)),
               "x_plus_1": jax.jit(lambda a: a + jnp.bfloat16(1))}
    for name, fn in kernels.items():
        times = _group_time(fn, [(x,)], inner, reps, warmup)
        t = common.median(times)
        results[name] = dict(times_s=times, time_s=t, tb_per_s=2.0 * count * 2 / t / 1e12)
    best = max(results, key=lambda k: results[k]["tb_per_s"])
    return dict(bytes=count * 2, kernels=results, best=best, tb_per_s=results[best]["tb_per_s"])


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--copy_gib", type=float, default=2.0)
    args = p.parse_args(argv)
    emit = common.Emitter(args.jsonl, "hardware")
    import jax

    info = common.device_info()
    emit(kind="device", status="ok", jax=jax.__version__, **info)
    n = 1024 if args.smoke else args.n
    inner, reps = (2, 3) if args.smoke else (10, 7)
    try:
        emit(kind="matmul", status="ok", **matmul_rate(n, inner=inner, reps=reps))
    except Exception as e:  # noqa: BLE001
        emit.error(e, kind="matmul")
    nbytes = (32 << 20) if args.smoke else int(args.copy_gib * common.GIB)
    try:
        emit(kind="copy", status="ok", **copy_bandwidth(nbytes, inner=2 if args.smoke else 5, reps=reps))
    except Exception as e:  # noqa: BLE001
        emit.error(e, kind="copy")


if __name__ == "__main__":
    main()
