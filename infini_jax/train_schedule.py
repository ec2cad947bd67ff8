"""The training budget, the learning-rate schedule and the curriculum of stages (host-side, no JAX).

Progress ``p`` in [0, 1] is the share of the budget used: ``step / total_steps`` (step budget) or
``train_seconds / total_seconds`` (time budget; compilation, checkpoints and logging are not counted).

Learning rate (both parameter groups): linear warm-up from 0 over ``warmup_steps`` steps, then a cosine
from the peak down to ``min_lr`` over the rest of the budget. With a step budget this is exactly
``optax.warmup_cosine_decay_schedule(0, peak, warmup_steps, total_steps, min_lr)``; with a time budget the
cosine runs over the remaining *time*.

Curriculum: stages run in order; each has a planned ``share`` of the budget. When a stage starts at
progress ``p0`` the shares of the stages left are rescaled to fill ``[p0, 1]``, so an over-running stage
shortens the later ones instead of skipping them. A stage with ``advance_min_accuracy`` > 0 only ends
once its planned share is used *and* the training accuracy on far needles (needle before the final
segment) reached that value, or, as a safeguard, once it has used ``max_share`` of the budget. The accuracy is
the last log interval's, or with ``advance_window_steps`` the mean of the stage's intervals logged in that many
last steps (one interval of 25 steps is noisy: a lucky one opened a 0.97 gate, within 1-4 intervals, in runs
that averaged 0.89-0.95 over 2,000 steps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


# ----------------------------------------------------------------------------- learning rate
def lr_factor(step: int, progress: float, *, warmup_steps: int, warmup_end_progress: float | None,
              min_ratio: float) -> float:
    """Multiplier of the peak learning rate for update number ``step`` (0-based).

    ``warmup_end_progress``: progress at which warm-up ended (``warmup_steps / total_steps`` for a step
    budget); None while warming up.
    """
    if step < warmup_steps:
        return step / warmup_steps
    p0 = warmup_end_progress if warmup_end_progress is not None else progress
    frac = 0.0 if p0 >= 1.0 else min(1.0, max(0.0, (progress - p0) / (1.0 - p0)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


# ----------------------------------------------------------------------------- stages
@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage (``config.curriculum.stage_<i>``)."""

    name: str
    seq_len: int
    batch_size: int
    share: float  # planned fraction of the budget
    force_early_needle: float = 0.0  # fraction of rows whose needle ends before the final segment
    virtual_length_max: float = 1.0  # r ~ logUniform[1, max] for non-needle writes; 1 = off
    advance_min_accuracy: float = 0.0  # far-needle accuracy needed to leave the stage; 0 = no gate
    max_share: float | None = None  # safeguard: leave after this fraction of the budget even if gated
    advance_window_steps: int = 0  # the gate averages the intervals logged in these last steps; 0 = the last one
    # Short rows mixed into the stage: this fraction of its steps trains on short_batch_size x short_seq_len
    # rows without virtual length (r = 1) instead of the stage's shape; the stage's force_early_needle and the
    # data options (answer / needle boundary, keys) apply to them too. 0 = off; not with an accuracy gate.
    short_share: float = 0.0
    short_seq_len: int = 0
    short_batch_size: int = 0
    # Per-stage values of the data options of the same name (None = the data config's value), e.g. keys with
    # repeated digits and needles at segment boundaries only in the last stage, or more batches whose answer a
    # segment boundary cuts in the last stage.
    repeated_digit_share: float | None = None
    needle_boundary_share: float | None = None
    answer_boundary_share: float | None = None

    def __post_init__(self):
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError(f"Stage {self.name!r}: seq_len and batch_size must be positive, got "
                             f"{self.seq_len} x {self.batch_size}.")
        if self.share <= 0:
            raise ValueError(f"Stage {self.name!r}: share must be > 0, got {self.share}.")
        if not 0 <= self.force_early_needle <= 1:
            raise ValueError(f"Stage {self.name!r}: force_early_needle={self.force_early_needle} is outside [0, 1].")
        if self.virtual_length_max < 1:
            raise ValueError(f"Stage {self.name!r}: virtual_length_max must be >= 1 (1 = off), got "
                             f"{self.virtual_length_max}.")
        if not 0 <= self.short_share < 1:
            raise ValueError(f"Stage {self.name!r}: short_share={self.short_share} is outside [0, 1).")
        if self.short_share > 0:
            if not 1 <= self.short_seq_len < self.seq_len or self.short_batch_size < 1:
                raise ValueError(f"Stage {self.name!r}: short_share={self.short_share} needs short_seq_len in [1, "
                                 f"seq_len={self.seq_len}) and a positive short_batch_size, got "
                                 f"{self.short_seq_len} x {self.short_batch_size}.")
            if self.advance_min_accuracy > 0:
                raise ValueError(f"Stage {self.name!r}: short rows would feed the accuracy gate; use short_share "
                                 "or advance_min_accuracy, not both.")
        for option in ("repeated_digit_share", "needle_boundary_share", "answer_boundary_share"):
            value = getattr(self, option)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"Stage {self.name!r}: {option}={value} is outside [0, 1] (None = data.{option}).")
        if self.advance_window_steps < 0:
            raise ValueError(f"Stage {self.name!r}: advance_window_steps must be >= 0 (0 = the last log interval), "
                             f"got {self.advance_window_steps}.")
        if self.advance_window_steps and self.advance_min_accuracy <= 0:
            raise ValueError(f"Stage {self.name!r}: advance_window_steps={self.advance_window_steps} averages the "
                             "accuracy of a gate, but the stage has none: set advance_min_accuracy > 0 or the window "
                             "to 0.")
        if self.max_share is not None and self.max_share < self.share:
            raise ValueError(f"Stage {self.name!r}: max_share {self.max_share} is below share {self.share}.")


def stages_from_config(curriculum) -> list[Stage]:
    """``curriculum``: a mapping ``stage_0, stage_1, ...`` -> stage fields (ConfigDict or dict)."""
    items = dict(curriculum.items() if hasattr(curriculum, "items") else curriculum)
    bad = [k for k in items if not (k.startswith("stage_") and k[6:].isdigit())]
    if bad or not items:
        raise ValueError(f"config.curriculum needs entries named stage_0, stage_1, ...; got {sorted(items)}.")
    out = []
    for key in sorted(items, key=lambda k: int(k[6:])):
        fields = dict(items[key])
        fields.setdefault("name", key)
        known = {f.name for f in dataclasses.fields(Stage)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"config.curriculum.{key} has unknown fields {unknown}; known: {sorted(known)}.")
        out.append(Stage(**fields))
    return out


class Curriculum:
    """Which stage runs now. Host-side state machine, saved in checkpoints (``state_dict``)."""

    def __init__(self, stages: Sequence[Stage]):
        if not stages:
            raise ValueError("The curriculum needs at least one stage.")
        self.stages = list(stages)
        self.index = 0
        self.start_progress = 0.0
        self.start_step = 0
        self.last_accuracy: float | None = None  # far-needle accuracy measured in the current stage
        self.recent: list[tuple[int, float]] = []  # (step, far-needle accuracy) of the stage's logged intervals

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.stages) - 1

    def planned_end(self) -> float:
        left = sum(s.share for s in self.stages[self.index:])
        return self.start_progress + self.stage.share / left * (1.0 - self.start_progress)

    def max_end(self) -> float:
        cap = self.stage.max_share
        return 1.0 if cap is None else self.start_progress + cap

    def record_accuracy(self, far_accuracy: float | None, step: int) -> None:
        """The far-needle training accuracy of the log interval ending at ``step`` (None when the interval had no
        far needle: the last measurement stands, and the window still moves on)."""
        window = self.stage.advance_window_steps
        if window > 0:
            self.recent = [(s, a) for s, a in self.recent if s > step - window]
            if far_accuracy is not None:
                self.recent.append((int(step), float(far_accuracy)))
        if far_accuracy is not None:
            self.last_accuracy = float(far_accuracy)

    def gate_accuracy(self) -> float | None:
        """What the gate compares with ``advance_min_accuracy``: the last interval's far-needle accuracy, or the
        mean of the intervals of the last ``advance_window_steps`` steps."""
        if self.stage.advance_window_steps > 0:
            return sum(a for _, a in self.recent) / len(self.recent) if self.recent else None
        return self.last_accuracy

    def gate_open(self) -> bool:
        need = self.stage.advance_min_accuracy
        measured = self.gate_accuracy()
        return need <= 0 or (measured is not None and measured >= need)

    def update(self, progress: float, step: int) -> dict[str, Any] | None:
        """Advances to the next stage when due; returns a description of the transition, or None."""
        if self.is_last or progress < self.planned_end():
            return None
        gate_ok = self.gate_open()
        if not gate_ok and progress < self.max_end():
            return None
        event = {"event": "stage", "from": self.stage.name, "step": int(step), "progress": float(progress),
                 "far_accuracy": self.gate_accuracy(), "gate": self.stage.advance_min_accuracy,
                 "reason": "gate passed" if self.stage.advance_min_accuracy > 0 and gate_ok else
                 ("safeguard: max_share used, gate not reached" if not gate_ok else "planned share used")}
        self.index += 1
        self.start_progress = float(progress)
        self.start_step = int(step)
        self.last_accuracy = None
        self.recent = []
        event["to"] = self.stage.name
        return event

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start_progress": self.start_progress, "start_step": self.start_step,
                "last_accuracy": self.last_accuracy, "recent": [list(r) for r in self.recent],
                "names": [s.name for s in self.stages]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [s.name for s in self.stages]
        if state.get("names", names) != names:
            raise ValueError(f"The checkpoint's curriculum {state.get('names')} differs from the config's {names}; "
                             "resume with the same curriculum or start a new workdir.")
        self.index = int(state["index"])
        self.start_progress = float(state["start_progress"])
        self.start_step = int(state["start_step"])
        self.last_accuracy = state.get("last_accuracy")
        self.recent = [(int(s), float(a)) for s, a in state.get("recent", [])]
