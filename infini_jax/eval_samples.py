"""Samples of the evaluation job: the config's depths and lengths, prompts generated in token space, and the
rows of a passkey dataset (HF hub name, local parquet file or directory, ``save_to_disk`` directory), filtered
as nanotron does and tokenised with the tokenizer's default special tokens.

Used by :mod:`infini_jax.evaluate`; ``sample_groups(config, tokenizer)`` is the entry point.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from infini_jax.config import config_value as _opt
from infini_jax.data.datasets import load_eval_dataset, select_samples
from infini_jax.data.prompts import PromptSample, generate_passkey_samples

GENERATE = "generate"
DEFAULT_GENERATED_DIGITS = 4  # num_digits=0 with generated prompts: nanotron's generate_data.py default


# ----------------------------------------------------------------------------- config helpers


def eval_depths(config) -> list[float]:
    """The depths to evaluate: ``depth_percent`` when set, else ``depths`` (duplicates dropped)."""
    single = _opt(config, "depth_percent")
    depths = [single] if single is not None else list(_opt(config, "depths", ()) or ())
    if not depths:
        raise ValueError("No depths to evaluate: set --config.depths='(0, 50, 100)' or --config.depth_percent=50.")
    out: list[float] = []
    for d in depths:
        try:
            d = float(d)
        except (TypeError, ValueError):
            raise ValueError(f"depth {d!r} is not a number: depths are percentages 0..100.") from None
        if not 0 <= d <= 100 or math.isnan(d):
            raise ValueError(
                f"depth_percent={d:g} is outside 0..100: the depth is where the needle sits, in percent of the "
                "haystack (0 = start, 100 = end). Use e.g. --config.depth_percent=50 or "
                "--config.depths='(0, 25, 50, 75, 100)'."
            )
        if d not in out:
            out.append(d)
    return out


def eval_context_lengths(config) -> list[int | None]:
    """``[context_length]`` when set, else ``context_lengths``; ``[None]`` (no filter) for datasets."""
    single = _opt(config, "context_length")
    lengths = [single] if single else [c for c in (_opt(config, "context_lengths", ()) or ()) if c]
    if not lengths:
        if _opt(config, "dataset", GENERATE) == GENERATE:
            raise ValueError(
                "Generated prompts need a length: set --config.context_length=4096 or "
                "--config.context_lengths='(1024, 2048)'."
            )
        return [None]
    out: list[int | None] = []
    for c in lengths:
        if int(c) != c or int(c) < 1:
            raise ValueError(f"context length {c!r} must be a positive integer number of tokens.")
        if int(c) not in out:
            out.append(int(c))
    return out


# ----------------------------------------------------------------------------- samples


@dataclasses.dataclass
class SampleGroup:
    """Samples of one context length (None: a dataset without a length filter), with token ids set."""

    context_length: int | None
    samples: list[PromptSample]


def _needle_token_indices(tokenizer, prompts: Sequence[str], answers: Sequence[str], encodings) -> list:
    """Index of the token where ``The pass key is {answer}`` starts in each prompt (None if not found)."""
    offsets = encodings.get("offset_mapping") if hasattr(encodings, "get") else None
    out = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        m = re.search(rf"[Tt]he pass key is {re.escape(answer)}(?!\d)", prompt)
        if m is None or offsets is None:
            out.append(None)
            continue
        ends = np.asarray([e if e > s else -1 for s, e in offsets[i]])
        hits = np.flatnonzero(ends > m.start())
        out.append(int(hits[0]) if len(hits) else None)
    return out


def tokenize_samples(tokenizer, samples: list[PromptSample]) -> None:
    """Sets ``input_ids`` (default special tokens, like nanotron) and ``needle_token_index`` of text samples."""
    todo = [s for s in samples if s.input_ids is None]
    if not todo:
        return
    prompts = [s.prompt for s in todo]
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(prompts, return_offsets_mapping=fast)
    needles = _needle_token_indices(tokenizer, prompts, [s.answer for s in todo], enc if fast else {})
    for s, ids, needle in zip(todo, enc["input_ids"], needles, strict=True):
        s.input_ids = np.asarray(ids, np.int32)
        if s.needle_token_index is None:
            s.needle_token_index = needle


def _unique_dataset_ids(ds) -> bool:
    if "id" not in ds.column_names:
        return True  # select_samples derives ids from the row index: unique
    ids = ds.select_columns(["id"]).to_pandas()["id"]
    return bool(ids.is_unique)


def dataset_groups(config, tokenizer) -> list[SampleGroup]:
    """Selects and tokenises the dataset samples (nanotron's per-depth filter -> shuffle(seed) -> select)."""
    name = str(config.dataset)
    ds = load_eval_dataset(name, cache_dir=_opt(config, "dataset_cache_dir"))
    unique = _unique_dataset_ids(ds)
    if not unique:
        logging.info("%s: the id column is not unique; result ids are '<id>-row<row index>'.", name)
    depths = eval_depths(config)
    if "depth_percent" not in ds.column_names:
        logging.warning("%s has no depth_percent column: every row is evaluated, results have no depth.", name)
        depths = None
    lengths = eval_context_lengths(config)
    if "context_length" not in ds.column_names and len(lengths) > 1:
        logging.warning("%s has no context_length column: the context lengths %s cannot select rows; every row is "
                        "evaluated once.", name, lengths)
        lengths = lengths[:1]  # without the column the filter is skipped: one group, or the ids would repeat
    groups = []
    for ctx in lengths:
        samples = select_samples(
            ds, depths=depths, num_shots=int(_opt(config, "num_shots", 0)),
            num_digits=int(_opt(config, "num_digits", 0)), context_length=ctx,
            num_samples=_opt(config, "num_samples"), seed=int(_opt(config, "seed", 42)), dataset_name=name,
        )
        if not unique:
            for s in samples:
                s.id = f"{s.id}-row{s.extra['row_index']}"
        tokenize_samples(tokenizer, samples)
        if samples:
            groups.append(SampleGroup(ctx, samples))
    if not groups:
        raise ValueError(
            f"No rows of {name} match depths={eval_depths(config)}, context_length(s)="
            f"{eval_context_lengths(config)}, num_shots={_opt(config, 'num_shots', 0)}, num_digits="
            f"{_opt(config, 'num_digits', 0)} (0 = any): check these filters against the dataset's columns."
        )
    return groups


def _generate_kwargs(config) -> dict:
    digits = int(_opt(config, "num_digits", 0)) or DEFAULT_GENERATED_DIGITS
    return dict(
        depths=eval_depths(config), num_samples=int(_opt(config, "num_samples", 1)), num_digits=digits,
        num_shots=int(_opt(config, "num_shots", 0)), seed=int(_opt(config, "seed", 42)),
        haystack_dir=_opt(config, "haystack_dir") or None, haystack=_opt(config, "haystack", "default"),
        template=_opt(config, "template", "passkey"),
    )


def check_generation_fits(config, tokenizer) -> None:
    """Builds one prompt at the smallest context length: raises when the template does not fit."""
    kwargs = _generate_kwargs(config)
    kwargs.update(depths=[0], num_samples=1)
    generate_passkey_samples(tokenizer, context_lengths=[min(eval_context_lengths(config))], **kwargs)


def generated_groups(config, tokenizer) -> Iterator[SampleGroup]:
    """Generated prompts, one context length at a time (so 1M-token prompts are not all held at once).

    Each length draws its keys from ``seed`` on its own, so a length's samples do not depend on which
    other lengths are evaluated (``long_context.py:32768`` resumes into the full sweep's results).
    """
    for ctx in eval_context_lengths(config):
        yield SampleGroup(ctx, generate_passkey_samples(tokenizer, context_lengths=[ctx], **_generate_kwargs(config)))


def sample_groups(config, tokenizer) -> Iterator[SampleGroup]:
    if _opt(config, "dataset", GENERATE) == GENERATE:
        check_generation_fits(config, tokenizer)
        return generated_groups(config, tokenizer)
    return iter(dataset_groups(config, tokenizer))
