"""Hugging Face Llama -> nanotron Infini-Attention checkpoint (usable by nanotron and by infini-jax).

    python converters/hf_to_infini.py --hf_path=meta-llama-3-8b --output_dir=ckpt/0 \\
        --segment_length=1024 --balance_act_type=orig_sigmoid --balance_init_type=zeros \\
        --rope_layout=half --tp=1

``--rope_layout=half`` keeps HF's weights and writes ``rope_interleaved: false``; ``interleaved`` permutes
the q/k rows of every head and writes ``rope_interleaved: true`` (see infini_jax/formats/hf_llama.py).
Only safetensors weights are read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import infini_jax  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infini_jax.formats.hf_llama import ROPE_LAYOUTS, read_hf_llama  # noqa: E402
from infini_jax.formats.nanotron import write_nanotron_checkpoint  # noqa: E402

_ACTS = ("orig_sigmoid", "orig_tanh", "hard_sigmoid", "tanh_abs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_path", required=True, help="HF model dir with config.json and *.safetensors.")
    p.add_argument("--output_dir", required=True, help="Checkpoint step dir to create (e.g. ckpt/0).")
    p.add_argument("--segment_length", type=int, required=True, help="Infini-Attention segment length.")
    p.add_argument("--balance_act_type", default="orig_sigmoid", choices=_ACTS, help="Gate activation.")
    p.add_argument("--balance_init_type", default="zeros", choices=("zeros", "randn", "constant"),
                   help="Initial balance factors: zeros, N(0, 1) from --seed, or --balance_init_value.")
    p.add_argument("--balance_init_value", type=float, default=None, help="Constant balance factor value.")
    p.add_argument("--rope_layout", default="half", choices=ROPE_LAYOUTS, help="See the module docstring.")
    p.add_argument("--turn_on_memory", default=True, action=argparse.BooleanOptionalAction,
                   help="Infini memory on (default) or off (segment-local attention only).")
    p.add_argument("--seed", type=int, default=0, help="Seed for --balance_init_type=randn.")
    p.add_argument("--tp", type=int, default=1, help="Tensor-parallel size of the written shards.")
    p.add_argument("--pp", type=int, default=1, help="Pipeline-parallel size of the written shards.")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                   help="On-disk dtype (nanotron trains in bfloat16).")
    p.add_argument("--tokenizer", default=None, help="tokenizer_name_or_path for config.yaml "
                   "(default: --hf_path).")
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    config, state = read_hf_llama(
        args.hf_path, segment_length=args.segment_length, balance_act_type=args.balance_act_type,
        balance_init_type=args.balance_init_type, balance_init_value=args.balance_init_value,
        rope_layout=args.rope_layout, turn_on_memory=args.turn_on_memory, seed=args.seed)
    out = write_nanotron_checkpoint(
        args.output_dir, config, state, tp=args.tp, pp=args.pp, dtype=args.dtype, overwrite=args.overwrite,
        tokenizer_name_or_path=args.tokenizer or str(args.hf_path))
    print(f"Wrote nanotron Infini checkpoint ({config.num_layers} layers, tp={args.tp}, pp={args.pp}, "
          f"rope_interleaved={config.rope_interleaved}) to {out}")
    return out


if __name__ == "__main__":
    main()
