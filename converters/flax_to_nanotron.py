"""Converted infini-jax directory (or a nanotron checkpoint, to re-shard it) -> nanotron checkpoint at a TP size.

    python converters/flax_to_nanotron.py --ckpt_path=converted/30000 --output_dir=export/30000 --tp=2

Writes nanotron's exact layout: config.yaml, model_config.json, checkpoint_metadata.json and
model/.../model_<leaf>_pp-rank-P-of-PP_tp-rank-T-of-TP.safetensors (one bf16 tensor under "data" with
shard metadata), loadable by nanotron's load_weights and by infini-jax.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

try:
    import infini_jax  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infini_jax.api import load_model  # noqa: E402
from infini_jax.checkpoint import is_converted_dir, read_nanotron_yaml  # noqa: E402
from infini_jax.formats.nanotron import write_nanotron_checkpoint  # noqa: E402
from infini_jax.weights import state_from_model  # noqa: E402

_CKPT = flags.DEFINE_string("ckpt_path", None, "Converted infini-jax directory (or nanotron checkpoint).")
_OUT = flags.DEFINE_string("output_dir", None, "nanotron checkpoint step directory to create.")
_TP = flags.DEFINE_integer("tp", 1, "Tensor-parallel size of the written shards.")
_PP = flags.DEFINE_integer("pp", 1, "Pipeline-parallel size of the written layout.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "On-disk dtype (nanotron checkpoints are bfloat16).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")


def export(ckpt_path: str, output_dir: str, *, tp: int = 1, pp: int = 1, dtype: str = "bfloat16",
           overwrite: bool = False) -> Path:
    model = load_model(ckpt_path)
    yaml_config = read_nanotron_yaml(ckpt_path) if is_converted_dir(ckpt_path) else None
    state = state_from_model(model)
    return write_nanotron_checkpoint(output_dir, model.cfg, state, tp=tp, pp=pp, yaml_config=yaml_config,
                                     dtype=dtype, overwrite=overwrite)


def main(argv):
    del argv
    if not _CKPT.value or not _OUT.value:
        raise app.UsageError("--ckpt_path and --output_dir are required.")
    out = export(_CKPT.value, _OUT.value, tp=_TP.value, pp=_PP.value, dtype=_DTYPE.value,
                 overwrite=_OVERWRITE.value)
    print(f"Exported {_CKPT.value} -> {out} (tp={_TP.value}, pp={_PP.value})")


if __name__ == "__main__":
    app.run(main)
