"""One explicit mapping between nanotron's parameter names ("canonical state") and the Flax model.

A canonical state is ``dict[str, np.ndarray]`` keyed by nanotron names, full tensors in PyTorch layout
([out, in]); see ``infini_jax.formats.nanotron``. Every transpose/reshape is stated next to its entry.
Conversion raises on any missing or unexpected key, and on any shape mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax.config import ModelConfig
from infini_jax.formats.nanotron import EMBEDDING_NAME, FINAL_NORM_NAME, LM_HEAD_NAME, expected_shapes
from infini_jax.model import InfiniLlama

EMBED, FINAL_NORM, LM_HEAD = EMBEDDING_NAME, FINAL_NORM_NAME, LM_HEAD_NAME


def layer_prefix(i: int) -> str:
    return f"model.decoder.{i}.pp_block"


def _to_flax(cfg: ModelConfig, state: Mapping[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    """Canonical (nanotron) names -> flat Flax parameter paths."""
    h, n, k, d, i_dim = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    out: dict[tuple, np.ndarray] = {("embedding",): state[EMBED]}  # [V, H] as is
    for i in range(cfg.num_layers):
        p = layer_prefix(i)
        qkv = state[f"{p}.attn.qkv_proj.weight"]  # [N*D + 2*K*D, H], rows [Q | K | V], head-major
        q, kk, v = np.split(qkv, [n * d, n * d + k * d], axis=0)
        gate_up = state[f"{p}.mlp.gate_up_proj.weight"]  # [2I, H], rows [gate | up]
        gate, up = np.split(gate_up, [i_dim], axis=0)
        out.update({
            ("layers", i, "input_layernorm", "weight"): state[f"{p}.input_layernorm.weight"],
            # [N*D, H] -> [N, D, H] -> [H, N, D]
            ("layers", i, "attn", "q_proj"): q.reshape(n, d, h).transpose(2, 0, 1),
            ("layers", i, "attn", "k_proj"): kk.reshape(k, d, h).transpose(2, 0, 1),
            ("layers", i, "attn", "v_proj"): v.reshape(k, d, h).transpose(2, 0, 1),
            # o_proj [H, N*D] -> [H, N, D] -> [N, D, H]
            ("layers", i, "attn", "o_proj"): state[f"{p}.attn.o_proj.weight"].reshape(h, n, d).transpose(1, 2, 0),
            ("layers", i, "attn", "balance_factors"): state[f"{p}.attn.balance_factors"],  # [N]
            ("layers", i, "post_attention_layernorm", "weight"): state[f"{p}.post_attention_layernorm.weight"],
            ("layers", i, "mlp", "gate_proj"): gate.T,  # [I, H] -> [H, I]
            ("layers", i, "mlp", "up_proj"): up.T,  # [I, H] -> [H, I]
            ("layers", i, "mlp", "down_proj"): state[f"{p}.mlp.down_proj.weight"].T,  # [H, I] -> [I, H]
        })
    out[("final_norm", "weight")] = state[FINAL_NORM]
    if not cfg.tie_word_embeddings:
        out[("lm_head",)] = state[LM_HEAD]  # [V, H] as is
    return out


def canonical_names(cfg: ModelConfig) -> list[str]:
    return list(expected_shapes(cfg))  # the one name table: infini_jax.formats.nanotron


def check_state_keys(cfg: ModelConfig, state: Mapping[str, np.ndarray]) -> None:
    expected = set(canonical_names(cfg))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if cfg.tie_word_embeddings:
        unexpected = [u for u in unexpected if u != LM_HEAD]  # a tied head may be present; it is ignored
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not match the model config: missing {missing}, unexpected {unexpected}.")


def _flax_paths(model: InfiniLlama) -> dict[tuple, nnx.Variable]:
    return {tuple(path): var for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Param)}


def model_from_state(cfg: ModelConfig, state: Mapping[str, np.ndarray], *,
                     place: Callable[[tuple, np.ndarray, nnx.Variable], jax.Array] | None = None) -> InfiniLlama:
    """Builds the model abstractly (no random init is allocated) and fills it from a canonical state.

    ``place(path, array, variable)`` puts each array on its device(s) (e.g. straight into its shards);
    by default it is cast to ``cfg.param_dtype`` on the default device.
    """
    check_state_keys(cfg, state)
    flat = _to_flax(cfg, state)
    model = nnx.eval_shape(lambda: InfiniLlama(cfg, rngs=nnx.Rngs(0)))
    targets = _flax_paths(model)
    if set(targets) != set(flat):
        raise ValueError(f"Internal mapping mismatch: {sorted(set(targets) ^ set(flat))}.")
    for path, var in targets.items():
        array = flat[path]
        if tuple(array.shape) != tuple(var.shape):
            raise ValueError(f"Parameter {path} has shape {array.shape}, the config expects {var.shape}.")
        value = place(path, array, var) if place else jnp.asarray(array, dtype=cfg.storage_dtype)
        var.set_value(value)
    return model


def state_from_model(model: InfiniLlama, dtype=None) -> dict[str, np.ndarray]:
    """Inverse of :func:`model_from_state`: the model's parameters under nanotron names, torch layout."""
    cfg = model.cfg
    p_ = {path: np.asarray(jax.device_get(var[...])) for path, var in _flax_paths(model).items()}
    if dtype is not None:
        p_ = {k: v.astype(dtype) for k, v in p_.items()}
    h, n, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    state = {EMBED: p_[("embedding",)], FINAL_NORM: p_[("final_norm", "weight")]}
    if not cfg.tie_word_embeddings:
        state[LM_HEAD] = p_[("lm_head",)]
    for i in range(cfg.num_layers):
        p, a, m = layer_prefix(i), ("layers", i, "attn"), ("layers", i, "mlp")
        q = p_[a + ("q_proj",)].transpose(1, 2, 0).reshape(n * d, h)  # [H, N, D] -> [N*D, H]
        kk = p_[a + ("k_proj",)].transpose(1, 2, 0).reshape(k * d, h)
        v = p_[a + ("v_proj",)].transpose(1, 2, 0).reshape(k * d, h)
        state.update({
            f"{p}.input_layernorm.weight": p_[("layers", i, "input_layernorm", "weight")],
            f"{p}.attn.qkv_proj.weight": np.concatenate([q, kk, v], axis=0),
            f"{p}.attn.o_proj.weight": p_[a + ("o_proj",)].transpose(2, 0, 1).reshape(h, n * d),
            f"{p}.attn.balance_factors": p_[a + ("balance_factors",)],
            f"{p}.post_attention_layernorm.weight": p_[("layers", i, "post_attention_layernorm", "weight")],
            f"{p}.mlp.gate_up_proj.weight": np.concatenate([p_[m + ("gate_proj",)].T, p_[m + ("up_proj",)].T], 0),
            f"{p}.mlp.down_proj.weight": p_[m + ("down_proj",)].T,
        })
    return state
