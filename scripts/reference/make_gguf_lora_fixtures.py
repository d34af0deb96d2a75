#!/usr/bin/env python3
"""Make the GGUF LoRA fixtures test/gguf-lora.test.ts loads: test/fixtures/tiny/<arch>/gguf-lora/adapter.gguf.

Each is the PEFT adapter made by peft in test/fixtures/tiny/<arch>/peft/adapter/ (make_peft_fixtures.py),
converted to llama.cpp's GGUF LoRA layout the way llama.cpp's convert_lora_to_gguf.py does it,
written with the `gguf` package (gguf-py, llama.cpp's own writer):

- metadata: general.architecture (the base model's GGUF architecture), general.type = "adapter",
  adapter.type = "lora", adapter.lora.alpha (FLOAT32, PEFT's lora_alpha), general.name;
- tensors: the base model's GGUF tensor name (gguf's TensorNameMap: model.layers.0.self_attn.q_proj
  -> blk.0.attn_q) + ".weight.lora_a" / ".weight.lora_b", F32, A as PEFT's [r, in] and B as [out, r]
  (so ggml dims [in, r] and [r, out]);
- llama only: B of q_proj and k_proj gets the row permutation convert_hf_to_gguf's LlamaModel applies
  to those weights (LoraTorchTensor.permute permutes lora_B and leaves lora_A), with n_head for q and
  n_kv_head for k.

The test checks that steerguard reads each file to exactly the tensors of peft/adapter/ and gives
the logits peft computed with it (peft/logits.safetensors). The bytes repeat run to run.

Run (a second): nice -n 10 /work/pyref/bin/python scripts/reference/make_gguf_lora_fixtures.py
(gguf 0.19.0, numpy, safetensors)
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
TINY_DIR = REPO / "test" / "fixtures" / "tiny"
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma3": gguf.MODEL_ARCH.GEMMA3}
PEFT_PREFIX = "base_model.model."


def llama_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on the rows (first axis) of a matrix."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_lora_tensors(arch: str, model_config: dict, peft_dir: Path) -> tuple[float, dict[str, np.ndarray]]:
    """PEFT's lora_alpha and the GGUF LoRA tensors (name -> array in PyTorch order) of a PEFT folder."""
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    state = load_file(peft_dir / "adapter_model.safetensors")
    text = model_config.get("text_config", model_config)
    names = gguf.get_tensor_name_map(ARCHS[arch], text["num_hidden_layers"])
    out: dict[str, np.ndarray] = {}
    for key in sorted(state):
        assert key.startswith(PEFT_PREFIX) and (".lora_A.weight" in key or ".lora_B.weight" in key), key
        module, which = key[len(PEFT_PREFIX):].rsplit(".lora_", 1)
        base = names.get_name(module + ".weight", try_suffixes=(".weight",))
        assert base is not None, f"no GGUF name for {module}"
        data = state[key].astype(np.float32)
        if which == "B.weight" and arch == "llama":
            if module.endswith("q_proj"):
                data = llama_permute(data, text["num_attention_heads"])
            elif module.endswith("k_proj"):
                data = llama_permute(data, text["num_key_value_heads"])
        out[f"{base}.lora_{'a' if which == 'A.weight' else 'b'}"] = np.ascontiguousarray(data)
    return float(config["lora_alpha"]), out


def make(arch: str) -> None:
    d = TINY_DIR / arch
    model_config = json.loads((d / "config.json").read_text())
    alpha, tensors = gguf_lora_tensors(arch, model_config, d / "peft" / "adapter")
    out_dir = d / "gguf-lora"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "adapter.gguf"
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[ARCHS[arch]])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(f"tiny {arch} peft fixture adapter")
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{arch}: wrote {out.relative_to(REPO)} ({len(tensors)} tensors, alpha {alpha})")


def main() -> None:
    for arch in ARCHS:
        make(arch)


if __name__ == "__main__":
    main()
