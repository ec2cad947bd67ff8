"""scripts/: memory_read_share.py (the needle's share of the memory normaliser per head) and
aligned_answer_check.py (teacher-forced answers that open a fresh segment)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import random_model
from infini_jax.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  segment_length=8)


def test_needle_share_is_a_fraction_of_the_normaliser():
    from memory_read_share import read_shares

    model = random_model(CFG, seed=0)
    ids = np.random.default_rng(0).integers(0, 64, (1, 32))
    whole = read_shares(model, ids, needle_start=0, needle_len=24)  # every written token is "needle"
    part = read_shares(model, ids, needle_start=3, needle_len=5)
    for layer_w, layer_p in zip(whole["layers"], part["layers"], strict=True):
        assert len(layer_w["needle_share"]) == 4 and len(layer_w["gate"]) == 4
        np.testing.assert_allclose(layer_w["needle_share"], 1.0, atol=1e-4)
        assert all(0 < s < 1 for s in layer_p["needle_share"])
    with pytest.raises(ValueError, match="before the last segment"):
        read_shares(model, ids, needle_start=20, needle_len=5)


def test_aligned_answer_check_matches_greedy_generation():
    """Teacher-forced digits come from the positions greedy decoding reads: on the demo model (which answers these
    keys) exact under teacher forcing <=> greedy writes the key; on a random model (which does not) the first
    digit, predicted from the same context both ways, is greedy's first token."""
    from infini_jax import GenerationConfig, Generator, load_model
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher, haystack_text
    from infini_jax.train_probe import answer_tokens, teacher_forced_answers

    demo = Path(__file__).resolve().parent.parent / "infini_jax" / "assets" / "demo_model"
    trained = load_model(demo, dtype="float32")
    noise = random_model(dataclasses.replace(trained.cfg, hidden_size=64, intermediate_size=128, num_layers=1,
                                             num_heads=2, num_kv_heads=2), seed=3)
    tok = load_tokenizer(str(DEMO_TOKENIZER_PATH))
    batcher = PasskeyBatcher(tok, segment_length=256, num_digits=5, haystacks={"classic": haystack_text("classic")})
    digit_of = {int(t): str(i) for i, t in enumerate(batcher.digit_ids)}
    keys, length = ["48213", "90517", "11223"], 1024
    ids, _ = batcher.eval_prompts(keys, length, 50.0, 0)
    right = {}
    for name, model in (("trained", trained), ("random", noise)):
        forward = lambda ids, w, model=model: answer_tokens(model, ids, w, 5)  # noqa: E731
        teacher = teacher_forced_answers(forward, batcher, keys, length, 50.0, 0)
        greedy = Generator(model, GenerationConfig(max_new_tokens=5, batch_size=3)).generate(list(ids))
        for k, t, g in zip(keys, teacher, greedy, strict=True):
            assert (t == k) == (tok.decode(g) == k), (name, k, t, tok.decode(g))
            assert t[0] == digit_of.get(int(g[0]), "?"), (name, k, t, g)
        right[name] = sum(t == k for t, k in zip(teacher, keys, strict=True))
        heavier = teacher_forced_answers(forward, batcher, keys, length, 50.0, 0, question_weight=16.0)
        assert len(heavier) == 3 and all(len(h) == 5 for h in heavier)
    assert right == {"trained": 3, "random": 0}  # both directions of the equivalence are exercised


def test_aligned_answer_check_weighs_the_haystack_writes_only():
    """--haystack_weights: r on every haystack token's write, 1 on the intro, needle, question and answer."""
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher, haystack_text
    from infini_jax.train_probe import teacher_forced_answers

    batcher = PasskeyBatcher(load_tokenizer(str(DEMO_TOKENIZER_PATH)), segment_length=256, num_digits=5,
                             haystacks={"classic": haystack_text("classic")})
    keys, length, seen = ["48213", "90517"], 1024, {}

    def forward(ids, w):
        seen["ids"], seen["w"] = np.asarray(ids), np.asarray(w)
        return jnp.zeros((ids.shape[0], 5), jnp.int32)

    teacher_forced_answers(forward, batcher, keys, length, 50.0, 0, question_weight=4.0, haystack_weight=128.0)
    w, ids = seen["w"], seen["ids"]
    _, needle_start = batcher.eval_prompts(keys, length, 50.0, 0)
    n_prefix, n_question = len(batcher.prefix), len(batcher.question)
    for row, start in zip(w, needle_start, strict=True):
        assert (row[:n_prefix] == 1).all() and (row[length:] == 1).all()  # intro, answer
        assert (row[start:start + batcher.needle_len] == 1).all()  # needle
        assert (row[length - n_question:length] == 4).all()  # question
        hay = np.ones(len(row), bool)
        hay[:n_prefix], hay[length - n_question:], hay[start:start + batcher.needle_len] = False, False, False
        assert (row[hay] == 128).all() and (row[~hay] != 128).all()
    assert ids.shape == (2, length + 5)


def test_aligned_answer_check_splits_keys_with_a_repeated_digit(capsys):
    from aligned_answer_check import exact_rate, has_adjacent_repeat, main

    assert has_adjacent_repeat("55996") and has_adjacent_repeat("12339") and not has_adjacent_repeat("12608")
    assert exact_rate([("12345", "12345"), ("11223", "11233")]) == "0.500 (2)" and exact_rate([]) == "- (0)"
    main(["--lengths", "512", "--depths", "50", "--keys_per_cell", "2", "--repeated_digit_share", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # 2 keys x 2 haystacks, every one with a repeated pair (share 1): none in the "without" group.
    assert "512 tokens" in line and "exact " in line and "without - (0)" in line, line
    assert "adjacent digit " in line and "(4), without" in line, line
    assert "haystack weight 1:" in line and "(classic " in line and "varied " in line, line  # per haystack too


def test_needle_position_sweep_places_and_boundary_split(capsys):
    from needle_position_sweep import main, summarize

    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher, haystack_text, key_copy_near_boundary

    batcher = PasskeyBatcher(load_tokenizer(str(DEMO_TOKENIZER_PATH)), segment_length=256, num_digits=5,
                             haystacks={"classic": haystack_text("classic")})
    ids, start = batcher.eval_prompts(["48213"], 2048, 40.0, 0)
    first, second = batcher.key_copy_offsets(int(start[0]))
    for offset, copy_start in ((first, int(start[0]) + len(batcher.needle_parts[0])),
                               (second, int(start[0]) + batcher.copy_offset)):
        assert offset == copy_start % 256
        assert ids[0, copy_start:copy_start + 5].tolist() == batcher.digit_ids[[4, 8, 2, 1, 3]].tolist()
    # Near: starts < window tokens after a boundary, or ends < window before one (or crosses it).
    near = key_copy_near_boundary(np.arange(256), 5, 256, 8)
    assert np.flatnonzero(~near).tolist() == list(range(8, 244))
    assert np.flatnonzero(key_copy_near_boundary(np.arange(256), 5, 256, 0)).tolist() == [252, 253, 254, 255]
    records = [{"first_copy_offset": 1, "second_copy_offset": 21, "exact": [True, False]},
               {"first_copy_offset": 100, "second_copy_offset": 120, "exact": [True, True]},
               {"first_copy_offset": 233, "second_copy_offset": 253, "exact": [False, False]}]
    assert summarize(records, 5, 256, 8) == {
        "near_boundary": {"places": 2, "failing_places": 2, "prompts": 4, "wrong": 3},
        "elsewhere": {"places": 1, "failing_places": 0, "prompts": 2, "wrong": 0}}
    summary = main(["--length", "512", "--haystack", "classic", "--depth_start", "20", "--depth_stop", "80",
                    "--depth_step", "30", "--keys_per_position", "1"])
    places = summary["near_boundary"]["places"] + summary["elsewhere"]["places"]
    assert 1 <= places <= 3 and '"length": 512' in capsys.readouterr().out
