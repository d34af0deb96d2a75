// Dequantization and fp32 encoding checked bit for bit against gguf-py / numpy outputs stored in
// test/fixtures/quant by scripts/reference/make_quant_fixtures.py.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  GgmlType,
  bf16ToF32,
  canDequantize,
  dequantize,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  ggmlBlockSize,
  ggmlByteLength,
  ggmlTypeName,
  ggmlTypeSize,
  isGgmlType,
  quantize,
  quantizeBF16,
  quantizeF16,
  quantizeQ8_0,
} from '../src/formats/quant.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const FIX = path.join(ROOT, 'test', 'fixtures', 'quant');

interface Manifest {
  generator: string;
  dequantize: { type: keyof typeof GgmlType; id: number; elements: number; bin: string; f32: string }[];
  quantize: { type: keyof typeof GgmlType; src: string; bin: string }[];
}
const manifest = JSON.parse(fs.readFileSync(path.join(FIX, 'manifest.json'), 'utf8')) as Manifest;

function bytes(name: string): Uint8Array {
  const b = fs.readFileSync(path.join(FIX, name));
  // A fresh, 4-byte aligned copy so typed views work.
  return new Uint8Array(b);
}
function floats(name: string): Float32Array {
  return new Float32Array(bytes(name).buffer);
}

/** Bitwise equality, except that any NaN matches any NaN (payload handling differs across CPUs). */
function assertSameBits(got: Float32Array, want: Float32Array, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < g.length; i++) {
    if (g[i] === w[i] || (Number.isNaN(got[i]) && Number.isNaN(want[i]))) continue;
    if (first < 0) first = i;
    bad++;
  }
  assert.equal(
    bad,
    0,
    `${label}: ${bad} of ${g.length} values differ; first at ${first}: got ${got[first]}, want ${want[first]}`,
  );
}

test('fixtures cover every required type', () => {
  const types = new Set(manifest.dequantize.map((e) => e.type));
  for (const t of [
    'F32',
    'F16',
    'BF16',
    'Q8_0',
    'Q4_0',
    'Q4_1',
    'Q5_0',
    'Q5_1',
    'Q2_K',
    'Q3_K',
    'Q4_K',
    'Q5_K',
    'Q6_K',
  ]) {
    assert.ok(types.has(t as keyof typeof GgmlType), `fixture for ${t}`);
    assert.ok(canDequantize(GgmlType[t as keyof typeof GgmlType]), `${t} supported`);
  }
});

for (const e of manifest.dequantize) {
  test(`dequantize ${e.type} matches gguf-py bit for bit`, () => {
    const type = GgmlType[e.type];
    assert.equal(type, e.id);
    const raw = bytes(e.bin);
    const want = floats(e.f32);
    assert.equal(want.length, e.elements);
    assert.equal(raw.length, ggmlByteLength(type, e.elements));
    assertSameBits(dequantize(type, raw, e.elements), want, e.type);

    // Same answer from a source at an odd byte offset and into a caller-given output.
    const shifted = new Uint8Array(raw.length + 1);
    shifted.set(raw, 1);
    const out = new Float32Array(e.elements + 3);
    dequantize(type, shifted.subarray(1), e.elements, out);
    assertSameBits(out.subarray(0, e.elements), want, `${e.type} (unaligned)`);
  });
}

for (const e of manifest.quantize) {
  test(`encode fp32 as ${e.type} matches ${e.type === 'F16' ? 'numpy' : 'gguf-py'} byte for byte`, () => {
    const src = floats(e.src);
    const want = bytes(e.bin);
    const got = quantize(GgmlType[e.type], src);
    assert.equal(got.length, want.length);
    const diffs: number[] = [];
    for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) diffs.push(i);
    assert.deepEqual(diffs.slice(0, 10), [], `${e.type}: ${diffs.length} bytes differ`);
  });
}

test('half floats: every non-NaN f16 survives decode + encode, NaNs stay NaN', () => {
  for (let h = 0; h < 65536; h++) {
    const x = f16ToF32(h);
    if (Number.isNaN(x)) {
      assert.ok((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0, `0x${h.toString(16)} decoded to NaN`);
      const back = f32ToF16(x);
      assert.ok((back & 0x7c00) === 0x7c00 && (back & 0x3ff) !== 0);
    } else {
      assert.equal(f32ToF16(x), h, `0x${h.toString(16)} -> ${x}`);
    }
  }
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  assert.equal(f32ToF16(65520), 0x7c00);
  assert.equal(f32ToF16(65519.99), 0x7bff);
  assert.equal(f32ToF16(2 ** -25), 0);
  assert.equal(f32ToF16(2 ** -25 * 1.0001), 1);
  assert.equal(f32ToF16(3 * 2 ** -25), 2);
});

test('bfloat16: every non-NaN value survives decode + encode', () => {
  for (let b = 0; b < 65536; b++) {
    const x = bf16ToF32(b);
    if (Number.isNaN(x)) assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(x))));
    else assert.equal(f32ToBf16(x), b, `0x${b.toString(16)}`);
  }
});

test('F16/BF16 encoders agree with the scalar converters', () => {
  const src = floats('conv_src.f32');
  const h = quantizeF16(src);
  const b = quantizeBF16(src);
  for (let i = 0; i < src.length; i++) {
    assert.equal(h[2 * i] | (h[2 * i + 1] << 8), f32ToF16(src[i]));
    assert.equal(b[2 * i] | (b[2 * i + 1] << 8), f32ToBf16(src[i]));
  }
});

test('Q8_0 round trip error is at most half a step per block', () => {
  const n = 32 * 64;
  const x = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    x[i] = ((s / 2 ** 32 - 0.5) * 10) ** 3;
  }
  const q = quantizeQ8_0(x);
  assert.equal(q.length, (n / 32) * 34);
  const y = dequantize(GgmlType.Q8_0, q, n);
  for (let b = 0; b < n / 32; b++) {
    const d = f16ToF32(q[b * 34] | (q[b * 34 + 1] << 8));
    for (let j = 0; j < 32; j++) {
      const i = b * 32 + j;
      // Half a step, plus the error of storing d as a half (up to 2^-11 relative, times 127 steps).
      assert.ok(Math.abs(y[i] - x[i]) <= d * (0.5 + 127 * 2 ** -11) + 1e-12, `value ${i}`);
    }
  }
});

test('type table', () => {
  const sizes: [keyof typeof GgmlType, number, number][] = [
    ['F32', 1, 4],
    ['F16', 1, 2],
    ['BF16', 1, 2],
    ['Q4_0', 32, 18],
    ['Q4_1', 32, 20],
    ['Q5_0', 32, 22],
    ['Q5_1', 32, 24],
    ['Q8_0', 32, 34],
    ['Q2_K', 256, 84],
    ['Q3_K', 256, 110],
    ['Q4_K', 256, 144],
    ['Q5_K', 256, 176],
    ['Q6_K', 256, 210],
    ['Q8_K', 256, 292],
  ];
  for (const [name, block, size] of sizes) {
    assert.equal(ggmlBlockSize(GgmlType[name]), block, name);
    assert.equal(ggmlTypeSize(GgmlType[name]), size, name);
    assert.equal(ggmlTypeName(GgmlType[name]), name);
  }
  assert.equal(GgmlType.BF16, 30);
  assert.equal(isGgmlType(4), false);
  assert.equal(isGgmlType(31), false);
  assert.equal(ggmlTypeName(99), 'type#99');
  assert.equal(ggmlByteLength(GgmlType.Q4_K, 512), 288);
});

test('bad arguments are refused', () => {
  assert.throws(() => dequantize(GgmlType.Q4_0, new Uint8Array(18), 16), /whole number of Q4_0 blocks/);
  assert.throws(() => dequantize(GgmlType.Q4_0, new Uint8Array(17), 32), /need 18 bytes/);
  assert.throws(() => dequantize(GgmlType.IQ2_XXS, new Uint8Array(66), 256), /not supported/);
  assert.throws(() => dequantize(GgmlType.Q8_0, new Uint8Array(34), 32, new Float32Array(8)), /output/);
  assert.throws(() => quantizeQ8_0(new Float32Array(31)), /multiple of 32/);
  assert.throws(() => quantize(GgmlType.Q4_K, new Float32Array(256)), /cannot encode/);
});
