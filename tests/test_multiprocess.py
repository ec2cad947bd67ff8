"""Multi-host execution on one machine: several CPU processes joined by ``jax.distributed`` (gloo collectives).

Each layout starts N worker processes (``tests/multiprocess_worker.py``) that call
``sharding.maybe_initialize_distributed(coordinator_address="127.0.0.1:PORT", num_processes=N, process_id=i)``,
build one global ``("data", "model")`` mesh over the devices of all processes (each process exposes K CPU
devices with ``--xla_force_host_platform_device_count=K``), load nanotron's fixture A into its shards and

1. run the forward on ``ref_main.npz["input_ids"]``: the logits, gathered from all processes, must match
   nanotron's to 1e-4;
2. generate with ``Generator(..., mesh=mesh)``: every process must return the tokens of a single-device run
   computed here, in the pytest process (which is not part of any distributed job).

Layouts: 2 processes x 2 devices as dp=2 x tp=2 (the "model" axis inside a process, "data" across the two,
like hosts x GPUs) and as tp=4 (tensor-parallel all-reduces cross the processes through gloo), and
4 processes x 1 device as dp=2 x tp=2 (every all-reduce crosses processes).

Only loopback is used: the coordinator binds 127.0.0.1 (``JAX_COORDINATOR_BIND_ADDRESS``) and the workers
bind gloo to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multiprocess_worker.py")
FIXTURE = ROOT / "tests" / "data" / "nanotron_A"
# Per layout; a hung job (e.g. a process that never joins) is killed. Generous: four processes share two CPU cores
# in CI, and on a loaded machine (other jobs beside the suite) a 40 s limit killed a healthy 4-process layout.
JOB_TIMEOUT_S = 120
BIND_ERRORS = ("Address already in use", "Failed to bind", "address in use")

sys.path.insert(0, str(WORKER.parent))
import multiprocess_worker as worker  # noqa: E402  (only its constants and prompts: imports no jax)

# name -> (processes, devices per process, dp, tp)
LAYOUTS = {
    "2proc_x2dev_dp2_tp2": (2, 2, 2, 2),
    "2proc_x2dev_tp4": (2, 2, 1, 4),
    "4proc_x1dev_dp2_tp2": (4, 1, 2, 2),
}


def _gloo_available() -> str | None:
    """None if this jaxlib can build gloo TCP collectives, else why not."""
    try:
        from jax._src.lib import _jax
    except ImportError as e:  # pragma: no cover
        return f"cannot inspect jaxlib: {e}"
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        return "this jaxlib has no gloo CPU collectives (jax._src.lib._jax.make_gloo_tcp_collectives missing)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir: Path, n: int, per_process: int, dp: int, tp: int) -> tuple[list[dict | None], list[str]]:
    """Starts the n workers, waits for all (killing every one on timeout), returns their results and logs."""
    port = _free_port()
    coordinator = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_BIND_ADDRESS=coordinator,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={per_process}",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    outs = [out_dir / f"process{i}.json" for i in range(n)]
    logs = [out_dir / f"process{i}.log" for i in range(n)]
    procs = []
    try:
        for i in range(n):
            cmd = [sys.executable, str(WORKER), str(outs[i]), "--coordinator", coordinator, "--num-processes",
                   str(n), "--process-id", str(i), "--dp", str(dp), "--tp", str(tp)]
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = [i for i, p in enumerate(procs) if p.poll() is None]
        for i in timed_out:
            procs[i].kill()
        for i in timed_out:
            procs[i].wait(timeout=10)
    results = [json.loads(o.read_text()) if o.exists() else None for o in outs]
    texts = [lg.read_text() if lg.exists() else "" for lg in logs]
    for i in timed_out:
        texts[i] += f"\n[killed after {JOB_TIMEOUT_S} s]"
    return results, texts


def _run_layout(out_dir: Path, n: int, per_process: int, dp: int, tp: int):
    for attempt in range(2):  # the free port can be taken between choosing and binding it: retry once
        attempt_dir = out_dir / f"attempt{attempt}"
        attempt_dir.mkdir()
        results, logs = _launch(attempt_dir, n, per_process, dp, tp)
        if all(r is not None and r["ok"] for r in results):
            break
        text = "\n".join(logs) + "\n".join(r.get("error", "") for r in results if r)
        if not any(e in text for e in BIND_ERRORS):
            break
    return results, logs


@pytest.fixture(scope="module")
def reference():
    """Single-process, single-device tokens (this pytest process never joins a distributed job)."""
    reason = _gloo_available()
    if reason:
        pytest.skip(reason)
    import infini_jax

    ids = np.load(FIXTURE / "ref_main.npz")["input_ids"]
    model = infini_jax.load_model(FIXTURE / "ckpt_tp1", dtype="float32")
    config = infini_jax.GenerationConfig(max_new_tokens=worker.MAX_NEW_TOKENS, batch_size=worker.BATCH_SIZE)
    prompts = worker.prompts_from(ids)
    return infini_jax.Generator(model, config).generate(prompts)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_multiprocess_forward_and_generate(layout, reference, tmp_path):
    n, per_process, dp, tp = LAYOUTS[layout]
    start = time.perf_counter()
    results, logs = _run_layout(tmp_path, n, per_process, dp, tp)
    elapsed = time.perf_counter() - start
    failures = [(i, r.get("error") if r else None, logs[i][-3000:]) for i, r in enumerate(results)
                if r is None or not r["ok"]]
    if failures:
        text = "\n".join(f"--- process {i}:\n{err or ''}\n{log}" for i, err, log in failures)
        if "gloo unavailable" in text:
            pytest.skip(f"gloo CPU collectives unavailable: {text.strip().splitlines()[-1]}")
        pytest.fail(f"{layout}: {len(failures)} of {n} processes failed ({elapsed:.1f} s):\n{text}")

    expected_mesh = [[(r * tp + c) // per_process for c in range(tp)] for r in range(dp)]
    for i, r in enumerate(results):
        where = f"{layout}, process {i}"
        assert r["process_index"] == i and r["process_count"] == n, (where, r)
        assert r["global_devices"] == n * per_process and r["local_devices"] == per_process, (where, r)
        assert r["collectives"].startswith("gloo"), (where, r["collectives"])
        assert r["mesh_shape"] == {"data": dp, "model": tp}, (where, r["mesh_shape"])
        assert r["mesh_process_ids"] == expected_mesh, (where, r["mesh_process_ids"])  # host-major devices
        # each process holds only its own devices' shards of the vocab-split embedding [512, 64]
        assert r["embedding_local_shards"] == [[512 // tp, 64]] * per_process, (where, r)
        assert r["logits_shape"] == [2, 69, 512], (where, r["logits_shape"])
        assert r["logits_max_abs_diff"] <= 1e-4, (where, r["logits_max_abs_diff"])
        assert r["tokens"] == reference, (where, r["tokens"], reference)
        assert r["tokens_agree_across_processes"], where
    seconds = {k: round(max(r["seconds"][k] for r in results), 2) for k in results[0]["seconds"]}
    print(f"{layout}: {elapsed:.1f} s wall, worker max seconds {seconds}, "
          f"logits diff {max(r['logits_max_abs_diff'] for r in results):.2e}")
