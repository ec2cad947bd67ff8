"""Llama building blocks with nanotron's numerics: parameters, RMSNorm, rotary embeddings, SwiGLU MLP.

Letter legend: B batch, S sequence, L segment length, N query heads, K kv heads, G = N / K query heads per
kv head, D head dim, H hidden, I intermediate (MLP), V vocab.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.config import ModelConfig

Initializer = nnx.initializers.Initializer


def param(rngs: nnx.Rngs, init, shape, dtype, axes: tuple[str | None, ...]) -> nnx.Param:
    """An ``nnx.Param`` annotated with logical axis names (``embed``, ``heads``, ``kv_heads``, ...).

    The names are mapped to mesh axes by the rules in ``infini_jax.sharding``; no eager sharding here,
    so a model can be built on one device or abstractly under ``nnx.eval_shape``.
    """
    value = init(rngs.params(), shape, dtype)
    return nnx.Param(value, sharding_names=axes, eager_sharding=False)


def matmul_precision(cfg: ModelConfig):
    """Full fp32 matmuls when computing in fp32 (no TF32 on GPU); default (fast) precision otherwise."""
    return jax.lax.Precision.HIGHEST if cfg.dtype == "float32" else None


def decode_matmul_rows() -> int:
    """Fewest rows (batch x tokens) a decode step's matmuls run on; the real rows are padded with zero rows
    up to it. On GPU, XLA strength-reduces matmuls of one row into multiply + reduce kernels that run far
    below the copy bandwidth (benchmarks/decode_profile.py: 0.88 -> 0.60 ms/token for the 300M config, 1.61
    -> 1.42 for 1B on an H200 with 8 rows); the padded rows cost nothing there (the step is bound by
    reading the weights). Default 8 on GPU, 1 (no padding) elsewhere; INFINI_DECODE_MATMUL_ROWS overrides.
    The count applies to the global batch: with the batch split over a data axis each device may still run
    fewer rows (not measured)."""
    value = os.environ.get("INFINI_DECODE_MATMUL_ROWS")
    if value:
        return max(1, int(value))
    return 8 if jax.default_backend() == "gpu" else 1


def pad_rows(x: jax.Array, rows: int | None = None) -> jax.Array:
    """[B, T, ...] -> [B, T', ...] with zero rows appended so that B * T' >= rows (``decode_matmul_rows()``);
    unchanged when B * T already reaches it. Callers slice ``[:, :T]`` off the result of their matmul."""
    rows = decode_matmul_rows() if rows is None else rows
    b, t = x.shape[:2]
    want = -(-rows // b)
    if t >= want:
        return x
    return jnp.pad(x, [(0, 0), (0, want - t)] + [(0, 0)] * (x.ndim - 2))


def einsum_f32(spec: str, a: jax.Array, b: jax.Array, precision=None) -> jax.Array:
    """einsum accumulating in fp32 (``preferred_element_type``), as torch/cuBLAS do for bf16 inputs.

    XLA:CPU has no bf16 x bf16 -> f32 dot, so on CPU the operands are upcast first (bf16 products are
    exact in fp32, so only the summation order can differ).
    """
    if jax.default_backend() == "cpu" and (a.dtype != jnp.float32 or b.dtype != jnp.float32):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
    """nanotron's (flash-attn Triton) RMSNorm: ``(x_f32 * rstd) * w_f32`` rounded once to ``dtype``.

    Note the weight is applied in fp32 *before* rounding (Hugging Face Llama rounds first).
    """

    def __init__(self, size: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.weight = param(rngs, nnx.initializers.ones, (size,), param_dtype, ("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., H] -> [..., H] in ``dtype``."""
        xf = x.astype(jnp.float32)
        rstd = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return ((xf * rstd) * self.weight[...].astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """inv_freq[i] = 1 / theta^(2i / D), fp32, shape [D/2] (flash-attn ``RotaryEmbedding``)."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (jnp.float32(theta) ** exponent)


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float, interleaved: bool) -> jax.Array:
    """Rotary embedding as flash-attn applies it.

    x: [B, S, heads, D]; positions: [B, S] integer positions (segment-local in Infini-Attention).
    cos/sin are computed in fp32, rounded to x's dtype (as flash-attn's cached tables are), the rotation
    is done in fp32 and the result rounded once to x's dtype. ``interleaved`` rotates GPT-J pairs
    (2i, 2i+1); otherwise GPT-NeoX/HF pairs (i, i + D/2).
    """
    dtype = x.dtype
    inv_freq = rope_frequencies(x.shape[-1], theta)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
    cos = jnp.cos(angles).astype(dtype).astype(jnp.float32)[:, :, None, :]
    sin = jnp.sin(angles).astype(dtype).astype(jnp.float32)[:, :, None, :]
    xf = x.astype(jnp.float32)
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(xf.shape)
    else:
        half = xf.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(dtype)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(x W_gate) * (x W_up))``; nanotron fuses gate and up as ``gate_up_proj``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, std: float = 0.02, out_std: float = 0.02):
        h, i = cfg.hidden_size, cfg.intermediate_size
        pd = cfg.storage_dtype
        self.gate_proj = param(rngs, nnx.initializers.normal(std), (h, i), pd, ("embed", "mlp"))
        self.up_proj = param(rngs, nnx.initializers.normal(std), (h, i), pd, ("embed", "mlp"))
        self.down_proj = param(rngs, nnx.initializers.normal(out_std), (i, h), pd, ("mlp", "embed"))
        self.dtype = cfg.compute_dtype
        self.precision = matmul_precision(cfg)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, S, H] -> [B, S, H]."""
        dt, pr = self.dtype, self.precision
        x = x.astype(dt)
        gate = jnp.einsum("bsh,hi->bsi", x, self.gate_proj[...].astype(dt), precision=pr)
        up = jnp.einsum("bsh,hi->bsi", x, self.up_proj[...].astype(dt), precision=pr)
        hidden = (jax.nn.silu(gate.astype(jnp.float32)).astype(dt) * up).astype(dt)
        return jnp.einsum("bsi,ih->bsh", hidden, self.down_proj[...].astype(dt), precision=pr)
