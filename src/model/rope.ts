/**
 * Rotary inverse frequencies of each layer, every scaling folded in, as transformers computes them
 * (modeling_rope_utils.py). Values are rounded to fp32 at the steps where PyTorch rounds them, so the
 * frequencies match Hugging Face's fp32 buffers to the last bit or one ulp.
 */
import type { ModelConfig } from './config.js';
import type { RopeScaling } from './rope-config.js';

/** What the backend's rope kernel takes for one layer. */
export interface RopeFrequencies {
  /** [ropeDim / 2] angle per position of each rotated pair. */
  readonly invFreq: Float32Array;
  /** Multiplier on cos and sin (YaRN's attention factor; 1 otherwise). */
  readonly scale: number;
}

const f = Math.fround;

/** base^(-2i/dim) for i < dim/2: the power in double, rounded once, then fp32 as torch does. */
function basePowers(theta: number, dim: number): Float32Array {
  return Float32Array.from({ length: dim / 2 }, (_, i) => f(f(theta) ** f((2 * i) / dim)));
}

function unscaled(theta: number, dim: number): Float32Array {
  return basePowers(theta, dim).map((p) => f(1 / p));
}

/** transformers' _compute_llama3_parameters; `x / t` with a scalar x is torch's `reciprocal(t) * x`. */
function llama3(inv: Float32Array, s: Extract<RopeScaling, { type: 'llama3' }>): Float32Array {
  const lowWavelen = f(s.originalContext / s.lowFreqFactor);
  const highWavelen = f(s.originalContext / s.highFreqFactor);
  return inv.map((freq) => {
    const wavelen = f(f(1 / freq) * f(2 * Math.PI));
    const scaled = wavelen > lowWavelen ? f(freq / f(s.factor)) : freq;
    if (wavelen < highWavelen || wavelen > lowWavelen) return scaled;
    const smooth = f(
      f(f(f(1 / wavelen) * f(s.originalContext)) - f(s.lowFreqFactor)) /
        f(s.highFreqFactor - s.lowFreqFactor),
    );
    return f(f(f(f(1 - smooth) * scaled) / f(s.factor)) + f(smooth * scaled));
  });
}

/** transformers' _compute_yarn_parameters (the attention factor is resolved in config.ts). */
function yarn(theta: number, dim: number, s: Extract<RopeScaling, { type: 'yarn' }>): Float32Array {
  const correctionDim = (rotations: number) =>
    (dim * Math.log(s.originalContext / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = correctionDim(s.betaFast);
  let high = correctionDim(s.betaSlow);
  if (s.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // transformers' guard against a zero-width ramp
  return basePowers(theta, dim).map((p, i) => {
    const extrapolation = f(1 / p);
    const interpolation = f(1 / f(f(s.factor) * p));
    const ramp = Math.min(1, Math.max(0, f(f(i - low) / f(high - low))));
    const keep = f(1 - ramp); // share of the unscaled frequency
    return f(f(interpolation * f(1 - keep)) + f(extrapolation * keep));
  });
}

/** The inverse frequencies and cos/sin multiplier of one layer. */
export function layerRopeFrequencies(theta: number, dim: number, scaling: RopeScaling): RopeFrequencies {
  switch (scaling.type) {
    case 'default':
      return { invFreq: unscaled(theta, dim), scale: 1 };
    case 'linear':
      return { invFreq: unscaled(theta, dim).map((v) => f(v / f(scaling.factor))), scale: 1 };
    case 'llama3':
      return { invFreq: llama3(unscaled(theta, dim), scaling), scale: 1 };
    case 'yarn':
      return { invFreq: yarn(theta, dim, scaling), scale: scaling.attentionFactor };
    case 'freq_factors':
      // llama.cpp divides each frequency by its factor
      return { invFreq: unscaled(theta, dim).map((v, i) => f(v / scaling.factors[i])), scale: 1 };
  }
}

const byConfig = new WeakMap<ModelConfig, readonly RopeFrequencies[]>();

/** Per-layer frequencies of a model, computed once per config object. */
export function ropeFrequencies(cfg: ModelConfig): readonly RopeFrequencies[] {
  let table = byConfig.get(cfg);
  if (!table) {
    table = cfg.ropeTheta.map((theta, l) => layerRopeFrequencies(theta, cfg.ropeDim, cfg.ropeScaling[l]));
    byConfig.set(cfg, table);
  }
  return table;
}
