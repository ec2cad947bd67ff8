"""Runs an infini-jax job described by a config file.

    python main.py --config=configs/demo.py
    python main.py --config=configs/passkey_16k.py --config.ckpt_path=checkpoints/30000 --config.num_samples=25
    python main.py --config=configs/long_context.py:32768,25 --config.ckpt_path=checkpoints/30000

Every field of the config can be overridden with --config.<field>=<value> (see configs/common.py).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from infini_jax import runner

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Job config file: configs/<name>.py[:variant].", lock_config=True)
flags.mark_flags_as_required(["config"])


def repeated_overrides(argv: list[str]) -> list[str]:
    """--config.<field> names given more than once. ml_collections does not let the last one win: repeated
    tuple overrides are concatenated ('(512,)' then '(1024,)' gives (512, 1024)), so a repeat is refused."""
    seen, repeated = set(), []
    for arg in argv:
        if arg.startswith("--config."):
            name = arg[2:].split("=", 1)[0]
            if name in seen and name not in repeated:
                repeated.append(name)
            seen.add(name)
    return repeated


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}: use --config.<field>=<value>.")
    repeated = repeated_overrides(sys.argv)
    if repeated:
        raise app.UsageError(
            f"{', '.join('--' + r for r in repeated)} given more than once: ml_collections would combine the "
            "values (tuples are concatenated), not keep the last. Give each --config.<field> once.")
    runner.run(FLAGS.config)  # joins a multi-host run if configured, logs the devices, runs config.job


if __name__ == "__main__":
    app.run(main)
