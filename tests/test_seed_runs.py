"""scripts/seed_runs.sh: runs of one recipe side by side, resumed across time-limited invocations, and evaluations
of their exports (here the CPU smoke recipe, "GPU" 0 on a machine without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "seed_runs.sh"
SMOKE = "configs/train_demo.py:cpu_smoke"


def _run(*args: str, outputs: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUTPUTS": str(outputs), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=600)


def test_seed_runs_trains_in_two_invocations_then_evaluates_the_export(tmp_path):
    outputs = tmp_path / "outputs"
    # cpu_smoke has a step budget; a tiny session length stops the run at its first log line (step 2 of 8).
    flags = ("--", "--config.optim.lr=0.002", "--config.probe.enabled=False")  # passed on to main.py
    first = _run("train", SMOKE, "S1:0:3:4", *flags, outputs=outputs, SESSION_SECONDS="0.001")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "run the same command again" in first.stdout
    assert not (outputs / "S1" / "model").exists()
    second = _run("train", SMOKE, "S1:0:3:4", *flags, outputs=outputs)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "| S1 |" in second.stdout  # scripts/training_runs.py's table
    log = (outputs / "S1.log").read_text()
    assert "Resumed from step 2" in log
    config = json.loads((outputs / "S1" / "model" / "training_config.json").read_text())["config"]
    assert (config["seed"], config["data_seed"], config["optim"]["lr"]) == (3, 4, 0.002)

    evaluated = _run("eval", SMOKE, "0:S1:7", outputs=outputs, LENGTHS="(512,)", KEYS="2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [json.loads(line) for line in (outputs / "S1_e7" / "eval" / "results.jsonl").read_text().splitlines()]
    assert {r["context_length"] for r in rows} == {512} and len(rows) == 8  # 2 depths x 2 haystacks x 2 keys


def test_seed_runs_rejects_a_malformed_run_and_a_missing_export_before_starting_anything(tmp_path):
    bad = _run("train", SMOKE, "S1:0:3:4", "S2:0:3", outputs=tmp_path)  # the second spec lacks its data seed
    assert bad.returncode == 2 and "NAME:GPU:SEED:DATA_SEED" in bad.stderr
    assert not (tmp_path / "S1.log").exists()  # the good first run was not started either
    missing = _run("eval", SMOKE, "0:nope:1234", outputs=tmp_path)
    assert missing.returncode == 2 and "train nope first" in missing.stderr
    no_keys = _run("eval", SMOKE, "0:nope:1234", outputs=tmp_path, KEYS="0")
    assert no_keys.returncode == 2 and "KEYS=0" in no_keys.stderr


def test_seed_runs_eval_fails_when_an_evaluation_fails(tmp_path):
    (tmp_path / "S1" / "model").mkdir(parents=True)  # not a model: main.py stops with an error
    failed = _run("eval", SMOKE, "0:S1:1234:1235", outputs=tmp_path)
    assert failed.returncode == 1
    assert "S1, evaluation seed 1234: failed" in failed.stderr and "seed 1235: failed" in failed.stderr
