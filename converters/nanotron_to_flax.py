"""nanotron Infini-Attention checkpoint (any TP/PP layout) -> converted infini-jax directory (Orbax).

    python converters/nanotron_to_flax.py --ckpt_path=checkpoints/30000 --output_dir=converted/30000

Weights are merged from every shard's metadata and kept bit-exact in their stored dtype (bf16); the
source config.yaml is kept beside them so converters/flax_to_nanotron.py can export back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

try:
    import infini_jax  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infini_jax.checkpoint import save_converted  # noqa: E402
from infini_jax.formats.nanotron import read_nanotron_checkpoint  # noqa: E402
from infini_jax.weights import model_from_state  # noqa: E402

_CKPT = flags.DEFINE_string("ckpt_path", None, "nanotron checkpoint step dir (config.yaml + model/).")
_OUT = flags.DEFINE_string("output_dir", None, "Directory to create for the converted model.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")


def convert(ckpt_path: str, output_dir: str, overwrite: bool = False) -> Path:
    cfg, state, yaml_config = read_nanotron_checkpoint(ckpt_path)
    param_dtype = str(next(iter(state.values())).dtype)
    cfg = cfg.replace(param_dtype="bfloat16" if param_dtype == "bfloat16" else "float32")
    model = model_from_state(cfg, state)
    return save_converted(model, output_dir, nanotron_yaml=yaml_config, overwrite=overwrite)


def main(argv):
    del argv
    if not _CKPT.value or not _OUT.value:
        raise app.UsageError("--ckpt_path and --output_dir are required.")
    out = convert(_CKPT.value, _OUT.value, _OVERWRITE.value)
    logging.info("Converted %s -> %s", _CKPT.value, out)
    print(f"Converted {_CKPT.value} -> {out}")


if __name__ == "__main__":
    app.run(main)
