"""Tokenizers, haystacks and the token-exact passkey prompt generator (infini_jax.data)."""

import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH, build_byte_tokenizer
from infini_jax.data.haystack import CLASSIC_HAYSTACK, DEFAULT_HAYSTACK, load_haystack
from infini_jax.data.prompts import (
    PASSKEY_INTRO,
    PASSKEY_NEEDLE,
    SHOT_KEYS,
    build_passkey_prompt,
    draw_passkeys,
    generate_passkey_samples,
    leading_special_ids,
)
from infini_jax.data.tokenizer import check_vocab, load_tokenizer


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("byte_tok")
    build_byte_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    """A small byte-level BPE (multi-byte tokens, digits merged too) with a BOS post-processor."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [DEFAULT_HAYSTACK, CLASSIC_HAYSTACK, PASSKEY_INTRO] + [
        PASSKEY_NEEDLE.format(key=k) for k in range(100, 400)
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = tmp_path_factory.mktemp("bpe_tok")
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


# ----------------------------------------------------------------------------- tokenizers


def test_demo_tokenizer_asset_is_current_and_round_trips(tmp_path):
    tok = load_tokenizer(DEMO_TOKENIZER_PATH)
    assert len(tok) <= 260
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    text = "The pass key is 90210. Remember it.\n Passage:  tabs\tand ~symbols~ {x}!"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1  # one token per ASCII byte
    assert tok.decode(ids, skip_special_tokens=True) == text
    # The shipped asset is what build_byte_tokenizer produces.
    build_byte_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(DEMO_TOKENIZER_PATH, name)) as a, open(tmp_path / name) as b:
            assert json.load(a) == json.load(b), name


def test_byte_tokenizer_digits_are_single_tokens(byte_tok):
    ids = byte_tok("31415", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    assert byte_tok.decode(byte_tok.encode("héllo ✓"), skip_special_tokens=True) == "héllo ✓"


def test_load_tokenizer_error_names_local_path(tmp_path):
    with pytest.raises(ValueError, match="local directory"):
        load_tokenizer(str(tmp_path / "no" / "such" / "tokenizer"))


def test_check_vocab(byte_tok):
    check_vocab(byte_tok, 260)
    check_vocab(byte_tok, 32000)
    with pytest.raises(ValueError, match=r"260 ids.*vocab_size is 256"):
        check_vocab(byte_tok, 256)


def test_leading_special_ids(byte_tok, bpe_tok):
    assert leading_special_ids(byte_tok) == [byte_tok.bos_token_id]
    assert leading_special_ids(bpe_tok) == [bpe_tok.bos_token_id]


# ----------------------------------------------------------------------------- haystack


def test_load_haystack(tmp_path):
    assert load_haystack() == DEFAULT_HAYSTACK and len(DEFAULT_HAYSTACK) > 2000
    assert load_haystack(kind="classic") == CLASSIC_HAYSTACK
    with pytest.raises(ValueError, match="Unknown haystack kind"):
        load_haystack(kind="nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_haystack(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no \*\.txt"):
        load_haystack(tmp_path)
    (tmp_path / "b.txt").write_text("Second file.")
    (tmp_path / "a.txt").write_text("First file.")
    (tmp_path / "c.md").write_text("ignored")
    assert load_haystack(tmp_path) == "First file.\nSecond file.\n"


# ----------------------------------------------------------------------------- prompts


def _check_sample(tok, s, context_length):
    assert isinstance(s.input_ids, np.ndarray) and s.input_ids.dtype == np.int32  # 4 bytes a token, not a list
    ids = s.input_ids.tolist()
    assert len(ids) == context_length
    needle_ids = tok(s.extra["needle_text"], add_special_tokens=False)["input_ids"]
    idx = s.needle_token_index
    assert ids[idx : idx + len(needle_ids)] == needle_ids
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    # Depth: at or just before int(H * depth / 100), right after a sentence-ending token.
    prefix, n_hay = s.extra["prefix_num_tokens"], s.extra["haystack_num_tokens"]
    pos = idx - prefix
    if s.depth_percent == 100:
        assert pos == n_hay
    else:
        target = int(n_hay * s.depth_percent / 100)
        assert 0 <= pos <= target
        if pos > 0:
            assert tok.decode([ids[idx - 1]]).rstrip().endswith(".")
            assert target - pos < 400  # within one sentence or so of the requested spot
        else:
            assert target < 400
    return needle_ids


@pytest.mark.parametrize("tok_name", ["byte_tok", "bpe_tok"])
def test_generated_prompts_have_exact_length_and_needle(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    samples = generate_passkey_samples(
        tok,
        context_lengths=[700, 1024, 4096, 100_000],
        depths=[0, 10, 37.5, 50, 90, 100],
        num_samples=2,
        seed=3,
    )
    assert len(samples) == 4 * 6 * 2
    for s in samples:
        _check_sample(tok, s, s.context_length)
        assert s.answer in s.extra["needle_text"] and len(s.answer) == 5
    text = tok.decode(samples[0].input_ids, skip_special_tokens=True)
    assert text.startswith(PASSKEY_INTRO) and text.endswith("What is the pass key? The pass key is ")


def test_prompt_text_round_trips_with_byte_tokenizer(byte_tok):
    s = build_passkey_prompt(
        byte_tok, context_length=2000, depth_percent=50, passkey="4242", haystack_text=CLASSIC_HAYSTACK
    )
    text = byte_tok.decode(s.input_ids, skip_special_tokens=True)
    assert len(text) == 1999  # one byte per token, minus the BOS
    assert ".. The pass key is 4242. Remember it. 4242 is the pass key. " in text
    assert s.answer == "4242" and s.num_digits == 4 and s.dataset == "generated-passkey"


def test_shots_and_needle_template(byte_tok):
    s3 = build_passkey_prompt(
        byte_tok,
        context_length=3000,
        depth_percent=25,
        passkey="777",
        num_shots=3,
        haystack_text=DEFAULT_HAYSTACK,
    )
    text = byte_tok.decode(s3.input_ids, skip_special_tokens=True)
    for k in SHOT_KEYS:
        assert f"The pass key is {k}." in text
    n = build_passkey_prompt(
        byte_tok,
        context_length=3000,
        depth_percent=0,
        passkey="777",
        haystack_text=DEFAULT_HAYSTACK,
        template="needle",
    )
    text = byte_tok.decode(n.input_ids, skip_special_tokens=True)
    assert text.startswith("There is an important info hidden inside a lot of irrelevant text.")
    assert "there. The pass key is 777. Remember it. 777 is the pass key. The old" in text
    assert text.endswith(" \n\nWhat is the pass key? The pass key is ")
    _check_sample(byte_tok, n, 3000)
    with pytest.raises(ValueError, match="num_shots"):
        build_passkey_prompt(
            byte_tok,
            context_length=3000,
            depth_percent=0,
            passkey="1",
            num_shots=4,
            haystack_text=DEFAULT_HAYSTACK,
        )


def test_prompt_errors(byte_tok):
    kw = dict(context_length=1024, passkey="12345", haystack_text=DEFAULT_HAYSTACK)
    for bad in (101, -1):
        with pytest.raises(ValueError, match=r"outside \[0, 100\]"):
            build_passkey_prompt(byte_tok, depth_percent=bad, **kw)
    with pytest.raises(ValueError, match=r"too small.*needs \d+ tokens"):
        build_passkey_prompt(byte_tok, context_length=100, depth_percent=50, passkey="1", haystack_text="x.")
    with pytest.raises(ValueError, match="template"):
        build_passkey_prompt(byte_tok, depth_percent=50, template="other", **kw)
    with pytest.raises(ValueError, match=r"outside \[0, 100\]"):
        generate_passkey_samples(byte_tok, context_lengths=1024, depths=[50, 101], num_samples=1)


def test_minimal_context_has_empty_haystack(byte_tok):
    with pytest.raises(ValueError, match=r"needs (\d+) tokens") as e:
        build_passkey_prompt(byte_tok, context_length=10, depth_percent=50, passkey="12", haystack_text="a.")
    need = int(str(e.value).split("needs ")[1].split(" ")[0])
    s = build_passkey_prompt(
        byte_tok, context_length=need, depth_percent=50, passkey="12", haystack_text="a."
    )
    assert len(s.input_ids) == need and s.extra["haystack_num_tokens"] == 0


def test_million_token_prompt_is_fast(byte_tok):
    s = build_passkey_prompt(
        byte_tok, context_length=1_048_576, depth_percent=33, passkey="9", haystack_text=DEFAULT_HAYSTACK
    )
    assert len(s.input_ids) == 1_048_576
    _check_sample(byte_tok, s, 1_048_576)


# ----------------------------------------------------------------------------- keys


def test_keys_digits_unique_reproducible():
    def keys(seed, n=2000, d=4):
        return draw_passkeys(n, d, np.random.default_rng(seed))

    a, b, c = keys(0), keys(0), keys(1)
    assert a == b and a != c
    assert len(set(a)) == len(a)
    assert all(len(k) == 4 and k[0] != "0" for k in a)
    assert not {str(k) for k in SHOT_KEYS} & set(a)
    # The whole range is reachable (nanotron never drew 10**n - 1) and the shot keys are excluded.
    two = draw_passkeys(90 - 1, 2, np.random.default_rng(0))
    assert sorted(int(k) for k in two) == [k for k in range(10, 100) if k != 34]
    with pytest.raises(ValueError, match="only 89"):
        draw_passkeys(90, 2, np.random.default_rng(0))
    for bad in (0, 19):
        with pytest.raises(ValueError, match="num_digits"):
            draw_passkeys(1, bad, np.random.default_rng(0))
    big = draw_passkeys(3, 18, np.random.default_rng(0))
    assert all(len(k) == 18 for k in big)


def test_generate_samples_seeded(byte_tok):
    kw = dict(context_lengths=[1024, 2048], depths=[0, 50], num_samples=3, num_digits=6)
    a = generate_passkey_samples(byte_tok, seed=7, **kw)
    b = generate_passkey_samples(byte_tok, seed=7, **kw)
    c = generate_passkey_samples(byte_tok, seed=8, **kw)
    assert [s.answer for s in a] == [s.answer for s in b]
    assert [s.input_ids.tolist() for s in a] == [s.input_ids.tolist() for s in b]
    assert [s.answer for s in a] != [s.answer for s in c]
    assert len({s.answer for s in a}) == len(a) and all(len(s.answer) == 6 for s in a)
    assert [s.id for s in a[:4]] == ["gen-1024-0-0", "gen-1024-0-1", "gen-1024-0-2", "gen-1024-50-0"]
    assert len({s.id for s in a}) == len(a)
    classic = generate_passkey_samples(byte_tok, seed=7, haystack="classic", **kw)
    assert byte_tok.decode(classic[0].input_ids).count("The grass is green.") > 5


def test_haystack_dir(byte_tok, tmp_path):
    (tmp_path / "one.txt").write_text("Alpha beta gamma. Delta epsilon.")
    s = generate_passkey_samples(
        byte_tok, context_lengths=1000, depths=[50], num_samples=1, haystack_dir=tmp_path
    )[0]
    assert "Alpha beta gamma. Delta epsilon." in byte_tok.decode(s.input_ids)
    _check_sample(byte_tok, s, 1000)


def test_generated_keys_do_not_depend_on_the_rest_of_the_sweep(byte_tok):
    """A sample's key depends on (seed, length, depth, index) only, so runs resume into and extend each other."""
    small = generate_passkey_samples(byte_tok, seed=3, context_lengths=[512], depths=[50], num_samples=1)
    big = generate_passkey_samples(byte_tok, seed=3, context_lengths=[256, 512], depths=[0, 50, 100], num_samples=3)
    by_id = {s.id: s.answer for s in big}
    assert by_id[small[0].id] == small[0].answer
