#!/usr/bin/env python3
"""Make the PEFT round-trip fixtures that test/peft.test.ts checks steerguard's LoRA adapters against.

For each tiny random model of test/fixtures/tiny/<llama|qwen2|gemma3>/ (made by
make_parity_fixtures.py), in test/fixtures/tiny/<arch>/peft/:

(a) adapter/: a LoRA adapter made by peft (LoraConfig r=2, lora_alpha=4 on q,k,v,o,gate,up,down
    of every layer, CAUSAL_LM), its A and B set to seeded random values (PEFT would start B at zero,
    which would test nothing), written by PeftModel.save_pretrained (adapter_config.json +
    adapter_model.safetensors, float32).
(b) steerguard/: an adapter written by steerguard's savePeftAdapter (test/peft.test.ts writes it
    deterministically and checks that it still writes the same bytes; create or refresh it with
    `STEERGUARD_WRITE_FIXTURES=1 node --test dist/test/peft.test.js`). This script loads it with
    PeftModel.from_pretrained, refusing any missing or unexpected key, which checks that
    steerguard's key layout and config are PEFT's.

and logits.safetensors:

  tokens      [S, T]     the token sequences (F32, exact for ids < 2^24)
  peft        [S, T, V]  logits of the model with adapter/ (transformers + peft, float64)
  steerguard  [S, T, V]  logits of the model with steerguard/ loaded by peft (float64)
  base        [S, T, V]  logits of the model alone (so the test can see the adapters matter)

Models run in float64 with eager attention (fp16/bf16 weights upcast exactly; transformers still
computes RMSNorm, rotary and softmax in float32 inside, as noted in make_lora_grad_fixtures.py).

Run (seconds): nice -n 10 /work/pyref/bin/python scripts/reference/make_peft_fixtures.py
(needs peft: /work/pyref/bin/pip install peft==0.21.2)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
TINY_DIR = REPO / "test" / "fixtures" / "tiny"
ARCHS = ["llama", "qwen2", "gemma3"]
RANK, ALPHA = 2, 4
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQUENCES, T = 3, 8


def load_base(d: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def logits_of(model, tokens: torch.Tensor) -> torch.Tensor:
    return model.double()(input_ids=tokens).logits.float()


def make_peft_adapter(d: Path, out: Path) -> None:
    """(a): a peft adapter with seeded random A and B, saved by peft."""
    from peft import LoraConfig, get_peft_model

    model = load_base(d)
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * 0.3)
    if out.exists():
        shutil.rmtree(out)
    # save_pretrained writes extra files (README.md); keep only the two an adapter is made of.
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        out.mkdir(parents=True)
        for f in ["adapter_config.json", "adapter_model.safetensors"]:
            shutil.copy(Path(tmp) / f, out / f)
    cfg = json.loads((out / "adapter_config.json").read_text())
    # save_pretrained writes a local temp path here and target_modules in set order (which varies
    # run to run); make the fixture's bytes independent of both.
    cfg["base_model_name_or_path"] = f"test/fixtures/tiny/{d.name}"
    cfg["target_modules"] = sorted(cfg["target_modules"])
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_with_adapter(d: Path, adapter: Path):
    """The model with `adapter` loaded by peft; a missing or unexpected key is an error."""
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(load_base(d), adapter)
    # from_pretrained only warns about keys it cannot place; check them here.
    state = load_file(adapter / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, state)
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or lora_missing:
        sys.exit(f"{adapter}: unexpected keys {result.unexpected_keys[:5]}, missing {lora_missing[:5]}")
    return model.eval()


def make(arch: str) -> None:
    d = TINY_DIR / arch
    out = d / "peft"
    out.mkdir(exist_ok=True)
    make_peft_adapter(d, out / "adapter")
    base = load_base(d)
    vocab = base.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(99)
    tokens = torch.randint(0, vocab, (SEQUENCES, T), generator=gen)
    tensors = {
        "tokens": tokens.float(),
        "base": logits_of(base, tokens),
        "peft": logits_of(load_with_adapter(d, out / "adapter"), tokens),
    }
    steerguard = out / "steerguard"
    if (steerguard / "adapter_model.safetensors").exists():
        tensors["steerguard"] = logits_of(load_with_adapter(d, steerguard), tokens)
    else:
        print(f"{arch}: no {steerguard} yet (write it with STEERGUARD_WRITE_FIXTURES=1, see the docstring)")
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "logits.safetensors")
    moved = (tensors["peft"] - tensors["base"]).abs().max().item()
    print(f"{arch}: {', '.join(tensors)} written; the peft adapter moves the logits by up to {moved:.3f}")


def main() -> None:
    torch.manual_seed(0)
    for arch in ARCHS:
        make(arch)


if __name__ == "__main__":
    main()
