"""Sharding over a ("data", "model") mesh: same logits and tokens as one device, weights in their shards.

The multi-device checks run in a subprocess (``tests/sharding_worker.py``) with 8 simulated CPU devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` only works if set before jax is imported, and this
pytest process (and the other test modules in it) must keep its own single device. The checks that need
no devices run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from infini_jax import sharding
from infini_jax.config import ModelConfig
from infini_jax.model import InfiniLlama

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("sharding_worker.py")
WORKER_CHECKS = [
    "forward_and_generate_dp2_tp4", "forward_and_generate_tp2", "forward_and_generate_dp8",
    "forward_and_generate_tp4", "sharded_init", "cache_shardings", "constrain_with_mesh",
    "fixture_nanotron_tp4", "fixture_converted_dp2_tp4", "error_tp_not_dividing_heads",
    "error_dp_tp_exceed_devices", "error_dp_tp_below_devices", "error_generator_batch_not_divisible_by_dp",
    "make_mesh_fill_dp",
]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"sharding worker failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


def test_worker_ran_every_check(worker_results):
    assert sorted(worker_results) == sorted(WORKER_CHECKS)


@pytest.mark.parametrize("name", WORKER_CHECKS)
def test_multi_device(worker_results, name):
    result = worker_results.get(name)
    assert result is not None, f"check {name} did not run"
    assert result["ok"], result["detail"]


# ----------------------------------------------------------------------------- no devices needed
TINY = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=8, num_kv_heads=8,
                  segment_length=8)


def test_pp_refused_with_advice():
    with pytest.raises(ValueError, match=r"Pipeline parallelism \(pp=2\) is not supported.*tensor parallelism"):
        sharding.make_mesh(pp=2)
    with pytest.raises(ValueError, match="use tp=4 instead"):
        sharding.check_pp(2, tp_hint=4)
    sharding.check_pp(1)


def test_tp_must_divide_heads():
    with pytest.raises(ValueError, match=r"num_attention_heads=8 is not divisible by tp=3; num_key_value_heads=8 "
                                         r"is not divisible by tp=3.*use tp in \[1, 2, 4, 8\]"):
        sharding.validate(TINY, tp=3)
    with pytest.raises(ValueError, match=r"intermediate_size=180 is not divisible by tp=8.*use tp in \[1, 2, 4\]"):
        sharding.validate(TINY.replace(intermediate_size=180), tp=8)
    sharding.validate(TINY, dp=2, tp=8, batch=4)


def test_batch_must_divide_by_dp():
    with pytest.raises(ValueError, match="batch_size=3 is not divisible by dp=2"):
        sharding.validate(TINY, dp=2, batch=3)


def test_more_devices_than_available():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"{2 * n} devices requested, but only {n} device\(s\) are available"):
        sharding.make_mesh(dp=2, tp=n)


def test_logical_to_spec():
    P = jax.sharding.PartitionSpec
    assert sharding.logical_to_spec(("embed", "heads", "head_dim")) == P(None, "model", None)
    assert sharding.logical_to_spec(("batch", "kv_heads", None, None)) == P("data", "model", None, None)
    # A mesh axis is used at most once; axes the mesh lacks are dropped (replicated).
    assert sharding.logical_to_spec(("heads", "mlp")) == P("model", None)
    assert sharding.logical_to_spec(("batch", "heads"), mesh_axes=("model",)) == P(None, "model")
    assert sharding.logical_to_spec(("embed", "mlp"), [("embed", "data"), ("mlp", "model")]) == P("data", "model")
    with pytest.raises(ValueError, match="Logical axis 'experts' has no sharding rule"):
        sharding.logical_to_spec(("experts",))


def test_param_shardings_structure_on_one_device():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: InfiniLlama(TINY, rngs=nnx.Rngs(0)))
    shardings = sharding.param_shardings(abstract, mesh)
    pure = nnx.state(abstract, nnx.Param).to_pure_dict()
    assert jax.tree.structure(shardings) == jax.tree.structure(pure)
    assert shardings["layers"][0]["mlp"]["down_proj"].spec == jax.sharding.PartitionSpec("model", None)
    assert shardings["embedding"].spec == jax.sharding.PartitionSpec("model", None)


def test_constrain_is_a_no_op_without_mesh():
    x = jax.numpy.ones((2, 3))
    assert sharding.constrain(x, ("batch", None)) is x


def test_distributed_not_configured(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.maybe_initialize_distributed() is False
    assert sharding.maybe_initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match=r"partly configured.*process_id \(JAX_PROCESS_ID\)"):
        sharding.maybe_initialize_distributed(coordinator_address="host0:1234", num_processes=2)


def test_load_model_bf16_with_one_device_mesh(fixture_a_dir):
    from infini_jax.api import load_model

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    model = load_model(fixture_a_dir, dtype="bfloat16", mesh=mesh)
    q = model.layers[0].attn.q_proj.get_value()
    assert q.dtype == jax.numpy.bfloat16
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
    with pytest.raises(ValueError, match="either mesh="):
        load_model(fixture_a_dir, mesh=mesh, place=sharding.place_fn(mesh))
