"""Properties of the compressive memory (pure functions) and of padding at the model level."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from infini_jax import memory as mem
from infini_jax import random_model
from infini_jax.config import ModelConfig

rng = np.random.default_rng(0)


def _rand(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def test_first_segment_retrieval_is_exactly_zero():
    state = mem.init_memory(2, 2, 4)
    out = mem.read_memory(mem.sigma(_rand(2, 3, 2, 2, 4)), state, jnp.array([False, False]))
    assert np.all(np.asarray(out) == 0.0) and np.all(np.isfinite(np.asarray(out)))


def test_delta_rule_rewriting_a_stored_pair_leaves_M_unchanged():
    k, v = _rand(1, 1, 1, 4), _rand(1, 1, 1, 4)
    ones, sk = jnp.ones((1, 1)), mem.sigma(k)
    s1 = mem.write_memory(mem.init_memory(1, 1, 4), sk, v, ones, jnp.array([False]))
    np.testing.assert_allclose(np.asarray(s1.M[0, 0]), np.outer(np.asarray(sk[0, 0, 0]), np.asarray(v[0, 0, 0])),
                               rtol=1e-6)
    s2 = mem.write_memory(s1, sk, v, ones, jnp.array([True]))
    np.testing.assert_allclose(np.asarray(s2.M), np.asarray(s1.M), atol=1e-6)
    np.testing.assert_allclose(np.asarray(s2.z), 2 * np.asarray(s1.z), rtol=1e-6)  # z still counts it
    # A different value for the same key does change M (the test can fail).
    s3 = mem.write_memory(s1, sk, v + 1.0, ones, jnp.array([True]))
    assert np.abs(np.asarray(s3.M - s1.M)).max() > 1e-3


def test_padded_tokens_do_not_change_memory_even_if_not_finite():
    s0 = mem.write_memory(mem.init_memory(1, 2, 4), mem.sigma(_rand(1, 5, 2, 4)), _rand(1, 5, 2, 4),
                          jnp.ones((1, 5)), jnp.array([False]))
    sk, v = mem.sigma(_rand(1, 6, 2, 4)), _rand(1, 6, 2, 4)
    weight = jnp.array([[1, 1, 1, 0, 0, 0]], jnp.float32)
    garbage_v = v.at[:, 3:].set(jnp.nan)
    a = mem.write_memory(s0, sk, garbage_v, weight, jnp.array([True]))
    b = mem.write_memory(s0, sk[:, :3], v[:, :3], jnp.ones((1, 3)), jnp.array([True]))
    np.testing.assert_allclose(np.asarray(a.M), np.asarray(b.M), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(a.z), np.asarray(b.z), rtol=1e-6)


def test_write_weight_counts_a_token_r_times():
    sk, v = mem.sigma(_rand(1, 1, 1, 4)), _rand(1, 1, 1, 4)
    once = mem.write_memory(mem.init_memory(1, 1, 4), sk, v, jnp.ones((1, 1)), jnp.array([False]))
    thrice = mem.write_memory(mem.init_memory(1, 1, 4), sk, v, 3 * jnp.ones((1, 1)), jnp.array([False]))
    np.testing.assert_allclose(np.asarray(thrice.M), 3 * np.asarray(once.M), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(thrice.z), 3 * np.asarray(once.z), rtol=1e-6)


def test_padding_does_not_change_model_memory_or_logits():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      segment_length=4, balance_init_type="randn")
    model = random_model(cfg, seed=0, init_std=0.3)
    ids = jnp.asarray(rng.integers(0, 64, (1, 10)))
    padded = jnp.concatenate([ids, jnp.full((1, 6), 63)], axis=1)
    la, ca = model.prefill(jnp.pad(ids, ((0, 0), (0, 2))), jnp.array([10]))
    lb, cb = model.prefill(padded, jnp.array([10]))
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)
    for x, y in zip(ca.layers, cb.layers, strict=True):
        np.testing.assert_allclose(np.asarray(x.M), np.asarray(y.M), atol=1e-5)
        np.testing.assert_allclose(np.asarray(x.z), np.asarray(y.z), atol=1e-5)


def test_memory_precision_reaches_the_memory_einsums_and_bad_values_are_refused():
    import jax
    import pytest

    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2,
                segment_length=4)
    ids = jnp.arange(12, dtype=jnp.int32)[None] % 64
    texts = {}
    for name in ("highest", "bf16_3x"):
        model = random_model(ModelConfig(**base, memory_precision=name), seed=0)
        texts[name] = str(jax.make_jaxpr(lambda i, m=model: m(i))(ids))
    # The memory einsums carry the requested algorithm; the fp32 projections stay HIGHEST in both.
    assert "BF16_BF16_F32_X3" in texts["bf16_3x"] and "BF16_BF16_F32_X3" not in texts["highest"]
    assert "Precision.HIGHEST" in texts["bf16_3x"]
    with pytest.raises(ValueError, match="memory_precision 'fast' is unknown"):
        ModelConfig(**base, memory_precision="fast")
