"""Evaluation datasets: nanotron's Hugging Face passkey / needle sets, from the hub or local files.

Accepted sources (``resolve_dataset_source``), checked in this order:

1. a local ``.parquet`` file;
2. a directory written by ``datasets.Dataset.save_to_disk`` (has ``dataset_info.json`` / ``state.json``
   or ``dataset_dict.json``);
3. a directory of parquet files: ``DIR/*.parquet``, else ``DIR/data/*.parquet``, else any
   ``DIR/**/*.parquet`` (preferring files named ``{split}-*``);
4. a hub name whose files were downloaded into the working directory, as nanotron's user guide
   describes: ``./llama3-1024-passkey-retrieval-eval/train-00000-of-00001.parquet`` for
   ``nanotron/llama3-1024-passkey-retrieval-eval`` (``./<owner>/<name>/`` works too);
5. otherwise a hub name, loaded with ``datasets.load_dataset(name, split=split)`` (needs a network).

Column schemas (only ``prompt`` and ``answer`` are required; ``depth_percent`` when filtering by depth):

* ``nanotron/llama3-1024-passkey-retrieval-eval``: ``id, prompt, answer (int), context_length,
  token_count, num_shots, num_digits, depth_percent (int)``;
* ``nanotron/llama3-16k-passkey-retrieval-eval``: ``id, prompt, answer, context_length, num_tokens,
  depth_percent`` (no num_shots / num_digits: those filters are skipped, unlike nanotron's script which
  raises a KeyError);
* ``nanotron/simple_needle_in_a_hay_stack``: ``id, prompt, answer (int), context_length,
  depth_percent (float)``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from typing import Any

import numpy as np

from infini_jax.data.prompts import PromptSample

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "answer")
KNOWN_DATASETS = (
    "nanotron/llama3-1024-passkey-retrieval-eval",
    "nanotron/llama3-16k-passkey-retrieval-eval",
    "nanotron/simple_needle_in_a_hay_stack",
)
DEPTH_ATOL = 1e-6
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _parquet_files(directory: str, split: str) -> list[str]:
    for pattern in ("*.parquet", os.path.join("data", "*.parquet"), os.path.join("**", "*.parquet")):
        files = sorted(glob.glob(os.path.join(directory, pattern), recursive=True))
        if files:
            of_split = [
                f
                for f in files
                if os.path.basename(f).startswith(f"{split}-") or os.path.basename(f) == f"{split}.parquet"
            ]
            return of_split or files
    return []


def _local_source(path: str, split: str) -> tuple[str, Any] | None:
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise ValueError(
                f"{path!r} is a file but not a .parquet file: pass a parquet file, a directory of "
                "parquet files, a save_to_disk directory or a hub dataset name."
            )
        return "parquet", [path]
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, m)) for m in _SAVE_TO_DISK_MARKERS):
            return "save_to_disk", path
        files = _parquet_files(path, split)
        if files:
            return "parquet", files
    return None


def resolve_dataset_source(
    path_or_name: str | os.PathLike, cwd: str | os.PathLike = ".", split: str = "train"
) -> tuple[str, Any]:
    """Where a dataset comes from: ``("parquet", [files])``, ``("save_to_disk", dir)`` or ``("hub", name)``.

    Relative paths and the auto-detected ``./<name>/`` directories are looked up under ``cwd``.
    """
    name = os.fspath(path_or_name)
    if not name:
        raise ValueError(
            "The dataset path or name is empty: pass a parquet file or directory, a save_to_disk "
            f"directory or a hub name such as {KNOWN_DATASETS[0]!r}."
        )
    path = name if os.path.isabs(name) else os.path.join(os.fspath(cwd), name)
    found = _local_source(path, split)
    if found is not None:
        return found
    if os.path.isdir(path):
        raise ValueError(
            f"Directory {path!r} has no *.parquet files and is not a save_to_disk directory "
            "(no dataset_info.json / state.json)."
        )
    looks_like_path = name.endswith(".parquet") or name.startswith((".", "/", "~"))
    if looks_like_path or name.count("/") > 1:
        raise ValueError(
            f"Dataset path {path!r} does not exist: check the path, or pass a hub name "
            f"such as {KNOWN_DATASETS[0]!r}."
        )
    # A hub name downloaded next to us: ./<basename>/train-*.parquet (nanotron's user guide layout).
    base = os.path.join(os.fspath(cwd), name.rstrip("/").split("/")[-1])
    found = _local_source(base, split)
    if found is not None:
        log.info("Using the local copy %s of the hub dataset %s", found[1], name)
        return found
    return "hub", name


def load_eval_dataset(
    path_or_name: str | os.PathLike,
    split: str = "train",
    cwd: str | os.PathLike = ".",
    cache_dir: str | None = None,
):
    """Loads an evaluation dataset as a ``datasets.Dataset`` (local parquet / save_to_disk / hub).

    ``cache_dir`` is where ``datasets`` caches parquet / hub data (its default cache when None).
    """
    import datasets

    kind, location = resolve_dataset_source(path_or_name, cwd=cwd, split=split)
    if kind == "parquet":
        ds = datasets.load_dataset(
            "parquet", data_files={split: list(location)}, split=split, cache_dir=cache_dir
        )
    elif kind == "save_to_disk":
        ds = datasets.load_from_disk(location)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(
                    f"The save_to_disk DatasetDict {location!r} has splits {sorted(ds)}, not "
                    f"{split!r}: pass split= one of them."
                )
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(location, split=split, cache_dir=cache_dir)
        except Exception as e:  # network errors, missing repos, ...
            short = location.split("/")[-1]
            raise ValueError(
                f"Could not load the hub dataset {location!r} ({type(e).__name__}: {e}). Offline, download "
                f"its parquet file(s) and pass the path, or put them in ./{short}/ (e.g. "
                f"./{short}/train-00000-of-00001.parquet) where they are found automatically."
            ) from e
    check_columns(ds, REQUIRED_COLUMNS, source=str(path_or_name))
    return ds


def check_columns(ds, required, *, source: str = "the dataset") -> None:
    """Raises ``ValueError`` listing the columns found when some ``required`` column is missing."""
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source} lacks the column(s) {missing}: found {ds.column_names}, required "
            f"{list(required)}. Use a passkey dataset with prompt/answer columns (e.g. "
            f"{KNOWN_DATASETS[0]!r})."
        )


def _answer_str(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value).strip()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _stable_id(row_index: int, prompt: str, answer: str) -> str:
    digest = hashlib.sha1(f"{row_index}\0{answer}\0{prompt}".encode()).hexdigest()
    return f"row{row_index}-{digest[:12]}"


def _column_mask(ds, column: str, value: float, *, atol: float = 0.0) -> np.ndarray | None:
    """Rows whose ``column`` equals ``value`` (None when the column does not exist)."""
    if column not in ds.column_names:
        log.info("Column %r not in the dataset: the %s=%s filter is skipped.", column, column, value)
        return None
    values = ds.select_columns([column]).to_pandas()[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.abs(values - float(value)) <= atol


def _to_sample(row: dict[str, Any], row_index: int, dataset_name: str) -> PromptSample:
    answer = _answer_str(row["answer"])
    prompt = row["prompt"]
    sid = str(row["id"]) if row.get("id") is not None else _stable_id(row_index, prompt, answer)
    ctx = row.get("context_length")
    for fallback in ("num_tokens", "token_count"):
        if ctx is None:
            ctx = row.get(fallback)
    depth = row.get("depth_percent")
    extra = {
        k: _plain(v)
        for k, v in row.items()
        if k not in ("id", "prompt", "answer", "context_length", "depth_percent", "num_shots", "num_digits")
    }
    extra["row_index"] = row_index
    return PromptSample(
        id=sid,
        input_ids=None,
        prompt=prompt,
        answer=answer,
        context_length=int(ctx) if ctx is not None else 0,
        depth_percent=float(depth) if depth is not None else float("nan"),
        dataset=dataset_name,
        num_shots=int(row["num_shots"]) if row.get("num_shots") is not None else None,
        num_digits=int(row["num_digits"]) if row.get("num_digits") is not None else None,
        needle_token_index=None,
        extra=extra,
    )


def select_samples(
    ds,
    *,
    depths=None,
    num_shots: int | None = None,
    num_digits: int | None = None,
    context_length: int | None = None,
    num_samples: int | None = None,
    seed: int = 42,
    dataset_name: str = "dataset",
) -> list[PromptSample]:
    """Picks samples like nanotron's ``load_and_filter_dataset``, one group per depth.

    For each depth (all depths of the dataset when ``depths`` is None): keep the rows with that
    ``depth_percent`` (float tolerant) and, only when the column exists, ``num_shots``, ``num_digits``
    (when > 0) and ``context_length``; then ``shuffle(seed=seed)`` and take ``min(num_samples, n)``
    rows (all when ``num_samples`` is None). Same rows as nanotron's filter -> shuffle -> select.
    """
    check_columns(ds, REQUIRED_COLUMNS, source=dataset_name)
    base = np.ones(len(ds), dtype=bool)
    for column, value in (("num_shots", num_shots), ("context_length", context_length)):
        if value is not None:
            mask = _column_mask(ds, column, value)
            base = base if mask is None else base & mask
    if num_digits:
        mask = _column_mask(ds, "num_digits", num_digits)
        base = base if mask is None else base & mask

    if "depth_percent" in ds.column_names:
        all_depths = ds.select_columns(["depth_percent"]).to_pandas()["depth_percent"].to_numpy(np.float64)
    elif depths is not None:
        raise ValueError(
            f"{dataset_name} has no depth_percent column (found {ds.column_names}), so it cannot "
            "be filtered by depth: pass depths=None to take all rows."
        )
    else:
        all_depths = None
    if depths is None:
        groups = [None] if all_depths is None else sorted(set(all_depths[base].tolist()))
    else:
        groups = [float(d) for d in np.atleast_1d(depths)]

    samples: list[PromptSample] = []
    for depth in groups:
        mask = base if depth is None else base & (np.abs(all_depths - depth) <= DEPTH_ATOL)
        indices = np.flatnonzero(mask)
        if len(indices) == 0:
            log.warning(
                "%s: no rows at depth_percent=%s with the requested filters (num_shots=%s, "
                "num_digits=%s, context_length=%s).",
                dataset_name,
                depth,
                num_shots,
                num_digits,
                context_length,
            )
            continue
        group = ds.select(indices.tolist()).shuffle(seed=seed, keep_in_memory=True)
        take = len(group) if num_samples is None else min(int(num_samples), len(group))
        # Row indices in ``ds`` of the chosen rows, in shuffled order (for the stable ids).
        perm = np.random.default_rng(seed).permutation(len(indices))
        rows = group.select(range(take)).to_list()
        for row, idx in zip(rows, indices[perm[:take]], strict=True):
            samples.append(_to_sample(row, int(idx), dataset_name))
    return samples
