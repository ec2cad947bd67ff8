"""The training job (infini_jax.train*): data, optimizer groups, schedule, curriculum, resume, export.

Tiny and CPU-only: every trainer here shares one batch shape, so the train step compiles once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from transformers import AutoTokenizer

from configs.train_common import get_config as common_config
from configs.train_common import stage
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.haystack import CLASSIC_HAYSTACK, DEFAULT_HAYSTACK
from infini_jax.data.prompts import PASSKEY_NEEDLE, build_passkey_prompt
from infini_jax.train import Trainer, build_model
from infini_jax.train_data import PasskeyBatcher, TextStream, generated_haystack
from infini_jax.train_optim import OptimSettings, make_optimizer
from infini_jax.train_report import closing_far_accuracy
from infini_jax.train_schedule import Curriculum, Stage, lr_factor

SEG = 64
SEQ = 320  # 5 segments; the template takes 260 tokens with the byte tokenizer and 5 digits


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER_PATH)


@pytest.fixture(scope="module")
def batcher(tok):
    return PasskeyBatcher(tok, segment_length=SEG, num_digits=5,
                          haystacks={"classic": CLASSIC_HAYSTACK, "varied": generated_haystack(0, 300)})


# ----------------------------------------------------------------------------- data
def test_eval_prompts_equal_the_prompt_generator(tok):
    b = PasskeyBatcher(tok, segment_length=SEG, haystacks={"classic": CLASSIC_HAYSTACK, "default": DEFAULT_HAYSTACK})
    for k, text in enumerate((CLASSIC_HAYSTACK, DEFAULT_HAYSTACK)):
        for ctx, depth in ((300, 0), (700, 37), (2000, 50), (2000, 100)):
            ids, start = b.eval_prompts(["12345", "67890"], ctx, depth, k)
            ref = build_passkey_prompt(tok, context_length=ctx, depth_percent=depth, passkey="67890",
                                       haystack_text=text)
            assert ids[1].tolist() == ref.input_ids.tolist()
            assert int(start[1]) == ref.needle_token_index


def test_synthetic_batch_layout(tok, batcher):
    rng = np.random.default_rng(0)
    batch = batcher.sample(rng, 64, SEQ, force_early=0.5)
    d = batcher.num_digits
    last_seg = ((SEQ - 1) // SEG) * SEG
    assert batch["input_ids"].shape == (64, SEQ) and batch["input_ids"].dtype == np.int32
    for r in range(64):
        ids = batch["input_ids"][r]
        key = "".join(str(x) for x in batch["digits"][r])
        start = int(batch["needle_start"][r])
        needle = tok.decode(ids[start:start + batcher.needle_len])
        assert needle == PASSKEY_NEEDLE.format(key=key)
        if start - len(batcher.prefix) < batcher.haystack_tokens(SEQ):  # (depth 100 puts it at the very end)
            assert tok.decode(ids[start - 1:start]).endswith((".", " "))  # after a sentence end or the prefix
        text = tok.decode(ids, skip_special_tokens=True)
        assert text.endswith("What is the pass key? The pass key is " + key)
        assert text.count("pass key is " + key) == 2  # the needle and the answer
        # Masks are aligned with the logits: position t predicts token t + 1.
        targets = ids[1:]
        assert tok.decode(targets[batch["answer_mask"][r, :-1] > 0]) == key
        assert tok.decode(targets[batch["copy_mask"][r, :-1] > 0]) == key
        assert batch["copy_mask"][r].sum() == d and batch["answer_mask"][r].sum() == d
        assert batch["lm_mask"][r, -1] == 0 and batch["lm_mask"][r, :-1].all()
        assert batch["far"][r] == float(start + batcher.needle_len <= last_seg)
    assert 0.3 < batch["far"].mean() < 1.0
    forced = batcher.sample(rng, 64, SEQ, force_early=1.0)
    assert forced["far"].all()
    assert (forced["write_weight"] == 1).all()


def test_virtual_length_weights(batcher):
    rng = np.random.default_rng(1)
    n, r_max = 4000, 256.0
    batch = batcher.sample(rng, n, SEQ, virtual_length_max=r_max, prob_r_one=0.1, virtual_length_scope="non_needle")
    w = batch["write_weight"]
    t = np.arange(SEQ)[None]
    start = batch["needle_start"][:, None]
    needle = (t >= start) & (t < start + batcher.needle_len)
    assert (w[needle] == 1).all()  # needle tokens are written once
    r = np.where(needle, np.nan, w)
    r_row = np.nanmax(r, axis=1)
    assert np.allclose(np.nanmin(r, axis=1), r_row)  # one r per row for every non-needle token
    assert (r_row >= 1).all() and (r_row <= r_max).all()
    ones = np.isclose(r_row, 1.0)
    assert abs(ones.mean() - 0.1) < 0.03  # r = 1 with probability 0.1 (plus a negligible continuous mass)
    u = np.log(r_row[~ones]) / np.log(r_max)  # logUniform[1, r_max] -> uniform on [0, 1]
    assert abs(u.mean() - 0.5) < 0.03 and abs(np.quantile(u, 0.25) - 0.25) < 0.04
    assert abs(np.quantile(u, 0.75) - 0.75) < 0.04


def test_virtual_length_scope_haystack_weights_only_the_filler(batcher):
    rng = np.random.default_rng(2)
    n, r_max = 64, 256.0
    # The answer at the row's end, then (boundary batches with the "." target) a tail of filler after it.
    for tail in ({}, {"answer_boundary_share": 1.0, "key_terminator": True}):
        batch = batcher.sample(rng, n, SEQ, virtual_length_max=r_max, prob_r_one=0.0, virtual_length_scope="haystack",
                               **tail)
        key_at_end = (batch["input_ids"][:, -batcher.num_digits:] == batcher.digit_ids[batch["digits"]]).all(axis=1)
        assert key_at_end.all() if not tail else not key_at_end.any()
        w, ids = batch["write_weight"], batch["input_ids"]
        t = np.arange(SEQ)[None]
        start = batch["needle_start"][:, None]
        needle = (t >= start) & (t < start + batcher.needle_len)
        # The question + answer: where the answer mask says the digits are (position t predicts t + 1).
        digit_pos = np.argmax(batch["answer_mask"], axis=1)[:, None] + 1
        question_start = digit_pos - len(batcher.question)
        p = len(batcher.prefix)
        np.testing.assert_array_equal(ids[:, :p], np.broadcast_to(batcher.prefix, (n, p)))
        haystack = (t >= p) & (t < question_start) & ~needle
        assert (w[~haystack] == 1).all()  # intro, needle, question, answer (and any tail) written once
        r_row = w.max(axis=1)
        assert (r_row > 1).all()
        np.testing.assert_array_equal(w[haystack], np.broadcast_to(r_row[:, None], w.shape)[haystack])
        q = np.take_along_axis(ids, question_start + np.arange(len(batcher.question))[None], axis=1)
        np.testing.assert_array_equal(q, np.broadcast_to(batcher.question, q.shape))
    with pytest.raises(ValueError, match="virtual_length_scope"):
        batcher.sample(rng, 2, SEQ, virtual_length_max=4.0, virtual_length_scope="all")


def _has_adjacent_repeat(digits: np.ndarray) -> np.ndarray:
    return (digits[:, 1:] == digits[:, :-1]).any(axis=1)


def test_repeated_digit_share_oversamples_keys_with_equal_adjacent_digits(batcher):
    n = 4000
    uniform = batcher.draw_keys(np.random.default_rng(5), n)
    assert abs(_has_adjacent_repeat(uniform).mean() - (1 - 0.9 ** 4)) < 0.03  # 34.4% for 5 digits
    # Off (0): the same keys and the same rng stream afterwards as without the option.
    rng_a, rng_b = np.random.default_rng(6), np.random.default_rng(6)
    np.testing.assert_array_equal(batcher.draw_keys(rng_a, 8), batcher.draw_keys(rng_b, 8, 0.0))
    assert rng_a.random() == rng_b.random()
    half = batcher.draw_keys(np.random.default_rng(7), n, 0.5)
    assert abs(_has_adjacent_repeat(half).mean() - (0.5 + 0.5 * (1 - 0.9 ** 4))) < 0.03
    every = batcher.draw_keys(np.random.default_rng(8), n, 1.0)
    assert _has_adjacent_repeat(every).all() and (every[:, 0] > 0).all()
    # The repeated pair sits anywhere: each of the 4 adjacent pairs is equal in about 1/4 + 3/4 * 1/10 of the keys.
    pair_rate = (every[:, 1:] == every[:, :-1]).mean(axis=0)
    np.testing.assert_allclose(pair_rate, 0.25 + 0.75 * 0.1, atol=0.03)
    # In a batch the answer (and the needle) carries the drawn key.
    batch = batcher.sample(np.random.default_rng(9), 16, SEQ, repeated_digit_share=1.0, key_terminator=True)
    assert _has_adjacent_repeat(batch["digits"]).all()
    pos = np.flatnonzero(batch["answer_mask"][0])[:5] + 1
    np.testing.assert_array_equal(batch["input_ids"][0, pos], batcher.digit_ids[batch["digits"][0]])
    with pytest.raises(ValueError, match="repeated_digit_share"):
        batcher.draw_keys(np.random.default_rng(0), 2, 1.5)


def _successor_is_ambiguous(key) -> bool:
    """A digit occurs twice, followed by two different digits (57074: 7 -> 0 and 7 -> 4)."""
    after: dict = {}
    for a, b in zip(key, key[1:], strict=False):
        after.setdefault(a, set()).add(b)
    return any(len(s) > 1 for s in after.values())


def test_repeated_digit_span_chooses_which_earlier_digit_is_repeated(batcher, tok):
    """span "apart" copies a digit at least two places back (57074), "any" any earlier one, both never into the
    last digit, so that nearly every such key has a digit followed by two different digits; "adjacent" (the
    default) is the former stream, key for key."""
    from infini_jax.train_data import key_digit_pattern

    n = 6000
    np.testing.assert_array_equal(batcher.draw_keys(np.random.default_rng(3), 64, 0.5),
                                  batcher.draw_keys(np.random.default_rng(3), 64, 0.5, "adjacent"))

    def draw(span):
        keys = batcher.draw_keys(np.random.default_rng(4), n, 1.0, span)
        assert (keys[:, 0] > 0).all()
        patterns = [key_digit_pattern("".join(map(str, k))) for k in keys]
        shares = {p: patterns.count(p) / n for p in ("distinct", "adjacent_pair", "repeated_apart")}
        return shares, keys, np.mean([_successor_is_ambiguous(k.tolist()) for k in keys])

    adjacent, _, _ = draw("adjacent")
    assert adjacent["adjacent_pair"] == 1.0
    apart, keys, ambiguous = draw("apart")
    assert apart["distinct"] == 0.0 and apart["repeated_apart"] > 0.6 and ambiguous > 0.9
    # Digits 2 and 3 copy digits 0..1 (never their predecessor); the last digit is left uniform.
    assert (keys[:, 3] == keys[:, 0]).mean() > 0.25 and abs((keys[:, 4] == keys[:, 0]).mean() - 0.1) < 0.02
    anywhere, _, ambiguous = draw("any")
    assert anywhere["distinct"] == 0.0 and anywhere["adjacent_pair"] > 0.6 and ambiguous > 0.9
    batch = batcher.sample(np.random.default_rng(9), 16, SEQ, repeated_digit_share=1.0, repeated_digit_span="apart")
    assert all(len(set(k.tolist())) < 5 for k in batch["digits"])
    with pytest.raises(ValueError, match="repeated_digit_span"):
        batcher.draw_keys(np.random.default_rng(0), 2, 0.5, "far")
    with pytest.raises(ValueError, match="repeated_digit_span"):
        batcher.draw_keys(np.random.default_rng(0), 2, 0.0, "far")  # a misspelt span is refused even when off
    # Keys too short for a span are refused only when keys are oversampled: 1-digit keys work with the share at 0.
    one = PasskeyBatcher(tok, segment_length=SEG, num_digits=1,
                         haystacks={"classic": CLASSIC_HAYSTACK})
    assert one.draw_keys(np.random.default_rng(0), 3).shape == (3, 1)
    three = PasskeyBatcher(tok, segment_length=SEG, num_digits=3,
                           haystacks={"classic": CLASSIC_HAYSTACK})
    with pytest.raises(ValueError, match=">= 4 digits"):
        three.draw_keys(np.random.default_rng(0), 3, 0.5, "apart")


def _answer_keys(trainer, batch) -> np.ndarray:
    """[rows, 5] the key digits each row's answer carries (read back from the answer tokens)."""
    ids, mask = batch["input_ids"], batch["answer_mask"]
    answers = [ids[i, np.flatnonzero(mask[i])[:5] + 1] for i in range(len(ids))]
    digit_of = {int(t): d for d, t in enumerate(trainer.batcher.digit_ids)}
    return np.asarray([[digit_of[int(t)] for t in a] for a in answers])  # every answer token is a digit


def test_trainer_passes_repeated_digit_share_to_the_batches(tmp_path):
    config = _config(tmp_path)
    config.data.repeated_digit_share = 1.0
    trainer = Trainer(config)
    keys = _answer_keys(trainer, trainer.make_batch(trainer.stages[0]))
    assert keys.shape == (4, 5) and _has_adjacent_repeat(keys).all()
    config.data.repeated_digit_share = -0.1
    with pytest.raises(ValueError, match="repeated_digit_share"):
        Trainer(config)
    config.data.repeated_digit_share, config.data.needle_boundary_share = 0.0, 1.5
    with pytest.raises(ValueError, match="needle_boundary_share"):
        Trainer(config)
    config.data.needle_boundary_share, config.data.needle_boundary_window = 0.5, -1
    with pytest.raises(ValueError, match="needle_boundary_window"):
        Trainer(config)


def test_a_stage_sets_its_own_key_and_needle_options(tmp_path):
    """Stage.repeated_digit_share / needle_boundary_share override the data options in that stage only (None =
    the data config's); a stage set to 0 draws the very batches of a run with the options off."""
    config = _config(tmp_path)
    config.data.repeated_digit_share, config.data.needle_boundary_share = 1.0, 0.5
    config.curriculum.stage_0.repeated_digit_share = 0.0
    config.curriculum.stage_0.needle_boundary_share = 0.0
    trainer, plain = Trainer(config), Trainer(_config(tmp_path / "plain"))  # plain: the options off, same seeds
    assert (trainer.stages[0].repeated_digit_share, trainer.stages[1].repeated_digit_share) == (0.0, None)
    for _ in range(3):
        got, want = trainer.make_batch(trainer.stages[0]), plain.make_batch(plain.stages[0])
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert _has_adjacent_repeat(_answer_keys(trainer, trainer.make_batch(trainer.stages[1]))).all()  # data's 1.0
    plain_keys = np.concatenate([_answer_keys(plain, plain.make_batch(plain.stages[1])) for _ in range(4)])
    assert not _has_adjacent_repeat(plain_keys).all()
    with pytest.raises(ValueError, match="needle_boundary_share"):
        Stage("s", SEQ, 4, 1.0, needle_boundary_share=1.5)
    config.data.repeated_digit_share, config.curriculum.stage_1.repeated_digit_share = 0.0, 1.0
    config.data.num_digits = 1
    with pytest.raises(ValueError, match="repeated_digit_share"):
        Trainer(config)  # the stage's share: a one-digit key has no pair to repeat


def test_a_stage_sets_its_own_answer_boundary_share(tmp_path):
    """Stage.answer_boundary_share overrides data.answer_boundary_share in that stage only (None = the data
    config's); the batches then have a segment boundary at or inside the answer (PasskeyBatcher.sample, tested
    above)."""
    config = _config(tmp_path)
    config.data.answer_boundary_share = 0.25
    config.curriculum.stage_1.answer_boundary_share = 1.0
    trainer = Trainer(config)
    assert (trainer.stages[0].answer_boundary_share, trainer.stages[1].answer_boundary_share) == (None, 1.0)
    seen, sample = [], trainer.batcher.sample

    def recording(*args, **kwargs):
        seen.append(kwargs["answer_boundary_share"])
        return sample(*args, **kwargs)

    trainer.batcher.sample = recording
    trainer.make_batch(trainer.stages[0])
    trainer.make_batch(trainer.stages[1])
    assert seen == [0.25, 1.0]
    with pytest.raises(ValueError, match="answer_boundary_share"):
        Stage("s", SEQ, 4, 1.0, answer_boundary_share=1.5)


def test_varied_texts_trains_on_several_generated_texts_and_keeps_held_out_ones_out(tmp_path):
    """data.varied_texts = n: n generated texts (seeds varied_seed ..) share the varied rows; 1 (the default) is the
    single text of every earlier run, batch for batch; a held-out seed inside the range is refused."""
    one, plain = _config(tmp_path / "one"), _config(tmp_path / "plain")
    one.data.varied_texts = 1
    a, b = Trainer(one), Trainer(plain)
    assert [s.name for s in a.batcher.sources] == ["classic", "varied"]
    got, want = a.make_batch(a.stages[0]), b.make_batch(b.stages[0])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    config = _config(tmp_path / "four")
    config.data.varied_texts, config.data.haystack_mix = 4, 0.0
    trainer = Trainer(config)
    assert [s.name for s in trainer.batcher.sources] == ["classic", "varied_0", "varied_1", "varied_2", "varied_3"]
    np.testing.assert_allclose(trainer.batcher.weights, [0.0, 0.25, 0.25, 0.25, 0.25])
    assert trainer.batcher.sources[1].ids.tolist() == a.batcher.sources[1].ids.tolist()  # seed 0: the old text
    assert trainer.batcher.sources[2].ids.tolist() != a.batcher.sources[1].ids.tolist()
    drawn = trainer.batcher.sample(np.random.default_rng(0), 64, SEQ)["source"]  # no classic rows at mix 0
    assert set(drawn.tolist()) == {1, 2, 3, 4}
    config.data.varied_seed = 12342  # 12342..12345 holds the evaluation's held-out text
    with pytest.raises(ValueError, match="held-out text of eval.varied_seed"):
        Trainer(config)
    config.data.varied_seed, config.data.varied_texts = 0, 0
    with pytest.raises(ValueError, match="varied_texts=0 must be a whole number"):
        Trainer(config)


def test_short_rows_mixed_into_a_stage(tmp_path):
    """Stage.short_share: that share of the stage's steps trains on its short rows, without virtual length; the
    loop counts each step's own shape. With a share of 0 nothing is drawn (the data stream is unchanged)."""
    config = _config(tmp_path, total_steps=6)
    config.curriculum = {"stage_0": stage("virtual", 2 * SEQ, 2, 1.0, virtual_length_max=64.0, short_share=0.5,
                                          short_seq_len=SEQ, short_batch_size=2)}
    trainer = Trainer(config)
    st = trainer.stages[0]
    batches = [trainer.make_batch(st) for _ in range(40)]
    shapes = [b["input_ids"].shape for b in batches]
    assert set(shapes) == {(2, SEQ), (2, 2 * SEQ)} and 10 <= shapes.count((2, SEQ)) <= 30
    assert all(b["write_weight"].max() == 1 for b in batches if b["input_ids"].shape == (2, SEQ))  # r = 1
    assert max(b["write_weight"].max() for b in batches if b["input_ids"].shape == (2, 2 * SEQ)) > 1

    trainer = Trainer(config)  # a fresh run: trains on both shapes and counts their tokens
    trainer.train()
    records = [r for r in (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
               if "loss" in r]
    assert trainer.step == 6 and records[-1]["tokens_seen"] == trainer.tokens_seen
    assert trainer._compiled_shapes == {(2, SEQ), (2, 2 * SEQ)}  # both shapes ran: the count lies between
    assert 6 * 2 * SEQ < trainer.tokens_seen < 6 * 2 * 2 * SEQ and trainer.tokens_seen % (2 * SEQ) == 0
    n_short = sum(r["short_steps"] for r in records)  # logged per interval
    assert trainer.tokens_seen == n_short * 2 * SEQ + (6 - n_short) * 2 * 2 * SEQ

    off = Trainer(_config(tmp_path / "off"))
    state = off.rng.bit_generator.state
    assert off._draw_batch_shape(off.stages[1]) == (4, SEQ, 16.0) and off.rng.bit_generator.state == state
    with pytest.raises(ValueError, match="short_seq_len"):
        Stage("s", SEQ, 4, 1.0, short_share=0.2)
    with pytest.raises(ValueError, match="short_seq_len"):
        Stage("s", SEQ, 4, 1.0, short_share=0.2, short_seq_len=SEQ, short_batch_size=4)  # not shorter
    with pytest.raises(ValueError, match="short_share"):
        Stage("s", 2 * SEQ, 4, 1.0, short_share=1.0, short_seq_len=SEQ, short_batch_size=4)
    with pytest.raises(ValueError, match="accuracy gate"):
        Stage("s", 2 * SEQ, 4, 1.0, short_share=0.2, short_seq_len=SEQ, short_batch_size=4,
              advance_min_accuracy=0.5)


def test_resume_with_short_rows_gives_the_identical_losses(tmp_path):
    """The short-row draws come from the data RNG saved in checkpoints: a resumed run repeats the same shapes."""
    def config(workdir):
        c = _config(workdir, total_steps=8)
        c.curriculum = {"stage_0": stage("virtual", 2 * SEQ, 2, 1.0, virtual_length_max=16.0, short_share=0.5,
                                              short_seq_len=SEQ, short_batch_size=2)}
        return c

    ref = Trainer(config(tmp_path / "ref"))
    ref.train()
    crashed = Trainer(config(tmp_path / "run"))
    crashed.train(stop_at_step=7, save_at_end=False)  # checkpoint at step 4; steps 5-7 are lost
    resumed = Trainer(config(tmp_path / "run"))
    assert resumed.restore() and resumed.step == 4
    resumed.train()
    want, got = _losses(ref.history), _losses(resumed.history)
    assert sorted(got) == [5, 6, 7, 8] and resumed.tokens_seen == ref.tokens_seen
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


def test_needle_boundary_share_puts_a_segment_boundary_near_a_key_copy(batcher):
    n, seq = 256, 1280  # 20 segments: room for many needle places (at SEQ most needles sit at the same one)
    base = batcher.sample(np.random.default_rng(11), n, seq, force_early=0.5)
    # Off (0): the identical batch.
    same = batcher.sample(np.random.default_rng(11), n, seq, force_early=0.5, needle_boundary_share=0.0)
    for k in base:
        np.testing.assert_array_equal(base[k], same[k])
    d, a, c = batcher.num_digits, len(batcher.needle_parts[0]), batcher.copy_offset
    for window in (0, 4):
        natural = batcher.needle_near_boundary(base["needle_start"], window).mean()
        forced = batcher.sample(np.random.default_rng(12), n, seq, force_early=0.5, needle_boundary_share=1.0,
                                needle_boundary_window=window)
        start = forced["needle_start"]
        near = batcher.needle_near_boundary(start, window)
        assert natural < 0.5 and near.mean() > 0.95, (window, natural)
        # By hand: some copy's digits cross a boundary, or (window > 0) a boundary lies < window tokens away.
        for copy in (a, c):
            first, last = start + copy, start + copy + d - 1
            crossed = first // SEG != last // SEG
            close = (first % SEG < window) | (SEG - 1 - last % SEG < window)
            near &= ~(crossed | close)
        assert not near.any()
        # The needle is intact, carries the key twice, and follows a sentence end of the haystack.
        for i in range(n):
            key = batcher.digit_ids[forced["digits"][i]].tolist()
            row = forced["input_ids"][i]
            assert row[start[i] + a:start[i] + a + d].tolist() == key == row[start[i] + c:start[i] + c + d].tolist()
        # force_early still holds: rows marked far end their needle before the final segment.
        last_seg = ((seq - 1) // SEG) * SEG
        far = forced["far"].astype(bool)
        assert far.mean() > 0.4 and (start[far] + batcher.needle_len <= last_seg).all()
    with pytest.raises(ValueError, match="needle_boundary_share"):
        batcher.sample(np.random.default_rng(0), 2, seq, needle_boundary_share=2.0)
    with pytest.raises(ValueError, match="needle_boundary_window"):
        batcher.sample(np.random.default_rng(0), 2, seq, needle_boundary_share=0.5, needle_boundary_window=SEG)


def test_the_haystack_table_is_built_once_a_stage_and_gives_the_rows_of_an_exact_one(tok):
    """Every batch of a stage ends a random number of tokens (< one segment) short of the stage's length (the answer
    shift), so a table kept per exact length was rebuilt every batch (with 17 texts this made the GPU wait for
    the host). The kept table serves the whole stage and gives the rows a table of the exact length gives."""
    haystacks = {"classic": CLASSIC_HAYSTACK, **{f"varied_{i}": generated_haystack(i, 300) for i in range(3)}}
    kept = PasskeyBatcher(tok, segment_length=SEG, num_digits=5, haystacks=haystacks)
    exact = PasskeyBatcher(tok, segment_length=SEG, num_digits=5, haystacks=haystacks)
    exact._stacked = exact._build_table  # the former behaviour: a table of exactly the asked length
    builds = []
    build = kept._build_table
    kept._build_table = lambda n: builds.append(n) or build(n)
    options = dict(force_early=0.5, virtual_length_max=8.0, key_terminator=True, answer_boundary_share=0.3,
                   needle_boundary_share=0.2, repeated_digit_share=0.3)
    for i, seq in enumerate((SEQ, SEQ, 1280, 1280, 1280, SEQ)):
        a = kept.sample(np.random.default_rng(i), 16, seq, **options)
        b = exact.sample(np.random.default_rng(i), 16, seq, **options)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # One build per change of length (SEQ -> 1280 -> SEQ), not one per batch.
    assert len(builds) == 3, builds


def test_text_stream(tok, tmp_path):
    (tmp_path / "a.txt").write_text("hello world. " * 20)
    (tmp_path / "b.txt").write_text("second file! " * 20)
    stream = TextStream(tok, [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], cache_path=str(tmp_path / "c.npy"))
    assert stream.tokens[0] == tok.bos_token_id and tok.eos_token_id in stream.tokens.tolist()
    batch = stream.sample(np.random.default_rng(0), 3, 50)
    assert batch["input_ids"].shape == (3, 50) and batch["answer_mask"].sum() == 0 and batch["is_passkey"].sum() == 0
    flat = stream.tokens.tolist()
    row = batch["input_ids"][0].tolist()
    assert any(flat[i:i + 50] == row for i in range(len(flat) - 49))  # a contiguous window of the stream
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    again = TextStream(tok, files, cache_path=str(tmp_path / "c.npy"))  # same files and tokenizer: the cache
    assert np.array_equal(again.tokens, stream.tokens)
    other = TextStream(tok, files[:1], cache_path=str(tmp_path / "c.npy"))  # other files: never the stale cache
    assert len(other.tokens) < len(stream.tokens)


# ----------------------------------------------------------------------------- schedule and curriculum
def test_lr_factor_matches_optax():
    warmup, total, ratio = 5, 40, 0.1
    sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, end_value=ratio)
    for step in range(total + 3):
        ours = lr_factor(step, step / total, warmup_steps=warmup, warmup_end_progress=warmup / total, min_ratio=ratio)
        assert ours == pytest.approx(float(sched(step)), abs=1e-6), step


def test_curriculum_advances_on_its_accuracy_gate():
    stages = [Stage("a", 768, 8, 0.5, advance_min_accuracy=0.5, max_share=0.7), Stage("b", 2048, 4, 0.15),
              Stage("c", 8192, 2, 0.35)]
    cur = Curriculum(stages)
    assert cur.update(0.49, 10) is None
    assert cur.update(0.55, 11) is None  # planned share used, but no accuracy measured yet
    cur.record_accuracy(0.3, 11)
    assert cur.update(0.6, 12) is None  # gate closed
    cur.record_accuracy(None, 12)  # an interval without far needles keeps the last measurement
    assert cur.update(0.61, 13) is None
    cur.record_accuracy(0.55, 13)
    event = cur.update(0.62, 14)
    assert event["from"] == "a" and event["to"] == "b" and event["reason"] == "gate passed"
    # The later stages share what is left in their planned proportions: b ends at .62 + .15/.5 * .38.
    assert cur.planned_end() == pytest.approx(0.62 + 0.3 * 0.38)
    assert cur.update(0.7, 20) is None
    assert cur.update(0.75, 21)["to"] == "c"
    assert cur.update(0.99, 30) is None  # the last stage runs to the end

    never = Curriculum(stages)
    never.record_accuracy(0.1, 4)
    assert never.update(0.65, 5) is None
    event = never.update(0.7, 6)  # the safeguard: max_share used
    assert event["to"] == "b" and "safeguard" in event["reason"]

    restored = Curriculum(stages)
    restored.load_state_dict(json.loads(json.dumps(never.state_dict())))
    assert restored.index == 1 and restored.start_progress == pytest.approx(0.7)


def test_a_windowed_gate_averages_the_recent_intervals_and_a_lucky_one_does_not_open_it():
    """The seventh session's G runs passed a 0.97 gate on one lucky 25-step interval while averaging 0.89-0.95;
    ``advance_window_steps`` makes the gate compare the mean of the intervals logged in the last N steps."""
    stages = [Stage("a", 768, 8, 0.5, advance_min_accuracy=0.9, max_share=0.9, advance_window_steps=100),
              Stage("b", 2048, 4, 0.5)]
    single = Curriculum([dataclasses.replace(stages[0], advance_window_steps=0), stages[1]])
    windowed = Curriculum(stages)
    for step, acc in ((25, 0.5), (50, 0.8), (75, 0.85), (100, 0.8), (125, 0.95)):
        single.record_accuracy(acc, step)
        windowed.record_accuracy(acc, step)
    assert single.update(0.6, 125)["reason"] == "gate passed"  # the last interval alone: 0.95
    # The window (25, 125] holds 0.8, 0.85, 0.8, 0.95: mean 0.85 < 0.9; the interval at step 25 has left it.
    assert windowed.gate_accuracy() == pytest.approx(0.85)
    assert windowed.update(0.6, 125) is None
    windowed.record_accuracy(None, 150)  # no far needle: nothing recorded, the window moves on (drops 50)
    assert windowed.recent == [(75, 0.85), (100, 0.8), (125, 0.95)]
    restored = Curriculum(stages)  # the window survives a checkpoint
    restored.load_state_dict(json.loads(json.dumps(windowed.state_dict())))
    for cur in (windowed, restored):
        for step, acc in ((150, 0.95), (175, 0.96), (200, 0.97)):
            cur.record_accuracy(acc, step)
        assert cur.gate_accuracy() == pytest.approx((0.95 + 0.95 + 0.96 + 0.97) / 4)  # steps (100, 200]
        event = cur.update(0.65, 200)
        assert event["reason"] == "gate passed" and event["far_accuracy"] == pytest.approx(0.9575)
        assert cur.recent == [] and cur.gate_accuracy() is None  # the next stage starts afresh
    with pytest.raises(ValueError, match="advance_window_steps"):
        Stage("a", 768, 8, 0.5, advance_min_accuracy=0.9, advance_window_steps=-1)
    with pytest.raises(ValueError, match="set advance_min_accuracy > 0"):
        Stage("a", 768, 8, 0.5, advance_window_steps=100)


# ----------------------------------------------------------------------------- optimizer
def _tiny_model(seed=0):
    """The trainers' model (shared eager initialisers), with non-zero balance factors so that their
    weight decay shows."""
    model = build_model(_config("unused"))
    for i, layer in enumerate(model.layers):
        bf = layer.attn.balance_factors
        bf[...] = jnp.asarray(np.random.default_rng(seed + i).standard_normal(bf.shape), bf.dtype)
    return model


def _params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())


@nnx.jit
def _update(opt, model, grads, factors):
    opt.update(model, grads, lr_factors=factors)


def _fake_grads(model, seed):
    rng = np.random.default_rng(seed)  # numpy: no per-shape compilation of a random kernel
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), nnx.state(model, nnx.Param))


def test_balance_factors_get_their_own_lr_and_weight_decay():
    o = OptimSettings(lr=0.1, balance_factor_lr=0.3, weight_decay=0.5, balance_factor_weight_decay=0.2,
                      clip_norm=0.0, warmup_steps=0)
    model = _tiny_model()
    opt = make_optimizer(model, o)
    before = _params(model)
    grads = _fake_grads(model, 1)
    factors = {"default": jnp.float32(0.5), "balance": jnp.float32(0.25)}
    _update(opt, model, grads, factors)
    after = _params(model)
    g = jax.tree.map(np.asarray, grads.to_pure_dict())
    adam = lambda x: x / (np.abs(x) + o.eps)  # first AdamW step: m_hat = g, v_hat = g^2

    def expected(path, p, gp):
        name = path[-1].key
        if name == "balance_factors":
            return p - 0.25 * 0.3 * (adam(gp) + 0.2 * p)
        wd = 0.5 if p.ndim >= 2 and name not in ("embedding", "lm_head") else 0.0
        return p - 0.5 * 0.1 * (adam(gp) + wd * p)

    want = jax.tree_util.tree_map_with_path(expected, before, g)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    bf = after["layers"][0]["attn"]["balance_factors"]
    assert not np.allclose(bf, before["layers"][0]["attn"]["balance_factors"])


def test_grad_clipping_covers_every_parameter():
    """Two steps with clipping == two steps without it on grads clipped by the global norm over everything."""
    clip = 0.5
    clipped, plain = _tiny_model(), _tiny_model()
    opt_c = make_optimizer(clipped, OptimSettings(clip_norm=clip, warmup_steps=0))
    opt_p = make_optimizer(plain, OptimSettings(clip_norm=0.0, warmup_steps=0))
    factors = {"default": jnp.float32(1.0), "balance": jnp.float32(1.0)}
    for seed, scale in ((2, 1.0), (3, 7.0)):  # different norms: Adam's second step sees the clipping
        g = jax.tree.map(lambda x, s=scale: x * s, _fake_grads(clipped, seed))
        shrink = min(1.0, clip / float(optax.global_norm(g)))
        _update(opt_c, clipped, g, factors)
        _update(opt_p, plain, jax.tree.map(lambda x, s=shrink: x * s, g), factors)
    for a, b in zip(jax.tree.leaves(_params(clipped)), jax.tree.leaves(_params(plain)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- training runs
def _config(workdir, total_steps=24) -> ml_collections.ConfigDict:
    c = common_config()
    c.workdir = str(workdir)
    m = c.model
    m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads = 32, 64, 1, 2, 2
    m.segment_length, m.dtype, m.max_position_embeddings = SEG, "float32", 1024
    c.total_steps, c.total_seconds = total_steps, 0.0
    c.log_every, c.save_every = 1, 4
    c.optim.lr, c.optim.balance_factor_lr, c.optim.warmup_steps = 1e-2, 3e-2, 2
    c.curriculum = {"stage_0": stage("early", SEQ, 4, 0.5, force_early_needle=0.8),
                    "stage_1": stage("virtual", SEQ, 4, 0.5, virtual_length_max=16.0)}  # same shape: one compile
    c.eval.enabled = False
    return c


def _losses(records):
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    trainer = Trainer(_config(tmp_path_factory.mktemp("ref")))
    trainer.train()
    return trainer


def test_loss_falls(reference_run):
    losses = _losses(reference_run.history)
    assert sorted(losses) == list(range(1, 25))
    first, last = losses[1], np.mean([losses[s] for s in range(21, 25)])
    assert last < first - 0.5, (first, last)
    gates = [r for r in reference_run.history if "gate_mean" in r][-1]
    assert len(gates["gate_mean"]) == 1 and all(0 <= g <= 1 for g in gates["gate_min"] + gates["gate_max"])
    stages = [r for r in reference_run.history if r.get("event") == "stage"]
    assert [s["to"] for s in stages] == ["early", "virtual"] and stages[1]["step"] == 12


def test_resume_gives_the_identical_next_step_loss(reference_run, tmp_path):
    config = _config(tmp_path)
    crashed = Trainer(config)
    crashed.train(stop_at_step=7, save_at_end=False)  # checkpoint at step 4; steps 5-7 are lost
    resumed = Trainer(config)
    assert resumed.restore() and resumed.step == 4
    resumed.train()
    ref = _losses(reference_run.history)
    got = _losses(resumed.history)
    assert sorted(got) == list(range(5, 25))
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-6), step
    # metrics.jsonl keeps each step once: the lines of the lost steps were dropped on resume.
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 25))


def test_a_resume_at_a_stage_change_logs_the_change_once(reference_run, tmp_path):
    """The stage change at step 12 is logged after the checkpoint at step 12: a run resumed from there drops that
    line and logs it again, once. Checkpoints between log lines are refused (the resumed interval would differ)."""
    config = _config(tmp_path)
    Trainer(config).train(stop_at_step=14, save_at_end=False)  # checkpoint at 12, then the change, then a crash
    resumed = Trainer(config)
    assert resumed.restore() and resumed.step == 12
    resumed.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["to"]) for r in lines if r.get("event") == "stage"] == [(0, "early"), (12, "virtual")]
    ref, got = _losses(reference_run.history), _losses(resumed.history)
    assert all(got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-6) for step in got)
    config.log_every, config.save_every = 3, 4
    with pytest.raises(ValueError, match="multiple of config.log_every"):
        Trainer(config)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def test_the_weight_average_follows_its_formula_and_leaves_the_training_unchanged(reference_run, tmp_path):
    """optim.ema_decay = d: after each update ema = d * ema + (1 - d) * params, from ema = params at step 0,
    recomputed here in float64 from the weights after every step; the losses are the reference run's (the average
    never enters the update). A bad decay is refused."""
    d = 0.75
    config = _config(tmp_path)
    config.optim.ema_decay = d
    trainer = Trainer(config)
    want = _leaves(nnx.state(trainer.model(), nnx.Param))
    for step in range(1, 25):
        trainer.train(stop_at_step=step, save_at_end=False)
        want = [d * w + (1 - d) * p for w, p in zip(want, _leaves(nnx.state(trainer.model(), nnx.Param)),
                                                    strict=True)]
    got = _leaves(trainer.ema)
    assert len(got) == len(want) and all(x.dtype == np.float32 for x in jax.tree.leaves(trainer.ema))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    last = _leaves(nnx.state(trainer.model(), nnx.Param))
    assert max(np.abs(a - b).max() for a, b in zip(got, last, strict=True)) > 1e-3  # an average, not the weights
    ref, ours = _losses(reference_run.history), _losses(trainer.history)
    assert sorted(ours) == list(range(1, 25))
    assert all(ours[s] == pytest.approx(ref[s], rel=1e-6, abs=1e-6) for s in ref)
    for bad in (1.0, -0.1):
        config.optim.ema_decay = bad
        with pytest.raises(ValueError, match="ema_decay"):
            Trainer(config)


def test_no_first_stage_warning_at_or_above_its_threshold(tmp_path, caplog, monkeypatch):
    """The first-stage warning compares with FIRST_STAGE_EXIT_WARNING: set to the accuracy this tiny run leaves its
    first stage with (0.0, asserted), it stays quiet (at or above is no warning)."""
    from infini_jax import train

    monkeypatch.setattr(train, "FIRST_STAGE_EXIT_WARNING", 0.0)  # any accuracy is at or above it
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(_config(tmp_path, total_steps=4))
        trainer.train()
    exits = [r for r in trainer.history if r.get("event") == "stage" and r.get("from") == "early"]
    assert len(exits) == 1 and exits[0]["far_accuracy"] == 0.0
    assert "leaves its first stage" not in caplog.text


def test_the_first_stage_warning_comes_once_not_at_later_stage_changes(tmp_path, caplog):
    """Three stages of a tiny run leave each stage with a low far-needle accuracy: only the first exit warns."""
    config = _config(tmp_path, total_steps=6)
    config.curriculum = {"stage_0": stage("early", SEQ, 4, 1 / 3, force_early_needle=0.8),
                         "stage_1": stage("middle", SEQ, 4, 1 / 3),
                         "stage_2": stage("virtual", SEQ, 4, 1 / 3, virtual_length_max=16.0)}
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
        trainer.train()
    exits = [r for r in trainer.history if r.get("event") == "stage" and "from" in r]
    assert [r["from"] for r in exits] == ["early", "middle"] and all(r["far_accuracy"] < 0.985 for r in exits)
    warned = [r.getMessage() for r in caplog.records if "leaves its first stage" in r.getMessage()]
    assert len(warned) == 1 and "(early)" in warned[0]


def test_the_weight_average_resumes_exactly_and_exports_as_model_ema(tmp_path, caplog):
    """The average is checkpointed: a run that crashed after its checkpoint at step 4 and resumed ends with the
    average of an uninterrupted run. A checkpoint written without it starts the average from its weights (with a
    warning). ``run`` exports it as workdir/model_ema (card "weights_from": "ema") and probes it into workdir/ema."""
    from infini_jax.api import load_model
    from infini_jax.train import run

    def config(workdir, ema_decay=0.5):
        c = _config(workdir, total_steps=8)
        c.optim.ema_decay = ema_decay
        return c

    whole = Trainer(config(tmp_path / "whole"))
    whole.train()
    Trainer(config(tmp_path / "split")).train(stop_at_step=7, save_at_end=False)
    resumed = Trainer(config(tmp_path / "split"))
    assert resumed.restore() and resumed.step == 4
    resumed.train()
    for a, b in zip(_leaves(resumed.ema), _leaves(whole.ema), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    Trainer(config(tmp_path / "plain", ema_decay=0.0)).train(stop_at_step=4, save_at_end=False)
    late = Trainer(config(tmp_path / "plain"))
    with caplog.at_level(logging.WARNING):
        assert late.restore() and late.step == 4
    assert "no weight average" in caplog.text
    for a, b in zip(_leaves(late.ema), _leaves(nnx.state(late.model(), nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)

    c = config(tmp_path / "job")
    c.probe.enabled = True
    c.probe.context_length, c.probe.virtual_lengths, c.probe.depths, c.probe.keys_per_cell = SEQ, (16.0,), (50,), 1
    c.probe.cut_keys_per_place = 0
    out = run(c)
    exported = tmp_path / "job" / "model_ema"
    assert out["ema_model_dir"] == str(exported) and json.loads((tmp_path / "job" / "ema" / "probe.json").read_text())
    card = json.loads((exported / "model_card.json").read_text())
    assert (card["weights_from"], card["ema_decay"]) == ("ema", 0.5)
    assert json.loads((tmp_path / "job" / "model" / "model_card.json").read_text())["weights_from"] == "last"
    job = Trainer(c)  # the job's final checkpoint holds the average it exported
    assert job.restore()
    for a, b in zip(_leaves(nnx.state(load_model(exported, dtype="float32"), nnx.Param)), _leaves(job.ema),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_session_seconds_spreads_the_budget_over_invocations_with_the_identical_metrics(tmp_path):
    """session_seconds: each invocation trains that long, stops at the next log line, saves and returns without an
    export; the same command again goes on. A tiny limit stops at the first log line (2 steps), so two short sessions
    (the second ends at the stage change) and a last unlimited one log what one uninterrupted run logs."""
    from infini_jax.train import run

    def config(workdir):
        c = _config(workdir, total_steps=8)  # stage change at step 4
        c.log_every, c.save_every = 2, 4
        return c

    def lines(workdir):
        records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: r.get(k) for k in ("step", "stage", "event", "to", "loss", "far_accuracy", "tokens_seen")}
                for r in records]

    run(config(tmp_path / "ref"))
    split = config(tmp_path / "split")
    split.session_seconds = 1e-9
    for step in (2, 4):
        out = run(split)
        assert not out["finished"] and out["steps"] == step and "model_dir" not in out
        assert not (tmp_path / "split" / "model").exists()
    split.session_seconds = 0.0
    out = run(split)
    assert out["finished"] and out["steps"] == 8 and (tmp_path / "split" / "model").is_dir()
    want, got = lines(tmp_path / "ref"), lines(tmp_path / "split")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 2, 4, 4, 6, 8]  # the stage event at 4
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == (None if b["loss"] is None else pytest.approx(b["loss"], rel=1e-6, abs=1e-6)), (a, b)
        assert {k: v for k, v in a.items() if k != "loss"} == {k: v for k, v in b.items() if k != "loss"}
    split.session_seconds = -1.0
    with pytest.raises(ValueError, match="session_seconds"):
        Trainer(split)


def test_closing_far_accuracy_averages_the_logged_intervals_of_the_last_steps():
    records = [{"event": "stage", "step": 0}] + [
        {"step": step, "loss": 1.0, "far_accuracy": acc} for step, acc in
        [(400, 0.1), (500, 0.5), (600, None), (700, 0.7), (1000, 0.9)]]
    assert closing_far_accuracy(records, 1000) == pytest.approx((0.7 + 0.9) / 2)  # steps 501..1000; None skipped
    assert closing_far_accuracy(records, 1000, window_steps=601) == pytest.approx((0.1 + 0.5 + 0.7 + 0.9) / 4)
    assert closing_far_accuracy(records[:4], 1000) is None  # no far needle logged in the window (text data)


def test_run_warns_when_the_closing_far_accuracy_is_low(tmp_path, caplog):
    """A few steps of a tiny model leave far needles unanswered: the job says so and returns the figure."""
    from infini_jax.train import run

    config = _config(tmp_path, total_steps=4)
    config.probe.enabled = True  # and the virtual-length probe: it fails too, and says so
    config.probe.context_length, config.probe.virtual_lengths = SEQ, (1.0, 64.0)
    config.probe.depths, config.probe.keys_per_cell = (0, 100), 1
    with caplog.at_level(logging.WARNING):
        out = run(config)
    assert out["closing_far_accuracy"] is not None and out["closing_far_accuracy"] < 0.99
    assert any("Far-needle training accuracy over the last 500 steps" in r.getMessage() for r in caplog.records)
    # ... and already when it left its first stage (at step 2 of 4).
    exits = [r.getMessage() for r in caplog.records if "leaves its first stage" in r.getMessage()]
    assert len(exits) == 1 and "(early) at step 2 " in exits[0]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe == json.loads(json.dumps(out["probe"])) and sorted(probe["by_virtual_length"]) == ["1", "64"]
    assert all(v["num_samples"] == 4 for v in probe["by_virtual_length"].values())  # 2 depths x 2 haystacks
    assert probe["min_exact_match"] < 0.98 and probe["min_exact_match_wanted"] == 0.98
    assert any("Virtual-length probe" in r.getMessage() and "below 0.98" in r.getMessage() for r in caplog.records)
    cut = probe["cut_key"]  # one needle place of these 320-token prompts cuts the key: 8 keys there
    assert cut["num_samples"] == 8 and len(cut["places"]) == 1 and cut["min_exact_match_wanted"] == 0.975
    assert cut["exact_match"] < 0.975 and len(cut["wrong"]) == round(8 * (1 - cut["exact_match"]))
    assert any("Cut-key probe" in r.getMessage() and "below 0.975" in r.getMessage() for r in caplog.records)


def test_the_probe_runs_during_training_outside_the_clock_and_survives_a_resume(tmp_path):
    """probe.every_steps: probe lines in metrics.jsonl at those steps; a resume from a checkpoint keeps them (and
    does not probe that step again); a bad probe config fails before training."""
    config = _config(tmp_path, total_steps=8)
    config.log_every, config.save_every = 2, 4
    config.probe.enabled, config.probe.every_steps = True, 4
    config.probe.context_length, config.probe.virtual_lengths = SEQ, (1.0, 64.0)
    config.probe.depths, config.probe.keys_per_cell = (50,), 1
    crashed = Trainer(config)
    crashed.train(stop_at_step=6, save_at_end=False)  # checkpoint at step 4; step 6's line is lost
    probes = [r for r in crashed.history if "probe_exact_match" in r]
    assert [r["step"] for r in probes] == [4] and sorted(probes[0]["probe_exact_match"]) == ["1", "64"]
    assert probes[0]["probe_min_exact_match"] == min(probes[0]["probe_exact_match"].values())
    assert 0 <= probes[0]["probe_cut_key_exact_match"] <= 1  # one cut-key place at 320 tokens
    resumed = Trainer(config)
    assert resumed.restore() and resumed.step == 4
    resumed.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "probe_exact_match" in r] == [4, 8]  # step 4's kept, not run twice
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6, 8]

    config.probe.every_steps = 3
    with pytest.raises(ValueError, match="every_steps=3 must be a multiple of config.log_every=2"):
        Trainer(config)
    config.probe.every_steps = -4
    with pytest.raises(ValueError, match="every_steps=-4 must be a multiple"):
        Trainer(config)
    config.probe.enabled, config.probe.every_steps = False, 4
    with pytest.raises(ValueError, match="needs config.probe.enabled=True"):
        Trainer(config)
    config.probe.enabled = True
    config.probe.every_steps, config.probe.context_length = 4, SEQ + 1
    with pytest.raises(ValueError, match="not a multiple of the segment length"):
        Trainer(config)


def test_the_probe_during_training_stays_off_the_clock_and_compiles_once(tmp_path):
    """A slow probe (2 s a call) adds nothing to train_seconds; its forward is compiled once for all calls."""
    import time as _time

    config = _config(tmp_path, total_steps=8)
    config.log_every, config.save_every = 4, 0
    config.probe.enabled, config.probe.every_steps = True, 4
    config.probe.context_length, config.probe.virtual_lengths = SEQ, (16.0,)
    config.probe.depths, config.probe.keys_per_cell = (50,), 1
    trainer = Trainer(config)
    real = trainer.probe.__call__

    class SlowProbe:
        def __call__(self, model):
            _time.sleep(2.0)
            return real(model)

    probe, trainer.probe = trainer.probe, SlowProbe()
    trainer.train()
    lines = [r for r in trainer.history if "loss" in r]
    assert [r["step"] for r in trainer.history if "probe_exact_match" in r] == [4, 8]
    assert lines[-1]["train_seconds"] < 2.0, lines[-1]  # two probes slept 4 s
    # One program per batch shape (1 key per cell, 8 per cut-key place), both reused by the second probe.
    assert probe._read._fn._cache_size() == 2


def test_export_loads_with_load_model(reference_run):
    from infini_jax.api import load_model

    out = reference_run.export()
    card = json.loads((out / "model_card.json").read_text())
    assert card["trained"] is True and card["steps"] == 24
    # Log every step: the far-needle accuracy over the last 500 steps is the mean of the 24 logged intervals.
    logged = [r["far_accuracy"] for r in reference_run.history if "loss" in r and r["far_accuracy"] is not None]
    assert len(logged) >= 12 and card["far_accuracy_last_500_steps"] == pytest.approx(np.mean(logged))
    assert json.loads((out / "training_config.json").read_text())["trained"] is True
    assert card["trained_with"] == {"attention_impl": "xla", "memory_precision": "highest"}
    loaded = load_model(out, dtype="float32")
    for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)),
                    jax.tree.leaves(nnx.state(reference_run.model(), nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_stores_portable_numerics_whatever_the_run_trained_with(tmp_path):
    """A run with the one-pass memory einsums (and, on a GPU, cuDNN attention) exports nanotron's numerics, so that
    the model loads on a CPU in fp32; the card says what the run trained with."""
    from infini_jax.api import load_model

    config = _config(tmp_path, total_steps=2)
    config.model.memory_precision = "default"
    trainer = Trainer(config)
    trainer.train()
    out = trainer.export()
    stored = json.loads((out / "infini_config.json").read_text())
    assert (stored["attention_impl"], stored["memory_precision"]) == ("xla", "highest")
    card = json.loads((out / "model_card.json").read_text())
    assert card["trained_with"] == {"attention_impl": "xla", "memory_precision": "default"}
    assert load_model(out, dtype="float32").cfg.memory_precision == "highest"


def test_final_evaluation_writes_eval_json_and_resumes(reference_run, tmp_path, monkeypatch):
    from infini_jax import train_eval
    from infini_jax.generate import Generator

    config = _config(tmp_path)
    config.eval.enabled = True
    config.eval.context_lengths, config.eval.depths, config.eval.num_samples = (100, SEQ), (0, 100), 1
    model, tok = reference_run.model(), reference_run.tokenizer
    summary = train_eval.run_eval(config, model, tok, tmp_path, model_id={"step": 24})
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["overall"]["num_samples"] == 4  # 100 tokens is too short for the template: skipped
    assert set(saved["by_context_length"]) == {str(SEQ)} and set(saved["by_depth"]) == {"0", "100"}
    assert set(saved["by_haystack"]) == {"classic", "varied"}
    records = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert all(r["num_tokens"] == SEQ and len(r["answer"]) == 5 for r in records)
    # Each record says whether a segment boundary cuts its needle near a key copy; the summary splits on it.
    batcher = reference_run.batcher
    flags = [bool(batcher.needle_near_boundary(r["needle_token_index"], train_eval.BOUNDARY_WINDOW)) for r in records]
    assert [r["key_near_segment_boundary"] for r in records] == flags
    split = saved["by_needle_near_boundary"]
    assert set(split) <= {"near", "elsewhere"} and sum(v["num_samples"] for v in split.values()) == 4
    assert split.get("near", {}).get("num_samples", 0) == sum(flags)
    older = [{k: v for k, v in r.items() if k != "key_near_segment_boundary"} for r in records]
    assert set(train_eval.summarize_eval(older)["by_needle_near_boundary"]) == {"unknown"}
    assert saved["misses"]["num_misses"] == sum(not r["exact"] for r in records)  # by kind: infini_jax.miss_kinds
    # A miss is an inexact answer, even when nanotron's criterion (the key anywhere in the text) accepts it.
    shifted = dict(records[0], generation="x" + records[0]["answer"], exact=False, correct=True)
    assert train_eval.summarize_eval([shifted])["misses"]["by_kind"]["other"] == 1
    patterns = saved["by_key_digits"]  # keys split by how their digits repeat
    assert sum(v["num_samples"] for v in patterns.values()) == 4
    assert set(patterns) <= {"distinct", "adjacent_pair", "repeated_apart"}
    assert (tmp_path / "eval" / "summary.json").is_file()
    # The same model: every sample is reused, nothing is generated again.
    calls = []
    monkeypatch.setattr(Generator, "generate", lambda self, prompts: calls.append(prompts) or [])
    again = train_eval.run_eval(config, model, tok, tmp_path, model_id={"step": 24})
    assert not calls and again["overall"] == summary["overall"]
    # Another model (step): the old samples are discarded.
    with pytest.raises(ValueError):  # the stubbed generator returns nothing for the regenerated samples
        train_eval.run_eval(config, model, tok, tmp_path, model_id={"step": 25})
    assert calls


def test_random_answer_position_moves_the_answer_off_segment_ends():
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher

    batcher = PasskeyBatcher(load_tokenizer(str(DEMO_TOKENIZER_PATH)), segment_length=64, num_digits=5)
    rng = np.random.default_rng(0)
    ends = set()
    for _ in range(8):
        out = batcher.sample(rng, 2, 512, random_answer_position=True)
        assert out["input_ids"].shape == (2, 512)
        for row in range(2):
            pos = np.flatnonzero(out["answer_mask"][row])
            assert len(pos) == 5  # positions predicting the 5 digits
            digits = out["input_ids"][row, pos + 1]
            assert list(digits) == list(batcher.digit_ids[out["digits"][row]])
            assert out["lm_mask"][row, pos[-1] + 1 :].sum() == 0  # the filler tail is not a target
            ends.add(int(pos[-1] + 2) % 64)
    assert len(ends) > 1  # the answer's end is no longer always at a segment end


def test_answer_boundary_share_and_key_terminator():
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher

    batcher = PasskeyBatcher(load_tokenizer(str(DEMO_TOKENIZER_PATH)), segment_length=64, num_digits=5)
    rng = np.random.default_rng(1)
    for _ in range(6):
        out = batcher.sample(rng, 2, 512, answer_boundary_share=1.0, key_terminator=True)
        pos = np.flatnonzero(out["answer_mask"][0])  # positions predicting the 5 digits and the "."
        assert len(pos) == 6
        targets = out["input_ids"][0, pos + 1]
        assert list(targets[:5]) == list(batcher.digit_ids[out["digits"][0]])
        assert targets[5] == batcher.period[0]
        first_digit = pos[0] + 1
        # A segment boundary falls at or inside the answer: some digit sits at offset 0 of a segment.
        assert any((first_digit + j) % 64 == 0 for j in range(5))


def test_answer_boundary_digits_pins_the_digit_that_opens_a_segment():
    from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
    from infini_jax.data.tokenizer import load_tokenizer
    from infini_jax.train_data import PasskeyBatcher

    batcher = PasskeyBatcher(load_tokenizer(str(DEMO_TOKENIZER_PATH)), segment_length=64, num_digits=5)
    rng = np.random.default_rng(2)
    for j in (0, 3):
        for _ in range(4):
            out = batcher.sample(rng, 2, 512, answer_boundary_share=1.0, answer_boundary_digits=(j,),
                                 key_terminator=True)
            first_digit = np.flatnonzero(out["answer_mask"][0])[0] + 1
            assert (first_digit + j) % 64 == 0, (j, first_digit)
    # A repeated index weighs more: (0, 0, 1) opens the segment with the first digit 2/3 of the time.
    opened = [(np.flatnonzero(batcher.sample(rng, 1, 512, answer_boundary_share=1.0, answer_boundary_digits=(0, 0, 1),
                                             key_terminator=True)["answer_mask"][0])[0] + 1) % 64 for _ in range(300)]
    assert set(opened) == {0, 63} and abs(np.mean(np.asarray(opened) == 0) - 2 / 3) < 0.08
    with pytest.raises(ValueError, match="answer_boundary_digits"):
        batcher.sample(rng, 2, 512, answer_boundary_share=1.0, answer_boundary_digits=(5,))


def test_eval_only_evaluates_an_exported_model_without_training(reference_run, tmp_path):
    from infini_jax.train import run

    exported = reference_run.export()
    config = _config(tmp_path / "eval_only")
    config.eval_only = True
    config.init_from = str(exported)
    config.eval.enabled = True
    config.eval.context_lengths, config.eval.depths, config.eval.num_samples = (SEQ,), (50,), 1
    out = run(config)
    assert out["model_dir"] == str(exported.absolute()) and out["eval"]["overall"]["num_samples"] == 2
    assert (tmp_path / "eval_only" / "eval.json").is_file()
    assert not (tmp_path / "eval_only" / "checkpoints").exists()  # nothing was trained
    # The model keeps its own numerics: the config's memory_query does not override the checkpoint's.
    config.model.memory_query = "unrotated"
    again = run(config)
    assert json.loads((tmp_path / "eval_only" / "eval" / "model_id.json").read_text())["numerics"][
        "memory_query"] == reference_run.model().cfg.memory_query.value
    assert again["eval"]["overall"] == out["eval"]["overall"]
    config.eval.enabled = False
    with pytest.raises(ValueError, match="nothing to do"):
        run(config)
    config.probe.enabled = True  # the probe alone is something to do
    config.probe.context_length, config.probe.virtual_lengths = SEQ, (16.0,)
    config.probe.depths, config.probe.keys_per_cell = (50,), 1
    probed = run(config)
    assert probed["eval"] is None and probed["probe"]["by_virtual_length"]["16"]["num_samples"] == 2
    assert (tmp_path / "eval_only" / "probe.json").is_file()
    config.probe.enabled = False
    config.eval.enabled = True
    config.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="nothing to evaluate"):
        run(config)


def test_deterministic_asks_xla_for_deterministic_gpu_kernels_before_the_backend_starts(monkeypatch):
    """``config.deterministic`` adds --xla_gpu_deterministic_ops=true to XLA_FLAGS (on an H200 it made two runs'
    losses identical at a 1.9x lower training throughput); once JAX's backend has started it cannot apply, and
    says so instead of silently training non-deterministically."""
    from jax._src import xla_bridge

    from infini_jax import runner

    cfg = common_config()
    assert cfg.deterministic is False
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert runner.request_deterministic_gpu_ops(cfg) is False
    cfg.deterministic = True
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    assert runner.request_deterministic_gpu_ops(cfg) is True
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true"
    assert runner.request_deterministic_gpu_ops(cfg) is True  # already set: not added twice
    assert os.environ["XLA_FLAGS"].count("deterministic") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")  # the user's own value: overridden
    assert runner.request_deterministic_gpu_ops(cfg) is True
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false --xla_gpu_deterministic_ops=true"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="before JAX starts"):
        runner.request_deterministic_gpu_ops(cfg)


def test_finetune_config_continues_a_nanotron_checkpoint_on_text_and_requires_one(tmp_path):
    """configs/train_finetune.py: its CPU smoke setting fine-tunes the nanotron fixture (tests/data/nanotron_A,
    converted in memory) on packed built-in text and exports it; without init_from the job names the flag."""
    from configs import train_finetune
    from infini_jax.api import load_model
    from infini_jax.train import run

    config = train_finetune.get_config("cpu_smoke")
    config.workdir = str(tmp_path / "smoke")
    out = run(config)
    assert out["finished"] and out["steps"] == 4 and np.isfinite(out["final_metrics"]["loss"])
    assert out["final_metrics"]["far_accuracy"] is None  # text only: no pass keys
    start = load_model(config.init_from, dtype="float32")
    tuned = load_model(out["model_dir"], dtype="float32")
    assert tuned.cfg.num_layers == start.cfg.num_layers and tuned.cfg.vocab_size == start.cfg.vocab_size
    pairs = zip(jax.tree.leaves(nnx.state(tuned, nnx.Param)), jax.tree.leaves(nnx.state(start, nnx.Param)), strict=True)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in pairs]
    assert max(moved) > 0  # it trained the checkpoint's weights
    missing = train_finetune.get_config()
    missing.workdir = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="--config.init_from="):
        run(missing)
