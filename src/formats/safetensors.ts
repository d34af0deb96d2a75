/**
 * Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON header
 * mapping tensor names to {dtype, shape, data_offsets}, then the raw little-endian tensor bytes.
 *
 * Reading only parses the header; tensor data is read on demand through a file descriptor, because
 * model files run to many gigabytes and only one tensor at a time needs to be in memory.
 */
import { f32ToBf16, f32ToF16 } from './quant.js';
import {
  closeSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { FormatError, SteerguardError } from './errors.js';
import { requireRegularFile, syncDirectory } from './files.js';

/** Element types the safetensors format defines, with their width in bytes. */
export const SAFETENSORS_DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;

export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPE_BYTES;

export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Absolute byte offset of the first byte of the tensor in `file`. */
  readonly begin: number;
  /** Absolute byte offset one past the last byte of the tensor in `file`. */
  readonly end: number;
  readonly file: string;
}

export interface SafetensorsFile {
  readonly path: string;
  readonly tensors: Map<string, SafetensorsTensorInfo>;
  /** The optional `__metadata__` string map of the header ({} when absent). */
  readonly metadata: Record<string, string>;
}

/** The dtypes `writeSafetensors` can produce. */
export type SafetensorsWriteDtype = 'F32' | 'F16' | 'BF16' | 'I32';

export interface SafetensorsWriteTensor {
  readonly name: string;
  readonly dtype: SafetensorsWriteDtype;
  readonly shape: readonly number[];
  /** Float32Array for F32/F16/BF16 (converted on write), Int32Array for I32. */
  readonly data: Float32Array | Int32Array;
}

/**
 * The reference implementation refuses headers above 100 MB; a larger length is almost certainly a
 * file that is not safetensors at all, and honouring it would allocate that much memory.
 */
const MAX_HEADER_BYTES = 100_000_000;

/** Tensor bytes are read and converted in slices of this size, so conversion needs no second full copy. */
const CHUNK_BYTES = 1 << 24;

function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(SAFETENSORS_DTYPE_BYTES, s);
}

function readExactly(fd: number, buf: Uint8Array, position: number, path: string, what: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new FormatError(path, what, 'file ends early (truncated)');
    done += n;
  }
}

/** Parse and validate the header of a safetensors file; tensor data is not read. */
export function readSafetensorsHeader(path: string): SafetensorsFile {
  requireRegularFile(path);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new FormatError(path, '', `cannot open: ${(e as Error).message}`);
  }
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < 8)
      throw new FormatError(path, 'header length', `file is only ${fileSize} bytes (truncated)`);
    const lenBuf = new Uint8Array(8);
    readExactly(fd, lenBuf, 0, path, 'header length');
    const headerLen = new DataView(lenBuf.buffer).getBigUint64(0, true);
    if (headerLen < 2n || headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new FormatError(path, 'header length', `${headerLen} bytes is not a plausible header size`);
    }
    const n = Number(headerLen);
    if (8 + n > fileSize) {
      throw new FormatError(
        path,
        'header length',
        `header claims ${n} bytes but the file has only ${fileSize - 8} after the length (truncated)`,
      );
    }
    const headerBytes = new Uint8Array(n);
    readExactly(fd, headerBytes, 8, path, 'header');
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
    } catch (e) {
      throw new FormatError(path, 'header', `not valid JSON: ${(e as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new FormatError(path, 'header', 'must be a JSON object');
    }
    return parseHeader(path, header as Record<string, unknown>, 8 + n, fileSize);
  } finally {
    closeSync(fd);
  }
}

function parseHeader(
  path: string,
  header: Record<string, unknown>,
  dataStart: number,
  fileSize: number,
): SafetensorsFile {
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsTensorInfo>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
        throw new FormatError(path, '__metadata__', 'must be an object of strings');
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw new FormatError(path, `__metadata__.${k}`, 'value must be a string');
        metadata[k] = v;
      }
      continue;
    }
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
      throw new FormatError(path, name, 'tensor entry must be an object');
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDtype(dtype)) throw new FormatError(path, name, `unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new FormatError(
        path,
        name,
        `shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
      );
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[1] < offsets[0]
    ) {
      throw new FormatError(path, name, `data_offsets ${JSON.stringify(offsets)} are not [begin, end]`);
    }
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = numel * SAFETENSORS_DTYPE_BYTES[dtype];
    const size = offsets[1] - offsets[0];
    if (size !== expected) {
      throw new FormatError(
        path,
        name,
        `header lies about sizes: ${dtype}[${shape.join(', ')}] needs ${expected} bytes but data_offsets span ${size}`,
      );
    }
    const begin = dataStart + offsets[0];
    const end = dataStart + offsets[1];
    if (end > fileSize) {
      throw new FormatError(
        path,
        name,
        `data ends at byte ${end} but the file has only ${fileSize} bytes (truncated)`,
      );
    }
    tensors.set(name, { name, dtype, shape: shape as number[], begin, end, file: path });
  }
  const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      throw new FormatError(path, sorted[i].name, `data overlaps tensor ${sorted[i - 1].name}`);
    }
  }
  return { path, tensors, metadata };
}

let f16Table: Float32Array | undefined;

/** All 65536 half-precision values decoded once; a lookup beats bit-twiddling per element. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * frac * 2 ** -24;
    else if (exp === 31) table[h] = frac ? NaN : sign * Infinity;
    else table[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  f16Table = table;
  return table;
}

function withFd<T>(info: SafetensorsTensorInfo, fn: (fd: number) => T): T {
  requireRegularFile(info.file, info.name);
  let fd: number;
  try {
    fd = openSync(info.file, 'r');
  } catch (e) {
    throw new FormatError(info.file, info.name, `cannot open: ${(e as Error).message}`);
  }
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Read one tensor and convert it to float32. F32, F16, BF16 and F64 are accepted; any other dtype
 * is a FormatError naming the tensor.
 */
export function readSafetensorsTensorF32(info: SafetensorsTensorInfo): Float32Array {
  const width = SAFETENSORS_DTYPE_BYTES[info.dtype];
  if (!['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) {
    throw new FormatError(info.file, info.name, `dtype ${info.dtype} cannot be read as float32`);
  }
  const numel = (info.end - info.begin) / width;
  const out = new Float32Array(numel);
  withFd(info, (fd) => {
    if (info.dtype === 'F32') {
      // Read straight into the result's memory: no conversion, no scratch copy.
      const bytes = new Uint8Array(out.buffer);
      for (let off = 0; off < bytes.length; off += CHUNK_BYTES) {
        const slice = bytes.subarray(off, Math.min(bytes.length, off + CHUNK_BYTES));
        readExactly(fd, slice, info.begin + off, info.file, info.name);
      }
      return;
    }
    const chunkElems = Math.floor(CHUNK_BYTES / width);
    const scratch = new ArrayBuffer(Math.min(numel, chunkElems) * width);
    const outBits = new Uint32Array(out.buffer);
    const table = info.dtype === 'F16' ? halfTable() : undefined;
    for (let start = 0; start < numel; start += chunkElems) {
      const count = Math.min(chunkElems, numel - start);
      const bytes = new Uint8Array(scratch, 0, count * width);
      readExactly(fd, bytes, info.begin + start * width, info.file, info.name);
      if (info.dtype === 'F64') {
        const src = new Float64Array(scratch, 0, count);
        for (let i = 0; i < count; i++) out[start + i] = src[i];
      } else if (table) {
        const src = new Uint16Array(scratch, 0, count);
        for (let i = 0; i < count; i++) out[start + i] = table[src[i]];
      } else {
        // bfloat16 is the top half of a float32, so widening is a shift.
        const src = new Uint16Array(scratch, 0, count);
        for (let i = 0; i < count; i++) outBits[start + i] = src[i] << 16;
      }
    }
  });
  return out;
}

/**
 * Read an integer tensor (I32, I16, I8, U16, U8, BOOL, or I64/U64 whose values fit in an int32) as
 * Int32Array.
 */
export function readSafetensorsTensorI32(info: SafetensorsTensorInfo): Int32Array {
  const width = SAFETENSORS_DTYPE_BYTES[info.dtype];
  if (!['I32', 'I16', 'I8', 'U16', 'U8', 'BOOL', 'I64', 'U64'].includes(info.dtype)) {
    throw new FormatError(info.file, info.name, `dtype ${info.dtype} cannot be read as int32`);
  }
  const numel = (info.end - info.begin) / width;
  const bytes = new Uint8Array(info.end - info.begin);
  withFd(info, (fd) => readExactly(fd, bytes, info.begin, info.file, info.name));
  const buf = bytes.buffer;
  switch (info.dtype) {
    case 'I32':
      return new Int32Array(buf);
    case 'I16':
      return Int32Array.from(new Int16Array(buf));
    case 'I8':
      return Int32Array.from(new Int8Array(buf));
    case 'U16':
      return Int32Array.from(new Uint16Array(buf));
    case 'U8':
    case 'BOOL':
      return Int32Array.from(bytes);
    default: {
      const src = info.dtype === 'I64' ? new BigInt64Array(buf) : new BigUint64Array(buf);
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) {
        const v = src[i];
        if (v > 2147483647n || v < -2147483648n) {
          throw new FormatError(info.file, info.name, `element ${i} (${v}) does not fit in int32`);
        }
        out[i] = Number(v);
      }
      return out;
    }
  }
}

function writeAll(fd: number, buf: Uint8Array): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done);
}

function encodeChunk(t: SafetensorsWriteTensor, start: number, count: number): Uint8Array {
  const src = t.data;
  switch (t.dtype) {
    case 'F32':
    case 'I32':
      return new Uint8Array(src.buffer, src.byteOffset + start * 4, count * 4);
    case 'F16':
    case 'BF16': {
      const out = new Uint16Array(count);
      const conv = t.dtype === 'F16' ? f32ToF16 : f32ToBf16;
      for (let i = 0; i < count; i++) out[i] = conv(src[start + i]);
      return new Uint8Array(out.buffer);
    }
  }
}

const WRITE_BYTES: Record<SafetensorsWriteDtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4 };

function validateWriteTensors(path: string, tensors: readonly SafetensorsWriteTensor[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (!t.name || t.name === '__metadata__') throw new FormatError(path, t.name, 'invalid tensor name');
    if (seen.has(t.name)) throw new FormatError(path, t.name, 'duplicate tensor name');
    seen.add(t.name);
    if (!(t.dtype in WRITE_BYTES)) throw new FormatError(path, t.name, `cannot write dtype ${t.dtype}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new FormatError(path, t.name, `shape [${t.shape.join(', ')}] is not non-negative integers`);
    }
    const wantInt = t.dtype === 'I32';
    if (wantInt ? !(t.data instanceof Int32Array) : !(t.data instanceof Float32Array)) {
      throw new FormatError(
        path,
        t.name,
        `dtype ${t.dtype} needs ${wantInt ? 'Int32Array' : 'Float32Array'} data`,
      );
    }
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (numel !== t.data.length) {
      throw new FormatError(
        path,
        t.name,
        `shape [${t.shape.join(', ')}] has ${numel} elements but data has ${t.data.length}`,
      );
    }
  }
}

/**
 * Write tensors to a safetensors file atomically: the bytes go to a temporary file in the same
 * directory, which is fsynced and renamed over `path`, so readers never see a partial file. On any
 * failure the temporary file is removed and the error names `path`.
 */
export function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsWriteTensor[],
  metadata?: Record<string, string>,
): void {
  validateWriteTensors(path, tensors);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new FormatError(path, `__metadata__.${k}`, 'value must be a string');
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const t of tensors) {
    const size = t.data.length * WRITE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does;
  // readers can then map tensors without copying.
  const jsonBytes = () => new TextEncoder().encode(json);
  let encoded = jsonBytes();
  const pad = (8 - (encoded.length % 8)) % 8;
  if (pad) {
    json += ' '.repeat(pad);
    encoded = jsonBytes();
  }
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(encoded.length), true);

  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, 'wx', 0o644);
    writeAll(fd, prefix);
    writeAll(fd, encoded);
    for (const t of tensors) {
      const chunkElems = Math.floor(CHUNK_BYTES / 4);
      for (let start = 0; start < t.data.length; start += chunkElems) {
        writeAll(fd, encodeChunk(t, start, Math.min(chunkElems, t.data.length - start)));
      }
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // already failing; the original error is the one to report
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      // the temporary file may never have been created
    }
    throw new SteerguardError(
      `cannot write ${path}: ${describeWriteError(e as NodeJS.ErrnoException, path)}`,
    );
  }
  syncDirectory(dirname(path));
}

function describeWriteError(err: NodeJS.ErrnoException, path: string): string {
  switch (err.code) {
    case 'EACCES':
    case 'EPERM':
      return `permission denied in ${dirname(path)}`;
    case 'ENOENT':
      return `directory ${dirname(path)} does not exist`;
    case 'ENOTDIR':
      return `${dirname(path)} is not a directory`;
    case 'EROFS':
      return 'read-only file system';
    case 'ENOSPC':
      return 'no space left on device';
    case 'EISDIR':
      return 'a directory is in the way';
    default:
      return err.message;
  }
}
