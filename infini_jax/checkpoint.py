"""The converted-model directory: an Orbax checkpoint of the model's parameters plus its config.

Layout of a converted directory::

    OUT/infini_config.json      ModelConfig (architecture + numerics it was saved with)
    OUT/params/                 Orbax (StandardCheckpointer) checkpoint of nnx.state(model, nnx.Param)
    OUT/nanotron_config.yaml    the source nanotron config.yaml when there was one (used on export)

Parameters keep their stored dtype (bf16 checkpoints stay bf16 on disk: bit-exact round trips).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx

from infini_jax.config import ModelConfig
from infini_jax.model import InfiniLlama

CONFIG_FILE = "infini_config.json"
PARAMS_DIR = "params"
NANOTRON_YAML = "nanotron_config.yaml"


def is_converted_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def save_converted(model: InfiniLlama, output_dir: str | Path, *, nanotron_yaml: dict | None = None,
                   overwrite: bool = False, numerics: dict | None = None) -> Path:
    """Writes ``model`` as a converted directory, atomically: into a temporary sibling, then swapped in, so
    that a failure leaves the previous directory (if any) intact. ``numerics``: ModelConfig numerics fields to
    store instead of the model's (e.g. XLA attention for a model that ran with cuDNN); the weights are the same."""
    out = Path(output_dir).absolute()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --output_dir or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        cfg = dataclasses.replace(model.cfg, **numerics) if numerics else model.cfg
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        if nanotron_yaml is not None:
            (tmp / NANOTRON_YAML).write_text(yaml.safe_dump(nanotron_yaml, sort_keys=False))
        params = nnx.state(model, nnx.Param).to_pure_dict()
        params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, params)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def swap_in(built: Path, out: Path) -> None:
    """Puts the finished directory ``built`` (a sibling of ``out``) at ``out``, replacing what was there; the old
    directory is removed only once the new one is in place."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
        built.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        built.rename(out)


def read_converted_config(path: str | Path, **overrides) -> ModelConfig:
    path = Path(path)
    data: dict[str, Any] = json.loads((path / CONFIG_FILE).read_text())
    return ModelConfig.from_dict(data, **overrides)


def load_converted(path: str | Path, *, shardings=None, **overrides) -> InfiniLlama:
    """Restores a converted directory. ``overrides`` change numerics (dtype, memory_query, ...).

    ``shardings``: optional pytree of ``jax.sharding.Sharding`` matching the parameter state (see
    ``infini_jax.sharding``); each array is then restored straight into its shards.
    """
    path = Path(path).absolute()
    if not is_converted_dir(path):
        raise FileNotFoundError(f"{path} is not a converted infini-jax directory (needs {CONFIG_FILE} and "
                                f"{PARAMS_DIR}/); convert a nanotron checkpoint with "
                                "converters/nanotron_to_flax.py or pass the nanotron directory itself.")
    saved = read_converted_config(path)
    cfg = saved.replace(**overrides)
    # Restore with the stored parameter dtype (exact), then cast to the requested storage dtype.
    abstract = nnx.eval_shape(lambda: InfiniLlama(saved, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), abstract_state.to_pure_dict())
    if shardings is not None:
        target = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), target,
                              shardings)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / PARAMS_DIR, target)
    restored = jax.tree.map(lambda x: x.astype(cfg.storage_dtype), restored)
    model = nnx.eval_shape(lambda: InfiniLlama(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model, nnx.Param)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def read_nanotron_yaml(path: str | Path) -> dict | None:
    f = Path(path) / NANOTRON_YAML
    return yaml.safe_load(f.read_text()) if f.is_file() else None
