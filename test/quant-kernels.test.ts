/**
 * The quantized matmul (NativeBackend.matmulQuant) on every block type it takes, against the
 * dequantize-then-fp32 reference: quant.ts's dequantizer (itself checked bit for bit against gguf-py
 * in quant.test.ts) followed by the double-precision reference matmul.
 *
 * - 'f32' activations must equal the reference matmul to fp32 summation error (1e-5 relative), and
 *   one-hot inputs must give the dequantized weights bit for bit (the C dequantizer is ggml's).
 * - 'q8' activations must equal their own recipe (x rounded to int8 per block, integer dot products)
 *   to 1e-4, and stay within Q8_TOL of the exact product.
 * Weights: random blocks with valid scales, gguf-py's fixture blocks (test/fixtures/quant: normal,
 * subnormal, zero and negative scales) and rows of the real GGUF files when they are present.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadNativeBackend } from '../src/engine/native.js';
import { ReferenceBackend } from '../src/engine/reference.js';
import { readGguf } from '../src/formats/gguf.js';
import {
  GgmlType,
  dequantize,
  f32ToF16,
  ggmlBlockSize,
  ggmlByteLength,
  ggmlTypeName,
  ggmlTypeSize,
} from '../src/formats/quant.js';
import { QUANTIZED_MATMUL_TYPES } from '../src/model/weights.js';
import {
  FIXTURES,
  GEMMA3_GGUF,
  QWEN05_GGUF,
  SMOLLM2_GGUF,
  missingModel,
  relErr,
  throwsBadArgument,
} from './util/fixtures.js';

const be = loadNativeBackend({ threads: 2 });
const ref = new ReferenceBackend();
const TYPES = [...QUANTIZED_MATMUL_TYPES] as GgmlType[];
/** q8 activations against the exact product (max abs diff / max abs output). */
const Q8_TOL = 3e-2;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randn(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++)
    out[i] = Math.sqrt(-2 * Math.log(Math.max(r(), 1e-12))) * Math.cos(2 * Math.PI * r());
  return out;
}

/** Byte offsets of the fp16 scale fields in one block of each type. */
const HALF_FIELDS: Record<number, number[]> = {
  [GgmlType.Q4_0]: [0],
  [GgmlType.Q4_1]: [0, 2],
  [GgmlType.Q5_0]: [0],
  [GgmlType.Q5_1]: [0, 2],
  [GgmlType.Q8_0]: [0],
  [GgmlType.Q4_K]: [0, 2],
  [GgmlType.Q5_K]: [0, 2],
  [GgmlType.Q6_K]: [208],
};

/** N rows of K values of `type`: random quants and sub-scales, fp16 scales around ±0.01. */
function randomBlocks(type: GgmlType, N: number, K: number, seed: number): Uint8Array {
  const r = rng(seed);
  const bytes = new Uint8Array(ggmlByteLength(type, N * K));
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256);
  const size = ggmlTypeSize(type);
  for (let o = 0; o < bytes.length; o += size)
    for (const f of HALF_FIELDS[type]) {
      const h = f32ToF16((r() < 0.5 ? -1 : 1) * 0.01 * (0.5 + r()));
      bytes[o + f] = h & 0xff;
      bytes[o + f + 1] = h >>> 8;
    }
  return bytes;
}

function close(got: Float32Array, want: Float32Array, tol: number, what: string): number {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: max abs diff / max abs ref = ${e.toExponential(2)} > ${tol}`);
  return e;
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The q8 recipe in double: x rounded to int8 per block of the weight type's block size (32, or 256
 * for the k-quants), scale fp32(max|x|/127), then Σ_b dx_b·Σ_i w_i·xq_i over the dequantized w.
 */
function refQ8(x: Float32Array, wf: Float32Array, M: number, K: number, N: number, block: number) {
  const f = Math.fround;
  const out = new Float32Array(M * N);
  const xq = new Float64Array(K);
  for (let m = 0; m < M; m++) {
    for (let b = 0; b < K / block; b++) {
      let amax = 0;
      for (let i = 0; i < block; i++) amax = Math.max(amax, Math.abs(x[m * K + b * block + i]));
      const d = f(amax / 127);
      const id = d > 0 ? f(1 / d) : 0;
      for (let i = 0; i < block; i++) xq[b * block + i] = d * roundHalfEven(f(x[m * K + b * block + i] * id));
    }
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let i = 0; i < K; i++) acc += wf[n * K + i] * xq[i];
      out[m * N + n] = acc;
    }
  }
  return out;
}

/** Checks both activation modes of one weight matrix against the references; returns the q8 error. */
function checkMatmul(type: GgmlType, w: Uint8Array, M: number, K: number, N: number, seed: number): number {
  const what = `${ggmlTypeName(type)} ${M}x${K}x${N}`;
  const wf = dequantize(type, w, N * K);
  const x = randn(M * K, seed);
  const bias = seed % 2 === 0 ? randn(N, seed + 1) : undefined;
  const want = new Float32Array(M * N);
  ref.matmul(want, x, wf, M, K, N, bias);

  // an unaligned view of the blocks, as when they come straight out of a GGUF file
  const padded = new Uint8Array(w.length + 1);
  padded.set(w, 1);
  const wv = padded.subarray(1);
  const exact = new Float32Array(M * N).fill(NaN);
  be.matmulQuant(exact, x, wv, type, M, K, N, bias, 'f32');
  close(exact, want, 1e-5, `${what} f32`);

  const q8 = new Float32Array(M * N).fill(NaN);
  be.matmulQuant(q8, x, wv, type, M, K, N, bias, 'q8');
  const recipe = refQ8(x, wf, M, K, N, ggmlBlockSize(type));
  if (bias) for (let i = 0; i < M * N; i++) recipe[i] += bias[i % N];
  close(q8, recipe, 1e-4, `${what} q8 vs its recipe`);
  return close(q8, want, Q8_TOL, `${what} q8 vs exact`);
}

/** x = rows of the identity, so x·wᵀ is w's columns: the dequantized values themselves. */
function checkDequantBitExact(type: GgmlType, w: Uint8Array, K: number, N: number, want: Float32Array) {
  for (const M of [3, Math.min(K, 40)]) {
    // rows 0, 1, ... of the identity, then the last column, to reach every block position
    const cols = Array.from({ length: M }, (_, m) => (m === M - 1 ? K - 1 : m));
    const x = new Float32Array(M * K);
    cols.forEach((c, m) => (x[m * K + c] = 1));
    const out = new Float32Array(M * N);
    be.matmulQuant(out, x, w, type, M, K, N, undefined, 'f32');
    for (let n = 0; n < N; n++)
      cols.forEach((c, m) => {
        const got = out[m * N + n];
        const exp = want[n * K + c];
        assert.ok(
          Object.is(got, exp) || (got === 0 && exp === 0),
          `${ggmlTypeName(type)} w[${n},${c}]: ${got} vs ${exp}`,
        );
      });
  }
}

describe('matmulQuant on random blocks', () => {
  for (const type of TYPES) {
    const block = ggmlBlockSize(type);
    it(ggmlTypeName(type), () => {
      const shapes: [number, number, number][] = [
        [1, block, 1], // one block, one row
        [1, 3 * block, 37],
        [3, 4 * block, 7],
        [8, 2 * block, 33], // the first sgemm-tile size
        [17, 3 * block, 61],
      ];
      let seed = type * 100;
      for (const [M, K, N] of shapes) checkMatmul(type, randomBlocks(type, N, K, seed), M, K, N, seed++);
    });
  }

  it('more rows than one dequantized tile (16 MiB of fp32)', () => {
    const [M, K, N] = [8, 256, 16403];
    checkMatmul(GgmlType.Q4_K, randomBlocks(GgmlType.Q4_K, N, K, 7), M, K, N, 7);
  });

  it('int8 activations: each row gives the same bits alone as in a batch of 1 to 11 rows', () => {
    // batched decoding must not make a reply depend on its neighbours (kernels take 4, 2, 1 rows)
    for (const type of TYPES) {
      const [K, N] = [3 * ggmlBlockSize(type), 9];
      const w = randomBlocks(type, N, K, type + 1);
      for (const M of [2, 3, 5, 11]) {
        const x = randn(M * K, type * 10 + M);
        const all = new Float32Array(M * N);
        be.matmulQuant(all, x, w, type, M, K, N, undefined, 'q8');
        for (let m = 0; m < M; m++) {
          const one = new Float32Array(N);
          be.matmulQuant(one, x.subarray(m * K, (m + 1) * K), w, type, 1, K, N, undefined, 'q8');
          assert.deepEqual(one, all.subarray(m * N, (m + 1) * N), `${ggmlTypeName(type)} M=${M} row ${m}`);
        }
      }
    }
  });

  it('dequantizes bit for bit like quant.ts', () => {
    for (const type of TYPES) {
      const K = 2 * ggmlBlockSize(type);
      const N = 5;
      const w = randomBlocks(type, N, K, type);
      checkDequantBitExact(type, w, K, N, dequantize(type, w, N * K));
    }
  });
});

describe("matmulQuant on gguf-py's fixture blocks", () => {
  const manifest = JSON.parse(readFileSync(path.join(FIXTURES, 'quant', 'manifest.json'), 'utf8')) as {
    dequantize: { type: string; id: number; elements: number; bin: string; f32: string }[];
  };
  for (const entry of manifest.dequantize.filter((e) => QUANTIZED_MATMUL_TYPES.has(e.id))) {
    it(entry.type, () => {
      const type = entry.id as GgmlType;
      const bin = new Uint8Array(readFileSync(path.join(FIXTURES, 'quant', entry.bin)));
      const f32 = readFileSync(path.join(FIXTURES, 'quant', entry.f32));
      const want = new Float32Array(f32.buffer, f32.byteOffset, entry.elements);
      const K = ggmlBlockSize(type);
      const N = entry.elements / K;
      checkDequantBitExact(type, bin, K, N, want);
      checkMatmul(type, bin, 4, K, N, 3);
    });
  }
});

/** The first `rows` rows of the smallest tensor of each supported type in a GGUF file. */
function realSamples(file: string, rows: number) {
  const g = readGguf(file);
  const smallest = new Map<number, { name: string; K: number; offset: number }>();
  const sizes = new Map<number, number>();
  for (const [name, t] of g.tensors) {
    if (!QUANTIZED_MATMUL_TYPES.has(t.type) || t.dims.length !== 2 || t.dims[1] < rows) continue;
    if (t.byteLength >= (sizes.get(t.type) ?? Infinity)) continue;
    sizes.set(t.type, t.byteLength);
    smallest.set(t.type, { name, K: t.dims[0], offset: t.offset });
  }
  const fd = openSync(file, 'r');
  try {
    return [...smallest].map(([type, s]) => {
      const bytes = new Uint8Array(ggmlByteLength(type, rows * s.K));
      readSync(fd, bytes, 0, bytes.length, s.offset);
      return { type: type as GgmlType, name: s.name, K: s.K, bytes };
    });
  } finally {
    closeSync(fd);
  }
}

for (const [label, file] of [
  ['SmolLM2 Q4_1', SMOLLM2_GGUF],
  ['gemma3 Q4_K_M', GEMMA3_GGUF],
  ['Qwen2.5-0.5B Q4_K_M', QWEN05_GGUF],
] as const) {
  describe(`matmulQuant on real weights: ${label}`, { skip: missingModel(file) }, () => {
    it('every supported type in the file, both activation modes', (t) => {
      const N = 61;
      const samples = realSamples(file, N);
      assert.ok(samples.length > 0);
      for (const s of samples) {
        const e = checkMatmul(s.type, s.bytes, 2, s.K, N, 11);
        t.diagnostic(`${s.name} ${ggmlTypeName(s.type)} K=${s.K}: q8 vs exact ${e.toExponential(2)}`);
      }
    });
  });
}

describe('matmulQuant argument checks', () => {
  const bad = throwsBadArgument;
  const f = (n: number) => new Float32Array(n);
  const q40 = GgmlType.Q4_0;
  const w = new Uint8Array(2 * 18);

  it('refuses types without a kernel, odd K, short buffers, bad modes and overlaps', () => {
    bad(
      () => be.matmulQuant(f(2), f(32), w, GgmlType.F16, 1, 32, 2, undefined, 'f32'),
      /type 1 is not a supported/,
    );
    bad(() => be.matmulQuant(f(2), f(32), w, GgmlType.Q2_K, 1, 32, 2, undefined, 'q8'), /type 10 is not/);
    bad(() => be.matmulQuant(f(2), f(48), w, q40, 1, 48, 2, undefined, 'f32'), /K must be a multiple of 32/);
    bad(
      () => be.matmulQuant(f(2), f(256), new Uint8Array(287), GgmlType.Q4_K, 1, 256, 2, undefined, 'f32'),
      /w has 287 elements, needs N\*\(K\/block\)\*blockBytes = 288/,
    );
    bad(
      () => be.matmulQuant(f(2), f(32), w.subarray(1), q40, 1, 32, 2, undefined, 'q8'),
      /w has 35 elements/,
    );
    bad(
      () => be.matmulQuant(f(1), f(32), w, q40, 1, 32, 2, undefined, 'q8'),
      /out has 1 elements, needs M\*N = 2/,
    );
    bad(() => be.matmulQuant(f(2), f(31), w, q40, 1, 32, 2, undefined, 'q8'), /x has 31 elements/);
    bad(() => be.matmulQuant(f(2), f(32), w, q40, 1, 32, 2, f(1), 'q8'), /bias has 1 elements/);
    bad(
      () => be.matmulQuant(f(2), f(32), w, q40, 1, 32, 2, undefined, 'q4' as 'q8'),
      /activations must be 'f32' or 'q8', got 'q4'/,
    );
    bad(
      () => be.matmulQuant(f(2), f(32), f(9) as unknown as Uint8Array, q40, 1, 32, 2, undefined, 'q8'),
      /w must be a Uint8Array/,
      TypeError,
    );
    bad(() => be.matmulQuant(f(2), f(32), w, 2.5, 1, 32, 2, undefined, 'q8'), /type must be an integer/);
    const buf = f(40);
    bad(
      () => be.matmulQuant(buf.subarray(0, 2), buf.subarray(1, 33), w, q40, 1, 32, 2, undefined, 'f32'),
      /out must not overlap x/,
    );
  });

  it('accepts M = 0 and leaves out untouched', () => {
    const out = f(2).fill(7);
    be.matmulQuant(out, f(0), w, q40, 0, 32, 2, undefined, 'q8');
    assert.deepEqual([...out], [7, 7]);
  });
});
