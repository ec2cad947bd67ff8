"""An independent float64 NumPy implementation of nanotron's Infini-Attention Llama forward.

Written straight from the reference description (nanotron_infini.md sections 1-2), sharing no code with
infini_jax: a loop over segments with explicit per-head matrices, on the canonical nanotron state dict.
It is itself checked against nanotron's own logits (fixture A) in test_nanotron_parity.py, then used as the
oracle for the variants the fixture does not cover (GQA, half-split RoPE, every gate activation, memory off,
tied embeddings).
"""

from __future__ import annotations

import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, interleaved, theta):
    """x: [l, heads, d]; positions 0..l-1 (segment-local)."""
    n_pos, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(n_pos)[:, None] * inv[None]  # [l, d/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
    else:
        h = d // 2
        x1, x2 = x[..., :h], x[..., h:]
        out[..., :h] = x1 * cos - x2 * sin
        out[..., h:] = x2 * cos + x1 * sin
    return out


def gate(bf, act):
    bf = _f64(bf)
    return {
        "orig_sigmoid": lambda: 1 / (1 + np.exp(-bf)),
        "orig_tanh": lambda: np.tanh(bf),
        "hard_sigmoid": lambda: np.clip(0.2 * bf + 0.5, 0, 1),
        "tanh_abs": lambda: np.abs(np.tanh(bf)),
    }[act]()


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def attention_layer(x, p, cfg, rotated_query):
    """x: [S, H] one sequence. p: dict of this layer's canonical tensors (float64)."""
    S, _ = x.shape
    nq, nk, L = cfg["num_heads"], cfg["num_kv_heads"], cfg["segment_length"]
    d = cfg["hidden_size"] // nq
    grp = nq // nk
    qkv = x @ p["qkv"].T
    q = qkv[:, : nq * d].reshape(S, nq, d)
    k = qkv[:, nq * d : nq * d + nk * d].reshape(S, nk, d)
    v = qkv[:, nq * d + nk * d :].reshape(S, nk, d)
    g = gate(p["bf"], cfg["act"])
    M = z = None
    outs = []
    for s0 in range(0, S, L):
        qs, ks, vs = q[s0 : s0 + L], k[s0 : s0 + L], v[s0 : s0 + L]
        l = qs.shape[0]  # noqa: E741 (segment length, as in the reference)
        qr, kr = rope(qs, cfg["interleaved"], cfg["theta"]), rope(ks, cfg["interleaved"], cfg["theta"])
        local = np.zeros((l, nq, d))
        for h in range(nq):
            kv = h // grp
            logits = qr[:, h] @ kr[:, kv].T / np.sqrt(d)
            logits = np.where(np.tril(np.ones((l, l), bool)), logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            local[:, h] = (w / w.sum(-1, keepdims=True)) @ vs[:, kv]
        if not cfg["memory"]:
            out = local
        else:
            mem = np.zeros((l, nq, d))
            if M is not None:
                sq = elu1(qr if rotated_query else qs)
                for h in range(nq):
                    kv = h // grp
                    mem[:, h] = (sq[:, h] @ M[kv]) / (sq[:, h] @ z[kv])[:, None]
            out = g[None, :, None] * mem + (1 - g)[None, :, None] * local
            sk = elu1(ks)  # un-rotated keys are written
            newM, newz = np.zeros((nk, d, d)), np.zeros((nk, d))
            for kv in range(nk):
                vp = vs[:, kv] if M is None else vs[:, kv] - (sk[:, kv] @ M[kv]) / (sk[:, kv] @ z[kv])[:, None]
                newM[kv] = sk[:, kv].T @ vp + (0 if M is None else M[kv])
                newz[kv] = sk[:, kv].sum(0) + (0 if z is None else z[kv])
            M, z = newM, newz
        outs.append(out.reshape(l, nq * d) @ p["o"].T)
    return np.concatenate(outs, 0)


def forward(state, cfg, input_ids, rotated_query=True):
    """state: canonical nanotron dict; cfg: dict(hidden_size, num_heads, num_kv_heads, segment_length,
    intermediate_size, eps, theta, interleaved, act, memory, tied, num_layers). Returns [B, S, V] float64."""
    st = {k: _f64(v) for k, v in state.items()}
    emb = st["model.token_position_embeddings.pp_block.token_embedding.weight"]
    head = emb if cfg["tied"] else st["model.lm_head.pp_block.weight"]
    inter = cfg["intermediate_size"]
    out = []
    for ids in np.asarray(input_ids):
        x = emb[ids]
        for i in range(cfg["num_layers"]):
            pre = f"model.decoder.{i}.pp_block."
            p = {"qkv": st[pre + "attn.qkv_proj.weight"], "o": st[pre + "attn.o_proj.weight"],
                 "bf": st[pre + "attn.balance_factors"]}
            h = x + attention_layer(rms_norm(x, st[pre + "input_layernorm.weight"], cfg["eps"]), p, cfg,
                                    rotated_query)
            y = rms_norm(h, st[pre + "post_attention_layernorm.weight"], cfg["eps"])
            gu = y @ st[pre + "mlp.gate_up_proj.weight"].T
            gt, up = gu[:, :inter], gu[:, inter:]
            x = h + (gt / (1 + np.exp(-gt)) * up) @ st[pre + "mlp.down_proj.weight"].T
        x = rms_norm(x, st["model.final_layer_norm.pp_block.weight"], cfg["eps"])
        out.append(x @ head.T)
    return np.stack(out)


def cfg_dict(model_config) -> dict:
    """The dict ``forward`` needs, from an infini_jax ModelConfig (plain attribute reads only)."""
    c = model_config
    return dict(hidden_size=c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                segment_length=c.segment_length, intermediate_size=c.intermediate_size, eps=c.rms_norm_eps,
                theta=c.rope_theta, interleaved=c.rope_interleaved, act=str(c.balance_act_type.value),
                memory=c.turn_on_memory, tied=c.tie_word_embeddings, num_layers=c.num_layers)
