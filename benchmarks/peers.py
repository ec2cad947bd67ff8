"""Peers on the same GPU, in the same run, with the 300M config's dims (hidden 1024, 12 layers, 8 heads x 128,
intermediate 4096, vocab 49152, segment 1024), random weights, bf16.

``recompute`` (JAX): nanotron's eval strategy. For every new token a full forward over prompt + generated
  tokens (``model(ids)``: memory rebuilt from token 0, fp32 logits for every position), batch 1, greedy.
  To compile once, ids are right-padded to a bucket of whole segments (ceil((prompt + new) / L) x L; the
  padding sits after the last real token, so it changes no logit that is read), and the token is read at
  the last real position. ``generate_by_recompute`` itself would recompile for every length. Steps are
  timed one by one; where all ``new_tokens`` steps do not fit the budget, the first steps are timed and
  the rest extrapolated from their mean (``extrapolated: true``).
``lucidrains`` (PyTorch): ``infini-transformer-pytorch`` 0.2.1 (carried as a wheel). InfiniTransformer(
  num_tokens=V, dim=H, depth, dim_head=D, heads=N, ff_mult=3I/(2H) so its GEGLU inner width equals I,
  use_mem_delta_rule=True), segment length L. Prefill = its segment loop (what its wrapper's forward does,
  without the loss) over 16K and 64K tokens. Generation on the prompts with new_tokens greedy tokens:
  ``as_shipped`` is ``InfiniTransformerWrapper.generate`` (it feeds only the prompt's last segment, so the
  earlier segments are never read), ``full_prompt`` first folds every earlier segment into its memories,
  then runs the same loop.
``hf`` (PyTorch): transformers ``LlamaForCausalLM`` with the same dims (full causal attention, no
  segments), SDPA attention, bf16, forward over 1K..128K tokens (all-position logits) until OOM.
"""

from __future__ import annotations

import time

import common


# ----------------------------------------------------------------------------- recompute (JAX)
def run_recompute(args, emit, deadline: common.Deadline):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from infini_jax.api import random_model

    impl = common.pick_attention(args.attention)
    cfg = common.model_config("300m", smoke=args.smoke, attention_impl=impl)
    graphdef, state = nnx.split(random_model(cfg))

    def step(state, ids, cur):
        logits = nnx.merge(graphdef, state)(ids)  # [1, P, V] fp32, every position (as nanotron)
        row = jax.lax.dynamic_index_in_dim(logits[0], cur - 1, keepdims=False)
        return jnp.argmax(row).astype(jnp.int32), logits

    fn = jax.jit(step)
    seg = cfg.segment_length
    rng = np.random.default_rng(0)
    lengths = common.int_list(args.prompt_lengths or ("60,1000" if args.smoke else "16000,1000"))
    for length in lengths:
        new = args.new_tokens
        padded = -(-(length + new) // seg) * seg
        rec = dict(kind="recompute", config="300m", prompt_tokens=length, new_tokens=new, padded_tokens=padded,
                   batch=1, attention_impl=impl)
        if not deadline.fits(10):
            emit(status="skipped", note="time budget", **rec)
            continue
        try:
            ids = np.zeros((1, padded), np.int32)
            ids[0, :length] = rng.integers(3, cfg.vocab_size, length)
            t0 = time.perf_counter()
            compiled = fn.lower(state, jnp.asarray(ids), jnp.int32(length)).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(state, jnp.asarray(ids), jnp.int32(length)))  # warm-up
            cur, steps = length, []
            budget = max(2.0, min(60.0, deadline.left() - 5))
            start = time.perf_counter()
            for _ in range(new):
                t0 = time.perf_counter()
                tok, logits = compiled(state, jnp.asarray(ids), jnp.int32(cur))
                ids[0, cur] = int(tok)  # the host needs the token before the next step, as in nanotron's loop
                steps.append(time.perf_counter() - t0)
                del logits
                cur += 1
                if time.perf_counter() - start > budget and len(steps) >= 2:
                    break
        except Exception as e:  # noqa: BLE001
            emit.error(e, **rec)
            continue
        extrapolated = len(steps) < new
        per_prompt = sum(steps) if not extrapolated else float(np.mean(steps)) * new
        emit(status="ok", compile_s=compile_s, step_times_s=steps, timed_steps=len(steps), extrapolated=extrapolated,
             s_per_prompt=per_prompt, prompts_per_s=1.0 / per_prompt, peak_bytes=common.peak_bytes(), **rec)
        del compiled
        jax.clear_caches()


# ----------------------------------------------------------------------------- torch helpers
def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _torch_env(args):
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak():
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return int(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None

    return torch, dev, sync, reset_peak, peak


def _torch_timed(fn, sync, *, warmup: int, reps: int, budget_s: float) -> list[float]:
    def call():
        out = fn()
        sync()
        return out

    return common.timed(call, warmup=warmup, reps=reps, budget_s=budget_s, sync=lambda x: x)


def _is_oom(torch, e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or common.classify_error(e) == "OOM"


def _measure(torch, emit, deadline: common.Deadline, rec: dict, make_call, sync, reset_peak):
    """Times ``make_call()()`` (inputs are allocated inside, so an OOM there is caught too) within the deadline.

    Returns ``(times, oom)``; ``times`` is None when the measurement was skipped, ran out of memory or failed
    (each reported through ``emit`` with ``rec``).
    """
    if not deadline.fits(10):
        emit(status="skipped", note="time budget", **rec)
        return None, False
    try:
        reset_peak()
        call = make_call()
        return _torch_timed(call, sync, warmup=1, reps=3, budget_s=max(1.0, min(20.0, deadline.left() / 4))), False
    except Exception as e:  # noqa: BLE001
        if _is_oom(torch, e):
            emit(status="OOM", **rec)
            return None, True
        emit.error(e, **rec)
        return None, False


# ----------------------------------------------------------------------------- lucidrains
def run_lucidrains(args, emit, deadline: common.Deadline):
    torch, dev, sync, reset_peak, peak = _torch_env(args)
    cfg = common.model_config("300m", smoke=args.smoke)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    base = dict(config="300m", dims=dict(vocab=cfg.vocab_size, hidden=h, layers=cfg.num_layers, heads=cfg.num_heads,
                                         head_dim=cfg.head_dim, intermediate=inter, segment=cfg.segment_length))
    try:
        from infini_transformer_pytorch import InfiniTransformer, InfiniTransformerWrapper
    except Exception as e:  # noqa: BLE001
        emit.error(e, kind="import", note="pip install the wheels in .whl (README)", **base)
        return
    ff_mult = 3 * inter / (2 * h)
    model = InfiniTransformer(num_tokens=cfg.vocab_size, dim=h, depth=cfg.num_layers, dim_head=cfg.head_dim,
                              heads=cfg.num_heads, ff_mult=ff_mult, use_mem_delta_rule=True)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # bf16 matmuls crawl on CPU (smoke)
    model = model.to(device=dev, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    inner = int(ff_mult * h * 2 / 3)
    seg = cfg.segment_length
    wrapper = InfiniTransformerWrapper(model, segment_length=seg)
    emit(kind="init", status="ok", version=_version("infini-transformer-pytorch"), params=n_params, ff_inner=inner,
         device=str(dev), dtype=str(dtype), **base)

    @torch.inference_mode()
    def prefill(ids):
        mems, logits = None, None
        for chunk in ids.split(seg, dim=-1):
            logits, _, mems = model(chunk, past_memories=mems, return_new_memories=True)
        return logits

    @torch.inference_mode()
    def generate_full(prompt, new):
        n = prompt.shape[-1]
        mems = None
        for chunk in prompt[:, : (n - 1) // seg * seg].split(seg, dim=-1):
            _, _, mems = model(chunk, past_memories=mems, return_new_memories=True)
        out, cached_kv = prompt, None
        for curr_len in range(n, n + new):  # InfiniTransformerWrapper.generate's loop, greedy
            start = (curr_len - 1) // seg * seg
            logits, cached_kv, mems = model(out[:, start:], cached_kv=cached_kv, past_memories=mems,
                                            return_new_memories=curr_len % seg == 0)
            out = torch.cat((out, logits[:, -1].argmax(-1, keepdim=True)), dim=-1)
        return out[:, n:]

    def generate_shipped(prompt, new):
        return wrapper.generate(seq_len=prompt.shape[-1] + new, prompt=prompt, temperature=0.0,
                                filter_fn=lambda t, **_: t, filter_kwargs={})

    lengths = common.int_list(args.prefill_lengths or ("256,1024" if args.smoke else "16K,64K"))
    for length in lengths:
        rec = dict(kind="prefill", tokens=length, batch=1, **base)

        def make_call(length=length):
            ids = torch.randint(3, cfg.vocab_size, (1, length), device=dev)
            return lambda: prefill(ids)

        times, _ = _measure(torch, emit, deadline, rec, make_call, sync, reset_peak)
        if times is None:
            continue
        t = common.median(times)
        emit(status="ok", times_s=times, time_s=t, tokens_per_s=length / t, peak_bytes=peak(), **rec)

    prompt_lengths = common.int_list(args.prompt_lengths or ("60,1000" if args.smoke else "16000,1000"))
    for length in prompt_lengths:
        for variant, fn in (("as_shipped", generate_shipped), ("full_prompt", generate_full)):
            rec = dict(kind="generate", variant=variant, prompt_tokens=length, new_tokens=args.new_tokens, batch=1,
                       **base)

            def make_call(fn=fn, length=length):
                prompt = torch.randint(3, cfg.vocab_size, (1, length), device=dev)
                return lambda: fn(prompt, args.new_tokens)

            times, _ = _measure(torch, emit, deadline, rec, make_call, sync, reset_peak)
            if times is None:
                continue
            t = common.median(times)
            emit(status="ok", times_s=times, time_s=t, s_per_prompt=t, prompts_per_s=1.0 / t, peak_bytes=peak(),
                 **rec)


# ----------------------------------------------------------------------------- transformers Llama
def run_hf(args, emit, deadline: common.Deadline):
    torch, dev, sync, reset_peak, peak = _torch_env(args)
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = common.model_config("300m", smoke=args.smoke)
    lengths = common.int_list(args.hf_lengths or ("256" if args.smoke else "1K,4K,16K,64K,128K"))
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         max_position_embeddings=max(lengths), rms_norm_eps=cfg.rms_norm_eps,
                         rope_theta=cfg.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.device(dev):
        model = LlamaForCausalLM(hf_cfg)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = model.to(dtype).eval()
    base = dict(config="300m", attention="sdpa", transformers=transformers.__version__, dtype=str(dtype))
    emit(kind="init", status="ok", params=sum(p.numel() for p in model.parameters()), device=str(dev), **base)

    @torch.inference_mode()
    def forward(ids):
        return model(input_ids=ids, use_cache=False).logits

    for length in lengths:
        rec = dict(kind="forward", tokens=length, batch=1, **base)

        def make_call(length=length):
            ids = torch.randint(3, cfg.vocab_size, (1, length), device=dev)
            return lambda: forward(ids)

        times, oom = _measure(torch, emit, deadline, rec, make_call, sync, reset_peak)
        if oom:
            break  # longer inputs will not fit either
        if times is None:
            continue
        t = common.median(times)
        emit(status="ok", times_s=times, time_s=t, tokens_per_s=length / t, peak_bytes=peak(), **rec)


def main(argv=None):
    common.env_setup()
    p = common.base_parser(__doc__)
    p.add_argument("which", choices=["recompute", "lucidrains", "hf"])
    p.add_argument("--prompt_lengths", default=None, help="generation prompts (default 16000,1000)")
    p.add_argument("--new_tokens", type=int, default=15)
    p.add_argument("--prefill_lengths", default=None, help="lucidrains prefill lengths (default 16K,64K)")
    p.add_argument("--hf_lengths", default=None, help="transformers forward lengths (default 1K,4K,16K,64K,128K)")
    args = p.parse_args(argv)
    emit = common.Emitter(args.jsonl, f"peers_{args.which}")
    deadline = common.Deadline(args.budget_s)
    {"recompute": run_recompute, "lucidrains": run_lucidrains, "hf": run_hf}[args.which](args, emit, deadline)


if __name__ == "__main__":
    main()
