"""Converter command lines: nanotron -> Flax (Orbax) -> nanotron at several TP/PP sizes, through files on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from infini_jax import load_model
from infini_jax.formats.nanotron import read_nanotron_checkpoint


def _cli(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "converters" / script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixture_a_dir):
    out = tmp_path_factory.mktemp("conv") / "converted"
    res = _cli("nanotron_to_flax.py", f"--ckpt_path={fixture_a_dir}", f"--output_dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_converted_dir_reproduces_nanotron_logits(converted, fixture_a_refs):
    data = fixture_a_refs["main"]
    for mode, key in (("rotated", "logits"), ("unrotated", "logits_unrotated_query")):
        model = load_model(converted, dtype="float32", memory_query=mode)
        assert np.abs(np.asarray(model(jnp.asarray(data["input_ids"]))) - data[key]).max() <= 1e-4


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 1), (2, 2)])
def test_round_trip_bit_exact(tmp_path, converted, fixture_a_dir, tp, pp):
    out = tmp_path / "export"
    res = _cli("flax_to_nanotron.py", f"--ckpt_path={converted}", f"--output_dir={out}", f"--tp={tp}", f"--pp={pp}")
    assert res.returncode == 0, res.stderr[-2000:]
    _, want, _ = read_nanotron_checkpoint(fixture_a_dir)
    cfg, got, yaml_cfg = read_nanotron_checkpoint(out)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name].view(np.uint16), want[name].view(np.uint16), err_msg=name)
    assert yaml_cfg["parallelism"]["tp"] == tp and yaml_cfg["infini_attention"]["segment_length"] == 16
    assert len(list((out / "model").rglob(f"*tp-rank-{tp - 1}-of-{tp}.safetensors"))) > 0


def test_missing_config_yaml_is_a_clear_error_and_writes_nothing(tmp_path):
    (tmp_path / "ckpt" / "model").mkdir(parents=True)
    out = tmp_path / "out"
    res = _cli("nanotron_to_flax.py", f"--ckpt_path={tmp_path / 'ckpt'}", f"--output_dir={out}")
    assert res.returncode != 0
    assert "config.yaml" in res.stderr
    assert not out.exists()


def test_load_model_on_a_non_checkpoint_dir_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
