"""Where a decode step's time goes: GPU kernels per step, GPU-busy time against wall time, the kernels that
cost most, the optimized HLO's op counts, and the per-token time under XLA flag variants.

Decode at batch 1 is far from its bandwidth roofline for small models (benchmarks/results: 300M 6.4x,
1B 2.6x). If the GPU is busy for only a small part of the wall time, the step is bound by kernel launches,
not by bytes; this script measures that instead of guessing::

    python benchmarks/decode_profile.py --configs 300m,1b --out_dir $OUT/profile
    python benchmarks/decode_profile.py --configs 300m --variants pad1,pad8,no_command_buffer

Variants: ``pad1`` / ``pad8`` / ``pad16`` (the rows a decode step's matmuls are padded to,
``INFINI_DECODE_MATMUL_ROWS``; the GPU default is 8), ``no_command_buffer`` and ``command_buffer_all``
(XLA's CUDA-graph settings), ``base`` (defaults). Each variant runs in a child process (XLA_FLAGS and the
environment are read once per process).

Findings on an H200 (jax 0.11.2, 2026-11-29; benchmarks/results/2026-11-29_followup_H200.md): the GPU is busy
for the whole step (not launch-bound); one-row matmuls were strength-reduced by XLA into multiply + reduce
kernels at ~1 TB/s (the flag that disables that, ``xla_gpu_enable_dot_strength_reduction``, does not exist in
this XLA); padding them to 8 rows keeps them GEMMs. Writes ``decode_profile.json``
(and the optimized HLO text per config) to ``--out_dir``. The per-token time is measured as in
``benchmarks/decode.py`` (chains of 1 and 3 compiled calls, differenced).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import common

VARIANTS = {
    "base": "",
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
    "command_buffer_all": ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,"
                           "CONDITIONAL --xla_gpu_graph_min_graph_size=1"),
}

# Variants that set environment variables of infini_jax (read when the decode step is traced).
ENV_VARIANTS = {"pad1": {"INFINI_DECODE_MATMUL_ROWS": "1"}, "pad8": {"INFINI_DECODE_MATMUL_ROWS": "8"},
                "pad16": {"INFINI_DECODE_MATMUL_ROWS": "16"}}
VARIANTS.update({name: "" for name in ENV_VARIANTS})


def hlo_counts(text: str) -> dict:
    """Op counts of an optimized HLO module (whole module; the decode loop body dominates)."""
    ops = collections.Counter()
    for line in text.splitlines():
        if " = " not in line:
            continue
        m = re.search(r"\s([a-z][a-z0-9\-]*)\(", line.split(" = ", 1)[1])  # the first name( is the opcode
        if m:
            ops[m.group(1)] += 1
    gemms = len(re.findall(r'custom_call_target="__cublas', text))
    return {"fusion": ops["fusion"], "custom-call": ops["custom-call"], "cublas_gemm": gemms,
            "copy": ops["copy"], "while": ops["while"], "dynamic-update-slice": ops["dynamic-update-slice"],
            "all_ops": sum(ops.values())}


def trace_summary(trace_dir: str, n_steps: int) -> dict:
    """Kernels in a perfetto trace of one compiled call of ``n_steps`` decode steps."""
    files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        return {"error": f"no perfetto_trace.json.gz under {trace_dir}"}
    with gzip.open(files[0], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    pnames, tnames = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            pnames[e["pid"]] = e.get("args", {}).get("name", "")
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            tnames[(e["pid"], e["tid"])] = e.get("args", {}).get("name", "")
    gpu_pids = {p for p, n in pnames.items() if "GPU" in n or "/device:" in n}
    threads = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            threads[(e["pid"], e["tid"])].append(e)
    per_thread = {}
    for key, evs in threads.items():
        name = f"{pnames.get(key[0], key[0])} / {tnames.get(key, key[1])}"
        evs.sort(key=lambda e: e["ts"])
        busy, end = 0.0, -1e30
        for e in evs:  # union of intervals
            s, t = e["ts"], e["ts"] + e.get("dur", 0)
            if s >= end:
                busy += t - s
                end = t
            elif t > end:
                busy += t - end
                end = t
        span = (evs[-1]["ts"] + evs[-1].get("dur", 0)) - evs[0]["ts"]
        per_thread[name] = {"events": len(evs), "events_per_step": len(evs) / n_steps, "busy_us": busy,
                            "span_us": span, "busy_us_per_step": busy / n_steps}
    # The stream with the most events carries the kernels.
    kernels = max(threads.items(), key=lambda kv: len(kv[1]))[1] if threads else []
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_name[e["name"]][0] += 1
        by_name[e["name"]][1] += e.get("dur", 0)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:30]
    counts = collections.Counter(e.get("pid") for e in events if e.get("ph") == "X")
    return {"processes": {str(pnames.get(p, p)): c for p, c in counts.items()}, "threads": per_thread,
            "top_kernels": [{"name": k[:160], "count": c, "total_us": t, "us_per_step": t / n_steps,
                             "mean_us": t / max(c, 1)} for k, (c, t) in top]}


def child(args) -> dict:
    """Runs in a fresh process: compile, time, trace one config."""

    import jax
    import jax.numpy as jnp
    from decode import Decode, chain_calls, time_per_step

    cfg = common.model_config(args.config, smoke=args.smoke, memory_precision=args.memory_precision)
    bench = Decode(cfg)
    cache = bench.cache(args.batch)
    tok = jnp.zeros((args.batch,), jnp.int32)
    n = args.n_steps
    t0 = time.perf_counter()
    lowered = bench.fn.lower(bench.state, tok, cache, n_steps=n)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    out = {"config": args.config, "batch": args.batch, "n_steps": n, "variant": args.variant,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": compile_s, "hlo": hlo_counts(text),
           "device": common.device_info()}
    if args.hlo_out:
        with open(args.hlo_out, "w") as f:
            f.write(text)
    per_step, one, three = time_per_step(compiled, bench.state, tok, cache, n, args.reps, budget_s=20)
    out.update(ms_per_token=per_step * 1e3, times_1call_s=one, times_3calls_s=three,
               roofline_bytes=common.decode_bytes(cfg, args.batch))
    if args.trace_dir:
        jax.block_until_ready(chain_calls(compiled, bench.state, tok, cache, 1))
        with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(chain_calls(compiled, bench.state, tok, cache, 1))
        try:
            out["trace"] = trace_summary(args.trace_dir, n)
        except Exception as e:  # noqa: BLE001
            out["trace"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def main(argv=None):
    common.env_setup()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="300m,1b")
    p.add_argument("--variants", default="pad1,pad8,pad16")
    p.add_argument("--trace_variants", default="pad1,pad8",
                   help="variants that also record a profiler trace")
    p.add_argument("--memory_precision", default="highest")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n_steps", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out_dir", default="benchmarks/results/decode_profile")
    p.add_argument("--smoke", action="store_true")
    # Child mode (one config, one variant, in this process).
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="300m", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="base", help=argparse.SUPPRESS)
    p.add_argument("--trace_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--hlo_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        res = child(args)
        with open(args.result, "w") as f:
            json.dump(res, f, default=str)
        return
    os.makedirs(args.out_dir, exist_ok=True)
    results = []
    for config in common.str_list(args.configs):
        for variant in common.str_list(args.variants):
            env = dict(os.environ)
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + VARIANTS[variant]).strip()
            env.update(ENV_VARIANTS.get(variant, {}))
            result_path = os.path.join(args.out_dir, f".{config}_{variant}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config", config, "--variant", variant,
                   "--batch", str(args.batch), "--n_steps", str(args.n_steps), "--reps", str(args.reps),
                   "--memory_precision", args.memory_precision, "--result", result_path]
            if variant in common.str_list(args.trace_variants):
                cmd += ["--trace_dir", tempfile.mkdtemp(prefix=f"decode_trace_{config}_{variant}_"),
                        "--hlo_out", os.path.join(args.out_dir, f"hlo_{config}_{variant}.txt")]
            if args.smoke:
                cmd.append("--smoke")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode or not os.path.exists(result_path):
                res = {"config": config, "variant": variant, "error": proc.stderr[-3000:]}
            else:
                with open(result_path) as f:
                    res = json.load(f)
                os.remove(result_path)
            res["wall_s"] = time.perf_counter() - t0
            results.append(res)
            brief = {k: res.get(k) for k in ("config", "variant", "ms_per_token", "hlo", "error")}
            print(json.dumps(brief, default=str)[:2000], flush=True)
    with open(os.path.join(args.out_dir, "decode_profile.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
