"""Hugging Face Llama (``config.json`` + ``*.safetensors``) -> Infini-Attention canonical state.

This does the job of nanotron's Llama-3 conversion script: the weights map one to one, q/k/v are
concatenated into ``qkv_proj`` ([Q | K | V] rows), gate/up into ``gate_up_proj`` ([gate | up] rows), and
every layer gets new ``balance_factors`` [N] (zeros, N(0, 1) from ``seed``, or a constant).

RoPE layout. HF Llama applies RoPE in the half-split ("rotate_half", GPT-NeoX) layout: within a head of
size D, dimension ``j`` is paired with ``j + D/2`` (``j < D/2``), both rotated by frequency
``theta^(-2j/D)``.

* ``rope_layout="half"`` (default) keeps the weights as they are and sets ``rope_interleaved=False``,
  which is what nanotron's final Llama-3 Infini configs do (flash-attn ``interleaved=False`` is the same
  rotate_half RoPE).
* ``rope_layout="interleaved"`` permutes the rows of every q and k head so that interleaved (GPT-J) RoPE,
  which pairs ``(2j, 2j+1)`` with frequency ``theta^(-2j/D)``, computes the same function, and sets
  ``rope_interleaved=True`` (what nanotron's early converter did, with
  ``w.view(heads, 2, D/2, H).transpose(1, 2).reshape(heads*D, H)``). The permutation, per head::

      new_row[2j + a] = old_row[a * D/2 + j]      for j < D/2, a in {0, 1}

  i.e. ``perm = [0, D/2, 1, D/2 + 1, ..., D/2 - 1, D - 1]`` and ``W_new = W[perm]``. Then for any
  input, ``RoPE_interleaved(P q) = P RoPE_half(q)`` and the same for k, so every score
  ``q . k = (P q) . (P k)`` is unchanged. v and o_proj are not touched.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return it)
import numpy as np
from safetensors import safe_open

from infini_jax.config import ModelConfig
from infini_jax.formats.nanotron import (
    EMBEDDING_NAME,
    FINAL_NORM_NAME,
    LM_HEAD_NAME,
    expected_shapes,
    layer_names,
)

ROPE_LAYOUTS = ("half", "interleaved")
_LAYER_MAP = {  # canonical role -> HF names (concatenated along rows in this order)
    "input_layernorm": ("input_layernorm.weight",),
    "qkv_proj": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "o_proj": ("self_attn.o_proj.weight",),
    "post_attention_layernorm": ("post_attention_layernorm.weight",),
    "gate_up_proj": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "down_proj": ("mlp.down_proj.weight",),
}


# ----------------------------------------------------------------------------- config
def _rope_theta_and_scaling(hf: dict[str, Any], source: str) -> tuple[float, dict | None]:
    """rope_theta and the scaling dict, from transformers 4 (top level) or 5 (``rope_parameters``)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or None
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is None and params:
        scaling = params
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind not in (None, "default"):
        warnings.warn(f"{source}: rope scaling {kind!r} ({scaling}) is ignored by nanotron's Infini "
                      "Llama, which applies plain RoPE with theta only (and restarts positions in every "
                      "segment).", stacklevel=3)
    return float(theta), scaling


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def hf_config_to_model_config(hf: dict[str, Any], *, source: str = "config.json", **fields) -> ModelConfig:
    """Maps a transformers Llama ``config.json`` dict to :class:`ModelConfig`; ``fields`` add the Infini
    settings (segment_length, ...) and overrides."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}; only 'llama' checkpoints "
                         "are supported.")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{source}: {key}=true is not supported (nanotron's Llama has no biases).")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if hf.get(k) is None]
    if missing:
        raise ValueError(f"{source} is missing {missing}: is it a transformers Llama config.json?")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if hf.get("head_dim") is not None and int(hf["head_dim"]) * heads != hidden:
        raise ValueError(f"{source}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads = "
                         f"{hidden}/{heads}; nanotron's Llama derives head_dim = hidden/heads, so this model "
                         "is unsupported.")
    theta, _ = _rope_theta_and_scaling(hf, source)
    eos = hf.get("eos_token_id")
    if isinstance(eos, list) and len(eos) > 1:
        warnings.warn(f"{source}: several eos_token_id {eos}; nanotron keeps one, using {eos[0]}.",
                      stacklevel=2)
    values = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=str(hf.get("hidden_act", "silu")),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        bos_token_id=_first_id(hf.get("bos_token_id")),
        eos_token_id=_first_id(eos),
        pad_token_id=_first_id(hf.get("pad_token_id")),
    )
    try:
        return ModelConfig(**{**values, **fields})
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- weights
def _weight_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> its file (from ``model.safetensors.index.json``, else all ``*.safetensors``)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {k: path / v for k, v in weight_map.items()}
        absent = sorted({str(f) for f in files.values() if not f.is_file()})
        if absent:
            raise FileNotFoundError(f"{index} lists shard files that do not exist: {absent}.")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        bins = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = (f" Found {bins}: pickled weights are not read (unsafe); re-save with "
                "model.save_pretrained(dir, safe_serialization=True).") if bins else ""
        raise FileNotFoundError(f"No *.safetensors weights in {path}.{hint}")
    files: dict[str, Path] = {}
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as f:
            files.update({k: shard for k in f.keys()})
    return files


def _load_tensors(files: dict[str, Path], names: list[str]) -> dict[str, np.ndarray]:
    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    out = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="numpy") as f:
            out.update({k: f.get_tensor(k) for k in keys})
    return out


def interleave_permutation(head_dim: int) -> np.ndarray:
    """Row order turning a half-split RoPE head into an interleaved one: ``perm[2j + a] = a*D/2 + j``."""
    half = head_dim // 2
    return np.arange(head_dim).reshape(2, half).T.reshape(-1)


def permute_heads(w: np.ndarray, num_heads: int, head_dim: int) -> np.ndarray:
    """Applies :func:`interleave_permutation` to every head of a ``[heads*D, H]`` q or k weight."""
    perm = interleave_permutation(head_dim)
    return w.reshape(num_heads, head_dim, -1)[:, perm, :].reshape(num_heads * head_dim, -1)


def _balance_factors(config: ModelConfig, dtype, init_type: str, value: float | None, seed: int
                     ) -> list[np.ndarray]:
    n = config.num_heads
    if value is not None:
        return [np.full((n,), value, dtype=np.float32).astype(dtype) for _ in range(config.num_layers)]
    if init_type == "randn":
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(n).astype(np.float32).astype(dtype) for _ in range(config.num_layers)]
    return [np.zeros((n,), dtype=dtype) for _ in range(config.num_layers)]


def _check_balance_args(init_type: str, value: float | None) -> str:
    """Returns the balance_init_type recorded in the config ('constant' is recorded as 'zeros')."""
    if init_type not in ("zeros", "randn", "constant"):
        raise ValueError(f"Unknown balance_init_type {init_type!r}: use 'zeros', 'randn' or 'constant' "
                         "(with balance_init_value).")
    if init_type == "constant" and value is None:
        raise ValueError("balance_init_type='constant' needs balance_init_value (e.g. 0.0).")
    if init_type == "randn" and value is not None:
        raise ValueError(f"balance_init_type='randn' conflicts with balance_init_value={value}: "
                         "pass one of them.")
    return "zeros" if init_type == "constant" else init_type


def read_hf_llama(path: str | os.PathLike, *, segment_length: int, balance_act_type: str = "orig_sigmoid",
                  balance_init_type: str = "zeros", balance_init_value: float | None = None,
                  rope_layout: str = "half", turn_on_memory: bool = True, seed: int = 0, **overrides
                  ) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Reads a transformers Llama directory into (Infini ModelConfig, canonical nanotron state).

    Weights keep their stored dtype; the new balance factors [N] per layer get the same dtype.
    ``rope_layout`` is ``"half"`` (keep weights, ``rope_interleaved=False``) or ``"interleaved"``
    (permute q/k head rows, ``rope_interleaved=True``); see the module docstring. ``overrides`` are
    further ModelConfig fields (dtype, memory_query, ...).
    """
    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"No config.json in {root}: pass a Hugging Face model directory (as "
                                "written by save_pretrained) holding config.json and *.safetensors.")
    if rope_layout not in ROPE_LAYOUTS:
        raise ValueError(f"Unknown rope_layout {rope_layout!r}: use 'half' (keep HF weights, "
                         "rope_interleaved=False) or 'interleaved' (permute q/k rows, "
                         "rope_interleaved=True).")
    recorded_init = _check_balance_args(balance_init_type, balance_init_value)
    config = hf_config_to_model_config(
        json.loads(cfg_path.read_text()), source=str(cfg_path), segment_length=segment_length,
        balance_act_type=balance_act_type, balance_init_type=recorded_init, turn_on_memory=turn_on_memory,
        rope_interleaved=rope_layout == "interleaved", **overrides)
    files = _weight_files(root)
    needed = _hf_names(config)
    missing = [n for n in needed if n not in files]
    if missing:
        raise ValueError(f"{root} lacks {len(missing)} Llama weights: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}. Is it a LlamaForCausalLM checkpoint "
                         "(tie_word_embeddings decides whether lm_head.weight is needed)?")
    tensors = _load_tensors(files, needed)
    state = _to_canonical(config, tensors, balance_init_type, balance_init_value, seed)
    _check_shapes(config, state, root)
    return config, state


def _check_shapes(config: ModelConfig, state: dict[str, np.ndarray], root: Path) -> None:
    for name, shape in expected_shapes(config).items():
        if state[name].shape != shape:
            raise ValueError(f"{root}: {name} has shape {state[name].shape} after mapping, expected "
                             f"{shape} from config.json: the weights and config.json describe different "
                             "models.")


def _hf_names(config: ModelConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        names += [f"model.layers.{i}.{n}" for parts in _LAYER_MAP.values() for n in parts]
    return names


def _to_canonical(config: ModelConfig, t: dict[str, np.ndarray], init_type: str, init_value: float | None,
                  seed: int) -> dict[str, np.ndarray]:
    """HF tensors -> canonical names; q/k rows permuted per head when ``config.rope_interleaved``."""
    n, k, d = config.num_heads, config.num_kv_heads, config.head_dim
    emb = t["model.embed_tokens.weight"]
    state = {EMBEDDING_NAME: emb}
    balance = _balance_factors(config, emb.dtype, init_type, init_value, seed)
    for i in range(config.num_layers):
        names = layer_names(i)
        for role, parts in _LAYER_MAP.items():
            ws = [t[f"model.layers.{i}.{p}"] for p in parts]
            if role == "qkv_proj" and config.rope_interleaved:
                ws = [permute_heads(ws[0], n, d), permute_heads(ws[1], k, d), ws[2]]
            state[names[role]] = ws[0] if len(ws) == 1 else np.concatenate(ws, axis=0)
        state[names["balance_factors"]] = balance[i]
    state[FINAL_NORM_NAME] = t["model.norm.weight"]
    if not config.tie_word_embeddings:
        state[LM_HEAD_NAME] = t["lm_head.weight"]
    return state
