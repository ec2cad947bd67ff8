"""One process of a multi-process (multi-host style) CPU job, launched by ``tests/test_multiprocess.py``.

Usage::

    python tests/multiprocess_worker.py OUT.json --coordinator 127.0.0.1:PORT --num-processes N \
        --process-id I --dp DP --tp TP

Every process calls ``infini_jax.sharding.maybe_initialize_distributed`` (``jax.distributed.initialize``),
uses gloo for the cross-process CPU collectives (bound to 127.0.0.1), builds a global ``dp x tp`` mesh over
the devices of all processes (``XLA_FLAGS=--xla_force_host_platform_device_count=K`` gives each process K),
loads nanotron's fixture A into its shards and writes, as JSON:

* the max |logits - nanotron's logits| of the forward on ``ref_main.npz["input_ids"]`` (the sharded output
  gathered onto every process with ``multihost_utils.process_allgather``),
* the tokens of ``Generator(..., mesh=mesh).generate(PROMPTS)`` (replicated output, read on every process),
* the process / device layout actually seen, and timings.

Nothing is compared here: the test compares every process's tokens with a single-device run of its own.
Only loopback addresses are used: the coordinator binds ``JAX_COORDINATOR_BIND_ADDRESS`` (set by the test),
gloo binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, when not pip-installed

FIXTURE = ROOT / "tests" / "data" / "nanotron_A"
MAX_NEW_TOKENS = 5
BATCH_SIZE = 4


def prompts_from(ids) -> list[list[int]]:
    """Six prompts of unequal lengths (1 to 64 tokens, segments of 16) from the fixture's inputs.

    ``generate`` sorts them by length into two batches of BATCH_SIZE=4 (1, 7, 16, 52 | 59, 64 tokens, the
    second with two filler rows); both pad to the same 64-token bucket, so the decode loop compiles once.
    """
    a, b = [int(t) for t in ids[0]], [int(t) for t in ids[1]]
    return [a[:7], b[:52], a[5:69], b[:16], a[:59], b[40:41]]


def pin_gloo_to_loopback() -> str:
    """Makes the CPU backend use gloo TCP collectives bound to 127.0.0.1 (not the host name's address).

    JAX builds gloo from ``jax_cpu_collectives_implementation`` with no host name, so gloo binds the address
    the machine's host name resolves to. ``make_gloo_tcp_collectives`` takes ``hostname``; the backend factory
    is replaced (private API, before any device is touched) to pass it. Returns how gloo was configured.
    """
    import socket

    from jax._src import distributed, xla_bridge
    from jax._src.lib import _jax

    make = getattr(_jax, "make_gloo_tcp_collectives", None)
    if make is None:
        raise RuntimeError("gloo unavailable: this jaxlib has no make_gloo_tcp_collectives")
    try:
        def factory():
            collectives = make(distributed_client=distributed.global_state.client, hostname="127.0.0.1")
            return xla_bridge.make_cpu_client(collectives=collectives)

        xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
        return "gloo, hostname=127.0.0.1"
    except Exception as e:  # private API changed: only go on if the host name resolves to loopback anyway
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            raise RuntimeError(f"cannot pin gloo to 127.0.0.1 ({e!r}) and the host name resolves to {addr}") from e
        return f"gloo, default hostname ({socket.gethostname()} -> {addr})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--dp", type=int, required=True)
    parser.add_argument("--tp", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    host = args.coordinator.rsplit(":", 1)[0]
    if host != "127.0.0.1":
        raise SystemExit(f"only a loopback coordinator (127.0.0.1:PORT) is allowed here, got {args.coordinator}")

    result: dict = {"process_id": args.process_id, "ok": False}
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        import jax

        try:  # before the CPU backend is created
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception as e:
            raise RuntimeError(f"gloo unavailable: jax_cpu_collectives_implementation='gloo' refused: {e}") from e
        times["import"] = time.perf_counter() - t0

        import numpy as np
        from flax import nnx
        from jax.experimental import multihost_utils

        import infini_jax
        from infini_jax import sharding

        t = time.perf_counter()
        started = sharding.maybe_initialize_distributed(coordinator_address=args.coordinator,
                                                        num_processes=args.num_processes,
                                                        process_id=args.process_id)
        result["collectives"] = pin_gloo_to_loopback()
        result["initialized"] = bool(started)
        result["process_index"] = jax.process_index()
        result["process_count"] = jax.process_count()
        result["global_devices"] = jax.device_count()
        result["local_devices"] = jax.local_device_count()
        times["initialize"] = time.perf_counter() - t

        mesh = sharding.make_mesh(dp=args.dp, tp=args.tp)
        result["mesh_shape"] = {k: int(v) for k, v in mesh.shape.items()}
        result["mesh_process_ids"] = [[int(d.process_index) for d in row] for row in mesh.devices]

        t = time.perf_counter()
        ref = np.load(FIXTURE / "ref_main.npz")
        model = infini_jax.load_model(FIXTURE / "ckpt_tp1", dtype="float32", mesh=mesh)
        emb = model.embedding.get_value()  # [V, H], split over "model"
        result["embedding_spec"] = str(emb.sharding.spec)
        result["embedding_local_shards"] = [list(s.data.shape) for s in emb.addressable_shards]
        times["load"] = time.perf_counter() - t

        # (1) forward: ids split over "data"; the output is gathered onto every process.
        t = time.perf_counter()
        ids = np.asarray(ref["input_ids"], np.int32)
        with jax.set_mesh(mesh):
            out = nnx.jit(lambda m, x: m(x))(model, sharding.put(ids, sharding.data_sharding(mesh)))
        result["logits_fully_addressable"] = bool(out.is_fully_addressable)
        logits = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        result["logits_shape"] = list(logits.shape)
        result["logits_max_abs_diff"] = float(np.abs(logits - ref["logits"]).max())
        times["forward"] = time.perf_counter() - t

        # (2) generation: replicated output tokens, read on every process.
        t = time.perf_counter()
        gen = infini_jax.Generator(model, infini_jax.GenerationConfig(max_new_tokens=MAX_NEW_TOKENS,
                                                                      batch_size=BATCH_SIZE), mesh=mesh)
        result["tokens"] = gen.generate(prompts_from(ids))
        times["generate"] = time.perf_counter() - t

        # every process holds the same tokens: checked through a collective as well as by the test
        tokens = np.asarray(result["tokens"], np.int32)  # [prompts, MAX_NEW_TOKENS]: no early stop
        gathered = multihost_utils.process_allgather(tokens)
        result["tokens_agree_across_processes"] = bool((np.asarray(gathered) == tokens[None]).all())
        result["ok"] = True
    except Exception:
        result["error"] = traceback.format_exc()
    times["total"] = time.perf_counter() - t0
    result["seconds"] = times
    Path(args.out).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
