/**
 * The Top-k SAE training loss and its gradients, forward and backward side by side (Gao et al.
 * 2024, "Scaling and evaluating sparse autoencoders"):
 *
 *   xc = x - b_dec;  z = W_enc xc + b_enc;  S = top-k(z);  f_j = ReLU(z_j) for j in S
 *   x_hat = b_dec + Σ_{j∈S} f_j W_dec[j];   e = x_hat - x
 *   mse  = mean over rows of ||e||²
 *   AuxK: among the dead latents D, A = top-k_aux(z restricted to D), a_j = ReLU(z_j);
 *         ê = Σ_{j∈A} a_j W_dec[j];  aux = mean over rows of ||ê - (x - x_hat)||², the target
 *         x - x_hat held fixed (no gradient flows into the main reconstruction through it)
 *   loss = mse + auxCoefficient · aux
 *
 * Written over Float32Array or Float64Array alike, so that the same code is checked against
 * finite differences in float64 and trains in float32. Only the dense encoder product z goes
 * through `product` (Backend.matmul when training); the decoder and every backward step touch
 * only the k (+ k_aux) active latents of each row.
 */
import { topKIndices } from './sae.js';

export type Floats = Float32Array | Float64Array;

/** out[M,N] = x[M,K] · w[N,K]ᵀ + bias[N], as Backend.matmul. */
export type DenseProduct<T extends Floats> = (
  out: T,
  x: T,
  w: T,
  M: number,
  K: number,
  N: number,
  bias: T,
) => void;

/** Parameters (and, with the same layout, their gradients) of a Top-k SAE; see src/sae/sae.ts. */
export interface SaeParams<T extends Floats> {
  readonly wEnc: T;
  readonly bEnc: T;
  readonly wDec: T;
  readonly bDec: T;
}

export interface SaeLossOptions {
  readonly dIn: number;
  readonly dSae: number;
  readonly k: number;
  /** Dead latents used by AuxK per row (at most the number of dead latents). */
  readonly kAux: number;
  readonly auxCoefficient: number;
  /** dead[j] = 1 when latent j counts as dead; null or none set: no auxiliary loss. */
  readonly dead: Uint8Array | null;
}

export interface SaeLossResult {
  /** mse + auxCoefficient · aux. */
  readonly loss: number;
  readonly mse: number;
  readonly aux: number;
  /** Mean number of latents with f > 0 per row. */
  readonly l0: number;
  /** fired[j] = 1 when latent j had f > 0 on some row of the batch. */
  readonly fired: Uint8Array;
}

/**
 * The loss on x[rows, dIn] and, when `grads` is given, its gradient with respect to every
 * parameter, accumulated into `grads` (which the caller zeroes).
 */
export function saeLoss<T extends Floats>(
  params: SaeParams<T>,
  x: T,
  rows: number,
  opts: SaeLossOptions,
  product: DenseProduct<T>,
  grads?: SaeParams<T>,
): SaeLossResult {
  const { dIn, dSae, k, auxCoefficient } = opts;
  const { wEnc, bEnc, wDec, bDec } = params;
  const make = (n: number): T => new (x.constructor as new (n: number) => T)(n);

  const xc = make(rows * dIn);
  for (let r = 0; r < rows; r++) for (let i = 0; i < dIn; i++) xc[r * dIn + i] = x[r * dIn + i] - bDec[i];
  const z = make(rows * dSae);
  product(z, xc, wEnc, rows, dIn, dSae, bEnc);

  const dead = opts.dead;
  let nDead = 0;
  if (dead !== null) for (let j = 0; j < dSae; j++) nDead += dead[j];
  const kAux = Math.min(opts.kAux, nDead);

  const fired = new Uint8Array(dSae);
  const kept = new Int32Array(k);
  const auxKept = new Int32Array(Math.max(kAux, 1));
  const deadZ = new Float64Array(kAux > 0 ? dSae : 0);
  const xHat = new Float64Array(dIn);
  const eHat = new Float64Array(dIn);
  const g = new Float64Array(dIn);
  const h = new Float64Array(dIn);
  let mse = 0;
  let aux = 0;
  let active = 0;

  for (let r = 0; r < rows; r++) {
    const zr = z.subarray(r * dSae, (r + 1) * dSae);
    const xr = x.subarray(r * dIn, (r + 1) * dIn);
    topKIndices(zr, k, kept);
    // forward: x_hat = b_dec + Σ f_j W_dec[j]
    for (let i = 0; i < dIn; i++) xHat[i] = bDec[i];
    for (const j of kept) {
      const f = zr[j];
      if (!(f > 0)) continue;
      fired[j] = 1;
      active++;
      const w = j * dIn;
      for (let i = 0; i < dIn; i++) xHat[i] += f * wDec[w + i];
    }
    let rowMse = 0;
    for (let i = 0; i < dIn; i++) {
      const e = xHat[i] - xr[i];
      g[i] = e;
      rowMse += e * e;
    }
    mse += rowMse;

    // AuxK forward: the dead latents' reconstruction of the residual x - x_hat.
    let auxCount = 0;
    if (kAux > 0) {
      for (let j = 0; j < dSae; j++) deadZ[j] = dead![j] ? zr[j] : -Infinity;
      topKIndices(deadZ, kAux, auxKept);
      eHat.fill(0);
      for (; auxCount < kAux; auxCount++) {
        const j = auxKept[auxCount];
        const a = zr[j];
        if (!(a > 0)) break;
        const w = j * dIn;
        for (let i = 0; i < dIn; i++) eHat[i] += a * wDec[w + i];
      }
      let rowAux = 0;
      for (let i = 0; i < dIn; i++) {
        const d = eHat[i] + g[i]; // ê - (x - x_hat) = ê + e
        h[i] = d;
        rowAux += d * d;
      }
      aux += rowAux;
    }

    if (grads === undefined) continue;
    // backward of mse: dL/dx_hat = 2e / rows
    const scale = 2 / rows;
    for (let i = 0; i < dIn; i++) {
      g[i] *= scale;
      grads.bDec[i] += g[i];
    }
    for (const j of kept) {
      const f = zr[j];
      if (!(f > 0)) continue;
      backwardLatent(params, grads, xc, r * dIn, dIn, j, f, g);
    }
    if (kAux > 0) {
      const auxScale = (2 * auxCoefficient) / rows;
      for (let i = 0; i < dIn; i++) h[i] *= auxScale;
      for (let n = 0; n < auxCount; n++)
        backwardLatent(params, grads, xc, r * dIn, dIn, auxKept[n], zr[auxKept[n]], h);
    }
  }

  mse /= rows;
  aux /= rows;
  return { loss: mse + auxCoefficient * aux, mse, aux, l0: active / rows, fired };
}

/**
 * One active latent j with value f > 0 whose decoder row received upstream gradient `up`:
 * dW_dec[j] += f·up; dz = W_dec[j]·up flows back through ReLU (open, f > 0) into W_enc[j]
 * (dz·xc), b_enc[j] (dz) and b_dec (-dz·W_enc[j], through xc = x - b_dec). A module function
 * rather than a closure, so the hot loops keep their arrays out of a shared context.
 */
function backwardLatent<T extends Floats>(
  params: SaeParams<T>,
  grads: SaeParams<T>,
  xc: T,
  xo: number,
  dIn: number,
  j: number,
  f: number,
  up: Float64Array,
): void {
  const { wEnc, wDec } = params;
  const gWDec = grads.wDec;
  const gWEnc = grads.wEnc;
  const gBDec = grads.bDec;
  const w = j * dIn;
  let dz = 0;
  for (let i = 0; i < dIn; i++) {
    gWDec[w + i] += f * up[i];
    dz += wDec[w + i] * up[i];
  }
  for (let i = 0; i < dIn; i++) {
    gWEnc[w + i] += dz * xc[xo + i];
    gBDec[i] -= dz * wEnc[w + i];
  }
  grads.bEnc[j] += dz;
}
