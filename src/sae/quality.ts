/**
 * How good an SAE is, measured as SAELens and Anthropic measure it:
 *
 * - explained variance: 1 - Σ||x - x_hat||² / Σ||x - mean(x)||² over held-out rows; and the
 *   same over the typical rows alone, leaving out the outliers whose norm is above
 *   OUTLIER_NORM_RATIO × the median row norm. A residual stream's few "massive activation" tokens
 *   (attention sinks, e.g. each chat turn's first tokens) can hold most of Σ||x - mean(x)||², so
 *   the whole figure may mostly say how well those few rows are reconstructed;
 * - L0: mean number of active latents per row;
 * - dead share: latents active on none of the rows;
 * - CE-loss recovered: (CE_zero - CE_spliced) / (CE_zero - CE_clean), where CE is the mean
 *   next-token cross-entropy of the prompts' own tokens, clean, with x_hat spliced in for x at the
 *   SAE's hook on every position (optionally all but the first), and with that activation set to
 *   zero at the same positions.
 */
import type { Backend } from '../engine/backend.js';
import { OptionError } from '../formats/errors.js';
import type { Hook, HookName } from '../hooks/hooks.js';
import type { Model } from '../model/model.js';
import type { Sae } from './sae.js';
import type { ActivationSource } from './source.js';

/** Rows whose norm is above this multiple of the median row norm are outliers. */
export const OUTLIER_NORM_RATIO = 10;

export interface SaeReconstructionQuality {
  readonly rows: number;
  readonly explainedVariance: number;
  /** Mean squared error per row (sum over the row's values). */
  readonly mse: number;
  readonly l0: number;
  readonly deadShare: number;
  /** The rows with norm at most OUTLIER_NORM_RATIO × the median row norm. */
  readonly typical: {
    readonly rows: number;
    /** 1 - Σ||x - x_hat||² / Σ||x - mean||² over these rows, about their own mean. */
    readonly explainedVariance: number;
    readonly mse: number;
  };
  /** The other rows. */
  readonly outliers: {
    readonly rows: number;
    /** Norms above this are outliers: OUTLIER_NORM_RATIO × the median row norm. */
    readonly normAbove: number;
    /** Their share of Σ||x - mean(x)||² over all rows. */
    readonly varianceShare: number;
  };
}

/** Explained variance, L0 and dead share of `sae` over `source` (at most `maxRows` rows). */
export async function reconstructionQuality(
  sae: Sae,
  backend: Backend,
  source: ActivationSource,
  maxRows = Infinity,
): Promise<SaeReconstructionQuality> {
  const { dIn, dSae } = sae.config;
  if (source.dIn !== dIn)
    throw new OptionError(`SAE reads width ${dIn} but ${source.id} holds rows of width ${source.dIn}`);
  let active = 0;
  const fired = new Uint8Array(dSae);
  // Per row: its squared norm and squared error, to split typical rows from outliers at the end.
  const rowSq: number[] = [];
  const rowErr: number[] = [];
  // Per-dimension sums of the rows, of all of them and (second pass) of the typical ones.
  const sum = new Float64Array(dIn);
  const typicalSum = new Float64Array(dIn);
  const pass = async (each: (x: Float32Array, n: number, first: number) => void): Promise<void> => {
    let seen = 0;
    for await (const full of source.chunks(0)) {
      const n = Math.min(full.length / dIn, maxRows - seen);
      each(full.subarray(0, n * dIn), n, seen);
      seen += n;
      if (seen >= maxRows) break;
    }
  };
  await pass((x, n) => {
    const codes = sae.encode(backend, x, n);
    const xHat = sae.decode(codes);
    for (let r = 0; r < n; r++) {
      let sq = 0;
      let err = 0;
      for (let i = r * dIn; i < (r + 1) * dIn; i++) {
        sq += x[i] * x[i];
        sum[i - r * dIn] += x[i];
        err += (x[i] - xHat[i]) ** 2;
      }
      rowSq.push(sq);
      rowErr.push(err);
    }
    active += codes.latents.length;
    for (const j of codes.latents) fired[j] = 1;
  });
  const rows = rowSq.length;
  if (rows === 0) throw new OptionError(`${source.id}: no rows to measure the SAE on`);
  const norms = Float64Array.from(rowSq, Math.sqrt).sort();
  const median = rows % 2 ? norms[(rows - 1) / 2] : (norms[rows / 2 - 1] + norms[rows / 2]) / 2;
  const normAbove = OUTLIER_NORM_RATIO * median;
  const typical = (r: number) => Math.sqrt(rowSq[r]) <= normAbove;
  // Second pass (no encoding): the typical rows' own mean, and the outliers' scatter about the
  // mean of all rows, both of which need the median first.
  const mean = sum.map((v) => v / rows);
  let outlierScatter = 0;
  await pass((x, n, first) => {
    for (let r = 0; r < n; r++) {
      const row = x.subarray(r * dIn, (r + 1) * dIn);
      if (typical(first + r)) for (let i = 0; i < dIn; i++) typicalSum[i] += row[i];
      else for (let i = 0; i < dIn; i++) outlierScatter += (row[i] - mean[i]) ** 2;
    }
  });
  /** Σ||x - mean||² of rows with Σ||x||² = `sq`, count `n` and per-dimension sums `s`. */
  const scatter = (sq: number, n: number, s: Float64Array) => sq - s.reduce((a, v) => a + v * v, 0) / n;
  let sq = 0;
  let err = 0;
  let tSq = 0;
  let tErr = 0;
  let tRows = 0;
  for (let r = 0; r < rows; r++) {
    sq += rowSq[r];
    err += rowErr[r];
    if (typical(r)) {
      tSq += rowSq[r];
      tErr += rowErr[r];
      tRows++;
    }
  }
  const total = scatter(sq, rows, sum);
  const tTotal = tRows > 0 ? scatter(tSq, tRows, typicalSum) : 0;
  let nFired = 0;
  for (const f of fired) nFired += f;
  return {
    rows,
    explainedVariance: total > 0 ? 1 - err / total : NaN,
    mse: err / rows,
    l0: active / rows,
    deadShare: 1 - nFired / dSae,
    typical: {
      rows: tRows,
      explainedVariance: tTotal > 0 ? 1 - tErr / tTotal : NaN,
      mse: tRows > 0 ? tErr / tRows : NaN,
    },
    outliers: {
      rows: rows - tRows,
      normAbove,
      varianceShare: total > 0 ? outlierScatter / total : NaN,
    },
  };
}

/**
 * A hook that replaces the activation at the SAE's hook by the SAE's reconstruction; with
 * `skipFirstToken`, rows at position 0 (BOS, whose norm is far above every other token's) stay.
 */
export function spliceHook(sae: Sae, backend: Backend, skipFirstToken = false): Hook {
  const name = sae.config.hookName as HookName;
  const dIn = sae.config.dIn;
  return {
    name,
    fn: (act, ctx) => {
      if (ctx.width !== dIn)
        throw new OptionError(`SAE reads width ${dIn} but ${name} has width ${ctx.width}`);
      const xHat = sae.reconstruct(backend, act, ctx.rows);
      for (let r = 0; r < ctx.rows; r++)
        if (!(skipFirstToken && ctx.pos[r] === 0)) act.set(xHat.subarray(r * dIn, (r + 1) * dIn), r * dIn);
    },
  };
}

export interface CeRecovered {
  /** Predicted tokens scored (every token of every prompt but the first). */
  readonly tokens: number;
  readonly ceClean: number;
  readonly ceSpliced: number;
  readonly ceZeroAblation: number;
  /** (ceZeroAblation - ceSpliced) / (ceZeroAblation - ceClean). */
  readonly recovered: number;
}

/**
 * CE-loss recovered by `sae` on token sequences `prompts` (each at least two tokens), run
 * one at a time with every row's logits. With `skipFirstToken`, position 0 is left as it is in
 * both the spliced and the zero-ablated runs (for SAEs trained without the first token).
 */
export function ceLossRecovered(
  model: Model,
  sae: Sae,
  prompts: readonly (readonly number[])[],
  skipFirstToken = false,
): CeRecovered {
  model.checkHookName(sae.config.hookName);
  if (model.config.dModel !== sae.config.dIn)
    throw new OptionError(
      `the SAE reads width ${sae.config.dIn} but ${model.identity.path} has d_model ${model.config.dModel}`,
    );
  const name = sae.config.hookName as HookName;
  const D = sae.config.dIn;
  const zero: Hook = {
    name,
    fn: (act, ctx) => {
      for (let r = 0; r < ctx.rows; r++)
        if (!(skipFirstToken && ctx.pos[r] === 0)) act.fill(0, r * D, (r + 1) * D);
    },
  };
  const splice = spliceHook(sae, model.backend, skipFirstToken);
  const V = model.config.vocabSize;
  const totals = { clean: 0, spliced: 0, zero: 0 };
  let tokens = 0;
  for (const [i, p] of prompts.entries()) {
    if (p.length < 2)
      throw new OptionError(`CE recovered: prompt ${i} has ${p.length} token(s); at least 2 are needed`);
    for (const [key, hooks] of [
      ['clean', []],
      ['spliced', [splice]],
      ['zero', [zero]],
    ] as const) {
      const logits = model.run([{ tokens: [...p] }], { logits: 'all', hooks }).logits[0];
      for (let t = 0; t + 1 < p.length; t++)
        totals[key] -= logProb(logits.subarray(t * V, (t + 1) * V), p[t + 1]);
    }
    tokens += p.length - 1;
  }
  if (tokens === 0) throw new OptionError('CE recovered: no prompts');
  const ceClean = totals.clean / tokens;
  const ceSpliced = totals.spliced / tokens;
  const ceZeroAblation = totals.zero / tokens;
  return {
    tokens,
    ceClean,
    ceSpliced,
    ceZeroAblation,
    recovered: (ceZeroAblation - ceSpliced) / (ceZeroAblation - ceClean),
  };
}

/** log softmax(row)[token], in double precision. */
function logProb(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return row[token] - max - Math.log(sum);
}
