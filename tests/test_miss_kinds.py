"""Kinds of wrong pass-key answers (infini_jax.miss_kinds), mostly on misses the demo runs made (docs/training.md)."""

import pytest

from infini_jax.miss_kinds import MISS_KINDS, format_misses, miss_kind, summarize_misses


@pytest.mark.parametrize(
    "answer, generation, expected",
    [
        ("60400", "30400.", ("one_digit", 1)),  # N2 at 16M: the first digit
        ("45411", "45441", ("one_digit", 4)),
        ("11229", "11292.", ("adjacent_swap", 4)),  # a key cut by a segment boundary
        ("74226", "74262", ("adjacent_swap", 4)),
        ("24243", "24324", ("shifted", 3)),  # K2, cut key: the second 4 dropped, a 4 inserted later
        ("66760", "66676", ("shifted", 3)),
        ("53666", "5666.", ("wrong_length", 2)),  # a digit lost
        ("33075", "33033", ("other", 4)),  # two digits wrong
        # synthetic
        ("4240", "42402", ("wrong_length", 5)),  # a digit added after the key: one past the shorter
        ("12345", "The pass key is", ("no_number", None)),
        ("12345", None, ("no_number", None)),
        ("12345", "54321", ("other", 1)),
        ("12345", "12354 and 9", ("adjacent_swap", 4)),  # the first number is read
        ("12345", "13245", ("adjacent_swap", 2)),
        ("12345", "19945", ("other", 2)),  # two neighbours wrong, not exchanged
        ("12345", "15342", ("other", 2)),  # two exchanged, not neighbours
        ("12345", "13254", ("other", 2)),  # two swaps are not one
        ("12345", "x 12345", ("other", None)),  # the key, though not where the record's check wanted it
        ("Paris", "London", ("other", None)),  # not a number
    ],
)
def test_miss_kind(answer, generation, expected):
    assert miss_kind(answer, generation) == expected


def test_summarize_misses_counts_only_the_wrong_ones():
    records = [
        {"answer": "60400", "generation": "30400.", "exact": False, "correct": False},
        {"answer": "41515", "generation": "31515.", "exact": False, "correct": False},
        {"answer": "11229", "generation": "11292.", "exact": False, "correct": False},
        {"answer": "12345", "generation": "12345.", "exact": True, "correct": True},
        {"answer": "12345", "generation": "", "exact": False, "correct": False},
        {"answer": "12345", "generation": ". 12345", "exact": False, "correct": True},  # which field decides
    ]
    misses = summarize_misses(records, correct_field="exact")
    assert misses == {
        "num_misses": 5,
        "by_kind": {"no_number": 1, "wrong_length": 0, "one_digit": 2, "adjacent_swap": 1, "shifted": 0, "other": 1},
        "by_first_wrong_digit": {"1": 2, "4": 1},
    }
    assert tuple(misses["by_kind"]) == MISS_KINDS
    line = "Misses: 5 (no_number 1, one_digit 2, adjacent_swap 1, other 1; first wrong digit 1: 2, 4: 1)"
    assert format_misses(misses) == line
    assert summarize_misses(records)["num_misses"] == 4  # by "correct" (the default), the last one is right
    no_position = summarize_misses([{"answer": "12345", "correct": False}])  # no generation: no number, no position
    assert no_position["by_kind"]["no_number"] == 1 and format_misses(no_position) == "Misses: 1 (no_number 1)"
    none = summarize_misses(records[3:4], correct_field="exact")
    assert none["num_misses"] == 0 and format_misses(none) == ""
