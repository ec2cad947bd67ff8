"""Training data built in token space: synthetic passkey batches and packed plain text.

Letter legend: B batch (rows), S sequence length, L segment length, D digits of a pass key, P prefix
tokens, N needle tokens, Q question tokens.

A passkey row is the evaluation prompt of ``infini_jax.data.prompts`` (template "passkey", no shots)
followed by the answer, so that training and evaluation see the same wording::

    [BOS] intro " \\n Passage: " hay[:p] ". The pass key is K. Remember it. K is the pass key. " hay[p:]
    ". What is the pass key? The pass key is " K

Every piece is tokenised once, when the :class:`PasskeyBatcher` is built; a batch is then assembled with
vectorised numpy indexing (no tokenizer call in the training loop). Keys are written digit by digit (one
token per digit, which is exact for byte-level and digit-splitting tokenizers). The needle goes after the
last sentence-ending token before its sampled position, as in the evaluation prompts.

Besides ``input_ids`` a batch carries the per-token memory ``write_weight`` ("virtual length": the
write of every haystack token counts r times, r ~ logUniform[1, r_max], r = 1 with probability
``prob_r_one``, as in a prompt with an r times longer haystack; the intro, needle, question and answer
keep weight 1. ``virtual_length_scope="non_needle"`` is the recipe's variant, where every token but the
needle's counts r times) and loss masks aligned with the logits (position t predicts
token t + 1): ``lm_mask``, ``answer_mask`` (the D answer digits) and ``copy_mask`` (the needle's second
copy of the key). ``far`` marks rows whose whole needle lies before the final segment (only the memory
can answer them).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

from infini_jax.data.haystack import CLASSIC_HAYSTACK, DEFAULT_HAYSTACK, load_haystack
from infini_jax.data.prompts import (
    PASSKEY_INTRO,
    PASSKEY_NEEDLE,
    PASSKEY_PASSAGE,
    PASSKEY_QUESTION,
    leading_special_ids,
    needle_position,
    tokenize_haystack,
)

VIRTUAL_LENGTH_SCOPES = ("haystack", "non_needle")
BATCH_KEYS = ("input_ids", "write_weight", "lm_mask", "answer_mask", "copy_mask", "far", "is_passkey")

# ----------------------------------------------------------------------------- varied haystack text
_NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Keiko", "Luis",
          "Maya", "Nils", "Olga", "Pedro", "Rosa", "Samir", "Tara", "Victor")
_PLACES = ("market", "library", "harbour", "station", "bakery", "museum", "garden", "school", "bridge", "farm",
           "workshop", "hotel", "village", "river bank", "hospital", "theatre")
_THINGS = ("apples", "books", "chairs", "letters", "boxes", "candles", "bottles", "stones", "tickets", "plates",
           "coins", "lamps", "baskets", "maps", "shirts", "pencils")
_ADJS = ("old", "quiet", "busy", "small", "bright", "cold", "narrow", "famous", "empty", "green")
_TEMPLATES = (
    "{name} bought {n} {thing} at the {place}.",
    "The {adj} {place} opened {n} years ago.",
    "There were {n} {thing} on the table near the {place}.",
    "{name} walked {n} minutes to reach the {adj} {place}.",
    "At the {place}, {name} counted {n} {thing} before lunch.",
    "The {place} keeps {n} {thing} in a {adj} room.",
    "{name} and {name2} talked about the {adj} {place} for a while.",
    "Room {n} of the {place} was painted last spring.",
    "It rained for {n} hours, so the {place} stayed {adj}.",
    "{name} wrote {n} letters to a friend who lives near the {place}.",
    "Bus number {n} stops in front of the {adj} {place}.",
    "Nobody knew why the {place} needed {n} new {thing}.",
)


def generated_haystack(seed: int, num_sentences: int = 2000) -> str:
    """Varied sentences from templates, with 1-3 digit numbers as distractors (never "pass key").

    Training uses one seed, the evaluation another (held-out text of the same style).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_sentences):
        t = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        name, name2 = rng.choice(_NAMES, 2, replace=False)
        digits = int(rng.integers(1, 4))
        n = int(rng.integers(10 ** (digits - 1), 10**digits))
        out.append(t.format(name=name, name2=name2, n=n, thing=rng.choice(_THINGS), place=rng.choice(_PLACES),
                            adj=rng.choice(_ADJS)))
        out.append("\n" if i % 7 == 6 else " ")
    return "".join(out)


def haystack_text(kind: str, seed: int = 0, num_sentences: int = 2000) -> str:
    """Text of a named haystack: "classic", "default" (prose), "generated" (templated, ``seed``) or a
    directory of ``*.txt`` files."""
    if kind == "classic":
        return CLASSIC_HAYSTACK
    if kind == "default":
        return DEFAULT_HAYSTACK
    if kind == "generated":
        return generated_haystack(seed, num_sentences)
    if os.path.isdir(kind):
        return load_haystack(kind)
    raise ValueError(f"Unknown haystack {kind!r}: use 'classic', 'default', 'generated' or a directory of *.txt "
                     "files.")


# ----------------------------------------------------------------------------- passkey batches
def _encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)


@dataclasses.dataclass(frozen=True)
class _Source:
    """A haystack tokenised once: ``ids`` [T] and ``ends`` [T] (the token ends a sentence)."""

    name: str
    ids: np.ndarray
    ends: np.ndarray

    @classmethod
    def build(cls, name: str, tokenizer, text: str) -> _Source:
        hay = tokenize_haystack(tokenizer, text)
        return cls(name, hay.ids.astype(np.int32), hay.ends_sentence.astype(bool))

    @property
    def length(self) -> int:
        return len(self.ids)

    def tiled(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The text repeated end to end to at least ``n`` tokens: ids, ends and ``snap`` (see ``_snap``)."""
        reps = max(1, -(-n // self.length))
        ends = np.tile(self.ends, reps)
        return np.tile(self.ids, reps), ends, _snap(ends)


def _snap(ends: np.ndarray) -> np.ndarray:
    """snap[i] for i in 0..len(ends): 1 + the largest j < i with ends[j] (just after the last sentence end
    before position i), or 0."""
    idx = np.where(ends, np.arange(len(ends)) + 1, 0)
    return np.concatenate([[0], np.maximum.accumulate(idx)]).astype(np.int64)


class PasskeyBatcher:
    """Builds passkey rows in token space (see the module docstring).

    Args:
      tokenizer: a Hugging Face tokenizer; each digit must be a single token.
      segment_length: the model's L (decides which needles are "far": before the final segment).
      num_digits: D, digits of a pass key (the first is never 0).
      haystacks: {name: text}; ``haystack_weights`` {name: probability} picks one per row.
    """

    def __init__(self, tokenizer, *, segment_length: int, num_digits: int = 5,
                 haystacks: dict[str, str] | None = None, haystack_weights: dict[str, float] | None = None):
        if not 1 <= num_digits <= 18:
            raise ValueError(f"num_digits={num_digits} is outside 1..18.")
        self.segment_length = int(segment_length)
        self.num_digits = int(num_digits)
        haystacks = haystacks or {"classic": CLASSIC_HAYSTACK, "default": DEFAULT_HAYSTACK}
        self.sources = [_Source.build(k, tokenizer, v) for k, v in haystacks.items()]
        weights = haystack_weights or {k: 1.0 for k in haystacks}
        w = np.asarray([float(weights.get(s.name, 0.0)) for s in self.sources])
        if w.sum() <= 0 or (w < 0).any():
            raise ValueError(f"haystack_weights {weights} must be >= 0 with a positive sum over {list(haystacks)}.")
        self.weights = w / w.sum()
        self.prefix = np.concatenate([np.asarray(leading_special_ids(tokenizer), np.int32),
                                      _encode(tokenizer, PASSKEY_INTRO + PASSKEY_PASSAGE)])
        self.needle_parts = [_encode(tokenizer, p) for p in PASSKEY_NEEDLE.split("{key}")]
        self.question = _encode(tokenizer, PASSKEY_QUESTION)
        self.period = _encode(tokenizer, ".")
        digits = [_encode(tokenizer, str(d)) for d in range(10)]
        if any(len(d) != 1 for d in digits):
            raise ValueError("Passkey training data writes keys digit by digit and needs a tokenizer that encodes "
                             f"each digit as one token; this one gives {[d.tolist() for d in digits]}.")
        self.digit_ids = np.concatenate(digits)
        a, b, c = (len(p) for p in self.needle_parts)
        self.needle_len = a + b + c + 2 * self.num_digits
        self.copy_offset = a + self.num_digits + b  # second copy of the key, from the needle's start
        self._table_tokens = -1  # haystack tokens _table was built for (-1: none yet)
        self._table: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ sizes
    def fixed_tokens(self, with_answer: bool = True) -> int:
        """Tokens of a row that are not haystack."""
        n = len(self.prefix) + self.needle_len + len(self.question)
        return n + (self.num_digits if with_answer else 0)

    def haystack_tokens(self, seq_len: int, with_answer: bool = True) -> int:
        n = int(seq_len) - self.fixed_tokens(with_answer)
        if n < 0:
            raise ValueError(f"seq_len={seq_len} is too short for a passkey row: the template, needle and question "
                             f"take {self.fixed_tokens(with_answer)} tokens. Use a longer stage seq_len.")
        return n

    def _stacked(self, n_hay: int) -> tuple[np.ndarray, np.ndarray]:
        """ids [sources, W] and snap [sources, W + 1] of every haystack tiled to >= n_hay + its length
        tokens (so that any start offset within the first copy has n_hay tokens after it).

        One table is kept: built for one segment more than asked, and reused for any length from two segments
        below its own up to it. A stage's rows end up to a segment short of its length (``sample``'s answer
        shift, a new length every batch), and a table built for more haystack tokens gives the same rows (no
        index reaches past n_hay + the text's length, and ``_snap`` at a position depends only on the ends
        before it). A length further below rebuilds it, so that a long evaluation's table is not kept for
        short rows."""
        if not n_hay <= self._table_tokens <= n_hay + 2 * self.segment_length:
            self._table_tokens = n_hay + self.segment_length
            self._table = self._build_table(self._table_tokens)
        return self._table

    def _build_table(self, n_hay: int) -> tuple[np.ndarray, np.ndarray]:
        """``_stacked``'s table for exactly ``n_hay`` haystack tokens."""
        tiled = [src.tiled(n_hay + src.length) for src in self.sources]
        width = max(len(t[0]) for t in tiled)
        ids = np.stack([np.pad(t[0], (0, width - len(t[0]))) for t in tiled])
        snap = np.stack([np.pad(t[2], (0, width + 1 - len(t[2])), mode="edge") for t in tiled])
        return ids, snap

    # ------------------------------------------------------------------ assembly
    def draw_keys(self, rng: np.random.Generator, n: int, repeated_digit_share: float = 0.0,
                  repeated_digit_span: str = "adjacent") -> np.ndarray:
        """[n, D] digits, uniform over [10**(D-1), 10**D - 1].

        ``repeated_digit_share``: the fraction of keys in which one digit (uniform over positions 1..D-1)
        is replaced by its predecessor, so that the key holds a pair of equal adjacent digits (55996). Uniform
        keys already hold one 1 - 0.9**(D-1) of the time (34% for 5 digits). 0 draws nothing extra from
        ``rng`` (the keys and the rest of the data stream are those of a run without the option).
        ``repeated_digit_span``: which earlier digit is copied: "adjacent" (the predecessor, above); "apart" (one at
        least two places back: the key repeats a digit apart, 57074); "any" (uniform over the digits before the
        copied one, which favours neighbours: for 5 digits 73% of these keys hold an adjacent pair).
        With "apart" and "any" the copy is never the last digit, so both occurrences of the repeated digit are
        followed by a digit, in general two different ones (57074: 7 -> 0 and 7 -> 4): the keys whose digit
        order the failing runs of the ninth session lost, while a pair at the end (12344) is not such a key.
        """
        first = rng.integers(1, 10, size=(n, 1))
        rest = rng.integers(0, 10, size=(n, self.num_digits - 1))
        digits = np.concatenate([first, rest], axis=1).astype(np.int32)
        check_repeated_digit_share(repeated_digit_share, self.num_digits)
        check_repeated_digit_span(repeated_digit_span, self.num_digits, repeated_digit_share)
        if repeated_digit_share > 0:
            rows = np.flatnonzero(rng.random(n) < repeated_digit_share)
            if repeated_digit_span == "adjacent":
                at = rng.integers(1, self.num_digits, size=len(rows))  # digit `at` copies digit `at - 1`
                src = at - 1
            else:  # `at` in lowest..D-2 copies a digit uniform over 0..at-lowest (at-1 for "any", at-2 "apart")
                lowest = 2 if repeated_digit_span == "apart" else 1
                at = rng.integers(lowest, self.num_digits - 1, size=len(rows))
                src = (rng.random(len(rows)) * (at - lowest + 1)).astype(np.int64)
            digits[rows, at] = digits[rows, src]
        return digits

    def assemble(self, digits: np.ndarray, source: np.ndarray, offset: np.ndarray, pos_raw: np.ndarray,
                 seq_len: int, *, with_answer: bool = True) -> dict[str, np.ndarray]:
        """Rows for given keys [B, D], haystack index [B], haystack start offset [B] and requested needle
        position [B] (in haystack tokens, snapped back to a sentence end; ``pos_raw == n_hay`` is the very
        end). Returns ``input_ids`` [B, S] and ``needle_start`` [B] (index of the needle's first token)."""
        b = len(digits)
        s = int(seq_len)
        n_hay = self.haystack_tokens(s, with_answer)
        p, nn = len(self.prefix), self.needle_len
        key_ids = self.digit_ids[digits]  # [B, D]
        a, m, c = self.needle_parts
        needle = np.concatenate([np.broadcast_to(a, (b, len(a))), key_ids, np.broadcast_to(m, (b, len(m))),
                                 key_ids, np.broadcast_to(c, (b, len(c)))], axis=1)
        ids_2d, _ = self._stacked(n_hay)  # one fancy-index gather for all rows and sources
        width = ids_2d.shape[1]
        pos = self.snapped_positions(source, offset, pos_raw, n_hay)

        rel = np.arange(n_hay + nn)[None, :]  # position inside the haystack+needle region
        in_needle = (rel >= pos[:, None]) & (rel < pos[:, None] + nn)
        hay_index = offset[:, None] + np.where(rel < pos[:, None], rel, rel - nn)
        hay_index = np.clip(hay_index, 0, width - 1)
        hay = ids_2d[source[:, None], hay_index]
        needle_tok = np.take_along_axis(needle, np.clip(rel - pos[:, None], 0, nn - 1), axis=1)
        middle = np.where(in_needle, needle_tok, hay)
        parts = [np.broadcast_to(self.prefix, (b, p)), middle, np.broadcast_to(self.question, (b, len(self.question)))]
        if with_answer:
            parts.append(key_ids)
        ids = np.concatenate(parts, axis=1).astype(np.int32)
        assert ids.shape == (b, s), (ids.shape, s)
        return {"input_ids": ids, "needle_start": (p + pos).astype(np.int64)}

    def snapped_positions(self, source: np.ndarray, offset: np.ndarray, pos_raw: np.ndarray, n_hay: int) -> np.ndarray:
        """Haystack tokens before the needle for requested positions ``pos_raw`` (any shape, rows on axis 0):
        snapped back to the last sentence end of the row's haystack; ``pos_raw >= n_hay`` is the very end."""
        snap_2d = self._stacked(n_hay)[1]
        expand = (slice(None),) + (None,) * (np.ndim(pos_raw) - 1)
        source, offset = np.asarray(source)[expand], np.asarray(offset)[expand]
        pos_raw = np.minimum(pos_raw, n_hay)
        last_end = snap_2d[source, offset + pos_raw]  # absolute index just after the last '.' before it
        pos = np.where(last_end > offset, last_end - offset, 0)
        return np.where(pos_raw >= n_hay, n_hay, pos)

    def key_copy_offsets(self, needle_start) -> tuple[np.ndarray, np.ndarray]:
        """Offsets inside their segments of the first digit of the key's two copies, for needles at
        ``needle_start`` (any shape)."""
        start, seg = np.asarray(needle_start), self.segment_length
        return (start + len(self.needle_parts[0])) % seg, (start + self.copy_offset) % seg

    def needle_near_boundary(self, needle_start, window: int) -> np.ndarray:
        """Whether a segment boundary falls within ``window`` tokens of one of the key's two copies in needles at
        ``needle_start`` (before, inside or after it; ``key_copy_near_boundary``). Same shape as the input."""
        first, second = self.key_copy_offsets(needle_start)
        near = lambda o: key_copy_near_boundary(o, self.num_digits, self.segment_length, window)  # noqa: E731
        return near(first) | near(second)

    def _boundary_needle_positions(self, rng: np.random.Generator, pos_raw: np.ndarray, high: np.ndarray,
                                   source: np.ndarray, offset: np.ndarray, n_hay: int, share: float, window: int,
                                   candidates: int = 256) -> np.ndarray:
        """``pos_raw`` [B] with, for a ``share`` of the rows, a requested position in [0, high] whose snapped
        needle has a segment boundary within ``window`` tokens of a copy of the key (``needle_near_boundary``).
        Rows without such a place among ``candidates`` random draws keep theirs."""
        b = len(pos_raw)
        chosen = rng.random(b) < share
        cand = (rng.random((b, candidates)) * (high[:, None] + 1)).astype(np.int64)  # uniform in [0, high]
        start = len(self.prefix) + self.snapped_positions(source, offset, cand, n_hay)
        hit = self.needle_near_boundary(start, window)
        pick = np.argmax(np.where(hit, rng.random((b, candidates)), -1.0), axis=1)  # a random hit
        found = hit[np.arange(b), pick]
        return np.where(chosen & found, cand[np.arange(b), pick], pos_raw)

    def last_segment_start(self, seq_len: int) -> int:
        return ((int(seq_len) - 1) // self.segment_length) * self.segment_length

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int, *, force_early: float = 0.0,
               virtual_length_max: float = 1.0, prob_r_one: float = 0.1, virtual_length_scope: str = "haystack",
               random_answer_position: bool = False, answer_boundary_share: float = 0.0,
               answer_boundary_digits: tuple[int, ...] = (), key_terminator: bool = False,
               repeated_digit_share: float = 0.0, needle_boundary_share: float = 0.0,
               needle_boundary_window: int = 8, repeated_digit_span: str = "adjacent") -> dict[str, np.ndarray]:
        """A training batch (numpy) with the fields of ``BATCH_KEYS`` plus ``needle_start`` / ``digits``.

        ``random_answer_position``: the prompt + answer end ``t`` tokens before the row's end (one ``t`` per
        batch, uniform in [0, L)), the rest being filler masked out of every loss. Without it the answer always
        sits at the end of a segment and never straddles a segment boundary, while at evaluation a prompt of
        exactly k * L tokens makes the answer start a fresh segment whose local context is empty.
        ``answer_boundary_share``: the probability (per batch) that ``t`` is chosen so that a segment boundary
        falls inside or right before the answer (the hard case of a prompt of exactly k * L tokens).
        ``answer_boundary_digits``: which answer digits (0-based) may open the new segment in those batches
        (default: any). ``(0,)`` is exactly the evaluation of a prompt of k * L tokens: the last prompt token
        ends a segment, so the first generated digit opens the next one.
        ``key_terminator``: the token after the key is "." and is a training target, so that a model stops
        writing digits after the key (strict scoring); it needs ``t >= 1``.
        ``repeated_digit_share`` / ``repeated_digit_span``: oversample keys with a repeated digit, side by side or
        apart (``draw_keys``).
        ``needle_boundary_share``: the fraction of rows whose needle (still at a sentence end) has a segment
        boundary within ``needle_boundary_window`` tokens of one of the key's two copies (before, inside or
        after it), so that the key or its context is cut between two segments (``needle_near_boundary``).
        0 draws nothing extra.
        ``virtual_length_scope``: which tokens' memory writes count r times when ``virtual_length_max > 1``:
        ``"haystack"`` (the filler only: a prompt whose haystack is r times longer) or ``"non_needle"``
        (every token but the needle's, as in ``retrieval_recipe.md``; it also multiplies the intro, the
        question and the answer digits, which a long prompt holds once).
        """
        full = int(seq_len)
        seg, d = self.segment_length, self.num_digits
        check_boundary_digits(answer_boundary_digits, d)
        limit = min(seg + 1, full - self.fixed_tokens())  # t < limit
        shift = 0
        if random_answer_position or answer_boundary_share > 0 or key_terminator:
            shift = int(rng.integers(1 if key_terminator else 0, max(2, limit)))
            if rng.random() < answer_boundary_share:
                j = int(rng.choice(answer_boundary_digits)) if answer_boundary_digits else int(rng.integers(0, d))
                boundary_shift = (full - d + j) % seg  # (answer start + j) % L == 0
                if key_terminator and boundary_shift == 0:
                    boundary_shift = seg
                if boundary_shift < limit:
                    shift = boundary_shift
        shift = min(shift, max(0, limit - 1))
        out = self._sample(rng, batch_size, full - shift, force_early=force_early,
                           virtual_length_max=virtual_length_max, prob_r_one=prob_r_one,
                           virtual_length_scope=virtual_length_scope, repeated_digit_share=repeated_digit_share,
                           repeated_digit_span=repeated_digit_span,
                           needle_boundary_share=needle_boundary_share, needle_boundary_window=needle_boundary_window)
        if shift:
            b = int(batch_size)
            tail = np.concatenate([self.period, self.question]) if key_terminator else self.question
            tail_ids = np.resize(tail, shift)[None].repeat(b, axis=0).astype(np.int32)
            pad = lambda x, v: np.concatenate([x, np.full((b, shift), v, x.dtype)], axis=1)
            out["input_ids"] = np.concatenate([out["input_ids"], tail_ids], axis=1)
            out["write_weight"] = pad(out["write_weight"], 1.0)
            # The last answer digit now predicts the first tail token: not a training target.
            out["lm_mask"][:, -1] = 0
            out["lm_mask"] = pad(out["lm_mask"], 0.0)
            out["answer_mask"] = pad(out["answer_mask"], 0.0)
            out["copy_mask"] = pad(out["copy_mask"], 0.0)
            if key_terminator:  # the last digit predicts the "." after the key
                last_digit = full - shift - 1
                out["answer_mask"][:, last_digit] = 1
                out["lm_mask"][:, last_digit] = 1
        return out

    def _sample(self, rng: np.random.Generator, batch_size: int, seq_len: int, *, force_early: float = 0.0,
                virtual_length_max: float = 1.0, prob_r_one: float = 0.1,
                virtual_length_scope: str = "haystack", repeated_digit_share: float = 0.0,
                needle_boundary_share: float = 0.0, needle_boundary_window: int = 8,
                repeated_digit_span: str = "adjacent") -> dict[str, np.ndarray]:
        check_virtual_length_scope(virtual_length_scope)
        check_share("needle_boundary_share", needle_boundary_share)
        check_boundary_window(needle_boundary_window, self.segment_length)
        b, s = int(batch_size), int(seq_len)
        n_hay = self.haystack_tokens(s)
        digits = self.draw_keys(rng, b, repeated_digit_share, repeated_digit_span)
        source = rng.choice(len(self.sources), size=b, p=self.weights)
        lengths = np.asarray([src.length for src in self.sources])[source]
        raw_offset = (rng.random(b) * lengths).astype(np.int64)
        offset = self._stacked(n_hay)[1][source, raw_offset]  # start the haystack at a sentence start
        # Needle position: uniform depth, or (with probability force_early) anywhere that ends before the
        # final segment, when the layout allows it.
        pos_raw = rng.integers(0, n_hay + 1, size=b)
        high = np.full(b, n_hay, np.int64)  # the largest position a row may request
        early_max = self.last_segment_start(s) - len(self.prefix) - self.needle_len
        if early_max >= 0:
            early = rng.random(b) < force_early
            pos_raw = np.where(early, rng.integers(0, early_max + 1, size=b), pos_raw)
            high = np.where(early, early_max, high)
        if needle_boundary_share > 0:
            pos_raw = self._boundary_needle_positions(rng, pos_raw, high, source, offset, n_hay, needle_boundary_share,
                                                      needle_boundary_window)
        out = self.assemble(digits, source, offset, pos_raw, s)
        start = out["needle_start"]
        t = np.arange(s)[None, :]
        needle_mask = (t >= start[:, None]) & (t < start[:, None] + self.needle_len)
        weight = np.ones((b, s), np.float32)
        if virtual_length_max > 1:
            r = np.exp(rng.random(b) * np.log(virtual_length_max))
            r = np.where(rng.random(b) < prob_r_one, 1.0, r).astype(np.float32)
            scaled = ~needle_mask
            if virtual_length_scope == "haystack":  # not the intro before it, nor the question and answer after
                scaled &= (t >= len(self.prefix)) & (t < s - len(self.question) - self.num_digits)
            weight = np.where(scaled, r[:, None], np.float32(1)).astype(np.float32)
        d = self.num_digits
        lm_mask = np.ones((b, s), np.float32)
        lm_mask[:, -1] = 0
        answer_mask = np.zeros((b, s), np.float32)
        answer_mask[:, s - d - 1 : s - 1] = 1
        copy_first = start + self.copy_offset  # the second copy's first digit; predicted one position earlier
        copy_mask = ((t >= copy_first[:, None] - 1) & (t < copy_first[:, None] - 1 + d)).astype(np.float32)
        far = (start + self.needle_len <= self.last_segment_start(s)).astype(np.float32)
        return {"input_ids": out["input_ids"], "write_weight": weight, "lm_mask": lm_mask,
                "answer_mask": answer_mask, "copy_mask": copy_mask, "far": far, "is_passkey": np.ones(b, np.float32),
                "needle_start": start, "digits": digits, "source": source}

    def eval_prompts(self, keys: list[str], context_length: int, depth_percent: float,
                     source: int) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation prompts of exactly ``context_length`` tokens without the answer, the haystack starting
        at its first token and the needle placed as ``infini_jax.data.prompts`` places it. Returns ids [B, S]
        and the needle's first token index [B]."""
        digits = np.asarray([[int(ch) for ch in k] for k in keys], np.int32)
        if digits.shape[1] != self.num_digits:
            raise ValueError(f"Keys {keys} do not have {self.num_digits} digits.")
        n_hay = self.haystack_tokens(context_length, with_answer=False)
        pos = needle_position(self.sources[source].tiled(n_hay)[1][:n_hay], depth_percent)
        b = len(keys)
        out = self.assemble(digits, np.full(b, source), np.zeros(b, np.int64), np.full(b, pos), context_length,
                            with_answer=False)
        return out["input_ids"], out["needle_start"]


def check_boundary_digits(digits, num_digits: int) -> tuple[int, ...]:
    """``answer_boundary_digits`` as a tuple of ints, each a 0-based index of the key's digits."""
    digits = tuple(int(j) for j in (digits or ()))
    if any(not 0 <= j < num_digits for j in digits):
        raise ValueError(f"data.answer_boundary_digits {digits} must lie in [0, {num_digits}) (0-based indices "
                         "of the key's digits).")
    return digits


def check_share(name: str, share: float) -> float:
    """A ``data.*_share`` option must be a fraction in [0, 1]."""
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"data.{name}={share} must lie in [0, 1] (a fraction of the rows; 0 = off).")
    return share


def key_copy_near_boundary(offset, num_digits: int, segment_length: int, window: int) -> np.ndarray:
    """Whether a copy of the key whose first digit sits at ``offset`` inside its segment starts fewer than
    ``window`` tokens after a segment boundary, or ends fewer than ``window`` tokens before one, or crosses one.
    ``window=0``: crossing only."""
    offset = np.asarray(offset)
    return (offset < window) | (offset + num_digits > segment_length - window)


def check_boundary_window(window: int, segment_length: int) -> int:
    """``data.needle_boundary_window`` must be a token count in [0, segment_length / 2)."""
    if int(window) != window or not 0 <= window < segment_length / 2:
        raise ValueError(f"data.needle_boundary_window={window} must be a whole number of tokens in "
                         f"[0, {segment_length // 2}) (segments of {segment_length}).")
    return int(window)


KEY_DIGIT_PATTERNS = ("distinct", "adjacent_pair", "repeated_apart")


def key_digit_pattern(key: str) -> str:
    """How a key's digits repeat: "adjacent_pair" (two equal neighbours, 55996), "repeated_apart" (a digit
    repeated, never next to itself: 57074) or "distinct" (48213). Models that retrieve the digits but not their
    order fail the repeating kinds (docs/training.md, ninth session)."""
    if any(a == b for a, b in zip(key, key[1:], strict=False)):
        return "adjacent_pair"
    return "repeated_apart" if len(set(key)) < len(key) else "distinct"


def check_repeated_digit_share(share: float, num_digits: int) -> float:
    """``data.repeated_digit_share`` must be a fraction, and a key needs two digits to repeat one."""
    share = check_share("repeated_digit_share", share)
    if share > 0 and num_digits < 2:
        raise ValueError(f"data.repeated_digit_share={share} needs keys of >= 2 digits (num_digits={num_digits}).")
    return share


REPEATED_DIGIT_SPANS = ("adjacent", "apart", "any")


def check_repeated_digit_span(span: str, num_digits: int, share: float) -> str:
    """``data.repeated_digit_span``: which earlier digit an oversampled key repeats; with a ``share`` above 0 the
    keys must be long enough for it."""
    if span not in REPEATED_DIGIT_SPANS:
        raise ValueError(f"data.repeated_digit_span={span!r}: use 'adjacent' (the digit before, 55996), 'apart' (one "
                         "at least two places back, 57074) or 'any' (any earlier digit).")
    if not share:
        return span
    least = {"adjacent": 2, "any": 3, "apart": 4}[span]  # "any" / "apart" copy into digits 1..D-2 / 2..D-2
    if num_digits < least:
        raise ValueError(f"data.repeated_digit_span={span!r} needs keys of >= {least} digits "
                         f"(num_digits={num_digits}).")
    return span


def check_virtual_length_scope(scope: str) -> str:
    """``data.virtual_length_scope``: one of ``VIRTUAL_LENGTH_SCOPES``."""
    if scope not in VIRTUAL_LENGTH_SCOPES:
        raise ValueError(f"data.virtual_length_scope={scope!r}: use one of {VIRTUAL_LENGTH_SCOPES}.")
    return scope


# ----------------------------------------------------------------------------- plain text
BUILTIN_TEXT = "haystack:"


def text_files(spec: str) -> list[str]:
    """``*.txt`` files named by a comma-separated list of files, directories (all ``*.txt`` inside,
    recursively) and glob patterns; ``haystack:<kind>`` entries (a built-in text, see ``haystack_text``)
    are kept as they are."""
    paths: list[str] = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        if part.startswith(BUILTIN_TEXT):
            paths.append(part)
        elif os.path.isdir(part):
            paths += sorted(glob.glob(os.path.join(part, "**", "*.txt"), recursive=True))
        elif any(ch in part for ch in "*?["):
            paths += sorted(glob.glob(part, recursive=True))
        elif os.path.isfile(part):
            paths.append(part)
        else:
            raise ValueError(f"Text data {part!r} is neither a file, a directory nor a glob pattern that matches.")
    if not paths:
        raise ValueError(f"No .txt files found for data.text_files={spec!r}.")
    return paths


class TextStream:
    """Plain-text documents tokenised once into one token stream (``[BOS] doc [EOS]`` each), cut into
    windows of ``seq_len`` at random offsets (packing: a window can span documents).

    The token stream is cached as ``cache_path`` (``.npy``) so a resumed run does not re-tokenise.
    """

    def __init__(self, tokenizer, paths: list[str], *, cache_path: str | None = None, chunk_chars: int = 1 << 20):
        signature = json.dumps({"paths": [(p, os.path.getsize(p), os.path.getmtime(p)) if os.path.isfile(p) else p
                                           for p in paths],
                                "tokenizer": getattr(tokenizer, "name_or_path", ""), "vocab": len(tokenizer)})
        sig_path = f"{cache_path}.json" if cache_path else None
        if (cache_path and os.path.isfile(cache_path) and os.path.isfile(sig_path)
                and open(sig_path, encoding="utf-8").read() == signature):
            self.tokens = np.load(cache_path)  # same files, same tokenizer: the cached token stream
        else:
            bos = leading_special_ids(tokenizer)
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            pieces = []
            for path in paths:
                if path.startswith(BUILTIN_TEXT):
                    text = haystack_text(path[len(BUILTIN_TEXT):])
                else:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        text = f.read()
                if not text.strip():
                    continue
                ids = [] + bos
                for i in range(0, len(text), chunk_chars):  # bounded tokenizer calls for huge files
                    ids += tokenizer(text[i : i + chunk_chars], add_special_tokens=False)["input_ids"]
                pieces.append(np.asarray(ids + eos, np.int32))
            if not pieces:
                raise ValueError(f"The text files {paths[:5]}... are empty.")
            self.tokens = np.concatenate(pieces)
            if cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
                np.save(cache_path, self.tokens)
                with open(sig_path, "w", encoding="utf-8") as f:
                    f.write(signature)

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        n = len(self.tokens)
        if n < seq_len:
            reps = -(-seq_len // n) + 1
            self.tokens = np.tile(self.tokens, reps)
            n = len(self.tokens)
        starts = rng.integers(0, n - seq_len + 1, size=batch_size)
        ids = self.tokens[starts[:, None] + np.arange(seq_len)[None, :]]
        b = batch_size
        lm_mask = np.ones((b, seq_len), np.float32)
        lm_mask[:, -1] = 0
        zeros = np.zeros((b, seq_len), np.float32)
        return {"input_ids": ids.astype(np.int32), "write_weight": np.ones((b, seq_len), np.float32),
                "lm_mask": lm_mask, "answer_mask": zeros, "copy_mask": zeros.copy(), "far": np.zeros(b, np.float32),
                "is_passkey": np.zeros(b, np.float32)}


def concat_batches(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of batches (the fields of ``BATCH_KEYS``)."""
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in BATCH_KEYS}
