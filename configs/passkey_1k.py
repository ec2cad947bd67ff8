"""Passkey retrieval on nanotron/llama3-1024-passkey-retrieval-eval (1K tokens: one 1024-token segment).

The equivalent of nanotron's ``run_passkey_eval.py`` "Basic 1K Context Evaluation" (and of
``run_passkey_eval_300m.sh``): every depth 0, 5, ..., 100, 50 samples per depth, 0 shots, any digits,
seed 42, 15 new tokens::

    python main.py --config=configs/passkey_1k.py --config.ckpt_path=checkpoints/fineweb_4gpu_300m_infini/30000

Offline: put the parquet file at ./llama3-1024-passkey-retrieval-eval/train-00000-of-00001.parquet (found
automatically) or pass --config.dataset=/path/to/file.parquet. With 4 GPUs: --config.dp=4.
"""

from configs import common


def get_config():
    c = common.get_config()
    c.dataset = "nanotron/llama3-1024-passkey-retrieval-eval"  # 12,600 rows: 150 per (depth, num_shots)
    c.depths = common.ALL_DEPTHS  # 0, 5, ..., 100
    c.num_samples = 50  # per depth, after nanotron's shuffle(seed)
    c.num_shots = 0  # rows with 0 example passages
    c.num_digits = 0  # any pass-key length
    c.seed = 42
    c.max_new_tokens = 15
    c.batch_size = 16  # 1K-token prompts: 1050 samples in ~66 batches
    c.save_path = "results/passkey_1k"
    return c
