"""The Infini-Attention Llama decoder stack, its cache, and the three ways to run it.

Letter legend: B batch, S sequence, P padded prompt length, L segment length, H hidden, V vocab.

* ``model(input_ids)``: nanotron's forward. Memory reset at token 0, segments of L counted from token
  0 (the last one possibly shorter), fp32 logits for every position.
* ``model.prefill(input_ids, lengths)``: right-padded prompts of different lengths, each segmented from
  its own first token; returns the logits at each row's last real token and a :class:`ModelCache`.
* ``model.decode_step(tokens, cache)``: one token per row, carrying the memory and the current segment.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.attention import InfiniAttention, LayerCache, init_layer_cache
from infini_jax.config import ModelConfig
from infini_jax.layers import MLP, RMSNorm, matmul_precision, pad_rows, param


class ModelCache(NamedTuple):
    """layers: one :class:`LayerCache` per decoder block; positions: [B] int32, each row's next position."""

    layers: tuple[LayerCache, ...]
    positions: jax.Array


def init_cache(cfg: ModelConfig, batch: int) -> ModelCache:
    return ModelCache(
        layers=tuple(init_layer_cache(cfg, batch) for _ in range(cfg.num_layers)),
        positions=jnp.zeros((batch,), jnp.int32),
    )


class DecoderBlock(nnx.Module):
    """Pre-norm block: ``h = x + attn(norm1(x)); y = h + mlp(norm2(h))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, std: float, out_std: float):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.attn = InfiniAttention(cfg, rngs=rngs, std=std, out_std=out_std)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, std=std, out_std=out_std)

    def __call__(self, x, cache: LayerCache, **kw):
        h, cache = self.attn(self.input_layernorm(x), cache, **kw)
        h = (x + h).astype(x.dtype)
        return (h + self.mlp(self.post_attention_layernorm(h))).astype(x.dtype), cache

    def decode(self, x, cache: LayerCache, positions):
        h, cache = self.attn.decode(self.input_layernorm(x), cache, positions)
        h = (x + h).astype(x.dtype)
        return (h + self.mlp(pad_rows(self.post_attention_layernorm(h)))[:, :1]).astype(x.dtype), cache


class InfiniLlama(nnx.Module):
    """Token embedding -> decoder blocks -> final RMSNorm -> lm_head, fp32 logits (padded vocab kept).

    ``init_std`` follows nanotron's ``RandomInit``: N(0, std) for column-parallel weights and the
    embedding, N(0, std / sqrt(2 * num_layers)) for o_proj and down_proj.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, init_std: float = 0.02):
        self.cfg = cfg
        out_std = init_std / math.sqrt(2 * cfg.num_layers)
        v, h, pd = cfg.vocab_size, cfg.hidden_size, cfg.storage_dtype
        normal = nnx.initializers.normal(init_std)
        self.embedding = param(rngs, normal, (v, h), pd, ("vocab", "embed"))
        self.layers = nnx.List(
            [DecoderBlock(cfg, rngs=rngs, std=init_std, out_std=out_std) for _ in range(cfg.num_layers)]
        )
        self.final_norm = RMSNorm(h, cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=pd, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, normal, (v, h), pd, ("vocab", "embed"))

    # ------------------------------------------------------------------ pieces
    def embed(self, input_ids: jax.Array) -> jax.Array:
        """[B, S] int -> [B, S, H] in the compute dtype."""
        return jnp.take(self.embedding[...], input_ids, axis=0).astype(self.cfg.compute_dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., H] -> fp32 logits [..., V]: final norm, lm_head in the compute dtype, then ``.float()``."""
        dt = self.cfg.compute_dtype
        w = self.embedding if self.cfg.tie_word_embeddings else self.lm_head
        out = jnp.einsum("...h,vh->...v", self.final_norm(hidden), w[...].astype(dt),
                         precision=matmul_precision(self.cfg))
        return out.astype(dt).astype(jnp.float32)

    def run_chunk(self, input_ids: jax.Array, cache: ModelCache, *, seg_start, num_tokens: jax.Array,
                  weight: jax.Array | None = None, stop_gradient_between_segments: bool = False):
        """Runs whole segments through every block. input_ids: [B, T] with T a multiple of L;
        num_tokens: [B] each row's total real length (see ``InfiniAttention.__call__``).

        Returns hidden states [B, T, H] (before the final norm) and the updated per-layer caches.
        """
        x = self.embed(input_ids)
        if weight is None:
            weight = jnp.ones(input_ids.shape, jnp.float32)
        new_layers = []
        for block, layer_cache in zip(self.layers, cache.layers, strict=True):
            x, layer_cache = block(x, layer_cache, seg_start=seg_start, num_tokens=num_tokens, weight=weight,
                                   stop_gradient_between_segments=stop_gradient_between_segments)
            new_layers.append(layer_cache)
        return x, tuple(new_layers)

    # ------------------------------------------------------------------ public API
    def __call__(self, input_ids: jax.Array, *, write_weight: jax.Array | None = None,
                 stop_gradient_between_segments: bool = False) -> jax.Array:
        """nanotron's forward. input_ids: [B, S] -> fp32 logits [B, S, V].

        write_weight: optional [B, S] per-token memory write weights (1 = nanotron; 0 = not written).
        """
        return self.logits(self.hidden_states(input_ids, write_weight=write_weight,
                                              stop_gradient_between_segments=stop_gradient_between_segments))

    def hidden_states(self, input_ids: jax.Array, *, write_weight: jax.Array | None = None,
                      stop_gradient_between_segments: bool = False) -> jax.Array:
        """The forward before the final norm and head: input_ids [B, S] -> hidden states [B, S, H], for callers
        that need the logits of a few positions only (``self.logits(hidden[:, positions])``)."""
        b, s = input_ids.shape
        seg = self.cfg.segment_length
        n_seg = -(-s // seg)
        pad = n_seg * seg - s
        ids = jnp.pad(input_ids, ((0, 0), (0, pad)))
        if write_weight is not None:
            write_weight = jnp.pad(write_weight, ((0, 0), (0, pad)))
        hidden, _ = self.run_chunk(
            ids, init_cache(self.cfg, b), seg_start=0, num_tokens=jnp.full((b,), s, jnp.int32),
            weight=write_weight, stop_gradient_between_segments=stop_gradient_between_segments,
        )
        return hidden[:, :s]

    def prefill(self, input_ids: jax.Array, lengths: jax.Array, *,
                chunk_segments: int | None = None) -> tuple[jax.Array, ModelCache]:
        """Prompts right-padded to a multiple of L. input_ids: [B, P]; lengths: [B] (>= 1).

        With ``chunk_segments`` the prompt streams through the model ``chunk_segments * L`` tokens at a
        time (a ``lax.scan`` carrying the per-layer memory): device memory then depends on the chunk, not
        on P (P must be a multiple of the chunk). Only the last real position's hidden state is kept.
        Returns fp32 logits [B, V] at each row's last real token and the cache to decode from.
        """
        b, p = input_ids.shape
        seg = self.cfg.segment_length
        if p % seg:
            raise ValueError(f"prefill needs a padded length that is a multiple of {seg}, got {p}.")
        lengths = lengths.astype(jnp.int32)
        chunk = seg * chunk_segments if chunk_segments else p
        if p % chunk:
            raise ValueError(f"Padded length {p} is not a multiple of the prefill chunk {chunk}.")
        n_chunks = p // chunk
        cache = init_cache(self.cfg, b)
        last_hidden = jnp.zeros((b, self.cfg.hidden_size), self.cfg.compute_dtype)

        def body(carry, xs):
            layers, last_h = carry
            chunk_ids, index = xs
            start = index * chunk
            hidden, layers = self.run_chunk(chunk_ids, ModelCache(layers, lengths),
                                            seg_start=index * chunk_segments if chunk_segments else 0,
                                            num_tokens=lengths)
            local = lengths - 1 - start
            inside = (local >= 0) & (local < chunk)
            picked = jnp.take_along_axis(hidden, jnp.clip(local, 0, chunk - 1)[:, None, None], axis=1)[:, 0]
            return (layers, jnp.where(inside[:, None], picked, last_h)), None

        if n_chunks == 1:
            (layers, last_hidden), _ = body((cache.layers, last_hidden), (input_ids, jnp.int32(0)))
        else:
            xs = (jnp.moveaxis(input_ids.reshape(b, n_chunks, chunk), 1, 0), jnp.arange(n_chunks))
            (layers, last_hidden), _ = jax.lax.scan(body, (cache.layers, last_hidden), xs)
        return self.logits(last_hidden), ModelCache(layers=layers, positions=lengths)

    def decode_step(self, tokens: jax.Array, cache: ModelCache) -> tuple[jax.Array, ModelCache]:
        """tokens: [B] int, the token at each row's ``cache.positions``. Returns logits [B, V] and cache."""
        x = self.embed(tokens[:, None])
        new_layers = []
        for block, layer_cache in zip(self.layers, cache.layers, strict=True):
            x, layer_cache = block.decode(x, layer_cache, cache.positions)
            new_layers.append(layer_cache)
        return self.logits(x[:, 0]), ModelCache(layers=tuple(new_layers), positions=cache.positions + 1)
