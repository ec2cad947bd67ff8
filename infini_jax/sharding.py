"""Device mesh, logical -> mesh axis rules, and the shardings of parameters, caches and inputs.

Two mesh axes cover evaluation and training on one or several GPUs (of one or several hosts):

* ``"data"`` (size ``dp``): the batch is split; every data group holds a full copy of the weights.
* ``"model"`` (size ``tp``): tensor parallelism as in nanotron/Megatron: attention heads (query and kv),
  the MLP's intermediate features and the vocabulary are split; XLA inserts the all-reduces.

Parameters carry logical axis names (``infini_jax.layers.param``); :data:`DEFAULT_RULES` maps them to mesh
axes. Letter legend: B batch, L segment length, N query heads, K kv heads, D head dim, H hidden,
I intermediate, V vocab.

=============================  ============================  ======================
array                          logical axes                  PartitionSpec (rules)
=============================  ============================  ======================
embedding, lm_head [V, H]      (vocab, embed)                ("model", None)
q_proj [H, N, D]               (embed, heads, head_dim)      (None, "model", None)
k_proj, v_proj [H, K, D]       (embed, kv_heads, head_dim)   (None, "model", None)
o_proj [N, D, H]               (heads, head_dim, embed)      ("model", None, None)
balance_factors [N]            (heads,)                      ("model",)
gate_proj, up_proj [H, I]      (embed, mlp)                  (None, "model")
down_proj [I, H]               (mlp, embed)                  ("model", None)
RMSNorm weights [H]            (norm,)                       (None,)
memory M [B, K, D, D]          (batch, kv_heads, -, -)       ("data", "model", None, None)
memory z [B, K, D]             (batch, kv_heads, -)          ("data", "model", None)
segment k/v buffers [B, L, K, D]  (batch, -, kv_heads, -)    ("data", None, "model", None)
input ids [B, S], lengths [B]  (batch, ...)                  ("data",)
=============================  ============================  ======================

Typical use::

    mesh = make_mesh(dp=2, tp=4)                       # 8 GPUs
    model = load_model(path, dtype="bfloat16", mesh=mesh)   # each weight loaded straight into its shards
    gen = Generator(model, GenerationConfig(batch_size=16), mesh=mesh)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.nnx import traversals
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infini_jax.config import ModelConfig

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

MeshAxis = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxis]] | Mapping[str, MeshAxis]

# Logical axis name -> mesh axis (or None: replicated). Kept as pairs so a ml_collections config can hold it.
DEFAULT_RULES: tuple[tuple[str, MeshAxis], ...] = (
    ("batch", DATA),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("mlp", MODEL),
    ("vocab", MODEL),
    ("embed", None),
    ("head_dim", None),
    ("norm", None),
)

PP_MESSAGE = (
    "Pipeline parallelism (pp={pp}) is not supported by infini-jax. nanotron uses pp to fit a model that is "
    "too large for one GPU; here tensor parallelism does that job (tp: every weight matrix is split over the "
    "GPUs, so each holds 1/tp of the model) and data parallelism (dp) splits the batch. Set pp=1 and use "
    "tp={tp} instead (tp must divide the number of query heads, kv heads, intermediate size and vocab), "
    "with dp = number of GPUs / tp."
)


# ----------------------------------------------------------------------------- mesh
def check_pp(pp: int, tp_hint: int | None = None) -> None:
    """Refuses pipeline parallelism with an explanation of what to use instead."""
    if int(pp) != 1:
        raise ValueError(PP_MESSAGE.format(pp=pp, tp=tp_hint or f"{pp} (or pp * your tp)"))


def make_mesh(dp: int = 1, tp: int = 1, devices: Sequence[jax.Device] | None = None, *, pp: int = 1) -> Mesh:
    """A ``("data", "model")`` mesh of ``dp x tp`` devices (all of ``jax.devices()`` unless ``devices``).

    ``dp=-1`` takes all the devices left over by ``tp``. dp * tp must equal the number of devices: use
    ``devices=jax.devices()[:n]`` (or ``CUDA_VISIBLE_DEVICES``) to run on fewer. The mesh axes are ``Auto``:
    the compiler (GSPMD/Shardy) propagates the shardings of parameters and inputs.
    """
    check_pp(pp, tp_hint=tp * pp)
    source = "available" if devices is None else "passed"
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if tp < 1 or (dp < 1 and dp != -1):
        raise ValueError(f"dp and tp must be positive integers (dp=-1: all remaining devices), got dp={dp}, "
                         f"tp={tp}.")
    if dp == -1:
        if n % tp:
            raise ValueError(f"tp={tp} does not divide the {n} available devices; choose tp in "
                             f"{_divisors(n)} or pass devices=jax.devices()[:k].")
        dp = n // tp
    if dp * tp > n:
        cpu = (" On CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count=N set before "
               "jax is imported." if devices[0].platform == "cpu" else "")
        raise ValueError(f"dp * tp = {dp} * {tp} = {dp * tp} devices requested, but only {n} device(s) are "
                         f"{source} ({devices[0].platform}): choose dp and tp with dp * tp = {n}.{cpu}")
    if dp * tp < n:
        fill = f"set dp={n // tp} (or dp=-1) to use them all, " if n % tp == 0 else ""
        raise ValueError(f"dp * tp = {dp} * {tp} = {dp * tp} devices requested, but {n} device(s) are {source} "
                         f"({devices[0].platform}): {fill}or run on fewer with devices=jax.devices()[:{dp * tp}] "
                         f"(or CUDA_VISIBLE_DEVICES).")
    return jax.make_mesh((dp, tp), MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def mesh_shape(mesh: Mesh) -> tuple[int, int]:
    """(dp, tp) of a mesh (an axis the mesh lacks counts as 1)."""
    return int(mesh.shape.get(DATA, 1)), int(mesh.shape.get(MODEL, 1))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ----------------------------------------------------------------------------- validation
def validate(cfg: ModelConfig, *, dp: int = 1, tp: int = 1, batch: int | None = None) -> None:
    """Raises a ValueError naming the config field when a sharded dimension does not split evenly."""
    sizes = {"num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
             "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size}
    bad = [name for name, size in sizes.items() if size % tp]
    if bad:
        ok = _divisors(math.gcd(*sizes.values()))
        raise ValueError(
            "; ".join(f"{name}={sizes[name]} is not divisible by tp={tp}" for name in bad)
            + f". tp splits heads, kv heads, MLP features and vocab over GPUs: use tp in {ok} (or pad "
            "vocab_size to a multiple of tp when converting).")
    if batch is not None and batch % dp:
        raise ValueError(f"batch_size={batch} is not divisible by dp={dp}: the batch is split over the "
                         f"'data' axis; use a batch_size that is a multiple of {dp}.")


def validate_mesh(cfg: ModelConfig, mesh: Mesh, batch: int | None = None) -> None:
    dp, tp = mesh_shape(mesh)
    validate(cfg, dp=dp, tp=tp, batch=batch)


# ----------------------------------------------------------------------------- logical -> mesh
def _rules_dict(rules: Rules | None) -> dict[str, MeshAxis]:
    rules = DEFAULT_RULES if rules is None else rules
    items = rules.items() if isinstance(rules, Mapping) else rules
    out: dict[str, MeshAxis] = {}
    for name, axis in items:
        out.setdefault(name, tuple(axis) if isinstance(axis, list) else axis)  # first rule wins
    return out


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None,
                    mesh_axes: Sequence[str] | None = None) -> P:
    """Logical axis names -> PartitionSpec.

    A name without a rule raises. Mesh axes not in ``mesh_axes`` (when given) are dropped, i.e. that
    dimension is replicated; a mesh axis already used by an earlier dimension is not reused.
    """
    table = _rules_dict(rules)
    used: set[str] = set()
    spec: list[MeshAxis] = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"Logical axis {name!r} has no sharding rule; rules cover {sorted(table)}. Add "
                             f"({name!r}, mesh_axis_or_None) to the rules.")
        axis = table[name]
        axes = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
        axes = tuple(a for a in axes if (mesh_axes is None or a in mesh_axes) and a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], rules: Rules | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh.axis_names))


def variable_axes(var: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names a Variable was annotated with (``()`` if none: replicated)."""
    meta = var.get_metadata()
    names = meta.get("out_sharding") or meta.get("sharding_names") or ()
    if names and len(names) != len(var.shape):
        raise ValueError(f"Variable of shape {var.shape} is annotated with {len(names)} axes {names}.")
    return tuple(names) if names else (None,) * len(var.shape)


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    sharding = named_sharding(mesh, variable_axes(var), rules)
    for dim, axis in zip(var.shape, sharding.spec, strict=False):
        size = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis or ()))
        if dim % size:
            raise ValueError(f"A parameter of shape {tuple(var.shape)} with axes {variable_axes(var)} has a "
                             f"dimension of {dim} that {size} devices (spec {sharding.spec}) cannot split.")
    return sharding


def param_shardings(model_or_abstract: Any, mesh: Mesh, rules: Rules | None = None) -> dict:
    """NamedShardings of every parameter, as a pytree matching ``nnx.state(model, nnx.Param).to_pure_dict()``.

    Works on a real model or an abstract one (``nnx.eval_shape``); ``cfg`` divisibility is checked first.
    """
    if isinstance(model_or_abstract, nnx.Module) and isinstance(getattr(model_or_abstract, "cfg", None),
                                                                 ModelConfig):
        validate_mesh(model_or_abstract.cfg, mesh)
    state = nnx.state(model_or_abstract, nnx.Param) if isinstance(model_or_abstract, nnx.Module) \
        else model_or_abstract
    return _map_state(state, lambda v: variable_sharding(v, mesh, rules))


def _map_state(state, fn) -> dict:
    flat = {path: fn(var) for path, var in nnx.to_flat_state(state)}
    return traversals.unflatten_mapping(flat)


def state_shardings(model: nnx.Module, mesh: Mesh, rules: Rules | None = None):
    """Shardings for the whole ``nnx.split(model)[1]`` state: Params by their axes, anything else replicated."""
    _, state = nnx.split(model)
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda v: variable_sharding(v, mesh, rules) if isinstance(v, nnx.Param)
                        else (replicated if isinstance(v, nnx.Variable) else v),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ----------------------------------------------------------------------------- placing weights
def put(array: np.ndarray, sharding: NamedSharding, dtype=None) -> jax.Array:
    """A host array -> a global jax.Array; each device receives only its own shard (multi-host safe:
    every process must hold the same full ``array``, and only its addressable shards are sent)."""
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def place_fn(mesh: Mesh, rules: Rules | None = None):
    """``place(path, np_array, abstract_variable) -> jax.Array`` for ``weights.model_from_state``.

    Casts on the host to the variable's dtype (``cfg.param_dtype``) and sends each shard to its device
    directly: the full tensor never sits on one device.
    """

    def place(path: tuple, array: np.ndarray, var: nnx.Variable) -> jax.Array:
        del path
        return put(array, variable_sharding(var, mesh, rules), dtype=var.dtype)

    return place


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
    """Moves an already built model's parameters into their shards (in place; also returned)."""
    if isinstance(getattr(model, "cfg", None), ModelConfig):
        validate_mesh(model.cfg, mesh)
    state = nnx.state(model, nnx.Param)
    shardings = _map_state(state, lambda v: variable_sharding(v, mesh, rules))
    values = jax.device_put(nnx.to_pure_dict(state), shardings)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(model, state)
    return model


def sharded_random_model(cfg: ModelConfig, mesh: Mesh, *, seed: int = 0, init_std: float = 0.02,
                         rules: Rules | None = None):
    """A randomly initialised model created directly in its shards (``jit`` with ``out_shardings``).

    The values do not depend on the mesh (JAX's partitionable threefry); they match the eagerly built
    ``random_model(cfg, seed)`` up to float rounding (compiled vs op-by-op initialisers, ~1 ulp).
    """
    from infini_jax.model import InfiniLlama

    validate_mesh(cfg, mesh)
    build = lambda: InfiniLlama(cfg, rngs=nnx.Rngs(seed), init_std=init_std)
    abstract = nnx.eval_shape(build)
    graphdef, _ = nnx.split(abstract)
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- caches and inputs
def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch-major arrays (input ids [B, S], lengths [B], generated tokens): rows split over ``"data"``."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# Logical axes of each LayerCache field: memory [B, K, D, D] / [B, K, D], segment buffers [B, L, K, D].
CACHE_AXES: dict[str, tuple[str | None, ...]] = {
    "M": ("batch", "kv_heads", None, None),
    "z": ("batch", "kv_heads", None),
    "dM": ("batch", "kv_heads", None, None),
    "dz": ("batch", "kv_heads", None),
    "k_rot": ("batch", None, "kv_heads", None),
    "v": ("batch", None, "kv_heads", None),
}


def cache_specs(cfg: ModelConfig, rules: Rules | None = None, mesh_axes: Sequence[str] | None = None):
    """PartitionSpecs of a :class:`~infini_jax.model.ModelCache` (same pytree structure)."""
    from infini_jax.attention import LayerCache
    from infini_jax.model import ModelCache

    unknown = [f for f in LayerCache._fields if f not in CACHE_AXES]
    if unknown:
        raise ValueError(f"LayerCache fields {unknown} have no sharding axes: add them to "
                         "infini_jax.sharding.CACHE_AXES.")
    spec = lambda names: logical_to_spec(names, rules, mesh_axes)
    layer = LayerCache(**{f: spec(CACHE_AXES[f]) for f in LayerCache._fields})
    return ModelCache(layers=tuple(layer for _ in range(cfg.num_layers)), positions=spec(("batch",)))


def cache_shardings(cfg: ModelConfig, batch: int, mesh: Mesh, rules: Rules | None = None):
    """NamedShardings of the decoding cache for ``batch`` rows: batch over "data", kv heads over "model"."""
    validate_mesh(cfg, mesh, batch=batch)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), cache_specs(cfg, rules, mesh.axis_names),
                        is_leaf=lambda x: isinstance(x, P))


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """``with_sharding_constraint`` by logical names, active only when a mesh is set (``jax.set_mesh``).

    A no-op without a mesh, so it can sit in model code that also runs on one device, e.g.
    ``h = constrain(h, ("batch", None, "embed"))``.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules, mesh.axis_names))


def constrain_cache(cache, cfg: ModelConfig, rules: Rules | None = None):
    """Pins a ModelCache to :func:`cache_specs` inside ``jit`` when a mesh is set; a no-op otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return cache
    specs = cache_specs(cfg, rules, mesh.axis_names)
    return jax.tree.map(jax.lax.with_sharding_constraint, cache, specs)


# ----------------------------------------------------------------------------- several hosts
def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` when running as one of several processes; returns whether it did.

    Configured by the arguments, else by ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, else by a SLURM / Open MPI launch of more than one task
    (JAX detects those itself). Must run before anything touches a device (``jax.devices()``, arrays).
    """
    if jax.distributed.is_initialized():
        return False
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator_address is not None or num_processes is not None or process_id is not None:
        if num_processes is not None and num_processes <= 1:
            return False
        missing = [n for n, v in (("coordinator_address (JAX_COORDINATOR_ADDRESS)", coordinator_address),
                                  ("num_processes (JAX_NUM_PROCESSES)", num_processes),
                                  ("process_id (JAX_PROCESS_ID)", process_id)) if v is None]
        if missing:
            raise ValueError(f"Multi-host launch is partly configured: set {missing} too (the same "
                             "coordinator host:port and process count on every host, process ids 0..n-1).")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    launched = (int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env) or \
        int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if launched:
        jax.distributed.initialize()  # JAX reads the SLURM / Open MPI environment
        return True
    return False
