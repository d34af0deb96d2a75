#!/usr/bin/env python3
"""Check that a LoRA adapter gives the same logits in steerguard and in transformers + peft on a real
GGUF model (e.g. one trained by `steerguard train lora` on SmolLM2-135M-Instruct.Q4_1.gguf).

transformers loads the GGUF (dequantized to float32, llama q/k rows put back in Hugging Face order,
as steerguard does), peft applies the adapter; steerguard's logits come from
scripts/reference/steerguard_adapter_logits.mjs. Prints max |diff| / max |ref| per sequence, with
and without the adapter, and how far the adapter moves the logits.

Run (about a minute on 2 cores; needs the gguf package):
  printf '[[1, 2, 3]]' > /tmp/tokens.json   # or real token ids
  node scripts/reference/steerguard_adapter_logits.mjs M.gguf /tmp/sg-base.safetensors /tmp/tokens.json
  node scripts/reference/steerguard_adapter_logits.mjs M.gguf /tmp/sg-lora.safetensors /tmp/tokens.json ADAPTER/
  nice -n 10 /work/pyref/bin/python scripts/reference/check_peft_gguf.py M.gguf ADAPTER/ /tmp/sg-base.safetensors /tmp/sg-lora.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    gguf, adapter, base_file, lora_file = sys.argv[1:]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    base, lora = load_file(base_file), load_file(lora_file)
    sequences = sorted(k for k in base if k.startswith("tokens."))
    with torch.no_grad():
        plain = [model(input_ids=base[k].long()[None]).logits[0] for k in sequences]
        peft_model = PeftModel.from_pretrained(model, adapter).eval()
        adapted = [peft_model(input_ids=lora[k].long()[None]).logits[0] for k in sequences]
    for i, k in enumerate(sequences):
        s = k.split(".")[1]
        print(
            f"sequence {s} ({len(base[k])} tokens): base {rel_err(base[f'logits.{s}'], plain[i]):.2e}, "
            f"with the adapter {rel_err(lora[f'logits.{s}'], adapted[i]):.2e}; the adapter moves the "
            f"logits by up to {(adapted[i] - plain[i]).abs().max().item():.3f}"
        )


if __name__ == "__main__":
    main()
