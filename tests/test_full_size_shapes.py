"""Full-size models shape-checked with jax.eval_shape / nnx.eval_shape: nothing is allocated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax.config import fork_300m_config, llama3_8b_infini_config
from infini_jax.model import InfiniLlama


def _abstract(cfg):
    return nnx.eval_shape(lambda: InfiniLlama(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("make,params", [(fork_300m_config, 302_015_584), (llama3_8b_infini_config, 8_030_262_272)])
def test_full_size_parameter_shapes(make, params):
    cfg = make(dtype="bfloat16", param_dtype="bfloat16")
    model = _abstract(cfg)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(x.shape)) for x in leaves) == cfg.num_params() == params
    attn = model.layers[0].attn
    assert attn.q_proj.shape == (cfg.hidden_size, cfg.num_heads, cfg.head_dim)
    assert attn.k_proj.shape == (cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim)
    assert attn.balance_factors.shape == (cfg.num_heads,)


def test_8b_streaming_prefill_and_decode_shapes_at_1m_tokens():
    cfg = llama3_8b_infini_config(dtype="bfloat16", param_dtype="bfloat16", segment_length=2048)
    model = _abstract(cfg)
    graphdef, state = nnx.split(model)
    n = 1 << 20

    def run(state, ids, lengths):
        m = nnx.merge(graphdef, state)
        logits, cache = m.prefill(ids, lengths, chunk_segments=8)
        return m.decode_step(jnp.argmax(logits, -1), cache)

    logits, cache = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, n), jnp.int32),
                                   jax.ShapeDtypeStruct((1,), jnp.int32))
    assert logits.shape == (1, cfg.vocab_size) and logits.dtype == jnp.float32
    layer = cache.layers[0]
    assert layer.M.shape == (1, 8, 128, 128) and layer.M.dtype == jnp.float32  # fp32 recurrent state
    assert layer.k_rot.shape == (1, 2048, 8, 128)
    assert len(cache.layers) == 32
