"""Continued pre-training / fine-tuning of a converted (or nanotron) checkpoint on plain-text files::

    python main.py --config=configs/train_finetune.py --config.init_from=ckpts/30000 \
        --config.tokenizer=lvwerra/the-tokenizer-v1 --config.data.text_files=data/txt/ \
        --config.workdir=outputs/finetune
    python main.py --config=configs/train_finetune.py:cpu_smoke --config.workdir=/tmp/finetune_smoke   # CPU

``init_from``: a nanotron step directory (converted in memory), a converted directory or a Hugging Face Llama
folder (then also ``--config.model.segment_length=...``). The architecture comes from the checkpoint; only the
numerics in ``model`` apply. Text files are tokenised once (cached in workdir/text_tokens.npy) and cut into
windows of each stage's seq_len (documents packed as ``[BOS] text [EOS]``). ``data.source="mix"`` adds
synthetic passkey rows (needs a tokenizer that encodes each digit as one token).
Optimizer defaults follow nanotron's fine-tuning runs: a small global LR and a much larger balance-factor LR
(reference section 5: exp57 used 1e-5 / 0.01), no weight decay on the balance factors.
"""

import os

from ml_collections import config_dict

from configs import train_common
from configs.train_common import stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(variant: str = ""):
    c = train_common.get_config()
    c.workdir = "outputs/finetune"
    c.init_from = config_dict.placeholder(str)  # required: the checkpoint to start from
    c.require_init_from = True  # without init_from the job stops with an error naming it
    c.tokenizer = config_dict.placeholder(str)  # the checkpoint's tokenizer (None: the byte-level demo one)
    # Numerics only (the architecture is the checkpoint's). segment_length: Hugging Face Llama folders only.
    m = c.model
    for name in list(m.keys()):
        if name not in ("dtype", "param_dtype", "memory_dtype", "memory_query", "attention_impl", "memory_precision"):
            del m[name]
    m.segment_length = config_dict.placeholder(int)

    c.total_steps = 1000
    c.total_seconds = 0.0
    c.save_every = 200
    c.log_every = 10
    c.optim.lr = 3e-5
    c.optim.balance_factor_lr = 1e-2
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.1
    c.optim.balance_factor_weight_decay = 0.0
    c.loss.lm_weight = 1.0  # plain continued pre-training
    c.loss.answer_weight = 1.0  # only counts on passkey rows (data.source="mix")
    c.loss.needle_copy_weight = 0.5
    c.data.source = "text"
    # .txt files, directories (all *.txt inside) or globs, comma-separated; "haystack:<kind>" uses a built-in
    # text ("default", "classic", "generated").
    c.data.text_files = config_dict.placeholder(str)
    c.data.text_fraction = 0.75  # "mix": rows of text per batch
    c.curriculum = {"stage_0": stage("text_4k", 4096, 8, 1.0)}
    c.eval.context_lengths = (4096, 16384)
    c.eval.depths = (0, 25, 50, 75, 100)
    c.eval.num_samples = 4
    c.eval.haystacks = ("classic", "default")

    if variant == "cpu_smoke":
        # The nanotron fixture (2 layers, hidden 64, segments of 16 tokens, vocab 512) on built-in text.
        c.workdir = "/tmp/infini_finetune_smoke"
        c.init_from = os.path.join(ROOT, "tests", "data", "nanotron_A", "ckpt_tp1")
        c.model.dtype = "float32"
        c.data.text_files = "haystack:default"
        c.total_steps = 4
        c.save_every = 2
        c.log_every = 2
        c.optim.warmup_steps = 1
        c.curriculum = {"stage_0": stage("text_64", 64, 2, 1.0)}
        c.eval.enabled = False
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of train_finetune: use '' or 'cpu_smoke'.")
    return c
