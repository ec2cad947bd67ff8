"""Trains the small byte-level demo model to retrieve pass keys with the memory-first curriculum of
``retrieval_recipe.md`` plus this project's changes (see docs/training.md)::

    python main.py --config=configs/train_demo.py --config.workdir=outputs/train_demo          # GPU (Ampere+), ~11 min
    python main.py --config=configs/train_demo.py:xla --config.workdir=outputs/train_xla       # any GPU: XLA numerics
    python main.py --config=configs/train_demo.py:k1 --config.workdir=outputs/train_k1         # the K1 recipe, 380 s
    python main.py --config=configs/train_demo.py:b2 --config.workdir=outputs/train_b2         # the B2 recipe
    python main.py --config=configs/train_demo.py:r256 --config.workdir=outputs/train_r256     # the L2 recipe
    python main.py --config=configs/train_demo.py:short_rows --config.workdir=outputs/short    # not yet run
    python main.py --config=configs/train_demo.py:late_options --config.workdir=outputs/late   # sixth session
    python main.py --config=configs/train_demo.py:n560 --config.workdir=outputs/n560           # 560 s + eval
    python main.py --config=configs/train_demo.py:cpu_smoke --config.workdir=/tmp/train_smoke   # CPU, seconds
    python main.py --config=configs/train_demo.py:boundary_repair --config.init_from=RUN/model  # 60 steps: a repair

The default (also named ``weighted_boundary``) is the recipe of the shipped demo model (infini_jax/assets/demo_model,
run Q3 of the fifteenth session: seed 3, data_seed 4, 560 training seconds with cuDNN attention and one-pass bf16
memory einsums, ~19,000 steps on one H200; in nanotron's numerics 99.7-100% exact at 8K, 16K, 32K, 128K and 1M
tokens, 308 prompts each (2 misses in 1,540), and 66 of 66 at 16M; on CPU in fp32 the shipped bf16 weights answer
307 of 308 at 1K and at 2K). It is the only recipe that has met the targets (>= 99% at 32K, 128K and 1M with 308
prompts each, >= 95% at 16M with 66) on three training seeds: of five runs (seeds 0/1 to 4/5; fourteenth and
fifteenth sessions) three met them (seeds 1/2, 3/4, 4/5), one missed at 16M only (2/3: 100% at 32K-1M, 59 of 66
at 16M, the key's second digit) and one at every length (0/1: 92-98%, the first digit, on the varied haystack only).
What it adds to the previous default (``:k1``, the K1 recipe: 380 s; 1 of 6 runs met the targets): 560 s,
keys cut by a segment boundary instead of keys near one (``needle_boundary_window=0``; ``:n560`` stops there: 2 of
4 runs met the targets) and, in half of the batches whose answer a segment boundary cuts, the answer's first digit
at a segment's first position (``answer_boundary_digits``; 15% of all batches), the case every evaluation length
(a multiple of the segment) asks for. Pass ``--config.seed`` / ``--config.data_seed`` for other seeds.
Budgets are in seconds of training, so another GPU takes another number of steps, and a re-run is a new draw: GPU
training is not bit-reproducible (``--config.deterministic=True`` is, with a step budget, at 1.9x lower throughput).
The job warns when a run leaves its first stage with a far-needle accuracy below 0.985 (12 of the 13 runs that did
missed the targets), when the closing far-needle accuracy is below 0.99, and runs the probes of
``infini_jax/train_probe.py`` (``probe.json``): the virtual-length probe (aligned 8K prompts, haystack writes x 128;
every run below 0.98 missed the targets) and the cut-key probe (8K prompts whose key a segment boundary cuts; 19 of
the 21 runs below 0.975 missed them). None of them flags every failure: Q2 passed all but the first.

The ``xla`` variant trains the same recipe with the portable numerics (XLA attention, fp32 memory einsums), for GPUs
without cuDNN fused attention (before Ampere) or to compare; it runs 1.35x fewer steps per second, so in 560 s it is
a shorter run (~14,000 steps; not yet run). The ``b2`` variant is the previous demo model's recipe (B2:
XLA numerics, seeds 2 / 3, 450 s; 100% at 8K-1M and 98.5% at 16M, but 45.5% / 90.6% at 1K / 2K); ``r256``,
``short_rows`` and ``late_options`` modify it. ``r256`` is the demo model before that (L2: virtual length up to 256,
uniform needle places and keys): 99.7-100% at 32K-1M on three seeds, but 9-32% at 16M. ``late_options`` (both data
options only in the last stage) met the targets in 1 of 6 runs (sixth and seventh sessions). docs/training.md has
every run.

Model: byte-level demo tokenizer (260 ids, vocab padded to 384), 4 layers, hidden 256, 4 heads x 64, SwiGLU 768,
segments of 256 tokens, gate sigmoid(beta) with beta = 0 at init, memory_query "rotated" (nanotron's numerics).
Curriculum (shares of the time budget): 768 x 128 (50%, 80% of needles before the final segment, gated on far-needle
accuracy 0.5) -> 2048 x 64 (15%) -> 8192 x 32 (35%, virtual length up to 2048 on the haystack's writes only: an 8K
row then stands for up to 16M tokens).
Added to the recipe: in 30% of the batches a segment boundary falls inside or just before the answer (prompts
of exactly k x 256 tokens, as 32K / 128K / 1M are, make the generated answer open a fresh segment), the "." after
the key is trained, the virtual length multiplies only the haystack's memory writes (the recipe also
multiplied the intro, question and answer), 20% of the rows have a segment boundary inside a key copy (the b2 /
k1 recipes: within 8 tokens of one), and 30% of the keys get a pair of equal adjacent digits; in half of the
batches with a cut answer its first digit opens the segment.
AdamW (0.9, 0.95, eps 1e-8), LR 2e-3, balance-factor LR 3e-3, weight decay 0.1 on non-embedding matrices,
clip 1.0, warm-up 150 steps, cosine to 0.1x. Loss: answer CE + 1.0 x needle-copy CE + 0.2 x next-byte CE.
Outputs in workdir: metrics.jsonl, checkpoints/, model/ (load_model-ready), eval/ and eval.json.
"""

from ml_collections import config_dict

from configs import train_common
from configs.train_common import stage

VARIANTS = ("", "weighted_boundary", "xla", "k1", "b2", "r256", "short_rows", "late_options", "n560", "cpu_smoke",
            "boundary_repair")


def b2_recipe():
    """The B runs' recipe (fifth session; B2 was the demo model until the eleventh session): XLA attention and fp32
    memory einsums (the defaults), 450 s, seeds 2 / 3."""
    c = train_common.get_config()
    c.workdir = "outputs/train_demo"
    c.seed, c.data_seed = 2, 3
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
    c.probe.enabled = True  # added in the eighth session; it changes no training
    return c


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of train_demo: use one of {', '.join(map(repr, VARIANTS))}.")
    c = b2_recipe()
    if variant in ("", "weighted_boundary", "xla"):
        # The shipped model Q3 (fifteenth session): seeds 3 / 4, 560 s (with the probe and the evaluation, two 600 s
        # jobs: --config.session_seconds=280), cuDNN attention inside segments and one-pass bf16 memory einsums (GPU
        # only: cuDNN has no CPU kernel; ``xla`` swaps in the portable numerics), keys cut by a segment boundary,
        # and the answer's first digit at a segment's first position in half of the batches that cut the answer.
        c.seed, c.data_seed = 3, 4
        c.total_seconds = 560.0
        c.data.needle_boundary_window = 0
        c.data.answer_boundary_digits = (0, 0, 0, 0, 1, 2, 3, 4)
        if variant != "xla":
            c.model.attention_impl = "cudnn"
            c.model.memory_precision = "default"
    elif variant in ("k1", "n560"):
        # ``k1``: the demo model of the eleventh to fourteenth sessions (K1, tenth session): seeds 1 / 2, 380 s so
        # that training, probe and evaluation fit one 600 s job, cuDNN / one pass (~12,700 steps on an H200); 1 of
        # its 6 runs met the targets. ``n560``: with 560 s and keys cut by a segment boundary instead of keys near
        # one (twelfth and thirteenth sessions' N runs: 2 of 4 met the targets, seeds 1/2 and 3/4).
        c.seed, c.data_seed = 1, 2
        c.total_seconds = 380.0
        c.model.attention_impl = "cudnn"
        c.model.memory_precision = "default"
        if variant == "n560":
            c.total_seconds = 560.0
            c.data.needle_boundary_window = 0
    elif variant == "r256":
        # The L2 demo model's recipe (2026-11-29): virtual length up to 256, uniform needle places and keys.
        c.curriculum.stage_2.virtual_length_max = 256.0
        c.data.needle_boundary_share = 0.0
        c.data.repeated_digit_share = 0.0
    elif variant == "short_rows":
        # Not yet run on a GPU: the B2 recipe with 1K-token rows (r = 1) in 30% of the last stage's steps, against
        # its weakness on prompts of 4-8 segments (docs/training.md, fifth session).
        s2 = c.curriculum.stage_2
        s2.short_share, s2.short_seq_len, s2.short_batch_size = 0.3, 1024, 128
    elif variant == "late_options":
        # The two key / needle options only in the last stage: the first two stages then see L2's data stream
        # (r256 recipe, robust on three seeds at 32K-1M), the last one B2's (r <= 2048 with both options).
        for name in ("stage_0", "stage_1"):
            c.curriculum[name].repeated_digit_share = 0.0
            c.curriculum[name].needle_boundary_share = 0.0
    elif variant == "boundary_repair":
        # A short fine-tune of a trained run's export (--config.init_from=RUN/model) on the case where the failing
        # runs fail: 1K-token rows in which a segment boundary falls right before the answer, so its first digit
        # opens a fresh segment and the second is predicted from there, as at every evaluation length (multiples
        # of the segment). The k1 recipe trains that case in 6% of its batches (answer_boundary_share 0.3 x one
        # digit of five; the default, 15%). Thirteenth session, CPU, one run (K0): 31 -> 43 of 44 aligned 8K prompts
        # and 36 -> 42 of 44 at 32K after 60 steps; 60 steps of the recipe's own mix instead: 28 of 44 at 8K. P2:
        # 27 -> 37 (mix: 26) at 8K.
        # Not yet measured at 128K-16M: evaluate before using it.
        c.init_from = config_dict.placeholder(str)  # required: the export to fine-tune (its numerics: XLA / fp32)
        c.require_init_from = True  # without init_from the job stops with an error naming it
        c.workdir = "outputs/boundary_repair"
        c.total_seconds, c.total_steps = 0.0, 60
        c.curriculum = {"stage_0": stage("answer_opens_segment_1k", 1024, 16, 1.0)}
        c.data.answer_boundary_share = 1.0
        c.data.answer_boundary_digits = (0,)
        o = c.optim
        o.lr, o.balance_factor_lr, o.warmup_steps, o.min_lr_ratio = 2e-4, 3e-4, 5, 1.0  # the recipe's final LRs
        c.log_every, c.save_every = 5, 0
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
    return c
