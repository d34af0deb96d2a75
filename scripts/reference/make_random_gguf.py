#!/usr/bin/env python3
"""Write a GGUF model of a given architecture shape with random weights, tensor by tensor.

Python is NOT a runtime dependency of steerguard. This script makes test inputs for the engine at
sizes no fixture can have (scripts/check-large-models.mjs loads a Qwen2.5-7B-shaped one), with
gguf-py (the `gguf` package, llama.cpp's own Python writer and quantizer) so the file is laid out
exactly as llama.cpp writes its files: llama.cpp's metadata keys and tensor names, 32-byte alignment.

Weights are drawn like a freshly initialised model so activations stay finite: every matrix (token
embedding, projections, MLP, output head) from N(0, 0.02^2), quantized with gguf.quants.quantize to
--type; q/k/v biases (qwen2) from N(0, 0.02^2) and norm weights 1.0, both F32 as llama.cpp keeps
them. The weights mean nothing: a model made here tests loading, memory and numerics, never text.
No tokenizer is written (steerguard runs token-id prompts without one).

Peak memory is one tensor in its output type plus a chunk of fp32 rows (peak RSS 0.45 GB for the
7B preset in Q4_0, whose largest tensors are the [152064, 3584] embedding and output head). The file is
written to a temporary name beside --out and renamed when complete.

Usage:
  /work/pyref/bin/python scripts/reference/make_random_gguf.py --preset tiny --out /tmp/tiny.gguf
  /work/pyref/bin/python scripts/reference/make_random_gguf.py --arch qwen2 --preset qwen2.5-7b \
      --type Q4_0 --seed 0 --out /tmp/qwen2.5-7b-random-q4_0.gguf      # 4.3 GB, ~3 min on 1 core
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES, MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context: int


PRESETS: dict[str, Shape] = {
    # Qwen2.5-7B(-Instruct)'s config.json: hidden_size 3584, intermediate_size 18944, 28 layers,
    # 28 heads, 4 key/value heads, vocab 152064, rope_theta 1e6, rms_norm_eps 1e-6, untied embeddings.
    "qwen2.5-7b": Shape(28, 3584, 18944, 28, 4, 128, 152064, 1_000_000.0, 1e-6, 32768),
    # Rows of every matrix are whole blocks of 32 values (the block size of Q4_0..Q8_0).
    "tiny": Shape(2, 64, 128, 4, 2, 16, 256, 10_000.0, 1e-6, 256),
}

ARCHES = {"qwen2": MODEL_ARCH.QWEN2, "llama": MODEL_ARCH.LLAMA}

# The matrix types gguf-py can quantize to (it only dequantizes the K-quants), with llama.cpp's
# general.file_type for a file whose matrices are all of that type.
MATRIX_TYPES: dict[str, tuple[T, gguf.LlamaFileType]] = {
    "F32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "Q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q5_1": (T.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "Q5_0": (T.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "Q4_1": (T.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "Q4_0": (T.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

WEIGHT_STD = 0.02
CHUNK_VALUES = 8 * 1024 * 1024  # fp32 values drawn and quantized at a time


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # outermost first (numpy order; GGUF stores it reversed)
    kind: str  # 'matrix' (random, --type), 'bias' (random, F32) or 'norm' (ones, F32)


def tensor_name(tensor: MODEL_TENSOR, suffix: str, layer: int | None = None) -> str:
    base = TENSOR_NAMES[tensor]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def plan_tensors(arch: str, s: Shape) -> list[TensorPlan]:
    """Every tensor llama.cpp's converter writes for this architecture, in its order."""
    q_width = s.n_heads * s.head_dim
    kv_width = s.n_kv_heads * s.head_dim
    plan = [TensorPlan(tensor_name(MODEL_TENSOR.TOKEN_EMBD, "weight"), (s.vocab_size, s.d_model), "matrix")]
    for l in range(s.n_layers):
        block = [
            (MODEL_TENSOR.ATTN_NORM, "weight", (s.d_model,), "norm"),
            (MODEL_TENSOR.ATTN_Q, "weight", (q_width, s.d_model), "matrix"),
            (MODEL_TENSOR.ATTN_K, "weight", (kv_width, s.d_model), "matrix"),
            (MODEL_TENSOR.ATTN_V, "weight", (kv_width, s.d_model), "matrix"),
        ]
        if arch == "qwen2":
            block += [
                (MODEL_TENSOR.ATTN_Q, "bias", (q_width,), "bias"),
                (MODEL_TENSOR.ATTN_K, "bias", (kv_width,), "bias"),
                (MODEL_TENSOR.ATTN_V, "bias", (kv_width,), "bias"),
            ]
        block += [
            (MODEL_TENSOR.ATTN_OUT, "weight", (s.d_model, q_width), "matrix"),
            (MODEL_TENSOR.FFN_NORM, "weight", (s.d_model,), "norm"),
            (MODEL_TENSOR.FFN_GATE, "weight", (s.ffn_dim, s.d_model), "matrix"),
            (MODEL_TENSOR.FFN_UP, "weight", (s.ffn_dim, s.d_model), "matrix"),
            (MODEL_TENSOR.FFN_DOWN, "weight", (s.d_model, s.ffn_dim), "matrix"),
        ]
        plan += [TensorPlan(tensor_name(t, suffix, l), shape, kind) for t, suffix, shape, kind in block]
    plan.append(TensorPlan(tensor_name(MODEL_TENSOR.OUTPUT_NORM, "weight"), (s.d_model,), "norm"))
    plan.append(TensorPlan(tensor_name(MODEL_TENSOR.OUTPUT, "weight"), (s.vocab_size, s.d_model), "matrix"))
    return plan


def stored_type(t: TensorPlan, matrix_type: T) -> T:
    return matrix_type if t.kind == "matrix" else T.F32


def stored_bytes(shape: tuple[int, ...], qtype: T) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block_size != 0:
        raise SystemExit(f"rows of {shape[-1]} values are not whole {qtype.name} blocks of {block_size}")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return rows * (shape[-1] // block_size) * type_size


def make_tensor(t: TensorPlan, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """The tensor's bytes as the file stores them, drawn and quantized a chunk of rows at a time."""
    if t.kind == "norm":
        return np.ones(t.shape, dtype=np.float32)
    if t.kind == "bias":
        return (rng.standard_normal(t.shape, dtype=np.float32) * np.float32(WEIGHT_STD)).astype(np.float32)
    rows, cols = t.shape
    row_bytes = stored_bytes((cols,), qtype)
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    rows_per_chunk = max(1, CHUNK_VALUES // cols)
    for r in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r)
        values = rng.standard_normal((n, cols), dtype=np.float32)
        values *= np.float32(WEIGHT_STD)
        out[r : r + n] = gguf.quants.quantize(values, qtype).view(np.uint8).reshape(n, row_bytes)
    return out


def write_model(out: Path, arch: str, preset: str, s: Shape, matrix_type: str, seed: int) -> int:
    qtype, file_type = MATRIX_TYPES[matrix_type]
    plan = plan_tensors(arch, s)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[ARCHES[arch]])
    writer.add_name(f"random {arch} {preset} (seed {seed}, std {WEIGHT_STD}; weights mean nothing)")
    writer.add_block_count(s.n_layers)
    writer.add_context_length(s.context)
    writer.add_embedding_length(s.d_model)
    writer.add_feed_forward_length(s.ffn_dim)
    writer.add_head_count(s.n_heads)
    writer.add_head_count_kv(s.n_kv_heads)
    if s.head_dim != s.d_model // s.n_heads:
        writer.add_key_length(s.head_dim)
        writer.add_value_length(s.head_dim)
    writer.add_rope_freq_base(s.rope_theta)
    writer.add_layer_norm_rms_eps(s.rms_eps)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in plan:
        ttype = stored_type(t, qtype)
        # gguf-py takes the logical shape with the dtype of the values the bytes stand for.
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), stored_bytes(t.shape, ttype), ttype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(plan):
            writer.write_tensor_data(make_tensor(t, stored_type(t, qtype), rng))
            if t.kind == "matrix":
                print(f"\r{i + 1}/{len(plan)} tensors", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHES), default="qwen2")
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--type", choices=list(MATRIX_TYPES), default="Q4_0", help="type of every matrix (default Q4_0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    shape = PRESETS[args.preset]
    size = write_model(args.out, args.arch, args.preset, shape, args.type, args.seed)
    print(f"wrote {args.out}: {size} bytes ({size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
