"""Resumable evaluation results: one JSON line per sample in ``results.jsonl``.

Each line is written, flushed and ``fsync``-ed as soon as its sample's batch finishes, so a crashed or
killed run loses at most the batch in flight; rerunning skips the ids already in the file
(``ResultsWriter.done_ids``). A line cut short by a crash is dropped when the file is reopened.

Record fields (``RECORD_FIELDS``; extra fields are allowed and kept):

* ``id``: the sample id (unique within a file);
* ``dataset``: dataset name / path, or ``generated-passkey`` / ``generated-needle``;
* ``context_length``: nominal context length (the dataset's column, or the generated length);
* ``num_tokens``: actual prompt length in tokens;
* ``depth_percent``: requested needle depth, 0..100;
* ``needle_token_index``: index of the needle's first token in the prompt (None when unknown);
* ``needle_segment``: segment holding that token, ``needle_token_index // segment_length``;
* ``num_segments``: segments of the prompt, ``ceil(num_tokens / segment_length)``;
* ``answer``: the pass key (str);
* ``generation``: the decoded generated text;
* ``correct``: the answer occurs in the generation (nanotron's criterion, see ``score``);
* ``correct_strict``: the first number in the generation is the answer;
* ``seconds``: wall time spent on the sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RESULTS_FILENAME = "results.jsonl"
RECORD_FIELDS = (
    "id",
    "dataset",
    "context_length",
    "num_tokens",
    "depth_percent",
    "needle_token_index",
    "needle_segment",
    "num_segments",
    "answer",
    "generation",
    "correct",
    "correct_strict",
    "seconds",
)
_DIGITS = re.compile(r"\d+")


def score(answer: str, generation: str) -> tuple[bool, bool]:
    """Scores one generation: ``(correct, correct_strict)``.

    ``correct``: ``answer`` occurs anywhere in ``generation`` (nanotron's ``str(answer) in response``).
    ``correct_strict``: the first run of digits in ``generation`` equals ``answer`` (for a non-numeric
    answer: the first whitespace-separated word, stripped of punctuation, equals it). So "12345" counts
    as ``correct`` but not strict for the answer "1234".
    """
    answer = str(answer).strip()
    if not answer:
        return False, False
    generation = str(generation)
    correct = answer in generation
    if answer.isdigit():
        strict = first_number(generation) == answer
    else:
        words = generation.split()
        strict = bool(words) and words[0].strip(".,;:!?\"'()[]") == answer
    return correct, strict


def first_number(generation: str) -> str | None:
    """The first run of digits in ``generation`` (what strict scoring compares with a numeric answer), or None."""
    first = _DIGITS.search(str(generation))
    return None if first is None else first.group(0)


def segment_info(
    needle_token_index: int | None, num_tokens: int, segment_length: int | None
) -> tuple[int | None, int | None]:
    """``(needle_segment, num_segments)`` for a prompt of ``num_tokens`` split into segments."""
    if not segment_length:
        return None, None
    num_segments = max(1, math.ceil(num_tokens / segment_length))
    needle_segment = None if needle_token_index is None else int(needle_token_index) // segment_length
    return needle_segment, num_segments


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def results_path(path: str | os.PathLike) -> str:
    """``path`` itself when it names a ``.jsonl`` file, else ``path/results.jsonl``."""
    path = os.fspath(path)
    return path if path.endswith(".jsonl") else os.path.join(path, RESULTS_FILENAME)


def _parse_lines(path: str, *, strict_middle: bool = True) -> tuple[list[dict], bool]:
    """Records of a results file and whether its last line was cut short (and ignored)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    # A complete file ends with "\n": the last element is then "".
    tail_cut = bool(lines[-1])
    records: list[dict] = []
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if strict_middle:
                raise ValueError(
                    f"{path}: line {lineno} is not valid JSON ({e}); only the last line may be "
                    "cut short by a crash. Fix or delete that line."
                ) from e
            log.warning("%s: skipping invalid line %d", path, lineno)
    if tail_cut:
        try:
            records.append(json.loads(lines[-1]))  # complete JSON, only the newline is missing
            tail_cut = False
        except json.JSONDecodeError:
            pass
    return records, tail_cut


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class ResultsWriter:
    """Appends result records to ``results.jsonl``, resuming from what is already there.

    Args:
      path: a ``.jsonl`` file, or a directory (then ``DIR/results.jsonl``); created if needed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = results_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._records: list[dict] = []
        if os.path.exists(self.path):
            self._records, tail_cut = _parse_lines(self.path)
            if tail_cut:
                log.warning("%s: dropping a last line cut short by a crash", self.path)
            if tail_cut or not _ends_with_newline(self.path):
                self._rewrite()
        self._ids = {str(r.get("id")) for r in self._records}

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in self._records:
                f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def done_ids(self) -> set[str]:
        """Ids of the samples already in the file."""
        return set(self._ids)

    def records(self) -> list[dict]:
        """The records already in the file (in file order)."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def write(self, record: dict) -> None:
        """Appends one record (flushed and fsync-ed); refuses a second record with the same id."""
        if "id" not in record:
            raise ValueError(f"A result record needs an 'id' field; got the fields {sorted(record)}.")
        sid = str(record["id"])
        if sid in self._ids:
            raise ValueError(
                f"{self.path} already has a result for id {sid!r}: skip the ids in done_ids() "
                "when resuming, or write to a new results directory."
            )
        line = json.dumps(record, ensure_ascii=False, default=_json_default)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._ids.add(sid)
        self._records.append(json.loads(line))


def read_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Reads the records of one or several results files or directories (``DIR/results.jsonl``).

    A last line cut short by a crash is skipped (with a warning); the files are not modified.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    records: list[dict] = []
    for p in paths:
        path = results_path(p)
        if not os.path.isfile(path):
            raise ValueError(
                f"No results file at {path!r}: pass a directory holding {RESULTS_FILENAME} (written "
                "by the evaluation) or the .jsonl file itself."
            )
        recs, tail_cut = _parse_lines(path, strict_middle=False)
        if tail_cut:
            log.warning("%s: ignoring a last line cut short by a crash", path)
        records.extend(recs)
    return records
