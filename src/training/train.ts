/**
 * LoRA fine-tuning: epochs over seeded shuffles of the training sequences, `batch` sequences per
 * forward/backward call, `gradAccum` calls per optimiser step, AdamW with a linear warm-up and a
 * cosine decay, a held-out loss after every epoch, and checkpoints from which a run resumes bit
 * for bit (the adapter, both AdamW moments and the step; the data order is a function of the seed
 * and the epoch, so nothing else needs keeping).
 *
 * A step's gradient is that of the mean cross-entropy over all answer tokens of its sequences:
 * each call's mean gradient is weighted by its share of the step's answer tokens, so `batch` 4
 * and `batch` 2 with `gradAccum` 2 take the same step up to rounding.
 */
import { existsSync } from 'node:fs';
import { FormatError, OptionError, SteerguardError } from '../formats/errors.js';
import {
  type SafetensorsWriteTensor,
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  readSafetensorsTensorI32,
  writeSafetensors,
} from '../formats/safetensors.js';
import type { ModelConfig } from '../model/config.js';
import type { LayerWeights, ModelWeights } from '../model/weights.js';
import { AdamW } from './adamw.js';
import { type TrainingSequence, loraLoss, loraLossAndGradients } from './backward.js';
import type { TrainingKernels } from './kernels.js';
import {
  type LoraAdapter,
  type LoraLayers,
  type LoraPair,
  type LoraTarget,
  LORA_TARGETS,
  checkLoraAdapter,
  checkLoraOptions,
  createLora,
  loraScale,
  loraShape,
  zeroLoraLayers,
} from './lora.js';
import { seededRandom } from '../model/sampling.js';

export interface LoraTrainOptions {
  readonly targets: readonly string[];
  readonly rank: number;
  readonly alpha: number;
  readonly epochs: number;
  /** Peak learning rate. */
  readonly lr: number;
  /** Sequences per forward/backward call (default 1). */
  readonly batch?: number;
  /** Calls per optimiser step (default 1). */
  readonly gradAccum?: number;
  /** Steps of linear warm-up to `lr` (default 0). */
  readonly warmup?: number;
  /** AdamW's decoupled weight decay (default 0.01, torch's). */
  readonly weightDecay?: number;
  /** Share of the sequences held out for the validation loss (default 0: none). */
  readonly valSplit?: number;
  /** Seed of the adapter's initialisation, the split and each epoch's order (default 0). */
  readonly seed?: number;
  /** Keep one block's activations at a time and recompute the rest in the backward. */
  readonly recompute?: boolean;
  /** Checkpoint file; none: no checkpoints. */
  readonly checkpointFile?: string;
  /** Steps between checkpoints (default: one per epoch); the last step and a stop are always saved. */
  readonly checkpointEvery?: number;
  /** Continue from `checkpointFile` (which must exist and match these options and data). */
  readonly resume?: boolean;
  /**
   * Adapters that are on in every forward pass and never trained (a security vector, Zhou et al.
   * 2024): they are merged into a copy of the weights they adapt (`withFrozenAdapters`), so no
   * gradient is computed for them and the model's own weights are left as they were.
   */
  readonly frozenAdapters?: readonly LoraAdapter<Float32Array>[];
  /** Checked after each step: true stops the run there (after writing the checkpoint). */
  readonly stopAfterStep?: () => boolean;
  readonly onStep?: (report: StepReport) => void;
  readonly onValidation?: (report: ValidationReport) => void;
}

export interface StepReport {
  /** 1-based. */
  readonly step: number;
  readonly steps: number;
  /** 1-based. */
  readonly epoch: number;
  readonly lr: number;
  /** Mean cross-entropy (nats) over the step's answer tokens. */
  readonly loss: number;
  readonly answerTokens: number;
  /** All tokens the step ran forward and backward. */
  readonly tokens: number;
  /** Wall-clock seconds of the step. */
  readonly seconds: number;
}

export interface ValidationReport {
  readonly step: number;
  readonly epoch: number;
  /** Mean cross-entropy over the held-out sequences' answer tokens. */
  readonly loss: number;
  readonly answerTokens: number;
}

export interface TrainingLog {
  readonly steps: StepReport[];
  readonly validation: ValidationReport[];
}

export interface LoraTrainResult {
  readonly adapter: LoraAdapter<Float32Array>;
  readonly log: TrainingLog;
  /** Steps done in all (this run and the ones it resumed). */
  readonly step: number;
  readonly steps: number;
  readonly finished: boolean;
  readonly resumedFrom?: number;
  readonly trainSequences: number;
  readonly valSequences: number;
}

const CHECKPOINT_FORMAT = 'steerguard.lora-checkpoint';

/**
 * The learning rate of step `step` (1-based) of `steps`: linear warm-up over the first `warmup`
 * steps (lr·step/warmup), then a cosine from lr towards 0, lr·(1 + cos(π·p))/2 with
 * p = (step − warmup − 1)/(steps − warmup), so the first step after warm-up has the full rate and
 * the last one a rate above 0.
 */
export function scheduledLr(step: number, steps: number, warmup: number, lr: number): number {
  if (step <= warmup) return (lr * step) / warmup;
  const p = (step - warmup - 1) / (steps - warmup);
  return (lr * (1 + Math.cos(Math.PI * p))) / 2;
}

function positiveInteger(name: string, v: number): void {
  if (!(Number.isInteger(v) && v >= 1)) throw new OptionError(`${name} must be an integer >= 1, got ${v}`);
}

/** A seeded shuffle (Fisher–Yates). */
function shuffled(items: readonly number[], seed: number): number[] {
  const out = [...items];
  const random = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** FNV-1a over the sequences' tokens and masks: a checkpoint is only resumed on the same data. */
function dataFingerprint(seqs: readonly TrainingSequence[]): string {
  let h = 0x811c9dc5;
  const mix = (x: number) => {
    h ^= x & 0xffff;
    h = Math.imul(h, 0x01000193);
    h ^= x >>> 16;
    h = Math.imul(h, 0x01000193);
  };
  for (const s of seqs) {
    mix(s.tokens.length);
    for (let t = 0; t < s.tokens.length; t++) mix(s.tokens[t] * 2 + (s.answer[t] ? 1 : 0));
  }
  return `${seqs.length}:${(h >>> 0).toString(16)}`;
}

const answerCount = (s: TrainingSequence) => s.answer.reduce((n, a) => n + (a ? 1 : 0), 0);

/** Float64 moments stored exactly, as their bit patterns in I32 pairs (the reader here widens F64 to f32). */
function f64AsI32(a: Float64Array): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset, a.length * 2);
}

/** Trains a LoRA adapter on `sequences` of a frozen fp32 model. */
export async function trainLora(
  cfg: ModelConfig,
  weights: ModelWeights,
  kernels: TrainingKernels<Float32Array>,
  sequences: readonly TrainingSequence[],
  opts: LoraTrainOptions,
): Promise<LoraTrainResult> {
  const targets = checkLoraOptions(opts);
  positiveInteger('epochs', opts.epochs);
  const batch = opts.batch ?? 1;
  const gradAccum = opts.gradAccum ?? 1;
  const warmup = opts.warmup ?? 0;
  const seed = opts.seed ?? 0;
  const valSplit = opts.valSplit ?? 0;
  positiveInteger('batch', batch);
  positiveInteger('gradAccum', gradAccum);
  if (!(Number.isInteger(warmup) && warmup >= 0))
    throw new OptionError(`warmup must be an integer >= 0, got ${warmup}`);
  if (!(valSplit >= 0 && valSplit < 1)) throw new OptionError(`valSplit must be in [0, 1), got ${valSplit}`);
  if (!(Number.isFinite(opts.lr) && opts.lr > 0))
    throw new OptionError(`learning rate must be a finite number > 0, got ${opts.lr}`);
  if (opts.checkpointEvery !== undefined) positiveInteger('checkpointEvery', opts.checkpointEvery);
  if (sequences.length === 0) throw new OptionError('there are no training sequences');
  const frozen = opts.frozenAdapters ?? [];
  const base = frozen.length > 0 ? withFrozenAdapters(cfg, weights, frozen) : weights;

  // The split, then each epoch's order, from the seed.
  const all = shuffled(
    sequences.map((_, i) => i),
    seed,
  );
  const nVal = valSplit > 0 ? Math.max(1, Math.round(valSplit * sequences.length)) : 0;
  const valIdx = all.slice(0, nVal);
  const trainIdx = all.slice(nVal).sort((a, b) => a - b);
  if (trainIdx.length === 0)
    throw new OptionError(`valSplit ${valSplit} leaves no training sequence of ${sequences.length}`);
  const perStep = batch * gradAccum;
  const stepsPerEpoch = Math.ceil(trainIdx.length / perStep);
  const steps = stepsPerEpoch * opts.epochs;
  if (warmup >= steps)
    throw new OptionError(`warmup of ${warmup} steps leaves none of the ${steps} steps for the schedule`);
  const checkpointEvery = opts.checkpointEvery ?? stepsPerEpoch;
  const orders = new Map<number, number[]>();
  const orderOf = (epoch: number) => {
    let o = orders.get(epoch);
    if (!o) orders.set(epoch, (o = shuffled(trainIdx, (seed ^ 0x9e3779b9) + epoch * 7919)));
    return o;
  };

  const adapter = createLora(
    cfg,
    { rank: opts.rank, alpha: opts.alpha, targets, seed },
    (n) => new Float32Array(n),
  );
  const optimizer = new AdamW(adapter, { lr: opts.lr, weightDecay: opts.weightDecay });
  const settings = {
    format: 1,
    targets: targets.join(','),
    rank: opts.rank,
    alpha: opts.alpha,
    epochs: opts.epochs,
    lr: opts.lr,
    batch,
    gradAccum,
    warmup,
    weightDecay: opts.weightDecay ?? 0.01,
    valSplit,
    seed,
    data: dataFingerprint(sequences),
    model: `${cfg.arch}:${cfg.nLayers}x${cfg.dModel}`,
    ...(frozen.length > 0 ? { frozen: frozen.map(adapterFingerprint).join(',') } : {}),
  };
  const log: TrainingLog = { steps: [], validation: [] };
  let step = 0;
  let resumedFrom: number | undefined;
  const file = opts.checkpointFile;
  if (opts.resume) {
    if (!file) throw new OptionError('resume needs a checkpoint file');
    if (!existsSync(file)) throw new OptionError(`cannot resume: ${file} does not exist`);
    const saved = readCheckpoint(cfg, file, settings, adapter, optimizer);
    step = saved.step;
    log.steps.push(...saved.log.steps);
    log.validation.push(...saved.log.validation);
    resumedFrom = step;
  }

  const validate = (epoch: number) => {
    if (valIdx.length === 0) return;
    let sum = 0;
    let n = 0;
    for (let i = 0; i < valIdx.length; i += batch) {
      const seqs = valIdx.slice(i, i + batch).map((j) => sequences[j]);
      const count = seqs.reduce((a, s) => a + answerCount(s), 0);
      sum += loraLoss(cfg, base, adapter, seqs, kernels) * count;
      n += count;
    }
    const report = { step, epoch, loss: sum / n, answerTokens: n };
    log.validation.push(report);
    opts.onValidation?.(report);
  };
  const save = () => {
    if (file) writeCheckpoint(file, settings, adapter, optimizer, step, log);
  };

  const grads = zeroLoraLayers(cfg, opts.rank, targets, (n) => new Float32Array(n));
  while (step < steps) {
    const epoch = Math.floor(step / stepsPerEpoch);
    const j = step % stepsPerEpoch;
    const stepIdx = orderOf(epoch).slice(j * perStep, (j + 1) * perStep);
    const started = performance.now();
    const stepSeqs = stepIdx.map((i) => sequences[i]);
    const total = stepSeqs.reduce((a, s) => a + answerCount(s), 0);
    for (const layer of grads) for (const t of targets) for (const g of Object.values(layer[t]!)) g.fill(0);
    let loss = 0;
    for (let c = 0; c < stepSeqs.length; c += batch) {
      const call = stepSeqs.slice(c, c + batch);
      const res = loraLossAndGradients(cfg, base, adapter, call, kernels, { recompute: opts.recompute });
      const share = res.answerTokens / total;
      loss += res.loss * share;
      accumulate(grads, res.grads, targets, share);
    }
    const lr = scheduledLr(step + 1, steps, warmup, opts.lr);
    optimizer.step(grads, lr);
    step++;
    const report: StepReport = {
      step,
      steps,
      epoch: epoch + 1,
      lr,
      loss,
      answerTokens: total,
      tokens: stepSeqs.reduce((a, s) => a + s.tokens.length, 0),
      seconds: (performance.now() - started) / 1000,
    };
    log.steps.push(report);
    opts.onStep?.(report);
    const epochDone = step % stepsPerEpoch === 0;
    if (epochDone) validate(epoch + 1);
    const stop = step < steps && (opts.stopAfterStep?.() ?? false);
    if (step % checkpointEvery === 0 || step === steps || stop) save();
    if (stop) break;
    // Let signals (Ctrl-C) and output through between steps.
    await new Promise((r) => setImmediate(r));
  }
  return {
    adapter,
    log,
    step,
    steps,
    finished: step === steps,
    resumedFrom,
    trainSequences: trainIdx.length,
    valSequences: valIdx.length,
  };
}

const WEIGHT_OF: Record<LoraTarget, 'wq' | 'wk' | 'wv' | 'wo' | 'wGate' | 'wUp' | 'wDown'> = {
  q: 'wq',
  k: 'wk',
  v: 'wv',
  o: 'wo',
  gate: 'wGate',
  up: 'wUp',
  down: 'wDown',
};

/**
 * The weights with each adapter merged in, `W + (alpha/r)·B·A` summed in double and rounded to
 * fp32 once per entry: the forward of the result is that of the model with the adapters on. Only
 * the adapted matrices are copied; `weights` is not changed. Quantized matrices are an error
 * (training loads the model in fp32), and so is an adapter that does not fit the model.
 */
export function withFrozenAdapters(
  cfg: ModelConfig,
  weights: ModelWeights,
  adapters: readonly LoraAdapter<Float32Array>[],
): ModelWeights {
  for (const a of adapters) checkLoraAdapter(cfg, a);
  const layers = weights.layers.map((layer, l) => {
    const merged: LayerWeights = { ...layer };
    for (const t of LORA_TARGETS) {
      const using = adapters.filter((a) => a.targets.includes(t));
      if (using.length === 0) continue;
      const w = layer[WEIGHT_OF[t]];
      if (!(w instanceof Float32Array))
        throw new OptionError(`a frozen adapter needs fp32 weights; layer ${l} ${t} is quantized`);
      const { inDim, outDim } = loraShape(cfg, t);
      const out = new Float32Array(w.length);
      const row = new Float64Array(inDim);
      for (let o = 0; o < outDim; o++) {
        for (let i = 0; i < inDim; i++) row[i] = w[o * inDim + i];
        for (const a of using) {
          const { a: A, b: B } = a.layers[l][t]!;
          const s = loraScale(a);
          for (let r = 0; r < a.rank; r++) {
            const c = s * B[o * a.rank + r];
            if (c === 0) continue;
            for (let i = 0; i < inDim; i++) row[i] += c * A[r * inDim + i];
          }
        }
        for (let i = 0; i < inDim; i++) out[o * inDim + i] = row[i];
      }
      merged[WEIGHT_OF[t]] = out;
    }
    return merged;
  });
  return { ...weights, layers };
}

/** FNV-1a over an adapter's shape and values: a checkpoint is only resumed with the same frozen adapters. */
function adapterFingerprint(adapter: LoraAdapter<Float32Array>): string {
  let h = 0x811c9dc5;
  const mix = (x: number) => {
    h ^= x;
    h = Math.imul(h, 0x01000193);
  };
  mix(adapter.rank);
  mix(Math.round(adapter.alpha * 1e6));
  for (const layer of adapter.layers)
    for (const t of adapter.targets)
      for (const p of [layer[t]!.a, layer[t]!.b]) {
        const bits = new Int32Array(p.buffer, p.byteOffset, p.length);
        for (let i = 0; i < bits.length; i++) mix(bits[i]);
      }
  return `${adapter.targets.join('+')}:r${adapter.rank}:${(h >>> 0).toString(16)}`;
}

function accumulate(
  into: LoraLayers<Float32Array>,
  add: LoraLayers<Float32Array>,
  targets: readonly LoraTarget[],
  share: number,
): void {
  into.forEach((layer, l) => {
    for (const t of targets)
      for (const which of ['a', 'b'] as const) {
        const to = layer[t]![which];
        const from = add[l][t]![which];
        for (let i = 0; i < to.length; i++) to[i] += share * from[i];
      }
  });
}

type Settings = Record<string, string | number>;

function writeCheckpoint(
  file: string,
  settings: Settings,
  adapter: LoraAdapter<Float32Array>,
  optimizer: AdamW<Float32Array>,
  step: number,
  log: TrainingLog,
): void {
  const tensors: SafetensorsWriteTensor[] = [];
  const { m, v, steps } = optimizer.state;
  adapter.layers.forEach((layer, l) => {
    for (const t of adapter.targets)
      for (const which of ['a', 'b'] as const) {
        const p = layer[t]![which];
        tensors.push({ name: `lora.${l}.${t}.${which}`, dtype: 'F32', shape: [p.length], data: p });
        tensors.push({
          name: `adam_m.${l}.${t}.${which}`,
          dtype: 'I32',
          shape: [p.length, 2],
          data: f64AsI32(m[l][t]![which]),
        });
        tensors.push({
          name: `adam_v.${l}.${t}.${which}`,
          dtype: 'I32',
          shape: [p.length, 2],
          data: f64AsI32(v[l][t]![which]),
        });
      }
  });
  writeSafetensors(file, tensors, {
    format: CHECKPOINT_FORMAT,
    settings: JSON.stringify(settings),
    position: JSON.stringify({ step, adamSteps: steps }),
    log: JSON.stringify(log),
  });
}

function readCheckpoint(
  cfg: ModelConfig,
  file: string,
  settings: Settings,
  adapter: LoraAdapter<Float32Array>,
  optimizer: AdamW<Float32Array>,
): { step: number; log: TrainingLog } {
  const header = readSafetensorsHeader(file);
  if (header.metadata.format !== CHECKPOINT_FORMAT)
    throw new FormatError(
      file,
      '__metadata__.format',
      `not a LoRA training checkpoint (${header.metadata.format ?? 'missing'})`,
    );
  let saved: Settings;
  let position: { step: number; adamSteps: number };
  let log: TrainingLog;
  try {
    saved = JSON.parse(header.metadata.settings ?? '') as Settings;
    position = JSON.parse(header.metadata.position ?? '') as typeof position;
    log = JSON.parse(header.metadata.log ?? '') as TrainingLog;
  } catch {
    throw new FormatError(file, '__metadata__', 'settings, position or log is not valid JSON');
  }
  // Both ways: a run with frozen adapters is not resumed without them, nor the other way round.
  const differ = [...new Set([...Object.keys(settings), ...Object.keys(saved)])].filter(
    (k) => saved[k] !== settings[k],
  );
  if (differ.length > 0)
    throw new OptionError(
      `${file} was written with other settings or data (${differ.join(', ')}); resume with the same ones, or remove it to start afresh`,
    );
  const tensor = (name: string) => {
    const info = header.tensors.get(name);
    if (!info) throw new FormatError(file, name, 'missing');
    return info;
  };
  const m = zeroLoraLayers(cfg, adapter.rank, adapter.targets, (n) => new Float64Array(n));
  const v = zeroLoraLayers(cfg, adapter.rank, adapter.targets, (n) => new Float64Array(n));
  adapter.layers.forEach((layer, l) => {
    for (const t of adapter.targets)
      for (const which of ['a', 'b'] as const) {
        const p: LoraPair<Float32Array> = layer[t]!;
        const data = readSafetensorsTensorF32(tensor(`lora.${l}.${t}.${which}`));
        if (data.length !== p[which].length)
          throw new FormatError(
            file,
            `lora.${l}.${t}.${which}`,
            `${data.length} values, expected ${p[which].length}`,
          );
        p[which].set(data);
        for (const [name, into] of [
          ['adam_m', m],
          ['adam_v', v],
        ] as const) {
          const bits = readSafetensorsTensorI32(tensor(`${name}.${l}.${t}.${which}`));
          if (bits.length !== 2 * p[which].length)
            throw new FormatError(
              file,
              `${name}.${l}.${t}.${which}`,
              `expected ${2 * p[which].length} values`,
            );
          // A copy: the tensor's bytes need not be 8-byte aligned in the file.
          into[l][t]![which].set(new Float64Array(Int32Array.from(bits).buffer));
        }
      }
  });
  optimizer.restore({ steps: position.adamSteps, m, v });
  if (!Number.isFinite(position.step)) throw new SteerguardError(`${file}: no step recorded`);
  return { step: position.step, log };
}
