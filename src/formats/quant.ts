/**
 * ggml tensor types: ids, block geometry, fp32 conversion to and from the formats the project reads
 * and writes. Layouts follow ggml's block structs (ggml-common.h); all multi-byte fields are
 * little-endian. Dequantization keeps fp32 rounding identical to ggml's reference code: every
 * product of a scale and a quant is exact in a double, so the single rounding when the result is
 * stored in a Float32Array matches ggml's float arithmetic bit for bit.
 */

/** ggml type ids as stored in GGUF tensor infos. Ids 4, 5 and 31-33, 36-38 are retired in ggml. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
} as const;
export type GgmlType = (typeof GgmlType)[keyof typeof GgmlType];

/** Elements per block and bytes per block of a ggml type (ggml's blck_size and type_size). */
export interface GgmlTypeTraits {
  readonly name: string;
  readonly blockSize: number;
  readonly typeSize: number;
}

const QK_K = 256;

// Keyed by id; the sizes are those of the current ggml (and gguf-py's GGML_QUANT_SIZES).
const TRAITS = new Map<number, GgmlTypeTraits>(
  (
    [
      ['F32', 1, 4],
      ['F16', 1, 2],
      ['Q4_0', 32, 18],
      ['Q4_1', 32, 20],
      ['Q5_0', 32, 22],
      ['Q5_1', 32, 24],
      ['Q8_0', 32, 34],
      ['Q8_1', 32, 40],
      ['Q2_K', QK_K, 84],
      ['Q3_K', QK_K, 110],
      ['Q4_K', QK_K, 144],
      ['Q5_K', QK_K, 176],
      ['Q6_K', QK_K, 210],
      ['Q8_K', QK_K, 292],
      ['IQ2_XXS', QK_K, 66],
      ['IQ2_XS', QK_K, 74],
      ['IQ3_XXS', QK_K, 98],
      ['IQ1_S', QK_K, 50],
      ['IQ4_NL', 32, 18],
      ['IQ3_S', QK_K, 110],
      ['IQ2_S', QK_K, 82],
      ['IQ4_XS', QK_K, 136],
      ['I8', 1, 1],
      ['I16', 1, 2],
      ['I32', 1, 4],
      ['I64', 1, 8],
      ['F64', 1, 8],
      ['IQ1_M', QK_K, 56],
      ['BF16', 1, 2],
      ['TQ1_0', QK_K, 54],
      ['TQ2_0', QK_K, 66],
      ['MXFP4', 32, 17],
      ['NVFP4', 64, 36],
      ['Q1_0', 128, 18],
    ] as const
  ).map(([name, blockSize, typeSize]) => [GgmlType[name], { name, blockSize, typeSize }]),
);

/** Whether `id` is a ggml type id this module knows the geometry of. */
export function isGgmlType(id: number): id is GgmlType {
  return TRAITS.has(id);
}

/** Block geometry of a type; throws RangeError for an unknown id (callers validate ids first). */
export function ggmlTypeTraits(type: GgmlType | number): GgmlTypeTraits {
  const t = TRAITS.get(type);
  if (!t) throw new RangeError(`unknown ggml type id ${type}`);
  return t;
}

/** The type's name ("Q4_K"), or "type#<id>" for an unknown id so it can go in messages. */
export function ggmlTypeName(type: GgmlType | number): string {
  return TRAITS.get(type)?.name ?? `type#${type}`;
}

/** Bytes per block (ggml_type_size). */
export function ggmlTypeSize(type: GgmlType | number): number {
  return ggmlTypeTraits(type).typeSize;
}

/** Elements per block (ggml_blck_size). */
export function ggmlBlockSize(type: GgmlType | number): number {
  return ggmlTypeTraits(type).blockSize;
}

/** Bytes taken by `elements` values of `type`; throws RangeError when not a whole number of blocks. */
export function ggmlByteLength(type: GgmlType | number, elements: number): number {
  const { blockSize, typeSize, name } = ggmlTypeTraits(type);
  if (elements % blockSize !== 0) {
    throw new RangeError(`${elements} elements is not a whole number of ${name} blocks of ${blockSize}`);
  }
  return (elements / blockSize) * typeSize;
}

const DEQUANTIZABLE: ReadonlySet<number> = new Set([
  GgmlType.F32,
  GgmlType.F16,
  GgmlType.BF16,
  GgmlType.Q8_0,
  GgmlType.Q4_0,
  GgmlType.Q4_1,
  GgmlType.Q5_0,
  GgmlType.Q5_1,
  GgmlType.Q2_K,
  GgmlType.Q3_K,
  GgmlType.Q4_K,
  GgmlType.Q5_K,
  GgmlType.Q6_K,
]);

/** Whether {@link dequantize} handles this type. */
export function canDequantize(type: GgmlType | number): boolean {
  return DEQUANTIZABLE.has(type);
}

// ---------------------------------------------------------------------------------------------
// Half floats

let f16Bits: Uint32Array | undefined;

// A 64K-entry table of fp32 bit patterns: one lookup per value is far cheaper than decoding, and
// keeping bit patterns (not floats) carries NaN payloads through unchanged.
function f16Table(): Uint32Array {
  if (f16Bits) return f16Bits;
  const bits = new Uint32Array(65536);
  const asFloat = new Float32Array(bits.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) {
      // Subnormal or zero: mant * 2^-24 is exact in fp32.
      asFloat[h] = mant * 2 ** -24;
      bits[h] |= sign;
    } else if (exp === 0x1f) {
      bits[h] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
    } else {
      bits[h] = (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
    }
  }
  f16Bits = bits;
  return bits;
}

const scratch = new DataView(new ArrayBuffer(4));

/** IEEE half bits to number (exact). */
export function f16ToF32(h: number): number {
  scratch.setUint32(0, f16Table()[h & 0xffff]);
  return scratch.getFloat32(0);
}

/**
 * Number to IEEE half bits, rounding to nearest even like numpy's astype(float16) and F16C:
 * overflow gives infinity, tiny values go subnormal or to signed zero; a NaN keeps its sign and
 * top payload bits (0x7c01 if those are all zero, so it stays a NaN).
 */
export function f32ToF16(x: number): number {
  scratch.setFloat32(0, x);
  return f32BitsToF16(scratch.getUint32(0));
}

function f32BitsToF16(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  const mant = f & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00;
    const payload = mant >>> 13;
    return sign | 0x7c00 | (payload === 0 ? 1 : payload);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Below 2^-25 everything rounds to zero (2^-25 itself is a tie that goes to the even zero).
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, up to infinity, which is the right result.
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
  return sign | h;
}

/** bfloat16 bits to number (exact). */
export function bf16ToF32(b: number): number {
  scratch.setUint32(0, (b & 0xffff) << 16);
  return scratch.getFloat32(0);
}

/** Number to bfloat16 bits, round to nearest even; NaN becomes a quiet NaN (as ggml does). */
export function f32ToBf16(x: number): number {
  scratch.setFloat32(0, x);
  return f32BitsToBf16(scratch.getUint32(0));
}

function f32BitsToBf16(n: number): number {
  if ((n & 0x7fffffff) >>> 0 > 0x7f800000) return ((n >>> 16) & 0xffff) | 0x40;
  return Math.floor((n + 0x7fff + ((n >>> 16) & 1)) / 65536) & 0xffff;
}

// ---------------------------------------------------------------------------------------------
// Conversions from fp32

function bitsOf(src: Float32Array): Uint32Array {
  return new Uint32Array(src.buffer, src.byteOffset, src.length);
}

function aligned(src: Float32Array): Float32Array {
  return src.byteOffset % 4 === 0 ? src : src.slice();
}

/** fp32 values to 16-bit little-endian bytes through a bit-level converter (half or bfloat16). */
function sixteenBitBytes(src: Float32Array, convert: (bits: number) => number): Uint8Array {
  const bits = bitsOf(aligned(src));
  const out = new Uint8Array(src.length * 2);
  for (let i = 0; i < bits.length; i++) {
    const h = convert(bits[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

/** fp32 values to little-endian IEEE half bytes. */
export function quantizeF16(src: Float32Array): Uint8Array {
  return sixteenBitBytes(src, f32BitsToF16);
}

/** fp32 values to little-endian bfloat16 bytes. */
export function quantizeBF16(src: Float32Array): Uint8Array {
  return sixteenBitBytes(src, f32BitsToBf16);
}

/**
 * fp32 values to Q8_0 blocks exactly as ggml's quantize_row_q8_0_ref: d = max|x| / 127 stored as
 * half, q = roundf(x / d) (half away from zero), all intermediate arithmetic in fp32.
 * `src.length` must be a multiple of 32.
 */
export function quantizeQ8_0(src: Float32Array): Uint8Array {
  if (src.length % 32 !== 0) throw new RangeError(`Q8_0 needs a multiple of 32 values, got ${src.length}`);
  const nb = src.length / 32;
  const out = new Uint8Array(nb * 34);
  const fr = Math.fround;
  for (let b = 0; b < nb; b++) {
    const x0 = b * 32;
    let amax = 0;
    for (let j = 0; j < 32; j++) {
      const a = Math.abs(src[x0 + j]);
      if (a > amax) amax = a;
    }
    const d = fr(amax / 127);
    const id = d !== 0 ? fr(1 / d) : 0;
    const h = f32ToF16(d);
    const o = b * 34;
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 32; j++) {
      const v = fr(src[x0 + j] * id);
      // roundf: halves go away from zero; |v| <= 127.5 so adding 0.5 is exact in a double.
      const q = v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
      out[o + 2 + j] = q & 0xff;
    }
  }
  return out;
}

/** Encode fp32 values as `type` (F32, F16, BF16 or Q8_0). */
export function quantize(type: GgmlType, src: Float32Array): Uint8Array {
  switch (type) {
    case GgmlType.F32: {
      const copy = new Float32Array(src);
      return new Uint8Array(copy.buffer);
    }
    case GgmlType.F16:
      return quantizeF16(src);
    case GgmlType.BF16:
      return quantizeBF16(src);
    case GgmlType.Q8_0:
      return quantizeQ8_0(src);
    default:
      throw new RangeError(`cannot encode fp32 as ${ggmlTypeName(type)} (supported: F32, F16, BF16, Q8_0)`);
  }
}

// ---------------------------------------------------------------------------------------------
// Dequantization

/**
 * Decode `elements` values of `type` from `src` (raw tensor bytes) into fp32, in storage order.
 * Throws RangeError when the type is not supported (see {@link canDequantize}), when `elements`
 * is not a whole number of blocks, or when `src` or `out` is too short.
 */
export function dequantize(
  type: GgmlType | number,
  src: Uint8Array,
  elements: number,
  out: Float32Array = new Float32Array(elements),
): Float32Array {
  const bytes = ggmlByteLength(type, elements);
  if (src.length < bytes) {
    throw new RangeError(`${ggmlTypeName(type)}: ${elements} values need ${bytes} bytes, got ${src.length}`);
  }
  if (out.length < elements) throw new RangeError(`output holds ${out.length} values, need ${elements}`);
  const nb = elements / ggmlBlockSize(type);
  switch (type) {
    case GgmlType.F32:
      deqF32(src, elements, out);
      break;
    case GgmlType.F16:
      deqF16(src, elements, out);
      break;
    case GgmlType.BF16:
      deqBF16(src, elements, out);
      break;
    case GgmlType.Q8_0:
      deqQ8_0(src, nb, out);
      break;
    case GgmlType.Q4_0:
      deqQ4_0(src, nb, out);
      break;
    case GgmlType.Q4_1:
      deqQ4_1(src, nb, out);
      break;
    case GgmlType.Q5_0:
      deqQ5_0(src, nb, out);
      break;
    case GgmlType.Q5_1:
      deqQ5_1(src, nb, out);
      break;
    case GgmlType.Q2_K:
      deqQ2_K(src, nb, out);
      break;
    case GgmlType.Q3_K:
      deqQ3_K(src, nb, out);
      break;
    case GgmlType.Q4_K:
      deqQ4_K(src, nb, out);
      break;
    case GgmlType.Q5_K:
      deqQ5_K(src, nb, out);
      break;
    case GgmlType.Q6_K:
      deqQ6_K(src, nb, out);
      break;
    default:
      throw new RangeError(`dequantization of ${ggmlTypeName(type)} is not supported`);
  }
  return out;
}

// Output as raw bits, so F32/F16/BF16 copies keep NaN payloads.
function outBits(out: Float32Array): Uint32Array {
  return new Uint32Array(out.buffer, out.byteOffset, out.length);
}

function deqF32(src: Uint8Array, n: number, out: Float32Array): void {
  if (src.byteOffset % 4 === 0) {
    outBits(out).set(new Uint32Array(src.buffer, src.byteOffset, n));
  } else {
    new Uint8Array(out.buffer, out.byteOffset, n * 4).set(src.subarray(0, n * 4));
  }
}

function deqF16(src: Uint8Array, n: number, out: Float32Array): void {
  const t = f16Table();
  const o = outBits(out);
  for (let i = 0; i < n; i++) o[i] = t[src[2 * i] | (src[2 * i + 1] << 8)];
}

function deqBF16(src: Uint8Array, n: number, out: Float32Array): void {
  const o = outBits(out);
  for (let i = 0; i < n; i++) o[i] = ((src[2 * i] << 16) | (src[2 * i + 1] << 24)) >>> 0;
}

// Half at byte offset `o`, as a number.
function halfAt(t: Float32Array, src: Uint8Array, o: number): number {
  return t[src[o] | (src[o + 1] << 8)];
}

let f16Floats: Float32Array | undefined;
function f16FloatTable(): Float32Array {
  f16Floats ??= new Float32Array(f16Table().buffer);
  return f16Floats;
}

function deqQ8_0(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 34;
    const d = halfAt(t, src, o);
    const y = b * 32;
    for (let j = 0; j < 32; j++) out[y + j] = d * ((src[o + 2 + j] << 24) >> 24);
  }
}

function deqQ4_0(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 18;
    const d = halfAt(t, src, o);
    const y = b * 32;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j];
      out[y + j] = d * ((q & 0xf) - 8);
      out[y + j + 16] = d * ((q >>> 4) - 8);
    }
  }
}

function deqQ4_1(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 20;
    const d = halfAt(t, src, o);
    const m = halfAt(t, src, o + 2);
    const y = b * 32;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 4 + j];
      out[y + j] = d * (q & 0xf) + m;
      out[y + j + 16] = d * (q >>> 4) + m;
    }
  }
}

function deqQ5_0(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 22;
    const d = halfAt(t, src, o);
    const qh = src[o + 2] | (src[o + 3] << 8) | (src[o + 4] << 16) | (src[o + 5] << 24);
    const y = b * 32;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 6 + j];
      out[y + j] = d * (((q & 0xf) | (((qh >>> j) & 1) << 4)) - 16);
      out[y + j + 16] = d * (((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16);
    }
  }
}

function deqQ5_1(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 24;
    const d = halfAt(t, src, o);
    const m = halfAt(t, src, o + 2);
    const qh = src[o + 4] | (src[o + 5] << 8) | (src[o + 6] << 16) | (src[o + 7] << 24);
    const y = b * 32;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 8 + j];
      out[y + j] = d * ((q & 0xf) | (((qh >>> j) & 1) << 4)) + m;
      out[y + j + 16] = d * ((q >>> 4) | (((qh >>> (j + 16)) & 1) << 4)) + m;
    }
  }
}

// block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
function deqQ2_K(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 84;
    const qs = o + 16;
    const d = halfAt(t, src, o + 80);
    const dmin = halfAt(t, src, o + 82);
    let y = b * QK_K;
    let is = 0;
    for (let half = 0; half < 2; half++) {
      const q = qs + half * 32;
      for (let shift = 0; shift < 8; shift += 2) {
        for (let k = 0; k < 2; k++) {
          const sc = src[o + is++];
          const dl = d * (sc & 0xf);
          const ml = dmin * (sc >>> 4);
          const qk = q + k * 16;
          for (let l = 0; l < 16; l++) out[y + l] = dl * ((src[qk + l] >>> shift) & 3) - ml;
          y += 16;
        }
      }
    }
  }
}

// block_q3_K: hmask[32], qs[64] (low 2 bits), scales[12] (sixteen 6-bit scales), d.
function deqQ3_K(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  const scales = new Int32Array(16);
  for (let b = 0; b < nb; b++) {
    const o = b * 110;
    const hm = o;
    const qs = o + 32;
    const sc = o + 96;
    const d = halfAt(t, src, o + 108);
    for (let i = 0; i < 16; i++) {
      const low = (src[sc + (i & 7)] >>> (4 * (i >>> 3))) & 0xf;
      const high = (src[sc + 8 + (i & 3)] >>> (2 * (i >>> 2))) & 3;
      scales[i] = (low | (high << 4)) - 32;
    }
    const y0 = b * QK_K;
    for (let half = 0; half < 2; half++) {
      const q = qs + half * 32;
      for (let s = 0; s < 4; s++) {
        const shift = 2 * s;
        const bit = half * 4 + s;
        const e0 = half * 128 + s * 32;
        // Each run of 32 values spans two 16-value scale groups.
        const dl0 = d * scales[e0 >>> 4];
        const dl1 = d * scales[(e0 >>> 4) + 1];
        for (let l = 0; l < 32; l++) {
          const low = (src[q + l] >>> shift) & 3;
          const v = ((src[hm + l] >>> bit) & 1) !== 0 ? low : low - 4;
          out[y0 + e0 + l] = (l < 16 ? dl0 : dl1) * v;
        }
      }
    }
  }
}

// The eight 6-bit (scale, min) pairs of Q4_K/Q5_K, packed in 12 bytes at `p`.
function kScaleMin(src: Uint8Array, p: number, sc: Uint8Array, mn: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = src[p + j] & 63;
    mn[j] = src[p + j + 4] & 63;
  }
  for (let j = 4; j < 8; j++) {
    sc[j] = (src[p + j + 4] & 0xf) | ((src[p + j - 4] >>> 6) << 4);
    mn[j] = (src[p + j + 4] >>> 4) | ((src[p + j] >>> 6) << 4);
  }
}

// block_q4_K: d, dmin, scales[12], qs[128].
function deqQ4_K(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  const sc = new Uint8Array(8);
  const mn = new Uint8Array(8);
  for (let b = 0; b < nb; b++) {
    const o = b * 144;
    const d = halfAt(t, src, o);
    const dmin = halfAt(t, src, o + 2);
    kScaleMin(src, o + 4, sc, mn);
    const y0 = b * QK_K;
    for (let c = 0; c < 4; c++) {
      const q = o + 16 + c * 32;
      const d1 = d * sc[2 * c];
      const m1 = dmin * mn[2 * c];
      const d2 = d * sc[2 * c + 1];
      const m2 = dmin * mn[2 * c + 1];
      const y = y0 + c * 64;
      for (let l = 0; l < 32; l++) {
        const v = src[q + l];
        out[y + l] = d1 * (v & 0xf) - m1;
        out[y + l + 32] = d2 * (v >>> 4) - m2;
      }
    }
  }
}

// block_q5_K: d, dmin, scales[12], qh[32], qs[128].
function deqQ5_K(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  const sc = new Uint8Array(8);
  const mn = new Uint8Array(8);
  for (let b = 0; b < nb; b++) {
    const o = b * 176;
    const d = halfAt(t, src, o);
    const dmin = halfAt(t, src, o + 2);
    kScaleMin(src, o + 4, sc, mn);
    const qh = o + 16;
    const y0 = b * QK_K;
    for (let c = 0; c < 4; c++) {
      const q = o + 48 + c * 32;
      const d1 = d * sc[2 * c];
      const m1 = dmin * mn[2 * c];
      const d2 = d * sc[2 * c + 1];
      const m2 = dmin * mn[2 * c + 1];
      const y = y0 + c * 64;
      for (let l = 0; l < 32; l++) {
        const v = src[q + l];
        const h = src[qh + l] >>> (2 * c);
        out[y + l] = d1 * ((v & 0xf) | ((h & 1) << 4)) - m1;
        out[y + l + 32] = d2 * ((v >>> 4) | ((h & 2) << 3)) - m2;
      }
    }
  }
}

// block_q6_K: ql[128], qh[64], scales[16] (int8), d.
function deqQ6_K(src: Uint8Array, nb: number, out: Float32Array): void {
  const t = f16FloatTable();
  for (let b = 0; b < nb; b++) {
    const o = b * 210;
    const d = halfAt(t, src, o + 208);
    for (let half = 0; half < 2; half++) {
      const ql = o + half * 64;
      const qh = o + 128 + half * 32;
      const sc = o + 192 + half * 8;
      const y = b * QK_K + half * 128;
      for (let l = 0; l < 32; l++) {
        const is = l >>> 4;
        const a = src[ql + l];
        const c = src[ql + l + 32];
        const h = src[qh + l];
        out[y + l] = d * ((src[sc + is] << 24) >> 24) * (((a & 0xf) | ((h & 3) << 4)) - 32);
        out[y + l + 32] = d * ((src[sc + is + 2] << 24) >> 24) * (((c & 0xf) | (((h >>> 2) & 3) << 4)) - 32);
        out[y + l + 64] = d * ((src[sc + is + 4] << 24) >> 24) * (((a >>> 4) | (((h >>> 4) & 3) << 4)) - 32);
        out[y + l + 96] = d * ((src[sc + is + 6] << 24) >> 24) * (((c >>> 4) | (((h >>> 6) & 3) << 4)) - 32);
      }
    }
  }
}
