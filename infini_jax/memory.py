"""Compressive memory of Infini-Attention as pure functions, and the segment scan.

Letter legend: B batch, C segments in a chunk, L segment length, K kv heads, G query heads per kv head,
D head dim. Memory state per layer: M [B, K, D, D] and z [B, K, D], kept in ``state_dtype`` (fp32 by
default; bf16 mimics nanotron, whose memory lives in the activation dtype).

Semantics (reference 1.2, delta rule, no epsilon):
    sigma(x) = elu(x) + 1
    read:    A_mem = sigma(q) M / (sigma(q) . z)          exactly 0 while no segment has been written
    write:   V'    = V - sigma(k) M / (sigma(k) . z)      (V' = V for the first written segment)
             M    += sum_t w_t sigma(k_t)^T V'_t ;  z += sum_t w_t sigma(k_t)
``w_t`` is a per-token write weight: 0 masks padding out of the update, 1 is nanotron, and r > 1 is the
"virtual length" training trick (a token's write counts r times).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from infini_jax.layers import einsum_f32

HIGHEST = jax.lax.Precision.HIGHEST


class MemoryState(NamedTuple):
    """M: [B, K, D, D]; z: [B, K, D]."""

    M: jax.Array
    z: jax.Array


def init_memory(batch: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32) -> MemoryState:
    return MemoryState(
        M=jnp.zeros((batch, num_kv_heads, head_dim, head_dim), dtype),
        z=jnp.zeros((batch, num_kv_heads, head_dim), dtype),
    )


def sigma(x: jax.Array) -> jax.Array:
    """ELU + 1, the positive feature map of linear attention (computed in x's dtype)."""
    return (jax.nn.elu(x) + 1).astype(x.dtype)


def _mm(spec: str, a: jax.Array, b: jax.Array, dtype, precision=HIGHEST) -> jax.Array:
    """einsum with fp32 accumulation, rounded once to ``dtype`` (as torch's bf16 matmul/sum)."""
    return einsum_f32(spec, a.astype(dtype), b.astype(dtype), precision).astype(dtype)


def _safe_div(num: jax.Array, den: jax.Array, valid: jax.Array) -> jax.Array:
    """num / den where ``valid``, else 0 (keeps gradients finite where memory is empty)."""
    den = jnp.where(valid, den, jnp.ones_like(den))
    return jnp.where(valid, num / den, jnp.zeros_like(num))


def read_memory(sigma_q: jax.Array, state: MemoryState, has_memory: jax.Array, precision=HIGHEST) -> jax.Array:
    """Retrieval for query heads grouped by kv head.

    sigma_q: [B, T, K, G, D] (already sigma'd, in state dtype); has_memory: [B] bool.
    Returns A_mem [B, T, K, G, D] in the state dtype; exactly zero for rows without memory.
    ``precision``: of the two einsums on GPU (``ModelConfig.memory_precision``; fp32 exact by default).
    """
    dt = state.M.dtype
    num = _mm("btkgd,bkde->btkge", sigma_q, state.M, dt, precision)
    den = _mm("btkgd,bkd->btkg", sigma_q, state.z, dt, precision)[..., None]
    valid = has_memory[:, None, None, None, None]
    return _safe_div(num, den, valid).astype(dt)


def memory_delta(state: MemoryState, sigma_k: jax.Array, v: jax.Array, weight: jax.Array,
                 has_memory: jax.Array, precision=HIGHEST) -> MemoryState:
    """What one segment (or part of it) adds to the memory under the delta rule, computed against
    ``state`` = the memory before that segment.

    sigma_k, v: [B, T, K, D] (state dtype); weight: [B, T] per-token write weight; has_memory: [B] bool
    (False for the first written segment, where V' = V). Returns (dM [B, K, D, D], dz [B, K, D]).
    Deltas of disjoint token sets of one segment add up (decoding accumulates them token by token).
    """
    dt = state.M.dtype
    retrieved = _safe_div(
        _mm("btkd,bkde->btke", sigma_k, state.M, dt, precision),
        _mm("btkd,bkd->btk", sigma_k, state.z, dt, precision)[..., None],
        has_memory[:, None, None, None],
    )
    # Tokens with weight 0 (padding) must not touch the state, even if their values are not finite.
    written = (weight > 0)[:, :, None, None]
    v_delta = jnp.where(written, (v.astype(dt) - retrieved).astype(dt), 0)
    weighted_k = jnp.where(written, sigma_k * weight[:, :, None, None].astype(dt), 0).astype(dt)
    dM = _mm("btkd,btke->bkde", weighted_k, v_delta, dt, precision)
    dz = jnp.sum(weighted_k.astype(jnp.float32), axis=1).astype(dt)
    return MemoryState(M=dM, z=dz)


def add(state: MemoryState, delta: MemoryState) -> MemoryState:
    return MemoryState(M=(state.M + delta.M).astype(state.M.dtype), z=(state.z + delta.z).astype(state.z.dtype))


def write_memory(state: MemoryState, sigma_k: jax.Array, v: jax.Array, weight: jax.Array,
                 has_memory: jax.Array, precision=HIGHEST) -> MemoryState:
    """Delta-rule update with one segment: ``state + memory_delta(state, ...)`` (shapes as there)."""
    return add(state, memory_delta(state, sigma_k, v, weight, has_memory, precision))


def memory_scan(sigma_q: jax.Array, sigma_k: jax.Array, v: jax.Array, weight: jax.Array,
                has_memory: jax.Array, state: MemoryState, *, stop_gradient_between_segments: bool = False,
                precision=HIGHEST) -> tuple[jax.Array, MemoryState]:
    """Reads then writes the memory segment by segment with ``jax.lax.scan`` (fp32 carry by default).

    sigma_q: [B, C, L, K, G, D]; sigma_k, v: [B, C, L, K, D]; weight: [B, C, L] (0 = not written);
    has_memory: [B, C] bool, whether any segment was written before segment c.
    Returns A_mem [B, C, L, K, G, D] and the final state.
    """

    def step(carry: MemoryState, xs):
        sq, sk, vv, w, hm = xs
        if stop_gradient_between_segments:
            carry = jax.tree.map(jax.lax.stop_gradient, carry)
        a_mem = read_memory(sq, carry, hm, precision)
        return write_memory(carry, sk, vv, w, hm, precision), a_mem

    to_scan = lambda x: jnp.moveaxis(x, 1, 0)  # segment axis first
    xs = tuple(map(to_scan, (sigma_q, sigma_k, v, weight, has_memory)))
    final, a_mem = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(a_mem, 0, 1), final
