"""Generation with the cache equals nanotron's recompute-everything loop, batched or not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref
from flax import nnx

from infini_jax import GenerationConfig, Generator, generate_by_recompute, random_model
from infini_jax.config import ModelConfig
from infini_jax.generate import bucket_length
from infini_jax.weights import state_from_model

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  segment_length=5, balance_init_type="randn", rope_interleaved=False)


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=1, init_std=0.3)


@pytest.mark.parametrize("memory_query", ["rotated", "unrotated"])
def test_each_decode_step_equals_full_forward(memory_query):
    model = random_model(CFG.replace(memory_query=memory_query), seed=1, init_std=0.3)
    rng = np.random.default_rng(0)
    lengths = np.array([7, 10, 3])  # unequal prompts, several segment boundaries crossed while decoding
    ids = np.zeros((3, 10), np.int32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(0, CFG.vocab_size, n)
    logits, cache = model.prefill(jnp.asarray(ids), jnp.asarray(lengths))
    seqs = [list(ids[b, : lengths[b]]) for b in range(3)]
    state, cfg = state_from_model(model), ref.cfg_dict(model.cfg)
    full = lambda seq: ref.forward(state, cfg, np.asarray([seq]), memory_query == "rotated")[0, -1]
    step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
    worst = 0.0
    for _ in range(12):
        for b in range(3):
            want = full(seqs[b])  # nanotron's strategy: the whole sequence again, in float64
            worst = max(worst, float(np.abs(want - np.asarray(logits[b])).max()))
        tok = np.asarray(jnp.argmax(logits, -1))
        for b in range(3):
            seqs[b].append(int(tok[b]))
        logits, cache = step(model, jnp.asarray(tok), cache)
    assert worst <= 1e-4


def test_generator_batched_equals_one_at_a_time_and_recompute(model):
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, CFG.vocab_size, n)) for n in (3, 9, 17, 4)]
    batched = Generator(model, GenerationConfig(max_new_tokens=8, batch_size=4)).generate(prompts)
    single = Generator(model, GenerationConfig(max_new_tokens=8, batch_size=1)).generate(prompts)
    assert batched == single
    # nanotron's loop (full forward per new token), in float64 NumPy, gives the same greedy tokens.
    state, cfg = state_from_model(model), ref.cfg_dict(model.cfg)
    for prompt, got in zip(prompts, batched, strict=True):
        seq = list(prompt)
        for _ in range(8):
            seq.append(int(np.argmax(ref.forward(state, cfg, np.asarray([seq]))[0, -1])))
        assert got == seq[len(prompt):]
    assert generate_by_recompute(model, prompts[1], 3) == batched[1][:3]


def test_streaming_prefill_equals_single_chunk(model):
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 40)))
    lengths = jnp.array([40, 23])
    la, ca = model.prefill(ids, lengths)
    lb, cb = model.prefill(ids, lengths, chunk_segments=2)
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)
    for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-5, atol=1e-4)
    prompts = [list(np.asarray(ids[0])), list(np.asarray(ids[1, :23]))]
    streamed = Generator(model, GenerationConfig(max_new_tokens=6, batch_size=2, prefill_chunk_tokens=10))
    plain = Generator(model, GenerationConfig(max_new_tokens=6, batch_size=2))
    assert streamed.generate(prompts) == plain.generate(prompts)


def test_stop_at_eos(model):
    prompt = list(range(1, 12))
    free = Generator(model, GenerationConfig(max_new_tokens=10, batch_size=1)).generate([prompt])[0]
    eos = free[3]
    stopped = Generator(model, GenerationConfig(max_new_tokens=10, batch_size=1, eos_token_id=eos,
                                                stop_at_eos=True)).generate([prompt])[0]
    assert stopped == free[: free.index(eos) + 1]


def test_bad_prompts_give_clear_errors(model):
    gen = Generator(model, GenerationConfig(max_new_tokens=2, batch_size=2))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        gen.generate([[1, 2, CFG.vocab_size]])
    with pytest.raises(ValueError, match="Empty prompt"):
        gen.generate([[]])


def test_bucket_lengths_are_few_and_bounded():
    buckets = {bucket_length(n, 64) for n in range(1, 20000, 7)}
    assert len(buckets) < 60
    for n in range(1, 20000, 13):
        b = bucket_length(n, 64)
        assert b >= n and b % 64 == 0 and (b <= 2 * 64 or b <= 1.126 * n + 64)
    assert bucket_length(1000, 64, chunk=256) % 256 == 0


def test_padded_decode_matmul_rows_change_nothing(model, monkeypatch):
    """The GPU default pads a decode step's matmuls to 8 rows (layers.decode_matmul_rows); the real rows'
    logits and cache must be those of the unpadded step."""
    from infini_jax.layers import pad_rows

    x = jnp.ones((3, 1, 4))
    assert pad_rows(x, 8).shape == (3, 3, 4) and pad_rows(x, 2).shape == (3, 1, 4)  # B * T >= rows
    assert pad_rows(jnp.ones((1, 1, 2, 5)), 8).shape == (1, 8, 2, 5)
    # Three rows of unequal lengths: 8 rows need 3 token slots per row (B * T' = 9 >= 8).
    ids = jnp.asarray(np.random.default_rng(3).integers(0, CFG.vocab_size, (3, 10)), jnp.int32)
    outs = {}
    for rows in ("1", "8"):
        monkeypatch.setenv("INFINI_DECODE_MATMUL_ROWS", rows)
        logits, cache = model.prefill(ids, jnp.asarray([7, 10, 3]))
        steps = []
        for _ in range(4):  # crosses a segment boundary (L = 5)
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            logits, cache = model.decode_step(tok, cache)
            steps.append(np.asarray(logits))
        outs[rows] = (np.stack(steps), jax.tree.map(np.asarray, cache.layers))
    np.testing.assert_allclose(outs["8"][0], outs["1"][0], rtol=1e-5, atol=1e-5)  # fp32 summation order
    for a, b in zip(jax.tree.leaves(outs["8"][1]), jax.tree.leaves(outs["1"][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
