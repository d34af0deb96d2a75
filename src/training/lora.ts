/**
 * LoRA adapters: each adapted projection W[out, in] acts as W + (alpha/r)·B·A with A[r, in] and
 * B[out, r] trained and W frozen (Hu et al. 2021; PEFT's `lora_A` / `lora_B`).
 */
import { OptionError } from '../formats/errors.js';
import type { ModelConfig } from '../model/config.js';
import { seededRandom } from '../model/sampling.js';
import type { Floats } from './kernels.js';

/** Projections a LoRA adapter can attach to (PEFT's q_proj … down_proj). */
export type LoraTarget = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

export const LORA_TARGETS: readonly LoraTarget[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

/** One adapted projection: A[r, in] and B[out, r]. */
export interface LoraPair<A extends Floats> {
  readonly a: A;
  readonly b: A;
}

/** Per layer, the pairs of the adapted projections (the same shape holds an adapter's gradients). */
export type LoraLayers<A extends Floats> = readonly Partial<Record<LoraTarget, LoraPair<A>>>[];

export interface LoraAdapter<A extends Floats> {
  /** r: rows of A, columns of B. */
  readonly rank: number;
  readonly alpha: number;
  readonly targets: readonly LoraTarget[];
  readonly layers: LoraLayers<A>;
}

/** (in, out) features of a target projection. */
export function loraShape(cfg: ModelConfig, target: LoraTarget): { inDim: number; outDim: number } {
  const { dModel: D, nHeads: H, nKvHeads: G, headDim: E, ffnDim: F } = cfg;
  switch (target) {
    case 'q':
      return { inDim: D, outDim: H * E };
    case 'k':
    case 'v':
      return { inDim: D, outDim: G * E };
    case 'o':
      return { inDim: H * E, outDim: D };
    case 'gate':
    case 'up':
      return { inDim: D, outDim: F };
    case 'down':
      return { inDim: F, outDim: D };
  }
}

/** alpha / r, the factor on B·A. */
export function loraScale(adapter: LoraAdapter<Floats>): number {
  return adapter.alpha / adapter.rank;
}

export interface LoraOptions {
  readonly rank: number;
  readonly alpha: number;
  readonly targets: readonly string[];
  /** Seed of A's initialisation. */
  readonly seed: number;
}

/** Checks rank, alpha and target names; returns the targets, typed. */
export function checkLoraOptions(opts: Omit<LoraOptions, 'seed'>): LoraTarget[] {
  if (!(Number.isInteger(opts.rank) && opts.rank >= 1))
    throw new OptionError(`LoRA rank must be an integer >= 1, got ${opts.rank}`);
  if (!Number.isFinite(opts.alpha) || opts.alpha === 0)
    throw new OptionError(`LoRA alpha must be a finite non-zero number, got ${opts.alpha}`);
  if (opts.targets.length === 0) throw new OptionError('LoRA needs at least one target');
  const seen = new Set<string>();
  for (const t of opts.targets) {
    if (!(LORA_TARGETS as readonly string[]).includes(t))
      throw new OptionError(`unknown LoRA target ${JSON.stringify(t)} (known: ${LORA_TARGETS.join(', ')})`);
    if (seen.has(t)) throw new OptionError(`LoRA target ${JSON.stringify(t)} is given twice`);
    seen.add(t);
  }
  return opts.targets as LoraTarget[];
}

/** Buffers of zeros shaped like an adapter of `cfg` (for its gradients or optimiser moments). */
export function zeroLoraLayers<A extends Floats>(
  cfg: ModelConfig,
  rank: number,
  targets: readonly LoraTarget[],
  alloc: (n: number) => A,
): LoraLayers<A> {
  return Array.from({ length: cfg.nLayers }, () => {
    const layer: Partial<Record<LoraTarget, LoraPair<A>>> = {};
    for (const t of targets) {
      const { inDim, outDim } = loraShape(cfg, t);
      layer[t] = { a: alloc(rank * inDim), b: alloc(outDim * rank) };
    }
    return layer;
  });
}

/**
 * A new adapter initialised as PEFT does: A uniform in ±1/sqrt(in) (kaiming_uniform_ with a = √5),
 * B zero, so the adapted model starts as the base model.
 */
export function createLora<A extends Floats>(
  cfg: ModelConfig,
  opts: LoraOptions,
  alloc: (n: number) => A,
): LoraAdapter<A> {
  const targets = checkLoraOptions(opts);
  const layers = zeroLoraLayers(cfg, opts.rank, targets, alloc);
  const random = seededRandom(opts.seed);
  for (const layer of layers)
    for (const t of targets) {
      const bound = 1 / Math.sqrt(loraShape(cfg, t).inDim);
      const a = layer[t]!.a;
      for (let i = 0; i < a.length; i++) a[i] = (2 * random() - 1) * bound;
    }
  return { rank: opts.rank, alpha: opts.alpha, targets, layers };
}
