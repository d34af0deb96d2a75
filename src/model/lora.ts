/**
 * LoRA adapters as the forward pass reads them: each adapted projection W[out, in] acts as
 * W + (alpha/r)·B·A with A[r, in] and B[out, r] (Hu et al. 2021; PEFT's `lora_A` / `lora_B`). The
 * model applies them unmerged (src/model/transformer.ts); src/training/ creates and trains them.
 */
import { OptionError } from '../formats/errors.js';
import type { ModelConfig } from './config.js';

/** The float arrays an adapter can hold: fp32 for inference, fp64 for gradient checks. */
type AdapterFloats = Float32Array | Float64Array;

/** Projections a LoRA adapter can attach to (PEFT's q_proj … down_proj). */
export type LoraTarget = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

export const LORA_TARGETS: readonly LoraTarget[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

/** One adapted projection: A[r, in] and B[out, r]. */
export interface LoraPair<A extends AdapterFloats> {
  readonly a: A;
  readonly b: A;
}

/** Per layer, the pairs of the adapted projections (the same shape holds an adapter's gradients). */
export type LoraLayers<A extends AdapterFloats> = readonly Partial<Record<LoraTarget, LoraPair<A>>>[];

export interface LoraAdapter<A extends AdapterFloats> {
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
export function loraScale(adapter: LoraAdapter<AdapterFloats>): number {
  return adapter.alpha / adapter.rank;
}

/** Checks rank, alpha and target names; returns the targets, typed. */
export function checkLoraOptions(opts: {
  readonly rank: number;
  readonly alpha: number;
  readonly targets: readonly string[];
}): LoraTarget[] {
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

/** Throws unless `adapter` fits `cfg`: an adapter made for another model shape (or a hand-built one with holes) is an error. */
export function checkLoraAdapter(cfg: ModelConfig, adapter: LoraAdapter<AdapterFloats>): void {
  checkLoraOptions(adapter);
  if (adapter.layers.length !== cfg.nLayers)
    throw new OptionError(`the LoRA adapter has ${adapter.layers.length} layers, the model ${cfg.nLayers}`);
  adapter.layers.forEach((layer, l) => {
    for (const t of LORA_TARGETS) {
      const pair = layer[t];
      if (!adapter.targets.includes(t)) {
        if (pair)
          throw new OptionError(`LoRA layer ${l} has a ${t} pair, but ${t} is not one of its targets`);
        continue;
      }
      const { inDim, outDim } = loraShape(cfg, t);
      const want = { a: adapter.rank * inDim, b: outDim * adapter.rank };
      for (const which of ['a', 'b'] as const)
        if (pair?.[which].length !== want[which])
          throw new OptionError(
            `LoRA layer ${l} ${t}.${which} holds ${pair?.[which].length ?? 0} values; this model needs ` +
              `${want[which]} (rank ${adapter.rank}, ${t} is ${outDim} x ${inDim}): an adapter for another model?`,
          );
    }
  });
}
