"""The Infini-Attention module: segment-local causal attention plus a gated compressive memory.

Letter legend: B batch, T tokens in a chunk (a whole number C of segments), L segment length, N query
heads, K kv heads, G = N / K, D head dim, H hidden.

Two entry points share the parameters and the per-layer cache (:class:`LayerCache`):
  * ``__call__``: a chunk of whole segments (prefill / full forward / training). Projections, RoPE and
    the local attention run for all segments at once; only the memory recurrence is scanned.
  * ``decode``: one token per row, each row at its own position. A full segment is folded into the
    memory lazily, when the first token of the next segment arrives, exactly when nanotron's
    recompute-everything loop would start a new segment.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import memory as mem
from infini_jax.config import GateActivation, MemoryQuery, ModelConfig
from infini_jax.layers import apply_rope, einsum_f32, matmul_precision, pad_rows, param


class LayerCache(NamedTuple):
    """Per-layer decoding state.

    M: [B, K, D, D], z: [B, K, D]: memory of all completed segments (state dtype), what reads see;
    dM, dz: the current segment's pending delta-rule contribution so far, computed against (M, z) and
    added to them when the segment completes (the delta rule uses the memory *before* the segment, so
    the contribution can be accumulated token by token);
    k_rot, v: [B, L, K, D] the current segment's RoPE'd keys and values (compute dtype) for local
    attention. Slots at or beyond the row's offset are stale.
    """

    M: jax.Array
    z: jax.Array
    dM: jax.Array
    dz: jax.Array
    k_rot: jax.Array
    v: jax.Array


def init_layer_cache(cfg: ModelConfig, batch: int) -> LayerCache:
    k, d, seg = cfg.num_kv_heads, cfg.head_dim, cfg.segment_length
    state = mem.init_memory(batch, k, d, cfg.state_dtype)
    buf = jnp.zeros((batch, seg, k, d), cfg.compute_dtype)
    return LayerCache(M=state.M, z=state.z, dM=state.M, dz=state.z, k_rot=buf, v=buf)


def gate_activation(x: jax.Array, kind: GateActivation) -> jax.Array:
    """g = act(balance_factors), in fp32 (reference 1.4)."""
    x = x.astype(jnp.float32)
    if kind == GateActivation.ORIG_SIGMOID:
        return jax.nn.sigmoid(x)
    if kind == GateActivation.ORIG_TANH:
        return jnp.tanh(x)
    if kind == GateActivation.HARD_SIGMOID:
        return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)
    if kind == GateActivation.TANH_ABS:
        return jnp.abs(jnp.tanh(x))
    raise ValueError(f"Unknown gate activation {kind!r}.")


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, precision=None) -> jax.Array:
    """Softmax attention with grouped kv heads, scale 1/sqrt(D), fp32 logits and softmax.

    q: [B, Tq, N, D]; k, v: [B, Tk, K, D]; mask: broadcastable to [B, 1, 1, Tq, Tk] (True = attend).
    Returns [B, Tq, N, D] in q's dtype (probabilities rounded to it before P @ V, as flash-attn does).
    """
    b, tq, n, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, tq, kv, n // kv, d)
    logits = einsum_f32("bqkgd,bskd->bkgqs", qg, k, precision) * (1.0 / jnp.sqrt(jnp.float32(d)))
    logits = jnp.where(mask, logits, jnp.float32(-1e30))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = einsum_f32("bkgqs,bskd->bqkgd", probs, v, precision)
    return out.reshape(b, tq, n, d).astype(q.dtype)


def check_attention_backend(impl: str) -> None:
    """cuDNN attention runs on NVIDIA GPUs only: elsewhere a ValueError naming the switch to XLA attention."""
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU (Ampere or newer); JAX runs on "
                         f"{jax.default_backend()!r}. Use attention_impl='xla': load_model(..., "
                         "attention_impl='xla'), --config.attention_impl=xla in an evaluation config, "
                         "--config.model.attention_impl=xla in a training config.")


def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str, precision=None) -> jax.Array:
    """Causal attention inside each segment. q: [B', L, N, D]; k, v: [B', L, K, D] -> [B', L, N, D]."""
    if impl == "cudnn":
        check_attention_backend(impl)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    seg = q.shape[1]
    causal = jnp.tril(jnp.ones((seg, seg), dtype=bool))[None, None, None]
    return local_attention(q, k, v, causal, precision)


class InfiniAttention(nnx.Module):
    """nanotron's ``CausalSelfAttention`` with Infini-Attention (reference section 1)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, std: float = 0.02, out_std: float = 0.02):
        h, n, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = cfg.storage_dtype
        normal = nnx.initializers.normal
        self.q_proj = param(rngs, normal(std), (h, n, d), pd, ("embed", "heads", "head_dim"))
        self.k_proj = param(rngs, normal(std), (h, k, d), pd, ("embed", "kv_heads", "head_dim"))
        self.v_proj = param(rngs, normal(std), (h, k, d), pd, ("embed", "kv_heads", "head_dim"))
        self.o_proj = param(rngs, normal(out_std), (n, d, h), pd, ("heads", "head_dim", "embed"))
        bf_init = nnx.initializers.zeros if cfg.balance_init_type == "zeros" else normal(1.0)
        self.balance_factors = param(rngs, bf_init, (n,), pd, ("heads",))
        self.cfg = cfg

    # ------------------------------------------------------------------ helpers
    def _project(self, x: jax.Array):
        dt, pr = self.cfg.compute_dtype, matmul_precision(self.cfg)
        x = x.astype(dt)
        q = jnp.einsum("bth,hnd->btnd", x, self.q_proj[...].astype(dt), precision=pr).astype(dt)
        k = jnp.einsum("bth,hkd->btkd", x, self.k_proj[...].astype(dt), precision=pr).astype(dt)
        v = jnp.einsum("bth,hkd->btkd", x, self.v_proj[...].astype(dt), precision=pr).astype(dt)
        return q, k, v

    def _rope(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        return apply_rope(x, positions, theta=self.cfg.rope_theta, interleaved=self.cfg.rope_interleaved)

    def _sigma_q(self, q: jax.Array, q_rot: jax.Array) -> jax.Array:
        """sigma of the memory query, grouped: [B, T, N, D] -> [B, T, K, G, D] in the state dtype."""
        cfg = self.cfg
        query = q_rot if cfg.memory_query == MemoryQuery.ROTATED else q
        b, t = query.shape[:2]
        sq = mem.sigma(query.astype(cfg.state_dtype))
        return sq.reshape(b, t, cfg.num_kv_heads, cfg.num_groups, cfg.head_dim)

    def _combine(self, local: jax.Array, a_mem: jax.Array) -> jax.Array:
        """g * A_mem + (1 - g) * local, per query head. local, a_mem: [B, T, N, D]."""
        dt = self.cfg.compute_dtype
        g = gate_activation(self.balance_factors[...], self.cfg.balance_act_type).astype(dt)
        g = g[None, None, :, None]
        one_minus_g = (1 - g).astype(dt)
        return ((g * a_mem.astype(dt)).astype(dt) + (one_minus_g * local).astype(dt)).astype(dt)

    def _output(self, attn: jax.Array) -> jax.Array:
        dt, pr = self.cfg.compute_dtype, matmul_precision(self.cfg)
        return jnp.einsum("btnd,ndh->bth", attn, self.o_proj[...].astype(dt), precision=pr).astype(dt)

    # ------------------------------------------------------------------ chunk of segments
    def __call__(self, x: jax.Array, cache: LayerCache, *, seg_start: jax.Array, num_tokens: jax.Array,
                 weight: jax.Array, stop_gradient_between_segments: bool = False):
        """Runs C whole segments.

        x: [B, T, H] with T = C * L; seg_start: scalar, global index of the chunk's first segment;
        num_tokens: [B], each row's total number of real tokens. Segments before a row's last real
        segment are folded into the memory; the last one stays in the cache (segment buffer + pending
        delta). weight: [B, T] memory write weights. Returns y [B, T, H] and the updated cache.
        """
        cfg = self.cfg
        b, t, _ = x.shape
        seg = cfg.segment_length
        if t % seg:
            raise ValueError(f"Chunk length {t} is not a multiple of segment_length {seg}.")
        c = t // seg
        n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        last_seg = (num_tokens - 1) // seg
        q, k, v = self._project(x)
        positions = jnp.broadcast_to(jnp.tile(jnp.arange(seg, dtype=jnp.int32), c)[None], (b, t))
        q_rot, k_rot = self._rope(q, positions), self._rope(k, positions)
        local = segment_attention(
            q_rot.reshape(b * c, seg, n, d), k_rot.reshape(b * c, seg, kv, d), v.reshape(b * c, seg, kv, d),
            cfg.attention_impl, matmul_precision(cfg),
        ).reshape(b, t, n, d)

        # Each row's last real segment stays in the cache (if it lies in this chunk).
        j = last_seg - seg_start
        in_chunk = (j >= 0) & (j < c)
        jc = jnp.clip(j, 0, c - 1)

        def take(new: jax.Array) -> jax.Array:
            segs = new.reshape(b, c, seg, *new.shape[2:])
            return jnp.take_along_axis(segs, jc.reshape((b, 1) + (1,) * (segs.ndim - 2)), axis=1)[:, 0]

        def pick(taken: jax.Array, old: jax.Array) -> jax.Array:
            keep = in_chunk.reshape((b,) + (1,) * (old.ndim - 1))
            return jnp.where(keep, taken.astype(old.dtype), old)

        state, pending = mem.MemoryState(cache.M, cache.z), mem.MemoryState(cache.dM, cache.dz)
        if cfg.turn_on_memory:
            sdt = cfg.state_dtype
            seg_ids = seg_start + jnp.arange(c)
            # Segments folded before segment s: min(s, last_seg) (a row folds only up to its last segment).
            has_memory = jnp.minimum(seg_ids[None, :], last_seg[:, None]) > 0
            folded = (seg_ids[None, :] < last_seg[:, None]).astype(jnp.float32)
            w = weight.reshape(b, c, seg).astype(jnp.float32) * folded[:, :, None]
            sigma_k, v_state = mem.sigma(k.astype(sdt)), v.astype(sdt)
            a_mem, state = mem.memory_scan(
                self._sigma_q(q, q_rot).reshape(b, c, seg, kv, cfg.num_groups, d),
                sigma_k.reshape(b, c, seg, kv, d), v_state.reshape(b, c, seg, kv, d),
                w, has_memory, state,
                stop_gradient_between_segments=stop_gradient_between_segments,
                precision=cfg.memory_matmul_precision,
            )
            attn = self._combine(local, a_mem.reshape(b, t, n, d))
            # The last segment's tokens so far, as a pending delta against the memory before it.
            filled = num_tokens - last_seg * seg
            w_last = (jnp.arange(seg)[None, :] < filled[:, None]).astype(jnp.float32) * take(weight)
            delta = mem.memory_delta(state, take(sigma_k), take(v_state), w_last, last_seg > 0,
                                     cfg.memory_matmul_precision)
            pending = jax.tree.map(pick, delta, pending)
        else:
            attn = local
        new_cache = LayerCache(M=state.M, z=state.z, dM=pending.M, dz=pending.z,
                               k_rot=pick(take(k_rot), cache.k_rot), v=pick(take(v), cache.v))
        return self._output(attn), new_cache

    # ------------------------------------------------------------------ one token
    def decode(self, x: jax.Array, cache: LayerCache, positions: jax.Array):
        """One new token per row. x: [B, 1, H]; positions: [B] global index of the new token.

        No fold of a whole segment ever happens here: each token's delta-rule contribution is added to
        the pending (dM, dz) when it arrives, and the pending delta joins (M, z) when the next segment
        starts, as nanotron's recompute loop would fold it. Cost per step: O(D^2) per kv head.
        """
        cfg = self.cfg
        seg = cfg.segment_length
        offset = positions % seg
        q, k, v = (y[:, :1] for y in self._project(pad_rows(x)))
        pos = offset[:, None]
        q_rot, k_rot = self._rope(q, pos), self._rope(k, pos)
        slot = (jnp.arange(seg)[None, :] == offset[:, None])[:, :, None, None]  # [B, L, 1, 1]
        k_rot_buf = jnp.where(slot, k_rot, cache.k_rot)
        v_buf = jnp.where(slot, v, cache.v)
        visible = (jnp.arange(seg)[None, :] <= offset[:, None])[:, None, None, None, :]
        local = local_attention(q_rot, k_rot_buf, v_buf, visible, matmul_precision(cfg))
        state, pending = mem.MemoryState(cache.M, cache.z), mem.MemoryState(cache.dM, cache.dz)
        if cfg.turn_on_memory:
            sdt = cfg.state_dtype
            starts_segment = (offset == 0) & (positions > 0)

            def on_boundary(new, old):
                return jnp.where(starts_segment.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

            state = jax.tree.map(on_boundary, mem.add(state, pending), state)
            pending = jax.tree.map(on_boundary, jax.tree.map(jnp.zeros_like, pending), pending)
            has_memory = positions >= seg
            delta = mem.memory_delta(state, mem.sigma(k.astype(sdt)), v.astype(sdt),
                                     jnp.ones(positions.shape + (1,), jnp.float32), has_memory,
                                     cfg.memory_matmul_precision)
            pending = mem.add(pending, delta)
            a_mem = mem.read_memory(self._sigma_q(q, q_rot), state, has_memory, cfg.memory_matmul_precision)
            attn = self._combine(local, a_mem.reshape(local.shape))
        else:
            attn = local
        new_cache = LayerCache(M=state.M, z=state.z, dM=pending.M, dz=pending.z, k_rot=k_rot_buf, v=v_buf)
        return self._output(pad_rows(attn))[:, :1], new_cache
