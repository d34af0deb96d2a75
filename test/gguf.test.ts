// GGUF reader/writer: cross-checked against @huggingface/gguf (an independent JS parser) and against
// gguf-py's dequantization of the real models (test/fixtures/quant/real_models.json, made by
// scripts/reference/make_quant_fixtures.py); round trips; and malformed files.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { gguf as hfGguf } from '@huggingface/gguf';
import { FormatError } from '../src/formats/errors.js';
import {
  GgmlType,
  type GgufFile,
  type GgufMetadataEntry,
  type GgufValue,
  GgufValueType,
  ggmlTypeName,
  ggufBoolean,
  ggufMetadataEntries,
  ggufNumber,
  ggufNumberArray,
  ggufOptionalNumber,
  ggufOptionalString,
  ggufString,
  ggufStringArray,
  readGguf,
  readGgufTensorBytes,
  readGgufTensorF32,
  writeGguf,
} from '../src/formats/gguf.js';
import { dequantize, f16ToF32, f32ToF16, quantizeQ8_0 } from '../src/formats/quant.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const FIX = path.join(ROOT, 'test', 'fixtures', 'quant');
const MODELS = process.env.STEERGUARD_MODELS ?? path.join(ROOT, '.cache', 'models');
const SMOL = path.join(MODELS, 'SmolLM2-135M-Instruct.Q4_1.gguf');
const GEMMA = path.join(MODELS, 'gemma-3-270m-q4_k_m.gguf');
const MISSING = 'real model missing: run `bash scripts/fetch-models.sh`';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'steerguard-gguf-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let tmpCounter = 0;
function tmpPath(name: string): string {
  return path.join(tmp, `${tmpCounter++}-${name}`);
}

// ---------------------------------------------------------------------------------------------
// Comparison with @huggingface/gguf

interface HfTyped {
  value: unknown;
  type: number;
  subType?: number;
}

/** Our value in @huggingface/gguf's representation: plain arrays, bigint for every 64-bit integer. */
function toHf(v: GgufValue, type: number, itemType?: number): unknown {
  if (type === GgufValueType.ARRAY) {
    const items = Array.from(v as ArrayLike<GgufValue>);
    if (itemType === GgufValueType.ARRAY) {
      return items.map((x) => toHf(x, GgufValueType.ARRAY, innerItemType(x)));
    }
    return items.map((x) => toHf(x, itemType!));
  }
  if (type === GgufValueType.UINT64 || type === GgufValueType.INT64) return BigInt(v as number | bigint);
  // @huggingface/gguf decodes with a default TextDecoder, which drops a leading byte order mark;
  // gemma's vocabulary has six tokens that start with one (gguf-py keeps them, and so do we).
  if (typeof v === 'string' && v.startsWith('\uFEFF')) return v.slice(1);
  return v;
}

function innerItemType(x: GgufValue): number | undefined {
  if (x instanceof Int32Array) return GgufValueType.INT32;
  if (Array.isArray(x) && x.length > 0 && typeof x[0] === 'string') return GgufValueType.STRING;
  if (Array.isArray(x) && x.length > 0 && typeof x[0] === 'boolean') return GgufValueType.BOOL;
  return GgufValueType.ARRAY;
}

async function assertMatchesHf(file: GgufFile): Promise<void> {
  const hf = await hfGguf(file.path, { allowLocalFile: true, typedMetadata: true });
  const typed = hf.typedMetadata as unknown as Record<string, HfTyped>;
  assert.equal(typed.version.value, file.version);
  assert.equal(Number(typed.tensor_count.value), file.tensors.size);
  assert.equal(Number(typed.kv_count.value), file.metadata.size);
  assert.equal(Number(hf.tensorDataOffset), file.dataOffset);
  const hfKeys = Object.keys(typed).filter((k) => !['version', 'tensor_count', 'kv_count'].includes(k));
  assert.deepEqual(hfKeys, [...file.metadata.keys()]);
  for (const [key, value] of file.metadata) {
    const t = file.metadataTypes.get(key)!;
    assert.equal(typed[key].type, t.type, `${key}: type`);
    if (t.type === GgufValueType.ARRAY) assert.equal(typed[key].subType, t.itemType, `${key}: item type`);
    assert.deepEqual(toHf(value, t.type, t.itemType), typed[key].value, `${key}: value`);
  }
  const infos = [...file.tensors.values()];
  assert.equal(hf.tensorInfos.length, infos.length);
  hf.tensorInfos.forEach((h, i) => {
    const t = infos[i];
    assert.equal(h.name, t.name);
    assert.deepEqual(h.shape.map(Number), t.dims, `${t.name}: dims`);
    assert.equal(h.dtype as number, t.type, `${t.name}: type`);
    assert.equal(Number(h.offset) + file.dataOffset, t.offset, `${t.name}: offset`);
  });
}

// ---------------------------------------------------------------------------------------------
// Real models

interface RealTensor {
  name: string;
  type: string;
  dims: number[];
  offset: number;
  sha256_16: string;
  first256?: string;
  sum?: number;
  sumSq?: number;
}
interface RealModels {
  models: {
    file: string;
    sha256: string;
    tokens: { count: number; sha256_16: string };
    tensors: RealTensor[];
  }[];
}
const real = JSON.parse(fs.readFileSync(path.join(FIX, 'real_models.json'), 'utf8')) as RealModels;

function sha16(a: Float32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest('hex')
    .slice(0, 16);
}

for (const modelPath of [SMOL, GEMMA]) {
  const base = path.basename(modelPath);
  const present = fs.existsSync(modelPath);

  test(`${base}: header and tensor table match @huggingface/gguf`, async (t) => {
    if (!present) return t.skip(MISSING);
    const t0 = performance.now();
    const file = readGguf(modelPath);
    t.diagnostic(`readGguf: ${(performance.now() - t0).toFixed(0)} ms`);
    assert.equal(file.fileSize, fs.statSync(modelPath).size);
    assert.equal(file.alignment, 32);
    await assertMatchesHf(file);
  });

  test(`${base}: vocabulary strings are byte-identical to gguf-py's`, (t) => {
    if (!present) return t.skip(MISSING);
    const want = real.models.find((m) => m.file === base)!.tokens;
    const tokens = ggufStringArray(readGguf(modelPath), 'tokenizer.ggml.tokens');
    assert.equal(tokens.length, want.count);
    const got = createHash('sha256')
      .update(Buffer.from(tokens.join('\0'), 'utf8'))
      .digest('hex')
      .slice(0, 16);
    assert.equal(got, want.sha256_16);
  });

  test(`${base}: every tensor dequantizes exactly as gguf-py does`, (t) => {
    if (!present) return t.skip(MISSING);
    const want = real.models.find((m) => m.file === base)!;
    const file = readGguf(modelPath);
    assert.deepEqual(
      [...file.tensors.values()].map((x) => [x.name, ggmlTypeName(x.type), x.dims, x.offset]),
      want.tensors.map((x) => [x.name, x.type, x.dims, x.offset]),
    );
    const types = new Map<string, number>();
    let ms = 0;
    for (const w of want.tensors) {
      const t0 = performance.now();
      const got = readGgufTensorF32(file, w.name);
      ms += performance.now() - t0;
      types.set(w.type, (types.get(w.type) ?? 0) + 1);
      if (w.first256 !== undefined) {
        const first = new Float32Array(new Uint8Array(Buffer.from(w.first256, 'base64')).buffer);
        assert.deepEqual(got.subarray(0, first.length), first, `${w.name}: first values`);
        let s = 0;
        let sAbs = 0;
        let s2 = 0;
        for (let i = 0; i < got.length; i++) {
          const x = got[i];
          s += x;
          sAbs += Math.abs(x);
          s2 += x * x;
        }
        assert.ok(Math.abs(s - w.sum!) <= 1e-9 * Math.max(1, sAbs), `${w.name}: sum ${s} vs ${w.sum}`);
        assert.ok(
          Math.abs(s2 - w.sumSq!) <= 1e-9 * w.sumSq!,
          `${w.name}: sum of squares ${s2} vs ${w.sumSq}`,
        );
      }
      assert.equal(sha16(got), w.sha256_16, `${w.name} (${w.type}): sha256 of fp32 values`);
    }
    t.diagnostic(
      `dequantized ${want.tensors.length} tensors in ${ms.toFixed(0)} ms; types ${JSON.stringify([...types])}`,
    );
  });

  test(`${base}: metadata survives writeGguf and reads back identically`, async (t) => {
    if (!present) return t.skip(MISSING);
    const file = readGguf(modelPath);
    const small = [...file.tensors.values()].filter((x) => x.byteLength < 1 << 20).slice(0, 3);
    const out = tmpPath('rewrite.gguf');
    writeGguf(out, {
      metadata: ggufMetadataEntries(file),
      tensors: small.map((x) => ({
        name: x.name,
        dims: x.dims,
        type: x.type,
        data: readGgufTensorBytes(file, x.name),
      })),
    });
    const back = readGguf(out);
    assert.deepEqual(back.metadata, file.metadata);
    assert.deepEqual(back.metadataTypes, file.metadataTypes);
    for (const x of small) {
      assert.deepEqual(readGgufTensorBytes(back, x.name), readGgufTensorBytes(file, x.name), x.name);
    }
    await assertMatchesHf(back);
  });
}

test('typed metadata helpers on the real files', (t) => {
  if (!fs.existsSync(SMOL) || !fs.existsSync(GEMMA)) return t.skip(MISSING);
  const smol = readGguf(SMOL);
  assert.equal(smol.version, 3);
  assert.equal(ggufString(smol, 'general.architecture'), 'llama');
  assert.equal(ggufNumber(smol, 'llama.block_count'), 30);
  assert.equal(ggufNumber(smol, 'llama.embedding_length'), 576);
  assert.equal(ggufStringArray(smol, 'tokenizer.ggml.tokens').length, 49152);
  assert.equal(ggufStringArray(smol, 'tokenizer.ggml.merges').length, 48900);
  assert.ok(smol.metadata.get('tokenizer.ggml.token_type') instanceof Int32Array);
  assert.equal(typeof ggufBoolean(smol, 'tokenizer.ggml.add_bos_token'), 'boolean');
  assert.equal(ggufOptionalString(smol, 'no.such.key'), undefined);
  assert.equal(ggufOptionalNumber(smol, 'no.such.key'), undefined);
  assert.equal(smol.tensors.get('token_embd.weight')!.type, GgmlType.Q8_0);
  assert.deepEqual(smol.tensors.get('token_embd.weight')!.dims, [576, 49152]);

  const gemma = readGguf(GEMMA);
  assert.equal(ggufString(gemma, 'general.architecture'), 'gemma3');
  const scores = ggufNumberArray(gemma, 'tokenizer.ggml.scores');
  assert.ok(scores instanceof Float32Array);
  assert.equal(scores.length, 262144);
  assert.equal(ggufStringArray(gemma, 'tokenizer.ggml.tokens').length, 262144);

  const expectError = (fn: () => unknown, key: string, re: RegExp) =>
    assert.throws(
      fn,
      (e: unknown) => e instanceof FormatError && e.file === SMOL && e.field === key && re.test(e.message),
    );
  expectError(
    () => ggufString(smol, 'llama.block_count'),
    'llama.block_count',
    /expected a string, found UINT32/,
  );
  expectError(() => ggufNumber(smol, 'general.name'), 'general.name', /expected a number, found STRING/);
  expectError(() => ggufNumber(smol, 'no.such.key'), 'no.such.key', /missing/);
  expectError(() => ggufString(smol, 'no.such.key'), 'no.such.key', /missing/);
  expectError(() => ggufBoolean(smol, 'general.name'), 'general.name', /expected a bool/);
  expectError(
    () => ggufStringArray(smol, 'tokenizer.ggml.token_type'),
    'tokenizer.ggml.token_type',
    /expected an array of strings, found ARRAY of INT32/,
  );
  expectError(
    () => ggufNumberArray(smol, 'tokenizer.ggml.tokens'),
    'tokenizer.ggml.tokens',
    /array of numbers/,
  );
  expectError(() => readGgufTensorF32(smol, 'nope'), 'nope', /no such tensor/);
});

// ---------------------------------------------------------------------------------------------
// Round trip

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}
function randomF32(n: number, seed: number, scale = 4): Float32Array {
  const r = lcg(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * scale;
  return a;
}

const q4kBlock = new Uint8Array(fs.readFileSync(path.join(FIX, 'Q4_K.bin'))).subarray(0, 144);
const q4kWant = new Float32Array(new Uint8Array(fs.readFileSync(path.join(FIX, 'Q4_K.f32'))).buffer).subarray(
  0,
  256,
);

const entries: GgufMetadataEntry[] = [
  { key: 'general.architecture', value: 'llama' },
  { key: 'u8', type: GgufValueType.UINT8, value: 255 },
  { key: 'i8', type: GgufValueType.INT8, value: -128 },
  { key: 'u16', type: GgufValueType.UINT16, value: 65535 },
  { key: 'i16', type: GgufValueType.INT16, value: -32768 },
  { key: 'u32', value: 4294967295 },
  { key: 'i32', value: -5 },
  { key: 'f32', value: 0.1 },
  { key: 'f64', type: GgufValueType.FLOAT64, value: 0.1 },
  { key: 'u64.small', type: GgufValueType.UINT64, value: 2 ** 40 },
  { key: 'u64.inferred', value: 2 ** 40 },
  { key: 'u64.big', value: 2n ** 64n - 1n },
  { key: 'i64.min', value: -(2n ** 63n) },
  { key: 'i64.safe', type: GgufValueType.INT64, value: -12345678901 },
  { key: 'bool', value: true },
  { key: 'empty', value: '' },
  { key: 'unicode', value: 'héllo ✓ 日本 🙂' },
  { key: 'arr.str', value: ['a', '', 'ü'] },
  { key: 'arr.f32', value: new Float32Array([1.5, -2, NaN]) },
  { key: 'arr.i32', value: new Int32Array([-7, 8]) },
  { key: 'arr.u8', value: new Uint8Array([1, 2, 3]) },
  { key: 'arr.num', value: [1, 2, 3] },
  { key: 'arr.numneg', value: [-1, 2] },
  { key: 'arr.float', value: [0.5, 1] },
  { key: 'arr.bool', value: [true, false] },
  { key: 'arr.u64', value: new BigUint64Array([1n, 2n ** 64n - 1n]) },
  { key: 'arr.i16', itemType: GgufValueType.INT16, value: [-3, 4] },
  { key: 'arr.nested', value: [['x', 'y'], new Int32Array([1]), [[true]]] },
  { key: 'arr.empty', itemType: GgufValueType.UINT32, value: [] },
];

const expected: [string, GgufValue, number, number?][] = [
  ['general.architecture', 'llama', GgufValueType.STRING],
  ['u8', 255, GgufValueType.UINT8],
  ['i8', -128, GgufValueType.INT8],
  ['u16', 65535, GgufValueType.UINT16],
  ['i16', -32768, GgufValueType.INT16],
  ['u32', 4294967295, GgufValueType.UINT32],
  ['i32', -5, GgufValueType.INT32],
  ['f32', Math.fround(0.1), GgufValueType.FLOAT32],
  ['f64', 0.1, GgufValueType.FLOAT64],
  ['u64.small', 2 ** 40, GgufValueType.UINT64],
  ['u64.inferred', 2 ** 40, GgufValueType.UINT64],
  ['u64.big', 2n ** 64n - 1n, GgufValueType.UINT64],
  ['i64.min', -(2n ** 63n), GgufValueType.INT64],
  ['i64.safe', -12345678901, GgufValueType.INT64],
  ['bool', true, GgufValueType.BOOL],
  ['empty', '', GgufValueType.STRING],
  ['unicode', 'héllo ✓ 日本 🙂', GgufValueType.STRING],
  ['arr.str', ['a', '', 'ü'], GgufValueType.ARRAY, GgufValueType.STRING],
  ['arr.f32', new Float32Array([1.5, -2, NaN]), GgufValueType.ARRAY, GgufValueType.FLOAT32],
  ['arr.i32', new Int32Array([-7, 8]), GgufValueType.ARRAY, GgufValueType.INT32],
  ['arr.u8', new Uint8Array([1, 2, 3]), GgufValueType.ARRAY, GgufValueType.UINT8],
  ['arr.num', new Uint32Array([1, 2, 3]), GgufValueType.ARRAY, GgufValueType.UINT32],
  ['arr.numneg', new Int32Array([-1, 2]), GgufValueType.ARRAY, GgufValueType.INT32],
  ['arr.float', new Float32Array([0.5, 1]), GgufValueType.ARRAY, GgufValueType.FLOAT32],
  ['arr.bool', [true, false], GgufValueType.ARRAY, GgufValueType.BOOL],
  ['arr.u64', new BigUint64Array([1n, 2n ** 64n - 1n]), GgufValueType.ARRAY, GgufValueType.UINT64],
  ['arr.i16', new Int16Array([-3, 4]), GgufValueType.ARRAY, GgufValueType.INT16],
  ['arr.nested', [['x', 'y'], new Int32Array([1]), [[true]]], GgufValueType.ARRAY, GgufValueType.ARRAY],
  ['arr.empty', new Uint32Array(0), GgufValueType.ARRAY, GgufValueType.UINT32],
];

const f32Data = randomF32(8 * 3, 1);
const f16Data = randomF32(16 * 2, 2, 1000);
const bf16Data = randomF32(16, 3, 1e6);
const q8Data = randomF32(64 * 2, 4);
const f4dData = randomF32(32 * 2 * 1 * 3, 5);

function writeRoundTripFile(alignment?: number): string {
  const out = tmpPath(`roundtrip-${alignment ?? 'default'}.gguf`);
  writeGguf(out, {
    metadata: entries,
    alignment,
    tensors: [
      { name: 'f32', dims: [8, 3], type: GgmlType.F32, data: f32Data },
      { name: 'f16', dims: [16, 2], type: GgmlType.F16, data: f16Data },
      { name: 'bf16', dims: [16], type: GgmlType.BF16, data: bf16Data },
      { name: 'q8', dims: [64, 2], type: GgmlType.Q8_0, data: q8Data },
      { name: 'q4k', dims: [256], type: GgmlType.Q4_K, data: q4kBlock },
      { name: 'iq2', dims: [256], type: GgmlType.IQ2_XXS, data: new Uint8Array(66) },
      { name: 'f4d', dims: [32, 2, 1, 3], type: GgmlType.F32, data: f4dData },
    ],
  });
  return out;
}

for (const alignment of [undefined, 64]) {
  test(`writeGguf -> readGguf round trip (alignment ${alignment ?? 'default'})`, async () => {
    const out = writeRoundTripFile(alignment);
    const file = readGguf(out);
    const a = alignment ?? 32;
    assert.equal(file.version, 3);
    assert.equal(file.alignment, a);
    assert.equal(file.dataOffset % a, 0);
    const keys = expected.map((e) => e[0]);
    if (alignment) keys.push('general.alignment');
    assert.deepEqual([...file.metadata.keys()], keys);
    for (const [key, value, type, itemType] of expected) {
      assert.deepEqual(file.metadata.get(key), value, key);
      assert.deepEqual(
        file.metadataTypes.get(key),
        itemType === undefined ? { type } : { type, itemType },
        key,
      );
    }
    if (alignment) assert.equal(ggufNumber(file, 'general.alignment'), alignment);

    for (const t of file.tensors.values()) assert.equal(t.offset % a, 0, `${t.name} aligned`);
    assert.deepEqual(file.tensors.get('f4d')!.dims, [32, 2, 1, 3]);
    assert.deepEqual(readGgufTensorF32(file, 'f32'), f32Data);
    assert.deepEqual(readGgufTensorF32(file, 'f4d'), f4dData);

    const f16 = readGgufTensorF32(file, 'f16');
    f16Data.forEach((x, i) => {
      assert.equal(f16[i], f16ToF32(f32ToF16(x)));
      assert.ok(Math.abs(f16[i] - x) <= Math.abs(x) * 2 ** -11, `f16 ${i}`);
    });
    const bf16 = readGgufTensorF32(file, 'bf16');
    bf16Data.forEach((x, i) => assert.ok(Math.abs(bf16[i] - x) <= Math.abs(x) * 2 ** -8, `bf16 ${i}`));
    const q8 = readGgufTensorF32(file, 'q8');
    assert.deepEqual(q8, dequantize(GgmlType.Q8_0, quantizeQ8_0(q8Data), q8Data.length));
    let amax = 0;
    for (const x of q8Data) amax = Math.max(amax, Math.abs(x));
    // Half a step, plus the error of storing the block scale as a half (2^-11 relative, times 127 steps).
    const bound = (amax / 127) * (0.5 + 127 * 2 ** -11);
    q8Data.forEach((x, i) => assert.ok(Math.abs(q8[i] - x) <= bound, `q8 ${i}`));

    assert.deepEqual(readGgufTensorBytes(file, 'q4k'), q4kBlock);
    assert.deepEqual(readGgufTensorF32(file, 'q4k'), q4kWant);
    assert.throws(
      () => readGgufTensorF32(file, 'iq2'),
      (e: unknown) =>
        e instanceof FormatError && e.field === 'iq2' && /IQ2_XXS cannot be dequantized/.test(e.message),
    );
    await assertMatchesHf(file);
  });
}

test('writeGguf exports a llama.cpp control vector', async () => {
  const out = tmpPath('control.gguf');
  const dirs = [1, 2, 3].map((l) => randomF32(64, l));
  writeGguf(out, {
    metadata: [
      { key: 'general.architecture', value: 'controlvector' },
      { key: 'controlvector.model_hint', value: 'llama' },
      { key: 'controlvector.layer_count', value: 3 },
    ],
    tensors: dirs.map((data, i) => ({ name: `direction.${i + 1}`, dims: [64], type: GgmlType.F32, data })),
  });
  const file = readGguf(out);
  assert.equal(file.metadataTypes.get('controlvector.layer_count')!.type, GgufValueType.UINT32);
  assert.deepEqual([...file.tensors.keys()], ['direction.1', 'direction.2', 'direction.3']);
  assert.deepEqual(readGgufTensorF32(file, 'direction.2'), dirs[1]);
  await assertMatchesHf(file);
});

test('writeGguf replaces an existing file and leaves no temporary file', () => {
  const out = tmpPath('replace.gguf');
  fs.writeFileSync(out, 'old');
  writeGguf(out, { metadata: [{ key: 'a', value: 1 }], tensors: [] });
  const file = readGguf(out);
  assert.equal(file.metadata.get('a'), 1);
  assert.equal(file.tensors.size, 0);
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.includes('.tmp-')),
    [],
  );
});

// ---------------------------------------------------------------------------------------------
// Writer failures

function assertNoStrays(dir: string, allowed: string[]): void {
  assert.deepEqual(fs.readdirSync(dir).sort(), [...allowed].sort());
}

test('writeGguf to an unwritable path fails clearly and leaves nothing behind', () => {
  const dir = tmpPath('unwritable');
  fs.mkdirSync(dir);
  const meta = [{ key: 'a', value: 'b' }];
  const missingDir = path.join(dir, 'no', 'such', 'dir', 'x.gguf');
  assert.throws(
    () => writeGguf(missingDir, { metadata: meta, tensors: [] }),
    (e: unknown) =>
      e instanceof FormatError && e.file === missingDir && /cannot write: ENOENT/.test(e.message),
  );
  // The target is a directory: the temporary file is written completely, then the rename fails.
  const isDir = path.join(dir, 'target.gguf');
  fs.mkdirSync(isDir);
  assert.throws(
    () =>
      writeGguf(isDir, {
        metadata: meta,
        tensors: [{ name: 't', dims: [32], type: GgmlType.F32, data: new Float32Array(32) }],
      }),
    (e: unknown) => e instanceof FormatError && e.file === isDir && /cannot write/.test(e.message),
  );
  // A file where a directory should be.
  fs.writeFileSync(path.join(dir, 'file'), 'x');
  const underFile = path.join(dir, 'file', 'x.gguf');
  assert.throws(() => writeGguf(underFile, { metadata: meta, tensors: [] }), FormatError);
  assertNoStrays(dir, ['target.gguf', 'file']);
  assert.ok(fs.statSync(isDir).isDirectory());
});

test('writeGguf refuses bad input before touching the disk', () => {
  const dir = tmpPath('badinput');
  fs.mkdirSync(dir);
  const out = path.join(dir, 'out.gguf');
  fs.writeFileSync(out, 'precious');
  const t32 = { name: 't', dims: [32], type: GgmlType.F32, data: new Float32Array(32) };
  const cases: [string, Parameters<typeof writeGguf>[1], string, RegExp][] = [
    [
      'u8 out of range',
      { metadata: [{ key: 'k', type: GgufValueType.UINT8, value: 300 }], tensors: [] },
      'k',
      /out of range/,
    ],
    [
      'i32 not an integer',
      { metadata: [{ key: 'k', type: GgufValueType.INT32, value: 1.5 }], tensors: [] },
      'k',
      /integer/,
    ],
    [
      'string typed as bool',
      { metadata: [{ key: 'k', type: GgufValueType.BOOL, value: 'x' }], tensors: [] },
      'k',
      /boolean/,
    ],
    [
      'bad array item',
      { metadata: [{ key: 'k', itemType: GgufValueType.UINT16, value: [1, -1] }], tensors: [] },
      'k',
      /item 1/,
    ],
    [
      'mixed array',
      { metadata: [{ key: 'k', value: [1, 'a'] as unknown as GgufValue }], tensors: [] },
      'k',
      /mixed/,
    ],
    [
      'duplicate key',
      {
        metadata: [
          { key: 'k', value: 1 },
          { key: 'k', value: 2 },
        ],
        tensors: [],
      },
      'k',
      /duplicate/,
    ],
    ['bad alignment', { metadata: [], tensors: [], alignment: 48 }, 'general.alignment', /power of two/],
    ['duplicate tensor', { metadata: [], tensors: [t32, t32] }, 't', /duplicate/],
    ['wrong length', { metadata: [], tensors: [{ ...t32, dims: [64] }] }, 't', /32 values/],
    ['bad dims', { metadata: [], tensors: [{ ...t32, dims: [32, 0] }] }, 't', /positive/],
    ['too many dims', { metadata: [], tensors: [{ ...t32, dims: [32, 1, 1, 1, 1] }] }, 't', /1\.\.4 dims/],
    [
      'partial block',
      { metadata: [], tensors: [{ ...t32, type: GgmlType.Q8_0, dims: [16, 2] }] },
      't',
      /block size 32/,
    ],
    ['no fp32 encoder', { metadata: [], tensors: [{ ...t32, type: GgmlType.Q4_0 }] }, 't', /cannot encode/],
    [
      'raw bytes wrong size',
      { metadata: [], tensors: [{ ...t32, type: GgmlType.Q4_0, data: new Uint8Array(17) }] },
      't',
      /18/,
    ],
    [
      'unknown type',
      { metadata: [], tensors: [{ ...t32, type: 99 as GgmlType }] },
      't',
      /unknown ggml type id 99/,
    ],
    ['long name', { metadata: [], tensors: [{ ...t32, name: 'x'.repeat(64) }] }, 'x'.repeat(64), /63 bytes/],
  ];
  for (const [label, input, field, re] of cases) {
    assert.throws(
      () => writeGguf(out, input),
      (e: unknown) => e instanceof FormatError && e.file === out && e.field === field && re.test(e.message),
      label,
    );
  }
  assertNoStrays(dir, ['out.gguf']);
  assert.equal(fs.readFileSync(out, 'utf8'), 'precious');
});

// ---------------------------------------------------------------------------------------------
// Malformed files

const goodPath = tmpPath('good.gguf');
writeGguf(goodPath, {
  metadata: [
    { key: 'general.architecture', value: 'llama' },
    { key: 'general.description', value: 'd'.repeat(200) },
    { key: 'tokenizer.ggml.tokens', value: ['a', 'b', 'c'] },
    { key: 'flag', value: true },
    { key: 'dup.key.one', value: 1 },
    { key: 'dup.key.two', value: 2 },
  ],
  tensors: [
    { name: 'tensor.a', dims: [32, 2], type: GgmlType.F32, data: randomF32(64, 9) },
    { name: 'tensor.b', dims: [64], type: GgmlType.Q8_0, data: randomF32(64, 10) },
  ],
});
const good = fs.readFileSync(goodPath);

/** Byte offset of the u64 length that precedes the first occurrence of string `s`. */
function stringAt(s: string): number {
  const i = good.indexOf(Buffer.from(s));
  assert.ok(i > 0, s);
  return i - 8;
}
/** Offsets of the fields of a tensor info. */
function tensorInfoAt(name: string) {
  const nameAt = stringAt(name);
  const nDims = nameAt + 8 + name.length;
  const dims = nDims + 4;
  const n = good.readUInt32LE(nDims);
  const type = dims + 8 * n;
  return { nameAt, nDims, dims, type, offset: type + 4 };
}
/** Offset of the value type of metadata key `key`. */
function valueTypeAt(key: string): number {
  return stringAt(key) + 8 + key.length;
}

/** Writes a copy of the good file changed by `edit` (which may also return a shorter buffer). */
function corrupt(name: string, edit: (b: Buffer) => unknown): string {
  const b = Buffer.from(good);
  const out = tmpPath(name);
  const r = edit(b);
  fs.writeFileSync(out, r instanceof Buffer ? r : b);
  return out;
}

function expectFormatError(file: string, field: string | RegExp, re: RegExp): void {
  assert.throws(
    () => readGguf(file),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
      assert.equal(e.file, file);
      if (typeof field === 'string') assert.equal(e.field, field, e.message);
      else assert.match(e.field, field, e.message);
      assert.match(e.message, re);
      assert.ok(e.message.startsWith(`${file}: ${e.field}: `));
      return true;
    },
  );
}

test('the unmodified test file parses', () => {
  const f = readGguf(goodPath);
  assert.equal(f.tensors.size, 2);
  assert.equal(f.fileSize, good.length);
});

test('truncated files name the field where the data ran out', () => {
  const b = tensorInfoAt('tensor.b');
  const parsed = readGguf(goodPath);
  const dataOffset = parsed.dataOffset;
  const bData = parsed.tensors.get('tensor.b')!.offset;
  const cuts: [string, number, string | RegExp, RegExp][] = [
    ['empty file', 0, 'magic', /needs 4 bytes/],
    ['in magic', 3, 'magic', /needs 4 bytes/],
    ['in header', 12, 'tensor_count', /needs 8 bytes/],
    ['in metadata', stringAt('general.description') + 100, 'general.description', /runs past the end/],
    // Inside the second token: past item 0 ('a': length + 1 byte) and the length of item 1.
    [
      'in array',
      valueTypeAt('tokenizer.ggml.tokens') + 4 + 4 + 8 + 9 + 8,
      'tokenizer.ggml.tokens',
      /array of 3 STRING needs at least 24 bytes/,
    ],
    ['in array item', valueTypeAt('tokenizer.ggml.tokens') + 4 + 4 + 8 + 4, 'tokenizer.ggml.tokens', /needs/],
    ['in tensor infos', b.offset + 4, 'tensor.b', /offset needs 8 bytes/],
    ['in tensor data', bData + 30, 'tensor.b', /extends past the end of the file/],
    ['in first tensor data', dataOffset + 100, /^tensor\.[ab]$/, /extends past the end of the file/],
  ];
  for (const [label, at, field, re] of cuts) {
    const file = corrupt(`cut-${label.replace(/ /g, '-')}.gguf`, (x) => x.subarray(0, at));
    expectFormatError(file, field, re);
  }
});

test('headers that lie about sizes are caught before anything is allocated', () => {
  const cases: [string, (b: Buffer) => void, string, RegExp][] = [
    [
      'tensor count',
      (b) => b.writeBigUInt64LE(10n ** 12n, 8),
      'tensor_count',
      /larger than the whole file|cannot fit/,
    ],
    [
      'tensor count 2^63',
      (b) => b.writeBigUInt64LE(2n ** 63n, 8),
      'tensor_count',
      /larger than the whole file/,
    ],
    ['kv count', (b) => b.writeBigUInt64LE(100n, 16), 'kv_count', /100 metadata entries cannot fit/],
    ['kv count huge', (b) => b.writeBigUInt64LE(2n ** 20n, 16), 'kv_count', /larger than the whole file/],
    ['key length', (b) => b.writeBigUInt64LE(2n ** 40n, 24), 'metadata[0].key', /runs past the end/],
    [
      'string length',
      (b) => b.writeBigUInt64LE(100000n, valueTypeAt('general.description') + 4),
      'general.description',
      /length 100000 .* runs past the end/,
    ],
    [
      'array length',
      (b) => b.writeBigUInt64LE(10n ** 9n, valueTypeAt('tokenizer.ggml.tokens') + 8),
      'tokenizer.ggml.tokens',
      /larger than the whole file|needs at least/,
    ],
    [
      'array length (plausible)',
      (b) => b.writeBigUInt64LE(40n, valueTypeAt('tokenizer.ggml.tokens') + 8),
      'tokenizer.ggml.tokens',
      /.+/,
    ],
    [
      'tensor offset',
      (b) => b.writeBigUInt64LE(BigInt(good.length), tensorInfoAt('tensor.b').offset),
      'tensor.b',
      /past the end/,
    ],
    [
      'tensor offset huge',
      (b) => b.writeBigUInt64LE(2n ** 62n, tensorInfoAt('tensor.b').offset),
      'tensor.b',
      /beyond the end/,
    ],
    [
      'tensor dims',
      (b) => b.writeBigUInt64LE(1000n, tensorInfoAt('tensor.a').dims + 8),
      'tensor.a',
      /extends past the end/,
    ],
    [
      'tensor dims huge',
      (b) => b.writeBigUInt64LE(2n ** 60n, tensorInfoAt('tensor.a').dims + 8),
      'tensor.a',
      /absurd|overflow/,
    ],
  ];
  for (const [label, edit, field, re] of cases) {
    expectFormatError(corrupt(`lie-${label.replace(/ /g, '-')}.gguf`, edit), field, re);
  }
});

test('other malformed headers', () => {
  const a = tensorInfoAt('tensor.a');
  const b = tensorInfoAt('tensor.b');
  const cases: [string, (x: Buffer) => void, string | RegExp, RegExp][] = [
    // The bytes as they are in the file, not the little-endian u32 (which reads them backwards).
    ['bad magic', (x) => x.write('GGML', 0), 'magic', /not a GGUF file \(first bytes 47 47 4d 4c "GGML"/],
    ['version 1', (x) => x.writeUInt32LE(1, 4), 'version', /unsupported GGUF version 1/],
    ['version 4', (x) => x.writeUInt32LE(4, 4), 'version', /unsupported GGUF version 4/],
    ['big-endian', (x) => x.writeUInt32BE(3, 4), 'version', /big-endian/],
    ['unknown quant type', (x) => x.writeUInt32LE(99, b.type), 'tensor.b', /unknown ggml type id 99/],
    ['retired quant type', (x) => x.writeUInt32LE(4, b.type), 'tensor.b', /unknown ggml type id 4/],
    [
      'unaligned offset',
      (x) => x.writeBigUInt64LE(x.readBigUInt64LE(b.offset) + 4n, b.offset),
      'tensor.b',
      /alignment 32/,
    ],
    ['overlapping tensors', (x) => x.writeBigUInt64LE(0n, b.offset), 'tensor.b', /overlaps tensor tensor.a/],
    ['zero dims', (x) => x.writeUInt32LE(0, a.nDims), 'tensor.a', /n_dims 0/],
    ['five dims', (x) => x.writeUInt32LE(5, a.nDims), 'tensor.a', /n_dims 5/],
    [
      'partial block',
      (x) => x.writeBigUInt64LE(48n, b.dims),
      'tensor.b',
      /not a multiple of the Q8_0 block size/,
    ],
    [
      'unknown value type',
      (x) => x.writeUInt32LE(77, valueTypeAt('general.description')),
      'general.description',
      /unknown value type id 77/,
    ],
    [
      'bad array item type',
      (x) => x.writeUInt32LE(13, valueTypeAt('tokenizer.ggml.tokens') + 4),
      'tokenizer.ggml.tokens',
      /item type id 13/,
    ],
    ['bool 2', (x) => x.writeUInt8(2, valueTypeAt('flag') + 4), 'flag', /bool stored as 2/],
    [
      'duplicate key',
      (x) => x.write('one', stringAt('dup.key.two') + 8 + 8),
      'dup.key.one',
      /duplicate metadata key/,
    ],
    ['duplicate tensor', (x) => x.write('a', b.nameAt + 8 + 7), 'tensor.a', /duplicate tensor name/],
    ['empty key', (x) => x.writeBigUInt64LE(0n, 24), /^metadata\[0\]\.key$/, /.+/],
  ];
  for (const [label, edit, field, re] of cases) {
    expectFormatError(corrupt(`bad-${label.replace(/ /g, '-')}.gguf`, edit), field, re);
  }
});

test('general.alignment must be a power-of-two UINT32', () => {
  const out = tmpPath('align64.gguf');
  writeGguf(out, { metadata: [], tensors: [], alignment: 64 });
  const buf = fs.readFileSync(out);
  const at = buf.indexOf(Buffer.from('general.alignment')) + 'general.alignment'.length;
  const bad = Buffer.from(buf);
  bad.writeUInt32LE(48, at + 4);
  fs.writeFileSync(out, bad);
  expectFormatError(out, 'general.alignment', /not a power of two/);
  bad.writeUInt32LE(GgufValueType.INT32, at);
  fs.writeFileSync(out, bad);
  expectFormatError(out, 'general.alignment', /must be a UINT32/);
});

test('GGUF v2 files are read like v3', () => {
  const f = readGguf(corrupt('v2.gguf', (x) => x.writeUInt32LE(2, 4)));
  assert.equal(f.version, 2);
  assert.deepEqual(readGgufTensorF32(f, 'tensor.a'), readGgufTensorF32(readGguf(goodPath), 'tensor.a'));
});

test('missing file, a directory, and reading after the file changed', () => {
  const missing = path.join(tmp, 'does-not-exist.gguf');
  assert.throws(
    () => readGguf(missing),
    (e: unknown) => e instanceof FormatError && /cannot open/.test(e.message),
  );
  assert.throws(
    () => readGguf(tmp),
    (e: unknown) => e instanceof FormatError && e.file === tmp && /EISDIR/.test(e.message),
  );
  const copy = tmpPath('shrinks.gguf');
  fs.copyFileSync(goodPath, copy);
  const file = readGguf(copy);
  fs.truncateSync(copy, good.length - 10);
  assert.throws(
    () => readGgufTensorF32(file, 'tensor.b'),
    (e: unknown) => e instanceof FormatError && e.field === 'tensor.b' && /changed/.test(e.message),
  );
});

test('malformed-file tests left no stray files', () => {
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.includes('.tmp-')),
    [],
  );
});
