"""Kinds of wrong pass-key answers (infini_jax.miss_kinds), on misses the demo runs made (docs/training.md)."""

import pytest

from infini_jax.miss_kinds import MISS_KINDS, format_misses, miss_kind, summarize_misses


@pytest.mark.parametrize(
    "answer, generation, expected",
    [
        ("60400", "30400.", ("one_digit", 1)),  # N2 at 16M: the first digit
        ("45411", "45441", ("one_digit", 4)),
        ("11229", "11292.", ("adjacent_swap", 4)),  # a key cut by a segment boundary
        ("74226", " 74262", ("adjacent_swap", 4)),
        ("53666", "5666.", ("wrong_length", 2)),  # a digit lost
        ("4240", "42402", ("wrong_length", 5)),  # a digit added after the key: one past the shorter
        ("12345", "The pass key is", ("no_number", None)),
        ("12345", "54321", ("other", 1)),
        ("12345", "12354 and 9", ("adjacent_swap", 4)),  # the first number is read
        ("12345", "13245", ("adjacent_swap", 2)),
        ("12345", "13254", ("other", 2)),  # two swaps are not one
        ("Paris", "London", ("other", None)),  # not a number
    ],
)
def test_miss_kind(answer, generation, expected):
    assert miss_kind(answer, generation) == expected


def test_summarize_misses_counts_only_the_wrong_ones():
    records = [
        {"answer": "60400", "generation": "30400.", "exact": False},
        {"answer": "41515", "generation": "31515.", "exact": False},
        {"answer": "11229", "generation": "11292.", "exact": False},
        {"answer": "12345", "generation": "12345.", "exact": True},
        {"answer": "12345", "generation": "", "exact": False},
    ]
    misses = summarize_misses(records, correct_field="exact")
    assert misses == {
        "num_misses": 4,
        "by_kind": {"no_number": 1, "wrong_length": 0, "one_digit": 2, "adjacent_swap": 1, "other": 0},
        "by_first_wrong_digit": {"1": 2, "4": 1},
    }
    assert tuple(misses["by_kind"]) == MISS_KINDS
    line = "Misses: 4 (no_number 1, one_digit 2, adjacent_swap 1; first wrong digit 1: 2, 4: 1)"
    assert format_misses(misses) == line
    none = summarize_misses(records[3:4], correct_field="exact")
    assert none["num_misses"] == 0 and format_misses(none) == ""
    with pytest.raises(KeyError):  # the field that says right or wrong must be there
        summarize_misses(records, correct_field="correct")
