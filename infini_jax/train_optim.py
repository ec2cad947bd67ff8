"""The optimizer of the training job: AdamW with a separate parameter group for the balance factors.

nanotron (reference section 5) gives every parameter whose name contains ``balance_factors`` its own LR
(``infini_attention.balance_factor_lr``) and weight decay (``balance_factor_weight_decay``), with the same
warm-up + cosine shape, AdamW(0.9, 0.95, eps 1e-8) and one global grad-norm clip over everything. Here:

    clip_by_global_norm(clip_norm)                      # all parameters together
    -> partition by label ("default" | "balance", from the parameter path)
         default: AdamW(lr, weight_decay on matrices only) -> x lr_factors["default"]
         balance: AdamW(balance_factor_lr, balance_factor_weight_decay) -> x lr_factors["balance"]

The schedule factors are computed on the host (``train_schedule.lr_factor``) and passed to
``optimizer.update(model, grads, lr_factors=...)`` as an optax extra argument, so step and time budgets
share one code path. Since AdamW's update is ``-lr * (adam + wd * p)``, scaling it by the factor is exactly
scheduling the learning rate.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax
from flax import nnx

from infini_jax.model import InfiniLlama
from infini_jax.train_schedule import lr_factor

GROUPS = ("default", "balance")


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """``config.optim`` (see configs/train_common.py)."""

    lr: float = 2e-3
    balance_factor_lr: float = 3e-3
    weight_decay: float = 0.1
    balance_factor_weight_decay: float = 0.0
    decay_embeddings: bool = False
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    warmup_steps: int = 150
    min_lr_ratio: float = 0.1
    balance_factor_min_lr: float | None = None  # absolute floor of the balance LR (nanotron); None: ratio
    ema_decay: float = 0.0  # > 0: also keep an average of the weights (train_ema.py); not part of the update

    @classmethod
    def from_config(cls, optim) -> OptimSettings:
        d = dict(optim)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.optim has unknown fields {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def factors(self, step: int, progress: float, warmup_end_progress: float | None) -> dict[str, float]:
        """Learning-rate multipliers of the peak LR of each group for update ``step``."""
        kw = dict(warmup_steps=self.warmup_steps, warmup_end_progress=warmup_end_progress)
        bf_ratio = self.min_lr_ratio if self.balance_factor_min_lr is None else \
            self.balance_factor_min_lr / self.balance_factor_lr
        return {"default": lr_factor(step, progress, min_ratio=self.min_lr_ratio, **kw),
                "balance": lr_factor(step, progress, min_ratio=bf_ratio, **kw)}


def _names(path) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(n for n in out if n != "value")


def param_group(path) -> str:
    """"balance" for ``balance_factors`` (nanotron: any name containing it), else "default"."""
    return "balance" if any("balance_factors" in n for n in _names(path)) else "default"


def param_labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params)


def decay_mask(params, decay_embeddings: bool = False):
    """Weight decay on matrices only (ndim >= 2), not on norms; embeddings / lm_head only when asked."""
    def decays(path, x) -> bool:
        names = _names(path)
        if np.ndim(x) < 2:
            return False
        return decay_embeddings or not ({"embedding", "lm_head"} & set(names))

    return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_group_factor(group: str) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by ``lr_factors[group]``, an extra argument of ``tx.update`` (the host-side
    schedule: the same for step and time budgets, no schedule state in the checkpoint)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, lr_factors=None, **extra):
        del params, extra
        if lr_factors is None:
            return updates, state
        f = lr_factors[group]
        return jax.tree.map(lambda u: (u * f).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=16)
def make_tx(o: OptimSettings) -> optax.GradientTransformationExtraArgs:
    """clip_by_global_norm (all parameters) -> per group AdamW(b1, b2, eps) with its own peak LR and
    weight decay -> the group's schedule factor. Cached so equal settings share one transformation (and one
    compiled train step)."""
    groups = {
        "default": optax.chain(
            optax.adamw(o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                        mask=functools.partial(decay_mask, decay_embeddings=o.decay_embeddings)),
            scale_by_group_factor("default")),
        "balance": optax.chain(
            optax.adamw(o.balance_factor_lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.balance_factor_weight_decay),
            scale_by_group_factor("balance")),
    }
    parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm and o.clip_norm > 0 else []
    partition = getattr(optax, "partition", None) or optax.multi_transform  # older optax: multi_transform
    return optax.chain(*parts, partition(groups, param_labels))


def make_optimizer(model: InfiniLlama, o: OptimSettings) -> nnx.Optimizer:
    return nnx.Optimizer(model, make_tx(o), wrt=nnx.Param)
