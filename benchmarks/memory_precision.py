"""What the memory einsums' precision (``ModelConfig.memory_precision``) changes: the final logits and the
compressive memory after a long prefill, against the fp32-exact "highest" run of the same model and prompt.

    python benchmarks/memory_precision.py --config 300m --tokens 32768 --jsonl $OUT/memory_precision.jsonl

Speed is measured by ``benchmarks/prefill.py --memory_precision ...``; this script measures the error
(bf16 compute and weights, fp32 memory state, as the benchmarks run): max |diff| of the last-position
logits (and relative to their spread), argmax agreement, and max relative error of every layer's M and z.
"""

from __future__ import annotations

import common
from prefill import Prefill


def run(config: str, tokens: int, chunk_tokens: int, precisions: list[str], smoke: bool, emit):
    import jax
    import jax.numpy as jnp
    import numpy as np

    out = {}
    ref = None
    for precision in precisions:
        cfg = common.model_config(config, smoke=smoke, memory_precision=precision,
                                  attention_impl=common.pick_attention("auto"))
        bench = Prefill(cfg)  # same seed: same weights for every precision
        compiled, inputs, _, _ = bench.compile(tokens, chunk_tokens)
        logits, cache = compiled(bench.state, *inputs)
        logits = np.asarray(jax.device_get(logits), np.float64)
        mem = [(np.asarray(layer.M, np.float64), np.asarray(layer.z, np.float64)) for layer in cache.layers]
        out[precision] = (logits, mem)
        if ref is None:
            ref = out[precision]
            continue
        rl, rm = ref
        rel = lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
        emit(status="ok", config=config, tokens=tokens, precision=precision, reference=precisions[0],
             logits_max_abs_diff=float(np.max(np.abs(logits - rl))), logits_std=float(np.std(rl)),
             argmax_agreement=float(np.mean(np.argmax(logits, -1) == np.argmax(rl, -1))),
             M_max_rel_err=max(rel(m, r[0]) for (m, _), r in zip(mem, rm, strict=True)),
             z_max_rel_err=max(rel(z, r[1]) for (_, z), r in zip(mem, rm, strict=True)))
        del compiled, cache
        jax.clear_caches()
    jnp.zeros(()).block_until_ready()


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--config", default="300m")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--chunk_tokens", type=int, default=32768)
    p.add_argument("--precisions", default="highest,bf16_3x,default")
    args = p.parse_args(argv)
    if args.smoke:
        args.tokens, args.chunk_tokens = 2048, 512
    run(args.config, args.tokens, args.chunk_tokens, common.str_list(args.precisions), args.smoke,
        common.Emitter(args.jsonl, "memory_precision"))


if __name__ == "__main__":
    main()
