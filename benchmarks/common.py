"""Shared helpers of the benchmark scripts: model configs, FLOP / byte formulas, timing, JSON-lines output.

Nothing here touches a device at import time (``run_all.py`` imports it and must leave the GPU to its
children). Every benchmark script is also a command-line program that appends one JSON object per
measurement to ``--jsonl`` (flushed at once, so a killed run loses nothing already measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # the GPU machine runs the scripts from a checkout, not an installed package
    sys.path.insert(0, str(REPO))

GIB = 1 << 30
CONFIG_NAMES = ("300m", "1b", "8b")

# Tiny stand-ins for --smoke (CPU, seconds): same structure (GQA where the real config has it, segment
# lengths in the same ratio to the prompt lengths), toy widths.
_SMOKE = {
    "300m": dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                 num_kv_heads=4, segment_length=64),
    "1b": dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
               num_kv_heads=2, segment_length=128),
    "8b": dict(vocab_size=512, hidden_size=64, intermediate_size=224, num_layers=3, num_heads=4,
               num_kv_heads=2, segment_length=16),
}


def model_config(name: str, *, smoke: bool = False, attention_impl: str = "xla", **overrides):
    """bf16 compute and weights, fp32 memory state: the numerics the benchmarks measure."""
    from infini_jax import config as C

    factories = {"300m": C.fork_300m_config, "1b": C.llama_1b_infini_config, "8b": C.llama3_8b_infini_config}
    if name not in factories:
        raise ValueError(f"Unknown config {name!r}: use one of {sorted(factories)}.")
    numerics = dict(dtype="bfloat16", param_dtype="bfloat16", memory_dtype="float32",
                    attention_impl=attention_impl)
    shape = _SMOKE[name] if smoke else {}
    return factories[name](**{**shape, **numerics, **overrides})


def pick_attention(requested: str) -> str:
    """'auto' -> cuDNN fused attention on GPU, XLA's einsum attention elsewhere."""
    if requested != "auto":
        return requested
    import jax

    return "cudnn" if jax.default_backend() == "gpu" else "xla"


# ----------------------------------------------------------------------------- formulas
def layer_matmul_params(cfg) -> int:
    """Weights one token multiplies in one decoder block (q, k, v, o projections and the SwiGLU MLP)."""
    h, i, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return h * (n * d + 2 * k * d) + n * d * h + 3 * h * i


def prefill_flops(cfg, tokens: int, batch: int = 1) -> dict[str, float]:
    """Forward FLOPs of ``model.prefill`` over ``batch`` rows of ``tokens`` tokens (a multiple of L).

    dense:     2 x (block matmul weights) per token per layer;
    attention: causal attention inside each segment, QK^T and PV only over the unmasked pairs:
               2 x 2 x N x D x L(L+1)/2 per segment = 2 N D (L+1) per token per layer (half of the
               4 x L x H convention that also counts the masked half);
    memory:    read sigma(q) M and sigma(q).z (2 N D^2 + 2 N D), delta-rule retrieval sigma(k) M and
               sigma(k).z (2 K D^2 + 2 K D), update sigma(k)^T V' and z (2 K D^2 + K D), per token per layer;
    head:      lm_head at the last position only (prefill returns one logit row per sequence).
    Embedding gathers, norms, RoPE, softmax and gates are not counted.
    """
    n, k, d, seg, layers = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.segment_length, cfg.num_layers
    tok = float(tokens) * batch
    dense = 2.0 * layers * layer_matmul_params(cfg) * tok
    attention = layers * 2.0 * n * d * (seg + 1) * tok
    memory = layers * (2.0 * n * d * d + 2.0 * n * d + 4.0 * k * d * d + 3.0 * k * d) * tok
    if not cfg.turn_on_memory:
        memory = 0.0
    head = 2.0 * cfg.vocab_size * cfg.hidden_size * batch
    total = dense + attention + memory + head
    # The anchors' definition (performance_anchors.md): 2 x (all parameters but the input embedding) x tokens.
    anchor = 2.0 * (cfg.num_params() - cfg.vocab_size * cfg.hidden_size) * tok
    return dict(dense=dense, attention=attention, memory=memory, head=head, total=total, anchor_def=anchor)


def _itemsize(dtype_name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype_name]


def decode_bytes(cfg, batch: int) -> dict[str, float]:
    """Fewest bytes one decode step must read: every weight once (the input embedding only as B rows), and
    per layer and row the memory M [K, D, D] and z [K, D] (state dtype) and the current segment's RoPE'd keys
    and values [L, K, D] (compute dtype) that the step attends over. The raw-key buffer is only written (one
    slot) until a segment is folded, and one-slot writes are not counted."""
    h, v, k, d, seg = cfg.hidden_size, cfg.vocab_size, cfg.num_kv_heads, cfg.head_dim, cfg.segment_length
    p, s, c = _itemsize(cfg.param_dtype), _itemsize(cfg.memory_dtype), _itemsize(cfg.dtype)
    params = cfg.num_params()
    if cfg.tie_word_embeddings:  # the table is read whole as lm_head
        weights = params * p
    else:
        weights = (params - v * h) * p + batch * h * p
    state = cfg.num_layers * batch * ((k * d * d + k * d) * s + 2 * seg * k * d * c)
    return dict(weights=float(weights), state=float(state), total=float(weights + state))


# ----------------------------------------------------------------------------- timing and output
def median(xs):
    return statistics.median(xs) if xs else None


def timed(fn: Callable[[], object], *, warmup: int = 1, reps: int = 3, budget_s: float = 10.0,
          sync: Callable[[object], object] | None = None) -> list[float]:
    """Wall-clock seconds of ``reps`` calls after ``warmup`` calls, each call synchronised by ``sync``
    (``jax.block_until_ready`` by default). Stops early (after at least one timed call) once ``budget_s``
    is spent."""
    if sync is None:
        import jax

        sync = jax.block_until_ready
    start = time.perf_counter()
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times


class Emitter:
    """Appends records to a JSON-lines file (flushed per record) and echoes a one-line summary."""

    def __init__(self, path: str | None, section: str):
        self.path = path
        self.section = section

    def __call__(self, **record):
        record = {"section": self.section, "time": time.strftime("%H:%M:%S"), **record}
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")
        brief = {k: v for k, v in record.items() if k not in ("section", "time", "times_s", "flops")}
        print(f"[{self.section}] " + json.dumps(brief, default=_json_default), flush=True)
        return record

    def error(self, exc: BaseException, **record):
        tb = traceback.format_exc(limit=6)
        print(tb, file=sys.stderr, flush=True)
        return self(status=classify_error(exc), error=f"{type(exc).__name__}: {str(exc)[:500]}", **record)


def classify_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    if "out of memory" in text or "resource_exhausted" in text or "outofmemory" in text or "oom" in text:
        return "OOM"
    return "error"


def _json_default(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    return str(x)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--jsonl", default=None, help="append one JSON object per measurement to this file")
    p.add_argument("--smoke", action="store_true", help="tiny configs and sizes (CPU check, seconds)")
    p.add_argument("--budget_s", type=float, default=120.0, help="soft time budget of this script")
    p.add_argument("--attention", default="auto", choices=["auto", "cudnn", "xla"])
    return p


def int_list(text: str) -> list[int]:
    """'32K,128K,1M,4096' -> [32768, 131072, 1048576, 4096]."""
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        if not part:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20}.get(part[-1], 1)
        out.append(int(part[:-1] if mult > 1 else part) * mult)
    return out


def str_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count())


def peak_bytes() -> int | None:
    """The device allocator's high-water mark since the process started (None where not reported)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        return None
    return stats.get("peak_bytes_in_use")


def bytes_in_use() -> int | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        return None
    return stats.get("bytes_in_use")


def memory_analysis(compiled) -> dict:
    """XLA's static buffer sizes of one executable (argument, output, temp, aliased) in bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    out = {}
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                "generated_code_size_in_bytes"):
        val = getattr(m, key, None)
        if val is not None:
            out[key.replace("_size_in_bytes", "_bytes")] = int(val)
    if {"argument_bytes", "output_bytes", "temp_bytes"} <= out.keys():
        out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out.get("alias_bytes", 0)
    return out


class Deadline:
    """A script's soft time budget: ``left()`` seconds remain; ``fits(s)`` whether s more seconds fit."""

    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def fits(self, seconds: float) -> bool:
        return seconds <= self.left()


def env_setup():
    """Quiet logs; no effect on numerics. With INFINI_BENCH_COMPILE_CACHE set (``run_all`` sets it to a fresh
    folder per run) JAX's persistent compilation cache is shared by the jobs of one run: what they compile
    alike (the random-init ops of a config) is compiled once. The programs that are timed differ per job."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    cache = os.environ.get("INFINI_BENCH_COMPILE_CACHE")
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
