#!/usr/bin/env python3
"""Check a GGUF LoRA adapter steerguard wrote against the PEFT folder of the same adapter.

Reads the GGUF with the `gguf` package (gguf-py, llama.cpp's reader) and checks what llama.cpp's
llama_adapter_lora_init reads: general.type = "adapter", adapter.type = "lora",
general.architecture = the base model's, adapter.lora.alpha stored as FLOAT32 and equal to the
PEFT config's lora_alpha; then that the tensor names are exactly those convert_lora_to_gguf.py
would write for the PEFT folder (make_gguf_lora_fixtures.gguf_lora_tensors: gguf's TensorNameMap,
".lora_a" / ".lora_b", llama's q/k row permutation of B), each F32 with ggml dims [in, r] for
lora_a and [r, out] for lora_b, and the values equal to PEFT's bit for bit (both are F32).

With no arguments, checks each tiny fixture's steerguard-written adapter:
test/fixtures/tiny/<arch>/gguf-lora/steerguard.gguf (written by test/gguf-lora.test.ts) against
test/fixtures/tiny/<arch>/peft/steerguard/ (the same adapter in PEFT's layout). Otherwise:
check_gguf_lora.py ADAPTER.gguf PEFT_DIR MODEL_DIR (MODEL_DIR holds the base model's config.json,
whose architecture is given with --arch llama|qwen2|gemma3).

Run: /work/pyref/bin/python scripts/reference/check_gguf_lora.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_gguf_lora_fixtures import ARCHS, TINY_DIR, gguf_lora_tensors  # noqa: E402


def field_value(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None, None
    return field.contents(), field.types[0]


def check(adapter: Path, peft_dir: Path, model_dir: Path, arch: str) -> list[str]:
    problems: list[str] = []
    reader = gguf.GGUFReader(adapter)
    model_config = json.loads((model_dir / "config.json").read_text())
    alpha, want = gguf_lora_tensors(arch, model_config, peft_dir)
    for key, value in [
        ("general.type", "adapter"),
        ("adapter.type", "lora"),
        ("general.architecture", gguf.MODEL_ARCH_NAMES[ARCHS[arch]]),
    ]:
        got, kind = field_value(reader, key)
        if got != value or kind != gguf.GGUFValueType.STRING:
            problems.append(f"{key}: {got!r} ({kind}), want the string {value!r}")
    got_alpha, kind = field_value(reader, gguf.Keys.Adapter.LORA_ALPHA)
    if kind != gguf.GGUFValueType.FLOAT32 or got_alpha != np.float32(alpha):
        problems.append(f"adapter.lora.alpha: {got_alpha!r} ({kind}), want FLOAT32 {alpha}")

    got_tensors = {t.name: t for t in reader.tensors}
    if sorted(got_tensors) != sorted(want):
        missing = sorted(set(want) - set(got_tensors))[:5]
        extra = sorted(set(got_tensors) - set(want))[:5]
        problems.append(f"tensor names differ: missing {missing}, unexpected {extra}")
    for name in sorted(set(want) & set(got_tensors)):
        t, w = got_tensors[name], want[name]
        # gguf-py's shape is ggml order (ne0 first); its data is in PyTorch order (dims reversed).
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            problems.append(f"{name}: type {t.tensor_type.name}, want F32")
        if list(t.shape) != list(reversed(w.shape)):
            problems.append(f"{name}: ggml dims {list(t.shape)}, want {list(reversed(w.shape))}")
            continue
        data = np.asarray(t.data).reshape(w.shape)
        if not np.array_equal(data, w):
            problems.append(f"{name}: values differ (max |diff| {np.abs(data - w).max():.3g})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="ADAPTER.gguf PEFT_DIR MODEL_DIR")
    parser.add_argument("--arch", choices=sorted(ARCHS))
    args = parser.parse_args()
    if args.paths:
        if len(args.paths) != 3 or args.arch is None:
            parser.error("give ADAPTER.gguf PEFT_DIR MODEL_DIR and --arch")
        cases = [(*args.paths, args.arch)]
    else:
        cases = [
            (TINY_DIR / a / "gguf-lora" / "steerguard.gguf", TINY_DIR / a / "peft" / "steerguard", TINY_DIR / a, a)
            for a in ARCHS
        ]
    failed = False
    for adapter, peft_dir, model_dir, arch in cases:
        problems = check(adapter, peft_dir, model_dir, arch)
        n = len(gguf.GGUFReader(adapter).tensors)
        print(f"{adapter}: {'OK' if not problems else 'FAILED'} ({n} tensors, against {peft_dir})")
        for p in problems:
            print(f"  {p}")
        failed = failed or bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
