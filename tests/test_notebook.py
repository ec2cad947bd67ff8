"""Executes notebooks/passkey_eval_gpu.ipynb end to end in smoke mode (INFINI_SMOKE=1: tiny CPU settings).

The kernel is this interpreter (a throw-away kernel spec pointing at ``sys.executable``), so the test works in a
fresh virtual environment without ``python -m ipykernel install``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "passkey_eval_gpu.ipynb"
KERNEL = "infini-jax-test"


def _missing() -> str | None:
    for module in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    for module in ("infini_jax.evaluate", "infini_jax.train", "configs.demo", "configs.train_demo"):
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
            return f"{module} does not exist yet: the notebook needs the evaluation and training jobs"
    return None


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "infini-jax (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("INFINI_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("INFINI_NOTEBOOK_OUT", str(tmp_path / "out"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.time()
    NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.time() - t0

    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "smoke mode" in outputs
    assert "overall accuracy:" in outputs
    assert "trained 6 steps" in outputs
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 4  # two heatmaps, the per-depth bars and the training curves
    model_dir = tmp_path / "out" / "train_demo" / "model"
    assert json.loads((model_dir / "model_card.json").read_text())["trained"] is True
    assert seconds < 90, f"the smoke notebook took {seconds:.0f}s"
