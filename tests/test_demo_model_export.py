"""The shipped demo model: exported to nanotron's layout with the Flax -> nanotron converter, loaded back, it
gives the same generations (and bit-identical weights)."""

from __future__ import annotations

import json

import numpy as np
from conftest import ROOT

from infini_jax import GenerationConfig, Generator, load_model
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH
from infini_jax.data.haystack import CLASSIC_HAYSTACK
from infini_jax.data.prompts import build_passkey_prompt
from infini_jax.data.tokenizer import load_tokenizer
from infini_jax.formats.nanotron import read_nanotron_checkpoint, write_nanotron_checkpoint
from infini_jax.weights import state_from_model

DEMO = ROOT / "infini_jax" / "assets" / "demo_model"


def test_demo_model_is_trained_and_exports_to_nanotron_with_identical_generations(tmp_path):
    card = json.loads((DEMO / "model_card.json").read_text())
    assert card["trained"] is True
    model = load_model(DEMO, dtype="float32")
    assert model.cfg.memory_query.value == "rotated"  # nanotron's numerics: the export behaves the same there
    export = write_nanotron_checkpoint(tmp_path / "nanotron", model.cfg, state_from_model(model, dtype="bfloat16"),
                                       tp=2)
    _, exported_state, yaml_cfg = read_nanotron_checkpoint(export)
    assert yaml_cfg["infini_attention"]["segment_length"] == model.cfg.segment_length
    for name, value in state_from_model(model).items():  # bf16 weights: the round trip is exact
        np.testing.assert_array_equal(exported_state[name].astype(np.float32), value, err_msg=name)

    back = load_model(export, dtype="float32")
    tok = load_tokenizer(str(DEMO_TOKENIZER_PATH))
    prompts = [build_passkey_prompt(tok, context_length=n, depth_percent=d, passkey=key,
                                    haystack_text=CLASSIC_HAYSTACK).input_ids
               for n, d, key in ((700, 20, "48213"), (1100, 80, "90517"))]
    gen = GenerationConfig(max_new_tokens=5, batch_size=2)
    ours = Generator(model, gen).generate(prompts)
    theirs = Generator(back, gen).generate(prompts)
    assert ours == theirs
    assert [tok.decode(t) for t in ours] == ["48213", "90517"]  # and the trained model retrieves the keys


def test_train_demo_config_is_the_shipped_models_recipe_and_r256_the_previous_one():
    """configs/train_demo.py holds the shipped model's recipe (its training_config.json, up to where and how the
    run was written and evaluated); the ``r256`` variant is the previous demo model's (L2)."""
    from configs import train_demo
    from infini_jax.train_schedule import stages_from_config

    shipped = json.loads((DEMO / "training_config.json").read_text())["config"]
    ours = json.loads(json.dumps(train_demo.get_config().to_dict()))  # tuples as the file holds them: lists
    for key in ("seed", "data_seed", "total_seconds", "total_steps", "model", "optim", "loss", "curriculum", "data",
                "init_std", "stop_gradient_between_segments", "tokenizer"):
        assert _without_later_options(ours[key], shipped[key]) == shipped[key], key
    assert ours["curriculum"]["stage_2"]["virtual_length_max"] == 2048.0
    previous = train_demo.get_config("r256")
    assert previous.curriculum.stage_2.virtual_length_max == 256.0
    assert previous.data.needle_boundary_share == 0.0 and previous.data.repeated_digit_share == 0.0
    last = stages_from_config(train_demo.get_config("short_rows").curriculum)[-1]  # the next experiment's
    assert (last.short_share, last.short_seq_len, last.virtual_length_max) == (0.3, 1024, 2048.0)
    late = stages_from_config(train_demo.get_config("late_options").curriculum)  # the sixth session's P runs
    assert [(s.repeated_digit_share, s.needle_boundary_share) for s in late] == [(0.0, 0.0), (0.0, 0.0), (None, None)]
    fast = json.loads(json.dumps(train_demo.get_config("fast").to_dict()))  # the tenth session's K runs
    assert {k for k in ours if fast[k] != ours[k]} == {"model", "total_seconds"} and fast["total_seconds"] == 380.0
    assert {k: v for k, v in fast["model"].items() if ours["model"][k] != v} == {
        "attention_impl": "cudnn", "memory_precision": "default"}  # only the numerics and the budget differ


# Options added after the shipped model was trained whose "off" value is not 0 / empty: the value it was trained with.
NEUTRAL_LATER_OPTIONS = {"varied_texts": 1,  # one generated text
                         "repeated_digit_span": "adjacent"}  # the repeated digit copies its predecessor


def _without_later_options(ours, shipped):
    """``ours`` less the options added after the shipped model was trained, which must be off (0 / empty, or their
    NEUTRAL_LATER_OPTIONS value)."""
    if not isinstance(ours, dict) or not isinstance(shipped, dict):
        return ours
    later = set(ours) - set(shipped)
    assert all(not ours[k] or NEUTRAL_LATER_OPTIONS.get(k) == ours[k] for k in later), {k: ours[k] for k in later}
    return {k: _without_later_options(v, shipped[k]) for k, v in ours.items() if k in shipped}
