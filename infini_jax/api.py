"""``load_model``: one entry point for nanotron checkpoints, converted directories and HF Llama folders."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from infini_jax import checkpoint, sharding
from infini_jax.config import ModelConfig
from infini_jax.model import InfiniLlama
from infini_jax.weights import model_from_state


def _numerics(dtype, param_dtype, overrides: dict) -> dict:
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    elif dtype is not None:
        # bf16 weights are exact in fp32; keep fp32 storage for fp32 compute, else store as computed.
        overrides["param_dtype"] = "float32" if str(dtype) in ("float32", "fp32") else dtype
    return overrides


def detect_format(path: str | Path) -> str:
    """'converted' | 'nanotron' | 'hf_llama' for a directory; a clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path {path} does not exist. Pass a nanotron checkpoint step "
                                "directory (with config.yaml and model/) or a converted directory.")
    if checkpoint.is_converted_dir(path):
        return "converted"
    if (path / "config.yaml").is_file() or (path / "latest.txt").is_file():
        return "nanotron"
    if (path / "config.json").is_file():
        return "hf_llama"
    raise FileNotFoundError(
        f"{path} has no config.yaml: it is not a nanotron checkpoint (expected <step>/config.yaml and "
        f"<step>/model/...), nor a converted infini-jax directory ({checkpoint.CONFIG_FILE} + params/), nor a "
        "Hugging Face Llama folder (config.json). Point --ckpt_path at the step directory that holds "
        "config.yaml.")


def load_model(path: str | Path, *, dtype=None, param_dtype=None, place=None, shardings=None,
               segment_length: int | None = None, mesh=None, rules=None, **overrides) -> InfiniLlama:
    """Loads an Infini-Attention Llama.

    path: a nanotron checkpoint directory (converted in memory, nothing written), a converted directory
      (``converters/nanotron_to_flax.py``), or a Hugging Face Llama folder (needs ``segment_length``).
    dtype: compute dtype ("float32" for exact checks, "bfloat16" on GPU); param_dtype: storage dtype.
    overrides: other ModelConfig numerics, e.g. ``memory_query="unrotated"``, ``memory_dtype``.
    ``place`` / ``shardings``: put parameters straight into their shards (see ``infini_jax.sharding``).
    ``mesh`` (``infini_jax.sharding.make_mesh``): does that for you with the logical ``rules`` (default
    ``sharding.DEFAULT_RULES``): weights split over the mesh's "model" axis, replicated over "data".
    The returned model maps ``input_ids [B, S]`` to float32 logits ``[B, S, V]``.
    """
    overrides = _numerics(dtype, param_dtype, dict(overrides))
    kind = detect_format(path)
    if mesh is not None:
        if place is not None or shardings is not None:
            raise ValueError("Pass either mesh= (with optional rules=) or place=/shardings=, not both.")
        place = sharding.place_fn(mesh, rules)
    elif kind == "converted" and place is not None:
        raise ValueError("place= applies to nanotron / HF checkpoints; a converted directory takes shardings= "
                         "(or mesh=).")
    elif kind != "converted" and shardings is not None:
        raise ValueError("shardings= applies to converted directories; a nanotron / HF checkpoint takes place= "
                         "(or mesh=).")
    if kind == "converted":
        if mesh is not None:
            cfg = checkpoint.read_converted_config(path, **overrides)
            abstract = nnx.eval_shape(lambda: InfiniLlama(cfg, rngs=nnx.Rngs(0)))
            shardings = sharding.param_shardings(abstract, mesh, rules)
        return checkpoint.load_converted(path, shardings=shardings, **overrides)
    if kind == "nanotron":
        from infini_jax.formats.nanotron import read_nanotron_checkpoint

        cfg, state, _ = read_nanotron_checkpoint(path, **overrides)
        if mesh is not None:
            sharding.validate_mesh(cfg, mesh)
        return model_from_state(cfg, state, place=place)
    from infini_jax.formats.hf_llama import read_hf_llama

    if segment_length is None:
        raise ValueError(f"{path} is a Hugging Face Llama folder: pass segment_length=... (and optionally "
                         "balance_act_type / balance_init_type) to turn it into an Infini model.")
    hf_keys = {"balance_act_type", "balance_init_type", "balance_init_value", "rope_layout", "turn_on_memory",
               "seed"}
    hf_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in hf_keys}
    cfg, state = read_hf_llama(path, segment_length=segment_length, **hf_kwargs, **overrides)
    if mesh is not None:
        sharding.validate_mesh(cfg, mesh)
    return model_from_state(cfg, state, place=place)


def random_model(cfg: ModelConfig, seed: int = 0, init_std: float = 0.02) -> InfiniLlama:
    """A randomly initialised model (nanotron's RandomInit scheme)."""
    return InfiniLlama(cfg, rngs=nnx.Rngs(seed), init_std=init_std)


def param_count(model: InfiniLlama) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
