/**
 * Training a Top-k SAE (Gao et al. 2024): the loss of src/sae/loss.ts with Adam, unit-norm
 * decoder rows (the gradient component parallel to each row removed before the step, the rows
 * re-normalised after it), W_enc initialised to W_dec, b_dec to the geometric median (or mean) of a
 * sample, and dead latents ("not active in the last `deadTokens` tokens") fed to the AuxK loss.
 *
 * Data streams from an ActivationSource in batches of `batchSize` rows, pass after pass. Every
 * `checkpointEvery` steps the whole state (weights, Adam moments, dead-latent clocks, the row the
 * next batch starts at) goes to one safetensors file in `checkpointDir`, written atomically; a run
 * given the same settings resumes from it and gives the same weights as an uninterrupted one.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { acquireLock, releaseLock } from '../activations/lock.js';
import type { Backend } from '../engine/backend.js';
import { FormatError, OptionError, SteerguardError } from '../formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  readSafetensorsTensorI32,
  writeSafetensors,
  type SafetensorsWriteTensor,
} from '../formats/safetensors.js';
import { seededRandom } from '../model/sampling.js';
import { saeLoss, type SaeParams } from './loss.js';
import { Sae } from './sae.js';
import { takeRows, type ActivationSource } from './source.js';

export interface SaeTrainOptions {
  /** Number of latents (the expansion factor times dIn). */
  readonly dSae: number;
  /** Latents kept per row. */
  readonly k: number;
  /** Optimizer steps to reach; a resumed run continues up to this count. */
  readonly steps: number;
  /** Rows per step (default 1024). */
  readonly batchSize?: number;
  /** Adam learning rate (default 5e-4). */
  readonly lr?: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly eps?: number;
  /** AuxK: dead latents used per row (default dIn / 2, as in the paper) and coefficient (1/32). */
  readonly kAux?: number;
  readonly auxCoefficient?: number;
  /** A latent is dead when it has not fired in this many tokens (default 100 000). */
  readonly deadTokens?: number;
  /** Initial b_dec (default geometric median), from the first `initRows` rows (default 4096). */
  readonly bDecInit?: 'geometric-median' | 'mean' | 'zero';
  readonly initRows?: number;
  /** Seed of the decoder's random initialisation. */
  readonly seed?: number;
  readonly hookName: string;
  readonly hookLayer: number;
  readonly modelName?: string;
  /** Folder of the checkpoint; none: no checkpoints, no resume. */
  readonly checkpointDir?: string;
  /** Steps between checkpoints (default 100); the last step is always saved. */
  readonly checkpointEvery?: number;
  /** Stop after the step at which this becomes true (the checkpoint is written first). */
  readonly stopAfterStep?: (step: number) => boolean;
  readonly onProgress?: (p: SaeTrainProgress) => void;
}

export interface SaeTrainProgress {
  /** Steps done. */
  readonly step: number;
  readonly steps: number;
  readonly loss: number;
  readonly mse: number;
  readonly aux: number;
  /** Mean active latents per row of the last batch. */
  readonly l0: number;
  /** Share of latents dead after the step. */
  readonly deadShare: number;
  /** Rows seen, over all passes. */
  readonly tokens: number;
}

export interface SaeTrainResult {
  readonly sae: Sae;
  /** Steps done in total, and by this call. */
  readonly step: number;
  readonly stepsThisRun: number;
  /** True when the run continued from a checkpoint. */
  readonly resumed: boolean;
  /** The last step's progress (undefined when no step ran in this call). */
  readonly last: SaeTrainProgress | undefined;
  /** Wall seconds of this call's steps (reading, forward, backward, Adam, checkpoints). */
  readonly seconds: number;
}

export const SAE_CHECKPOINT_FILE = 'training-checkpoint.safetensors';
/** Held in the checkpoint folder while a run trains there. */
export const SAE_LOCK_FILE = 'training.lock';
const CHECKPOINT_FORMAT = 'steerguard.sae-checkpoint';

interface Settings {
  source: string;
  dIn: number;
  dSae: number;
  k: number;
  batchSize: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  kAux: number;
  auxCoefficient: number;
  deadTokens: number;
  bDecInit: string;
  initRows: number;
  seed: number;
  hookName: string;
  hookLayer: number;
  modelName: string;
}

interface State {
  params: SaeParams<Float32Array>;
  m: SaeParams<Float32Array>;
  v: SaeParams<Float32Array>;
  /** Step after which latent j last fired (0: not since the start). */
  lastFired: Int32Array;
  step: number;
  /** Pass and row within it where the next batch starts; rows seen in all. */
  pass: number;
  row: number;
  tokens: number;
}

const PARAM_NAMES = ['wEnc', 'bEnc', 'wDec', 'bDec'] as const;

function settingsOf(source: ActivationSource, o: SaeTrainOptions): Settings {
  const s: Settings = {
    source: source.id,
    dIn: source.dIn,
    dSae: o.dSae,
    k: o.k,
    batchSize: o.batchSize ?? 1024,
    lr: o.lr ?? 5e-4,
    beta1: o.beta1 ?? 0.9,
    beta2: o.beta2 ?? 0.999,
    eps: o.eps ?? 1e-8,
    kAux: o.kAux ?? Math.max(1, Math.floor(source.dIn / 2)),
    auxCoefficient: o.auxCoefficient ?? 1 / 32,
    deadTokens: o.deadTokens ?? 100_000,
    bDecInit: o.bDecInit ?? 'geometric-median',
    initRows: o.initRows ?? 4096,
    seed: o.seed ?? 0,
    hookName: o.hookName,
    hookLayer: o.hookLayer,
    modelName: o.modelName ?? '',
  };
  const bad = (msg: string): never => {
    throw new OptionError(`SAE training: ${msg}`);
  };
  const posInt = (name: string, v: number): void => {
    if (!Number.isInteger(v) || v < 1) bad(`${name} must be a positive integer, got ${v}`);
  };
  posInt('dSae', s.dSae);
  posInt('k', s.k);
  posInt('batchSize', s.batchSize);
  posInt('kAux', s.kAux);
  posInt('deadTokens', s.deadTokens);
  posInt('initRows', s.initRows);
  if (!Number.isInteger(o.steps) || o.steps < 0) bad(`steps must be a non-negative integer, got ${o.steps}`);
  if (s.k > s.dSae) bad(`k = ${s.k} is larger than the dictionary (dSae = ${s.dSae})`);
  if (!(s.lr > 0 && Number.isFinite(s.lr))) bad(`lr must be a positive number, got ${s.lr}`);
  if (!(s.beta1 >= 0 && s.beta1 < 1)) bad(`beta1 must be in [0, 1), got ${s.beta1}`);
  if (!(s.beta2 >= 0 && s.beta2 < 1)) bad(`beta2 must be in [0, 1), got ${s.beta2}`);
  if (!(s.eps > 0)) bad(`eps must be positive, got ${s.eps}`);
  if (!(s.auxCoefficient >= 0 && Number.isFinite(s.auxCoefficient)))
    bad(`auxCoefficient must be a non-negative number, got ${s.auxCoefficient}`);
  if (!['geometric-median', 'mean', 'zero'].includes(s.bDecInit)) bad(`unknown bDecInit '${s.bDecInit}'`);
  if (o.checkpointEvery !== undefined) posInt('checkpointEvery', o.checkpointEvery);
  return s;
}

/** Train (or resume training) a Top-k SAE on `source` with the backend's dense matmul. */
export async function trainSae(
  backend: Backend,
  source: ActivationSource,
  options: SaeTrainOptions,
): Promise<SaeTrainResult> {
  const s = settingsOf(source, options);
  const dir = options.checkpointDir;
  if (dir === undefined) return await train(backend, source, options, s, undefined);
  mkdirSync(dir, { recursive: true });
  // One trainer per folder: two writing the same checkpoint would each resume the other's state.
  const lock = join(dir, SAE_LOCK_FILE);
  const token = acquireLock(lock, dir);
  try {
    return await train(backend, source, options, s, join(dir, SAE_CHECKPOINT_FILE));
  } finally {
    releaseLock(lock, token);
  }
}

async function train(
  backend: Backend,
  source: ActivationSource,
  options: SaeTrainOptions,
  s: Settings,
  checkpointFile: string | undefined,
): Promise<SaeTrainResult> {
  const { dIn, dSae, batchSize } = s;
  const resumed = checkpointFile !== undefined && existsSync(checkpointFile);
  const state = resumed ? readCheckpoint(checkpointFile, s) : await initialState(source, s);
  const every = options.checkpointEvery ?? 100;

  const product = (
    out: Float32Array,
    x: Float32Array,
    w: Float32Array,
    M: number,
    K: number,
    N: number,
    bias: Float32Array,
  ): void => backend.matmul(out, x, w, M, K, N, bias);
  const grads = zeros(dIn, dSae);
  const dead = new Uint8Array(dSae);
  const deadSteps = Math.ceil(s.deadTokens / batchSize);
  const batch = new Float32Array(batchSize * dIn);
  const startStep = state.step;
  let last: SaeTrainProgress | undefined;

  // The batches, pass after pass, from the row where the state says the next one starts.
  const batches = batchStream(source, batchSize, state.pass, state.row, batch);
  const started = performance.now();
  while (state.step < options.steps) {
    const next = await batches.next();
    if (next.done) throw new SteerguardError(`SAE training: activation source ${source.id} has no rows`);
    [state.pass, state.row] = next.value;

    for (let j = 0; j < dSae; j++) dead[j] = state.step - state.lastFired[j] >= deadSteps ? 1 : 0;
    for (const name of PARAM_NAMES) grads[name].fill(0);
    const result = saeLoss(
      state.params,
      batch,
      batchSize,
      { dIn, dSae, k: s.k, kAux: s.kAux, auxCoefficient: s.auxCoefficient, dead },
      product,
      grads,
    );
    if (!Number.isFinite(result.loss))
      throw new SteerguardError(
        `SAE training: the loss is ${result.loss} at step ${state.step + 1} (non-finite activations, or lr ${s.lr} too high)`,
      );
    removeParallelComponent(grads.wDec, state.params.wDec, dSae, dIn);
    state.step++;
    adamStep(state, grads, s);
    normaliseRows(state.params.wDec, dSae, dIn);
    for (let j = 0; j < dSae; j++) if (result.fired[j]) state.lastFired[j] = state.step;
    state.tokens += batchSize;

    let nDead = 0;
    for (let j = 0; j < dSae; j++) if (state.step - state.lastFired[j] >= deadSteps) nDead++;
    last = {
      step: state.step,
      steps: options.steps,
      loss: result.loss,
      mse: result.mse,
      aux: result.aux,
      l0: result.l0,
      deadShare: nDead / dSae,
      tokens: state.tokens,
    };
    const stop = options.stopAfterStep?.(state.step) === true;
    if (checkpointFile !== undefined && (state.step % every === 0 || state.step === options.steps || stop)) {
      writeCheckpoint(checkpointFile, state, s);
    }
    options.onProgress?.(last);
    if (stop) break;
    // A step is one synchronous block; let signals (Ctrl-C) and I/O have their turn between them.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await batches.return(undefined);

  const sae = new Sae(
    {
      architecture: 'topk',
      dIn,
      dSae,
      k: s.k,
      hookName: s.hookName,
      hookLayer: s.hookLayer,
      modelName: s.modelName,
      applyBDecToInput: true,
    },
    { ...state.params },
  );
  const seconds = (performance.now() - started) / 1000;
  return { sae, step: state.step, stepsThisRun: state.step - startStep, resumed, last, seconds };
}

/**
 * Fills `batch` with the next `batchSize` rows and yields the [pass, row] where the batch after
 * it starts; a pass that ends mid-batch continues with the next pass from its first row.
 */
async function* batchStream(
  source: ActivationSource,
  batchSize: number,
  pass: number,
  row: number,
  batch: Float32Array,
): AsyncGenerator<[number, number], void, undefined> {
  const dIn = source.dIn;
  let filled = 0;
  for (;;) {
    let rowsThisPass = 0;
    for await (const chunk of source.chunks(row)) {
      let off = 0;
      const n = chunk.length / dIn;
      while (off < n) {
        const take = Math.min(n - off, batchSize - filled);
        batch.set(chunk.subarray(off * dIn, (off + take) * dIn), filled * dIn);
        filled += take;
        off += take;
        row += take;
        rowsThisPass += take;
        if (filled === batchSize) {
          filled = 0;
          yield [pass, row];
        }
      }
    }
    if (rowsThisPass === 0 && row === 0) return;
    pass++;
    row = 0;
  }
}

function zeros(dIn: number, dSae: number): SaeParams<Float32Array> {
  return {
    wEnc: new Float32Array(dSae * dIn),
    bEnc: new Float32Array(dSae),
    wDec: new Float32Array(dSae * dIn),
    bDec: new Float32Array(dIn),
  };
}

async function initialState(source: ActivationSource, s: Settings): Promise<State> {
  const { dIn, dSae } = s;
  const params = zeros(dIn, dSae);
  const random = seededRandom(s.seed);
  // Gaussian rows (Box-Muller) scaled to unit norm: random directions.
  for (let i = 0; i < params.wDec.length; i += 2) {
    const u = Math.max(random(), 1e-12);
    const v = random();
    const r = Math.sqrt(-2 * Math.log(u));
    params.wDec[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < params.wDec.length) params.wDec[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  normaliseRows(params.wDec, dSae, dIn);
  params.wEnc.set(params.wDec);
  if (s.bDecInit !== 'zero') {
    const sample = await takeRows(source, s.initRows);
    if (sample.length === 0)
      throw new SteerguardError(`SAE training: activation source ${source.id} has no rows`);
    params.bDec.set(s.bDecInit === 'mean' ? meanRow(sample, dIn) : geometricMedian(sample, dIn));
  }
  return {
    params,
    m: zeros(dIn, dSae),
    v: zeros(dIn, dSae),
    lastFired: new Int32Array(dSae),
    step: 0,
    pass: 0,
    row: 0,
    tokens: 0,
  };
}

function meanRow(x: Float32Array, dIn: number): Float64Array {
  const rows = x.length / dIn;
  const mean = new Float64Array(dIn);
  for (let r = 0; r < rows; r++) for (let i = 0; i < dIn; i++) mean[i] += x[r * dIn + i];
  for (let i = 0; i < dIn; i++) mean[i] /= rows;
  return mean;
}

/** The point minimising the sum of distances to the rows (Weiszfeld's iteration from the mean). */
export function geometricMedian(x: Float32Array, dIn: number, iterations = 50): Float64Array {
  const rows = x.length / dIn;
  let y = meanRow(x, dIn);
  for (let it = 0; it < iterations; it++) {
    const next = new Float64Array(dIn);
    let weights = 0;
    for (let r = 0; r < rows; r++) {
      let d2 = 0;
      for (let i = 0; i < dIn; i++) {
        const d = x[r * dIn + i] - y[i];
        d2 += d * d;
      }
      const w = 1 / Math.max(Math.sqrt(d2), 1e-8);
      weights += w;
      for (let i = 0; i < dIn; i++) next[i] += w * x[r * dIn + i];
    }
    let moved = 0;
    for (let i = 0; i < dIn; i++) {
      next[i] /= weights;
      moved += (next[i] - y[i]) ** 2;
    }
    y = next;
    if (moved < 1e-12) break;
  }
  return y;
}

/** g_j -= (g_j · w_j) w_j for each unit decoder row w_j: steps then keep the norm to first order. */
function removeParallelComponent(g: Float32Array, w: Float32Array, rows: number, width: number): void {
  for (let j = 0; j < rows; j++) {
    const o = j * width;
    let dot = 0;
    for (let i = 0; i < width; i++) dot += g[o + i] * w[o + i];
    if (dot === 0) continue;
    for (let i = 0; i < width; i++) g[o + i] -= dot * w[o + i];
  }
}

function normaliseRows(w: Float32Array, rows: number, width: number): void {
  for (let j = 0; j < rows; j++) {
    const o = j * width;
    let n2 = 0;
    for (let i = 0; i < width; i++) n2 += w[o + i] * w[o + i];
    const inv = n2 > 0 ? 1 / Math.sqrt(n2) : 0;
    for (let i = 0; i < width; i++) w[o + i] *= inv;
  }
}

/** Adam (Kingma & Ba) with bias correction, `state.step` already counting this step. */
function adamStep(state: State, grads: SaeParams<Float32Array>, s: Settings): void {
  const { beta1, beta2, eps, lr } = s;
  const c1 = 1 - beta1 ** state.step;
  const c2 = 1 - beta2 ** state.step;
  for (const name of PARAM_NAMES) {
    const p = state.params[name];
    const g = grads[name];
    const m = state.m[name];
    const v = state.v[name];
    for (let i = 0; i < p.length; i++) {
      const gi = g[i];
      m[i] = beta1 * m[i] + (1 - beta1) * gi;
      v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
      p[i] -= (lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + eps);
    }
  }
}

function writeCheckpoint(file: string, state: State, s: Settings): void {
  const { dIn, dSae } = s;
  const shape = (name: (typeof PARAM_NAMES)[number]): number[] =>
    name === 'wEnc' || name === 'wDec' ? [dSae, dIn] : name === 'bEnc' ? [dSae] : [dIn];
  const tensors: SafetensorsWriteTensor[] = [];
  for (const [prefix, group] of [
    ['', state.params],
    ['adam_m.', state.m],
    ['adam_v.', state.v],
  ] as const)
    for (const name of PARAM_NAMES)
      tensors.push({ name: `${prefix}${name}`, dtype: 'F32', shape: shape(name), data: group[name] });
  tensors.push({ name: 'last_fired', dtype: 'I32', shape: [dSae], data: state.lastFired });
  writeSafetensors(file, tensors, {
    format: CHECKPOINT_FORMAT,
    settings: JSON.stringify(s),
    position: JSON.stringify({ step: state.step, pass: state.pass, row: state.row, tokens: state.tokens }),
  });
}

/** A checkpoint written with settings `s`; FormatError naming the file otherwise. */
function readCheckpoint(file: string, s: Settings): State {
  const header = readSafetensorsHeader(file);
  if (header.metadata.format !== CHECKPOINT_FORMAT)
    throw new FormatError(
      file,
      '__metadata__.format',
      `not an SAE training checkpoint (${header.metadata.format ?? 'missing'})`,
    );
  let saved: Record<string, unknown>;
  let position: { step: number; pass: number; row: number; tokens: number };
  try {
    saved = JSON.parse(header.metadata.settings ?? '') as Record<string, unknown>;
    position = JSON.parse(header.metadata.position ?? '') as typeof position;
  } catch {
    throw new FormatError(file, '__metadata__', 'settings or position is not valid JSON');
  }
  const differ = Object.keys(s).filter((key) => saved[key] !== s[key as keyof Settings]);
  if (differ.length > 0)
    throw new OptionError(
      `${file} was written with different settings (${differ.join(', ')}); train with the same settings to resume, or remove it to start afresh`,
    );
  const read = (name: string, n: number): Float32Array => {
    const t = header.tensors.get(name);
    if (t === undefined) throw new FormatError(file, name, 'missing');
    const data = readSafetensorsTensorF32(t);
    if (data.length !== n) throw new FormatError(file, name, `${data.length} values, expected ${n}`);
    return data;
  };
  const group = (prefix: string): SaeParams<Float32Array> => ({
    wEnc: read(`${prefix}wEnc`, s.dSae * s.dIn),
    bEnc: read(`${prefix}bEnc`, s.dSae),
    wDec: read(`${prefix}wDec`, s.dSae * s.dIn),
    bDec: read(`${prefix}bDec`, s.dIn),
  });
  const lf = header.tensors.get('last_fired');
  if (lf === undefined) throw new FormatError(file, 'last_fired', 'missing');
  const lastFired = readSafetensorsTensorI32(lf);
  if (lastFired.length !== s.dSae) throw new FormatError(file, 'last_fired', `expected ${s.dSae} values`);
  return { params: group(''), m: group('adam_m.'), v: group('adam_v.'), lastFired, ...position };
}
