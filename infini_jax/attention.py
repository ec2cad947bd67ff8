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
from infini_jax.layers import apply_rope, einsum_f32, matmul_precision, param


class LayerCache(NamedTuple):
    """Per-layer decoding state.

    M: [B, K, D, D], z: [B, K, D] (memory of all folded segments, state dtype);
    k_rot, k_raw, v: [B, L, K, D] the current segment's keys (RoPE'd for attention, raw for the later
    memory write) and values, in the compute dtype. Slots at or beyond the row's offset are stale.
    """

    M: jax.Array
    z: jax.Array
    k_rot: jax.Array
    k_raw: jax.Array
    v: jax.Array


def init_layer_cache(cfg: ModelConfig, batch: int) -> LayerCache:
    k, d, seg = cfg.num_kv_heads, cfg.head_dim, cfg.segment_length
    state = mem.init_memory(batch, k, d, cfg.state_dtype)
    buf = jnp.zeros((batch, seg, k, d), cfg.compute_dtype)
    return LayerCache(M=state.M, z=state.z, k_rot=buf, k_raw=buf, v=buf)


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


def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str, precision=None) -> jax.Array:
    """Causal attention inside each segment. q: [B', L, N, D]; k, v: [B', L, K, D] -> [B', L, N, D]."""
    if impl == "cudnn":
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
    def __call__(self, x: jax.Array, cache: LayerCache, *, seg_start: jax.Array, last_seg: jax.Array,
                 weight: jax.Array, stop_gradient_between_segments: bool = False):
        """Runs C whole segments.

        x: [B, T, H] with T = C * L; seg_start: scalar, global index of the chunk's first segment;
        last_seg: [B], global index of each row's last real segment (segments before it are folded into
        the memory; it stays in the cache's segment buffer); weight: [B, T] memory write weights.
        Returns y [B, T, H] and the updated cache.
        """
        cfg = self.cfg
        b, t, _ = x.shape
        seg = cfg.segment_length
        if t % seg:
            raise ValueError(f"Chunk length {t} is not a multiple of segment_length {seg}.")
        c = t // seg
        n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, k, v = self._project(x)
        positions = jnp.broadcast_to(jnp.tile(jnp.arange(seg, dtype=jnp.int32), c)[None], (b, t))
        q_rot, k_rot = self._rope(q, positions), self._rope(k, positions)
        local = segment_attention(
            q_rot.reshape(b * c, seg, n, d), k_rot.reshape(b * c, seg, kv, d), v.reshape(b * c, seg, kv, d),
            cfg.attention_impl, matmul_precision(cfg),
        ).reshape(b, t, n, d)

        state = mem.MemoryState(cache.M, cache.z)
        if cfg.turn_on_memory:
            seg_ids = seg_start + jnp.arange(c)
            # Segments folded before segment s: min(s, last_seg) (a row folds only up to its last segment).
            has_memory = jnp.minimum(seg_ids[None, :], last_seg[:, None]) > 0
            folded = (seg_ids[None, :] < last_seg[:, None]).astype(jnp.float32)
            w = weight.reshape(b, c, seg).astype(jnp.float32) * folded[:, :, None]
            sdt = cfg.state_dtype
            a_mem, state = mem.memory_scan(
                self._sigma_q(q, q_rot).reshape(b, c, seg, kv, cfg.num_groups, d),
                mem.sigma(k.astype(sdt)).reshape(b, c, seg, kv, d),
                v.astype(sdt).reshape(b, c, seg, kv, d),
                w, has_memory, state,
                stop_gradient_between_segments=stop_gradient_between_segments,
            )
            attn = self._combine(local, a_mem.reshape(b, t, n, d))
        else:
            attn = local

        # The segment buffer: each row keeps its last real segment (if it lies in this chunk).
        j = last_seg - seg_start
        in_chunk = (j >= 0) & (j < c)
        jc = jnp.clip(j, 0, c - 1)

        def pick(new: jax.Array, old: jax.Array) -> jax.Array:
            segs = new.reshape(b, c, seg, kv, d)
            taken = jnp.take_along_axis(segs, jc[:, None, None, None, None], axis=1)[:, 0]
            return jnp.where(in_chunk[:, None, None, None], taken.astype(old.dtype), old)

        new_cache = LayerCache(M=state.M, z=state.z, k_rot=pick(k_rot, cache.k_rot),
                               k_raw=pick(k, cache.k_raw), v=pick(v, cache.v))
        return self._output(attn), new_cache

    # ------------------------------------------------------------------ one token
    def decode(self, x: jax.Array, cache: LayerCache, positions: jax.Array):
        """One new token per row. x: [B, 1, H]; positions: [B] global index of the new token."""
        cfg = self.cfg
        seg = cfg.segment_length
        offset = positions % seg
        state = mem.MemoryState(cache.M, cache.z)
        if cfg.turn_on_memory:
            # Fold the (full) buffered segment when this token opens a new segment.
            need_fold = (offset == 0) & (positions > 0)

            def fold(s: mem.MemoryState) -> mem.MemoryState:
                sdt = cfg.state_dtype
                w = jnp.broadcast_to(need_fold[:, None].astype(jnp.float32), (x.shape[0], seg))
                new = mem.write_memory(s, mem.sigma(cache.k_raw.astype(sdt)), cache.v.astype(sdt), w,
                                       positions >= 2 * seg)
                return jax.tree.map(lambda a, o: jnp.where(
                    need_fold.reshape((-1,) + (1,) * (a.ndim - 1)), a, o), new, s)

            state = jax.lax.cond(jnp.any(need_fold), fold, lambda s: s, state)

        q, k, v = self._project(x)
        pos = offset[:, None]
        q_rot, k_rot = self._rope(q, pos), self._rope(k, pos)
        slot = (jnp.arange(seg)[None, :] == offset[:, None])[:, :, None, None]  # [B, L, 1, 1]
        k_rot_buf = jnp.where(slot, k_rot, cache.k_rot)
        k_raw_buf = jnp.where(slot, k, cache.k_raw)
        v_buf = jnp.where(slot, v, cache.v)
        visible = (jnp.arange(seg)[None, :] <= offset[:, None])[:, None, None, None, :]
        local = local_attention(q_rot, k_rot_buf, v_buf, visible, matmul_precision(cfg))
        if cfg.turn_on_memory:
            a_mem = mem.read_memory(self._sigma_q(q, q_rot), state, positions >= seg)
            attn = self._combine(local, a_mem.reshape(local.shape))
        else:
            attn = local
        new_cache = LayerCache(M=state.M, z=state.z, k_rot=k_rot_buf, k_raw=k_raw_buf, v=v_buf)
        return self._output(attn), new_cache
