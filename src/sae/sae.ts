/**
 * A sparse autoencoder (SAE) over one hook's activations, as SAELens defines them:
 *
 *   z     = W_enc · (x - b_dec) + b_enc          (b_dec subtracted only if applyBDecToInput)
 *   topk:     f = ReLU of the k largest entries of z, every other latent 0
 *   jumprelu: f_j = z_j · [z_j > threshold_j]      (GemmaScope)
 *   x_hat = W_dec · f + b_dec
 *
 * Shapes (row-major): wEnc [dSae, dIn] (row j is latent j's encoder vector, the transpose of
 * SAELens's W_enc [d_in, d_sae], so the dense product is one Backend.matmul), wDec [dSae, dIn]
 * (as SAELens), bEnc [dSae], bDec [dIn], threshold [dSae]. An encoding is sparse: for each row the
 * latents kept and their values, so decoding touches only those rows of wDec.
 */
import type { Backend } from '../engine/backend.js';
import { OptionError } from '../formats/errors.js';

export type SaeArchitecture = 'topk' | 'jumprelu';
export const SAE_ARCHITECTURES: readonly SaeArchitecture[] = ['topk', 'jumprelu'];

/** What an SAE is, apart from its weights. */
export interface SaeConfig {
  readonly architecture: SaeArchitecture;
  /** Width of the activations it reads (the model's d_model for the residual stream). */
  readonly dIn: number;
  /** Number of latents. */
  readonly dSae: number;
  /** Latents kept per row (topk only). */
  readonly k?: number;
  /** Hook it reads, e.g. blocks.6.hook_resid_post. */
  readonly hookName: string;
  /** Block of the hook. */
  readonly hookLayer: number;
  /** Name of the model it was trained on ('' when unknown). */
  readonly modelName: string;
  /** Subtract b_dec from the input before encoding (SAELens's default; GemmaScope has false). */
  readonly applyBDecToInput: boolean;
}

/** The weights of an SAE, layout as in the module comment. */
export interface SaeWeights {
  readonly wEnc: Float32Array;
  readonly bEnc: Float32Array;
  readonly wDec: Float32Array;
  readonly bDec: Float32Array;
  /** JumpReLU thresholds; absent for topk. */
  readonly threshold?: Float32Array;
}

/**
 * The latents active on each of `rows` rows, in CSR form: row r owns entries
 * offsets[r] .. offsets[r+1]-1 of `latents` (indices) and `values`.
 */
export interface SparseCodes {
  readonly rows: number;
  readonly offsets: Int32Array;
  readonly latents: Int32Array;
  readonly values: Float32Array;
}

/** Throws OptionError unless `cfg` describes a usable SAE. */
export function checkSaeConfig(cfg: SaeConfig): void {
  const bad = (msg: string): never => {
    throw new OptionError(`SAE config: ${msg}`);
  };
  if (!SAE_ARCHITECTURES.includes(cfg.architecture))
    bad(`unknown architecture '${String(cfg.architecture)}'`);
  if (!Number.isInteger(cfg.dIn) || cfg.dIn < 1) bad(`dIn must be a positive integer, got ${cfg.dIn}`);
  if (!Number.isInteger(cfg.dSae) || cfg.dSae < 1) bad(`dSae must be a positive integer, got ${cfg.dSae}`);
  if (cfg.architecture === 'topk') {
    const k = cfg.k;
    if (k === undefined || !Number.isInteger(k) || k < 1)
      bad(`k must be a positive integer, got ${String(k)}`);
    if (k! > cfg.dSae) bad(`k = ${k} is larger than the dictionary (dSae = ${cfg.dSae})`);
  }
  if (!Number.isInteger(cfg.hookLayer) || cfg.hookLayer < 0)
    bad(`hookLayer must be a non-negative integer, got ${cfg.hookLayer}`);
}

/**
 * Indices of the `k` largest values of `z` (ties: the lower index first), written to `out`,
 * largest first. A size-k min-heap: O(n log k) per row.
 */
export function topKIndices(z: ArrayLike<number>, k: number, out: Int32Array): void {
  // out[0..size) is a min-heap: out[0] is the weakest kept, where a is weaker than b when
  // z[a] < z[b], or z[a] === z[b] and a > b. Plain loops, no closures: this runs per token.
  let size = 0;
  for (let j = 0; j < z.length; j++) {
    const v = z[j];
    if (size < k) {
      let i = size++;
      while (i > 0) {
        const p = (i - 1) >> 1;
        const q = out[p];
        if (!(v < z[q] || (v === z[q] && j > q))) break;
        out[i] = q;
        i = p;
      }
      out[i] = j;
    } else {
      const top = out[0];
      if (v > z[top] || (v === z[top] && j < top)) siftDown(z, out, size, 0, j);
    }
  }
  // Heap sort in place: move the weakest to the end repeatedly, leaving the strongest first.
  for (let end = size - 1; end > 0; end--) {
    const last = out[end];
    out[end] = out[0];
    siftDown(z, out, end, 0, last);
  }
}

/** Put `item` at heap position `i` of out[0..size) and sift it down to its place. */
function siftDown(z: ArrayLike<number>, out: Int32Array, size: number, i: number, item: number): void {
  const v = z[item];
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) break;
    let m = l;
    const r = l + 1;
    if (r < size) {
      const a = out[l];
      const b = out[r];
      if (z[b] < z[a] || (z[b] === z[a] && b > a)) m = r;
    }
    const c = out[m];
    if (!(z[c] < v || (z[c] === v && c > item))) break;
    out[i] = c;
    i = m;
  }
  out[i] = item;
}

export class Sae {
  readonly config: SaeConfig;
  readonly weights: SaeWeights;

  /** Checks the config and that every tensor has its shape (OptionError otherwise). */
  constructor(config: SaeConfig, weights: SaeWeights) {
    checkSaeConfig(config);
    const { dIn, dSae } = config;
    const want: [string, Float32Array | undefined, number][] = [
      ['wEnc', weights.wEnc, dSae * dIn],
      ['bEnc', weights.bEnc, dSae],
      ['wDec', weights.wDec, dSae * dIn],
      ['bDec', weights.bDec, dIn],
    ];
    if (config.architecture === 'jumprelu') want.push(['threshold', weights.threshold, dSae]);
    else if (weights.threshold !== undefined)
      throw new OptionError('SAE: a topk SAE has no threshold tensor');
    for (const [name, t, n] of want) {
      if (t?.length !== n)
        throw new OptionError(`SAE: ${name} has ${t?.length ?? 'no'} values, expected ${n}`);
    }
    this.config = { ...config };
    this.weights = weights;
  }

  /** z[rows, dSae] = W_enc · (x - b_dec) + b_enc, the dense encoder product on `backend`. */
  preActivations(backend: Backend, x: Float32Array, rows: number): Float32Array {
    const { dIn, dSae } = this.config;
    checkRows(x, rows, dIn);
    const { wEnc, bEnc, bDec } = this.weights;
    let input = x;
    if (this.config.applyBDecToInput) {
      input = new Float32Array(x.length);
      for (let r = 0; r < rows; r++)
        for (let i = 0; i < dIn; i++) input[r * dIn + i] = x[r * dIn + i] - bDec[i];
    }
    const z = new Float32Array(rows * dSae);
    backend.matmul(z, input, wEnc, rows, dIn, dSae, bEnc);
    return z;
  }

  /** The active latents of each row of x[rows, dIn]. */
  encode(backend: Backend, x: Float32Array, rows: number): SparseCodes {
    return this.activate(this.preActivations(backend, x, rows), rows);
  }

  /** The activation function applied to pre-activations z[rows, dSae]. */
  activate(z: Float32Array, rows: number): SparseCodes {
    const { dSae } = this.config;
    const offsets = new Int32Array(rows + 1);
    const latents: number[] = [];
    const values: number[] = [];
    if (this.config.architecture === 'topk') {
      const k = this.config.k!;
      const idx = new Int32Array(k);
      for (let r = 0; r < rows; r++) {
        const zr = z.subarray(r * dSae, (r + 1) * dSae);
        topKIndices(zr, k, idx);
        for (const j of idx) {
          if (zr[j] > 0) {
            latents.push(j);
            values.push(zr[j]);
          }
        }
        offsets[r + 1] = latents.length;
      }
    } else {
      const threshold = this.weights.threshold!;
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < dSae; j++) {
          const v = z[r * dSae + j];
          if (v > threshold[j]) {
            latents.push(j);
            values.push(v);
          }
        }
        offsets[r + 1] = latents.length;
      }
    }
    return { rows, offsets, latents: Int32Array.from(latents), values: Float32Array.from(values) };
  }

  /** x_hat[rows, dIn] = W_dec · f + b_dec. */
  decode(codes: SparseCodes): Float32Array {
    const { dIn } = this.config;
    const { wDec, bDec } = this.weights;
    const out = new Float32Array(codes.rows * dIn);
    for (let r = 0; r < codes.rows; r++) {
      const o = out.subarray(r * dIn, (r + 1) * dIn);
      o.set(bDec);
      for (let e = codes.offsets[r]; e < codes.offsets[r + 1]; e++) {
        const row = codes.latents[e] * dIn;
        const v = codes.values[e];
        for (let i = 0; i < dIn; i++) o[i] += v * wDec[row + i];
      }
    }
    return out;
  }

  /** The reconstruction x_hat of x[rows, dIn]. */
  reconstruct(backend: Backend, x: Float32Array, rows: number): Float32Array {
    return this.decode(this.encode(backend, x, rows));
  }
}

/** Throws OptionError unless x holds rows × width values, all finite. */
export function checkRows(x: Float32Array, rows: number, width: number): void {
  if (!Number.isInteger(rows) || rows < 0 || x.length !== rows * width)
    throw new OptionError(`SAE input: ${x.length} values are not ${rows} rows of width ${width}`);
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]))
      throw new OptionError(
        `SAE input: non-finite value ${x[i]} at row ${Math.floor(i / width)}, column ${i % width}`,
      );
  }
}
