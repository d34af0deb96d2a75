/**
 * GGUF v2/v3 (little-endian) reader and v3 writer.
 *
 * The reader walks the header through a file descriptor with a small buffer, so a 250 MB model
 * with a 262144-entry vocabulary costs a few MB of memory, and it checks every size against the
 * file size before trusting it: a corrupt or hostile header fails with a FormatError naming the
 * file and the key or tensor at fault instead of allocating gigabytes or reading garbage.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { FormatError } from './errors.js';
import { requireRegularFile, syncDirectory } from './files.js';
import {
  GgmlType,
  canDequantize,
  dequantize,
  ggmlTypeName,
  ggmlTypeTraits,
  isGgmlType,
  quantize,
} from './quant.js';

export {
  GgmlType,
  canDequantize,
  ggmlByteLength,
  ggmlTypeName,
  ggmlTypeSize,
  ggmlBlockSize,
  ggmlTypeTraits,
  isGgmlType,
} from './quant.js';

/** GGUF metadata value type ids. */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueType = (typeof GgufValueType)[keyof typeof GgufValueType];

const VALUE_TYPE_NAMES = Object.keys(GgufValueType);

/** Name of a metadata value type id ("UINT32"), or "type#<id>" when unknown. */
export function ggufValueTypeName(type: number): string {
  return VALUE_TYPE_NAMES[type] ?? `type#${type}`;
}

/** Numeric arrays come back as typed arrays: a 262144-entry score table is 1 MB, not 8 MB of doubles. */
export type GgufNumericArray =
  Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array | Float64Array;

/**
 * A metadata value. Scalars: string, boolean, number (u64/i64 too when the value is a safe
 * integer, bigint otherwise). Arrays: a typed array for numeric items (BigUint64Array /
 * BigInt64Array for u64 / i64 items), string[] or boolean[], GgufValue[] for arrays of arrays.
 */
export type GgufValue =
  | string
  | number
  | bigint
  | boolean
  | GgufNumericArray
  | BigUint64Array
  | BigInt64Array
  | string[]
  | boolean[]
  | GgufValue[];

/** The stored type of a metadata value; `itemType` is set for arrays. */
export interface GgufTypeInfo {
  type: GgufValueType;
  itemType?: GgufValueType;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] = ne0, the contiguous one (PyTorch shape is dims reversed). */
  dims: number[];
  type: GgmlType;
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
  elementCount: number;
}

export interface GgufFile {
  path: string;
  version: number;
  metadata: Map<string, GgufValue>;
  /** Stored type of each metadata key, so a file can be rewritten with the same types. */
  metadataTypes: Map<string, GgufTypeInfo>;
  /** In file order. */
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  /** Absolute offset of the tensor data section. */
  dataOffset: number;
  fileSize: number;
}

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32

/** The first four bytes, in file order, as hex and (when printable) as text: `47 47 4d 4c "GGML"`. */
function describeMagic(magic: number): string {
  const bytes = [0, 8, 16, 24].map((shift) => (magic >>> shift) & 0xff);
  const hex = bytes.map((b) => b.toString(16).padStart(2, '0')).join(' ');
  const printable = bytes.every((b) => b >= 0x20 && b < 0x7f);
  return printable ? `${hex} ${JSON.stringify(String.fromCharCode(...bytes))}` : hex;
}
const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4;
const MAX_NESTING = 16;
const CHUNK = 1 << 20;

// Smallest possible encodings, used to reject counts that cannot fit in what is left of the file.
const MIN_KV_BYTES = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8;

const SCALAR_SIZE: Record<number, number> = {
  [GgufValueType.UINT8]: 1,
  [GgufValueType.INT8]: 1,
  [GgufValueType.UINT16]: 2,
  [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4,
  [GgufValueType.INT32]: 4,
  [GgufValueType.FLOAT32]: 4,
  [GgufValueType.BOOL]: 1,
  [GgufValueType.UINT64]: 8,
  [GgufValueType.INT64]: 8,
  [GgufValueType.FLOAT64]: 8,
};

function minEncodedSize(type: number): number {
  if (type === GgufValueType.STRING) return 8;
  if (type === GgufValueType.ARRAY) return 12;
  return SCALAR_SIZE[type];
}

function isValueType(t: number): t is GgufValueType {
  return Number.isInteger(t) && t >= 0 && t <= 12;
}

function requireLittleEndianHost(file: string): void {
  if (os.endianness() !== 'LE') throw new FormatError(file, '', 'GGUF I/O needs a little-endian host');
}

// ---------------------------------------------------------------------------------------------
// Reading

function readFully(fd: number, file: string, field: string, target: Uint8Array, position: number): void {
  let done = 0;
  while (done < target.length) {
    // readSync caps a single call at 2 GiB.
    const want = Math.min(target.length - done, 1 << 30);
    const n = fs.readSync(fd, target, done, want, position + done);
    if (n === 0) {
      throw new FormatError(
        file,
        field,
        `file ended at byte ${position + done} while reading (did it shrink?)`,
      );
    }
    done += n;
  }
}

/** Sequential reader over the header with a 1 MiB window; every read is checked against the file size. */
class Cursor {
  pos = 0;
  private buf = Buffer.allocUnsafe(CHUNK);
  private bufStart = 0;
  private bufEnd = 0;

  constructor(
    private readonly fd: number,
    readonly file: string,
    readonly size: number,
  ) {}

  fail(field: string, problem: string): never {
    throw new FormatError(this.file, field, problem);
  }

  remaining(): number {
    return this.size - this.pos;
  }

  /** Makes `n` bytes at `pos` available and returns their index in `buf`; advances `pos`. */
  private take(n: number, field: string, what: string): number {
    if (n > this.size - this.pos) {
      this.fail(
        field,
        `${what} needs ${n} bytes at offset ${this.pos} but the file ends at ${this.size} ` +
          '(truncated, or the header lies about sizes)',
      );
    }
    if (this.pos < this.bufStart || this.pos + n > this.bufEnd) {
      if (n > this.buf.length) this.buf = Buffer.allocUnsafe(n);
      const len = Math.min(Math.max(n, CHUNK), this.buf.length, this.size - this.pos);
      readFully(this.fd, this.file, field, this.buf.subarray(0, len), this.pos);
      this.bufStart = this.pos;
      this.bufEnd = this.pos + len;
    }
    const i = this.pos - this.bufStart;
    this.pos += n;
    return i;
  }

  u8(field: string, what: string): number {
    return this.buf[this.take(1, field, what)];
  }
  i8(field: string, what: string): number {
    return this.buf.readInt8(this.take(1, field, what));
  }
  u16(field: string, what: string): number {
    return this.buf.readUInt16LE(this.take(2, field, what));
  }
  i16(field: string, what: string): number {
    return this.buf.readInt16LE(this.take(2, field, what));
  }
  u32(field: string, what: string): number {
    return this.buf.readUInt32LE(this.take(4, field, what));
  }
  i32(field: string, what: string): number {
    return this.buf.readInt32LE(this.take(4, field, what));
  }
  f32(field: string, what: string): number {
    return this.buf.readFloatLE(this.take(4, field, what));
  }
  f64(field: string, what: string): number {
    return this.buf.readDoubleLE(this.take(8, field, what));
  }
  u64(field: string, what: string): number | bigint {
    const i = this.take(8, field, what);
    const v = this.buf.readUInt32LE(i + 4) * 4294967296 + this.buf.readUInt32LE(i);
    return Number.isSafeInteger(v) ? v : this.buf.readBigUInt64LE(i);
  }
  i64(field: string, what: string): number | bigint {
    const i = this.take(8, field, what);
    const v = this.buf.readInt32LE(i + 4) * 4294967296 + this.buf.readUInt32LE(i);
    return Number.isSafeInteger(v) ? v : this.buf.readBigInt64LE(i);
  }

  /** A u64 used as a size, count or offset: must be a safe integer no larger than the file. */
  size64(field: string, what: string): number {
    const v = this.u64(field, what);
    if (typeof v === 'bigint' || v > this.size) {
      this.fail(field, `${what} ${v} is larger than the whole file (${this.size} bytes)`);
    }
    return v;
  }

  string(field: string, what: string): string {
    const len = this.u64(field, `${what} length`);
    if (typeof len === 'bigint' || len > this.remaining()) {
      this.fail(
        field,
        `${what} length ${len} at offset ${this.pos - 8} runs past the end of the file (${this.size} bytes)`,
      );
    }
    if (len === 0) return '';
    const i = this.take(len, field, what);
    return this.buf.toString('utf8', i, i + len);
  }

  /** Fills `target` from the file at `pos`, bypassing the window when it is large. */
  bytes(target: Uint8Array, field: string, what: string): void {
    const n = target.length;
    if (n <= CHUNK) {
      const i = this.take(n, field, what);
      target.set(this.buf.subarray(i, i + n));
      return;
    }
    if (n > this.remaining()) this.take(n, field, what);
    readFully(this.fd, this.file, field, target, this.pos);
    this.pos += n;
  }
}

type ArrayCtor = new (buffer: ArrayBuffer) => GgufNumericArray | BigUint64Array | BigInt64Array;

const TYPED_ARRAY_OF: Record<number, ArrayCtor> = {
  [GgufValueType.UINT8]: Uint8Array,
  [GgufValueType.INT8]: Int8Array,
  [GgufValueType.UINT16]: Uint16Array,
  [GgufValueType.INT16]: Int16Array,
  [GgufValueType.UINT32]: Uint32Array,
  [GgufValueType.INT32]: Int32Array,
  [GgufValueType.FLOAT32]: Float32Array,
  [GgufValueType.FLOAT64]: Float64Array,
  [GgufValueType.UINT64]: BigUint64Array,
  [GgufValueType.INT64]: BigInt64Array,
};

function readScalar(c: Cursor, type: number, key: string, what: string): GgufValue {
  switch (type) {
    case GgufValueType.UINT8:
      return c.u8(key, what);
    case GgufValueType.INT8:
      return c.i8(key, what);
    case GgufValueType.UINT16:
      return c.u16(key, what);
    case GgufValueType.INT16:
      return c.i16(key, what);
    case GgufValueType.UINT32:
      return c.u32(key, what);
    case GgufValueType.INT32:
      return c.i32(key, what);
    case GgufValueType.FLOAT32:
      return c.f32(key, what);
    case GgufValueType.FLOAT64:
      return c.f64(key, what);
    case GgufValueType.UINT64:
      return c.u64(key, what);
    case GgufValueType.INT64:
      return c.i64(key, what);
    case GgufValueType.BOOL: {
      const b = c.u8(key, what);
      if (b > 1) c.fail(key, `${what} is a bool stored as ${b} (must be 0 or 1)`);
      return b === 1;
    }
    case GgufValueType.STRING:
      return c.string(key, what);
    default:
      return c.fail(key, `${what} has unknown value type id ${type}`);
  }
}

/** Reads an array body (item type, count, items); returns the value and its item type. */
function readArray(c: Cursor, key: string, depth: number): { value: GgufValue; itemType: GgufValueType } {
  if (depth > MAX_NESTING) c.fail(key, `arrays nested more than ${MAX_NESTING} deep`);
  const itemType = c.u32(key, 'array item type');
  if (!isValueType(itemType)) c.fail(key, `array has unknown item type id ${itemType}`);
  const n = c.size64(key, 'array length');
  const minBytes = n * minEncodedSize(itemType);
  if (minBytes > c.remaining()) {
    c.fail(
      key,
      `array of ${n} ${ggufValueTypeName(itemType)} needs at least ${minBytes} bytes but only ` +
        `${c.remaining()} remain in the file (truncated, or the header lies about sizes)`,
    );
  }
  const Ctor = TYPED_ARRAY_OF[itemType];
  if (Ctor) {
    const ab = new ArrayBuffer(n * SCALAR_SIZE[itemType]);
    c.bytes(new Uint8Array(ab), key, `array of ${n} ${ggufValueTypeName(itemType)}`);
    return { value: new Ctor(ab), itemType };
  }
  if (itemType === GgufValueType.BOOL) {
    const raw = new Uint8Array(n);
    c.bytes(raw, key, `array of ${n} BOOL`);
    const out: boolean[] = new Array<boolean>(n);
    for (let i = 0; i < n; i++) {
      if (raw[i] > 1) c.fail(key, `item ${i} is a bool stored as ${raw[i]} (must be 0 or 1)`);
      out[i] = raw[i] === 1;
    }
    return { value: out, itemType };
  }
  if (itemType === GgufValueType.STRING) {
    const out: string[] = new Array<string>(n);
    for (let i = 0; i < n; i++) out[i] = c.string(key, `item ${i}`);
    return { value: out, itemType };
  }
  const out: GgufValue[] = new Array<GgufValue>(n);
  for (let i = 0; i < n; i++) out[i] = readArray(c, key, depth + 1).value;
  return { value: out, itemType };
}

function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

/**
 * Parses the header of a GGUF v2/v3 file (metadata and tensor table; tensor data stays on disk).
 * Throws FormatError naming the file and the key or tensor for anything malformed.
 */
export function readGguf(path: string): GgufFile {
  requireLittleEndianHost(path);
  requireRegularFile(path);
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new FormatError(path, '', `cannot open: ${(e as Error).message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    return parse(new Cursor(fd, path, size));
  } catch (e) {
    throw asFormatError(e, path, '', 'cannot read');
  } finally {
    fs.closeSync(fd);
  }
}

/** Keeps FormatErrors; wraps I/O errors (EISDIR, EIO, ...) so callers see one error type. */
function asFormatError(e: unknown, file: string, field: string, doing: string): FormatError {
  if (e instanceof FormatError) return e;
  const err = new FormatError(file, field, `${doing}: ${(e as Error).message}`);
  err.cause = e;
  return err;
}

function parse(c: Cursor): GgufFile {
  const magic = c.u32('magic', 'magic');
  if (magic !== GGUF_MAGIC) {
    c.fail('magic', `not a GGUF file (first bytes ${describeMagic(magic)}, expected "GGUF")`);
  }
  const version = c.u32('version', 'version');
  if (version !== 2 && version !== 3) {
    const swapped = Buffer.alloc(4);
    swapped.writeUInt32BE(version);
    const be = swapped.readUInt32LE();
    c.fail(
      'version',
      be === 2 || be === 3
        ? `big-endian GGUF v${be} is not supported`
        : `unsupported GGUF version ${version} (supported: 2, 3)`,
    );
  }
  const tensorCount = c.size64('tensor_count', 'tensor count');
  const kvCount = c.size64('kv_count', 'metadata count');
  if (tensorCount * MIN_TENSOR_INFO_BYTES > c.remaining()) {
    c.fail('tensor_count', `${tensorCount} tensors cannot fit in a file of ${c.size} bytes`);
  }
  if (kvCount * MIN_KV_BYTES > c.remaining()) {
    c.fail('kv_count', `${kvCount} metadata entries cannot fit in a file of ${c.size} bytes`);
  }

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, GgufTypeInfo>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.string(`metadata[${i}].key`, 'key');
    const field = key || `metadata[${i}].key`;
    if (!key) c.fail(field, 'empty metadata key');
    if (metadata.has(key)) c.fail(key, 'duplicate metadata key');
    const type = c.u32(key, 'value type');
    if (!isValueType(type)) c.fail(key, `unknown value type id ${type}`);
    if (type === GgufValueType.ARRAY) {
      const { value, itemType } = readArray(c, key, 1);
      metadata.set(key, value);
      metadataTypes.set(key, { type, itemType });
    } else {
      metadata.set(key, readScalar(c, type, key, 'value'));
      metadataTypes.set(key, { type });
    }
  }

  let alignment = DEFAULT_ALIGNMENT;
  if (metadata.has('general.alignment')) {
    const a = metadata.get('general.alignment');
    if (metadataTypes.get('general.alignment')?.type !== GgufValueType.UINT32) {
      c.fail('general.alignment', 'must be a UINT32');
    }
    if (typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      c.fail('general.alignment', `alignment ${a} is not a power of two`);
    }
    alignment = a;
  }

  if (tensorCount * MIN_TENSOR_INFO_BYTES > c.remaining()) {
    c.fail(
      'tensor_count',
      `${tensorCount} tensors cannot fit in the ${c.remaining()} bytes after the metadata`,
    );
  }
  interface RawInfo {
    name: string;
    dims: number[];
    type: GgmlType;
    rel: number;
  }
  const raw: RawInfo[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string(`tensor_info[${i}].name`, 'tensor name');
    if (!name) c.fail(`tensor_info[${i}].name`, 'empty tensor name');
    if (seen.has(name)) c.fail(name, 'duplicate tensor name');
    seen.add(name);
    const nDims = c.u32(name, 'n_dims');
    if (nDims < 1 || nDims > MAX_DIMS) c.fail(name, `n_dims ${nDims} is outside 1..${MAX_DIMS}`);
    const dims: number[] = [];
    for (let j = 0; j < nDims; j++) {
      const d = c.u64(name, `dims[${j}]`);
      if (typeof d === 'bigint' || d > Number.MAX_SAFE_INTEGER) c.fail(name, `dims[${j}] = ${d} is absurd`);
      dims.push(d);
    }
    const type = c.u32(name, 'type');
    if (!isGgmlType(type)) c.fail(name, `unknown ggml type id ${type}`);
    const rel = c.u64(name, 'offset');
    if (typeof rel === 'bigint' || rel > c.size) {
      c.fail(name, `data offset ${rel} is beyond the end of the file (${c.size} bytes)`);
    }
    raw.push({ name, dims, type, rel });
  }

  const dataOffset = alignUp(c.pos, alignment);
  const tensors = new Map<string, GgufTensorInfo>();
  for (const { name, dims, type, rel } of raw) {
    const { blockSize, typeSize, name: typeName } = ggmlTypeTraits(type);
    let elementCount = 1;
    for (const d of dims) elementCount *= d;
    if (!Number.isSafeInteger(elementCount)) c.fail(name, `dims ${dims.join('x')} overflow`);
    if (dims[0] % blockSize !== 0) {
      c.fail(name, `dims[0] = ${dims[0]} is not a multiple of the ${typeName} block size ${blockSize}`);
    }
    const byteLength = (elementCount / blockSize) * typeSize;
    if (rel % alignment !== 0)
      c.fail(name, `data offset ${rel} is not a multiple of the alignment ${alignment}`);
    const offset = dataOffset + rel;
    if (offset + byteLength > c.size) {
      c.fail(
        name,
        `data [${offset}, ${offset + byteLength}) of ${dims.join('x')} ${typeName} extends past the end of the ` +
          `file (${c.size} bytes): truncated, or the header lies about sizes`,
      );
    }
    tensors.set(name, { name, dims, type, offset, byteLength, elementCount });
  }
  const byOffset = [...tensors.values()].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1];
    const cur = byOffset[i];
    if (cur.offset < prev.offset + prev.byteLength) {
      c.fail(
        cur.name,
        `data at ${cur.offset} overlaps tensor ${prev.name} [${prev.offset}, ${prev.offset + prev.byteLength})`,
      );
    }
  }

  return { path: c.file, version, metadata, metadataTypes, tensors, alignment, dataOffset, fileSize: c.size };
}

// ---------------------------------------------------------------------------------------------
// Typed metadata access

function typeDesc(file: GgufFile, key: string): string {
  const t = file.metadataTypes.get(key);
  if (!t) return 'nothing';
  return t.itemType === undefined ? ggufValueTypeName(t.type) : `ARRAY of ${ggufValueTypeName(t.itemType)}`;
}

/** The string at `key`; FormatError naming the key when missing or not a string. */
export function ggufString(file: GgufFile, key: string): string {
  const v = ggufOptionalString(file, key);
  if (v === undefined) throw new FormatError(file.path, key, 'missing (expected a string)');
  return v;
}

/** The string at `key`, or undefined when absent; FormatError when present with another type. */
export function ggufOptionalString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string')
    throw new FormatError(file.path, key, `expected a string, found ${typeDesc(file, key)}`);
  return v;
}

/** The number at `key` (any numeric scalar type); FormatError naming the key when missing or not numeric. */
export function ggufNumber(file: GgufFile, key: string): number {
  const v = ggufOptionalNumber(file, key);
  if (v === undefined) throw new FormatError(file.path, key, 'missing (expected a number)');
  return v;
}

/** The number at `key`, or undefined when absent; FormatError when present with another type. */
export function ggufOptionalNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v === 'bigint') throw new FormatError(file.path, key, `value ${v} does not fit in a JS number`);
  if (typeof v !== 'number')
    throw new FormatError(file.path, key, `expected a number, found ${typeDesc(file, key)}`);
  return v;
}

/** The boolean at `key`; FormatError naming the key when missing or not a BOOL. */
export function ggufBoolean(file: GgufFile, key: string): boolean {
  const v = ggufOptionalBoolean(file, key);
  if (v === undefined) throw new FormatError(file.path, key, 'missing (expected a bool)');
  return v;
}

/** The boolean at `key`, or undefined when absent; FormatError when present with another type. */
export function ggufOptionalBoolean(file: GgufFile, key: string): boolean | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean')
    throw new FormatError(file.path, key, `expected a bool, found ${typeDesc(file, key)}`);
  return v;
}

/** The string array at `key`; FormatError naming the key when missing or of another type. */
export function ggufStringArray(file: GgufFile, key: string): string[] {
  const v = ggufOptionalStringArray(file, key);
  if (v === undefined) throw new FormatError(file.path, key, 'missing (expected an array of strings)');
  return v;
}

/** The string array at `key`, or undefined when absent. */
export function ggufOptionalStringArray(file: GgufFile, key: string): string[] | undefined {
  if (!file.metadata.has(key)) return undefined;
  const t = file.metadataTypes.get(key);
  if (t?.itemType !== GgufValueType.STRING) {
    throw new FormatError(file.path, key, `expected an array of strings, found ${typeDesc(file, key)}`);
  }
  return file.metadata.get(key) as string[];
}

/** The numeric array at `key` (any 8-32 bit integer or float item type); FormatError when missing or not numeric. */
export function ggufNumberArray(file: GgufFile, key: string): GgufNumericArray {
  const v = ggufOptionalNumberArray(file, key);
  if (v === undefined) throw new FormatError(file.path, key, 'missing (expected an array of numbers)');
  return v;
}

/** The numeric array at `key`, or undefined when absent. */
export function ggufOptionalNumberArray(file: GgufFile, key: string): GgufNumericArray | undefined {
  const v = file.metadata.get(key);
  if (v === undefined) return undefined;
  if (!ArrayBuffer.isView(v) || v instanceof BigUint64Array || v instanceof BigInt64Array) {
    throw new FormatError(file.path, key, `expected an array of numbers, found ${typeDesc(file, key)}`);
  }
  return v as GgufNumericArray;
}

// ---------------------------------------------------------------------------------------------
// Tensor data

function tensorInfo(file: GgufFile, name: string): GgufTensorInfo {
  const t = file.tensors.get(name);
  if (!t) throw new FormatError(file.path, name, 'no such tensor');
  return t;
}

/** The raw stored bytes of a tensor. */
export function readGgufTensorBytes(file: GgufFile, name: string): Uint8Array {
  const t = tensorInfo(file, name);
  requireRegularFile(file.path, name);
  let fd: number;
  try {
    fd = fs.openSync(file.path, 'r');
  } catch (e) {
    throw new FormatError(file.path, name, `cannot open: ${(e as Error).message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size !== file.fileSize) {
      throw new FormatError(
        file.path,
        name,
        `file size changed from ${file.fileSize} to ${size} since it was parsed`,
      );
    }
    const out = new Uint8Array(t.byteLength);
    readFully(fd, file.path, name, out, t.offset);
    return out;
  } catch (e) {
    throw asFormatError(e, file.path, name, 'cannot read');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A tensor dequantized to fp32, ne0 contiguous: the memory layout of a PyTorch tensor of shape
 * dims reversed.
 */
export function readGgufTensorF32(file: GgufFile, name: string): Float32Array {
  const t = tensorInfo(file, name);
  if (!canDequantize(t.type)) {
    throw new FormatError(
      file.path,
      name,
      `tensors of type ${ggmlTypeName(t.type)} cannot be dequantized yet`,
    );
  }
  return dequantize(t.type, readGgufTensorBytes(file, name), t.elementCount);
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * One metadata entry to write. When `type` is omitted it is inferred from `value`:
 * string → STRING; boolean → BOOL; bigint → UINT64 (INT64 if negative);
 * number → UINT32 for integers in [0, 2^32), INT32 for negative integers down to -2^31, UINT64 /
 * INT64 for other safe integers, FLOAT32 for everything else (give FLOAT64 to keep a double);
 * typed arrays → ARRAY of their element type; string[] → ARRAY of STRING; boolean[] → ARRAY of
 * BOOL; number[] → ARRAY of the narrowest of UINT32 / INT32 / INT64 holding every item, else
 * FLOAT32; an empty plain array → ARRAY of STRING; nested arrays are inferred item by item.
 * For arrays, `itemType` alone may be given.
 */
export interface GgufMetadataEntry {
  key: string;
  type?: GgufValueType;
  itemType?: GgufValueType;
  value: GgufValue;
}

/**
 * A tensor to write. `data` as a Float32Array holds dims-product values and is converted to
 * `type` (F32, F16, BF16 or Q8_0); as a Uint8Array it is the already encoded bytes of any type.
 */
export interface GgufTensorInput {
  name: string;
  /** ggml order, dims[0] contiguous. */
  dims: readonly number[];
  type: GgmlType;
  data: Float32Array | Uint8Array;
}

export interface GgufWriteInput {
  metadata: readonly GgufMetadataEntry[];
  tensors: readonly GgufTensorInput[];
  /** Data alignment (power of two, default 32); written as general.alignment when not 32. */
  alignment?: number;
}

/** Metadata entries of a parsed file with their stored types, ready to pass back to writeGguf. */
export function ggufMetadataEntries(file: GgufFile): GgufMetadataEntry[] {
  const out: GgufMetadataEntry[] = [];
  for (const [key, value] of file.metadata) {
    const t = file.metadataTypes.get(key);
    out.push({ key, value, type: t?.type, itemType: t?.itemType });
  }
  return out;
}

/** Growable little-endian byte sink for the header. */
class Sink {
  private chunks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(1 << 16);
  private at = 0;
  length = 0;

  private room(n: number): void {
    if (this.at + n <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.at));
    this.cur = Buffer.allocUnsafe(Math.max(1 << 16, n));
    this.at = 0;
  }
  u8(v: number): void {
    this.room(1);
    this.cur[this.at++] = v;
    this.length++;
  }
  fixed(n: number, write: (b: Buffer, at: number) => void): void {
    this.room(n);
    write(this.cur, this.at);
    this.at += n;
    this.length += n;
  }
  u32(v: number): void {
    this.fixed(4, (b, at) => b.writeUInt32LE(v, at));
  }
  u64(v: number | bigint): void {
    this.fixed(8, (b, at) => b.writeBigUInt64LE(BigInt(v), at));
  }
  raw(bytes: Uint8Array): void {
    this.room(bytes.length);
    this.cur.set(bytes, this.at);
    this.at += bytes.length;
    this.length += bytes.length;
  }
  string(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u64(n);
    this.room(n);
    this.cur.write(s, this.at, n, 'utf8');
    this.at += n;
    this.length += n;
  }
  toBuffer(): Buffer {
    this.chunks.push(this.cur.subarray(0, this.at));
    const out = Buffer.concat(this.chunks);
    this.chunks = [];
    this.at = 0;
    return out;
  }
}

const TYPE_OF_TYPED_ARRAY: [ArrayCtor, GgufValueType][] = [
  [Uint8Array, GgufValueType.UINT8],
  [Int8Array, GgufValueType.INT8],
  [Uint16Array, GgufValueType.UINT16],
  [Int16Array, GgufValueType.INT16],
  [Uint32Array, GgufValueType.UINT32],
  [Int32Array, GgufValueType.INT32],
  [Float32Array, GgufValueType.FLOAT32],
  [Float64Array, GgufValueType.FLOAT64],
  [BigUint64Array, GgufValueType.UINT64],
  [BigInt64Array, GgufValueType.INT64],
];

function typedArrayType(v: unknown): GgufValueType | undefined {
  for (const [Ctor, t] of TYPE_OF_TYPED_ARRAY) if (v instanceof Ctor) return t;
  return undefined;
}

function inferScalar(v: GgufValue): GgufValueType | undefined {
  if (typeof v === 'string') return GgufValueType.STRING;
  if (typeof v === 'boolean') return GgufValueType.BOOL;
  if (typeof v === 'bigint') return v < 0n ? GgufValueType.INT64 : GgufValueType.UINT64;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) return GgufValueType.FLOAT32;
    if (v >= 0) return v <= 0xffffffff ? GgufValueType.UINT32 : GgufValueType.UINT64;
    return v >= -0x80000000 ? GgufValueType.INT32 : GgufValueType.INT64;
  }
  return undefined;
}

function inferItemType(v: readonly GgufValue[] | ArrayBufferView): GgufValueType | undefined {
  const typed = typedArrayType(v);
  if (typed !== undefined) return typed;
  const items = v as readonly GgufValue[];
  if (items.length === 0) return GgufValueType.STRING;
  const first = items[0];
  if (Array.isArray(first) || ArrayBuffer.isView(first)) return GgufValueType.ARRAY;
  if (typeof first === 'number') {
    let allInt = true;
    let lo = 0;
    let hi = 0;
    for (const x of items) {
      if (typeof x !== 'number') return undefined;
      if (!Number.isSafeInteger(x)) allInt = false;
      else {
        lo = Math.min(lo, x);
        hi = Math.max(hi, x);
      }
    }
    if (!allInt) return GgufValueType.FLOAT32;
    if (lo >= 0 && hi <= 0xffffffff) return GgufValueType.UINT32;
    if (lo >= -0x80000000 && hi <= 0x7fffffff) return GgufValueType.INT32;
    return GgufValueType.INT64;
  }
  return inferScalar(first);
}

const INT_RANGE: Record<number, [bigint, bigint]> = {
  [GgufValueType.UINT8]: [0n, 0xffn],
  [GgufValueType.INT8]: [-0x80n, 0x7fn],
  [GgufValueType.UINT16]: [0n, 0xffffn],
  [GgufValueType.INT16]: [-0x8000n, 0x7fffn],
  [GgufValueType.UINT32]: [0n, 0xffffffffn],
  [GgufValueType.INT32]: [-0x80000000n, 0x7fffffffn],
  [GgufValueType.UINT64]: [0n, 0xffffffffffffffffn],
  [GgufValueType.INT64]: [-0x8000000000000000n, 0x7fffffffffffffffn],
};

class Encoder {
  constructor(
    private readonly path: string,
    private readonly sink: Sink,
  ) {}

  fail(field: string, problem: string): never {
    throw new FormatError(this.path, field, problem);
  }

  scalar(type: GgufValueType, v: GgufValue, key: string, what: string): void {
    const s = this.sink;
    const bad = (expected: string): never =>
      this.fail(key, `${what} must be ${expected} for ${ggufValueTypeName(type)}, got ${describe(v)}`);
    switch (type) {
      case GgufValueType.STRING:
        if (typeof v !== 'string') bad('a string');
        s.string(v as string);
        return;
      case GgufValueType.BOOL:
        if (typeof v !== 'boolean') bad('a boolean');
        s.u8(v ? 1 : 0);
        return;
      case GgufValueType.FLOAT32:
      case GgufValueType.FLOAT64:
        if (typeof v !== 'number') bad('a number');
        if (type === GgufValueType.FLOAT32) s.fixed(4, (b, at) => b.writeFloatLE(v as number, at));
        else s.fixed(8, (b, at) => b.writeDoubleLE(v as number, at));
        return;
      default: {
        const range = INT_RANGE[type];
        if (!range) this.fail(key, `${what} has unsupported value type ${ggufValueTypeName(type)}`);
        if (!(typeof v === 'bigint' || (typeof v === 'number' && Number.isSafeInteger(v)))) {
          bad('a safe integer or bigint');
        }
        const big = BigInt(v as number | bigint);
        if (big < range[0] || big > range[1])
          this.fail(key, `${what} ${v} is out of range for ${ggufValueTypeName(type)}`);
        const size = SCALAR_SIZE[type];
        s.fixed(size, (b, at) => {
          if (size === 8) b.writeBigUInt64LE(BigInt.asUintN(64, big), at);
          else b.writeUIntLE(Number(BigInt.asUintN(size * 8, big)), at, size);
        });
      }
    }
  }

  array(itemType: GgufValueType | undefined, v: GgufValue, key: string, depth: number): void {
    if (depth > MAX_NESTING) this.fail(key, `arrays nested more than ${MAX_NESTING} deep`);
    if (!Array.isArray(v) && !ArrayBuffer.isView(v)) this.fail(key, `expected an array, got ${describe(v)}`);
    const items = v as ArrayLike<GgufValue>;
    const t = itemType ?? inferItemType(v as GgufValue[]);
    if (t === undefined) this.fail(key, 'cannot infer the item type of a mixed array; give itemType');
    if (!isValueType(t)) this.fail(key, `unknown item type id ${t}`);
    this.sink.u32(t);
    this.sink.u64(items.length);
    // Typed arrays of the matching type go out as their raw bytes: scores and token types of a
    // 262144-entry vocabulary would otherwise take a million calls.
    if (ArrayBuffer.isView(v) && typedArrayType(v) === t) {
      this.sink.raw(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      return;
    }
    for (let i = 0; i < items.length; i++) {
      if (t === GgufValueType.ARRAY) this.array(undefined, items[i], key, depth + 1);
      else this.scalar(t, items[i], key, `item ${i}`);
    }
  }

  entry(e: GgufMetadataEntry): void {
    const isArray = Array.isArray(e.value) || ArrayBuffer.isView(e.value);
    const type = e.type ?? (isArray ? GgufValueType.ARRAY : inferScalar(e.value));
    if (type === undefined || !isValueType(type)) this.fail(e.key, `unsupported value ${describe(e.value)}`);
    this.sink.string(e.key);
    this.sink.u32(type);
    if (type === GgufValueType.ARRAY) this.array(e.itemType, e.value, e.key, 1);
    else {
      if (e.itemType !== undefined) this.fail(e.key, `itemType given for a ${ggufValueTypeName(type)} value`);
      this.scalar(type, e.value, e.key, 'value');
    }
  }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return `${typeof v} ${String(v)}`;
}

interface PlannedTensor {
  input: GgufTensorInput;
  byteLength: number;
  rel: number;
}

function planTensors(path: string, tensors: readonly GgufTensorInput[], alignment: number): PlannedTensor[] {
  const names = new Set<string>();
  const out: PlannedTensor[] = [];
  let rel = 0;
  for (const [i, t] of tensors.entries()) {
    const field = t.name || `tensors[${i}].name`;
    const fail = (problem: string): never => {
      throw new FormatError(path, field, problem);
    };
    if (!t.name) fail('empty tensor name');
    // ggml's GGML_MAX_NAME is 64 bytes including the terminator; longer names break llama.cpp.
    if (Buffer.byteLength(t.name, 'utf8') > 63) fail('tensor name longer than 63 bytes');
    if (names.has(t.name)) fail('duplicate tensor name');
    names.add(t.name);
    if (!isGgmlType(t.type)) fail(`unknown ggml type id ${t.type}`);
    if (t.dims.length < 1 || t.dims.length > MAX_DIMS)
      fail(`needs 1..${MAX_DIMS} dims, got ${t.dims.length}`);
    let elements = 1;
    for (const d of t.dims) {
      if (!Number.isSafeInteger(d) || d < 1) fail(`dims ${t.dims.join('x')} must be positive integers`);
      elements *= d;
    }
    const { blockSize, typeSize, name: typeName } = ggmlTypeTraits(t.type);
    if (t.dims[0] % blockSize !== 0)
      fail(`dims[0] = ${t.dims[0]} is not a multiple of the ${typeName} block size ${blockSize}`);
    const byteLength = (elements / blockSize) * typeSize;
    if (t.data instanceof Float32Array) {
      const encodable: number[] = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0];
      if (!encodable.includes(t.type))
        fail(`cannot encode fp32 data as ${typeName}; pass encoded bytes as a Uint8Array`);
      if (t.data.length !== elements)
        fail(`data has ${t.data.length} values, dims ${t.dims.join('x')} need ${elements}`);
    } else if (t.data instanceof Uint8Array) {
      if (t.data.length !== byteLength)
        fail(`data has ${t.data.length} bytes, ${typeName} ${t.dims.join('x')} needs ${byteLength}`);
    } else {
      fail('data must be a Float32Array or a Uint8Array');
    }
    out.push({ input: t, byteLength, rel });
    rel = alignUp(rel + byteLength, alignment);
  }
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
}

/**
 * Writes a GGUF v3 file atomically: everything goes to `path.tmp-<pid>`, which is fsynced and
 * renamed over `path`; on any failure the temporary file is removed and `path` is untouched.
 * Input problems and I/O failures both throw FormatError naming `path` (and the key or tensor).
 */
export function writeGguf(path: string, input: GgufWriteInput): void {
  requireLittleEndianHost(path);
  let alignment = input.alignment ?? DEFAULT_ALIGNMENT;
  const metadata = [...input.metadata];
  const keys = new Set<string>();
  for (const e of metadata) {
    if (!e.key) throw new FormatError(path, 'metadata.key', 'empty metadata key');
    if (keys.has(e.key)) throw new FormatError(path, e.key, 'duplicate metadata key');
    keys.add(e.key);
  }
  const given = metadata.find((e) => e.key === 'general.alignment');
  if (given) {
    if (
      (given.type ?? inferScalar(given.value)) !== GgufValueType.UINT32 ||
      typeof given.value !== 'number'
    ) {
      throw new FormatError(path, 'general.alignment', 'must be a UINT32');
    }
    if (input.alignment !== undefined && input.alignment !== given.value) {
      throw new FormatError(
        path,
        'general.alignment',
        `${given.value} contradicts the alignment option ${input.alignment}`,
      );
    }
    alignment = given.value;
  } else if (alignment !== DEFAULT_ALIGNMENT) {
    metadata.push({ key: 'general.alignment', type: GgufValueType.UINT32, value: alignment });
  }
  if (!Number.isSafeInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
    throw new FormatError(path, 'general.alignment', `alignment ${alignment} is not a power of two`);
  }

  // Everything that can be wrong with the input is found before the file is created.
  const plan = planTensors(path, input.tensors, alignment);
  const sink = new Sink();
  sink.u32(GGUF_MAGIC);
  sink.u32(3);
  sink.u64(plan.length);
  sink.u64(metadata.length);
  const enc = new Encoder(path, sink);
  for (const e of metadata) enc.entry(e);
  for (const p of plan) {
    sink.string(p.input.name);
    sink.u32(p.input.dims.length);
    for (const d of p.input.dims) sink.u64(d);
    sink.u32(p.input.type);
    sink.u64(p.rel);
  }
  const headerPad = alignUp(sink.length, alignment) - sink.length;
  sink.raw(new Uint8Array(headerPad));
  const header = sink.toBuffer();

  const tmp = `${path}.tmp-${process.pid}`;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w', 0o644);
    writeAll(fd, header);
    for (const p of plan) {
      const { data, type } = p.input;
      const bytes = data instanceof Float32Array ? quantize(type, data) : data;
      writeAll(fd, bytes);
      const pad = alignUp(bytes.length, alignment) - bytes.length;
      if (pad > 0) writeAll(fd, new Uint8Array(pad));
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, path);
    syncDirectory(nodePath.dirname(path));
  } catch (e) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        // The write error is the one worth reporting.
      }
    }
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // Nothing was created (e.g. the directory does not exist); the original error says why.
    }
    throw asFormatError(e, path, '', 'cannot write');
  }
}
