"""Greedy decoding that carries the Infini-Attention state: prefill once, then one token per step.

nanotron's eval re-runs the whole prompt + generated tokens for every new token (memory rebuilt from
token 0, segments re-split, RoPE restarting per segment). The cache here (compressive memory + current
segment) makes each step O(segment) instead of O(prompt) while producing the same tokens; tests check
every step's logits against the full forward.

* Prompts of different lengths share a batch: right-padded, each segmented from its own first token.
* One compiled function per (batch, bucket) runs prefill and the whole decode loop (``lax.scan``), so no
  Python round trip happens per token. Prompt lengths are bucketed (at most ~12.5% padding), so a
  dataset compiles a handful of times, not once per sample.
* Long prompts stream through the model ``prefill_chunk_tokens`` at a time (constant device memory).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax.model import InfiniLlama


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 15
    batch_size: int = 8
    eos_token_id: int | None = None
    stop_at_eos: bool = False  # nanotron never stops early: exactly max_new_tokens tokens
    prefill_chunk_tokens: int | None = None  # stream prompts longer than this (multiple of segment_length)
    pad_token_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.stop_at_eos and self.eos_token_id is None:
            raise ValueError("stop_at_eos=True needs eos_token_id.")


def bucket_length(n: int, segment_length: int, chunk: int | None = None) -> int:
    """Padded length for a prompt of n tokens: whole segments, rounded up so that the number of distinct
    lengths grows logarithmically (<= 12.5% waste), and a multiple of ``chunk`` when streaming."""
    segs = -(-n // segment_length)
    granularity = 2 ** max(0, int(math.floor(math.log2(segs))) - 3)  # segs in [2^k, 2^k+1): step 2^(k-3)
    padded = -(-segs // granularity) * granularity * segment_length
    if chunk and padded > chunk:
        padded = -(-padded // chunk) * chunk
    return padded


class Generator:
    """Compiled greedy generation for one model. ``generate(prompts)`` returns the new token ids."""

    def __init__(self, model: InfiniLlama, config: GenerationConfig = GenerationConfig(), mesh=None,
                 rules=None):
        """``mesh`` (``infini_jax.sharding.make_mesh``): batch rows split over its "data" axis (batch_size must
        be a multiple of dp), weights kept in (or moved into) their shards over "model"; same tokens."""
        self.cfg = model.cfg
        self.config = config
        self.mesh = mesh
        seg = self.cfg.segment_length
        if config.prefill_chunk_tokens is not None and config.prefill_chunk_tokens % seg:
            raise ValueError(f"prefill_chunk_tokens {config.prefill_chunk_tokens} must be a multiple of "
                             f"segment_length {seg}.")
        self.graphdef, self.state = nnx.split(model)
        self._cache_shardings = None
        out_shardings = None
        if mesh is not None:
            from infini_jax import sharding

            sharding.validate_mesh(self.cfg, mesh, batch=config.batch_size)
            self.state = jax.device_put(self.state, sharding.state_shardings(model, mesh, rules))
            self._cache_shardings = sharding.cache_shardings(self.cfg, config.batch_size, mesh, rules)
            self._data_sharding = sharding.data_sharding(mesh)
            out_shardings = sharding.replicated(mesh)  # every process can read the tokens
        self._compiled = jax.jit(self._run, static_argnames=("chunk_segments",), out_shardings=out_shardings)

    def _constrain(self, cache):
        if self._cache_shardings is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, self._cache_shardings)

    def _run(self, state, ids, lengths, *, chunk_segments):
        model = nnx.merge(self.graphdef, state)
        cfgn = self.config
        logits, cache = model.prefill(ids, lengths, chunk_segments=chunk_segments)
        cache = self._constrain(cache)
        first = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # first index wins on ties, like torch
        eos = -1 if cfgn.eos_token_id is None else cfgn.eos_token_id

        def step(carry, _):
            tok, cache, done = carry
            logits, cache = model.decode_step(tok, cache)
            cache = self._constrain(cache)
            done = done | (tok == eos) if cfgn.stop_at_eos else done
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            nxt = jnp.where(done, jnp.int32(max(eos, 0)), nxt)
            return (nxt, cache, done), nxt

        done0 = jnp.zeros(first.shape, bool)
        _, rest = jax.lax.scan(step, (first, cache, done0), None, length=cfgn.max_new_tokens - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    def _padded_batch(self, prompts: Sequence[Sequence[int]]):
        seg, cfgn = self.cfg.segment_length, self.config
        longest = max(len(p) for p in prompts)
        padded = bucket_length(longest, seg, cfgn.prefill_chunk_tokens)
        chunk_segments = None
        if cfgn.prefill_chunk_tokens and padded > cfgn.prefill_chunk_tokens:
            chunk_segments = cfgn.prefill_chunk_tokens // seg
        rows = cfgn.batch_size
        ids = np.full((rows, padded), cfgn.pad_token_id, np.int32)
        lengths = np.ones((rows,), np.int32)  # filler rows: one pad token
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = p
            lengths[r] = len(p)
        return ids, lengths, chunk_segments

    def generate_batch(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """At most ``batch_size`` prompts (lists of token ids) -> their new tokens."""
        if not prompts:
            return []
        if len(prompts) > self.config.batch_size:
            raise ValueError(f"{len(prompts)} prompts exceed batch_size {self.config.batch_size}.")
        vocab = self.cfg.vocab_size
        prompts = [np.asarray(p, dtype=np.int64) for p in prompts]  # one C conversion, vectorised checks
        for p in prompts:
            if len(p) == 0:
                raise ValueError("Empty prompt: every prompt needs at least one token.")
            bad = p[(p >= vocab) | (p < 0)]
            if bad.size:
                raise ValueError(f"Prompt token id {int(bad[0])} outside the model's vocabulary of {vocab}: "
                                 "the tokenizer does not match the checkpoint.")
        ids, lengths, chunk_segments = self._padded_batch(prompts)
        if self.mesh is None:
            out = self._compiled(self.state, jnp.asarray(ids), jnp.asarray(lengths), chunk_segments=chunk_segments)
        else:
            from infini_jax.sharding import put

            with jax.set_mesh(self.mesh):  # activates sharding.constrain() calls inside the model, if any
                out = self._compiled(self.state, put(ids, self._data_sharding), put(lengths, self._data_sharding),
                                     chunk_segments=chunk_segments)
        out = np.asarray(out)
        results = []
        for r in range(len(prompts)):
            toks = out[r].tolist()
            if self.config.stop_at_eos and self.config.eos_token_id in toks:
                toks = toks[: toks.index(self.config.eos_token_id) + 1]
            results.append(toks)
        return results

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Any number of prompts; batched by similar length, results in the input order."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[int] | None] = [None] * len(prompts)
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            for i, toks in zip(idx, self.generate_batch([prompts[i] for i in idx]), strict=True):
                results[i] = toks
        return results  # type: ignore[return-value]


def generate(model: InfiniLlama, prompts: Sequence[Sequence[int]], max_new_tokens: int = 15,
             **kwargs) -> list[list[int]]:
    """Convenience wrapper: ``Generator(model, GenerationConfig(max_new_tokens, ...)).generate(prompts)``.

    It compiles afresh on every call: for repeated calls keep one :class:`Generator`."""
    kwargs.setdefault("batch_size", min(len(prompts), 8) or 1)
    return Generator(model, GenerationConfig(max_new_tokens=max_new_tokens, **kwargs)).generate(prompts)


def generate_by_recompute(model: InfiniLlama, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """nanotron's strategy (reference 4.1): a full forward over prompt + generated tokens for every new
    token, batch 1. The reference for tests and the slow peer of the benchmarks.

    The sequence is right-padded to a length bucket (few compilations): padding after the last real token
    cannot change the logits before it (causal attention; padding is only ever folded into the memory after
    the real tokens' segments).
    """
    seg = model.cfg.segment_length
    forward = nnx.jit(lambda m, ids, last: m(ids)[0, last])
    seq = list(prompt)
    for _ in range(max_new_tokens):
        padded = np.zeros((1, bucket_length(len(seq), seg)), np.int32)
        padded[0, : len(seq)] = seq
        logits = forward(model, jnp.asarray(padded), jnp.int32(len(seq) - 1))
        seq.append(int(jnp.argmax(logits)))
    return seq[len(prompt):]
