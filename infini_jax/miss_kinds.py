"""What a wrong pass-key answer got wrong, for ``infini_jax.analyze`` and the training job's evaluation.

A miss is read from the first run of digits in the generation (the number strict scoring reads) against the key:

* ``no_number``: the generation holds no digit at all;
* ``wrong_length``: a number of another length (a digit dropped or added, e.g. ``5666.`` for ``53666``);
* ``one_digit``: the same length, one digit wrong (``30400`` for ``60400``);
* ``adjacent_swap``: the same length, two neighbouring digits exchanged (``11292`` for ``11229``);
* ``shifted``: the same length, one digit dropped and another inserted elsewhere, so the digits between move by one
  place (``24324`` for ``24243``: the second 4 dropped, a 4 inserted later);
* ``other``: anything else: several digits wrong, a key that is not a number, or a first number that is the key
  although the record counts as wrong (the key not at the start of the generation).

``first_wrong_digit`` is the 1-based position of the first digit that differs (for ``wrong_length``, the first
position where the two numbers differ, or one past the shorter); it is what told apart the failures of the demo
runs (docs/training.md: a key cut by a segment boundary came back with digits 2-4 wrong, swapped or shifted; a
first-digit failure at 16M tokens wrote the wrong first digit and the right other four).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from infini_jax.results import first_number

MISS_KINDS = ("no_number", "wrong_length", "one_digit", "adjacent_swap", "shifted", "other")


def _dropped_and_inserted(answer: str, got: str) -> bool:
    """Whether deleting one character from each of two equal-length strings leaves the same string."""
    drops = {answer[:i] + answer[i + 1:] for i in range(len(answer))}
    return any(got[:j] + got[j + 1:] in drops for j in range(len(got)))


def miss_kind(answer: str, generation: str | None) -> tuple[str, int | None]:
    """``(kind, first_wrong_digit)`` of a generation that does not give ``answer`` (see the module's kinds).
    ``first_wrong_digit`` is None when the key is not a number, the generation has no digit, or its first number is
    the key."""
    answer = str(answer).strip()
    if not answer.isdigit():
        return "other", None
    got = first_number("" if generation is None else generation)
    if got is None:
        return "no_number", None
    if got == answer:
        return "other", None
    differ = [i for i, (a, g) in enumerate(zip(answer, got, strict=False)) if a != g]
    position = (differ[0] if differ else min(len(answer), len(got))) + 1
    if len(got) != len(answer):
        return "wrong_length", position
    if len(differ) == 1:
        return "one_digit", position
    if (len(differ) == 2 and differ[1] == differ[0] + 1
            and got[differ[0]] == answer[differ[1]] and got[differ[1]] == answer[differ[0]]):
        return "adjacent_swap", position
    if _dropped_and_inserted(answer, got):
        return "shifted", position
    return "other", position


def summarize_misses(records: Iterable[dict], *, correct_field: str = "correct") -> dict:
    """The misses among ``records`` (a boolean ``correct_field``; ``answer`` and ``generation``, empty when absent)
    counted by kind and by first wrong digit: ``{"num_misses", "by_kind": {kind: n}, "by_first_wrong_digit":
    {"1": n, ...}}`` with every kind listed (0 when absent) and positions in order."""
    kinds, positions = Counter(), Counter()
    for r in records:
        if r[correct_field]:
            continue
        kind, position = miss_kind(r.get("answer", ""), r.get("generation", ""))
        kinds[kind] += 1
        if position is not None:
            positions[position] += 1
    return {"num_misses": sum(kinds.values()), "by_kind": {k: kinds[k] for k in MISS_KINDS},
            "by_first_wrong_digit": {str(p): positions[p] for p in sorted(positions)}}


def format_misses(misses: dict) -> str:
    """One line: ``Misses: 18 (one_digit 18; first wrong digit 1: 18)``; empty when there are none."""
    if not misses["num_misses"]:
        return ""
    kinds = ", ".join(f"{k} {n}" for k, n in misses["by_kind"].items() if n)
    where = ", ".join(f"{p}: {n}" for p, n in misses["by_first_wrong_digit"].items())
    return f"Misses: {misses['num_misses']} ({kinds}" + (f"; first wrong digit {where})" if where else ")")
