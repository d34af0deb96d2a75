#!/usr/bin/env python3
"""Make the LoRA gradient fixtures that test/training-grad.test.ts compares steerguard's backward to.

For each tiny random model of test/fixtures/tiny/<llama|llama-tied-bf16|qwen2|gemma3>/ (made by
make_parity_fixtures.py), this script loads it with transformers (eager attention, float64: bf16/f16
weights upcast exactly), attaches LoRA by hand to every q/k/v/o/gate/up/down projection of every
layer -- y = W x (+ b) + (alpha/r) * B (A x), the PEFT formula, without needing peft -- with fixed
seeded A and B (B non-zero, unlike PEFT's initialisation, so that A's gradient is not zero), and
computes the mean cross-entropy of the answer tokens of one fixed 12-token sequence and its
gradients with autograd. It writes test/fixtures/tiny/<arch>/lora-grad.safetensors:

  lora_config            [2]      rank, alpha
  tokens, answer         [T]      token ids and the answer mask (1 = the token's prediction counts),
                                  as F32 (exact for ids < 2^24) so the fixture reader takes them
  loss                   [1]      F64
  lora.L.<t>.A / .B      [r, in] / [out, r]   the adapter (F32, used exactly in float64)
  grad.L.<t>.A / .B      same shapes          dLoss/dA, dLoss/dB (computed in float64, stored F32)
  grad.embed             [T, D]   dLoss/d(embedding output after gemma's scale) = steerguard's hook_embed

The cross-entropy is computed here from the logits in float64 (transformers' own loss would cast the
logits to float32 first). transformers still computes RMSNorm, rotary cos/sin and the attention
softmax in float32 inside a float64 model, so the reference is good to ~1e-6 relative, not 1e-15.

Run (seconds): nice -n 10 /work/pyref/bin/python scripts/reference/make_lora_grad_fixtures.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

REPO = Path(__file__).resolve().parents[2]
TINY_DIR = REPO / "test" / "fixtures" / "tiny"
ARCHS = ["llama", "llama-tied-bf16", "qwen2", "gemma3"]
RANK, ALPHA = 2, 4.0
T = 12
ANSWER = [5, 6, 7, 8, 10]  # answer token positions; the others (and token 0) carry no loss
TARGETS = {  # steerguard's names -> (submodule, attribute)
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus (alpha/r) * B @ A, as PEFT's lora.Linear computes it (no dropout)."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)
        self.scale = scale

    def forward(self, x):
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def make(arch: str) -> None:
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    d = TINY_DIR / arch
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1234)
    vocab = model.config.get_text_config().vocab_size
    tokens = torch.randint(0, vocab, (T,), generator=gen)
    answer = torch.zeros(T)
    answer[ANSWER] = 1

    tensors: dict[str, torch.Tensor] = {}
    loras: dict[str, LoraLinear] = {}
    for L, layer in enumerate(model.model.layers):
        for t, (sub, attr) in TARGETS.items():
            base = getattr(getattr(layer, sub), attr)
            fan_in, fan_out = base.in_features, base.out_features
            # A as PEFT initialises it (uniform +-1/sqrt(in)); B uniform +-0.2 instead of PEFT's zeros
            a = (torch.rand(RANK, fan_in, generator=gen) * 2 - 1) / fan_in**0.5
            b = (torch.rand(fan_out, RANK, generator=gen) * 2 - 1) * 0.2
            a, b = a.float(), b.float()  # stored F32; used exactly in float64
            tensors[f"lora.{L}.{t}.A"], tensors[f"lora.{L}.{t}.B"] = a, b
            lora = LoraLinear(base, a.double(), b.double(), ALPHA / RANK)
            setattr(getattr(layer, sub), attr, lora)
            loras[f"{L}.{t}"] = lora

    embedded = {}

    def keep_embedding(_module, _args, out):
        # a leaf of its own, so that autograd keeps its gradient (the embedding matrix is frozen)
        embedded["out"] = out.detach().requires_grad_(True)
        return embedded["out"]

    handle = model.model.embed_tokens.register_forward_hook(keep_embedding)
    logits = model(input_ids=tokens[None], use_cache=False).logits[0].double()
    handle.remove()
    # logits at position t predict token t+1; the answer tokens t count, predicted from t-1
    rows = torch.tensor(ANSWER) - 1
    loss = nn.functional.cross_entropy(logits[rows], tokens[ANSWER])
    loss.backward()

    for key, lora in loras.items():
        tensors[f"grad.{key}.A"] = lora.lora_A.grad.float()
        tensors[f"grad.{key}.B"] = lora.lora_B.grad.float()
    tensors["grad.embed"] = embedded["out"].grad[0].float()
    tensors["lora_config"] = torch.tensor([RANK, ALPHA], dtype=torch.float32)
    tensors["tokens"] = tokens.float()
    tensors["answer"] = answer.float()
    tensors["loss"] = loss.detach().reshape(1)
    out = d / "lora-grad.safetensors"
    save_file(
        {k: v.contiguous() for k, v in sorted(tensors.items())},
        str(out),
        # one key: safetensors writes metadata keys in no fixed order, and the bytes should repeat
        metadata={"generated_by": "scripts/reference/make_lora_grad_fixtures.py"},
    )
    print(f"{arch}: loss {loss.item():.6f}, {out.stat().st_size} bytes, {time.time() - t0:.1f}s", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    for arch in sys.argv[1:] or ARCHS:
        make(arch)


if __name__ == "__main__":
    main()
