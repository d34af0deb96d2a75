#!/usr/bin/env python3
"""Make the fixtures that test/quant.test.ts and test/gguf.test.ts compare steerguard's GGUF code against.

Python is NOT a runtime dependency of steerguard. This script only (re)generates committed fixtures,
with gguf-py (the `gguf` package, llama.cpp's own Python reader) as the independent reference:

  test/fixtures/quant/manifest.json
      describes every file below (see test/fixtures/quant/README.md)
  test/fixtures/quant/<TYPE>.bin, <TYPE>.f32
      raw blocks of a ggml type and their dequantization by gguf.quants.dequantize (float32 LE).
      Blocks are random bytes whose half-float scale fields are overwritten with sane values
      (normal, subnormal, zero and negative scales), plus blocks made by gguf.quants.quantize for
      the types gguf-py can quantize.
  test/fixtures/quant/quantize_src.f32, conv_src.f32, quantize_<TYPE>.bin
      fp32 inputs and gguf-py's / numpy's encoding of them as Q8_0 (finite inputs), F16 and BF16
      (inputs with ties, subnormals, overflow, infinities, NaN)
  test/fixtures/quant/real_models.json
      for each real GGUF model from scripts/fetch-models.sh: a truncated sha256 of the float32
      dequantization of EVERY tensor, and for two tensors of each type the first 256 values,
      the sum and the sum of squares

Usage: /work/pyref/bin/python scripts/reference/make_quant_fixtures.py [--models DIR] [--skip-real]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test" / "fixtures" / "quant"

# Byte offsets of the half-float scale fields inside one block of each type.
HALF_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
REAL_MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]


def sane_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scales spread over the useful range, with a few awkward ones mixed in."""
    mags = 10.0 ** rng.uniform(-4, 0.5, size=n)
    signs = rng.choice([-1.0, 1.0], size=n, p=[0.2, 0.8])
    h = (mags * signs).astype(np.float16)
    specials = np.array([0.0, 2.0**-24, -(2.0**-20), 6.1e-5], dtype=np.float16)
    h[: min(n, len(specials))] = specials[: min(n, len(specials))]
    rng.shuffle(h)
    return h


def block_fixture(rng: np.random.Generator, qtype: T, n_random: int, n_quantized: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_random, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        blocks[:, off : off + 2] = sane_halves(rng, n_random).view(np.uint8).reshape(n_random, 2)
    parts = [blocks]
    if qtype in QUANTIZABLE and n_quantized:
        x = (rng.standard_normal((n_quantized, block_size)) * 10.0 ** rng.uniform(-3, 1, (n_quantized, 1))).astype(
            np.float32
        )
        parts.append(gguf.quants.quantize(x, qtype).reshape(n_quantized, type_size))
    return np.concatenate(parts, axis=0)


def write(name: str, data: np.ndarray) -> None:
    (OUT / name).write_bytes(np.ascontiguousarray(data).tobytes())


def make_dequant(rng: np.random.Generator, manifest: dict) -> None:
    entries = []
    # Plain float types: bit patterns chosen to cover specials, subnormals and random values.
    f32 = np.concatenate(
        [
            np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3.4e38, 1.0, -2.5], dtype=np.float32),
            (rng.standard_normal(246) * 10.0 ** rng.uniform(-6, 6, 246)).astype(np.float32),
        ]
    )
    f16_bits = np.concatenate(
        [
            np.array(
                [0, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x3C00], np.uint16
            ),
            np.arange(0, 0x0400, 7, dtype=np.uint16),  # subnormals
            rng.integers(0, 65536, 1024, dtype=np.uint16),
        ]
    )
    bf16_bits = np.concatenate(
        [
            np.array([0, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x807F, 0x3F80], np.uint16),
            rng.integers(0, 65536, 1016, dtype=np.uint16),
        ]
    )
    plain = [
        (T.F32, f32.view(np.uint8)),
        (T.F16, f16_bits.view(np.uint8)),
        (T.BF16, bf16_bits.view(np.uint8)),
    ]
    for qtype, raw in plain:
        expected = gguf.quants.dequantize(raw.view(np.uint8), qtype).astype(np.float32)
        entries.append(save_dequant(qtype, raw, expected))
    for qtype in HALF_FIELDS:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        if block_size == 32:
            raw = block_fixture(rng, qtype, 24, 8)
        else:
            raw = block_fixture(rng, qtype, 4, 0)
        expected = gguf.quants.dequantize(raw.reshape(-1), qtype).astype(np.float32)
        entries.append(save_dequant(qtype, raw, expected))
    manifest["dequantize"] = entries


def save_dequant(qtype: T, raw: np.ndarray, expected: np.ndarray) -> dict:
    write(f"{qtype.name}.bin", raw)
    write(f"{qtype.name}.f32", expected.reshape(-1))
    return {
        "type": qtype.name,
        "id": int(qtype.value),
        "elements": int(expected.size),
        "bin": f"{qtype.name}.bin",
        "f32": f"{qtype.name}.f32",
    }


def make_quantize(rng: np.random.Generator, manifest: dict) -> None:
    # Finite values for Q8_0, one block per magnitude, plus blocks with exact .5 ties after scaling
    # and an all-zero block.
    blocks = [rng.standard_normal(32) * 10.0**e for e in range(-6, 6)]
    tie = np.arange(-16, 16, dtype=np.float64) + 0.5
    tie[0] = -127.0
    blocks.append(tie)
    blocks.append(np.zeros(32))
    q8_src = np.concatenate(blocks).astype(np.float32)
    write("quantize_src.f32", q8_src)
    write("quantize_Q8_0.bin", gguf.quants.quantize(q8_src.reshape(-1, 32), T.Q8_0).reshape(-1))

    # Conversions: specials, f16 rounding ties and the subnormal/overflow edges, random values.
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, 1e9, -1e9, 2.0**-24, 2.0**-25,
             2.0**-25 * 1.0001, 2.0**-26, 3 * 2.0**-25, 2.0**-14, 2.0**-14 - 2.0**-25, 1e-8, 1.0 + 2.0**-11,
             1.0 + 3 * 2.0**-11, -(1.0 + 2.0**-11), 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.3895314e38, 1e-40]
    conv_src = np.concatenate(
        [
            np.array(edges, dtype=np.float32),
            (rng.standard_normal(999) * 10.0 ** rng.uniform(-9, 6, 999)).astype(np.float32),
        ]
    )
    write("conv_src.f32", conv_src)
    with np.errstate(over="ignore"):
        write("quantize_F16.bin", conv_src.astype(np.float16))
    write("quantize_BF16.bin", gguf.quants.quantize(conv_src, T.BF16).reshape(-1))
    manifest["quantize"] = [
        {"type": "Q8_0", "src": "quantize_src.f32", "bin": "quantize_Q8_0.bin", "by": "gguf.quants.quantize"},
        {"type": "F16", "src": "conv_src.f32", "bin": "quantize_F16.bin", "by": "numpy astype(float16)"},
        {"type": "BF16", "src": "conv_src.f32", "bin": "quantize_BF16.bin", "by": "gguf.quants.quantize"},
    ]


def sha256_16(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()[:16]


def make_real(models_dir: Path, manifest: dict) -> None:
    models = []
    for fname in REAL_MODELS:
        path = models_dir / fname
        if not path.exists():
            raise SystemExit(f"{path} is missing: run bash scripts/fetch-models.sh (or pass --skip-real)")
        print(f"reading {path}")
        reader = gguf.GGUFReader(str(path))
        tensors = []
        detail_left: dict[str, int] = {}
        for t in reader.tensors:
            values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(-1)
            entry = {
                "name": t.name,
                "type": t.tensor_type.name,
                "dims": [int(d) for d in t.shape],
                "offset": int(t.data_offset),
                "sha256_16": sha256_16(values),
            }
            # Details for the first and the last tensor of each type (the last is found below).
            left = detail_left.get(t.tensor_type.name, 0)
            if left == 0:
                add_details(entry, values)
            detail_left[t.tensor_type.name] = left + 1
            tensors.append(entry)
        last_of_type: dict[str, dict] = {}
        for e in tensors:
            last_of_type[e["type"]] = e
        for e in last_of_type.values():
            if "first256" not in e:
                t = next(t for t in reader.tensors if t.name == e["name"])
                add_details(e, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        # The vocabulary's raw bytes, NUL-joined: checks string decoding (BOMs, non-ASCII) independently.
        field = reader.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(field.parts[i]) for i in field.data]
        vocab = {"count": len(tokens), "sha256_16": hashlib.sha256(b"\0".join(tokens)).hexdigest()[:16]}
        models.append({"file": fname, "sha256": sha, "tokens": vocab, "tensors": tensors})
    manifest_real = {"generator": manifest["generator"], "models": models}
    (OUT / "real_models.json").write_text(json.dumps(manifest_real, separators=(",", ":")) + "\n")


def add_details(entry: dict, values: np.ndarray) -> None:
    v64 = values.astype(np.float64)
    entry["first256"] = base64.b64encode(values[:256].astype("<f4").tobytes()).decode()
    entry["sum"] = float(v64.sum())
    entry["sumSq"] = float((v64 * v64).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--skip-real", action="store_true", help="leave real_models.json alone")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    manifest: dict = {"generator": f"gguf-py {version('gguf')}, numpy {np.__version__}"}
    make_dequant(rng, manifest)
    make_quantize(rng, manifest)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if not args.skip_real:
        make_real(args.models, manifest)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
