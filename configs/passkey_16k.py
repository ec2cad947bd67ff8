"""Passkey retrieval on nanotron/llama3-16k-passkey-retrieval-eval (16K tokens: 16 segments of 1024).

The equivalent of nanotron's "16K Context Evaluation" with ``run_passkey_eval.py``: every depth 0, 5, ..., 100,
25 samples per depth, seed 42, 15 new tokens. This dataset has no num_shots / num_digits columns: those
filters are skipped (nanotron's final script raised a KeyError here)::

    python main.py --config=configs/passkey_16k.py --config.ckpt_path=checkpoints/fineweb_4gpu_300m_infini/30000

Offline: ./llama3-16k-passkey-retrieval-eval/train-00000-of-00001.parquet is found automatically, or pass
--config.dataset=/path/to/file.parquet. With 4 GPUs: --config.dp=4.
"""

from configs import common


def get_config():
    c = common.get_config()
    c.dataset = "nanotron/llama3-16k-passkey-retrieval-eval"  # ~16K-token prompts, 21 depths
    c.depths = common.ALL_DEPTHS  # 0, 5, ..., 100
    c.num_samples = 25  # per depth, after nanotron's shuffle(seed)
    c.num_shots = 0  # ignored: no such column in this dataset
    c.num_digits = 0  # ignored: no such column in this dataset
    c.seed = 42
    c.max_new_tokens = 15
    c.batch_size = 4  # 16K-token prompts
    c.prefill_chunk_tokens = 8192  # stream the prompt 8 segments at a time
    c.save_path = "results/passkey_16k"
    return c
