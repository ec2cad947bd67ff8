"""``run(config)``: what ``main.py`` calls. Dispatches on ``config.job``:

* ``"eval"``: :func:`infini_jax.evaluate.run` (passkey / needle evaluation, resumable results);
* ``"train"``: ``infini_jax.train.run`` (imported only for that job);
* ``"benchmark_suite"``: one evaluation per context length of ``config.context_lengths`` (each in
  ``save_path/ctx_<length>``, the model loaded and compiled once), then one combined ``summary.json``,
  ``heatmap.png`` and report in ``save_path`` (nanotron's ``run_full_passkey_benchmark_300m.sh``).

Before that it joins a multi-host run when ``config.coordinator_address`` (or the JAX_* / SLURM
environment) says so, and logs the devices.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from infini_jax import analyze, evaluate
from infini_jax.results import read_results

JOBS = ("eval", "train", "benchmark_suite")


def init_distributed(config) -> bool:
    """``jax.distributed.initialize`` for multi-host runs; must happen before any device is touched."""
    address = config.get("coordinator_address")
    num_processes, process_id = config.get("num_processes"), config.get("process_id")
    try:
        from infini_jax.sharding import maybe_initialize_distributed
    except ImportError:  # pragma: no cover
        if address:
            jax.distributed.initialize(address, num_processes, process_id)
            return True
        return False
    return maybe_initialize_distributed(address, num_processes, process_id)


class _QuietOrbax:
    def filter(self, record) -> bool:
        return record.levelno > 20 or "/orbax/" not in record.pathname.replace(os.sep, "/")


def quiet_library_logs() -> None:
    """Drops the INFO chatter of Orbax (one line per checkpoint file operation) from the absl log."""

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
        handler.addFilter(_QuietOrbax())


DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def request_deterministic_gpu_ops(config) -> bool:
    """With ``config.deterministic``, adds XLA's deterministic-GPU-kernels flag to ``XLA_FLAGS`` (no effect on CPU,
    where runs are already reproducible). XLA reads the flag when the backend starts, so this must run before any
    device is touched (``run`` calls it first); a flag already set to another value is overridden (XLA keeps the
    last). Returns whether the flag is set."""
    if not config.get("deterministic", False):
        return False
    flags = os.environ.get("XLA_FLAGS", "").split()
    name = DETERMINISTIC_XLA_FLAG.split("=")[0]
    values = [f.partition("=")[2].lower() for f in flags if f.partition("=")[0] == name]
    if values and values[-1] in ("true", "1", ""):
        return True
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)
    if started():
        raise RuntimeError("config.deterministic must be applied before JAX starts its backend: add "
                           f"{DETERMINISTIC_XLA_FLAG} to XLA_FLAGS in the environment instead.")
    os.environ["XLA_FLAGS"] = " ".join([*flags, DETERMINISTIC_XLA_FLAG])
    return True


def log_devices() -> None:
    devices = jax.devices()
    logging.info("JAX %s, process %d/%d, %d device(s) (%d local): %s", jax.__version__, jax.process_index(),
                 jax.process_count(), len(devices), jax.local_device_count(),
                 ", ".join(sorted({f"{d.platform}:{d.device_kind}" for d in devices})))


def run(config) -> dict:
    """Runs ``config.job``; returns its result (the summary dict for evaluations)."""
    job = config.get("job", "eval")
    if job not in JOBS:
        raise ValueError(f"Unknown job {job!r}: use one of {JOBS} (--config.job=...).")
    quiet_library_logs()
    request_deterministic_gpu_ops(config)
    init_distributed(config)
    log_devices()
    if job == "eval":
        return evaluate.run(config)
    if job == "train":
        from infini_jax import train

        return train.run(config)
    return run_benchmark_suite(config)


def _sub_config(config, ctx: int, save_path: str):
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
        sub.context_length = ctx
        sub.context_lengths = (ctx,)
        sub.save_path = save_path
        sub.results_file = None
    return sub


def run_benchmark_suite(config) -> dict:
    """One evaluation per context length (shared model and compiled generator), then a combined report."""
    evaluate.validate_config(config)
    lengths = [c for c in evaluate.eval_context_lengths(config) if c]
    if not lengths:
        raise ValueError("benchmark_suite needs context lengths: --config.context_lengths='(1024, 2048, 4096)'.")
    mesh = evaluate._mesh(config)
    tokenizer = evaluate.load_tokenizer(config.get("tokenizer"))
    model = evaluate.load_eval_model(config, mesh)
    generator = evaluate.make_generator(config, model, tokenizer, mesh)
    root = str(config.save_path)
    summaries: dict[str, dict] = {}
    for ctx in lengths:
        sub_dir = os.path.join(root, f"ctx_{ctx}")
        print(f"\n{'#' * 70}\n# Context length {ctx} -> {sub_dir}\n{'#' * 70}", flush=True)
        summaries[sub_dir] = evaluate.run(_sub_config(config, ctx, sub_dir), model=model, tokenizer=tokenizer,
                                          generator=generator)
    if jax.process_index() != 0:
        return {}
    records = read_results(list(summaries))
    combined = analyze.write_summary(root, records, model_name=str(config.get("model_name") or "Infini-Attention"),
                                     segment_length=model.cfg.segment_length)
    print(f"\n{'#' * 70}\n# Combined: {', '.join(str(c) for c in lengths)} tokens\n{'#' * 70}", flush=True)
    print(analyze.format_report(combined, os.path.join(root, analyze.SUMMARY_FILENAME)), flush=True)
    print(analyze.format_comparison(summaries), flush=True)
    print(f"Heatmap saved to: {os.path.join(root, analyze.HEATMAP_FILENAME)}", flush=True)
    return combined
