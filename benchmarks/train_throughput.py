"""Training throughput of a training config's stages under the GPU speed options, and what they change in the loss.

    python3 benchmarks/train_throughput.py --jsonl $OUT/train_throughput.jsonl              # configs/train_demo.py
    python3 benchmarks/train_throughput.py --variants xla/highest,cudnn/default --steps 50
    python3 benchmarks/train_throughput.py --smoke                                          # CPU check, seconds

The default budget (--budget_s 400) is checked before each variant; each one compiles one train step per stage
shape (three for the demo recipe).

A training run has a time budget (the demo recipe: 560 s), so its steps per second decide how far it trains, and
more steps helped every seed the project tried (docs/training.md). For each variant (``attention_impl`` /
``memory_precision``: "xla" or "cudnn" attention inside segments, memory einsums "highest" (fp32), "bf16_3x" or
"default" (one pass)) and each stage shape of the config's curriculum it records, per step of ``Trainer``'s own
jitted train step on one fixed batch (so that the device is timed, not the host): seconds, tokens/s, model
TFLOP/s (3 x the forward FLOPs of ``common.prefill_flops`` plus the head over every position) and its fraction
of a bf16 matmul measured on the same device; the compile time; the host's batch-building time per step (the
training overlaps it with the device step, so it caps the rate only when it is longer); and the first step's loss
from the same initial weights and batch as the first variant (the options change the numerics: the loss
difference says by how much). Variants with cuDNN attention are skipped on a CPU and with --smoke, whose tiny
config computes in fp32 (recorded). Stages are timed at their main shape (a stage's short rows are not timed).
"""

from __future__ import annotations

import statistics
import tempfile
import time

import common

DEFAULT_VARIANTS = "xla/highest,xla/default,cudnn/highest,cudnn/default"


def _train_flops(cfg, batch: int, seq: int) -> float:
    """Forward + backward FLOPs of one step (3 x forward), the LM head over every position."""
    fwd = common.prefill_flops(cfg, seq, batch)
    head_all = 2.0 * cfg.vocab_size * cfg.hidden_size * batch * seq
    return 3.0 * (fwd["total"] - fwd["head"] + head_all)


def _parse_variant(text: str) -> tuple[str, str]:
    attention, _, precision = text.partition("/")
    if attention not in ("xla", "cudnn") or precision not in ("highest", "bf16_3x", "default"):
        raise ValueError(f"--variants: {text!r} is not ATTENTION/PRECISION with ATTENTION in xla, cudnn and "
                         "PRECISION in highest, bf16_3x, default (e.g. cudnn/default).")
    return attention, precision


def _config(config_path: str, smoke: bool, attention: str, precision: str, workdir: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("cpu_smoke" if smoke else "")
    c.workdir = workdir
    c.model.attention_impl, c.model.memory_precision = attention, precision
    c.probe.enabled = False
    c.eval.enabled = False
    return c


def run(args, emit) -> None:
    import jax
    from hardware import matmul_rate

    backend = jax.default_backend()
    rate = matmul_rate(256 if args.smoke else 8192, inner=2 if args.smoke else 10, reps=3)
    emit(status="ok", kind="matmul", backend=backend, device=common.device_info(), tflops=rate["tflops"])
    reference_loss: dict[tuple[int, int], float] = {}
    deadline = common.Deadline(args.budget_s)
    for text in common.str_list(args.variants):
        attention, precision = _parse_variant(text)
        if attention == "cudnn" and (backend != "gpu" or args.smoke):
            why = f"backend {backend}" if backend != "gpu" else "--smoke computes in fp32"
            emit(status="skipped", variant=text, reason=f"cuDNN attention needs a GPU and bf16 ({why})")
            continue
        if not deadline.fits(0):
            emit(status="skipped", variant=text, reason="budget spent")
            continue
        try:
            _measure_variant(args, emit, text, attention, precision, rate["tflops"], reference_loss)
        except Exception as exc:  # a variant that fails (e.g. a kernel unsupported here) leaves the others
            emit.error(exc, kind="train_step", variant=text)
        jax.clear_caches()


def _measure_variant(args, emit, text: str, attention: str, precision: str, matmul_tflops: float,
                     reference_loss: dict[tuple[int, int], float]) -> None:
    import jax
    import jax.numpy as jnp

    from infini_jax.train import Trainer

    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(_config(args.config, args.smoke, attention, precision, workdir))
        lr = {k: jnp.float32(v) for k, v in trainer.optim.factors(1000, 0.5, 0.1).items()}
        start_state = jax.tree.map(jnp.copy, trainer.state)  # every shape starts from the initial weights
        seen = set()
        for stage in trainer.stages:
            shape = (stage.batch_size, stage.seq_len)
            if shape in seen:
                continue
            seen.add(shape)
            first = trainer.make_batch(stage)  # also builds the stage's haystack table (once a stage): not timed
            while first["input_ids"].shape != shape:  # a short-rows step of the stage: draw again
                first = trainer.make_batch(stage)
            t0 = time.perf_counter()
            for _ in range(args.host_batches):
                trainer.make_batch(stage)
            host_s = (time.perf_counter() - t0) / args.host_batches
            batch = trainer._device_batch(first)
            state = jax.tree.map(jnp.copy, start_state)
            t0 = time.perf_counter()
            state, metrics = trainer._step_fn(state, batch, lr)
            loss = float(jax.device_get(metrics["loss"]))
            compile_s = time.perf_counter() - t0
            reference_loss.setdefault(shape, loss)
            times = []
            for _ in range(args.repeats):
                jax.block_until_ready(state)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    state, metrics = trainer._step_fn(state, batch, lr)
                jax.block_until_ready((state, metrics))
                times.append((time.perf_counter() - t0) / args.steps)
            step_s = statistics.median(times)
            tokens = shape[0] * shape[1]
            model_tflops = _train_flops(trainer.model_cfg, *shape) / step_s / 1e12
            emit(status="ok", kind="train_step", variant=text, attention_impl=attention,
                 memory_precision=precision, stage=stage.name, batch=shape[0], seq_len=shape[1],
                 step_s=step_s, steps_per_s=1.0 / step_s, tokens_per_s=tokens / step_s,
                 model_tflops=model_tflops, fraction_of_matmul=model_tflops / matmul_tflops,
                 compile_s=compile_s, host_batch_s=host_s, host_bound=host_s > step_s,
                 first_loss=loss, first_loss_minus_reference=loss - reference_loss[shape],
                 times_s=times)
            del state, metrics, batch


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("--config", default=str(common.REPO / "configs" / "train_demo.py"),
                   help="a training config file whose get_config takes a variant name ('' here, 'cpu_smoke' with "
                        "--smoke), as configs/train_demo.py")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="ATTENTION/PRECISION, comma-separated")
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--host_batches", type=int, default=5, help="batches built to time the host")
    p.set_defaults(budget_s=400.0)
    args = p.parse_args(argv)
    if args.attention != "auto":
        p.error("--attention: set the attention per variant with --variants (e.g. cudnn/highest)")
    if args.smoke:
        args.steps, args.repeats, args.host_batches = 2, 1, 2
    for text in common.str_list(args.variants):
        _parse_variant(text)
    run(args, common.Emitter(args.jsonl, "train_throughput"))


if __name__ == "__main__":
    main()
