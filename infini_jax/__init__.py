"""infini-jax: nanotron's Infini-Attention Llama in JAX/Flax (NNX), with long-context evaluation.

Public API::

    model = infini_jax.load_model("checkpoints/30000", dtype="bfloat16")
    logits = model(input_ids)                                    # [B, S, V] float32
    tokens = infini_jax.generate(model, [prompt_ids], max_new_tokens=15)
"""

from infini_jax.api import detect_format, load_model, param_count, random_model
from infini_jax.config import GateActivation, MemoryQuery, ModelConfig
from infini_jax.generate import GenerationConfig, Generator, generate, generate_by_recompute
from infini_jax.model import InfiniLlama, ModelCache, init_cache

__all__ = [
    "GateActivation", "GenerationConfig", "Generator", "InfiniLlama", "MemoryQuery", "ModelCache",
    "ModelConfig", "detect_format", "generate", "generate_by_recompute", "init_cache", "load_model",
    "param_count", "random_model",
]
__version__ = "0.1.0"
