"""Reading the real nanotron fixture, writing nanotron checkpoints at any TP/PP, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from infini_jax.config import ModelConfig
from infini_jax.formats import nanotron as nt

FIXTURE = Path(__file__).parent / "data" / "nanotron_A" / "ckpt_tp1"
QKV0 = "model.decoder.0.pp_block.attn.qkv_proj.weight"
EMB = nt.EMBEDDING_NAME
BF16 = ml_dtypes.bfloat16


def _file(root: Path, name: str, tp: int = 1, t: int = 0, pp: int = 1, p: int = 0) -> Path:
    folder, leaf = nt._param_location(root, name)
    return folder / f"model_{leaf}_pp-rank-{p}-of-{pp}_tp-rank-{t}-of-{tp}.safetensors"


def _read_raw(path: Path) -> tuple[np.ndarray, dict]:
    with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor("data"), f.metadata()


def _assert_same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def _random_state(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = nt.expected_shapes(config)
    return {k: rng.standard_normal(s).astype(np.float32).astype(BF16) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def fixture_ckpt():
    return nt.read_nanotron_checkpoint(FIXTURE)


@pytest.fixture
def ckpt_copy(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit_yaml(ckpt: Path, fn) -> None:
    raw = yaml.safe_load((ckpt / "config.yaml").read_text())
    fn(raw)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(raw))


# ----------------------------------------------------------------------------- reading the fixture
def test_fixture_shapes_dtype_and_config(fixture_ckpt):
    config, state, raw = fixture_ckpt
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (512, 64, 176)
    assert (config.num_heads, config.num_kv_heads, config.num_layers, config.segment_length) == (4, 4, 2, 16)
    assert config.rope_interleaved and config.balance_act_type.value == "hard_sigmoid"
    assert raw["parallelism"]["tp"] == 1
    shapes = nt.expected_shapes(config)
    assert set(state) == set(shapes)
    for name, shape in shapes.items():
        assert state[name].shape == shape, name
        assert state[name].dtype == BF16, name


def test_fixture_values_bit_exact(fixture_ckpt):
    _, state, _ = fixture_ckpt
    for name in (QKV0, EMB, "model.decoder.1.pp_block.mlp.gate_up_proj.weight"):
        direct, _ = _read_raw(_file(FIXTURE, name))
        assert direct.tobytes() == state[name].tobytes()
    norm, meta = _read_raw(FIXTURE / "model/model/final_layer_norm/pp_block/model_weight.safetensors")
    assert meta == {} and norm.tobytes() == state[nt.FINAL_NORM_NAME].tobytes()


def test_fixture_balance_factors(fixture_ckpt):
    _, state, _ = fixture_ckpt
    bf0 = state["model.decoder.0.pp_block.attn.balance_factors"].astype(np.float32)
    bf1 = state["model.decoder.1.pp_block.attn.balance_factors"].astype(np.float32)
    np.testing.assert_array_equal(bf0, [3.0, 2.0, -1.84375, -0.365234375])
    np.testing.assert_array_equal(bf1, [-1.5859375, 2.625, -3.0, -0.224609375])


def test_latest_txt_root(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "1000")
    (tmp_path / "latest.txt").write_text("1000\n")
    config, state, _ = nt.read_nanotron_checkpoint(tmp_path)
    assert config.num_layers == 2 and len(state) == 17


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)])
def test_round_trip_fixture(fixture_ckpt, tmp_path, tp, pp):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=tp, pp=pp, yaml_config=raw)
    config2, state2, raw2 = nt.read_nanotron_checkpoint(out)
    assert config2 == config
    assert (raw2["parallelism"]["tp"], raw2["parallelism"]["pp"]) == (tp, pp)
    _assert_same_bits(state, state2)
    # pp: layer 0 and the embedding on rank 0, layer 1 and lm_head on the last rank.
    assert _file(out, EMB, tp, tp - 1, pp, 0).is_file()
    assert _file(out, "model.decoder.1.pp_block.attn.qkv_proj.weight", tp, 0, pp, pp - 1).is_file()
    assert _file(out, nt.LM_HEAD_NAME, tp, 0, pp, pp - 1).is_file()
    assert list(out.parent.iterdir()) == [out]  # no temporary dir left behind


def test_tp2_chunk_aware_split(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2, yaml_config=raw)
    data, meta = _read_raw(_file(out, QKV0, tp=2, t=0))
    assert meta["local_global_slices_pairs"] == (
        "0,32,None|None,None,None#0,32,None|None,None,None;32,64,None|None,None,None#64,96,None|None,None,None;"
        "64,96,None|None,None,None#128,160,None|None,None,None")
    assert meta["unsharded_shape"] == "(192, 64)" and meta["version"] == "1.2"
    full = state[QKV0]
    expected = np.concatenate([full[0:32], full[64:96], full[128:160]])
    assert data.tobytes() == expected.tobytes()
    gate_up = "model.decoder.0.pp_block.mlp.gate_up_proj.weight"
    _, meta = _read_raw(_file(out, gate_up, tp=2, t=1))
    assert meta["local_global_slices_pairs"] == (
        "0,88,None|None,None,None#88,176,None|None,None,None;88,176,None|None,None,None#264,352,None|None,None,None")
    _, meta = _read_raw(_file(out, "model.decoder.0.pp_block.attn.o_proj.weight", tp=2, t=1))
    assert meta["local_global_slices_pairs"] == "None,None,None|None,None,None#None,None,None|32,64,None"
    _, meta = _read_raw(_file(out, "model.decoder.0.pp_block.attn.balance_factors", tp=2, t=1))
    assert meta["local_global_slices_pairs"] == "None,None,None#2,4,None"
    assert meta["unsharded_shape"] == "(4,)"
    _, meta = _read_raw(_file(out, EMB, tp=2, t=0))
    assert meta["local_global_slices_pairs"] == "None,None,None|None,None,None#0,256,None|None,None,None"


def test_tp1_files_match_fixture(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, yaml_config=raw)
    ours = sorted(p.relative_to(out) for p in (out / "model").rglob("*.safetensors"))
    theirs = sorted(p.relative_to(FIXTURE) for p in (FIXTURE / "model").rglob("*.safetensors"))
    assert ours == theirs
    for rel in theirs:
        (a, ma), (b, mb) = _read_raw(out / rel), _read_raw(FIXTURE / rel)
        assert ma == mb, rel
        assert a.tobytes() == b.tobytes() and a.dtype == b.dtype, rel
    for rel in ("config.yaml", "model_config.json"):
        assert (out / rel).read_text() == (FIXTURE / rel).read_text()
    meta = (out / "checkpoint_metadata.json").read_text()
    assert meta == ('{\n  "dp": 1,\n  "metas": {\n    "consumed_train_samples": 0,\n'
                    '    "last_train_step": 0\n  },\n  "tp": 1,\n  "version": "1.2"\n}')


def test_gqa_random_round_trip_tp2(tmp_path):
    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, segment_length=8)
    state = _random_state(config)
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2)
    # reference 3.3's TP=2 example has exactly these dims
    _, meta = _read_raw(_file(out, QKV0, tp=2, t=0))
    assert meta["local_global_slices_pairs"] == (
        "0,32,None|None,None,None#0,32,None|None,None,None;32,48,None|None,None,None#64,80,None|None,None,None;"
        "48,64,None|None,None,None#96,112,None|None,None,None")
    assert meta["unsharded_shape"] == "(128, 64)"
    config2, state2, raw = nt.read_nanotron_checkpoint(out)
    assert config2 == config and raw["parallelism"]["tp"] == 2
    assert raw["infini_attention"]["segment_length"] == 8
    _assert_same_bits(state, state2)


def test_tied_embeddings_round_trip(tmp_path):
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=2, tie_word_embeddings=True)
    state = _random_state(config)
    assert nt.LM_HEAD_NAME not in state
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2)
    assert not (out / "model" / "model" / "lm_head").exists()
    config2, state2, _ = nt.read_nanotron_checkpoint(out)
    assert config2.tie_word_embeddings
    _assert_same_bits(state, state2)


def test_float32_state_cast_and_kept(tmp_path):
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1)
    rng = np.random.default_rng(1)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in nt.expected_shapes(config).items()}
    _, bf, _ = nt.read_nanotron_checkpoint(nt.write_nanotron_checkpoint(tmp_path / "bf", config, state))
    _assert_same_bits({k: v.astype(BF16) for k, v in state.items()}, bf)
    _, f32, raw = nt.read_nanotron_checkpoint(
        nt.write_nanotron_checkpoint(tmp_path / "f32", config, state, dtype="float32"))
    _assert_same_bits(state, f32)
    assert raw["model"]["dtype"] == "float32"


def test_numpy2_unsharded_shape(ckpt_copy):
    assert nt.parse_unsharded_shape("(np.int64(192), 64)") == (192, 64)
    assert nt.parse_unsharded_shape("(192, 64)") == (192, 64)
    assert nt.parse_unsharded_shape("(4,)") == (4,)
    with pytest.raises(ValueError, match="unsharded_shape"):
        nt.parse_unsharded_shape("__import__('os')")
    path = _file(ckpt_copy, QKV0)
    data, meta = _read_raw(path)
    save_file({"data": data}, str(path), metadata={**meta, "unsharded_shape": "(np.int64(192), 64)"})
    _, state, _ = nt.read_nanotron_checkpoint(ckpt_copy)
    assert state[QKV0].tobytes() == data.tobytes()


# ----------------------------------------------------------------------------- reader errors
def test_missing_config_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No config\.yaml in .*config\.yaml and model/"):
        nt.read_nanotron_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nt.read_nanotron_config(tmp_path / "nope")


def test_missing_model_dir(ckpt_copy):
    shutil.rmtree(ckpt_copy / "model")
    with pytest.raises(FileNotFoundError, match=r"No model/ folder in .*ckpt"):
        nt.read_nanotron_checkpoint(ckpt_copy)


def test_missing_weight_file(ckpt_copy):
    path = _file(ckpt_copy, "model.decoder.1.pp_block.attn.balance_factors")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="Missing weight file") as e:
        nt.read_nanotron_checkpoint(ckpt_copy)
    assert str(path) in str(e.value) and "hf_to_infini" in str(e.value)


def test_shards_disagree_on_unsharded_shape(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2, yaml_config=raw)
    path = _file(out, QKV0, tp=2, t=1)
    data, meta = _read_raw(path)
    save_file({"data": data}, str(path), metadata={**meta, "unsharded_shape": "(200, 64)"})
    with pytest.raises(ValueError, match=r"disagree on unsharded_shape.*\(192, 64\).*\(200, 64\)") as e:
        nt.read_nanotron_checkpoint(out)
    assert str(path) in str(e.value) and str(_file(out, QKV0, tp=2, t=0)) in str(e.value)


def test_missing_tp_shard(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2, yaml_config=raw)
    _file(out, QKV0, tp=2, t=1).unlink()
    with pytest.raises(ValueError, match="do not tile.*cover 6144 of 12288"):
        nt.read_nanotron_checkpoint(out)


def test_wrong_shape_tensor(ckpt_copy):
    path = ckpt_copy / "model/model/decoder/0/pp_block/input_layernorm/model_weight.safetensors"
    save_file({"data": np.ones(32, dtype=BF16)}, str(path), metadata={})
    with pytest.raises(ValueError, match=r"shape \(32,\), but config.yaml implies \(64,\)") as e:
        nt.read_nanotron_checkpoint(ckpt_copy)
    assert str(path) in str(e.value)


def test_config_does_not_match_weights(ckpt_copy):
    _edit_yaml(ckpt_copy, lambda r: r["model"]["model_config"].update(intermediate_size=128))
    with pytest.raises(ValueError, match=r"\(256, 64\).*does not match"):
        nt.read_nanotron_checkpoint(ckpt_copy)


def test_missing_infini_section(ckpt_copy):
    _edit_yaml(ckpt_copy, lambda r: r.pop("infini_attention"))
    with pytest.raises(ValueError, match=r"config\.yaml has no 'infini_attention' section"):
        nt.read_nanotron_checkpoint(ckpt_copy)


def test_unknown_activation(ckpt_copy):
    _edit_yaml(ckpt_copy, lambda r: r["infini_attention"].update(balance_act_type="relu6"))
    with pytest.raises(ValueError, match=r"config\.yaml.*'relu6'.*hard_sigmoid"):
        nt.read_nanotron_checkpoint(ckpt_copy)


def test_unsafe_yaml_refused(ckpt_copy):
    (ckpt_copy / "config.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ValueError, match="yaml.safe_load"):
        nt.read_nanotron_config(ckpt_copy)


# ----------------------------------------------------------------------------- writer errors
def test_tp_must_divide_heads(fixture_ckpt, tmp_path):
    config, state, _ = fixture_ckpt
    with pytest.raises(ValueError, match=r"tp=3 does not divide .*num_attention_heads"):
        nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=3)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_state(fixture_ckpt, tmp_path):
    config, state, _ = fixture_ckpt
    bad = {**state, QKV0: state[QKV0][:100]}
    with pytest.raises(ValueError, match=r"qkv_proj.weight has shape \(100, 64\).*\(192, 64\)"):
        nt.write_nanotron_checkpoint(tmp_path / "out", config, bad)
    missing = {k: v for k, v in state.items() if k != EMB}
    with pytest.raises(ValueError, match="missing.*token_embedding"):
        nt.write_nanotron_checkpoint(tmp_path / "out", config, missing)
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_leaves_nothing(fixture_ckpt, tmp_path, monkeypatch):
    config, state, raw = fixture_ckpt
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(nt, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        nt.write_nanotron_checkpoint(tmp_path / "out", config, state, yaml_config=raw)
    assert list(tmp_path.iterdir()) == []


def test_overwrite(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        nt.write_nanotron_checkpoint(out, config, state, yaml_config=raw)
    assert (out / "keep.txt").is_file()
    nt.write_nanotron_checkpoint(out, config, state, tp=2, yaml_config=raw, overwrite=True)
    assert not (out / "keep.txt").exists()
    _assert_same_bits(state, nt.read_nanotron_checkpoint(out)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exp_rank_suffix_and_stale_topology(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2, yaml_config=raw)
    for t in range(2):
        path = _file(out, QKV0, tp=2, t=t)
        path.rename(path.with_name(path.name.replace(".safetensors", "_exp-rank-0-of-1.safetensors")))
    _assert_same_bits(state, nt.read_nanotron_checkpoint(out)[1])
    shutil.copy(_file(FIXTURE, QKV0), _file(out, QKV0, tp=1, t=0))  # a stale TP=1 file next to TP=2 ones
    with pytest.raises(ValueError, match="different pp/tp sizes.*remove the stale files"):
        nt.read_nanotron_checkpoint(out)


def test_synthesised_yaml_has_nanotron_sections(fixture_ckpt, tmp_path):
    config, state, raw = fixture_ckpt
    out = nt.write_nanotron_checkpoint(tmp_path / "out", config, state, tp=2, pp=2)
    ours = yaml.safe_load((out / "config.yaml").read_text())
    assert ours.keys() == raw.keys()
    for section, value in raw.items():
        if isinstance(value, dict):
            assert ours[section].keys() == value.keys(), section
    assert ours["model"]["model_config"] == raw["model"]["model_config"]
    assert ours["infini_attention"]["balance_act_type"] == "hard_sigmoid"
    assert (ours["parallelism"]["tp"], ours["parallelism"]["pp"]) == (2, 2)
