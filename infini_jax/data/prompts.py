"""Generated passkey / needle-in-a-haystack prompts, built in token space.

The equivalent of nanotron's ``examples/infinite-context-length/generate_data.py`` (passkey template)
and of the ``simple_needle_in_a_hay_stack`` wording (needle template). A prompt is::

    [BOS] intro [shots] " \\n Passage: "  haystack[:p]  needle  haystack[p:]  ". What is the pass key? ..."
    '------------ prefix -------------'                          '---------------- suffix --------'

Each piece is tokenised on its own (no special tokens, except the tokenizer's BOS once at the very
start) and the id lists are concatenated. The haystack's ids are computed once and tiled to exactly the
number of filler tokens needed, so a prompt has **exactly** ``context_length`` tokens, also for 1M+.

The needle goes at ``p = int(n_haystack * depth / 100)`` haystack tokens, moved back to just after the
nearest token whose decoded text ends a sentence (ends with '.', trailing whitespace ignored), or to 0
when there is none; depth 100 puts it at the very end of the haystack.

Bugs of nanotron's ``generate_data.py`` fixed here:

* Haystack trimming mixes characters and tokens: an overshooting file is cut with
  ``content[:-(target_cut - current_len)]``, a *character* slice by a *token* count, so prompts are
  not the requested length. Here the filler is counted and cut in tokens only.
* Depth snapping indexes the context *string* with a *token* position (``while context[p] != '.'``),
  so the needle lands at an unrelated spot, often mid-word. Here the search runs on the token ids.
* Pass keys come from the unseeded global ``np.random``: datasets cannot be reproduced. Here a seeded
  ``numpy.random.Generator`` draws them.
* ``--check_key_in_dataset`` compares ``str(key)`` with the dataset's *int* answers, so it never
  excludes anything. Here keys are unique within a run (and never one of the shot keys 312, 415, 34).
* ``np.random.randint(10**(n-1), 10**n - 1)`` excludes its upper bound, so the largest n-digit key
  (10**n - 1) is never drawn. Here keys are uniform over ``[10**(n-1), 10**n - 1]``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from infini_jax.data.haystack import load_haystack

PASSKEY_INTRO = (
    "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about what is the pass key later on. \n"
)
# Few-shot blocks in the style of nanotron's PROMPT_SHOT_1..3: a short passage that hides a key,
# followed by the question and its answer.
PASSKEY_SHOTS = (
    "\n Passage: The grass is green. The sky is blue. The sun is yellow. The pass key is 312. Remember "
    "it. 312 is the pass key. Here we go. There and back again. What is the pass key? The pass key is 312.",
    "\n Passage: The river runs past the old mill. The pass key is 415. Remember it. 415 is the pass "
    "key. Children play on the bridge while the bakers open their shops. What is the pass key? The pass "
    "key is 415.",
    "\n Passage: Snow covers the hills in winter and the lakes freeze over. Travellers rest in the small "
    "inn by the road. The pass key is 34. Remember it. 34 is the pass key. What is the pass key? The pass "
    "key is 34.",
)
SHOT_KEYS = (312, 415, 34)
PASSKEY_PASSAGE = " \n Passage: "
PASSKEY_NEEDLE = ". The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = ". What is the pass key? The pass key is "

# nanotron/simple_needle_in_a_hay_stack: f"{soft} {haystack_with_needle} \n\n{question}".
NEEDLE_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there. "
)
NEEDLE_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
NEEDLE_QUESTION = " \n\nWhat is the pass key? The pass key is "

TEMPLATES = ("passkey", "needle")
MAX_DIGITS = 18  # 10**18 - 1 still fits in int64


@dataclasses.dataclass
class PromptSample:
    """One evaluation prompt, generated here or read from a dataset.

    Attributes:
      id: unique id of the sample (``gen-{context_length}-{depth}-{i}`` for generated ones).
      input_ids: the prompt's token ids, int32 [S] (4 bytes a token: a 16M-token prompt takes 64 MB, a Python
        list of ints up to 9 times more), or None when only ``prompt`` is known (dataset text, tokenised later).
      prompt: the prompt text (dataset prompts, tokenised later by the evaluator), or None.
      answer: the pass key as a string.
      context_length: the nominal context length in tokens (the dataset's column when read).
      depth_percent: where the needle was asked to go, 0..100 (percent of the haystack).
      dataset: where the sample comes from (``generated-passkey``, a dataset name or path).
      num_shots / num_digits: as in nanotron's datasets, None when unknown.
      needle_token_index: index in ``input_ids`` of the needle's first token, None when unknown.
      extra: anything else (template, needle text, token counts of the pieces, dataset columns).
    """

    id: str
    input_ids: np.ndarray | None
    prompt: str | None
    answer: str
    context_length: int
    depth_percent: float
    dataset: str
    num_shots: int | None = None
    num_digits: int | None = None
    needle_token_index: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class HaystackTokens:
    """A haystack tokenised once: ``ids`` [H] and ``ends_sentence`` [H] (token ends with '.')."""

    ids: np.ndarray
    ends_sentence: np.ndarray

    def tiled(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` tokens of the haystack repeated end to end (ids and sentence-end mask)."""
        return np.resize(self.ids, n), np.resize(self.ends_sentence, n)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def leading_special_ids(tokenizer) -> list[int]:
    """The special ids the tokenizer puts *before* a text (its BOS), or [] when it adds none."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return full[:k]
    return []


def tokenize_haystack(tokenizer, haystack_text: str) -> HaystackTokens:
    """Tokenises ``haystack_text`` once and marks the tokens that end a sentence."""
    if not haystack_text or not haystack_text.strip():
        raise ValueError("The haystack text is empty: pass some text (or use infini_jax.data.haystack).")
    if not haystack_text[-1].isspace():
        haystack_text += " "  # so that the tiled copies do not glue words together
    ids = np.asarray(_encode(tokenizer, haystack_text), dtype=np.int64)
    uniq = np.unique(ids)
    texts = tokenizer.batch_decode([[int(i)] for i in uniq])
    ends = np.asarray([t.rstrip().endswith(".") for t in texts], dtype=bool)
    mask = np.isin(ids, uniq[ends])
    return HaystackTokens(ids=ids, ends_sentence=mask)


def _template_pieces(template: str, num_shots: int) -> tuple[str, str, str]:
    """(prefix text, needle format string, suffix text) of a template."""
    if template == "passkey":
        if not 0 <= num_shots <= len(PASSKEY_SHOTS):
            raise ValueError(
                f"num_shots={num_shots} is not supported: the passkey template has "
                f"0..{len(PASSKEY_SHOTS)} shot blocks."
            )
        prefix = PASSKEY_INTRO + "".join(PASSKEY_SHOTS[:num_shots]) + PASSKEY_PASSAGE
        return prefix, PASSKEY_NEEDLE, PASSKEY_QUESTION
    if template == "needle":
        if num_shots:
            raise ValueError(
                f"num_shots={num_shots} is not supported by the 'needle' template (it has no "
                "shot blocks): use num_shots=0 or template='passkey'."
            )
        return NEEDLE_INTRO, NEEDLE_NEEDLE, NEEDLE_QUESTION
    raise ValueError(f"Unknown template {template!r}: choose one of {TEMPLATES}.")


def needle_position(hay_ends_sentence: np.ndarray, depth_percent: float) -> int:
    """Haystack index where the needle goes: ``int(H * depth / 100)`` snapped back after a '.' token."""
    n = len(hay_ends_sentence)
    if depth_percent >= 100:
        return n
    p = int(n * depth_percent / 100)
    before = np.flatnonzero(hay_ends_sentence[:p])
    return int(before[-1]) + 1 if len(before) else 0


def _build(
    tokenizer,
    hay: HaystackTokens,
    *,
    context_length: int,
    depth_percent: float,
    passkey: str,
    num_shots: int,
    template: str,
    sample_id: str,
) -> PromptSample:
    if not 0 <= depth_percent <= 100:
        raise ValueError(
            f"depth_percent={depth_percent} is outside [0, 100]: it is the needle's position "
            "in percent of the haystack."
        )
    passkey = str(passkey)
    if not passkey.strip():
        raise ValueError("The pass key is empty: pass a non-empty string such as '12345'.")
    prefix_text, needle_fmt, suffix_text = _template_pieces(template, num_shots)
    prefix = leading_special_ids(tokenizer) + _encode(tokenizer, prefix_text)
    needle_text = needle_fmt.format(key=passkey)
    needle = _encode(tokenizer, needle_text)
    suffix = _encode(tokenizer, suffix_text)
    n_fixed = len(prefix) + len(needle) + len(suffix)
    n_hay = int(context_length) - n_fixed
    if n_hay < 0:
        raise ValueError(
            f"context_length={context_length} is too small: the {template!r} template with "
            f"num_shots={num_shots} and this pass key needs {n_fixed} tokens before any haystack. "
            f"Use context_length >= {n_fixed} (or fewer shots)."
        )
    hay_ids, hay_ends = hay.tiled(n_hay)
    pos = needle_position(hay_ends, depth_percent)
    ids = np.concatenate(
        [
            np.asarray(prefix, np.int64),
            hay_ids[:pos],
            np.asarray(needle, np.int64),
            hay_ids[pos:],
            np.asarray(suffix, np.int64),
        ]
    )
    assert len(ids) == context_length, (len(ids), context_length)
    return PromptSample(
        id=sample_id,
        input_ids=ids.astype(np.int32),
        prompt=None,
        answer=passkey,
        context_length=int(context_length),
        depth_percent=float(depth_percent),
        dataset=f"generated-{template}",
        num_shots=num_shots,
        num_digits=len(passkey) if passkey.isdigit() else None,
        needle_token_index=len(prefix) + pos,
        extra={
            "template": template,
            "needle_text": needle_text,
            "needle_num_tokens": len(needle),
            "prefix_num_tokens": len(prefix),
            "suffix_num_tokens": len(suffix),
            "haystack_num_tokens": n_hay,
        },
    )


def build_passkey_prompt(
    tokenizer,
    *,
    context_length: int,
    depth_percent: float,
    passkey: str,
    num_shots: int = 0,
    haystack_text: str,
    template: str = "passkey",
    sample_id: str | None = None,
) -> PromptSample:
    """Builds one prompt of exactly ``context_length`` tokens with ``passkey`` hidden at ``depth_percent``.

    ``template`` is ``"passkey"`` (nanotron's generate_data.py wording, 0..3 shot blocks) or
    ``"needle"`` (the simple_needle_in_a_hay_stack wording). ``haystack_text`` is tiled as needed.
    To build many prompts, prefer ``generate_passkey_samples``, which tokenises the haystack once.
    """
    hay = tokenize_haystack(tokenizer, haystack_text)
    sid = sample_id if sample_id is not None else f"gen-{context_length}-{depth_percent:g}-{passkey}"
    return _build(
        tokenizer,
        hay,
        context_length=context_length,
        depth_percent=depth_percent,
        passkey=passkey,
        num_shots=num_shots,
        template=template,
        sample_id=sid,
    )


def draw_passkeys(
    n: int, num_digits: int, rng: np.random.Generator, exclude: tuple[int, ...] = SHOT_KEYS
) -> list[str]:
    """``n`` distinct keys of exactly ``num_digits`` digits, uniform over [10**(d-1), 10**d - 1]."""
    if not 1 <= num_digits <= MAX_DIGITS:
        raise ValueError(f"num_digits={num_digits} is outside 1..{MAX_DIGITS}.")
    low, high = 10 ** (num_digits - 1), 10**num_digits - 1
    excluded = {k for k in exclude if low <= k <= high}
    available = high - low + 1 - len(excluded)
    if n > available:
        raise ValueError(
            f"{n} distinct {num_digits}-digit pass keys were asked for but only {available} "
            "exist: use more digits, fewer samples, depths or context lengths."
        )
    seen: set[int] = set(excluded)
    keys: list[str] = []
    while len(keys) < n:
        k = int(rng.integers(low, high, endpoint=True))
        if k not in seen:
            seen.add(k)
            keys.append(str(k))
    return keys


def generate_passkey_samples(
    tokenizer,
    *,
    context_lengths,
    depths,
    num_samples: int,
    num_digits: int = 5,
    num_shots: int = 0,
    seed: int = 0,
    haystack_dir: str | os.PathLike | None = None,
    haystack: str = "default",
    template: str = "passkey",
) -> list[PromptSample]:
    """``num_samples`` prompts per (context length, depth), with seeded pass keys, distinct per (length, depth).

    Args:
      context_lengths: an int or a list of prompt lengths in tokens.
      depths: a number or a list of depths in percent (0..100).
      num_digits: digits of each pass key (1..18).
      seed: seed of the key generator; the same seed gives the same keys and prompts.
      haystack_dir: a directory of ``*.txt`` files; None uses the built-in haystack ``haystack``
        (``"default"`` or ``"classic"``).
      template: ``"passkey"`` or ``"needle"``.
    Returns:
      Samples ordered by context length, then depth, then index; ids ``gen-{ctx}-{depth}-{i}``.
    """
    context_lengths = [int(c) for c in np.atleast_1d(context_lengths)]
    depths = [float(d) for d in np.atleast_1d(depths)]
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: ask for at least one sample per depth.")
    for d in depths:
        if not 0 <= d <= 100:
            raise ValueError(f"depth {d} is outside [0, 100]: depths are percentages of the haystack.")
    _template_pieces(template, num_shots)  # validate before the (cheap) key draw
    hay = tokenize_haystack(tokenizer, load_haystack(haystack_dir, kind=haystack))
    samples = []
    for ctx in context_lengths:
        for d in depths:
            # One generator per (seed, length, depth), drawn in sample order: the key of gen-{ctx}-{d}-{i} does
            # not change when num_samples, the depth list or the length list change (so runs can resume and
            # extend each other). Keys are distinct within a (length, depth).
            rng = np.random.default_rng([int(seed), ctx, int(round(d * 1000))])
            keys = iter(draw_passkeys(num_samples, num_digits, rng))
            for i in range(num_samples):
                samples.append(
                    _build(
                        tokenizer,
                        hay,
                        context_length=ctx,
                        depth_percent=d,
                        passkey=next(keys),
                        num_shots=num_shots,
                        template=template,
                        sample_id=f"gen-{ctx}-{d:g}-{i}",
                    )
                )
    return samples
