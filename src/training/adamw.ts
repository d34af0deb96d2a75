/**
 * AdamW (Loshchilov & Hutter 2019) over a LoRA adapter's A and B, as torch.optim.AdamW computes it:
 * decoupled weight decay p ← p·(1 − lr·λ), then p ← p − lr·m̂ / (√v̂ + ε) with bias-corrected moments.
 */
import { OptionError, SteerguardError } from '../formats/errors.js';
import type { Floats } from './kernels.js';
import type { LoraAdapter, LoraLayers, LoraTarget } from './lora.js';

export interface AdamWOptions {
  /** Learning rate (the default of every `step`). */
  readonly lr: number;
  /** Default 0.9. */
  readonly beta1?: number;
  /** Default 0.999. */
  readonly beta2?: number;
  /** Default 1e-8. */
  readonly eps?: number;
  /** λ, decoupled weight decay. Default 0.01, torch's. */
  readonly weightDecay?: number;
}

function checkRate(lr: number): void {
  if (!(Number.isFinite(lr) && lr > 0))
    throw new OptionError(`learning rate must be a finite number > 0, got ${lr}`);
}

/** What a checkpoint keeps of an AdamW: its step count and both moments, shaped like the adapter. */
export interface AdamWState {
  readonly steps: number;
  readonly m: LoraLayers<Float64Array>;
  readonly v: LoraLayers<Float64Array>;
}

/** One optimiser per adapter: it keeps the two moments of every parameter. */
export class AdamW<A extends Floats> {
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly weightDecay: number;
  private readonly m: LoraLayers<Float64Array>;
  private readonly v: LoraLayers<Float64Array>;
  /** Steps taken so far. */
  steps = 0;

  constructor(
    private readonly adapter: LoraAdapter<A>,
    private readonly opts: AdamWOptions,
  ) {
    checkRate(opts.lr);
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    for (const [name, b] of [
      ['beta1', this.beta1],
      ['beta2', this.beta2],
    ] as const)
      if (!(b >= 0 && b < 1)) throw new OptionError(`AdamW ${name} must be in [0, 1), got ${b}`);
    if (!(this.eps > 0 && Number.isFinite(this.eps)))
      throw new OptionError(`AdamW eps must be > 0, got ${this.eps}`);
    if (!(this.weightDecay >= 0 && Number.isFinite(this.weightDecay)))
      throw new OptionError(`AdamW weight decay must be >= 0, got ${this.weightDecay}`);
    const zeros = () =>
      adapter.layers.map((layer) => {
        const out: Partial<Record<LoraTarget, { a: Float64Array; b: Float64Array }>> = {};
        for (const t of adapter.targets)
          out[t] = { a: new Float64Array(layer[t]!.a.length), b: new Float64Array(layer[t]!.b.length) };
        return out;
      });
    this.m = zeros();
    this.v = zeros();
  }

  /** The step count and the moments themselves (not copies), for a checkpoint. */
  get state(): AdamWState {
    return { steps: this.steps, m: this.m, v: this.v };
  }

  /** Continues from a checkpoint's state: its moments are copied in, their shapes checked. */
  restore(state: AdamWState): void {
    if (!(Number.isInteger(state.steps) && state.steps >= 0))
      throw new OptionError(`AdamW state: steps must be an integer >= 0, got ${state.steps}`);
    for (const [name, from, to] of [
      ['m', state.m, this.m],
      ['v', state.v, this.v],
    ] as const) {
      if (from.length !== to.length)
        throw new OptionError(`AdamW state: ${name} has ${from.length} layers, the adapter ${to.length}`);
      to.forEach((layer, l) => {
        for (const t of this.adapter.targets)
          for (const which of ['a', 'b'] as const) {
            const src = from[l][t]?.[which];
            if (src?.length !== layer[t]![which].length)
              throw new OptionError(
                `AdamW state: layer ${l} ${t}.${which}.${name} does not match the adapter`,
              );
            layer[t]![which].set(src);
          }
      });
    }
    this.steps = state.steps;
  }

  /**
   * Updates the adapter in place from `grads` (shaped like it). A non-finite gradient is an error
   * and nothing is changed.
   */
  step(grads: LoraLayers<A>, lr = this.opts.lr): void {
    checkRate(lr);
    if (grads.length !== this.adapter.layers.length)
      throw new OptionError(
        `gradients for ${grads.length} layers, the adapter has ${this.adapter.layers.length}`,
      );
    grads.forEach((layer, l) => {
      for (const t of this.adapter.targets)
        for (const which of ['a', 'b'] as const) {
          const g = layer[t]?.[which];
          if (!g || g.length !== this.adapter.layers[l][t]![which].length)
            throw new OptionError(
              `layer ${l} ${t}.${which}: the gradient does not match the adapter's shape`,
            );
          if (!g.every(Number.isFinite))
            throw new SteerguardError(`layer ${l} ${t}.${which}: the gradient is not finite; no step taken`);
        }
    });
    this.steps++;
    const c1 = 1 - this.beta1 ** this.steps;
    const c2 = 1 - this.beta2 ** this.steps;
    grads.forEach((layer, l) => {
      for (const t of this.adapter.targets)
        for (const which of ['a', 'b'] as const) {
          const p = this.adapter.layers[l][t]![which];
          const g = layer[t]![which];
          const m = this.m[l][t]![which];
          const v = this.v[l][t]![which];
          for (let i = 0; i < p.length; i++) {
            m[i] = this.beta1 * m[i] + (1 - this.beta1) * g[i];
            v[i] = this.beta2 * v[i] + (1 - this.beta2) * g[i] * g[i];
            p[i] =
              p[i] * (1 - lr * this.weightDecay) - (lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + this.eps);
          }
        }
    });
  }
}
