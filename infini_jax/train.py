"""The training job: optax AdamW with a balance-factor parameter group, a memory-first curriculum,
resumable Orbax checkpoints, JSON-lines metrics, export and a final passkey evaluation.

    python main.py --config=configs/train_demo.py --config.workdir=outputs/train_demo
    python main.py --config=configs/train_finetune.py --config.init_from=CKPT --config.data.text_files=DIR

``run(config)`` (``config.job == "train"``; the fields are documented in ``configs/train_common.py``):

1. Build the tokenizer, the model (random, or ``load_model(config.init_from)``), the optimizer and the data
   (synthetic passkey rows, packed ``.txt`` text, or a mix).
2. Resume from ``workdir/checkpoints`` when it holds a checkpoint (parameters, optimizer state, step,
   data RNG, curriculum and clock): re-running the same command continues the run exactly.
3. Train until the budget (``total_steps`` or ``total_seconds``) is used, advancing the curriculum;
   log every ``log_every`` steps to ``workdir/metrics.jsonl``; save every ``save_every`` steps. With
   ``session_seconds`` > 0 one invocation stops at the first log line after that many training seconds, saves
   and returns before step 4 (a budget spread over time-limited sessions: run the same command again to go on).
4. Export ``workdir/model`` (a converted directory for ``load_model``, with ``model_card.json``
   ``"trained": true`` and ``training_config.json``), run the virtual-length probe when enabled
   (``workdir/probe.json``, ``train_probe``), then evaluate it on freshly generated prompts (held-out keys and
   haystack text) into ``workdir/eval`` and ``workdir/eval.json``. With ``optim.ema_decay`` > 0 the same for the
   weight average (``train_ema``): ``workdir/model_ema`` and ``workdir/ema/`` (probe.json, eval/, eval.json).

Loss = ``lm_weight`` * next-token CE over all tokens + ``answer_weight`` * CE on the answer digits +
``needle_copy_weight`` * CE on the needle's second copy of the key (each a mean over its tokens).
Gradients flow through the memory chain of all segments unless ``stop_gradient_between_segments``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from infini_jax import sharding
from infini_jax.attention import check_attention_backend, gate_activation
from infini_jax.config import ModelConfig
from infini_jax.config import config_value as _cfg_get
from infini_jax.model import InfiniLlama
from infini_jax.train_data import (
    BATCH_KEYS,
    PasskeyBatcher,
    TextStream,
    check_boundary_digits,
    check_boundary_window,
    check_repeated_digit_share,
    check_repeated_digit_span,
    check_share,
    check_virtual_length_scope,
    concat_batches,
    haystack_text,
    text_files,
)
from infini_jax.train_ema import EMA_DIR, EMA_EVAL_DIR, check_ema_decay, ema_as_state, init_ema, update_ema
from infini_jax.train_eval import run_eval
from infini_jax.train_optim import OptimSettings, make_optimizer
from infini_jax.train_probe import Probe, probe_enabled, run_probe
from infini_jax.train_report import CLOSING_WINDOW_STEPS, closing_far_accuracy, read_metric_lines
from infini_jax.train_schedule import Curriculum, Stage, stages_from_config

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
MODEL_CARD_FILE = "model_card.json"
TRAINING_CONFIG_FILE = "training_config.json"
# Far-needle training accuracy over the last CLOSING_WINDOW_STEPS steps below which a run is flagged: of the fourteen
# demo-recipe runs of sessions five to eight every one that ended below it (seven; ten with sessions nine and ten)
# missed the targets at long contexts, and 4 of the 7 above it missed too (docs/training.md; an earlier run ended at
# 1.00 and failed). A warning, never an error; the virtual-length probe (train_probe.py) looks where this average
# does not.
CLOSING_FAR_ACCURACY_WARNING = 0.99
# The same flag at half-time: the far-needle accuracy with which a run leaves its first stage (the curriculum event's,
# the gate's reading). Of the 25 demo-recipe runs whose stage exits were logged (sessions seven to fifteen), 12 of
# the 13 that left stage 0 below it missed the targets (the one that met them had a windowed gate; Q2 missed at 16M
# only), and 4 of the 12 at or above it missed too (docs/training.md, thirteenth to fifteenth sessions; the
# threshold was chosen on the first 20 of these runs). A warning.
FIRST_STAGE_EXIT_WARNING = 0.985
# ModelConfig fields that may be changed when fine-tuning a checkpoint (numerics, not architecture).
NUMERIC_FIELDS = ("dtype", "param_dtype", "memory_dtype", "memory_query", "attention_impl",
                  "memory_precision")
# The numerics an exported model is stored with: nanotron's (XLA attention runs on any device and dtype, fp32 memory
# einsums), whatever GPU speed options the run trained with; load_model(..., attention_impl="cudnn") opts in again.
PORTABLE_NUMERICS = {"attention_impl": "xla", "memory_precision": "highest"}


# ----------------------------------------------------------------------------- loss
@dataclasses.dataclass(frozen=True)
class LossWeights:
    lm: float = 1.0
    answer: float = 0.0
    copy: float = 0.0


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_and_metrics(model: InfiniLlama, batch: dict[str, jax.Array], weights: LossWeights,
                     stop_gradient_between_segments: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted loss and metric sums for one batch (fields of ``train_data.BATCH_KEYS``).

    The masks are aligned with the logits: position t predicts token t + 1 (the last position never counts).
    """
    ids = batch["input_ids"]
    logits = model(ids, write_weight=batch["write_weight"],
                   stop_gradient_between_segments=stop_gradient_between_segments)  # [B, S, V] fp32
    targets = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)  # the wrapped last column is masked out
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    lm = _masked_mean(nll, batch["lm_mask"])
    answer = _masked_mean(nll, batch["answer_mask"])
    copy = _masked_mean(nll, batch["copy_mask"])
    loss = weights.lm * lm + weights.answer * answer + weights.copy * copy
    # A row's answer is exact when every answer digit is the argmax (teacher forcing = greedy here).
    amask = batch["answer_mask"]
    exact = jnp.all((correct > 0) | (amask == 0), axis=1).astype(jnp.float32) * batch["is_passkey"]
    far = batch["far"] * batch["is_passkey"]
    near = (1.0 - batch["far"]) * batch["is_passkey"]
    metrics = {
        "loss": loss, "lm_loss": lm, "answer_loss": answer, "copy_loss": copy,
        "far_correct": jnp.sum(exact * far), "far_count": jnp.sum(far),
        "near_correct": jnp.sum(exact * near), "near_count": jnp.sum(near),
        "digit_correct": jnp.sum(correct * amask), "digit_count": jnp.sum(amask),
        "copy_correct": jnp.sum(correct * batch["copy_mask"]), "copy_count": jnp.sum(batch["copy_mask"]),
    }
    return loss, metrics


def gates(model: InfiniLlama) -> jax.Array:
    """[layers, heads] g = act(balance_factors)."""
    act = model.cfg.balance_act_type
    return jnp.stack([gate_activation(layer.attn.balance_factors[...], act) for layer in model.layers])


# ----------------------------------------------------------------------------- train step
def train_step(graphdef, weights: LossWeights, stop_gradient: bool, state, batch, lr_factors):
    """One update of ``(model, optimizer)`` held as ``nnx.split`` state. Returns (state, metrics)."""
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(lambda m: loss_and_metrics(m, batch, weights, stop_gradient), has_aux=True)
    (_, metrics), grads = grad_fn(model)
    metrics["grad_norm"] = optax.global_norm(grads)
    optimizer.update(model, grads, lr_factors=lr_factors)
    metrics["gates"] = gates(model)
    return nnx.state((model, optimizer)), metrics


_train_step = jax.jit(train_step, static_argnums=(0, 1, 2), donate_argnums=(3,))


# ----------------------------------------------------------------------------- helpers
def _to_plain(x):
    if hasattr(x, "to_dict"):
        return _to_plain(x.to_dict())
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_plain(v) for v in x]
    return x


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class Clock:
    """Training seconds: wall time with pauses (compilation, checkpoints, logs) taken out."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed_before = elapsed
        self._start: float | None = None

    def start(self) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def pause(self) -> None:
        if self._start is not None:
            self.elapsed_before += time.perf_counter() - self._start
            self._start = None

    @property
    def elapsed(self) -> float:
        running = 0.0 if self._start is None else time.perf_counter() - self._start
        return self.elapsed_before + running


def load_tokenizer_for(config):
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(_cfg_get(config, "tokenizer") or DEMO_TOKENIZER_PATH)
    tok.model_max_length = 1 << 40
    return tok


def build_model(config) -> InfiniLlama:
    """A random model from ``config.model``, or ``load_model(config.init_from)`` with its numerics."""
    model_fields = _to_plain(config.model)
    init_from = _cfg_get(config, "init_from")
    if init_from:
        from infini_jax.api import load_model

        overrides = {k: v for k, v in model_fields.items() if k in NUMERIC_FIELDS and v is not None}
        if model_fields.get("segment_length"):
            overrides["segment_length"] = int(model_fields["segment_length"])  # Hugging Face folders only
        overrides.setdefault("param_dtype", "float32")
        logging.info("Initialising from %s with %s", init_from, overrides)
        return load_model(init_from, **overrides)
    cfg = ModelConfig.from_dict(model_fields)
    return InfiniLlama(cfg, rngs=nnx.Rngs(int(_cfg_get(config, "seed", 0))),
                       init_std=float(_cfg_get(config, "init_std", 0.02)))


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Owns the model/optimizer state, the data, the curriculum and the checkpoints of one workdir."""

    def __init__(self, config):
        self.config = config
        if bool(_cfg_get(config, "require_init_from", False)) and not _cfg_get(config, "init_from"):
            raise ValueError("This config fine-tunes a trained model: set --config.init_from=<a nanotron step "
                             "directory, a converted directory or a training run's export, e.g. outputs/run/model>.")
        self.workdir = Path(config.workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.optim = OptimSettings.from_config(config.optim)
        self.weights = LossWeights(lm=float(config.loss.lm_weight), answer=float(config.loss.answer_weight),
                                   copy=float(config.loss.needle_copy_weight))
        self.stop_gradient = bool(_cfg_get(config, "stop_gradient_between_segments", False))
        self.stages = stages_from_config(config.curriculum)
        self.curriculum = Curriculum(self.stages)
        self.total_steps = int(_cfg_get(config, "total_steps", 0) or 0)
        self.total_seconds = float(_cfg_get(config, "total_seconds", 0) or 0)
        if self.total_steps <= 0 and self.total_seconds <= 0:
            raise ValueError("Set a training budget: config.total_steps > 0 or config.total_seconds > 0.")
        self.session_seconds = float(_cfg_get(config, "session_seconds", 0) or 0)
        if self.session_seconds < 0:
            raise ValueError(f"config.session_seconds={self.session_seconds} must be >= 0 (0: train to the end of the "
                             "budget in one invocation).")
        if self.session_seconds and jax.process_count() > 1:
            # Each process reads its own clock, so processes could stop at different steps and hang a collective.
            raise ValueError("config.session_seconds is for single-process jobs; set it to 0 in a multi-process run.")
        self.log_every = max(1, int(_cfg_get(config, "log_every", 25)))
        self.save_every = int(_cfg_get(config, "save_every", 0) or 0)
        if self.save_every % self.log_every:
            # A checkpoint between two log lines would lose the partial interval's metrics on resume, so the resumed
            # run's next line (and the accuracy gate that reads it) would differ from an uninterrupted run's.
            raise ValueError(f"config.save_every={self.save_every} must be a multiple of config.log_every="
                             f"{self.log_every} (or 0): checkpoints are taken at log lines.")

        self.tokenizer = load_tokenizer_for(config)
        model = build_model(config)
        from infini_jax.data.tokenizer import check_vocab

        check_vocab(self.tokenizer, model.cfg.vocab_size)
        check_attention_backend(model.cfg.attention_impl)  # before the data and the probe are built
        self.model_cfg = model.cfg
        # The virtual-length probe (train_probe.py): built now, so that a bad probe config fails before training.
        self.probe = Probe(config, self.tokenizer, model.cfg.segment_length) if probe_enabled(config) else None
        probe_cfg = _cfg_get(config, "probe")
        self.probe_every = int(_cfg_get(probe_cfg, "every_steps", 0) or 0) if probe_cfg is not None else 0
        if self.probe_every and not self.probe:
            raise ValueError(f"config.probe.every_steps={self.probe_every} needs config.probe.enabled=True.")
        if self.probe_every < 0 or self.probe_every % self.log_every:
            raise ValueError(f"config.probe.every_steps={self.probe_every} must be a multiple of config.log_every="
                             f"{self.log_every} (or 0: only after training).")
        self._probe_warned = False
        self._build_data()
        self.mesh = self._make_mesh()
        optimizer = make_optimizer(model, self.optim)
        self.graphdef, state = nnx.split((model, optimizer))
        self.state = self._place_state(state)
        self._step_fn = self._make_step_fn()
        # The weight average (train_ema.py): a read-out beside the state, never part of the update.
        self.ema_decay = check_ema_decay(self.optim.ema_decay)
        self.ema = init_ema(self.state[0]) if self.ema_decay else None
        self._ema_decay_scalar = jnp.float32(self.ema_decay)  # made once, not at every step

        self.step = 0
        self.rng = np.random.default_rng(int(_cfg_get(config, "data_seed", 1)))
        self.clock = Clock()
        self.tokens_seen = 0
        self.warmup_end_progress = (self.optim.warmup_steps / self.total_steps) if self.total_steps else None
        if self.optim.warmup_steps == 0:
            self.warmup_end_progress = 0.0
        self.history: list[dict[str, Any]] = []  # the records written to metrics.jsonl by this process
        self._pending: list[tuple[int, dict]] = []
        self._interval: list[dict[str, np.ndarray]] = []
        self._interval_tokens = 0
        self._interval_short_steps = 0
        self._interval_start = time.perf_counter()
        self._compiled_shapes: set[tuple[int, int]] = set()
        self.ckpt = ocp.CheckpointManager(
            self.workdir / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(max_to_keep=int(_cfg_get(config, "max_to_keep", 3)), create=True,
                                                 enable_async_checkpointing=False))

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        d = self.config.data
        self.source = str(_cfg_get(d, "source", "passkey"))
        if self.source not in ("passkey", "text", "mix"):
            raise ValueError(f"data.source={self.source!r}: use 'passkey', 'text' or 'mix'.")
        self.batcher = None
        self.text = None
        num_digits = int(_cfg_get(d, "num_digits", 5))
        if self.source in ("passkey", "mix"):
            mix = float(_cfg_get(d, "haystack_mix", 0.5))
            varied = str(_cfg_get(d, "varied_haystack", "generated"))
            seeds = varied_text_seeds(self.config)
            names = ["varied"] if len(seeds) == 1 else [f"varied_{i}" for i in range(len(seeds))]
            texts = {"classic": haystack_text("classic"),
                     **{name: haystack_text(varied, seed=seed) for name, seed in zip(names, seeds, strict=True)}}
            self.batcher = PasskeyBatcher(self.tokenizer, segment_length=self.model_cfg.segment_length,
                                          num_digits=num_digits, haystacks=texts,
                                          haystack_weights={"classic": mix,
                                                            **{name: (1.0 - mix) / len(names) for name in names}})
            for st in self.stages:
                self.batcher.haystack_tokens(st.seq_len)  # fail now, not at the stage
                if st.repeated_digit_share is not None:
                    check_repeated_digit_share(st.repeated_digit_share, num_digits)
                if st.short_share > 0:
                    self.batcher.haystack_tokens(st.short_seq_len)
        if self.source in ("text", "mix"):
            spec = _cfg_get(d, "text_files")
            if not spec:
                raise ValueError(f"data.source={self.source!r} needs data.text_files (files, directories or globs "
                                 "of .txt).")
            self.text = TextStream(self.tokenizer, text_files(spec), cache_path=str(self.workdir / "text_tokens.npy"))
        self.text_fraction = 1.0 if self.source == "text" else (
            float(_cfg_get(d, "text_fraction", 0.5)) if self.source == "mix" else 0.0)
        self.prob_r_one = float(_cfg_get(d, "virtual_length_prob_one", 0.1))
        self.virtual_length_scope = check_virtual_length_scope(str(_cfg_get(d, "virtual_length_scope", "haystack")))
        self.random_answer_position = bool(_cfg_get(d, "random_answer_position", True))
        self.answer_boundary_share = float(_cfg_get(d, "answer_boundary_share", 0.0))
        self.answer_boundary_digits = check_boundary_digits(_cfg_get(d, "answer_boundary_digits", ()), num_digits)
        self.key_terminator = bool(_cfg_get(d, "key_terminator", False))
        self.repeated_digit_share = check_repeated_digit_share(_cfg_get(d, "repeated_digit_share", 0.0), num_digits)
        shares = [self.repeated_digit_share, *(st.repeated_digit_share or 0.0 for st in self.stages)]
        self.repeated_digit_span = check_repeated_digit_span(str(_cfg_get(d, "repeated_digit_span", "adjacent")),
                                                             num_digits, max(shares))  # fail now, not at a stage
        self.needle_boundary_share = check_share("needle_boundary_share", _cfg_get(d, "needle_boundary_share", 0.0))
        boundary_shares = [self.needle_boundary_share, *(st.needle_boundary_share or 0.0 for st in self.stages)]
        window = _cfg_get(d, "needle_boundary_window", 8)
        # Checked against the segment only where a stage places needles at boundaries (text-only fine-tuning of a
        # model with short segments never uses it).
        self.needle_boundary_window = (check_boundary_window(window, self.model_cfg.segment_length)
                                       if max(boundary_shares) > 0 else window)

    def _make_mesh(self):
        n = jax.device_count()
        if n == 1:
            return None
        for st in self.stages:
            if st.batch_size % n:
                raise ValueError(f"Stage {st.name!r}: batch_size {st.batch_size} is not a multiple of the {n} "
                                 "devices (data parallel).")
            if st.short_share > 0 and st.short_batch_size % n:
                raise ValueError(f"Stage {st.name!r}: short_batch_size {st.short_batch_size} is not a multiple of "
                                 f"the {n} devices (data parallel).")
        return sharding.make_mesh(dp=n, tp=1)

    def _place_state(self, state):
        if self.mesh is None:  # committed, like restored arrays: one compiled step for both
            return jax.device_put(state, jax.devices()[0])
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(state, replicated)

    def _make_step_fn(self):
        if self.mesh is None:
            return functools.partial(_train_step, self.graphdef, self.weights, self.stop_gradient)
        state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        fn = jax.jit(train_step, static_argnums=(0, 1, 2), donate_argnums=(3,),
                     out_shardings=(state_shardings, None))
        return functools.partial(fn, self.graphdef, self.weights, self.stop_gradient)

    # ------------------------------------------------------------------ properties
    @property
    def progress(self) -> float:
        if self.total_steps:
            return self.step / self.total_steps
        return self.clock.elapsed / self.total_seconds

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    def session_over(self, session_start: float) -> bool:
        """Whether this invocation has trained its ``session_seconds`` (training seconds since ``session_start``,
        the clock's reading when it began; never with ``session_seconds`` 0). The loop asks at log lines only, so a
        session ends where an uninterrupted run logs too and the metrics (and the accuracy gate) stay the same."""
        return self.session_seconds > 0 and self.clock.elapsed - session_start >= self.session_seconds

    def model(self) -> InfiniLlama:
        return nnx.merge(self.graphdef, self.state)[0]

    def one_device_model(self) -> InfiniLlama:
        """The current model on one device (the probe and the evaluation run there)."""
        model = self.model()
        return model if self.mesh is None else _to_one_device(model)

    # ------------------------------------------------------------------ data
    def _draw_batch_shape(self, stage: Stage) -> tuple[int, int, float]:
        """(rows, tokens per row, virtual_length_max) of the next batch: the stage's, or, in a share
        ``stage.short_share`` of the steps (one draw from the data RNG, none when the share is 0), its short rows
        without virtual length."""
        if stage.short_share > 0 and self.rng.random() < stage.short_share:
            return stage.short_batch_size, stage.short_seq_len, 1.0
        return stage.batch_size, stage.seq_len, stage.virtual_length_max

    def _stage_option(self, stage: Stage, option: str) -> float:
        """A data option's value in ``stage``: the stage's own when set, else the data config's."""
        value = getattr(stage, option)
        return getattr(self, option) if value is None else value

    def make_batch(self, stage: Stage) -> dict[str, np.ndarray]:
        b, s, virtual_length_max = self._draw_batch_shape(stage)
        n_text = int(round(b * self.text_fraction))
        parts = []
        if n_text:
            parts.append(self.text.sample(self.rng, n_text, s))
        if b - n_text:
            parts.append(self.batcher.sample(self.rng, b - n_text, s, force_early=stage.force_early_needle,
                                             virtual_length_max=virtual_length_max, prob_r_one=self.prob_r_one,
                                             virtual_length_scope=self.virtual_length_scope,
                                             random_answer_position=self.random_answer_position,
                                             answer_boundary_share=self._stage_option(stage, "answer_boundary_share"),
                                             answer_boundary_digits=self.answer_boundary_digits,
                                             key_terminator=self.key_terminator,
                                             repeated_digit_share=self._stage_option(stage, "repeated_digit_share"),
                                             repeated_digit_span=self.repeated_digit_span,
                                             needle_boundary_share=self._stage_option(stage, "needle_boundary_share"),
                                             needle_boundary_window=self.needle_boundary_window))
        return concat_batches(parts)

    def _device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        batch = {k: batch[k] for k in BATCH_KEYS}
        if self.mesh is None:
            return jax.device_put(batch)
        return jax.device_put(batch, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data")))

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        return {"step": self.step, "rng": self.rng.bit_generator.state, "curriculum": self.curriculum.state_dict(),
                "train_seconds": self.clock.elapsed, "tokens_seen": self.tokens_seen, "ema_decay": self.ema_decay,
                "warmup_end_progress": self.warmup_end_progress, "model_config": self.model_cfg.to_dict()}

    def save(self) -> None:
        self.clock.pause()
        self._flush_pending()
        if self.ckpt.latest_step() != self.step:
            items = {"state": ocp.args.StandardSave(self.state), "meta": ocp.args.JsonSave(self._meta())}
            if self.ema is not None:
                items["ema"] = ocp.args.StandardSave(self.ema)
            self.ckpt.save(self.step, args=ocp.args.Composite(**items), force=True)
            self.ckpt.wait_until_finished()
            logging.info("Saved checkpoint at step %d in %s", self.step, self.workdir / CHECKPOINT_DIR)
        self._interval_start = time.perf_counter()

    def restore(self) -> bool:
        """Restores the latest checkpoint of the workdir, if any. Returns whether it did."""
        step = self.ckpt.latest_step()
        if step is None:
            return False
        meta = self.ckpt.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved_decay = float(meta.get("ema_decay") or 0.0)  # checkpoints from before the average have none
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, self.state)
        items = {"state": ocp.args.StandardRestore(target)}
        has_ema = saved_decay > 0
        if self.ema is not None and has_ema:
            items["ema"] = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, self.ema))
            if saved_decay != self.ema_decay:
                logging.info("The weight average was kept with optim.ema_decay %g until step %d; it goes on with %g.",
                             saved_decay, step, self.ema_decay)
        restored = self.ckpt.restore(step, args=ocp.args.Composite(**items))
        arch = lambda d: {k: v for k, v in d.items() if k not in NUMERIC_FIELDS}  # numerics may change
        if meta.get("model_config") and arch(meta["model_config"]) != arch(self.model_cfg.to_dict()):
            raise ValueError(f"The checkpoint in {self.workdir / CHECKPOINT_DIR} was written for another model "
                             f"({meta['model_config']}); use a new workdir.")
        self.state = restored["state"]
        if self.ema is not None:
            if has_ema:
                self.ema = restored["ema"]
            else:
                self.ema = init_ema(self.state[0])
                logging.warning("The checkpoint at step %d has no weight average (it was written without "
                                "optim.ema_decay): the average starts from its weights.", step)
        self.step = int(meta["step"])
        self.rng.bit_generator.state = meta["rng"]
        self.curriculum.load_state_dict(meta["curriculum"])
        self.clock = Clock(float(meta["train_seconds"]))
        self.tokens_seen = int(meta["tokens_seen"])
        self.warmup_end_progress = meta.get("warmup_end_progress", self.warmup_end_progress)
        self._truncate_metrics(self.step)
        logging.info("Resumed from step %d (stage %s, %.1f training seconds)", self.step,
                     self.curriculum.stage.name, self.clock.elapsed)
        return True

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) of every readable line of metrics.jsonl (a line cut short by a crash is skipped)."""
        return read_metric_lines(self.workdir / METRICS_FILE)

    def _truncate_metrics(self, step: int) -> None:
        """Drops metric lines written after the checkpoint at ``step`` by an interrupted run (they are recomputed):
        lines of later steps, and events of this step (a stage change at ``step`` is logged after its checkpoint)."""
        path = self.workdir / METRICS_FILE
        if path.is_file():
            keep = [line for line, rec in self._metric_lines()
                    if int(rec.get("step", 0)) < step or (int(rec.get("step", 0)) == step and "event" not in rec)]
            path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")

    # ------------------------------------------------------------------ metrics
    def _flush_pending(self) -> None:
        for step, m in self._pending:
            m = jax.device_get(m)
            m["step"] = step
            self._interval.append(m)
        self._pending.clear()

    def _write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if jax.process_index() == 0:
            with open(self.workdir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")

    def log_interval(self, lr: dict[str, float]) -> dict[str, Any] | None:
        self._flush_pending()
        if not self._interval:
            return None
        ms = self._interval
        total = lambda k: float(sum(float(m[k]) for m in ms))
        mean = lambda k: total(k) / len(ms)
        ratio = lambda a, b: (total(a) / total(b)) if total(b) > 0 else None
        g = np.asarray(ms[-1]["gates"], np.float64)  # [layers, heads] after the last update
        seconds = time.perf_counter() - self._interval_start
        rec = {
            "step": self.step, "stage": self.curriculum.stage.name, "progress": round(self.progress, 5),
            "train_seconds": round(self.clock.elapsed, 3),
            "loss": mean("loss"), "lm_loss": mean("lm_loss"), "answer_loss": mean("answer_loss"),
            "copy_loss": mean("copy_loss"), "far_accuracy": ratio("far_correct", "far_count"),
            "near_accuracy": ratio("near_correct", "near_count"),
            "digit_accuracy": ratio("digit_correct", "digit_count"),
            "copy_accuracy": ratio("copy_correct", "copy_count"),
            "far_fraction": (total("far_count") / (total("far_count") + total("near_count")))
            if total("far_count") + total("near_count") > 0 else None,
            "grad_norm": mean("grad_norm"), "lr": self.optim.lr * lr["default"],
            "balance_factor_lr": self.optim.balance_factor_lr * lr["balance"],
            "tokens_per_second": self._interval_tokens / max(seconds, 1e-9), "tokens_seen": self.tokens_seen,
            "short_steps": self._interval_short_steps,  # steps of the interval on the stage's short rows
            "gate_mean": g.mean(axis=1).round(5).tolist(), "gate_min": g.min(axis=1).round(5).tolist(),
            "gate_max": g.max(axis=1).round(5).tolist(),
        }
        self._write(rec)
        self.curriculum.record_accuracy(rec["far_accuracy"], self.step)
        far = "n/a" if rec["far_accuracy"] is None else f"{rec['far_accuracy']:.3f}"
        logging.info("step %d [%s] loss %.4f (lm %.4f answer %.4f copy %.4f) far-acc %s digit-acc %s lr %.2e "
                     "bf-lr %.2e gnorm %.3f %.0f tok/s gates(mean/layer) %s", self.step, rec["stage"], rec["loss"],
                     rec["lm_loss"], rec["answer_loss"], rec["copy_loss"], far,
                     "n/a" if rec["digit_accuracy"] is None else f"{rec['digit_accuracy']:.3f}", rec["lr"],
                     rec["balance_factor_lr"], rec["grad_norm"], rec["tokens_per_second"], rec["gate_mean"])
        self._interval = []
        self._interval_tokens = 0
        self._interval_short_steps = 0
        self._interval_start = time.perf_counter()
        return rec

    def log_probe(self) -> dict[str, Any] | None:
        """Runs the probe on the current weights (outside the training clock and tokens/s) and logs ``{"step",
        "probe_exact_match": {r: rate}, "probe_min_exact_match", "probe_cut_key_exact_match"}`` (the last with
        ``probe.cut_keys_per_place`` and places to probe) to metrics.jsonl. Single-process runs only (the probe
        runs on one device)."""
        if jax.process_count() > 1:
            if not self._probe_warned:
                logging.warning("probe.every_steps: the probe during training runs in single-process jobs only; "
                                "this %d-process job probes after training.", jax.process_count())
                self._probe_warned = True
            return None
        t0 = time.perf_counter()
        result = self.probe(self.one_device_model())
        rec = {"step": self.step, "stage": self.curriculum.stage.name,
               "probe_exact_match": {r: v["exact_match"] for r, v in result["by_virtual_length"].items()},
               "probe_min_exact_match": result["min_exact_match"]}
        cut = (result.get("cut_key") or {}).get("exact_match")
        if cut is not None:
            rec["probe_cut_key_exact_match"] = cut
        self._write(rec)
        seconds = time.perf_counter() - t0
        self._interval_start += seconds  # the next interval's tokens/s leaves the probe out
        logging.info("step %d probe (%d tokens, haystack writes x r): exact match %s%s (%.1fs)", self.step,
                     result["context_length"], {r: round(v, 3) for r, v in rec["probe_exact_match"].items()},
                     "" if cut is None else f", cut keys {cut:.3f}", seconds)
        return rec

    # ------------------------------------------------------------------ loop
    def _warn_at_first_stage_exit(self, event: dict[str, Any]) -> None:
        """Warns when the run leaves its first stage with a far-needle accuracy below FIRST_STAGE_EXIT_WARNING."""
        accuracy = event.get("far_accuracy")
        if self.curriculum.index != 1 or accuracy is None or accuracy >= FIRST_STAGE_EXIT_WARNING:
            return
        logging.warning("The run leaves its first stage (%s) at step %d with a far-needle training accuracy of %.3f, "
                        "below %.3f: of the demo-recipe runs that left it so, 12 of 13 missed the long-context "
                        "targets, and 4 of the 12 above it too (a threshold chosen on the first 20 of those runs; "
                        "docs/training.md, thirteenth to fifteenth sessions). Training goes on; stopping now and "
                        "starting a re-run (another seed, or the same: GPU training is not bit-reproducible) saves the "
                        "rest of the budget.",
                        event["from"], event["step"], accuracy, FIRST_STAGE_EXIT_WARNING)

    def _update(self, batch, lr_arr):
        """One train step, then the weight average when kept. Returns (state, metrics)."""
        state, metrics = self._step_fn(self.state, batch, lr_arr)
        if self.ema is not None:
            self.ema = update_ema(self.ema, state[0], self._ema_decay_scalar)
        return state, metrics

    def train(self, stop_at_step: int | None = None, save_at_end: bool = True) -> None:
        """Trains until the budget is used, or until ``stop_at_step`` (tests: ``save_at_end=False`` then
        simulates a crash that loses everything after the last periodic checkpoint)."""
        if self.step == 0 and self.curriculum.index == 0:
            self._write({"event": "stage", "step": 0, "to": self.curriculum.stage.name, "progress": 0.0,
                         "stage_config": dataclasses.asdict(self.curriculum.stage)})
        lr = self.optim.factors(self.step, self.progress, self.warmup_end_progress)
        self._interval_start = time.perf_counter()
        session_start = self.clock.elapsed
        while (not self.done and (stop_at_step is None or self.step < stop_at_step)
               and not (self.step % self.log_every == 0 and self.session_over(session_start))):
            self.clock.start()
            event = self.curriculum.update(self.progress, self.step)
            if event is not None:
                event["stage_config"] = dataclasses.asdict(self.curriculum.stage)
                self._write(event)
                logging.info("Curriculum: stage %s -> %s at step %d (progress %.3f, far accuracy %s): %s",
                             event["from"], event["to"], event["step"], event["progress"], event["far_accuracy"],
                             event["reason"])
                self._warn_at_first_stage_exit(event)
            stage = self.curriculum.stage
            if self.warmup_end_progress is None and self.step >= self.optim.warmup_steps:
                self.warmup_end_progress = self.progress
            lr = self.optim.factors(self.step, self.progress, self.warmup_end_progress)
            host_batch = self.make_batch(stage)
            shape = tuple(host_batch["input_ids"].shape)  # the stage's, or its short rows'
            batch = self._device_batch(host_batch)
            lr_arr = {k: jnp.float32(v) for k, v in lr.items()}
            timed = shape in self._compiled_shapes
            if not timed:  # compile outside the clock (and outside tokens/s)
                jax.block_until_ready(self.state)  # the step in flight still counts
                self.clock.pause()
                t0 = time.perf_counter()
                self.state, metrics = self._update(batch, lr_arr)
                jax.block_until_ready((metrics, self.ema))
                compile_seconds = time.perf_counter() - t0
                logging.info("Compiled and ran the train step for batch %d x %d tokens in %.1fs", *shape,
                             compile_seconds)
                self._compiled_shapes.add(shape)
                self._interval_start += compile_seconds  # the interval's tokens/s leaves the compilation out
                self.clock.start()
            else:
                self.state, metrics = self._update(batch, lr_arr)
            # Keep one step in flight: fetch the previous step's metrics while this one runs.
            self._flush_pending()
            self._pending.append((self.step + 1, metrics))
            self.step += 1
            self.tokens_seen += shape[0] * shape[1]
            self._interval_tokens += shape[0] * shape[1] if timed else 0
            self._interval_short_steps += shape != (stage.batch_size, stage.seq_len)
            if self.step % self.log_every == 0:
                self.clock.pause()
                self.log_interval(lr)
                if self.probe_every and self.step % self.probe_every == 0:
                    self.log_probe()
            if self.save_every and self.step % self.save_every == 0:
                self.save()
        self.clock.pause()
        self.log_interval(lr)
        if save_at_end:
            self.save()

    # ------------------------------------------------------------------ export
    def closing_far_accuracy(self) -> float | None:
        """Far-needle training accuracy over the run's last CLOSING_WINDOW_STEPS steps, from metrics.jsonl (so a
        resumed run counts the steps logged before it resumed)."""
        return closing_far_accuracy([rec for _, rec in self._metric_lines()], self.step)

    def ema_model(self) -> InfiniLlama:
        """The weight average as a model on one device (``optim.ema_decay`` > 0 only)."""
        if self.ema is None:
            raise ValueError("No weight average: set config.optim.ema_decay (e.g. 0.999) before training.")
        model = self.model()
        nnx.update(model, ema_as_state(self.ema, self.state[0]))
        return model if self.mesh is None else _to_one_device(model)

    def export(self, model: InfiniLlama | None = None, directory: str = MODEL_DIR,
               weights: str = "last") -> Path:
        """``workdir/<directory>`` (``model``): a converted directory with ``model_card.json`` ("trained": true),
        stored with ``PORTABLE_NUMERICS`` (nanotron's; it loads on any device) whatever the run trained with (the
        card's ``trained_with``; the job's own probe and evaluation use the training's numerics). ``model``: the
        current model already on one device (``one_device_model``), if the caller has it; ``weights``: "last" (the
        last update's) or "ema" (the weight average, ``model_ema``), recorded in the card."""
        from infini_jax.checkpoint import save_converted

        model = model if model is not None else self.one_device_model()
        out = save_converted(model, self.workdir / directory, overwrite=True, numerics=PORTABLE_NUMERICS)
        trained_with = {k: getattr(model.cfg, k) for k in PORTABLE_NUMERICS}
        card = {"trained": True, "made_by": "infini_jax.train", "steps": self.step, "weights_from": weights,
                **({"ema_decay": self.ema_decay,
                    "ema_note": "the weight average; the training-log figures below are the run's"}
                   if weights == "ema" else {}),
                "trained_with": {k: getattr(v, "value", v) for k, v in trained_with.items()},
                "train_seconds": round(self.clock.elapsed, 2), "tokens_seen": self.tokens_seen,
                "tokenizer": str(_cfg_get(self.config, "tokenizer") or "infini_jax/assets/demo_tokenizer"),
                f"far_accuracy_last_{CLOSING_WINDOW_STEPS}_steps": self.closing_far_accuracy(),
                "description": "Trained with infini_jax.train (see training_config.json)."}
        (out / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (out / TRAINING_CONFIG_FILE).write_text(
            json.dumps({"trained": True, "config": _to_plain(self.config)}, indent=2, default=_json_default) + "\n")
        logging.info("Exported the trained model to %s", out)
        return out


def varied_text_seeds(config) -> list[int]:
    """Seeds of the generated varied training texts: ``data.varied_texts`` of them from ``data.varied_seed`` on.
    Refuses more than one for a non-generated haystack, and any seed that is the evaluation's or the probe's
    held-out text."""
    d = config.data
    first, count = int(_cfg_get(d, "varied_seed", 0)), _cfg_get(d, "varied_texts", 1)
    if int(count) != count or count < 1:
        raise ValueError(f"data.varied_texts={count} must be a whole number >= 1 (generated texts to train on).")
    seeds = list(range(first, first + int(count)))
    if len(seeds) > 1 and str(_cfg_get(d, "varied_haystack", "generated")) != "generated":
        raise ValueError(f"data.varied_texts={count} needs data.varied_haystack='generated' (texts from seeds); "
                         f"{_cfg_get(d, 'varied_haystack')!r} is one text.")
    held_out = [("eval.varied_seed", _cfg_get(_cfg_get(config, "eval"), "varied_seed")),
                ("probe.varied_seed", _cfg_get(_cfg_get(config, "probe"), "varied_seed"))]
    for name, seed in held_out:
        if seed is not None and len(seeds) > 1 and int(seed) in seeds:
            raise ValueError(f"data.varied_texts={count} from data.varied_seed={first} trains on seed {seed}, the "
                             f"held-out text of {name}: move data.varied_seed or that seed.")
    return seeds


def _to_one_device(model: InfiniLlama) -> InfiniLlama:
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))


# ----------------------------------------------------------------------------- entry point
def evaluate_only(config) -> dict[str, Any]:
    """``config.eval_only``: no training; evaluates ``config.init_from`` (default ``workdir/model``, a run's
    export) with ``config.eval`` into ``workdir`` (eval/ and eval.json), e.g. with more samples or lengths, and
    runs ``config.probe`` when enabled (probe.json; ``train_probe``).

    The model keeps its own numerics (memory query, memory dtype and precision, attention); only the compute
    dtype comes from ``config.model.dtype`` (parameters are held in fp32, as during training). Results are reused
    on a re-run only for the same model directory, contents (model card) and numerics."""
    from infini_jax.api import load_model
    from infini_jax.data.tokenizer import check_vocab

    ev = _cfg_get(config, "eval")
    if (ev is None or not bool(_cfg_get(ev, "enabled", True))) and not probe_enabled(config):
        raise ValueError("eval_only=True with eval.enabled=False and probe.enabled=False has nothing to do: enable "
                         "config.eval or config.probe.")
    workdir = Path(config.workdir).absolute()
    source = Path(_cfg_get(config, "init_from") or workdir / "model").absolute()
    if not source.exists():
        raise FileNotFoundError(f"eval_only: nothing to evaluate at {source}. Set --config.init_from=<model dir> "
                                "or point --config.workdir at a finished training run (it exports workdir/model).")
    if jax.process_index() != 0:  # as after training: one process evaluates (the model fits one device)
        return {"workdir": str(workdir), "model_dir": str(source), "probe": None, "eval": None}
    model_fields = _to_plain(config.model)
    overrides = {}
    if model_fields.get("segment_length"):
        overrides["segment_length"] = int(model_fields["segment_length"])  # Hugging Face folders only
    model = load_model(source, dtype=model_fields.get("dtype") or "bfloat16", param_dtype="float32", **overrides)
    tokenizer = load_tokenizer_for(config)
    check_vocab(tokenizer, model.cfg.vocab_size)
    card_path = source / MODEL_CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    model_id = {"source": str(source), "numerics": model.cfg.to_dict(),
                "card": {k: card.get(k) for k in ("steps", "tokens_seen", "train_seconds")}}
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("Evaluating %s in %s (no training; memory_query %s, dtype %s)", source, workdir,
                 model.cfg.memory_query.value, model.cfg.dtype)
    return {"workdir": str(workdir), "model_dir": str(source),
            "probe": run_probe(config, model, tokenizer, workdir),
            "eval": run_eval(config, model, tokenizer, workdir, model_id=model_id)}


def run(config) -> dict[str, Any]:
    """Trains (resuming from ``config.workdir`` when possible), exports, probes and evaluates. Returns a summary.
    With ``config.eval_only`` it only evaluates (:func:`evaluate_only`)."""
    if bool(_cfg_get(config, "eval_only", False)):
        return evaluate_only(config)
    trainer = Trainer(config)
    resumed = trainer.restore()
    start = "resumed" if resumed else (f"from {config.init_from}" if _cfg_get(config, "init_from") else "from scratch")
    logging.info("Training %s in %s (%s): %d parameters, budget %s", start,
                 trainer.workdir, trainer.model_cfg.dtype,
                 sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(trainer.model(), nnx.Param))),
                 f"{trainer.total_steps} steps" if trainer.total_steps else f"{trainer.total_seconds:.0f} s")
    trainer.train()
    if not trainer.done:  # session_seconds used up: the checkpoint holds everything, a re-run goes on
        logging.info("Stopped after this session's %g training seconds at step %d (%.1f%% of the budget, stage "
                     "%s); run the same command again to continue. Export, probe and evaluation come at the end.",
                     trainer.session_seconds, trainer.step, 100 * trainer.progress, trainer.curriculum.stage.name)
        return {"workdir": str(trainer.workdir), "steps": trainer.step, "train_seconds": trainer.clock.elapsed,
                "finished": False}
    closing = trainer.closing_far_accuracy()
    if closing is not None and closing < CLOSING_FAR_ACCURACY_WARNING:
        logging.warning("Far-needle training accuracy over the last %d steps is %.3f, below %.2f: the demo-recipe runs "
                        "that ended so failed at long contexts (docs/training.md, sixth to eighth sessions). Read "
                        "this model's evaluation before using it; a re-run may do better (on a GPU even with the same "
                        "seeds: its kernels are not bit-reproducible).", CLOSING_WINDOW_STEPS, closing,
                        CLOSING_FAR_ACCURACY_WARNING)
    elif closing is not None:
        logging.info("Far-needle training accuracy over the last %d steps: %.3f", CLOSING_WINDOW_STEPS, closing)
    out = {"workdir": str(trainer.workdir), "steps": trainer.step, "train_seconds": trainer.clock.elapsed,
           "finished": True, "final_metrics": next((r for r in reversed(trainer.history) if "loss" in r), None),
           "closing_far_accuracy": closing}
    if jax.process_index() == 0:
        model = trainer.one_device_model()
        out["model_dir"] = str(trainer.export(model))
        out["probe"] = run_probe(config, model, trainer.tokenizer, trainer.workdir, probe=trainer.probe)
        out["eval"] = run_eval(config, model, trainer.tokenizer, trainer.workdir,
                               model_id={"step": trainer.step, "tokens_seen": trainer.tokens_seen})
        if trainer.ema is not None:  # the same for the weight average, into workdir/ema
            ema_model = trainer.ema_model()
            out["ema_model_dir"] = str(trainer.export(ema_model, directory=EMA_DIR, weights="ema"))
            ema_dir = trainer.workdir / EMA_EVAL_DIR
            ema_dir.mkdir(exist_ok=True)
            logging.info("The weight average (optim.ema_decay %g): probe and evaluation into %s", trainer.ema_decay,
                         ema_dir)
            out["ema_probe"] = run_probe(config, ema_model, trainer.tokenizer, ema_dir, probe=trainer.probe)
            out["ema_eval"] = run_eval(config, ema_model, trainer.tokenizer, ema_dir,
                                       model_id={"step": trainer.step, "tokens_seen": trainer.tokens_seen,
                                                 "weights": "ema", "ema_decay": trainer.ema_decay})
    return out
