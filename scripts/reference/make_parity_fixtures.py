#!/usr/bin/env python3
"""Make the reference fixtures that steerguard's TypeScript parity tests compare against.

Python is NOT a runtime dependency of steerguard. This script only (re)generates committed fixtures:

  test/fixtures/tiny/<llama|llama-tied-bf16|qwen2|gemma3|llama-rope-llama3|qwen2-rope-yarn|gemma3-rope-linear>/
      config.json, model.safetensors       tiny random HF models (save_pretrained)
      model.gguf                           the rotary-scaling ones also as llama.cpp's converter writes them
      reference.safetensors, reference.json   hook activations / logits / greedy continuations
  test/fixtures/parity/<smollm2|gemma3>.safetensors + .json
      references for the two real GGUF models fetched by scripts/fetch-models.sh

Stages (default: all):
  tiny   build + save the tiny random models, compute their references
  real   verify transformers' GGUF loading against gguf-py's dequantization, then compute the
         real-model references (needs .cache/models/*.gguf and the SmolLM2 tokenizer.json)

Every reference is computed by transformers (eager attention, float32 compute; bf16/f16 weights are
upcast exactly) with forward hooks, AND cross-checked against an independent ~60-line float32
re-implementation (`manual_forward`) whose hyper-parameters come from this script / the GGUF
metadata rather than from the transformers config object.

Hook conventions (TransformerLens-style, block index L from 0):
  hook_embed                = embedding output after any scaling (gemma: * float32(sqrt(d_model)))
                              == blocks.0.hook_resid_pre
  blocks.L.hook_resid_pre   = input of decoder block L
  blocks.L.hook_attn_out    = what the attention sub-block adds to the residual (after o_proj;
                              gemma3: after post_attention_layernorm)
  blocks.L.hook_resid_mid   = resid_pre + attn_out
  blocks.L.hook_mlp_out     = what the MLP sub-block adds (gemma3: after post_feedforward_layernorm)
  blocks.L.hook_resid_post  = resid_mid + mlp_out = output of block L
  hook_final_norm           = output of the final norm
  logits
See scripts/reference/README.md for how to regenerate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
TINY_DIR = REPO / "test" / "fixtures" / "tiny"
PARITY_DIR = REPO / "test" / "fixtures" / "parity"
NEAR_TIE = 1e-4  # top1-top2 logit margins below this are flagged as near-ties

T0 = time.time()
TIMINGS: dict[str, float] = {}


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


class Stage:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t = time.time()
        log(f"== {self.name}")

    def __exit__(self, *exc):
        TIMINGS[self.name] = round(time.time() - self.t, 2)
        log(f"== {self.name} done in {TIMINGS[self.name]:.1f}s")


def versions():
    import gguf  # noqa: F401
    import importlib.metadata as md
    import safetensors
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": md.version("gguf"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


# ----------------------------------------------------------------------------------------------
# Capturing hooks from a transformers model
# ----------------------------------------------------------------------------------------------


def _first(args, kwargs):
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _out(o):
    return o[0] if isinstance(o, tuple) else o


@torch.no_grad()
def hf_capture(model, family: str, ids: list[int], logits_last_only=False):
    """Run the HF model on one prompt; return {hook_name: [T, D] float32} + logits + hidden_states."""
    inner = model.model
    store: dict[str, torch.Tensor] = {}
    handles = []

    def put(name, t):
        assert name not in store, name
        store[name] = t[0].detach().float().clone()

    handles.append(inner.embed_tokens.register_forward_hook(lambda m, a, o: put("hook_embed", _out(o))))
    for L, layer in enumerate(inner.layers):
        p = f"blocks.{L}."
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, p=p: put(p + "hook_resid_pre", _first(a, k)), with_kwargs=True
            )
        )
        handles.append(layer.register_forward_hook(lambda m, a, o, p=p: put(p + "hook_resid_post", _out(o))))
        if family == "gemma3":
            attn_mod, mid_mod, mlp_mod = (
                layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm,
                layer.post_feedforward_layernorm,
            )
        else:  # llama / qwen2: post_attention_layernorm is the pre-MLP norm, its input is resid_mid
            attn_mod, mid_mod, mlp_mod = layer.self_attn, layer.post_attention_layernorm, layer.mlp
        handles.append(attn_mod.register_forward_hook(lambda m, a, o, p=p: put(p + "hook_attn_out", _out(o))))
        handles.append(
            mid_mod.register_forward_pre_hook(
                lambda m, a, k, p=p: put(p + "hook_resid_mid", _first(a, k)), with_kwargs=True
            )
        )
        handles.append(mlp_mod.register_forward_hook(lambda m, a, o, p=p: put(p + "hook_mlp_out", _out(o))))
    handles.append(inner.norm.register_forward_hook(lambda m, a, o: put("hook_final_norm", _out(o))))
    try:
        x = torch.tensor([ids], dtype=torch.long)
        kw = {"logits_to_keep": 1} if logits_last_only else {}
        out = model(input_ids=x, output_hidden_states=True, use_cache=False, **kw)
    finally:
        for h in handles:
            h.remove()
    store["logits"] = out.logits[0].float().clone()
    hs = [h[0].float() for h in out.hidden_states]
    # consistency of the hook definitions with HF's own hidden_states and with each other
    nL = len(inner.layers)
    assert torch.equal(store["hook_embed"], store["blocks.0.hook_resid_pre"])
    assert torch.equal(hs[0], store["hook_embed"])
    for L in range(nL):
        p = f"blocks.{L}."
        mid = store[p + "hook_resid_pre"] + store[p + "hook_attn_out"]
        assert torch.allclose(mid, store[p + "hook_resid_mid"], rtol=0, atol=1e-6 * (1 + mid.abs().max())), L
        post = store[p + "hook_resid_mid"] + store[p + "hook_mlp_out"]
        assert torch.allclose(post, store[p + "hook_resid_post"], rtol=0, atol=1e-6 * (1 + post.abs().max())), L
        if L + 1 < nL:
            assert torch.equal(store[p + "hook_resid_post"], store[f"blocks.{L + 1}.hook_resid_pre"])
            assert torch.equal(hs[L + 1], store[p + "hook_resid_post"]), L
    # HF's last hidden_states entry has the final norm applied
    assert torch.equal(hs[nL], store["hook_final_norm"])
    return store


# ----------------------------------------------------------------------------------------------
# Independent float32 re-implementation (cross-check of transformers + of the configs)
# ----------------------------------------------------------------------------------------------


def rms(x, w, eps, gemma):
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * (1.0 + w.float()) if gemma else w.float() * y


def rope(x, pos, theta, scaling=None):  # x [H, T, hd]; HF "rotate_half" (NeoX) layout
    hd = x.shape[-1]
    inv, scale = rope_inv_freq(theta, hd, scaling)
    f = pos[:, None].double() * inv[None, :]
    emb = torch.cat([f, f], -1)
    cos, sin = (emb.cos() * scale).float(), (emb.sin() * scale).float()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def rope_inv_freq(theta, dim, scaling=None):
    """Inverse frequencies (float64) and cos/sin multiplier of one layer, written from the YaRN paper /
    Llama 3.1 reference code rather than from transformers. scaling: None or a transformers-style dict."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv, 1.0
    factor = scaling["factor"]
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "llama3":
        old = scaling["original_max_position_embeddings"]
        lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
        out = []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        return torch.tensor(out, dtype=torch.float64), 1.0
    if kind == "yarn":
        old = scaling["original_max_position_embeddings"]
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

        def dim_of(rotations):  # dimension whose wavelength fits `rotations` times into the old context
            return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / max(hi - lo, 0.001)).clamp(0, 1)
        scale = scaling.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
        return inv / factor * ramp + inv * (1 - ramp), scale
    raise ValueError(kind)


@torch.no_grad()
def manual_forward(W: dict, spec: dict, ids: list[int]):
    """spec: family, n_layers, n_heads, n_kv_heads, head_dim, eps, rope_theta (list per layer),
    rope_scaling (optional list per layer of None or a transformers-style dict), window (list per layer,
    None = full), attn_scale, embed_scale (or None), act, tied."""
    g = spec["family"] == "gemma3"
    T = len(ids)
    H, KV, hd = spec["n_heads"], spec["n_kv_heads"], spec["head_dim"]
    x = W["model.embed_tokens.weight"][ids].float()
    if spec["embed_scale"] is not None:
        x = x * torch.tensor(spec["embed_scale"], dtype=torch.float32)
    out = {"hook_embed": x}
    pos = torch.arange(T)
    i = pos[:, None]
    j = pos[None, :]
    for L in range(spec["n_layers"]):
        p = f"model.layers.{L}."
        out[f"blocks.{L}.hook_resid_pre"] = x
        h = rms(x, W[p + "input_layernorm.weight"], spec["eps"], g)

        def lin(name, inp):
            y = inp @ W[p + name + ".weight"].float().T
            b = W.get(p + name + ".bias")
            return y + b.float() if b is not None else y

        q = lin("self_attn.q_proj", h).view(T, H, hd).transpose(0, 1)
        k = lin("self_attn.k_proj", h).view(T, KV, hd).transpose(0, 1)
        v = lin("self_attn.v_proj", h).view(T, KV, hd).transpose(0, 1)
        if g:
            q = rms(q, W[p + "self_attn.q_norm.weight"], spec["eps"], True)
            k = rms(k, W[p + "self_attn.k_norm.weight"], spec["eps"], True)
        scaling = spec.get("rope_scaling", [None] * spec["n_layers"])[L]
        q = rope(q, pos, spec["rope_theta"][L], scaling)
        k = rope(k, pos, spec["rope_theta"][L], scaling)
        rep = H // KV
        k = k.repeat_interleave(rep, 0)
        v = v.repeat_interleave(rep, 0)
        s = (q @ k.transpose(1, 2)) * spec["attn_scale"]
        allowed = j <= i
        if spec["window"][L] is not None:
            allowed = allowed & (j > i - spec["window"][L])
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s, -1) @ v  # [H, T, hd]
        a = a.transpose(0, 1).reshape(T, H * hd)
        attn = lin("self_attn.o_proj", a)
        if g:
            attn = rms(attn, W[p + "post_attention_layernorm.weight"], spec["eps"], True)
        out[f"blocks.{L}.hook_attn_out"] = attn
        x = x + attn
        out[f"blocks.{L}.hook_resid_mid"] = x
        h = rms(x, W[p + ("pre_feedforward_layernorm" if g else "post_attention_layernorm") + ".weight"], spec["eps"], g)
        gate = lin("mlp.gate_proj", h)
        act = torch.nn.functional.gelu(gate, approximate="tanh") if spec["act"] == "gelu_tanh" else torch.nn.functional.silu(gate)
        m = lin("mlp.down_proj", act * lin("mlp.up_proj", h))
        if g:
            m = rms(m, W[p + "post_feedforward_layernorm.weight"], spec["eps"], True)
        out[f"blocks.{L}.hook_mlp_out"] = m
        x = x + m
        out[f"blocks.{L}.hook_resid_post"] = x
    x = rms(x, W["model.norm.weight"], spec["eps"], g)
    out["hook_final_norm"] = x
    head = W["model.embed_tokens.weight"] if spec["tied"] else W["lm_head.weight"]
    out["logits"] = x @ head.float().T
    return out


def compare(a: dict, b: dict, what: str, rtol=2e-4):
    """Max abs diff relative to the tensor's max magnitude, for every common key."""
    worst = 0.0
    for k in a:
        if k not in b:
            continue
        x, y = a[k], b[k]
        if x.shape != y.shape:  # e.g. last-only logits
            x, y = x[-y.shape[0] :], y[-x.shape[0] :]
        d = (x - y).abs().max().item() / (1e-6 + y.abs().max().item())
        worst = max(worst, d)
        if d > rtol:
            raise AssertionError(f"{what}: {k} differs from manual forward: rel {d:.3g}")
    return worst


# ----------------------------------------------------------------------------------------------
# Greedy decoding
# ----------------------------------------------------------------------------------------------


def top2(logits: torch.Tensor):
    v, i = torch.topk(logits.float(), 2)
    return int(i[0]), float(v[0]), int(i[1]), float(v[1])


@torch.no_grad()
def greedy_nocache(model, ids: list[int], n: int, keep_logits=False):
    """Plain argmax loop, full forward each step (no KV cache). Returns ids, per-step info, logits."""
    seq = list(ids)
    steps, all_logits = [], []
    for _ in range(n):
        lg = model(input_ids=torch.tensor([seq]), use_cache=False, logits_to_keep=1).logits[0, -1].float()
        t1, v1, t2, v2 = top2(lg)
        assert t1 == int(torch.argmax(lg))
        steps.append({"token": t1, "top1_logit": v1, "second_token": t2, "second_logit": v2, "margin": v1 - v2})
        if keep_logits:
            all_logits.append(lg.clone())
        seq.append(t1)
    return seq[len(ids) :], steps, (torch.stack(all_logits) if keep_logits else None)


@torch.no_grad()
def greedy_generate(model, ids: list[int], n: int):
    """transformers' generate (KV cache), greedy, never stopping at EOS."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=None, pad_token_id=0, bos_token_id=None
    )
    saved = (model.generation_config.eos_token_id, model.config.eos_token_id)
    model.generation_config.eos_token_id = None  # otherwise generate() merges the model's EOS back in
    model.config.eos_token_id = None
    try:
        out = model.generate(
            torch.tensor([ids]), generation_config=gc, attention_mask=torch.ones(1, len(ids), dtype=torch.long)
        )
    finally:
        model.generation_config.eos_token_id, model.config.eos_token_id = saved
    return out[0, len(ids) :].tolist()


def gen_record(prompt_index, new_ids, steps, cached_ids, tokenizer_decode=None):
    margins = [s["margin"] for s in steps]
    rec = {
        "prompt_index": prompt_index,
        "new_tokens": new_ids,
        "steps": steps,
        "min_margin": min(margins),
        "near_tie_steps": [k for k, m in enumerate(margins) if m < NEAR_TIE],
        "kv_cache_generate_matches": cached_ids == new_ids,
    }
    if cached_ids != new_ids:
        first = next((k for k in range(min(len(new_ids), len(cached_ids))) if cached_ids[k] != new_ids[k]),
                     min(len(new_ids), len(cached_ids)))
        rec["kv_cache_generate_first_divergence"] = first
        rec["kv_cache_generate_tokens"] = cached_ids
    if tokenizer_decode is not None:
        rec["text"] = tokenizer_decode(new_ids)
    return rec


# ----------------------------------------------------------------------------------------------
# Stage 1: tiny random models
# ----------------------------------------------------------------------------------------------

TINY_LENGTHS = [12, 1, 24, 5, 9, 17, 3, 20]  # prompt 0 (all-position hooks) is longer than gemma's window 4
TINY_GEN = 16
TINY_GEN_PROMPTS = 3


def tiny_specs():
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, max_position_embeddings=128,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None, attention_dropout=0.0)
    llama = dict(common, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 rms_norm_eps=1e-5, hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    # Rotary scaling models: smaller (d_model 32, 2 layers) to keep the fixtures small; the original
    # context lengths are short so that the scaled and unscaled frequency bands both show up.
    small = dict(common, hidden_size=32, intermediate_size=64, max_position_embeddings=512, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, hidden_act="silu")
    llama3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    yarn = {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": 64}
    linear = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 4.0}
    small_types = ["sliding_attention", "full_attention"]
    small_spec = dict(n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, window=[None] * 2,
                      attn_scale=16 ** -0.5, embed_scale=None, act="silu", tied=False)
    return {
        "llama-rope-llama3": dict(
            family="llama", cls="LlamaForCausalLM", dtype=torch.float32, seed=5, gguf=True,
            config=LlamaConfig(**small, rms_norm_eps=1e-5, rope_parameters=llama3, tie_word_embeddings=False),
            spec=dict(small_spec, eps=1e-5, rope_theta=[1e4] * 2, rope_scaling=[llama3] * 2),
        ),
        "qwen2-rope-yarn": dict(
            family="qwen2", cls="Qwen2ForCausalLM", dtype=torch.float32, seed=6, gguf=True,
            # max_position_embeddings = factor * original, as transformers expects of YaRN configs
            config=Qwen2Config(**dict({k: v for k, v in small.items() if k != "head_dim"}, max_position_embeddings=256),
                               rms_norm_eps=1e-6,
                               use_sliding_window=False, rope_parameters=yarn, tie_word_embeddings=False),
            spec=dict(small_spec, eps=1e-6, rope_theta=[100.0] * 2, rope_scaling=[yarn] * 2),
        ),
        "gemma3-rope-linear": dict(
            family="gemma3", cls="Gemma3ForCausalLM", dtype=torch.float32, seed=7, gguf=True,
            init=dict(embed_std=0.125, post_norm_offset=2.0),
            config=Gemma3TextConfig(
                **{k: v for k, v in small.items() if k != "hidden_act"}, rms_norm_eps=1e-6,
                hidden_activation="gelu_pytorch_tanh", sliding_window=4, layer_types=small_types,
                rope_parameters={"full_attention": linear,
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                query_pre_attn_scalar=16, final_logit_softcapping=None, attn_logit_softcapping=None,
                tie_word_embeddings=True, use_bidirectional_attention=False),
            spec=dict(small_spec, eps=1e-6, rope_theta=[1e4, 1e6], rope_scaling=[None, linear], window=[4, None],
                      embed_scale=math.sqrt(32), act="gelu_tanh", tied=True),
        ),
        "llama": dict(
            family="llama", cls="LlamaForCausalLM", dtype=torch.float32, seed=1,
            config=LlamaConfig(**llama, tie_word_embeddings=False),
            spec=dict(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, eps=1e-5, rope_theta=[1e4] * 3,
                      window=[None] * 3, attn_scale=16 ** -0.5, embed_scale=None, act="silu", tied=False),
        ),
        "llama-tied-bf16": dict(
            family="llama", cls="LlamaForCausalLM", dtype=torch.bfloat16, seed=2,
            init=dict(embed_std=0.25, out_scale=2.0),
            config=LlamaConfig(**llama, tie_word_embeddings=True),
            spec=dict(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, eps=1e-5, rope_theta=[1e4] * 3,
                      window=[None] * 3, attn_scale=16 ** -0.5, embed_scale=None, act="silu", tied=True),
        ),
        "qwen2": dict(
            family="qwen2", cls="Qwen2ForCausalLM", dtype=torch.float16, seed=3,
            config=Qwen2Config(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
                               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                               tie_word_embeddings=False),
            spec=dict(n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, eps=1e-6, rope_theta=[1e6] * 2,
                      window=[None] * 2, attn_scale=16 ** -0.5, embed_scale=None, act="silu", tied=False),
        ),
        "gemma3": dict(
            family="gemma3", cls="Gemma3ForCausalLM", dtype=torch.float32, seed=4,
            init=dict(embed_std=0.125, post_norm_offset=2.0),
            config=Gemma3TextConfig(
                **common, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", sliding_window=4, layer_types=layer_types,
                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                query_pre_attn_scalar=32, final_logit_softcapping=None, attn_logit_softcapping=None,
                tie_word_embeddings=True, use_bidirectional_attention=False),
            spec=dict(n_layers=4, n_heads=2, n_kv_heads=1, head_dim=32, eps=1e-6,
                      rope_theta=[1e4 if t == "sliding_attention" else 1e6 for t in layer_types],
                      window=[4 if t == "sliding_attention" else None for t in layer_types],
                      attn_scale=32 ** -0.5, embed_scale=math.sqrt(64), act="gelu_tanh", tied=True),
        ),
    }


@torch.no_grad()
def randomize(model, family, seed, embed_std=1.0, out_scale=1.0, post_norm_offset=0.0):
    """Non-trivial random init: every weight, bias and norm weight random (fixed seed).
    embed_std / out_scale (o_proj, down_proj) / post_norm_offset (gemma post-norms) are tuned so that the
    block outputs are comparable to the embeddings: with tied embeddings a random model otherwise just
    repeats its input token, which makes a weak generation test."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("norm.weight"):
            r = torch.randn(p.shape, generator=gen) * 0.5
            if family == "gemma3":  # gemma RMSNorm multiplies by (1 + w)
                p.copy_(r + (post_norm_offset if ".post_" in name else 0.0))
            else:
                p.copy_(1.0 + r)
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * embed_std)
        elif name == "lm_head.weight":
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[1])))
        else:  # linear weight [out, in]
            sc = out_scale if ("o_proj" in name or "down_proj" in name) else 1.0
            p.copy_(torch.randn(p.shape, generator=gen) * (sc / math.sqrt(p.shape[1])))


def add_legacy_config_keys(path: Path, family: str):
    """transformers 5 writes rope_parameters/dtype only; most checkpoints in the wild carry the v4 keys
    (rope_theta, rope_local_base_freq, torch_dtype). Write both spellings so loaders of either kind work."""
    cfg = json.loads(path.read_text())
    rp = cfg.get("rope_parameters") or {}
    if family == "gemma3":
        cfg.setdefault("rope_theta", rp["full_attention"]["rope_theta"])
        cfg.setdefault("rope_local_base_freq", rp["sliding_attention"]["rope_theta"])
    else:
        cfg.setdefault("rope_theta", rp["rope_theta"])
    if "dtype" in cfg:
        cfg.setdefault("torch_dtype", cfg["dtype"])
    # transformers' private default (6) contradicts the explicit layer_types of the tiny gemma3; layer_types
    # is authoritative, so drop it rather than leave a misleading value in the file.
    cfg.pop("_sliding_window_pattern", None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3"}


def llamacpp_rope_freqs(rp: dict, dim: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: for llama3 rope scaling, the
    per-dimension divisors of the base frequencies, stored as the F32 tensor rope_freqs.weight."""
    base, factor = rp["rope_theta"], rp["factor"]
    lo, hi, old = rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_gguf(path: Path, s: dict, cfgj: dict, W: dict):
    """Write the tiny model as llama.cpp's convert_hf_to_gguf.py would (F32): its tensor names, llama's
    permuted q/k rows, gemma's (1 + w) norms, and its rotary scaling keys (linear: type + factor; yarn:
    type, factor, original context and any of attention_factor / beta_fast / beta_slow given; llama3:
    the rope_freqs.weight tensor and no scaling key). Returns the rope_freqs divisors (or None)."""
    import gguf

    family, spec = s["family"], s["spec"]
    arch = GGUF_ARCH[family]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{path.parent.name}")
    w.add_block_count(spec["n_layers"])
    w.add_context_length(cfgj["max_position_embeddings"])
    w.add_embedding_length(cfgj["hidden_size"])
    w.add_feed_forward_length(cfgj["intermediate_size"])
    w.add_head_count(spec["n_heads"])
    w.add_head_count_kv(spec["n_kv_heads"])
    w.add_key_length(spec["head_dim"])
    w.add_value_length(spec["head_dim"])
    w.add_rope_dimension_count(spec["head_dim"])
    w.add_layer_norm_rms_eps(spec["eps"])
    rp = cfgj["rope_parameters"]
    if family == "gemma3":
        w.add_sliding_window(max(x for x in spec["window"] if x is not None))
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", spec["window"].index(None) + 1)
        rp = rp["full_attention"]  # llama.cpp: local layers use base 10000, unscaled
    w.add_rope_freq_base(rp["rope_theta"])
    rope_freqs = None
    kind = rp.get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if rp.get("attention_factor") is not None:
            w.add_rope_scaling_yarn_attn_factor(rp["attention_factor"])
        if rp.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
        if rp.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    elif kind == "llama3":
        rope_freqs = llamacpp_rope_freqs(rp, spec["head_dim"])
        w.add_tensor("rope_freqs.weight", rope_freqs)
    gemma = family == "gemma3"

    def put(gguf_name, hf):
        a = W[hf].float().numpy().copy()
        if gemma and "norm" in hf:
            a = a + 1.0
        if family == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            a = llamacpp_permute(a, spec["n_heads"] if ".q_proj." in hf else spec["n_kv_heads"])
        w.add_tensor(gguf_name, np.ascontiguousarray(a, dtype=np.float32))

    put("token_embd.weight", "model.embed_tokens.weight")
    parts = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    if gemma:
        parts += ["attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"]
    for L in range(spec["n_layers"]):
        for part in parts:
            for kind_ in ("weight", "bias"):
                name = f"blk.{L}.{part}.{kind_}"
                if hf_name(name, family) in W:
                    put(name, hf_name(name, family))
    put("output_norm.weight", "model.norm.weight")
    if not spec["tied"]:
        put("output.weight", "lm_head.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # read back: every tensor round-trips, and none of W is left out
    reader = gguf.GGUFReader(str(path))
    seen = set()
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        hf = hf_name(t.name, family)
        a = np.array(t.data).reshape(W[hf].shape)
        if family == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            n = spec["n_heads"] if "attn_q" in t.name else spec["n_kv_heads"]
            a = a.reshape(n, a.shape[0] // n // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        if gemma and "norm" in hf:
            a = a - 1.0
        assert np.array_equal(a, W[hf].float().numpy()) or (gemma and np.allclose(a, W[hf].numpy(), atol=1e-6)), t.name
        seen.add(hf)
    assert seen == set(W) - ({"lm_head.weight"} if spec["tied"] else set()), set(W) ^ seen
    return rope_freqs


def check_rope_buffers(model, s: dict, rope_freqs):
    """transformers' inverse frequencies and attention factor equal the independent formulas here (and,
    for llama3, the base frequencies divided by llama.cpp's rope_freqs)."""
    spec = s["spec"]
    emb = model.model.rotary_emb
    for L in range(spec["n_layers"]):
        scaling = spec.get("rope_scaling", [None] * spec["n_layers"])[L]
        inv, scale = rope_inv_freq(spec["rope_theta"][L], spec["head_dim"], scaling)
        if s["family"] == "gemma3":
            lt = model.config.layer_types[L]
            hf_inv = getattr(emb, f"{lt}_inv_freq")
            hf_scale = getattr(emb, f"{lt}_attention_scaling")
        else:
            hf_inv, hf_scale = emb.inv_freq, emb.attention_scaling
        assert torch.allclose(hf_inv.double(), inv, rtol=1e-6, atol=0), (L, hf_inv, inv)
        assert abs(hf_scale - scale) < 1e-9, (L, hf_scale, scale)
        if rope_freqs is not None:
            base, _ = rope_inv_freq(spec["rope_theta"][L], spec["head_dim"])
            assert torch.allclose(base / torch.from_numpy(rope_freqs).double(), inv, rtol=1e-6), L


def stage_tiny(only=None):
    import transformers
    from safetensors.torch import save_file

    for name, s in tiny_specs().items():
        if only and name not in only:
            continue
        with Stage(f"tiny/{name}"):
            out_dir = TINY_DIR / name
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in out_dir.iterdir():
                f.unlink()
            cls = getattr(transformers, s["cls"])
            cfg = s["config"]
            cfg._attn_implementation = "eager"
            torch.manual_seed(s["seed"])
            model = cls(cfg).float()
            randomize(model, s["family"], s["seed"], **s.get("init", {}))
            model = model.to(s["dtype"])
            model.save_pretrained(out_dir)  # safetensors
            gc_file = out_dir / "generation_config.json"
            if gc_file.exists():
                gc_file.unlink()
            add_legacy_config_keys(out_dir / "config.json", s["family"])

            # reload exactly what was saved, upcast to float32 (exact for bf16/f16)
            model = cls.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
            assert all(p.dtype == torch.float32 for p in model.parameters())
            W = {k: v.detach() for k, v in model.state_dict().items()}
            spec = dict(s["spec"], family=s["family"])
            rope_freqs = None
            if s.get("gguf"):
                rope_freqs = write_tiny_gguf(out_dir / "model.gguf", s, json.loads((out_dir / "config.json").read_text()), W)
            check_rope_buffers(model, s, rope_freqs)
            rng = np.random.default_rng(1000 + s["seed"])
            prompts = [rng.integers(0, 256, size=n).tolist() for n in TINY_LENGTHS]

            tensors = {}
            last = {k: [] for k in ["hook_embed", "resid_post", "attn_out", "mlp_out", "hook_final_norm", "logits"]}
            last_info = []
            worst = 0.0
            for pi, ids in enumerate(prompts):
                st = hf_capture(model, s["family"], ids)
                worst = max(worst, compare(st, manual_forward(W, spec, ids), f"{name} prompt {pi}"))
                nL = spec["n_layers"]
                last["hook_embed"].append(st["hook_embed"][-1])
                last["resid_post"].append(torch.stack([st[f"blocks.{L}.hook_resid_post"][-1] for L in range(nL)]))
                last["attn_out"].append(torch.stack([st[f"blocks.{L}.hook_attn_out"][-1] for L in range(nL)]))
                last["mlp_out"].append(torch.stack([st[f"blocks.{L}.hook_mlp_out"][-1] for L in range(nL)]))
                last["hook_final_norm"].append(st["hook_final_norm"][-1])
                last["logits"].append(st["logits"][-1])
                t1, v1, t2, v2 = top2(st["logits"][-1])
                last_info.append({"top1_token": t1, "top1_logit": v1, "second_token": t2, "second_logit": v2,
                                  "margin": v1 - v2})
                if pi == 0:
                    for k, v in st.items():
                        tensors[f"prompt0.{k}"] = v
            for k, v in last.items():
                tensors[f"last.{k}"] = torch.stack(v)

            gens, gen_logits = [], []
            for pi in range(TINY_GEN_PROMPTS):
                new, steps, lg = greedy_nocache(model, prompts[pi], TINY_GEN, keep_logits=True)
                cached = greedy_generate(model, prompts[pi], TINY_GEN)
                gens.append(gen_record(pi, new, steps, cached))
                gen_logits.append(lg)
                # the no-cache step logits must equal a single forward over the whole sequence
                full = model(input_ids=torch.tensor([prompts[pi] + new]), use_cache=False).logits[0].float()
                n0 = len(prompts[pi])
                assert torch.allclose(full[n0 - 1 : n0 - 1 + TINY_GEN], lg, atol=1e-4, rtol=1e-4)
                log(f"  gen p{pi}: {new}  min margin {gens[-1]['min_margin']:.4g}  "
                    f"kv-cache generate matches: {gens[-1]['kv_cache_generate_matches']}")
            tensors["gen.logits"] = torch.stack(gen_logits)
            tensors = {k: v.contiguous().float() for k, v in tensors.items()}
            save_file(tensors, str(out_dir / "reference.safetensors"),
                      metadata={"generated_by": "scripts/reference/make_parity_fixtures.py"})

            cfgj = json.loads((out_dir / "config.json").read_text())
            meta = {
                "generated_by": "scripts/reference/make_parity_fixtures.py --stage tiny",
                "versions": versions(),
                "model": name,
                "family": s["family"],
                "architecture": s["cls"],
                "stored_dtype": str(s["dtype"]).replace("torch.", ""),
                "compute_dtype": "float32",
                "attn_implementation": "eager",
                "n_layers": spec["n_layers"],
                "d_model": cfgj["hidden_size"],
                "vocab_size": cfgj["vocab_size"],
                "n_heads": spec["n_heads"],
                "n_kv_heads": spec["n_kv_heads"],
                "head_dim": spec["head_dim"],
                "rms_norm_eps": spec["eps"],
                "rope_theta_per_layer": spec["rope_theta"],
                "rope_scaling_per_layer": spec.get("rope_scaling", [None] * spec["n_layers"]),
                "gguf": "model.gguf: written like llama.cpp's convert_hf_to_gguf.py (F32)" if s.get("gguf") else None,
                "sliding_window_per_layer": spec["window"],
                "sliding_window_semantics": "query i attends keys j with i - window < j <= i (window keys incl. itself)",
                "attn_scale": spec["attn_scale"],
                "embed_scale": spec["embed_scale"],
                "tie_word_embeddings": spec["tied"],
                "hidden_act": spec["act"],
                "random_init": dict({"seed": s["seed"]}, **s.get("init", {})),
                "prompts": prompts,
                "prompt_lengths": [len(p) for p in prompts],
                "last_token": last_info,
                "near_tie_threshold": NEAR_TIE,
                "generation": {"n_new_tokens": TINY_GEN, "prompts": list(range(TINY_GEN_PROMPTS)),
                               "method": "greedy argmax, no EOS, full forward per step", "runs": gens},
                "max_rel_diff_vs_manual_forward": worst,
                "tensors": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in sorted(tensors.items())},
            }
            (out_dir / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
            log(f"  {name}: max rel diff HF vs manual {worst:.3g}; files: "
                + ", ".join(f"{f.name}={f.stat().st_size}" for f in sorted(out_dir.iterdir())))


# ----------------------------------------------------------------------------------------------
# Stage 2: real GGUF models
# ----------------------------------------------------------------------------------------------

LONG_PASSAGE = """Long before anyone carried a watch, people told the time by looking at shadows. A stick pushed into the ground, a tall stone, or the edge of a roof would throw a shadow that swung slowly from west to east as the sun crossed the sky. Farmers learned that the shortest shadow of the day marked noon, and that the length of the noon shadow changed with the seasons, growing long in winter and short in summer. From these simple observations came the sundial, which divided the daylight into parts that could be named and counted.

Sundials had an obvious weakness: they were useless at night and on cloudy days. Water clocks filled the gap. In the simplest kind, water dripped from a small hole in the bottom of a bowl, and marks on the inside showed how much time had passed as the level fell. Later designs used floats, gears, and even little figures that moved or rang bells, so that a whole town could hear the hours. Sand glasses worked in a similar way and were popular on ships, where sailors turned them over again and again to keep track of their watches and to estimate how far they had travelled.

Mechanical clocks appeared in European towns in the late Middle Ages. They were driven by falling weights and regulated by a device called an escapement, which let the gears advance in small, regular steps. These early clocks were large, loud, and not very accurate; they could drift by a quarter of an hour in a single day, and keepers had to reset them by the sun. Even so, they changed daily life. Markets opened and closed by the bell, and the idea of an hour as a fixed length of time, rather than a twelfth of the daylight, slowly became normal.

The pendulum brought a great leap in precision. A swinging weight takes almost the same time for each swing, whether the swing is wide or narrow, and clockmakers used this property to keep their gears in step. Good pendulum clocks lost only a few seconds a day. Springs, in turn, made clocks small enough to carry, and pocket watches became a sign of wealth and care. Navigators needed accurate clocks to work out their longitude at sea, and the long search for a reliable marine chronometer produced some of the finest instruments ever made by hand.

In the last century, quartz crystals and then atomic clocks pushed accuracy further than anyone in the age of sundials could have imagined. A cheap quartz watch now keeps better time than the best clocks of three hundred years ago, and atomic clocks are so steady that they would lose less than a second over millions of years. Satellites carry such clocks to help phones and cars find their position, and computers around the world agree on the time by asking one another many times a day. Yet the basic idea remains the same as it was for the farmer watching a shadow: find something that repeats in a steady way, and count it."""

SMOL_USER_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the ocean.",
    "Explain why the sky is blue in two sentences.",
    "Give me three tips for staying focused while studying.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 multiplied by 23?",
    LONG_PASSAGE + "\n\nSummarize the passage above in one sentence.",
]

GEMMA_TEXT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The three primary colors are",
    "Water boils at 100 degrees Celsius, which is",
    "Here is a list of the planets in our solar system: Mercury, Venus,",
    "Dear neighbours, we are organising a picnic in the park next Saturday and",
    LONG_PASSAGE,
]
REAL_GEN = 32
REAL_GEN_PROMPTS = 4

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def sha256(path: Path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_meta(reader):
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "scores", "token_type", "merges"):
            continue
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001
            pass
    return out


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF q/k rows -> GGUF (interleaved-rope) rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str, family: str) -> str:
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    _, L, part, kind = gguf_name.split(".")
    if part == "ffn_norm":
        part_hf = "pre_feedforward_layernorm" if family == "gemma3" else "post_attention_layernorm"
    elif part == "post_attention_norm":
        part_hf = "post_attention_layernorm"
    elif part == "post_ffw_norm":
        part_hf = "post_feedforward_layernorm"
    else:
        part_hf = GGUF_TO_HF[part]
    return f"model.layers.{L}.{part_hf}.{kind}"


def np_dequant_q5_0(raw: np.ndarray) -> np.ndarray:
    """Independent numpy Q5_0 dequantizer (ggml dequantize_row_q5_0), since transformers' torch
    dequantizer has no Q5_0. Block = f16 d, u32 qh (5th bits), 16 bytes of nibbles -> 32 values."""
    b = raw.reshape(-1, 22)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    qh = b[:, 2:6].copy().view(np.uint32)  # [nb, 1]
    qs = b[:, 6:22].astype(np.int32)  # [nb, 16]
    j = np.arange(16, dtype=np.uint32)
    lo = (qs & 0xF) | ((((qh >> j) & 1) << 4).astype(np.int32))
    hi = (qs >> 4) | ((((qh >> (j + 16)) & 1) << 4).astype(np.int32))
    return (np.concatenate([lo, hi], axis=1) - 16).astype(np.float32) * d


def load_real(path: Path, family: str):
    """Config via AutoConfig(gguf_file=...), tensors via transformers' own GGUF loader
    (load_gguf_checkpoint: gguf-py dequantization + llama q/k un-permute + gemma norm -1),
    then checked tensor by tensor against gguf-py's dequantization (and, where it has the type,
    transformers' independent torch dequantizer)."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    loaded = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    sd = {k: torch.as_tensor(v).float() for k, v in loaded["tensors"].items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    model.tie_weights()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    W = {k: v.detach() for k, v in model.state_dict().items()}

    # ---- dequantization / layout check
    try:
        from transformers.integrations.gguf.dequant import GGML_BLOCK
        from transformers.integrations.gguf.dequant import dequantize as tf_torch_dequant
    except Exception:  # noqa: BLE001
        GGML_BLOCK, tf_torch_dequant = {}, None
    reader = gguf.GGUFReader(str(path))
    H, KV = config.num_attention_heads, config.num_key_value_heads
    per_type: dict[str, dict] = {}
    for t in reader.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # torch order
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        ref = ref.reshape(shape)
        name = hf_name(t.name, family)
        hf = W[name].numpy()
        layout = "identity"
        if family == "llama" and ".attn_q." in t.name:
            hf, layout = llamacpp_permute(hf, H), "llama.cpp q permute(n_head) of HF"
        elif family == "llama" and ".attn_k." in t.name:
            hf, layout = llamacpp_permute(hf, KV), "llama.cpp k permute(n_kv_head) of HF"
        elif family == "gemma3" and t.name.endswith("norm.weight"):
            hf, layout = hf + np.float32(1.0), "HF + 1 (gemma (1+w) norms)"
        assert hf.shape == ref.shape, (t.name, hf.shape, ref.shape)
        diff = float(np.abs(hf - ref).max())
        scale = float(np.abs(ref).max())
        tname = t.tensor_type.name
        e = per_type.setdefault(tname, {"tensors": 0, "max_abs_diff_transformers_vs_ggufpy": 0.0, "layouts": set(),
                                        "max_abs_diff_independent_dequant_vs_ggufpy": None, "max_abs_value": 0.0})
        e["tensors"] += 1
        e["max_abs_diff_transformers_vs_ggufpy"] = max(e["max_abs_diff_transformers_vs_ggufpy"], diff)
        e["max_abs_value"] = max(e["max_abs_value"], scale)
        e["layouts"].add(layout)
        # norm "+1" round trip in float32 is not bit-exact; everything else must be exact
        tol = 1e-6 * max(1.0, scale) if layout.startswith("HF + 1") else 0.0
        assert diff <= tol, f"{t.name}: transformers vs gguf-py dequant differ by {diff}"
        alt = None
        if tname == "Q5_0":
            alt = np_dequant_q5_0(np.asarray(t.data).view(np.uint8).reshape(-1)).reshape(shape)
        elif tf_torch_dequant is not None and int(t.tensor_type) in GGML_BLOCK:
            raw = torch.from_numpy(np.array(t.data, copy=True).view(np.uint8).reshape(-1))
            alt = tf_torch_dequant(raw, int(t.tensor_type)).numpy().reshape(shape)
        if alt is not None:
            d2 = float(np.abs(alt - ref).max())
            prev = e["max_abs_diff_independent_dequant_vs_ggufpy"] or 0.0
            e["max_abs_diff_independent_dequant_vs_ggufpy"] = max(prev, d2)
    for e in per_type.values():
        e["layouts"] = sorted(e["layouts"])
    return model, config, W, reader, per_type


def real_spec(family: str, reader, config) -> dict:
    """Hyper-parameters straight from the GGUF metadata (+ llama.cpp's hard-coded gemma3 constants),
    independent of transformers' config, for manual_forward and to check the config."""
    meta = gguf_meta(reader)
    a = meta["general.architecture"]
    n_layers = int(meta[f"{a}.block_count"])
    d = int(meta[f"{a}.embedding_length"])
    H = int(meta[f"{a}.attention.head_count"])
    KV = int(meta[f"{a}.attention.head_count_kv"])
    hd = int(meta.get(f"{a}.attention.key_length", d // H))
    eps = float(meta[f"{a}.attention.layer_norm_rms_epsilon"])
    theta = float(meta[f"{a}.rope.freq_base"])
    tied = all(t.name != "output.weight" for t in reader.tensors)
    if family == "gemma3":
        # llama.cpp (src/llama-model.cpp, LLM_ARCH_GEMMA3): swa pattern 6 (5 local : 1 global),
        # local rope base 10000, attention scale 1/sqrt(head_dim) for all sizes but 27B.
        sw = int(meta[f"{a}.attention.sliding_window"])
        is_global = [(L + 1) % 6 == 0 for L in range(n_layers)]
        spec = dict(family="gemma3", n_layers=n_layers, n_heads=H, n_kv_heads=KV, head_dim=hd, eps=eps,
                    rope_theta=[theta if g else 10000.0 for g in is_global],
                    window=[None if g else sw for g in is_global], attn_scale=hd ** -0.5,
                    embed_scale=math.sqrt(d), act="gelu_tanh", tied=tied)
        # check transformers' config against it
        want = {
            "sliding_window": sw, "head_dim": hd, "query_pre_attn_scalar": hd, "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": ["full_attention" if g else "sliding_attention" for g in is_global],
            "tie_word_embeddings": True, "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "num_attention_heads": H, "num_key_value_heads": KV, "hidden_size": d, "num_hidden_layers": n_layers,
        }
        for k, v in want.items():
            assert getattr(config, k) == v, (k, getattr(config, k), v)
        rp = config.rope_parameters
        assert rp["full_attention"]["rope_theta"] == theta and rp["sliding_attention"]["rope_theta"] == 10000.0, rp
        assert rp["full_attention"].get("rope_type", "default") == "default"
        assert rp["sliding_attention"].get("rope_type", "default") == "default"
        assert abs(config.rms_norm_eps - eps) < 1e-12
    else:
        assert int(meta.get(f"{a}.rope.dimension_count", hd)) == hd
        spec = dict(family=family, n_layers=n_layers, n_heads=H, n_kv_heads=KV, head_dim=hd, eps=eps,
                    rope_theta=[theta] * n_layers, window=[None] * n_layers, attn_scale=hd ** -0.5,
                    embed_scale=None, act="silu", tied=tied)
        assert config.rope_parameters["rope_theta"] == theta and config.tie_word_embeddings == tied
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        assert config.num_key_value_heads == KV and head_dim == hd and config.hidden_act == "silu"
        assert not getattr(config, "use_sliding_window", False), "sliding-window qwen2 configs are not checked"
    return spec


def smol_tokenizer(tok_dir: Path, reader):
    """The real SmolLM2 tokenizer.json; the chat template (absent from that folder) is the GGUF's
    tokenizer.chat_template, which is SmolLM2-Instruct's template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tmpl = gguf_meta(reader)["tokenizer.chat_template"]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    tok.chat_template = tmpl
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return tok, raw, tmpl


def gemma_sentencepiece_from_gguf(reader):
    """Independent cross-check for the gemma token ids: a SentencePiece BPE model rebuilt from the
    GGUF vocabulary (pieces, scores, types) with Gemma 3's normalizer settings."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = reader.fields
    toks = f["tokenizer.ggml.tokens"].contents()
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(toks)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.treat_whitespace_as_suffix = False
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 3, 2, 1, 0
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    seen = set()
    for t, s, ty in zip(toks, scores, types):
        p = m.pieces.add()
        piece = "\u2581" * len(t) if (" " in t and not t.strip()) else t
        if piece in seen:  # keep the proto loadable; duplicates are never produced by the encoder anyway
            piece = f"<dup_{len(seen)}>"
        seen.add(piece)
        p.piece, p.score, p.type = piece, float(s), int(ty)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def chat_ids(tok, text: str):
    """A user message through the tokenizer's chat template with the generation prompt: (text, ids)."""
    msgs = [{"role": "user", "content": text}]
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return rendered, list(ids)


def qwen_prompts(models_dir: Path, fname: str, reader):
    """Qwen2.5 instruct: transformers' tokenizer rebuilt from the GGUF vocabulary and merges, the
    GGUF's own chat template (default system prompt). Cross-check: a byte-level BPE built with the
    tokenizers library straight from tokenizer.ggml.tokens/merges gives the same ids on the rendered
    text (special tokens split out by hand, as the chat template emits them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
    meta = gguf_meta(reader)
    tok.chat_template = meta["tokenizer.chat_template"]
    f = reader.fields
    vocab_list = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(vocab_list)}
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # Qwen2's pre-tokenizer regex (the one llama.cpp names "qwen2"), then byte-level mapping
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    from tokenizers import Regex

    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(vocab_list, types) if int(ty) == 3]  # CONTROL tokens
    split = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")
    prompts, agree = [], []
    for text in SMOL_USER_PROMPTS:
        rendered, ids = chat_ids(tok, text)
        indep = []
        for piece in split.split(rendered):
            if not piece:
                continue
            indep.extend([vocab[piece]] if piece in specials else bpe.encode(piece, add_special_tokens=False).ids)
        agree.append(indep == ids)
        prompts.append({"user": text, "text": rendered, "ids": ids})
    xcheck = all(agree)
    log(f"  byte-level BPE from the GGUF vocab/merges agrees with transformers' GGUF tokenizer: {agree}")
    note = ("transformers AutoTokenizer.from_pretrained(gguf_file=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf) + the "
            "GGUF's tokenizer.chat_template, apply_chat_template(add_generation_prompt=True), default system "
            "prompt; cross-checked against a byte-level BPE (tokenizers library) built from the GGUF "
            f"tokens/merges with Qwen2's pre-tokenizer regex: agree on all = {xcheck}")
    return tok, prompts, xcheck, note


def stage_real(models_dir: Path, tok_dir: Path, only=None):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    PARITY_DIR.mkdir(parents=True, exist_ok=True)
    jobs = [("smollm2", SMOL_FILE, "llama"), ("gemma3", GEMMA_FILE, "gemma3"), ("qwen2.5-0.5b", QWEN_FILE, "qwen2")]
    for key, fname, family in jobs:
        if only and key not in only:
            continue
        path = models_dir / fname
        with Stage(f"real/{key}/load+dequant-check"):
            model, config, W, reader, deq = load_real(path, family)
            spec = real_spec(family, reader, config)
            for tname, e in deq.items():
                log(f"  {tname:5s} x{e['tensors']:3d}: transformers vs gguf-py max|diff| "
                    f"{e['max_abs_diff_transformers_vs_ggufpy']:.3g}; independent dequant vs gguf-py "
                    f"{e['max_abs_diff_independent_dequant_vs_ggufpy']}; layouts {e['layouts']}")
        with Stage(f"real/{key}/tokenize"):
            if key == "smollm2":
                tok, raw, tmpl = smol_tokenizer(tok_dir, reader)
                prompts = []
                for text in SMOL_USER_PROMPTS:
                    rendered, ids = chat_ids(tok, text)
                    assert ids == raw.encode(rendered, add_special_tokens=False).ids
                    # cross-check: transformers' tokenizer rebuilt from the GGUF gives the same ids
                    prompts.append({"user": text, "text": rendered, "ids": ids})
                gguf_tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
                xcheck = all(gguf_tok.encode(p["text"], add_special_tokens=False) == p["ids"] for p in prompts)
                log(f"  GGUF-embedded tokenizer agrees with tokenizer.json on all prompts: {xcheck}")
                decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
                tok_note = ("tokenizer.json from HuggingFaceTB/SmolLM2-135M-Instruct (shared/models/"
                            "SmolLM2-135M-Instruct-tokenizer) + the GGUF's tokenizer.chat_template; "
                            "apply_chat_template(add_generation_prompt=True), default system prompt; "
                            f"transformers' GGUF-built tokenizer gives identical ids: {xcheck}")
            elif family == "qwen2":
                tok, prompts, xcheck, tok_note = qwen_prompts(models_dir, fname, reader)
                decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
            else:
                tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=fname)
                sp = gemma_sentencepiece_from_gguf(reader)
                bos = int(gguf_meta(reader)["tokenizer.ggml.bos_token_id"])
                prompts, agree = [], []
                for text in GEMMA_TEXT_PROMPTS:
                    ids = tok.encode(text, add_special_tokens=False)
                    assert bos not in ids
                    ids = [bos] + list(ids)
                    agree.append(sp.encode(text) == ids[1:])
                    prompts.append({"text": text, "ids": ids})
                xcheck = all(agree)
                log(f"  sentencepiece(GGUF vocab) agrees with transformers' GGUF tokenizer: {agree}")
                decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
                tok_note = ("transformers AutoTokenizer.from_pretrained(gguf_file=gemma-3-270m-q4_k_m.gguf) "
                            "(vocab from the GGUF), BOS (id 2) prepended by hand, no other special tokens; "
                            "cross-checked against a SentencePiece BPE model rebuilt from the GGUF vocab "
                            f"(pieces/scores/types, identity normalizer, no dummy prefix): agree on all = {xcheck}")
                if not xcheck:
                    for p, a in zip(prompts, agree):
                        if not a:
                            log("   disagreement:", repr(p["text"][:60]), p["ids"][1:30], sp.encode(p["text"])[:29])
            for i, p in enumerate(prompts):
                log(f"  prompt {i}: {len(p['ids'])} tokens")
        with Stage(f"real/{key}/forward"):
            nL = spec["n_layers"]
            last = {k: [] for k in ["hook_embed", "resid_post", "attn_out", "mlp_out", "hook_final_norm", "logits"]}
            worst = 0.0
            for i, p in enumerate(prompts):
                st = hf_capture(model, family, p["ids"], logits_last_only=True)
                man = manual_forward(W, spec, p["ids"])
                man["logits"] = man["logits"][-1:]
                worst = max(worst, compare(st, man, f"{key} prompt {i}", rtol=5e-4))
                last["hook_embed"].append(st["hook_embed"][-1])
                last["resid_post"].append(torch.stack([st[f"blocks.{L}.hook_resid_post"][-1] for L in range(nL)]))
                last["attn_out"].append(torch.stack([st[f"blocks.{L}.hook_attn_out"][-1] for L in range(nL)]))
                last["mlp_out"].append(torch.stack([st[f"blocks.{L}.hook_mlp_out"][-1] for L in range(nL)]))
                last["hook_final_norm"].append(st["hook_final_norm"][-1])
                last["logits"].append(st["logits"][-1])
                t1, v1, t2, v2 = top2(st["logits"][-1])
                p["last_token"] = {"top1_token": t1, "top1_logit": v1, "second_token": t2, "second_logit": v2,
                                   "margin": v1 - v2, "top1_text": decode([t1])}
                log(f"  prompt {i}: T={len(p['ids'])} top1 {t1} {decode([t1])!r} margin {v1 - v2:.4g}")
            log(f"  max rel diff HF vs manual forward: {worst:.3g}")
        with Stage(f"real/{key}/greedy"):
            gens = []
            for i in range(REAL_GEN_PROMPTS):
                new, steps, _ = greedy_nocache(model, prompts[i]["ids"], REAL_GEN)
                cached = greedy_generate(model, prompts[i]["ids"], REAL_GEN)
                for s in steps:
                    s["text"] = decode([s["token"]])
                rec = gen_record(i, new, steps, cached, decode)
                eos = int(gguf_meta(reader)["tokenizer.ggml.eos_token_id"])
                rec["first_eos_step"] = new.index(eos) if eos in new else None
                gens.append(rec)
                log(f"  prompt {i} greedy (min margin {rec['min_margin']:.4g}, kv-cache generate matches: "
                    f"{rec['kv_cache_generate_matches']}):\n    {prompts[i].get('user', prompts[i]['text'])!r}\n"
                    f"    -> {rec['text']!r}")
        tensors = {f"last.{k}": torch.stack(v).contiguous().float() for k, v in last.items()}
        save_file(tensors, str(PARITY_DIR / f"{key}.safetensors"),
                  metadata={"generated_by": "scripts/reference/make_parity_fixtures.py"})
        cfg_used = {k: v for k, v in config.to_diff_dict().items() if k not in ("transformers_version", "_name_or_path")}
        for i, p in enumerate(prompts):
            p["n_tokens"] = len(p["ids"])
            if family == "gemma3":
                p["exceeds_sliding_window"] = len(p["ids"]) > max(w for w in spec["window"] if w)
        meta = {
            "generated_by": "scripts/reference/make_parity_fixtures.py --stage real",
            "versions": versions(),
            "gguf_file": fname,
            "gguf_sha256": sha256(path),
            "family": family,
            "loading": ("AutoConfig.from_pretrained(gguf_file) + transformers.modeling_gguf_pytorch_utils."
                        "load_gguf_checkpoint(return_tensors=True) (gguf-py dequantization to float32, llama q/k "
                        "rows un-permuted, gemma norm weights minus 1) loaded into "
                        "AutoModelForCausalLM.from_config(attn_implementation='eager', float32); no config "
                        "corrections were needed"),
            "compute_dtype": "float32",
            "n_layers": spec["n_layers"],
            "d_model": config.hidden_size,
            "vocab_size": config.vocab_size,
            "n_heads": spec["n_heads"],
            "n_kv_heads": spec["n_kv_heads"],
            "head_dim": spec["head_dim"],
            "rms_norm_eps": spec["eps"],
            "rope_theta_per_layer": spec["rope_theta"],
            "sliding_window_per_layer": spec["window"],
            "attn_scale": spec["attn_scale"],
            "embed_scale": spec["embed_scale"],
            "tie_word_embeddings": spec["tied"],
            "hidden_act": spec["act"],
            "hf_config": cfg_used,
            "tokenizer": tok_note,
            "tokenizer_crosscheck_ok": xcheck,
            "prompts": prompts,
            "near_tie_threshold": NEAR_TIE,
            "generation": {"n_new_tokens": REAL_GEN, "prompts": list(range(REAL_GEN_PROMPTS)),
                           "method": "greedy argmax over the full fp32 logits, EOS not special (no stopping), "
                                     "full forward per step", "runs": gens},
            "dequant_check": deq,
            "max_rel_diff_vs_manual_forward": worst,
            "tensors": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in sorted(tensors.items())},
        }
        (PARITY_DIR / f"{key}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        log(f"  wrote {key}.safetensors ({(PARITY_DIR / f'{key}.safetensors').stat().st_size} B), {key}.json")
        del model, W


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["tiny", "real", "all"], default="all")
    ap.add_argument("--only", nargs="*", help="subset of model names (tiny: llama llama-tied-bf16 qwen2 gemma3 "
                                              "llama-rope-llama3 qwen2-rope-yarn gemma3-rope-linear; "
                                              "real: smollm2 gemma3 qwen2.5-0.5b)")
    ap.add_argument("--models-dir", default=os.environ.get("STEERGUARD_MODELS", str(REPO / ".cache" / "models")))
    ap.add_argument("--smol-tokenizer-dir", default=os.environ.get(
        "SMOLLM2_TOKENIZER_DIR", "/work/shared/models/SmolLM2-135M-Instruct-tokenizer"),
        help="folder with SmolLM2-135M-Instruct's tokenizer.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.stage in ("tiny", "all"):
        stage_tiny(args.only)
    if args.stage in ("real", "all"):
        stage_real(Path(args.models_dir), Path(args.smol_tokenizer_dir), args.only)
    for d in (TINY_DIR, PARITY_DIR):  # save_pretrained/save_file create 0600 files
        if d.exists():
            for f in d.rglob("*"):
                if f.is_file():
                    f.chmod(0o644)
    log("timings (s): " + json.dumps(TIMINGS))


if __name__ == "__main__":
    main()
