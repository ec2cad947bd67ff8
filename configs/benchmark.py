"""The full passkey benchmark: 1K, 2K, 4K and 8K tokens (1, 2, 4, 8 segments of 1024), one combined report.

The equivalent of nanotron's ``run_full_passkey_benchmark_300m.sh``: one evaluation per context length (its
own results directory, summary and heatmap under save_path/ctx_<length>), then a combined summary.json,
heatmap.png (depth x context length) and report in save_path showing how accuracy scales with the number of
segments::

    python main.py --config=configs/benchmark.py --config.ckpt_path=checkpoints/fineweb_4gpu_300m_infini/30000

Prompts are generated with exact token lengths (nanotron's datasets stop at 1K and 16K). Other lengths:
--config.context_lengths='(1024, 2048, 4096, 8192, 16384)'.
"""

from configs import common


def get_config():
    c = common.get_config()
    c.job = "benchmark_suite"  # one eval per context length + a combined report
    c.dataset = "generate"  # exact token lengths
    c.context_lengths = (1024, 2048, 4096, 8192)  # the script's sweep
    c.depths = common.ALL_DEPTHS  # 0, 5, ..., 100
    c.num_samples = 10  # per (context length, depth): 840 prompts in all
    c.num_digits = 4  # generate_data.py's default
    c.num_shots = 0
    c.max_new_tokens = 15
    c.batch_size = 8
    c.save_path = "results/benchmark"
    return c
