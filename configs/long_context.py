"""Long-context passkey retrieval with generated prompts: 32K to 1M tokens (32 to 1024 segments of 1024).

The equivalent of nanotron's ``run_long_context_passkey_eval.sh <ckpt> <context_length> <num_samples>``
(generate_data.py + run_passkey_eval.py + analyze): prompts of exactly the requested token length, pass keys
of 4 digits, depths 0/25/50/75/100, one combined report and heatmap::

    python main.py --config=configs/long_context.py --config.ckpt_path=checkpoints/fineweb_4gpu_300m_infini/30000

One length, like the script's arguments (``ctx`` or ``ctx,num_samples``)::

    python main.py --config=configs/long_context.py:32768,25 --config.ckpt_path=...
    python main.py --config=configs/long_context.py:131072 --config.ckpt_path=... --config.num_samples=10

Prompts stream through the model prefill_chunk_tokens at a time (device memory independent of the length), one
prompt per batch. Every length draws its pass keys from the seed on its own, so a single-length run and the
full sweep produce the same samples (and resume into the same save_path).
"""

from configs import common


def get_config(arg=None):
    c = common.get_config()
    c.dataset = "generate"  # prompts generated here, exact token lengths
    c.context_lengths = (32768, 65536, 131072, 262144, 524288, 1048576)  # tokens
    c.depths = (0, 25, 50, 75, 100)  # the script's depths
    c.num_samples = 10  # per (context length, depth)
    c.num_digits = 4  # the script's pass keys: 4 digits
    c.num_shots = 0
    c.template = "passkey"  # generate_data.py's wording
    c.haystack = "default"  # built-in varied prose (the script wrote two generic prose files)
    c.max_new_tokens = 15
    c.batch_size = 1  # huge prompts: one at a time
    c.prefill_chunk_tokens = 16384  # stream 16 segments of 1024 at a time
    c.save_path = "results/long_context"
    if arg:
        ctx, _, n = str(arg).partition(",")
        c.context_lengths = (int(ctx),)
        if n:
            c.num_samples = int(n)
        c.save_path = f"results/long_context_{int(ctx)}"
    return c
