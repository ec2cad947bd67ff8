"""HF Llama -> Infini canonical state: the weight mapping, RoPE permutation, errors and the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from infini_jax.formats import hf_llama as hf
from infini_jax.formats import nanotron as nt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

H, N, K, D, L, V, FF = 64, 4, 2, 16, 2, 128, 96  # FF: intermediate size


def _save_tiny(path: Path, *, tied: bool, dtype=None, **save_kwargs) -> dict[str, np.ndarray]:
    """Saves a tiny random LlamaForCausalLM; returns its state dict as float32 numpy."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                   num_attention_heads=N, num_key_value_heads=K, tie_word_embeddings=tied,
                                   max_position_embeddings=256, rope_theta=10000.0)
    model = transformers.LlamaForCausalLM(cfg)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, **save_kwargs)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _np(t) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_untied")
    return path, _save_tiny(path, tied=False)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tied")
    return path, _save_tiny(path, tied=True)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- mapping
def test_mapping_untied(untied):
    path, sd = untied
    config, state = hf.read_hf_llama(path, segment_length=16)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (V, H, FF)
    assert (config.num_heads, config.num_kv_heads, config.num_layers, config.segment_length) == (N, K, L, 16)
    assert config.rope_theta == 10000.0 and not config.rope_interleaved and not config.tie_word_embeddings
    assert config.balance_act_type.value == "orig_sigmoid" and config.turn_on_memory
    assert set(state) == set(nt.expected_shapes(config))
    for i in range(L):
        p, names = f"model.layers.{i}.", nt.layer_names(i)
        qkv = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        assert _bits_equal(state[names["qkv_proj"]], _np(qkv))
        gate_up = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]], 0)
        assert _bits_equal(state[names["gate_up_proj"]], _np(gate_up))
        assert _bits_equal(state[names["o_proj"]], _np(sd[p + "self_attn.o_proj.weight"]))
        assert _bits_equal(state[names["down_proj"]], _np(sd[p + "mlp.down_proj.weight"]))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            assert _bits_equal(state[names[norm]], _np(sd[p + norm + ".weight"]))
        assert _bits_equal(state[names["balance_factors"]], np.zeros(N, np.float32))
    assert _bits_equal(state[nt.EMBEDDING_NAME], _np(sd["model.embed_tokens.weight"]))
    assert _bits_equal(state[nt.FINAL_NORM_NAME], _np(sd["model.norm.weight"]))
    assert _bits_equal(state[nt.LM_HEAD_NAME], _np(sd["lm_head.weight"]))


def test_mapping_tied(tied):
    path, sd = tied
    config, state = hf.read_hf_llama(path, segment_length=8)
    assert config.tie_word_embeddings and nt.LM_HEAD_NAME not in state
    assert _bits_equal(state[nt.EMBEDDING_NAME], _np(sd["model.embed_tokens.weight"]))


def test_bf16_kept_and_sharded_index(tmp_path):
    sd = _save_tiny(tmp_path, tied=False, dtype=torch.bfloat16, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config, state = hf.read_hf_llama(tmp_path, segment_length=16, balance_init_type="randn", seed=3)
    assert all(v.dtype == ml_dtypes.bfloat16 for v in state.values())
    assert _bits_equal(state[nt.LM_HEAD_NAME], _np(sd["lm_head.weight"]))
    q = sd["model.layers.1.self_attn.q_proj.weight"]
    assert _bits_equal(state["model.decoder.1.pp_block.attn.qkv_proj.weight"][: N * D], _np(q))


def test_balance_init(untied):
    path, _ = untied
    bf = "model.decoder.1.pp_block.attn.balance_factors"
    a = hf.read_hf_llama(path, segment_length=16, balance_init_type="randn", seed=1)[1]
    b = hf.read_hf_llama(path, segment_length=16, balance_init_type="randn", seed=1)[1]
    c = hf.read_hf_llama(path, segment_length=16, balance_init_type="randn", seed=2)[1]
    assert _bits_equal(a[bf], b[bf]) and not _bits_equal(a[bf], c[bf]) and np.all(a[bf] != 0)
    const = hf.read_hf_llama(path, segment_length=16, balance_init_type="constant", balance_init_value=-2.5)
    assert const[0].balance_init_type == "zeros"
    np.testing.assert_array_equal(const[1][bf], np.full(N, -2.5, np.float32))
    with pytest.raises(ValueError, match="needs balance_init_value"):
        hf.read_hf_llama(path, segment_length=16, balance_init_type="constant")
    with pytest.raises(ValueError, match="conflicts"):
        hf.read_hf_llama(path, segment_length=16, balance_init_type="randn", balance_init_value=1.0)


# ----------------------------------------------------------------------------- RoPE layouts
def _inv_freq(d: int, theta: float = 10000.0) -> np.ndarray:
    return theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)


def rope_half(x: np.ndarray, pos: int) -> np.ndarray:
    """GPT-NeoX / HF rotate_half: pairs (j, j + D/2)."""
    ang = pos * _inv_freq(x.shape[-1])
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def rope_interleaved(x: np.ndarray, pos: int) -> np.ndarray:
    """GPT-J: pairs (2j, 2j + 1)."""
    ang = pos * _inv_freq(x.shape[-1])
    c, s = np.cos(ang), np.sin(ang)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    return out


def test_rope_half_helper_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 5, D))
    pos = np.arange(5)
    freqs = pos[:, None] * _inv_freq(D)[None]
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = (torch.tensor(f(emb))[None] for f in (np.cos, np.sin))
    qt, _ = apply_rotary_pos_emb(torch.tensor(q), torch.tensor(k), cos, sin)
    ours = np.stack([rope_half(q[0, 0, p], p) for p in pos])
    np.testing.assert_allclose(qt.numpy()[0, 0], ours, rtol=1e-12, atol=1e-12)


def test_interleaved_permutation(untied):
    path, _ = untied
    config_h, half = hf.read_hf_llama(path, segment_length=16, rope_layout="half")
    config_i, inter = hf.read_hf_llama(path, segment_length=16, rope_layout="interleaved")
    assert not config_h.rope_interleaved and config_i.rope_interleaved
    perm = hf.interleave_permutation(D)
    assert perm.tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    rng = np.random.default_rng(0)
    for i in range(L):
        w_h = half[f"model.decoder.{i}.pp_block.attn.qkv_proj.weight"].astype(np.float64)
        w_i = inter[f"model.decoder.{i}.pp_block.attn.qkv_proj.weight"].astype(np.float64)
        np.testing.assert_array_equal(w_h[(N + K) * D:], w_i[(N + K) * D:])  # v untouched
        for head in range(N + K):  # q heads then k heads
            rows = slice(head * D, (head + 1) * D)
            x, pos = rng.standard_normal(H), int(rng.integers(0, 64))
            want = rope_half(w_h[rows] @ x, pos)
            got_permuted = rope_interleaved(w_i[rows] @ x, pos)
            got = np.empty_like(got_permuted)
            got[perm] = got_permuted  # un-permute
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        # scores are unchanged: (RoPE q) . (RoPE k) for q head 0 and k head 0
        x, y = rng.standard_normal(H), rng.standard_normal(H)
        qk_h = rope_half(w_h[:D] @ x, 3) @ rope_half(w_h[N * D:(N + 1) * D] @ y, 7)
        qk_i = rope_interleaved(w_i[:D] @ x, 3) @ rope_interleaved(w_i[N * D:(N + 1) * D] @ y, 7)
        np.testing.assert_allclose(qk_i, qk_h, rtol=1e-10)
    for name in half:
        if "qkv_proj" not in name:
            assert _bits_equal(half[name], inter[name])


# ----------------------------------------------------------------------------- config handling and errors
def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def hf_copy(untied, tmp_path):
    dst = tmp_path / "hf"
    shutil.copytree(untied[0], dst)
    return dst


def test_transformers4_style_config(hf_copy):
    def v4(cfg):
        cfg.pop("rope_parameters", None)
        cfg.update(rope_theta=500000.0, rope_scaling=None, eos_token_id=[2, 5])

    _edit_config(hf_copy, v4)
    with pytest.warns(UserWarning, match="eos_token_id"):
        config, _ = hf.read_hf_llama(hf_copy, segment_length=16)
    assert config.rope_theta == 500000.0 and config.eos_token_id == 2


def test_rope_scaling_warns(hf_copy):
    _edit_config(hf_copy, lambda c: c.update(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    with pytest.warns(UserWarning, match="'llama3'.*ignored by nanotron"):
        config, _ = hf.read_hf_llama(hf_copy, segment_length=16)
    assert config.rope_theta == 500000.0


def test_head_dim_mismatch(hf_copy):
    _edit_config(hf_copy, lambda c: c.update(head_dim=32))
    with pytest.raises(ValueError, match=r"config\.json: head_dim 32 != hidden_size / num_attention_heads"):
        hf.read_hf_llama(hf_copy, segment_length=16)


def test_bias_refused(hf_copy):
    _edit_config(hf_copy, lambda c: c.update(attention_bias=True))
    with pytest.raises(ValueError, match="attention_bias=true is not supported"):
        hf.read_hf_llama(hf_copy, segment_length=16)


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No config\.json in .*save_pretrained"):
        hf.read_hf_llama(tmp_path, segment_length=16)


def test_missing_safetensors(hf_copy):
    (hf_copy / "model.safetensors").rename(hf_copy / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"No \*\.safetensors.*pytorch_model\.bin.*not read"):
        hf.read_hf_llama(hf_copy, segment_length=16)


def test_missing_keys_listed(hf_copy):
    path = hf_copy / "model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "layers.1.mlp" not in k}
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"lacks 3 Llama weights.*model\.layers\.1\.mlp\.gate_proj\.weight"):
        hf.read_hf_llama(hf_copy, segment_length=16)


def test_bad_rope_layout(untied):
    with pytest.raises(ValueError, match="Unknown rope_layout 'neox'"):
        hf.read_hf_llama(untied[0], segment_length=16, rope_layout="neox")


# ----------------------------------------------------------------------------- the converter CLI
def test_cli_hf_to_infini(untied, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))
    try:
        import hf_to_infini
    finally:
        sys.path.pop(0)
    path, _ = untied
    out = hf_to_infini.main([f"--hf_path={path}", f"--output_dir={tmp_path / 'ckpt'}", "--segment_length=32",
                             "--balance_act_type=hard_sigmoid", "--balance_init_type=randn", "--tp=2",
                             "--rope_layout=interleaved"])
    config, state, raw = nt.read_nanotron_checkpoint(out)
    ref_config, ref = hf.read_hf_llama(path, segment_length=32, balance_act_type="hard_sigmoid",
                                       balance_init_type="randn", rope_layout="interleaved")
    assert config == ref_config
    for k, v in ref.items():
        assert _bits_equal(state[k], v.astype(ml_dtypes.bfloat16)), k
    on_disk = yaml.safe_load((out / "config.yaml").read_text())
    assert on_disk == raw and raw["parallelism"]["tp"] == 2
    assert raw["model"]["model_config"]["rope_interleaved"] is True
    assert raw["infini_attention"]["segment_length"] == 32
    assert raw["tokenizer"]["tokenizer_name_or_path"] == str(path)
