"""The shipped demo model: exported to nanotron's layout with the Flax -> nanotron converter, loaded back, it
gives the same generations (and bit-identical weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_train_demo_config_is_the_shipped_models_recipe_and_its_variants_the_earlier_ones():
    """configs/train_demo.py holds the shipped model's recipe (its training_config.json, up to where and how the
    run was written and evaluated); ``weighted_boundary`` is its name, ``xla`` differs only in the numerics, ``k1``
    and ``n560`` are the recipe before it (K1, the demo model of the eleventh to fourteenth sessions) and the step
    between, ``b2`` is the demo model before K1 (B2) and ``r256`` the one before that (L2)."""
    from configs import train_demo
    from infini_jax.train_schedule import stages_from_config

    shipped = json.loads((DEMO / "training_config.json").read_text())["config"]
    ours = json.loads(json.dumps(train_demo.get_config().to_dict()))  # tuples as the file holds them: lists
    for key in ("seed", "data_seed", "total_seconds", "total_steps", "model", "optim", "loss", "curriculum", "data",
                "init_std", "stop_gradient_between_segments", "tokenizer"):
        assert _without_later_options(ours[key], shipped[key]) == shipped[key], key
    assert (ours["seed"], ours["data_seed"], ours["total_seconds"]) == (3, 4, 560.0)
    assert ours["curriculum"]["stage_2"]["virtual_length_max"] == 2048.0
    assert (ours["model"]["attention_impl"], ours["model"]["memory_precision"]) == ("cudnn", "default")
    assert ours["data"]["needle_boundary_window"] == 0
    assert ours["data"]["answer_boundary_digits"] == [0, 0, 0, 0, 1, 2, 3, 4]

    def as_dict(variant):
        return json.loads(json.dumps(train_demo.get_config(variant).to_dict()))

    def differences(a, b):
        return {k: b[k] for k in a if a[k] != b[k]}

    assert as_dict("weighted_boundary") == ours
    portable = as_dict("xla")  # the same recipe in XLA numerics
    assert set(differences(ours, portable)) == {"model"}
    assert differences(ours["model"], portable["model"]) == {"attention_impl": "xla", "memory_precision": "highest"}
    n560, k1 = as_dict("n560"), as_dict("k1")  # the N runs (twelfth, thirteenth sessions) and K1 (tenth)
    assert set(differences(ours, n560)) == {"seed", "data_seed", "data"} and (n560["seed"], n560["data_seed"]) == (1, 2)
    assert differences(ours["data"], n560["data"]) == {"answer_boundary_digits": []}  # () = every digit alike
    assert set(differences(n560, k1)) == {"total_seconds", "data"} and k1["total_seconds"] == 380.0
    assert differences(n560["data"], k1["data"]) == {"needle_boundary_window": 8}
    b2 = as_dict("b2")  # B2: the K1 recipe is B2's with other numerics, seeds and budget
    assert set(differences(k1, b2)) == {"model", "seed", "data_seed", "total_seconds"}
    assert (b2["seed"], b2["data_seed"], b2["total_seconds"]) == (2, 3, 450.0)
    assert b2["model"] == portable["model"]
    previous = train_demo.get_config("r256")
    assert previous.curriculum.stage_2.virtual_length_max == 256.0
    assert previous.data.needle_boundary_share == 0.0 and previous.data.repeated_digit_share == 0.0
    last = stages_from_config(train_demo.get_config("short_rows").curriculum)[-1]  # the next experiment's
    assert (last.short_share, last.short_seq_len, last.virtual_length_max) == (0.3, 1024, 2048.0)
    late = stages_from_config(train_demo.get_config("late_options").curriculum)  # the sixth session's P runs
    assert [(s.repeated_digit_share, s.needle_boundary_share) for s in late] == [(0.0, 0.0), (0.0, 0.0), (None, None)]
    for variant in ("r256", "short_rows", "late_options"):  # modify B2's recipe
        got = as_dict(variant)
        assert (got["seed"], got["data_seed"], got["total_seconds"], got["model"]) == (2, 3, 450.0, b2["model"])
    with pytest.raises(ValueError, match="Unknown variant 'fast'"):
        train_demo.get_config("fast")


def test_boundary_repair_trains_on_answers_whose_first_digit_opens_a_segment(tmp_path):
    """configs/train_demo.py:boundary_repair fine-tunes an export (here the demo model) on rows whose answer's first
    digit is the first token of a segment, in every batch: the evaluation's case at lengths that are multiples of
    the segment. It keeps the export's XLA numerics, so it runs on a CPU."""
    from configs import train_demo
    from infini_jax.train import Trainer

    config = train_demo.get_config("boundary_repair")
    config.workdir = str(tmp_path)
    with pytest.raises(ValueError, match="--config.init_from="):  # required: a random model is nothing to repair
        Trainer(config)
    config.init_from = str(DEMO)
    config.probe.enabled = False
    config.eval.enabled = False
    trainer = Trainer(config)
    segment = trainer.model_cfg.segment_length
    for _ in range(3):
        batch = trainer.make_batch(trainer.curriculum.stage)
        assert batch["input_ids"].shape == (16, 1024)
        # answer_mask[r, t] = 1: token t + 1 is an answer target (5 digits and the "." after them); the first digit
        # sits at a segment's first position.
        first_digit = np.argmax(batch["answer_mask"] > 0, axis=1) + 1
        assert np.all(batch["answer_mask"].sum(axis=1) == 6) and np.all(first_digit % segment == 0), first_digit
    trainer.train(stop_at_step=1, save_at_end=False)  # one update of the fp32 parameters, on CPU
    assert trainer.step == 1 and np.isfinite(trainer.history[-1]["loss"])


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


def test_cudnn_attention_off_a_gpu_names_the_fix(tmp_path):
    """The demo recipe trains with cuDNN attention; on a CPU the model says so and how to switch, rather than
    JAX's 'cuDNN is not detected'."""
    import jax
    import jax.numpy as jnp

    from infini_jax.attention import segment_attention

    if jax.default_backend() == "gpu":
        pytest.skip("a GPU backend runs cuDNN attention")
    q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
    fix = "attention_impl='cudnn' needs an NVIDIA GPU.*config.attention_impl=xla.*config.model.attention_impl=xla"
    with pytest.raises(ValueError, match=fix):
        segment_attention(q, q, q, "cudnn")
    from configs import train_demo
    from infini_jax.train import Trainer

    config = train_demo.get_config()
    config.workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=fix):  # the demo recipe on a CPU: at once, before any data is built
        Trainer(config)
