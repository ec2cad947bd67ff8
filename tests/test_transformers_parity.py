"""Parity with Hugging Face transformers' LlamaForCausalLM (torch, CPU, fp32) through the HF converter."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from infini_jax import load_model  # noqa: E402


@pytest.fixture(scope="module")
def hf_llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    for p in model.parameters():  # larger weights so that differences are not hidden by tiny activations
        torch.nn.init.normal_(p, std=0.15) if p.ndim > 1 else None
    path = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def _hf_logits(model, ids, **kw):
    with torch.no_grad():
        return model(torch.as_tensor(ids), **kw).logits.float().numpy()


@pytest.mark.parametrize("rope_layout", ["half", "interleaved"])
def test_one_segment_memory_off_equals_transformers(hf_llama_dir, rope_layout):
    path, hf = hf_llama_dir
    ids = np.random.default_rng(0).integers(0, 128, (2, 24))
    ours = load_model(path, dtype="float32", segment_length=32, turn_on_memory=False, rope_layout=rope_layout)
    got = np.asarray(ours(jnp.asarray(ids)))
    np.testing.assert_allclose(got, _hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_several_segments_equal_block_diagonal_transformers(hf_llama_dir):
    """Memory off, S > L: segment-local attention with RoPE restarting per segment equals transformers run
    with a block-diagonal causal mask and positions restarting at 0 in every segment."""
    path, hf = hf_llama_dir
    seg, S = 8, 27
    ids = np.random.default_rng(1).integers(0, 128, (2, S))
    ours = load_model(path, dtype="float32", segment_length=seg, turn_on_memory=False)
    got = np.asarray(ours(jnp.asarray(ids)))

    pos = np.arange(S)
    same_seg = (pos[:, None] // seg) == (pos[None, :] // seg)
    allowed = same_seg & (pos[None, :] <= pos[:, None])
    mask = torch.zeros(2, 1, S, S)
    mask.masked_fill_(~torch.as_tensor(allowed)[None, None], torch.finfo(torch.float32).min)
    position_ids = torch.as_tensor(np.tile(pos % seg, (2, 1)))
    want = _hf_logits(hf, ids, attention_mask=mask, position_ids=position_ids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # And it is really different from full attention (the test can fail).
    assert np.abs(got - _hf_logits(hf, ids)).max() > 1e-2


def test_memory_on_first_segment_scales_attention_by_one_minus_g(hf_llama_dir):
    """With memory on and zero-initialised balance factors + sigmoid, g = 0.5 halves the attention output of
    the first segment (reference 1.2): the logits differ from transformers."""
    path, hf = hf_llama_dir
    ids = np.random.default_rng(2).integers(0, 128, (1, 16))
    ours = load_model(path, dtype="float32", segment_length=32, balance_act_type="orig_sigmoid")
    assert np.abs(np.asarray(ours(jnp.asarray(ids))) - _hf_logits(hf, ids)).max() > 1e-2
