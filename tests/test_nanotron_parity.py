"""Parity with nanotron's own logits (fixture A) and, for the variants it does not cover, with an
independent float64 NumPy implementation of the reference semantics that is itself anchored to fixture A."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref

from infini_jax import load_model, random_model
from infini_jax.config import ModelConfig
from infini_jax.formats.nanotron import read_nanotron_checkpoint, write_nanotron_checkpoint
from infini_jax.weights import state_from_model

MODES = [("rotated", "logits"), ("unrotated", "logits_unrotated_query")]


@pytest.mark.parametrize("mode,key", MODES)
def test_fixture_a_logits_fp32(fixture_a_dir, fixture_a_refs, mode, key):
    model = load_model(fixture_a_dir, dtype="float32", memory_query=mode)
    for name, data in fixture_a_refs.items():
        logits = np.asarray(model(jnp.asarray(data["input_ids"])))
        assert logits.shape == data[key].shape == (2, data["input_ids"].shape[1], 512)
        err = np.abs(logits - data[key]).max()
        assert err <= 1e-4, f"{name}/{mode}: max |diff| {err}"


def test_fixture_a_modes_differ_where_memory_is_read(fixture_a_dir, fixture_a_refs):
    """The quirk matters: the rotated-query model must NOT match the unrotated logits on multi-segment input."""
    data = fixture_a_refs["main"]
    logits = np.asarray(load_model(fixture_a_dir, dtype="float32")(jnp.asarray(data["input_ids"])))
    assert np.abs(logits - data["logits_unrotated_query"]).max() > 0.05


def test_fixture_a_bf16_close_to_nanotron_bf16(fixture_a_dir, fixture_a_refs):
    data = fixture_a_refs["main"]
    model = load_model(fixture_a_dir, dtype="bfloat16", memory_dtype="bfloat16")
    logits = np.asarray(model(jnp.asarray(data["input_ids"])))
    assert np.abs(logits - data["logits_bf16_cpu"]).max() < 0.15
    assert np.abs(logits - data["logits"]).max() < 0.15


@pytest.mark.parametrize("tp,pp", [(2, 1), (4, 1), (2, 2)])
def test_fixture_a_resharded_checkpoint_same_logits(tmp_path, fixture_a_dir, fixture_a_refs, tp, pp):
    cfg, state, yaml_cfg = read_nanotron_checkpoint(fixture_a_dir)
    out = write_nanotron_checkpoint(tmp_path / "ckpt", cfg, state, tp=tp, pp=pp, yaml_config=yaml_cfg)
    data = fixture_a_refs["exact"]
    logits = np.asarray(load_model(out, dtype="float32")(jnp.asarray(data["input_ids"])))
    assert np.abs(logits - data["logits"]).max() <= 1e-4


@pytest.mark.parametrize("mode,key", MODES)
def test_numpy_reference_matches_nanotron(fixture_a_dir, fixture_a_refs, mode, key):
    """The oracle used for the variants below reproduces nanotron on the fixture."""
    cfg, state, _ = read_nanotron_checkpoint(fixture_a_dir)
    data = fixture_a_refs["main"]
    out = ref.forward(state, ref.cfg_dict(cfg), data["input_ids"], rotated_query=(mode == "rotated"))
    assert np.abs(out - data[key]).max() <= 1e-4


VARIANTS = {
    "gqa_half_rope_sigmoid": dict(num_heads=4, num_kv_heads=2, rope_interleaved=False,
                                  balance_act_type="orig_sigmoid"),
    "mqa_tanh": dict(num_heads=4, num_kv_heads=1, balance_act_type="orig_tanh"),
    "tanh_abs_theta": dict(balance_act_type="tanh_abs", rope_theta=500000.0),
    "hard_sigmoid_tied": dict(balance_act_type="hard_sigmoid", tie_word_embeddings=True),
    "memory_off": dict(turn_on_memory=False, num_kv_heads=2),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["rotated", "unrotated"])
def test_variants_match_reference(variant, mode):
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_layers=2, num_heads=4, num_kv_heads=4,
                segment_length=6, balance_init_type="randn", memory_query=mode)
    cfg = ModelConfig(**{**base, **VARIANTS[variant]})
    model = random_model(cfg, seed=3, init_std=0.25)
    state = state_from_model(model)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 23))  # 4 segments, last one short
    got = np.asarray(model(jnp.asarray(ids)))
    want = ref.forward(state, ref.cfg_dict(cfg), ids, rotated_query=(mode == "rotated"))
    assert np.abs(got - want).max() <= 1e-4


def test_first_segment_is_one_minus_g_local():
    """A sequence within one segment never reads memory: the rotated/unrotated modes agree exactly."""
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_layers=1, num_heads=4, num_kv_heads=4,
                segment_length=16, balance_init_type="randn")
    a = random_model(ModelConfig(**base, memory_query="rotated"), seed=1, init_std=0.3)
    b = random_model(ModelConfig(**base, memory_query="unrotated"), seed=1, init_std=0.3)
    ids = jnp.arange(12)[None] % 64
    np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))
