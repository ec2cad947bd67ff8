"""Makes a trained run's export the shipped demo model (``infini_jax/assets/demo_model``, or ``--dest``).

    python scripts/ship_demo_model.py outputs/train_demo/model --name Q3 \
        --results runs/Q3_eval/eval/results.jsonl runs/Q3_16M/eval/results.jsonl \
        --note "the training job's evaluation on one H200 with the weights in nanotron's numerics"

What it writes, from the training job's ``workdir/model`` (``model_card.json`` with ``"trained": true``):
* the weights rounded once to bf16 (the dtype of nanotron checkpoints, so the nanotron export is bit-exact) and
  nanotron's numerics: XLA attention, fp32 memory einsums (``memory_precision="highest"``), whatever the run trained
  with (a run trained with ``attention_impl="cudnn"`` would otherwise not load on a CPU);
* ``training_config.json``, copied: the recipe that reproduces the run (``configs/train_demo.py`` should equal it,
  ``tests/test_demo_model_export.py``);
* ``evaluation_h200.json``: ``train_eval.summarize_eval`` over the ``--results`` files (the evaluation's
  ``results.jsonl``; a file given twice counted once), with ``--note``;
* ``model_card.json``: the run's card with the run's name, the exact match per length with ``--note`` (say whether
  it was measured on these bf16 weights or on the fp32 export) and how the weights were stored.

It refuses a source without a trained model card or its training config, a missing or empty results file, a
destination that is the source, and one that is not empty unless ``--overwrite``; the directory is built aside and
swapped in whole. Measure the model in the numerics it ships with: a training job's export is stored with them
(``infini_jax.train.PORTABLE_NUMERICS``; exports made before the eleventh session kept the training's, so set
``xla`` / ``highest`` in a copy's ``infini_config.json``), so ``--config.eval_only=True`` on it measures them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infini_jax.api import load_model  # noqa: E402
from infini_jax.checkpoint import save_converted, swap_in  # noqa: E402
from infini_jax.data.demo_tokenizer import DEMO_TOKENIZER_PATH  # noqa: E402
from infini_jax.results import read_results  # noqa: E402
from infini_jax.train import MODEL_CARD_FILE, PORTABLE_NUMERICS, TRAINING_CONFIG_FILE  # noqa: E402
from infini_jax.train_eval import summarize_eval  # noqa: E402

DEMO_MODEL_PATH = Path(DEMO_TOKENIZER_PATH).parent / "demo_model"
EVALUATION_FILE = "evaluation_h200.json"
SHIPPED_NUMERICS = {**PORTABLE_NUMERICS, "memory_dtype": "float32"}  # nanotron's, the fp32 memory state pinned too


def pooled_records(paths: list[str]) -> list[dict]:
    """The records of the results files, each file once (the same path given twice counts once). Prompt ids repeat
    across evaluation seeds (``--config.eval.seed``), so records are not merged by id."""
    records = []
    for path in dict.fromkeys(str(Path(p).resolve()) for p in paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--results {path}: no such file (pass the evaluation's results.jsonl).")
        found = read_results(path)
        if not found:
            raise ValueError(f"--results {path}: no evaluation records in it.")
        records += found
    return records


def ship(source: str | Path, dest: str | Path, *, name: str, results: list[str], note: str,
         overwrite: bool = False) -> Path:
    """Writes the demo model directory ``dest`` from the trained export ``source``, all or nothing: it is built in
    a temporary sibling and swapped in at the end. Returns ``dest``."""
    source, dest = Path(source).resolve(), Path(dest).resolve()
    if dest == source or source.is_relative_to(dest):
        raise ValueError(f"--dest {dest} would replace the source {source}; ship to another directory.")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} exists and is not empty; pass --overwrite to replace it.")
    card_path = source / MODEL_CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if not card.get("trained"):
        raise ValueError(f"{source} has no model card saying \"trained\": true; ship the export of a training run "
                         "(its workdir/model).")
    if not (source / TRAINING_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{source / TRAINING_CONFIG_FILE} is missing: the shipped model must carry the "
                                "recipe that reproduces it.")
    records = pooled_records(results)
    model = load_model(source, dtype="bfloat16", param_dtype="bfloat16", **SHIPPED_NUMERICS)
    evaluation = summarize_eval(records) | {"note": note}
    dest.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=dest.name + ".ship-", dir=dest.parent))
    try:
        save_converted(model, build, overwrite=True)  # the empty temporary directory
        shutil.copyfile(source / TRAINING_CONFIG_FILE, build / TRAINING_CONFIG_FILE)
        (build / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        card |= {"description": f"Run {name}, trained with infini_jax.train (training_config.json); evaluated as "
                                f"{EVALUATION_FILE} says.",
                 "exact_match_h200": {k: round(v["exact_match"], 4) for k, v in sorted(
                     evaluation["by_context_length"].items(), key=lambda kv: int(kv[0]))},
                 "exact_match_h200_note": note,
                 "weights": "bfloat16: the trained fp32 weights rounded once (the dtype of nanotron checkpoints; the "
                            "nanotron export is bit-exact); numerics set to nanotron's (XLA attention, fp32 memory "
                            "and memory einsums)"}
        (build / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        swap_in(build, dest)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a training run's export (workdir/model)")
    p.add_argument("--name", required=True, help="the run's name, for the model card")
    p.add_argument("--results", nargs="+", required=True, help="the evaluation's results.jsonl files")
    p.add_argument("--note", required=True, help="how and where the results were measured")
    p.add_argument("--dest", default=str(DEMO_MODEL_PATH))
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --dest")
    args = p.parse_args(argv)
    out = ship(args.source, args.dest, name=args.name, results=args.results, note=args.note,
               overwrite=args.overwrite)
    card = json.loads((out / MODEL_CARD_FILE).read_text())
    print(f"Shipped {args.source} as {out}: exact match {card['exact_match_h200']}")


if __name__ == "__main__":
    main()
