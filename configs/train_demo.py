"""Trains the small byte-level demo model to retrieve pass keys with the memory-first curriculum of
``retrieval_recipe.md`` plus this project's changes (see docs/training.md)::

    python main.py --config=configs/train_demo.py --config.workdir=outputs/train_demo          # GPU, ~11 min
    python main.py --config=configs/train_demo.py:r256 --config.workdir=outputs/train_r256     # the L2 recipe
    python main.py --config=configs/train_demo.py:short_rows --config.workdir=outputs/short    # not yet run
    python main.py --config=configs/train_demo.py:late_options --config.workdir=outputs/late   # sixth session
    python main.py --config=configs/train_demo.py:fast --config.workdir=outputs/fast           # GPU only, tenth
    python main.py --config=configs/train_demo.py:cpu_smoke --config.workdir=/tmp/train_smoke   # CPU, seconds

It is the recipe of the shipped demo model (infini_jax/assets/demo_model, run B2: seed 2, data_seed 3; on one H200
100% exact at 8K, 16K, 32K, 128K and 1M tokens, 308 prompts each, and 98.5% at 16M, 65 of 66; on CPU only 45.5%
at 1K and 90.6% at 2K, nearly every miss the second digit written again in third place). Budgets are in
seconds of training, so another GPU takes another number of steps, and a re-run is a new draw (below). Seeds
0 / 1 give 99.4 / 93.8 / 98.1 / 98.4 / 98.7% at 8K..1M and 22/22 at 16M; seeds 1 / 2 fail (about 70% at 8K-32K,
CPU check).
The ``r256`` variant is the previous demo model's recipe (L2: virtual length up to 256, uniform needle places
and keys): 99.7-100% at 32K-1M on all three seeds, but 9-32% at 16M. The ``late_options`` variant (both data
options only in the last stage) scored better on seeds 0 / 1 (P0: 99.7 / 99.0 / 100% at 32K /
128K / 1M, 22/22 at 16M) and 1 / 2 (90-97% at 8K-1M) and far worse on seed 2 (52-71%); trained again with the same
seeds (seventh session, G0-G2, with a stage-0 gate of 0.97 that held them only a few dozen steps) it gave 93-97%,
96-99% and 97-99% at 32K-1M: GPU training is not bit-reproducible (``--config.deterministic=True`` is, with a step
budget, at 1.9x lower throughput), so each run is a draw and no recipe is robust across runs yet. With a windowed
stage-0 gate (eighth session: ``--config.curriculum.stage_0.advance_window_steps=2000
--config.curriculum.stage_0.advance_min_accuracy=0.93``) 1 of 3 runs met the targets again (W0). After training the
job runs the virtual-length probe (``probe.json``: aligned 8K prompts, haystack writes x 128; every run below 0.98
missed the targets, see ``infini_jax/train_probe.py``). The ``fast`` variant (tenth session, K0 / K1) trains with cuDNN
attention and one-pass memory einsums, 1.35x the steps per second, for 380 s so that training and evaluation fit a
600 s job: seeds 1 / 2 gave 100% at 32K-1M (and at 1K, 2K and 8K-32K on CPU in fp32), seeds 0 / 1 67-73%.
docs/training.md has every run.

Model: byte-level demo tokenizer (260 ids, vocab padded to 384), 4 layers, hidden 256, 4 heads x 64, SwiGLU 768,
segments of 256 tokens, gate sigmoid(beta) with beta = 0 at init, memory_query "rotated" (nanotron's numerics).
Curriculum over 450 s: 768 x 128 (50% of the time, 80% of needles before the final segment, gated on far-needle
accuracy 0.5) -> 2048 x 64 (15%) -> 8192 x 32 (35%, virtual length up to 2048 on the haystack's writes only: an
8K row then stands for up to 16M tokens).
Added to the recipe: in 30% of the batches a segment boundary falls inside or just before the answer (prompts
of exactly k x 256 tokens, as 32K / 128K / 1M are, make the generated answer open a fresh segment), the "." after
the key is trained, the virtual length multiplies only the haystack's memory writes (the recipe also
multiplied the intro, question and answer), 20% of the rows have a segment boundary within 8 tokens of a key
copy, and 30% of the keys get a pair of equal adjacent digits.
AdamW (0.9, 0.95, eps 1e-8), LR 2e-3, balance-factor LR 3e-3, weight decay 0.1 on non-embedding matrices,
clip 1.0, warm-up 150 steps, cosine to 0.1x. Loss: answer CE + 1.0 x needle-copy CE + 0.2 x next-byte CE.
Outputs in workdir: metrics.jsonl, checkpoints/, model/ (load_model-ready), eval/ and eval.json.
"""

from configs import train_common
from configs.train_common import stage


def get_config(variant: str = ""):
    c = train_common.get_config()
    c.workdir = "outputs/train_demo"
    c.seed, c.data_seed = 2, 3  # the shipped model's
    c.total_seconds = 450.0
    c.total_steps = 0
    c.curriculum = {
        "stage_0": stage("memory_first_768", 768, 128, 0.50, force_early_needle=0.8, advance_min_accuracy=0.5,
                         max_share=0.7),
        "stage_1": stage("uniform_2k", 2048, 64, 0.15),
        "stage_2": stage("virtual_8k", 8192, 32, 0.35, virtual_length_max=2048.0),
    }
    c.data.answer_boundary_share = 0.3
    c.data.key_terminator = True
    c.data.virtual_length_scope = "haystack"
    c.data.needle_boundary_share = 0.2
    c.data.repeated_digit_share = 0.3
    c.eval.context_lengths = (32768, 131072, 1048576)
    c.eval.num_samples = 14  # x 11 depths x 2 haystacks = 308 per length
    c.eval.batch_size = 28  # one generate call per (length, depth)
    c.eval.prefill_chunk_tokens = 65536
    c.save_every = 500
    c.log_every = 25
    c.probe.enabled = True  # added after the shipped model was trained (eighth session); it changes no training

    if variant == "r256":
        # The previous demo model's recipe (L2, 2026-11-29): virtual length up to 256, uniform needle places and keys.
        c.curriculum.stage_2.virtual_length_max = 256.0
        c.data.needle_boundary_share = 0.0
        c.data.repeated_digit_share = 0.0
    elif variant == "short_rows":
        # Not yet run on a GPU: the shipped recipe with 1K-token rows (r = 1) in 30% of the last stage's steps,
        # against its weakness on prompts of 4-8 segments (docs/training.md, fifth session).
        s2 = c.curriculum.stage_2
        s2.short_share, s2.short_seq_len, s2.short_batch_size = 0.3, 1024, 128
    elif variant == "late_options":
        # The two key / needle options only in the last stage: the first two stages then see L2's data stream
        # (r256 recipe, robust on three seeds at 32K-1M), the last one B2's (r <= 2048 with both options).
        for name in ("stage_0", "stage_1"):
            c.curriculum[name].repeated_digit_share = 0.0
            c.curriculum[name].needle_boundary_share = 0.0
    elif variant == "fast":
        # K0 / K1 (tenth session): cuDNN attention inside segments and one-pass bf16 memory einsums (GPU only: cuDNN
        # has no CPU kernel), 1.35x the default numerics' steps per second on an H200, in 380 s (~12,700 steps there).
        c.model.attention_impl = "cudnn"
        c.model.memory_precision = "default"
        c.total_seconds = 380.0
    elif variant == "cpu_smoke":
        # Seconds on a laptop CPU: a tiny model, short rows, a few steps, a tiny evaluation.
        c.workdir = "/tmp/infini_train_smoke"
        m = c.model
        m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads = 32, 64, 2, 2, 2
        m.segment_length = 64
        m.dtype = "float32"
        m.max_position_embeddings = 1024
        c.total_seconds = 0.0
        c.total_steps = 8
        c.optim.warmup_steps = 2
        c.optim.lr = 3e-3
        # Two stages of one shape (one compilation) still exercise the curriculum and the virtual length.
        c.curriculum = {
            "stage_0": stage("memory_first_384", 384, 4, 0.5, force_early_needle=0.8),
            "stage_1": stage("virtual_384", 384, 4, 0.5, virtual_length_max=16.0),
        }
        c.log_every = 2
        c.save_every = 4
        c.eval.context_lengths = (512,)
        c.eval.depths = (0, 100)
        c.eval.num_samples = 1
        c.eval.batch_size = 2
        c.eval.prefill_chunk_tokens = 0
        c.probe.context_length = 512
        c.probe.virtual_lengths = (16.0,)
        c.probe.depths = (0, 100)
        c.probe.keys_per_cell = 1
    elif variant:
        raise ValueError(f"Unknown variant {variant!r} of train_demo: use '', 'r256', 'short_rows', 'late_options', "
                         "'fast' or 'cpu_smoke'.")
    return c
