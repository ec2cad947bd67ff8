"""scripts/ship_demo_model.py: a trained export becomes a demo model directory with bf16 weights, nanotron's numerics,
its training config, an evaluation summary of the given results (each file once) and a model card."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from infini_jax.api import load_model
from infini_jax.checkpoint import save_converted
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import ship_demo_model  # noqa: E402  (scripts/ is not a package)

DEMO = Path(DEMO_TOKENIZER_PATH).parent / "demo_model"


def _params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())


def _record(i: int, length: int, exact: bool) -> dict:
    return {"id": f"p{i}", "context_length": length, "depth_percent": 50.0, "haystack": "classic", "answer": "48213",
            "generation": "48213" if exact else "48123", "exact": exact, "correct": exact, "needle_segment": 0,
            "num_segments": length // 256, "key_near_segment_boundary": False}


@pytest.fixture()
def trained_export(tmp_path):
    """A training run's export as the job writes it: fp32 weights (the demo model's, moved off the bf16 grid),
    the numerics it trained with (cuDNN attention, one-pass memory einsums), its card and training config."""
    model = load_model(DEMO, dtype="bfloat16", param_dtype="float32", attention_impl="cudnn",
                       memory_precision="default")
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * (1 + 1e-3), state))
    source = save_converted(model, tmp_path / "run" / "model")
    card = json.loads((DEMO / "model_card.json").read_text())
    (source / "model_card.json").write_text(json.dumps({"trained": True, "steps": card["steps"]}))
    shutil.copyfile(DEMO / "training_config.json", source / "training_config.json")
    return source


def test_ship_rounds_to_bf16_sets_nanotrons_numerics_and_summarizes_the_results(trained_export, tmp_path):
    results = tmp_path / "results.jsonl"
    records = [_record(0, 1024, True), _record(1, 1024, False), _record(2, 2048, True)]
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    other_seed = tmp_path / "seed2.jsonl"  # another evaluation seed: the same ids, other prompts
    other_seed.write_text(json.dumps(_record(2, 2048, False)) + "\n")
    dest = ship_demo_model.ship(trained_export, tmp_path / "demo", name="K9", note="four prompts",
                                results=[str(results), str(other_seed), str(tmp_path / "." / "results.jsonl")])

    config = json.loads((dest / "infini_config.json").read_text())
    assert (config["param_dtype"], config["attention_impl"], config["memory_precision"]) == (
        "bfloat16", "xla", "highest")
    source = _params(load_model(trained_export, dtype="float32", param_dtype="float32", attention_impl="xla"))
    shipped = _params(load_model(dest, dtype="float32", param_dtype="float32"))
    rounded = jax.tree.map(lambda x: np.asarray(x.astype(jax.numpy.bfloat16).astype(np.float32)), source)
    assert jax.tree.all(jax.tree.map(np.array_equal, shipped, rounded))
    assert not jax.tree.all(jax.tree.map(np.array_equal, shipped, source))  # the source was off the bf16 grid

    evaluation = json.loads((dest / "evaluation_h200.json").read_text())
    assert evaluation["overall"]["num_samples"] == 4 and evaluation["note"] == "four prompts"  # results.jsonl once
    card = json.loads((dest / "model_card.json").read_text())
    assert card["trained"] and card["steps"] > 0 and card["exact_match_h200"] == {"1024": 0.5, "2048": 0.5}
    assert "Run K9" in card["description"]
    assert (dest / "training_config.json").read_bytes() == (trained_export / "training_config.json").read_bytes()

    assert json.loads((dest / "infini_config.json").read_text())["memory_dtype"] == "float32"
    assert card["exact_match_h200_note"] == "four prompts"
    leftovers = sorted(p.name for p in dest.parent.iterdir())
    assert leftovers == ["demo", "results.jsonl", "run", "seed2.jsonl"]  # no temporary directory left
    with pytest.raises(FileExistsError, match="overwrite"):
        ship_demo_model.ship(trained_export, dest, name="K9", results=[str(results)], note="again")
    with pytest.raises(ValueError, match="replace the source"):
        ship_demo_model.ship(trained_export, trained_export.parent, name="K9", results=[str(results)], note="",
                             overwrite=True)
    with pytest.raises(ValueError, match="no evaluation records"):
        (tmp_path / "empty.jsonl").write_text("")
        ship_demo_model.ship(trained_export, dest, name="K9", results=[str(results), str(tmp_path / "empty.jsonl")],
                             note="", overwrite=True)
    assert json.loads((dest / "evaluation_h200.json").read_text())["note"] == "four prompts"  # left as it was
    ship_demo_model.main([str(trained_export), "--name", "K9", "--results", str(results), "--note", "again",
                          "--dest", str(dest), "--overwrite"])
    assert json.loads((dest / "evaluation_h200.json").read_text())["note"] == "again"


def test_ship_refuses_an_untrained_source_and_missing_results(trained_export, tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(_record(0, 1024, True)) + "\n")
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        ship_demo_model.ship(trained_export, tmp_path / "a", name="K9", results=[str(tmp_path / "none.jsonl")],
                             note="")
    (trained_export / "training_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="training_config.json"):
        ship_demo_model.ship(trained_export, tmp_path / "b", name="K9", results=[str(results)], note="")
    (trained_export / "model_card.json").write_text(json.dumps({"trained": False}))
    with pytest.raises(ValueError, match="trained"):
        ship_demo_model.ship(trained_export, tmp_path / "c", name="K9", results=[str(results)], note="")
