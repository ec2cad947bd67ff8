"""Defaults shared by the training configs (``train_demo``, ``train_finetune``). Not a job on its own.

Every field can be overridden on the command line, e.g.::

    python main.py --config=configs/train_demo.py --config.workdir=outputs/run1 --config.total_seconds=600 \
        --config.curriculum.stage_0.batch_size=64 --config.optim.balance_factor_lr=1e-2

Re-running the same command with the same ``workdir`` resumes from its last checkpoint.
"""

import ml_collections
from ml_collections import config_dict


def stage(name: str, seq_len: int, batch_size: int, share: float, *, force_early_needle: float = 0.0,
          virtual_length_max: float = 1.0, advance_min_accuracy: float = 0.0,
          max_share: float | None = None, advance_window_steps: int = 0, short_share: float = 0.0,
          short_seq_len: int = 0, short_batch_size: int = 0, repeated_digit_share: float | None = None,
          needle_boundary_share: float | None = None,
          answer_boundary_share: float | None = None) -> ml_collections.ConfigDict:
    """One curriculum stage (``infini_jax.train_schedule.Stage``)."""
    s = ml_collections.ConfigDict()
    s.name = name  # shown in logs and metrics.jsonl
    s.seq_len = seq_len  # tokens per row (segments = ceil(seq_len / segment_length))
    s.batch_size = batch_size  # rows per step (a multiple of the number of devices)
    s.share = share  # planned fraction of the budget (time or steps); shares are rescaled to sum to 1
    s.force_early_needle = force_early_needle  # fraction of rows whose needle ends before the final segment
    s.virtual_length_max = virtual_length_max  # r ~ logUniform[1, max] weights non-needle memory writes; 1 = off
    s.advance_min_accuracy = advance_min_accuracy  # far-needle train accuracy needed to leave the stage; 0 = none
    # Safeguard of the gate: leave after this fraction of the budget even if the gate is closed (None: never).
    s.max_share = config_dict.placeholder(float) if max_share is None else max_share
    # The gate averages the far-needle accuracy of the intervals logged in this many last steps (0: the last one).
    s.advance_window_steps = advance_window_steps
    # Short rows mixed in: this fraction of the stage's steps trains on short_batch_size x short_seq_len rows
    # with no virtual length (r = 1) instead (two compiled shapes). 0 = off.
    s.short_share = short_share
    s.short_seq_len = short_seq_len
    s.short_batch_size = short_batch_size
    # This stage's data.repeated_digit_share / data.needle_boundary_share (None: the data config's value).
    s.repeated_digit_share = (config_dict.placeholder(float) if repeated_digit_share is None
                              else repeated_digit_share)
    s.needle_boundary_share = (config_dict.placeholder(float) if needle_boundary_share is None
                               else needle_boundary_share)
    # This stage's data.answer_boundary_share: the share of its batches whose answer a segment boundary cuts
    # (None: the data config's value).
    s.answer_boundary_share = (config_dict.placeholder(float) if answer_boundary_share is None
                               else answer_boundary_share)
    return s


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "train"  # main.py dispatches to infini_jax.train.run
    # Output directory: checkpoints/, metrics.jsonl, model/ (the exported converted model), eval/, eval.json.
    c.workdir = "outputs/train"
    # Only evaluate (config.eval) the model at init_from, or workdir/model when unset: no training. The model
    # keeps its own numerics except the compute dtype (model.dtype).
    c.eval_only = False
    c.seed = 0  # parameter initialisation
    c.data_seed = 1  # training data (pass keys, haystack offsets, needle depths, virtual lengths)
    # XLA's deterministic GPU kernels (--xla_gpu_deterministic_ops): without them two GPU runs of one config and
    # seeds diverge within ~100 steps and can end far apart (docs/training.md, seventh session). Reproducible runs
    # need a step budget too (total_steps). No effect on CPU.
    c.deterministic = False
    c.init_std = 0.02  # N(0, std) init; o_proj / down_proj get std / sqrt(2 * num_layers) (nanotron RandomInit)
    # Start from a checkpoint instead of a random model: nanotron step dir, converted dir or HF Llama folder.
    # Its architecture is kept; only the numerics of `model` (dtype, param_dtype, memory_dtype, memory_query,
    # attention_impl, memory_precision; segment_length for HF folders) are applied.
    c.init_from = config_dict.placeholder(str)
    # Tokenizer (local directory or cached hub name); None = the byte-level demo tokenizer (260 ids).
    c.tokenizer = config_dict.placeholder(str)

    # ------------------------------------------------------------------ model (infini_jax.config.ModelConfig)
    m = ml_collections.ConfigDict()
    m.vocab_size = 384  # >= the tokenizer's ids (demo: 260), padded as nanotron pads
    m.hidden_size = 256
    m.intermediate_size = 768
    m.num_layers = 4
    m.num_heads = 4
    m.num_kv_heads = 4
    m.segment_length = 256  # tokens per memory segment (RoPE restarts at 0 in each)
    m.rope_theta = 10000.0
    m.rope_interleaved = True  # nanotron's default (GPT-J pairs)
    m.rms_norm_eps = 1e-5
    m.tie_word_embeddings = False
    m.max_position_embeddings = 8192  # informational only
    m.bos_token_id = 1
    m.eos_token_id = 2
    m.pad_token_id = 3
    m.balance_act_type = "orig_sigmoid"  # gate g = act(balance_factors) per head
    m.balance_init_type = "zeros"  # g = 0.5 at init
    # "rotated": what nanotron computes (memory read with sigma(RoPE(q))); "unrotated": the paper's sigma(q).
    m.memory_query = "rotated"
    m.dtype = "bfloat16"  # compute dtype ("float32" on CPU)
    m.param_dtype = "float32"  # parameters and optimizer state stay fp32
    m.memory_dtype = "float32"  # M and z
    m.attention_impl = "xla"  # "cudnn": fused GPU attention (bf16/fp16 only)
    m.memory_precision = "highest"  # memory einsums on GPU: "highest" (fp32), "bf16_3x" or "default" (one pass)
    c.model = m
    # Cut the gradient between segments (memory carried forward but not differentiated through).
    c.stop_gradient_between_segments = False

    # ------------------------------------------------------------------ budget and bookkeeping
    c.total_steps = 0  # > 0: a step budget (deterministic, exactly resumable); 0: use total_seconds
    c.total_seconds = 360.0  # time budget (training seconds; compilation, checkpoints and logs not counted)
    # > 0: this invocation stops at the first log line after this many training seconds with a checkpoint (no export,
    # final probe or evaluation); the same command run again continues. For time-limited sessions (Colab, a job limit).
    c.session_seconds = 0.0
    c.log_every = 25  # steps per metrics.jsonl line
    c.save_every = 500  # steps between checkpoints (and one at the end), a multiple of log_every; 0 = only at the end
    c.max_to_keep = 3  # checkpoints kept in workdir/checkpoints

    # ------------------------------------------------------------------ optimizer (AdamW, two groups)
    o = ml_collections.ConfigDict()
    o.lr = 2e-3  # peak LR of every parameter except the balance factors
    o.balance_factor_lr = 3e-3  # peak LR of balance_factors (nanotron's infini_attention.balance_factor_lr)
    o.weight_decay = 0.1  # on matrices (not norms; embeddings only with decay_embeddings)
    o.balance_factor_weight_decay = 0.0  # nanotron's balance_factor_weight_decay
    o.decay_embeddings = False  # also decay the embedding and lm_head
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.clip_norm = 1.0  # global grad-norm clipping over all parameters (balance factors included); 0 = off
    o.warmup_steps = 150  # linear warm-up from 0 (steps)
    o.min_lr_ratio = 0.1  # cosine decays each group to this fraction of its peak
    o.balance_factor_min_lr = config_dict.placeholder(float)  # absolute floor for the balance group (nanotron)
    # > 0: keep an fp32 moving average of the weights, ema = d * ema + (1 - d) * params after each update (it never
    # changes the training), exported as workdir/model_ema and probed / evaluated into workdir/ema; 0 = off
    o.ema_decay = 0.0
    c.optim = o

    # ------------------------------------------------------------------ loss
    loss = ml_collections.ConfigDict()
    loss.lm_weight = 0.2  # next-token CE over all tokens
    loss.answer_weight = 1.0  # CE on the answer digits after "The pass key is "
    loss.needle_copy_weight = 1.0  # CE on the needle's second copy of the key (in-segment copy signal)
    c.loss = loss

    # ------------------------------------------------------------------ data
    d = ml_collections.ConfigDict()
    d.source = "passkey"  # "passkey" (synthetic rows), "text" (packed .txt files) or "mix"
    d.num_digits = 5  # digits of the pass keys
    d.haystack_mix = 0.5  # fraction of passkey rows on the classic "The grass is green..." filler
    # The other rows' haystack: "generated" (templated sentences with 1-3 digit numbers), "default" (prose)
    # or a directory of *.txt files.
    d.varied_haystack = "generated"
    d.varied_seed = 0  # seed of the generated training text (the evaluation uses eval.varied_seed)
    # Generated training texts, seeds varied_seed .. varied_seed + n - 1, sharing the varied rows equally (1: one
    # text, the demo runs' setting; eighth session: W1 handled its training text better than held-out text; ninth
    # session: 16 texts removed that, but the runs ended less trained within 450 s and missed, docs/training.md).
    d.varied_texts = 1
    d.virtual_length_prob_one = 0.1  # probability of r = 1 in a virtual-length stage
    # Which memory writes count r times in a virtual-length stage: "haystack" (the filler only, as in a prompt
    # with an r x longer haystack) or "non_needle" (every token but the needle's, retrieval_recipe.md: the
    # intro, question and answer digits are then multiplied too, which a long prompt holds once). With
    # "haystack" the worst of three seeds rose from 0% to 91.2% at 32K-1M tokens (docs/training.md).
    d.virtual_length_scope = "haystack"
    d.random_answer_position = True  # end prompt+answer a random 0..L-1 tokens before the row end (see train_data)
    # Share of batches whose answer straddles or starts a segment boundary (the case of prompts of exactly
    # k * segment_length tokens: the generated answer opens a fresh segment). train_demo uses 0.3; without it
    # the demo models failed at 32K / 128K / 1M (docs/training.md).
    d.answer_boundary_share = 0.0
    # Which answer digit (0-based) opens the new segment in those batches; () = any. (0,) is the evaluation of
    # a prompt of exactly k * segment_length tokens (the first generated digit opens a segment). Drawn uniformly
    # from the tuple, so a repeated index weighs more: (0, 0, 1, 2, 3, 4) opens with the first digit 1/3 of the time.
    d.answer_boundary_digits = ()
    d.key_terminator = False  # train the "." after the key (so generations stop writing digits: strict scoring)
    # Fraction of pass keys given a pair of equal adjacent digits (one digit copies its predecessor, as in
    # 55996); uniform keys hold one 34% of the time. Most errors of the 16M-token evaluations of the r <= 2048
    # run (and of H1 at 32K-1M) fell on such keys (docs/training.md). train_demo uses 0.3 (with the next option
    # and r <= 2048; which of the three made the difference is not isolated). 0 = uniform keys.
    d.repeated_digit_share = 0.0
    # Which earlier digit such a key repeats: "adjacent" (the one before, as above; the demo runs'), "apart" (one
    # at least two places back, 57074) or "any". The last two never copy into the last digit, so nearly every such
    # key has a digit followed by two different digits (7 -> 0 and 7 -> 4), the keys the ninth session's failing
    # runs missed (docs/training.md); tested on CPU, not yet run on a GPU.
    d.repeated_digit_span = "adjacent"
    # Fraction of passkey rows whose needle (still at a sentence end) has a segment boundary within
    # needle_boundary_window tokens of one of the key's two copies (before, inside or after it). Most errors of
    # the demo runs fall on needles so placed (H2: all 30 at 32K-1M; the previous demo model L2: all 25 at 16K,
    # 308 prompts; docs/training.md, scripts/needle_position_sweep.py). train_demo uses 0.2. 0 = uniform places.
    d.needle_boundary_share = 0.0
    d.needle_boundary_window = 8  # tokens
    d.text_files = config_dict.placeholder(str)  # .txt files, directories or globs, comma-separated
    d.text_fraction = 0.5  # "mix": fraction of each batch's rows from text
    c.data = d

    # ------------------------------------------------------------------ curriculum (stage_0, stage_1, ...)
    c.curriculum = ml_collections.ConfigDict({"stage_0": stage("main", 1024, 32, 1.0)})

    # ------------------------------------------------------------------ final evaluation
    e = ml_collections.ConfigDict()
    e.enabled = True
    e.context_lengths = (8192, 32768)  # prompt lengths in tokens (shorter than the template: skipped)
    e.depths = tuple(range(0, 101, 10))  # needle depths in percent
    e.num_samples = 6  # per (length, depth, haystack)
    e.haystacks = ("classic", "varied")  # "varied": the training style with held-out text; or "default", a dir
    e.seed = 1234  # pass keys (held out from training's data_seed stream)
    e.varied_seed = 12345  # held-out generated text
    e.batch_size = 16
    e.prefill_chunk_tokens = 65536  # stream long prompts in chunks (multiple of segment_length); 0 = whole
    c.eval = e

    # ------------------------------------------------------------------ virtual-length probe (train_probe.py)
    # After training (and with eval_only): teacher-forced exact match on aligned prompts (the answer opens a fresh
    # segment) of the evaluation's held-out haystacks, the haystack's memory writes counted r times. 0.2 s on an
    # H200 once compiled; a cheap stand-in for the 1M evaluation (docs/training.md, eighth session), not a
    # replacement. Passkey models only.
    p = ml_collections.ConfigDict()
    p.enabled = False
    p.context_length = 8192  # a multiple of the segment length
    p.virtual_lengths = (128.0,)  # at 8K: 1M tokens simulated (2048: 16M, a weaker predictor; docs/training.md)
    p.depths = tuple(range(0, 101, 10))
    p.keys_per_cell = 4  # per (depth, haystack): 88 prompts per r
    p.seed = 0  # keys (not eval.seed's stream); docs/training.md's probe figures are these settings' (CPU, fp32)
    p.varied_seed = config_dict.placeholder(int)  # held-out generated text; None: eval.varied_seed
    p.min_exact_match = 0.98  # below: a warning (more than one miss in 88 prompts)
    p.every_steps = 0  # also during training, every N steps (a multiple of log_every) to metrics.jsonl; 0 = off
    # Cut-key probe (probe.json's "cut_key"): keys per needle place of the same prompts (r = 1) whose first key copy
    # a segment boundary cuts (at 8K: 15 places on the two haystacks, 120 prompts); 0 = off. The eleventh session's
    # near misses were such keys.
    p.cut_keys_per_place = 8
    p.cut_key_min_exact_match = 0.975  # below: a warning (19 of the 21 demo runs below it missed; docs/training.md)
    c.probe = p
    return c
