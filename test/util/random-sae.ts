/** A seeded Top-k SAE with random unit-norm decoder rows, for tests that need one of a given shape. */
import { seededRandom } from '../../src/model/sampling.js';
import { Sae } from '../../src/sae/sae.js';

/** Shape and draw of {@link randomSae}. */
export interface RandomSaeOptions {
  dIn: number;
  dSae: number;
  k: number;
  seed: number;
  /** Block whose `hook_resid_post` the SAE reads. Default 0. */
  hookLayer?: number;
  /** cfg.json's model_name. Default 'test'. */
  modelName?: string;
  /**
   * 'random': W_enc and b_dec (scaled by 0.1) drawn after W_dec; 'tied': W_enc = W_dec and
   * b_dec = 0, so each latent reads its own decoder row. Default 'random'.
   */
  encoder?: 'random' | 'tied';
}

/** Entries uniform in (-1, 1) from seededRandom(seed); W_dec rows scaled to unit norm; b_enc = 0. */
export function randomSae(options: RandomSaeOptions): Sae {
  const { dIn, dSae, k, seed, hookLayer = 0, modelName = 'test', encoder = 'random' } = options;
  const random = seededRandom(seed);
  const w = (n: number): Float32Array => Float32Array.from({ length: n }, () => random() * 2 - 1);
  const wDec = w(dSae * dIn);
  for (let j = 0; j < dSae; j++) {
    let norm = 0;
    for (let i = 0; i < dIn; i++) norm += wDec[j * dIn + i] ** 2;
    for (let i = 0; i < dIn; i++) wDec[j * dIn + i] /= Math.sqrt(norm);
  }
  const tied = encoder === 'tied';
  const wEnc = tied ? wDec.slice() : w(dSae * dIn);
  const bDec = tied ? new Float32Array(dIn) : w(dIn).map((v) => v * 0.1);
  return new Sae(
    {
      architecture: 'topk',
      dIn,
      dSae,
      k,
      hookName: `blocks.${hookLayer}.hook_resid_post`,
      hookLayer,
      modelName,
      applyBDecToInput: true,
    },
    { wEnc, bEnc: new Float32Array(dSae), wDec, bDec },
  );
}
