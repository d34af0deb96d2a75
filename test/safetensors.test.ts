// safetensors reader/writer: round trips per dtype, conversions against values numpy gives
// (np.float16 / torch.bfloat16 round-to-nearest-even), and malformed or unwritable files.
import { f32ToBf16, f32ToF16 } from '../src/formats/quant.js';
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FormatError, SteerguardError } from '../src/formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  readSafetensorsTensorI32,
  writeSafetensors,
} from '../src/formats/safetensors.js';

const dir = mkdtempSync(join(tmpdir(), 'steerguard-st-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A safetensors file from a header object and a data section, written by hand. */
function rawFile(
  name: string,
  header: unknown,
  data: Uint8Array = new Uint8Array(0),
  lenOverride?: bigint,
): string {
  const path = join(dir, name);
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  const fd = openSync(path, 'w');
  writeSync(fd, len);
  writeSync(fd, json);
  writeSync(fd, data);
  closeSync(fd);
  return path;
}

function ramp(n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (i - n / 2) * scale);
}

test('round trip F32, F16, BF16 and I32 with metadata', () => {
  const path = join(dir, 'rt.safetensors');
  const f32 = Float32Array.from([1.5, -2.25, 3.1415927, 1e-30, -0, Infinity, -Infinity, NaN]);
  const exactHalf = Float32Array.from([0, 1, -1, 0.5, 65504, -65504, 2 ** -24, 1.5, 1023.5]);
  const exactBf16 = Float32Array.from([0, 1, -3.5, 2 ** 100, -(2 ** -100), 0.15625, 3.3895314e38]);
  const ints = Int32Array.from([0, -1, 2147483647, -2147483648, 42, 7]);
  const big = ramp(70_000, 1 / 1024);
  writeSafetensors(
    path,
    [
      { name: 'a.f32', dtype: 'F32', shape: [2, 4], data: f32 },
      { name: 'b.f16', dtype: 'F16', shape: [9], data: exactHalf },
      { name: 'c.bf16', dtype: 'BF16', shape: [7, 1], data: exactBf16 },
      { name: 'd.i32', dtype: 'I32', shape: [3, 2], data: ints },
      { name: 'e.empty', dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      { name: 'f.scalar', dtype: 'F16', shape: [], data: Float32Array.of(-2) },
      { name: 'g.big', dtype: 'BF16', shape: [70_000], data: big },
    ],
    { format: 'pt', note: 'ünïcode ✓' },
  );
  const file = readSafetensorsHeader(path);
  assert.deepEqual(file.metadata, { format: 'pt', note: 'ünïcode ✓' });
  assert.deepEqual(
    [...file.tensors.keys()],
    ['a.f32', 'b.f16', 'c.bf16', 'd.i32', 'e.empty', 'f.scalar', 'g.big'],
  );
  const t = (n: string) => file.tensors.get(n)!;
  assert.deepEqual(t('a.f32').shape, [2, 4]);
  assert.equal(t('a.f32').dtype, 'F32');
  assert.equal(t('a.f32').file, path);
  // Data starts 8-byte aligned, as the reference writer lays it out.
  assert.equal(t('a.f32').begin % 8, 0);
  assert.deepEqual(readSafetensorsTensorF32(t('a.f32')), f32);
  assert.deepEqual(readSafetensorsTensorF32(t('b.f16')), exactHalf);
  assert.deepEqual(readSafetensorsTensorF32(t('c.bf16')), exactBf16);
  assert.deepEqual(readSafetensorsTensorI32(t('d.i32')), ints);
  assert.deepEqual(readSafetensorsTensorF32(t('e.empty')), new Float32Array(0));
  assert.deepEqual(t('f.scalar').shape, []);
  assert.deepEqual(readSafetensorsTensorF32(t('f.scalar')), Float32Array.of(-2));
  const back = readSafetensorsTensorF32(t('g.big'));
  for (let i = 0; i < big.length; i++) {
    // bf16 keeps 8 significant bits, so rounding moves a value by at most 2^-8 of itself.
    assert.ok(Math.abs(back[i] - big[i]) <= Math.abs(big[i]) * 2 ** -8, `element ${i}`);
  }
  assert.throws(() => readSafetensorsTensorI32(t('a.f32')), /a\.f32.*cannot be read as int32/);
  assert.throws(() => readSafetensorsTensorF32(t('d.i32')), /d\.i32.*cannot be read as float32/);
});

test('float16 and bfloat16 rounding matches numpy / torch (round to nearest even)', () => {
  // Expected bit patterns from np.float32(x).astype(np.float16).view(np.uint16) and
  // torch.tensor(x).to(torch.bfloat16).view(torch.int16).
  const half: [number, number][] = [
    [1 / 3, 0x3555],
    [0.1, 0x2e66],
    [65519, 0x7bff], // rounds down to the largest half
    [65520, 0x7c00], // rounds up to infinity
    [1e-8, 0x0000], // below half the smallest subnormal
    [6e-8, 0x0001], // nearest subnormal
    [3e-5, 0x01f7],
    [-0, 0x8000],
    [1 + 2 ** -11, 0x3c00], // tie, to even (down)
    [1 + 3 * 2 ** -11, 0x3c02], // tie, to even (up)
  ];
  for (const [x, bits] of half) assert.equal(f32ToF16(x), bits, `f16(${x})`);
  assert.equal(f32ToF16(NaN) & 0x7c00, 0x7c00);
  assert.notEqual(f32ToF16(NaN) & 0x3ff, 0);
  const bf: [number, number][] = [
    [1 / 3, 0x3eab],
    [0.1, 0x3dcd],
    [1 + 2 ** -8, 0x3f80], // tie, to even (down)
    [1 + 3 * 2 ** -8, 0x3f82], // tie, to even (up)
    [3.4e38, 0x7f80], // overflows to infinity
    [-1e-40, 0x8001], // float32 subnormal stays representable
  ];
  for (const [x, bits] of bf) assert.equal(f32ToBf16(x), bits, `bf16(${x})`);
  assert.equal(f32ToBf16(NaN) & 0x7f80, 0x7f80);
  assert.notEqual(f32ToBf16(NaN) & 0x7f, 0);
});

test('F64 and narrow integer tensors written by other tools are read', () => {
  const f64 = Float64Array.from([1.25, -1e300, 1e-3]);
  const i64 = BigInt64Array.from([5n, -7n]);
  const u8 = Uint8Array.from([0, 255]);
  const data = new Uint8Array(24 + 16 + 2);
  data.set(new Uint8Array(f64.buffer), 0);
  data.set(new Uint8Array(i64.buffer), 24);
  data.set(u8, 40);
  const path = rawFile(
    'f64.safetensors',
    {
      x: { dtype: 'F64', shape: [3], data_offsets: [0, 24] },
      y: { dtype: 'I64', shape: [2], data_offsets: [24, 40] },
      z: { dtype: 'U8', shape: [2], data_offsets: [40, 42] },
    },
    data,
  );
  const file = readSafetensorsHeader(path);
  assert.deepEqual(
    readSafetensorsTensorF32(file.tensors.get('x')!),
    Float32Array.from([1.25, -Infinity, 1e-3]),
  );
  assert.deepEqual(readSafetensorsTensorI32(file.tensors.get('y')!), Int32Array.from([5, -7]));
  assert.deepEqual(readSafetensorsTensorI32(file.tensors.get('z')!), Int32Array.from([0, 255]));
});

function expectFormatError(path: string, field: RegExp | string, problem: RegExp) {
  assert.throws(
    () => readSafetensorsHeader(path),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
      assert.equal(e.file, path);
      if (typeof field === 'string') assert.equal(e.field, field);
      else assert.match(e.field, field);
      assert.match(e.message, problem);
      assert.ok(e.message.includes(path), 'message names the file');
      return true;
    },
  );
}

test('bad input: truncated, lying header, bad JSON, overlaps', () => {
  const good = join(dir, 'good.safetensors');
  writeSafetensors(good, [
    { name: 'w', dtype: 'F32', shape: [4, 4], data: ramp(16) },
    { name: 'b', dtype: 'F32', shape: [4], data: ramp(4) },
  ]);
  const bytes = readFileSync(good);

  const truncated = join(dir, 'truncated.safetensors');
  writeFileSync(truncated, bytes.subarray(0, bytes.length - 10));
  expectFormatError(truncated, /^[wb]$/, /truncated/);

  const tiny = join(dir, 'tiny.safetensors');
  writeFileSync(tiny, bytes.subarray(0, 5));
  expectFormatError(tiny, 'header length', /truncated/);

  const headerCut = join(dir, 'header-cut.safetensors');
  writeFileSync(headerCut, bytes.subarray(0, 20));
  expectFormatError(headerCut, 'header length', /truncated/);

  expectFormatError(
    rawFile('huge-len.safetensors', {}, undefined, 1n << 40n),
    'header length',
    /not a plausible/,
  );
  expectFormatError(rawFile('bad-json.safetensors', '{"w": {"dtype": "F32",'), 'header', /not valid JSON/);
  expectFormatError(rawFile('array.safetensors', '[1, 2]'), 'header', /JSON object/);

  const data = new Uint8Array(64);
  expectFormatError(
    rawFile('lies.safetensors', { w: { dtype: 'F32', shape: [4, 4], data_offsets: [0, 32] } }, data),
    'w',
    /header lies about sizes: F32\[4, 4\] needs 64 bytes but data_offsets span 32/,
  );
  expectFormatError(
    rawFile('beyond.safetensors', { w: { dtype: 'F16', shape: [64], data_offsets: [0, 128] } }, data),
    'w',
    /truncated/,
  );
  expectFormatError(
    rawFile(
      'overlap.safetensors',
      {
        a: { dtype: 'F32', shape: [8], data_offsets: [0, 32] },
        b: { dtype: 'F32', shape: [8], data_offsets: [16, 48] },
      },
      data,
    ),
    'b',
    /overlaps tensor a/,
  );
  expectFormatError(
    rawFile('dtype.safetensors', { w: { dtype: 'Q4', shape: [2], data_offsets: [0, 1] } }, data),
    'w',
    /unknown dtype "Q4"/,
  );
  expectFormatError(
    rawFile('shape.safetensors', { w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, data),
    'w',
    /shape/,
  );
  expectFormatError(
    rawFile('meta.safetensors', { __metadata__: { n: 3 } }, data),
    '__metadata__.n',
    /must be a string/,
  );
  assert.throws(() => readSafetensorsHeader(join(dir, 'nope.safetensors')), /nope\.safetensors.*cannot open/);
});

test('writer rejects inconsistent tensors before touching the disk', () => {
  const path = join(dir, 'bad-write.safetensors');
  assert.throws(
    () => writeSafetensors(path, [{ name: 'x', dtype: 'F32', shape: [2, 3], data: new Float32Array(5) }]),
    /bad-write\.safetensors: x: shape \[2, 3\] has 6 elements but data has 5/,
  );
  assert.throws(
    () => writeSafetensors(path, [{ name: 'x', dtype: 'I32', shape: [1], data: new Float32Array(1) }]),
    /needs Int32Array/,
  );
  assert.throws(
    () =>
      writeSafetensors(path, [
        { name: 'x', dtype: 'F32', shape: [1], data: new Float32Array(1) },
        { name: 'x', dtype: 'F32', shape: [1], data: new Float32Array(1) },
      ]),
    /duplicate tensor name/,
  );
  assert.ok(!readdirSync(dir).some((f) => f.includes('bad-write')));
});

test('unwritable destination: the error names the path and nothing is left behind', () => {
  const tensors = [{ name: 'x', dtype: 'F32' as const, shape: [3], data: ramp(3) }];

  const notADir = join(dir, 'plain-file');
  writeFileSync(notADir, 'x');
  const under = join(notADir, 'out.safetensors');
  assert.throws(
    () => writeSafetensors(under, tensors),
    (e: unknown) => e instanceof SteerguardError && e.message.startsWith(`cannot write ${under}:`),
  );

  const missing = join(dir, 'no-such-dir', 'out.safetensors');
  assert.throws(() => writeSafetensors(missing, tensors), /cannot write .*no-such-dir.*does not exist/);

  // The rename fails after the data was written (a directory is in the way): the temporary file
  // must be cleaned up.
  const sub = join(dir, 'rename-fails');
  mkdirSync(join(sub, 'out.safetensors'), { recursive: true });
  assert.throws(
    () => writeSafetensors(join(sub, 'out.safetensors'), tensors),
    /cannot write .*out\.safetensors/,
  );
  assert.deepEqual(readdirSync(sub), ['out.safetensors']);

  // Permission bits only bind non-root users.
  if (process.getuid?.() !== 0) {
    const ro = join(dir, 'read-only');
    mkdirSync(ro, { mode: 0o555 });
    assert.throws(
      () => writeSafetensors(join(ro, 'x.safetensors'), tensors),
      /cannot write .*permission denied/,
    );
    assert.deepEqual(readdirSync(ro), []);
  }
});

test('overwriting is atomic: an existing file is replaced whole', () => {
  const path = join(dir, 'replace.safetensors');
  writeSafetensors(path, [{ name: 'old', dtype: 'F32', shape: [1], data: Float32Array.of(1) }]);
  writeSafetensors(path, [{ name: 'new', dtype: 'F16', shape: [2], data: Float32Array.of(2, 3) }]);
  const file = readSafetensorsHeader(path);
  assert.deepEqual([...file.tensors.keys()], ['new']);
  assert.deepEqual(readSafetensorsTensorF32(file.tensors.get('new')!), Float32Array.of(2, 3));
  assert.ok(!readdirSync(dir).some((f) => f.endsWith('.tmp')));
});
