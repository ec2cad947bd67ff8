"""Frozen, typed model configuration.

Modules never see a ConfigDict or a raw YAML dict: everything is turned into a :class:`ModelConfig` at
the boundary (``from_nanotron``, ``from_hf_llama``, ``from_dict``) and validated there with errors that
name the offending value and the fix.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


class GateActivation(str, enum.Enum):
    """Activation turning a head's ``balance_factor`` into its memory gate ``g`` (reference 1.4)."""

    ORIG_SIGMOID = "orig_sigmoid"  # sigmoid(x)
    ORIG_TANH = "orig_tanh"  # tanh(x): can be negative, so 1 - g can exceed 1
    HARD_SIGMOID = "hard_sigmoid"  # clamp(0.2 x + 0.5, 0, 1) (Keras style, not torch's x/6)
    TANH_ABS = "tanh_abs"  # |tanh(x)|


class MemoryQuery(str, enum.Enum):
    """Which query reads the compressive memory (reference 1.3).

    ROTATED is what nanotron's code really computes (flash-attn rotates q in place, and the memory read
    sees the rotated view); every released nanotron checkpoint was trained that way. UNROTATED is the
    paper's intent (and nanotron's commit message): sigma(q) without RoPE.
    """

    ROTATED = "rotated"
    UNROTATED = "unrotated"


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """``config.name`` (a ConfigDict, dict or object), or ``default`` when the field is absent or None."""
    try:
        value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


MEMORY_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "bf16_3x": jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3,
    "default": jax.lax.Precision.DEFAULT,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype_name(value: Any) -> str:
    if isinstance(value, str):
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(value, value)
    else:
        name = jnp.dtype(value).name
    if name not in _DTYPES:
        raise ValueError(f"Unsupported dtype {value!r}: use one of {sorted(_DTYPES)}.")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an Infini-Attention Llama plus its numerics.

    Shapes use H hidden, I intermediate, V vocab (already padded, as nanotron saves it), N query heads,
    K kv heads, D head dim = H / N, L segment length.
    """

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_interleaved: bool = True  # nanotron's default: GPT-J pairs (2i, 2i+1); False: (i, i + D/2)
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048  # informational only: segments restart RoPE at 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # Infini-Attention.
    segment_length: int = 16
    turn_on_memory: bool = True
    balance_act_type: GateActivation = GateActivation.HARD_SIGMOID
    balance_init_type: str = "zeros"  # "zeros" | "randn" (used by random init only)
    memory_query: MemoryQuery = MemoryQuery.ROTATED
    # Numerics: compute dtype, parameter storage dtype, and the recurrent memory (M, z) dtype.
    dtype: str = "float32"
    param_dtype: str = "float32"
    memory_dtype: str = "float32"  # "bfloat16" mimics nanotron's bf16 memory arithmetic
    attention_impl: str = "xla"  # "xla" (any device/dtype) | "cudnn" (GPU fused attention, bf16/fp16)
    # Precision of the memory einsums on GPU (no effect on CPU, which computes fp32 exactly):
    # "highest" = true fp32 (the parity default); "bf16_3x" = three bf16 tensor-core passes; "default" = one
    # pass. Measured on an H200 (benchmarks/results/2026-11-29_followup_H200.md): "default" prefills the 300M
    # config 21% faster at 1M tokens, "bf16_3x" is no faster than fp32 there.
    memory_precision: str = "highest"

    def __post_init__(self):
        for name in ("dtype", "param_dtype", "memory_dtype"):
            object.__setattr__(self, name, _dtype_name(getattr(self, name)))
        try:
            object.__setattr__(self, "balance_act_type", GateActivation(self.balance_act_type))
        except ValueError:
            raise ValueError(
                f"Unknown balance_act_type {self.balance_act_type!r}: use one of "
                f"{[a.value for a in GateActivation]} (infini_attention.balance_act_type)."
            ) from None
        try:
            object.__setattr__(self, "memory_query", MemoryQuery(self.memory_query))
        except ValueError:
            raise ValueError(
                f"Unknown memory_query {self.memory_query!r}: use 'rotated' (nanotron's actual numerics) "
                "or 'unrotated' (the paper's intent)."
            ) from None
        if self.balance_init_type not in ("zeros", "randn"):
            raise ValueError(
                f"Unknown balance_init_type {self.balance_init_type!r}: use 'zeros' or 'randn'."
            )
        if self.attention_impl not in ("xla", "cudnn"):
            raise ValueError(f"attention_impl {self.attention_impl!r} is unknown: use 'xla' or 'cudnn'.")
        if self.memory_precision not in MEMORY_PRECISIONS:
            raise ValueError(
                f"memory_precision {self.memory_precision!r} is unknown: use one of {sorted(MEMORY_PRECISIONS)}."
            )
        if self.attention_impl == "cudnn" and self.dtype == "float32":
            raise ValueError("attention_impl='cudnn' needs dtype bfloat16 or float16; use 'xla' for fp32.")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported: only 'silu' (SwiGLU).")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "segment_length"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_heads}."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads "
                f"{self.num_kv_heads} (grouped-query attention needs whole groups)."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings.")

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def storage_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def memory_matmul_precision(self):
        return MEMORY_PRECISIONS[self.memory_precision]

    @property
    def state_dtype(self):
        return _DTYPES[self.memory_dtype]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        h, i, v, d = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        attn = h * (self.num_heads * d + 2 * self.num_kv_heads * d) + self.num_heads * d * h
        per_layer = attn + 3 * h * i + 2 * h + self.num_heads
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + head + h + self.num_layers * per_layer

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["balance_act_type"] = self.balance_act_type.value
        out["memory_query"] = self.memory_query.value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {unknown}; known fields are {sorted(known)}.")
        return cls(**{**dict(data), **overrides})

    @classmethod
    def from_nanotron(cls, config: Mapping[str, Any], *, source: str = "config.yaml", **overrides):
        """Builds the config from a parsed nanotron ``config.yaml`` (reference 2.1).

        Reads ``model.model_config`` and the top-level ``infini_attention`` section; ``overrides`` set
        runtime numerics (dtype, memory_query, ...).
        """
        model = config.get("model") if isinstance(config, Mapping) else None
        if not isinstance(model, Mapping) or not isinstance(model.get("model_config"), Mapping):
            raise ValueError(
                f"{source} has no 'model.model_config' section: is this a nanotron checkpoint's config.yaml?"
            )
        mc = model["model_config"]
        infini = config.get("infini_attention")
        if not isinstance(infini, Mapping):
            raise ValueError(
                f"{source} has no 'infini_attention' section. nanotron requires it for Infini-Attention "
                "models; add e.g. 'infini_attention: {segment_length: 1024, turn_on_memory: true, "
                "balance_act_type: hard_sigmoid, balance_init_type: zeros, ...}', or convert a plain "
                "Llama with converters/hf_to_infini.py which lets you choose these."
            )
        required_mc = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                       "vocab_size")
        missing = [k for k in required_mc if mc.get(k) is None]
        if missing:
            raise ValueError(f"{source}: model.model_config is missing {missing}.")
        if infini.get("segment_length") is None:
            raise ValueError(f"{source}: infini_attention.segment_length is missing.")
        num_heads = int(mc["num_attention_heads"])
        kv = mc.get("num_key_value_heads")
        values = dict(
            vocab_size=int(mc["vocab_size"]),
            hidden_size=int(mc["hidden_size"]),
            intermediate_size=int(mc["intermediate_size"]),
            num_layers=int(mc["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(kv) if kv is not None else num_heads,
            rms_norm_eps=float(mc.get("rms_norm_eps", 1e-6)),
            rope_theta=float(mc.get("rope_theta", 10000.0)),
            rope_interleaved=bool(mc.get("rope_interleaved", True)),
            tie_word_embeddings=bool(mc.get("tie_word_embeddings", False)),
            hidden_act=str(mc.get("hidden_act", "silu")),
            max_position_embeddings=int(mc.get("max_position_embeddings", 2048)),
            bos_token_id=mc.get("bos_token_id", 1),
            eos_token_id=mc.get("eos_token_id", 2),
            pad_token_id=mc.get("pad_token_id"),
            segment_length=int(infini["segment_length"]),
            turn_on_memory=bool(infini.get("turn_on_memory", True)),
            balance_act_type=infini.get("balance_act_type", "orig_sigmoid"),
            balance_init_type=infini.get("balance_init_type", "zeros"),
        )
        try:
            return cls(**{**values, **overrides})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_nanotron_model_config(self) -> dict[str, Any]:
        """The ``model.model_config`` / ``model_config.json`` dict nanotron writes (LlamaConfig)."""
        return {
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "is_llama_config": True,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_kv_heads,
            "pad_token_id": self.pad_token_id,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": self.rope_theta,
            "rope_interleaved": self.rope_interleaved,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def to_nanotron_infini_section(self, **extra) -> dict[str, Any]:
        """The top-level ``infini_attention`` section of a nanotron ``config.yaml``."""
        section = {
            "segment_length": self.segment_length,
            "turn_on_memory": self.turn_on_memory,
            "balance_factor_lr": 0.01,
            "balance_act_type": self.balance_act_type.value,
            "balance_init_type": self.balance_init_type,
            "logging": False,
            "logging_interval": 250,
            "log_grad": False,
            "log_segment_acts": False,
            "balance_factor_weight_decay": 0.0,
        }
        section.update(extra)
        return section


# ----------------------------------------------------------------------------- reference sizes
def fork_300m_config(**overrides) -> ModelConfig:
    """RRaAy nanotron-infini 300M (``fineweb_local_300m_infini_4gpu_config.yaml``, reference 2.1)."""
    base = dict(vocab_size=49152, hidden_size=1024, intermediate_size=4096, num_layers=12, num_heads=8,
                num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=10000.0, rope_interleaved=True,
                max_position_embeddings=8192, segment_length=1024, balance_act_type="hard_sigmoid",
                balance_init_type="zeros")
    return ModelConfig(**{**base, **overrides})


def llama3_8b_infini_config(**overrides) -> ModelConfig:
    """The released ``nanotron/llama3-8b-infini-attention`` (exp57) architecture (reference 2.1)."""
    base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, rope_interleaved=False,
                max_position_embeddings=8192, segment_length=64, balance_act_type="orig_sigmoid",
                balance_init_type="zeros", bos_token_id=128000, eos_token_id=128001)
    return ModelConfig(**{**base, **overrides})


def llama_1b_infini_config(**overrides) -> ModelConfig:
    """A ~1B Llama-3.2-1B-shaped Infini config used by the benchmarks."""
    base = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, rope_interleaved=False,
                segment_length=2048, balance_act_type="orig_sigmoid")
    return ModelConfig(**{**base, **overrides})
