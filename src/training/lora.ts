/**
 * LoRA adapters for training: new ones initialised as PEFT does, and zero buffers shaped like one.
 * The adapter type, its shapes and checks live with the forward pass that applies it
 * (src/model/lora.ts) and are re-exported here.
 */
import type { ModelConfig } from '../model/config.js';
import {
  type LoraAdapter,
  type LoraLayers,
  type LoraPair,
  type LoraTarget,
  checkLoraOptions,
  loraShape,
} from '../model/lora.js';
export {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraLayers,
  type LoraPair,
  type LoraTarget,
  checkLoraAdapter,
  checkLoraOptions,
  loraScale,
  loraShape,
} from '../model/lora.js';
import { seededRandom } from '../model/sampling.js';
import type { Floats } from './kernels.js';

export interface LoraOptions {
  readonly rank: number;
  readonly alpha: number;
  readonly targets: readonly string[];
  /** Seed of A's initialisation. */
  readonly seed: number;
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
