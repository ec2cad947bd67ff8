"""Reading and writing nanotron Infini-Attention checkpoints (reference sections 2 and 3).

A *canonical state* is ``dict[str, np.ndarray]`` keyed by nanotron parameter names, holding full
(unsharded) tensors in PyTorch layout (``[out, in]`` for linears) and the on-disk dtype bit for bit
(bf16 as ``ml_dtypes.bfloat16``). Letters: V vocab (padded), H hidden, I intermediate, N query heads,
K kv heads, D head dim. For layer ``i``::

    model.token_position_embeddings.pp_block.token_embedding.weight   [V, H]
    model.decoder.{i}.pp_block.input_layernorm.weight                   [H]
    model.decoder.{i}.pp_block.attn.qkv_proj.weight                     [N*D + 2*K*D, H]  rows [Q | K | V]
    model.decoder.{i}.pp_block.attn.o_proj.weight                       [H, N*D]
    model.decoder.{i}.pp_block.attn.balance_factors                     [N]
    model.decoder.{i}.pp_block.post_attention_layernorm.weight          [H]
    model.decoder.{i}.pp_block.mlp.gate_up_proj.weight                  [2*I, H]  rows [gate | up]
    model.decoder.{i}.pp_block.mlp.down_proj.weight                     [H, I]
    model.final_layer_norm.pp_block.weight                              [H]
    model.lm_head.pp_block.weight                                       [V, H]  (absent when tied)

On disk (``<step>/model/<name with dots as folders>/``) every TP-sharded parameter has one safetensors
file per (pp rank, tp rank), ``model_<leaf>_pp-rank-{p}-of-{P}_tp-rank-{t}-of-{T}.safetensors``, holding
one tensor under ``"data"`` and metadata ``{"version": "1.2", "unsharded_shape": "(d0, d1)",
"local_global_slices_pairs": ...}``; RMSNorm weights are one ``model_<leaf>.safetensors`` file with
empty metadata. The reader places every shard by its metadata, so it merges any TP/PP layout (qkv and
gate_up are split by TP *inside* each of their chunks, so plain concatenation would be wrong).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return it)
import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from infini_jax.config import ModelConfig

CHECKPOINT_VERSION = "1.2"
EMBEDDING_NAME = "model.token_position_embeddings.pp_block.token_embedding.weight"
FINAL_NORM_NAME = "model.final_layer_norm.pp_block.weight"
LM_HEAD_NAME = "model.lm_head.pp_block.weight"
_LAYER_PREFIX = "model.decoder.{i}.pp_block."
_SHARDED_RE = (r"^model_{leaf}_pp-rank-(\d+)-of-(\d+)_tp-rank-(\d+)-of-(\d+)"
               r"(?:_exp-rank-(\d+)-of-(\d+))?\.safetensors$")
_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}

Slices = tuple[slice, ...]


# ----------------------------------------------------------------------------- names and shapes
def layer_names(i: int) -> dict[str, str]:
    """Short role -> full nanotron name for decoder layer ``i``."""
    p = _LAYER_PREFIX.format(i=i)
    return {
        "input_layernorm": p + "input_layernorm.weight",
        "qkv_proj": p + "attn.qkv_proj.weight",
        "o_proj": p + "attn.o_proj.weight",
        "balance_factors": p + "attn.balance_factors",
        "post_attention_layernorm": p + "post_attention_layernorm.weight",
        "gate_up_proj": p + "mlp.gate_up_proj.weight",
        "down_proj": p + "mlp.down_proj.weight",
    }


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name -> its full (unsharded) shape, in nanotron's order."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    n, k, d = config.num_heads, config.num_kv_heads, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_NAME: (v, h)}
    for layer in range(config.num_layers):
        names = layer_names(layer)
        shapes[names["input_layernorm"]] = (h,)
        shapes[names["qkv_proj"]] = (n * d + 2 * k * d, h)
        shapes[names["o_proj"]] = (h, n * d)
        shapes[names["balance_factors"]] = (n,)
        shapes[names["post_attention_layernorm"]] = (h,)
        shapes[names["gate_up_proj"]] = (2 * i, h)
        shapes[names["down_proj"]] = (h, i)
    shapes[FINAL_NORM_NAME] = (h,)
    if not config.tie_word_embeddings:
        shapes[LM_HEAD_NAME] = (v, h)
    return shapes


def _split_spec(name: str, config: ModelConfig) -> tuple[int, tuple[int, ...]] | None:
    """How nanotron's TP splits ``name``: None (replicated RMSNorm) or (split_dim, contiguous chunks).

    Column-parallel (qkv, gate_up, lm_head), the embedding and balance_factors split dim 0; qkv and
    gate_up split inside each chunk (Q|K|V, gate|up). Row-parallel (o_proj, down_proj) split dim 1.
    """
    d = config.head_dim
    if name.endswith("layernorm.weight") or name == FINAL_NORM_NAME:
        return None
    if name.endswith("qkv_proj.weight"):
        return 0, (config.num_heads * d, config.num_kv_heads * d, config.num_kv_heads * d)
    if name.endswith("gate_up_proj.weight"):
        return 0, (config.intermediate_size, config.intermediate_size)
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return 1, ()
    return 0, ()  # embedding, lm_head, balance_factors


def _param_location(root: Path, name: str) -> tuple[Path, str]:
    """``<root>/model/<a>/<b>/...`` folder and leaf for nanotron name ``a.b.....leaf``."""
    parts = name.split(".")
    return root.joinpath("model", *parts[:-1]), parts[-1]


# ----------------------------------------------------------------------------- metadata strings
def slices_to_str(slices: Slices) -> str:
    """``(slice(0, 32), slice(None))`` -> ``"0,32,None|None,None,None"`` (nanotron's SlicesPair format)."""
    return "|".join(",".join("None" if x is None else str(int(x)) for x in (s.start, s.stop, s.step))
                    for s in slices)


def pairs_to_str(pairs: list[tuple[Slices, Slices]]) -> str:
    """``[(local, global), ...]`` -> ``"local#global;local#global"``."""
    return ";".join(f"{slices_to_str(loc)}#{slices_to_str(glob)}" for loc, glob in pairs)


def _parse_slice(text: str, source: str) -> slice:
    fields = text.split(",")
    if len(fields) != 3:
        raise ValueError(f"{source}: bad slice {text!r} in local_global_slices_pairs "
                         "(want 'start,stop,step').")
    try:
        return slice(*(None if f.strip() == "None" else int(f) for f in fields))
    except ValueError:
        raise ValueError(f"{source}: bad slice {text!r} in local_global_slices_pairs.") from None


def parse_slices_pairs(text: str, source: str = "metadata") -> list[tuple[Slices, Slices]]:
    """Inverse of :func:`pairs_to_str`; ``source`` names the file in error messages."""
    pairs = []
    for pair in text.split(";"):
        halves = pair.split("#")
        if len(halves) != 2:
            raise ValueError(f"{source}: bad local_global_slices_pairs entry {pair!r} (want 'local#global').")
        loc, glob = (tuple(_parse_slice(s, source) for s in h.split("|")) for h in halves)
        pairs.append((loc, glob))
    return pairs


_SHAPE_ITEM = re.compile(r"^\s*(?:(?:np|numpy)\.u?int\d*\(\s*(\d+)\s*\)|(\d+))\s*$")


def parse_unsharded_shape(text: str, source: str = "metadata") -> tuple[int, ...]:
    """Parses ``"(192, 64)"``, ``"(4,)"`` and numpy>=2's ``"(np.int64(192), 64)"`` without eval."""
    body = text.strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise ValueError(f"{source}: cannot parse unsharded_shape {text!r} (want e.g. '(192, 64)').")
    items = [s for s in body[1:-1].split(",") if s.strip()]
    dims = []
    for item in items:
        m = _SHAPE_ITEM.match(item)
        if not m:
            raise ValueError(f"{source}: cannot parse unsharded_shape {text!r} (item {item!r}).")
        dims.append(int(m.group(1) or m.group(2)))
    return tuple(dims)


# ----------------------------------------------------------------------------- config
def resolve_checkpoint_dir(ckpt_path: str | os.PathLike) -> Path:
    """A step dir (with ``config.yaml``), or a checkpoints root whose ``latest.txt`` names the step."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path {path} does not exist.")
    if not path.is_dir():
        raise ValueError(f"Checkpoint path {path} is not a directory: pass a nanotron checkpoint step dir "
                         "(containing config.yaml and model/) or the checkpoints root with latest.txt.")
    if (path / "config.yaml").is_file():
        return path
    latest = path / "latest.txt"
    if latest.is_file():
        step = latest.read_text().strip()
        step_dir = path / step
        if not (step_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{latest} names step {step!r}, but {step_dir / 'config.yaml'} does not "
                                    "exist: fix latest.txt or pass the step directory itself.")
        return step_dir
    raise FileNotFoundError(
        f"No config.yaml in {path}: the directory should be a nanotron checkpoint step dir containing "
        "config.yaml and model/ (e.g. checkpoints/1000), or a checkpoints root with latest.txt."
    )


def read_nanotron_config(ckpt_path: str | os.PathLike, **overrides) -> tuple[dict, ModelConfig]:
    """Returns (raw ``config.yaml`` dict, :class:`ModelConfig`); ``overrides`` go to ``from_nanotron``."""
    ckpt = resolve_checkpoint_dir(ckpt_path)
    path = ckpt / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not plain YAML ({e}); it must be a nanotron config.yaml "
                         "(python-specific tags are refused: it is read with yaml.safe_load).") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a mapping (got {type(raw).__name__}): not a nanotron config.")
    return raw, ModelConfig.from_nanotron(raw, source=str(path), **overrides)


# ----------------------------------------------------------------------------- reading
def _read_file(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            if "data" not in f.keys():
                raise ValueError(f"{path} has no tensor 'data' (keys {list(f.keys())}): not a nanotron "
                                 "weight file.")
            return f.get_tensor("data"), dict(f.metadata() or {})
    except (OSError, RuntimeError) as e:  # safetensors raises SafetensorError (a RuntimeError subclass)
        raise ValueError(f"Cannot read safetensors file {path}: {e}") from None


def _param_files(folder: Path, leaf: str) -> tuple[list[Path], Path | None]:
    """(sharded files, unsharded file or None) for ``leaf`` in ``folder``."""
    if not folder.is_dir():
        return [], None
    pattern = re.compile(_SHARDED_RE.format(leaf=re.escape(leaf)))
    sharded = sorted(p for p in folder.iterdir() if pattern.match(p.name))
    single = folder / f"model_{leaf}.safetensors"
    return sharded, single if single.is_file() else None


def _check_topology(files: list[Path], leaf: str) -> None:
    """All shards of one param must come from one (P, T) topology (no stale files from another save)."""
    pattern = re.compile(_SHARDED_RE.format(leaf=re.escape(leaf)))
    sizes = {f.name: pattern.match(f.name).group(2, 4) for f in files}  # (P, T) of each file
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Shards in {files[0].parent} come from different pp/tp sizes "
                         f"{sorted(sizes.items())}: remove the stale files of the other save.")


def _boxes_disjoint_and_cover(boxes: list[tuple[tuple[int, int], ...]], shape: tuple[int, ...]) -> str:
    """'' when the boxes tile ``shape`` exactly, else a description of the problem."""
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            if all(max(x0, y0) < min(x1, y1) for (x0, x1), (y0, y1) in zip(boxes[a], boxes[b], strict=True)):
                return f"global slices {boxes[a]} and {boxes[b]} overlap"
    covered = sum(math.prod(e - s for s, e in box) for box in boxes)
    total = math.prod(shape)
    return "" if covered == total else f"shards cover {covered} of {total} elements"


def _global_box(glob: Slices, shape: tuple[int, ...], source: str) -> tuple[tuple[int, int], ...]:
    box = []
    for s, n in zip(glob, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"{source}: slice {s} with step {step} is not supported "
                             "(nanotron writes step None).")
        box.append((start, max(start, stop)))
    return tuple(box)


def _merge_shards(name: str, files: list[Path]) -> np.ndarray:
    """Allocates ``unsharded_shape`` and places every shard by its ``local_global_slices_pairs``."""
    out: np.ndarray | None = None
    first: tuple[Path, tuple[int, ...]] | None = None
    boxes = []
    for path in files:
        data, meta = _read_file(path)
        for key in ("unsharded_shape", "local_global_slices_pairs"):
            if key not in meta:
                raise ValueError(f"{path} has no '{key}' metadata (got {sorted(meta)}): not a nanotron "
                                 "sharded weight file, or written by an incompatible tool.")
        shape = parse_unsharded_shape(meta["unsharded_shape"], str(path))
        if first is None:
            first, out = (path, shape), np.empty(shape, dtype=data.dtype)
        elif shape != first[1]:
            raise ValueError(f"Shards of {name} disagree on unsharded_shape: {first[0]} says {first[1]}, "
                             f"{path} says {shape}. Remove the stale files of another save.")
        if data.dtype != out.dtype:
            raise ValueError(f"Shards of {name} disagree on dtype: {first[0]} is {out.dtype}, {path} is "
                             f"{data.dtype}. Remove the stale files of another save.")
        for loc, glob in parse_slices_pairs(meta["local_global_slices_pairs"], str(path)):
            if len(loc) != data.ndim or len(glob) != len(shape):
                raise ValueError(f"{path}: slices {loc}#{glob} do not match the shard rank {data.ndim} / "
                                 f"unsharded rank {len(shape)}.")
            piece = data[loc]
            if out[glob].shape != piece.shape:
                raise ValueError(f"{path}: local slice {loc} has shape {piece.shape} but global slice "
                                 f"{glob} of {shape} has shape {out[glob].shape}: corrupt metadata.")
            out[glob] = piece
            boxes.append(_global_box(glob, shape, str(path)))
    problem = _boxes_disjoint_and_cover(boxes, first[1])
    if problem:
        raise ValueError(f"Shards of {name} in {files[0].parent} do not tile its unsharded shape {first[1]}: "
                         f"{problem}. A tp/pp rank file is missing or stale.")
    return out


def _read_param(root: Path, name: str) -> tuple[np.ndarray, Path]:
    """Full tensor of ``name`` and the file it came from (for messages)."""
    folder, leaf = _param_location(root, name)
    sharded, single = _param_files(folder, leaf)
    if sharded and single is not None:
        raise ValueError(f"{name} has both TP shards ({sharded[0].name}, ...) and an unsharded file "
                         f"{single} in {folder}: remove the stale one.")
    if single is not None:
        return _read_file(single)[0], single
    if not sharded:
        expected = folder / f"model_{leaf}_pp-rank-0-of-1_tp-rank-0-of-1.safetensors"
        hint = (" A plain Llama checkpoint has no balance_factors: convert it with "
                "converters/hf_to_infini.py." if leaf == "balance_factors" else "")
        raise FileNotFoundError(f"Missing weight file for {name}: expected {expected} (or another "
                                f"model_{leaf}_pp-rank-*_tp-rank-*.safetensors, or model_{leaf}.safetensors) "
                                f"in {folder}.{hint}")
    _check_topology(sharded, leaf)
    return _merge_shards(name, sharded), sharded[0]


def _unused_files(root: Path, used: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "model").rglob("*.safetensors")
                  if p.parent not in used)


def read_nanotron_checkpoint(ckpt_path: str | os.PathLike, **config_overrides
                             ) -> tuple[ModelConfig, dict[str, np.ndarray], dict]:
    """Reads a nanotron checkpoint of any TP/PP layout into (config, canonical state, raw yaml dict).

    ``ckpt_path``: a step dir holding ``config.yaml`` and ``model/``, or a checkpoints root with
    ``latest.txt``. ``config_overrides`` set runtime numerics (``dtype``, ``memory_query``, ...).
    Tensors keep the stored dtype bit for bit.
    """
    root = resolve_checkpoint_dir(ckpt_path)
    raw, config = read_nanotron_config(root, **config_overrides)
    if not (root / "model").is_dir():
        raise FileNotFoundError(f"No model/ folder in {root}: a nanotron checkpoint step dir holds "
                                "config.yaml and model/ (the weights). Was it saved completely?")
    state: dict[str, np.ndarray] = {}
    used: set[Path] = set()
    for name, shape in expected_shapes(config).items():
        tensor, source = _read_param(root, name)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{source} holds {name} with shape {tuple(tensor.shape)}, but config.yaml "
                             f"implies {shape}: the checkpoint does not match {root / 'config.yaml'} "
                             "(wrong config, architecture overrides, or files from another model).")
        state[name] = tensor
        used.add(source.parent)
    _check_tied_head(root, config, state, used)
    unused = _unused_files(root, used)
    if unused:
        warnings.warn(f"{root}: ignored weight files not in the Infini Llama layout: {unused[:5]}"
                      f"{' ...' if len(unused) > 5 else ''}", stacklevel=2)
    return config, state, raw


def _check_tied_head(root: Path, config: ModelConfig, state: dict, used: set[Path]) -> None:
    """With tied embeddings nanotron writes no lm_head; if one is there it is ignored (warn if different)."""
    if not config.tie_word_embeddings:
        return
    folder, leaf = _param_location(root, LM_HEAD_NAME)
    sharded, single = _param_files(folder, leaf)
    if not (sharded or single):
        return
    used.add(folder)
    head = _read_file(single)[0] if single is not None else _merge_shards(LM_HEAD_NAME, sharded)
    emb = state[EMBEDDING_NAME]
    if head.shape != emb.shape or head.tobytes() != emb.tobytes():
        warnings.warn(f"{folder} holds an lm_head that differs from the token embedding, but config.yaml "
                      "sets tie_word_embeddings: true, so it is ignored (as nanotron does).", stacklevel=3)


# ----------------------------------------------------------------------------- writing
def shard_param(name: str, full: np.ndarray, config: ModelConfig, tp: int
                ) -> list[tuple[np.ndarray, str]]:
    """TP shards of one parameter as nanotron writes them: [(local tensor, pairs metadata)] per rank.

    Replicated (RMSNorm) params give one entry with metadata ''. For chunked params (qkv, gate_up)
    rank ``t`` holds rows ``[off_c + t*c/T, off_c + (t+1)*c/T)`` of every chunk ``c``, concatenated.
    """
    spec = _split_spec(name, config)
    if spec is None:
        return [(full, "")]
    dim, chunks = spec
    ndim = full.ndim
    everything = tuple(slice(None) for _ in range(ndim))
    out = []
    for t in range(tp):
        if not chunks:
            n = full.shape[dim] // tp
            glob = tuple(slice(t * n, (t + 1) * n) if a == dim else slice(None) for a in range(ndim))
            out.append((np.ascontiguousarray(full[glob]), pairs_to_str([(everything, glob)])))
            continue
        pairs, pieces, local_off, chunk_off = [], [], 0, 0
        for c in chunks:
            n = c // tp
            glob = tuple(slice(chunk_off + t * n, chunk_off + (t + 1) * n) if a == dim else slice(None)
                         for a in range(ndim))
            loc = tuple(slice(local_off, local_off + n) if a == dim else slice(None) for a in range(ndim))
            pairs.append((loc, glob))
            pieces.append(full[glob])
            local_off, chunk_off = local_off + n, chunk_off + c
        out.append((np.ascontiguousarray(np.concatenate(pieces, axis=dim)), pairs_to_str(pairs)))
    return out


def pp_rank_of(name: str, config: ModelConfig, pp: int) -> int:
    """Pipeline rank owning ``name``: layers in contiguous blocks, embedding on 0, head/final norm last."""
    if name == EMBEDDING_NAME:
        return 0
    m = re.match(r"^model\.decoder\.(\d+)\.", name)
    if m is None:
        return pp - 1
    bounds = np.array_split(np.arange(config.num_layers), pp)
    layer = int(m.group(1))
    return next(r for r, block in enumerate(bounds) if layer in block)


def _validate_parallelism(config: ModelConfig, tp: int, pp: int) -> None:
    if not (isinstance(tp, int) and tp >= 1 and isinstance(pp, int) and pp >= 1):
        raise ValueError(f"tp and pp must be positive integers, got tp={tp!r}, pp={pp!r}.")
    sizes = {"num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
             "intermediate_size": config.intermediate_size, "vocab_size": config.vocab_size}
    bad = {k: v for k, v in sizes.items() if v % tp}
    if bad:
        raise ValueError(f"tp={tp} does not divide {bad}: nanotron splits heads, kv heads, the MLP and "
                         f"the vocab evenly across TP ranks. Use a tp that divides all of {sizes} (e.g. "
                         "tp=1), or pad the vocab first.")
    if pp > config.num_layers:
        raise ValueError(f"pp={pp} exceeds num_layers={config.num_layers}: every pipeline rank needs a "
                         "layer.")


def _validate_state(config: ModelConfig, state: Mapping[str, np.ndarray]) -> None:
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        hint = " (lm_head must be absent when tie_word_embeddings is true)" if LM_HEAD_NAME in extra else ""
        raise ValueError(f"State does not match the config: missing {missing}, unexpected {extra}{hint}.")
    for name, shape in shapes.items():
        if tuple(np.shape(state[name])) != shape:
            raise ValueError(f"State tensor {name} has shape {tuple(np.shape(state[name]))}, but the config "
                             f"implies {shape}: the config and the weights do not describe the same model.")


def _default_yaml(config: ModelConfig, tokenizer: str | None) -> dict[str, Any]:
    """A complete nanotron ``Config`` like the fixture's (the tp/pp/model fields are filled in later)."""
    return {
        "checkpoints": {"checkpoint_interval": 1000, "checkpoints_path": "checkpoints",
                        "checkpoints_path_is_shared_file_system": False, "resume_checkpoint_path": None,
                        "save_initial_state": False},
        "data_stages": None,
        "general": {"benchmark_csv_path": None, "consumed_train_samples": 0, "ignore_sanity_checks": True,
                    "project": "infini_jax", "run": "converted", "seed": 42, "step": 0},
        "infini_attention": {},
        "lighteval": None,
        "logging": {"iteration_step_info_interval": 1, "log_level": "info", "log_level_replica": "info"},
        "model": {"ddp_bucket_cap_mb": 25, "dtype": "bfloat16", "init_method": {"std": 0.02},
                  "make_vocab_size_divisible_by": 1, "model_config": {}},
        "optimizer": {"accumulate_grad_in_fp32": True, "adam_beta1": 0.9, "adam_beta2": 0.95,
                      "adam_eps": 1.0e-08, "clip_grad": 1.0,
                      "learning_rate_scheduler": {"learning_rate": 0.0001, "lr_decay_starting_step": None,
                                                  "lr_decay_steps": 1000, "lr_decay_style": "cosine",
                                                  "lr_warmup_steps": 0, "lr_warmup_style": "linear",
                                                  "min_decay_lr": 1.0e-05},
                      "torch_adam_is_fused": True, "weight_decay": 0.1, "zero_stage": 0},
        "parallelism": {"dp": 1, "expert_parallel_size": 1, "pp": 1, "pp_engine": "1f1b", "tp": 1,
                        "tp_linear_async_communication": False, "tp_mode": "ALL_REDUCE"},
        "profiler": None,
        "tokenizer": {"tokenizer_max_length": None, "tokenizer_name_or_path": tokenizer,
                      "tokenizer_revision": None},
        "tokens": {"batch_accumulation_per_replica": 1, "limit_test_batches": 0, "limit_val_batches": 0,
                   "micro_batch_size": 1, "sequence_length": config.max_position_embeddings,
                   "train_steps": 1000, "val_check_interval": -1},
    }


_MODEL_INFINI_KEYS = ("segment_length", "turn_on_memory", "balance_act_type", "balance_init_type")


def build_yaml_config(config: ModelConfig, *, tp: int, pp: int, yaml_config: Mapping | None = None,
                      dtype: str = "bfloat16", tokenizer_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``config.yaml`` dict: ``yaml_config`` (or a synthesised one) with model/infini/tp/pp updated."""
    out = copy.deepcopy(dict(yaml_config)) if yaml_config is not None else _default_yaml(
        config, tokenizer_name_or_path)
    model = out.setdefault("model", {}) or {}
    out["model"] = model
    model["model_config"] = config.to_nanotron_model_config()
    model["dtype"] = dtype
    old_infini = out.get("infini_attention") or {}
    keep = {k: v for k, v in old_infini.items() if k not in _MODEL_INFINI_KEYS}
    out["infini_attention"] = config.to_nanotron_infini_section(**keep)
    par = out.get("parallelism") or {}
    par.update(tp=tp, pp=pp)
    out["parallelism"] = par
    multiple = int(model.get("make_vocab_size_divisible_by") or 1) * tp
    if config.vocab_size % multiple:
        padded = math.ceil(config.vocab_size / multiple) * multiple
        raise ValueError(f"vocab_size {config.vocab_size} is not a multiple of make_vocab_size_divisible_by "
                         f"x tp = {multiple}: nanotron would pad it to {padded} and fail to load these "
                         "weights. Pad the vocab, or set model.make_vocab_size_divisible_by to 1 in "
                         "yaml_config.")
    return out


def _write_files(tmp: Path, config: ModelConfig, state: Mapping[str, np.ndarray], tp: int, pp: int,
                 yaml_dict: dict, np_dtype) -> None:
    (tmp / "config.yaml").write_text(yaml.safe_dump(yaml_dict, sort_keys=True))
    (tmp / "model_config.json").write_text(json.dumps(config.to_nanotron_model_config()))
    meta = {"dp": 1, "metas": {"consumed_train_samples": 0, "last_train_step": 0}, "tp": tp,
            "version": CHECKPOINT_VERSION}
    (tmp / "checkpoint_metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    for name in expected_shapes(config):
        full = np.asarray(state[name]).astype(np_dtype, copy=False)
        folder, leaf = _param_location(tmp, name)
        folder.mkdir(parents=True, exist_ok=True)
        shards = shard_param(name, full, config, tp)
        if _split_spec(name, config) is None:
            path = folder / f"model_{leaf}.safetensors"
            save_file({"data": np.ascontiguousarray(full)}, str(path), metadata={})
            continue
        p = pp_rank_of(name, config, pp)
        unsharded = str(tuple(int(x) for x in full.shape))
        for t, (data, pairs) in enumerate(shards):
            path = folder / f"model_{leaf}_pp-rank-{p}-of-{pp}_tp-rank-{t}-of-{tp}.safetensors"
            save_file({"data": data}, str(path), metadata={"version": CHECKPOINT_VERSION,
                                                           "local_global_slices_pairs": pairs,
                                                           "unsharded_shape": unsharded})


def write_nanotron_checkpoint(output_dir: str | os.PathLike, config: ModelConfig,
                              state: Mapping[str, np.ndarray], *, tp: int = 1, pp: int = 1,
                              yaml_config: Mapping | None = None, dtype: str = "bfloat16",
                              overwrite: bool = False, tokenizer_name_or_path: str | None = None) -> Path:
    """Writes ``state`` as a nanotron checkpoint step dir (config.yaml, model_config.json,
    checkpoint_metadata.json, model/...) sharded for ``tp`` x ``pp``; returns the output path.

    Tensors are cast to ``dtype`` (a no-op, bit-exact, when they already have it). The write is atomic:
    files go to a temporary sibling directory renamed at the end, so an error leaves no output dir.
    A non-empty existing ``output_dir`` is refused unless ``overwrite=True``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}: use one of {sorted(_DTYPES)}.")
    _validate_parallelism(config, tp, pp)
    _validate_state(config, state)
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty: choose a new output_dir or pass "
                              "overwrite=True (--overwrite).")
    yaml_dict = build_yaml_config(config, tp=tp, pp=pp, yaml_config=yaml_config, dtype=dtype,
                                  tokenizer_name_or_path=tokenizer_name_or_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_files(tmp, config, state, tp, pp, yaml_dict, _DTYPES[dtype])
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, out: Path) -> None:
    """Moves ``new`` to ``out``, swapping out any existing ``out`` only after ``new`` is complete."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
