/**
 * Clamp steering with an SAE latent (O'Brien et al. 2024, "Steering Language Model Refusal with
 * Sparse Autoencoders"): at every selected position of the SAE's hook,
 *
 *   x' = x + (c - f_j(x)) · W_dec[j]
 *
 * where f_j(x) is latent j's activation as the SAE computes it (0 when Top-k or the JumpReLU
 * threshold drops it). Only latent j's share of the reconstruction moves; the SAE's error term
 * x - x_hat stays in the stream, so clamping a latent to its own value is the identity.
 *
 * Shapes: D = d_in (the model's d_model), S = d_sae.
 */
import type { Backend } from '../engine/backend.js';
import { OptionError } from '../formats/errors.js';
import type { Hook, HookName, Positions } from '../hooks/hooks.js';
import { rowSelected } from '../hooks/hooks.js';
import type { Sae } from './sae.js';

/** One latent set to one value. */
export interface LatentClamp {
  /** Latent index, 0 <= feature < d_sae. */
  readonly feature: number;
  /** The value it is set to (finite; 0 switches the latent off). */
  readonly value: number;
}

/** Throws OptionError unless `clamp` names a latent of `sae` and a finite value. */
export function checkClamp(sae: Sae, clamp: LatentClamp): void {
  const { dSae } = sae.config;
  if (!Number.isInteger(clamp.feature) || clamp.feature < 0 || clamp.feature >= dSae)
    throw new OptionError(`SAE feature ${clamp.feature} is not a latent of this SAE (0..${dSae - 1})`);
  if (!Number.isFinite(clamp.value))
    throw new OptionError(`SAE clamp value must be finite, got ${clamp.value}`);
}

/**
 * Latent `feature`'s activation on each of `rows` rows of x[rows, D] (0 where the activation
 * function drops it).
 */
export function latentActivations(
  sae: Sae,
  backend: Backend,
  x: Float32Array,
  rows: number,
  feature: number,
): Float32Array {
  const codes = sae.encode(backend, x, rows);
  const out = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    for (let e = codes.offsets[r]; e < codes.offsets[r + 1]; e++) {
      if (codes.latents[e] === feature) out[r] = codes.values[e];
    }
  }
  return out;
}

/**
 * The hook that clamps `clamp.feature` to `clamp.value` at the SAE's hook point, on the selected
 * positions (default every position, prompt and generated alike, as the paper does).
 */
export function saeClampHook(
  sae: Sae,
  backend: Backend,
  clamp: LatentClamp,
  opts: { positions?: Positions } = {},
): Hook {
  checkClamp(sae, clamp);
  const positions = opts.positions ?? 'all';
  const { dIn, hookName } = sae.config;
  const name = hookName as HookName;
  const dir = sae.weights.wDec.subarray(clamp.feature * dIn, (clamp.feature + 1) * dIn);
  return {
    name,
    fn: (act, ctx) => {
      if (ctx.width !== dIn)
        throw new OptionError(
          `${name}: the SAE reads width ${dIn} but the activation has width ${ctx.width}`,
        );
      const picked: number[] = [];
      for (let r = 0; r < ctx.rows; r++) if (rowSelected(positions, ctx, r)) picked.push(r);
      if (picked.length === 0) return;
      const x = new Float32Array(picked.length * dIn);
      picked.forEach((r, i) => x.set(act.subarray(r * dIn, (r + 1) * dIn), i * dIn));
      const f = latentActivations(sae, backend, x, picked.length, clamp.feature);
      picked.forEach((r, i) => {
        const delta = clamp.value - f[i];
        if (delta === 0) return;
        const o = r * dIn;
        for (let d = 0; d < dIn; d++) act[o + d] += delta * dir[d];
      });
    },
  };
}
