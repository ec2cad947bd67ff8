"""scripts/memory_read_share.py: the needle's share of the memory normaliser per head."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from infini_jax import random_model
from infini_jax.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  segment_length=8)


def test_needle_share_is_a_fraction_of_the_normaliser():
    from memory_read_share import read_shares

    model = random_model(CFG, seed=0)
    ids = np.random.default_rng(0).integers(0, 64, (1, 32))
    whole = read_shares(model, ids, needle_start=0, needle_len=24)  # every written token is "needle"
    part = read_shares(model, ids, needle_start=3, needle_len=5)
    for layer_w, layer_p in zip(whole["layers"], part["layers"], strict=True):
        assert len(layer_w["needle_share"]) == 4 and len(layer_w["gate"]) == 4
        np.testing.assert_allclose(layer_w["needle_share"], 1.0, atol=1e-4)
        assert all(0 < s < 1 for s in layer_p["needle_share"])
    with pytest.raises(ValueError, match="before the last segment"):
        read_shares(model, ids, needle_start=20, needle_len=5)
