"""Shared fixtures. Tests never read ../shared: the nanotron fixture is copied into tests/data/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FIXTURE_A = DATA / "nanotron_A"
if str(ROOT) not in sys.path:  # tests run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fixture_a_dir() -> Path:
    return FIXTURE_A / "ckpt_tp1"


@pytest.fixture(scope="session")
def fixture_a_refs():
    import numpy as np

    return {name: dict(np.load(FIXTURE_A / f"ref_{name}.npz")) for name in ("main", "short", "exact")}
