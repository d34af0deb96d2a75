/**
 * Finding the SAE latents to steer refusal with, two ways:
 *
 * 1. Refusal tokens (O'Brien et al. 2024): latents active on the first tokens of the model's own
 *    refusals and not on the same positions of its other replies. A latent's score is its mean
 *    activation there minus its mean activation on the contrast rows (zeros included), so a latent
 *    that fires on every reply scores nothing.
 * 2. The concept monitor: latents whose activation at the last prompt token correlates (Pearson)
 *    with the monitor's score over prompts, harmful and harmless together.
 *
 * Both read one `SparseCodes` per example over all its rows, made once by `exampleCodes`. Text is
 * never touched here: contexts are token ids, decoded (or not) by the caller.
 */
import { OptionError } from '../formats/errors.js';
import type { HookName } from '../hooks/hooks.js';
import type { Model } from '../model/model.js';
import type { Sae, SparseCodes } from './sae.js';

/** A prompt and the model's reply to it, as token ids. */
export interface FeatureExample {
  /** Prompt then reply. */
  readonly tokens: readonly number[];
  /** How many of `tokens` are the prompt (at least 1). */
  readonly promptLength: number;
  /** The reply was judged a refusal. */
  readonly refusal: boolean;
}

/** A latent's standing by refusal tokens. */
export interface RefusalTokenFeature {
  readonly feature: number;
  /** meanOnRefusal - meanElsewhere. */
  readonly score: number;
  /** Mean activation on the first reply tokens of refusals (0 where inactive). */
  readonly meanOnRefusal: number;
  /** The same on the contrast rows: the first reply tokens of the other replies. */
  readonly meanElsewhere: number;
  /** Share of refusal rows where it is active. */
  readonly freqOnRefusal: number;
  /** Share of contrast rows where it is active. */
  readonly freqElsewhere: number;
  /** Largest activation on a refusal row. */
  readonly maxOnRefusal: number;
}

/** A latent's standing by correlation with the monitor. */
export interface MonitorFeature {
  readonly feature: number;
  /** Pearson correlation of its last-prompt-token activation with the monitor score. */
  readonly correlation: number;
  /** Share of prompts where it is active at the last prompt token. */
  readonly freq: number;
  /** Largest activation there. */
  readonly maxActivation: number;
}

/** Where a latent fires most strongly. */
export interface FeatureContext {
  readonly example: number;
  /** Row within the example (prompt and reply counted together). */
  readonly position: number;
  readonly activation: number;
  /** The token at `position` and up to `before` tokens before it. */
  readonly tokens: readonly number[];
  /** The row is in the reply. */
  readonly inReply: boolean;
}

/** The SAE's codes at every row of each example (one forward pass per batch, no logits). */
export function exampleCodes(
  model: Model,
  sae: Sae,
  examples: readonly FeatureExample[],
  opts: { maxBatchTokens?: number } = {},
): SparseCodes[] {
  checkSaeFitsModel(model, sae);
  const hook = sae.config.hookName as HookName;
  for (const [i, e] of examples.entries()) {
    if (!(Number.isInteger(e.promptLength) && e.promptLength >= 1 && e.promptLength <= e.tokens.length))
      throw new OptionError(
        `feature example ${i}: prompt length ${e.promptLength} outside 1..${e.tokens.length}`,
      );
  }
  const res = model.run(
    examples.map((e) => ({ tokens: e.tokens })),
    { cache: { names: [hook], positions: 'all' }, logits: 'none', maxBatchTokens: opts.maxBatchTokens },
  );
  const rows = res.cache.get(hook)!;
  return rows.map((x, i) => sae.encode(model.backend, x, examples[i].tokens.length));
}

/** Throws OptionError unless `sae` reads a hook and width `model` has. */
export function checkSaeFitsModel(model: Model, sae: Sae): void {
  const { dModel, nLayers } = model.config;
  if (sae.config.dIn !== dModel)
    throw new OptionError(
      `the SAE reads width d_in = ${sae.config.dIn} but the model's d_model is ${dModel}`,
    );
  if (sae.config.hookLayer >= nLayers)
    throw new OptionError(
      `the SAE reads block ${sae.config.hookLayer} but the model has blocks 0..${nLayers - 1}`,
    );
  if (sae.config.hookName !== `blocks.${sae.config.hookLayer}.hook_resid_post`)
    throw new OptionError(
      `the SAE reads ${sae.config.hookName}; steering and feature search support blocks.L.hook_resid_post`,
    );
}

/**
 * Latents ranked by how much more they fire on the first `refusalTokens` reply tokens of refusals
 * than on the same positions of the other replies (best first, `top` of them).
 */
export function rankByRefusalTokens(
  sae: Sae,
  examples: readonly FeatureExample[],
  codes: readonly SparseCodes[],
  opts: { refusalTokens: number; top: number },
): RefusalTokenFeature[] {
  const { dSae } = sae.config;
  const sumRef = new Float64Array(dSae);
  const sumElse = new Float64Array(dSae);
  const firedRef = new Float64Array(dSae);
  const firedElse = new Float64Array(dSae);
  const maxRef = new Float64Array(dSae);
  let rowsRef = 0;
  let rowsElse = 0;
  examples.forEach((e, i) => {
    const end = Math.min(e.tokens.length, e.promptLength + opts.refusalTokens);
    for (let r = e.promptLength; r < end; r++) {
      const c = codes[i];
      if (e.refusal) rowsRef++;
      else rowsElse++;
      for (let k = c.offsets[r]; k < c.offsets[r + 1]; k++) {
        const j = c.latents[k];
        const v = c.values[k];
        if (e.refusal) {
          sumRef[j] += v;
          firedRef[j]++;
          if (v > maxRef[j]) maxRef[j] = v;
        } else {
          sumElse[j] += v;
          firedElse[j]++;
        }
      }
    }
  });
  if (rowsRef === 0)
    throw new OptionError('no refusal among the replies: nothing to find refusal latents on');
  if (rowsElse === 0)
    throw new OptionError('every reply is a refusal: no contrast to find refusal latents against');
  const all: RefusalTokenFeature[] = [];
  for (let j = 0; j < dSae; j++) {
    const meanOnRefusal = sumRef[j] / rowsRef;
    const meanElsewhere = sumElse[j] / rowsElse;
    all.push({
      feature: j,
      score: meanOnRefusal - meanElsewhere,
      meanOnRefusal,
      meanElsewhere,
      freqOnRefusal: firedRef[j] / rowsRef,
      freqElsewhere: firedElse[j] / rowsElse,
      maxOnRefusal: maxRef[j],
    });
  }
  return all.sort((a, b) => b.score - a.score || a.feature - b.feature).slice(0, opts.top);
}

/**
 * Latents ranked by |Pearson r| between their activation at each example's last prompt token and
 * `scores` (the monitor's, one per example). A latent never active there has no correlation and is
 * left out.
 */
export function rankByMonitorCorrelation(
  sae: Sae,
  examples: readonly FeatureExample[],
  codes: readonly SparseCodes[],
  scores: readonly number[],
  opts: { top: number },
): MonitorFeature[] {
  const n = examples.length;
  if (scores.length !== n) throw new OptionError(`${scores.length} monitor scores for ${n} examples`);
  if (n < 3) throw new OptionError(`correlation needs at least 3 prompts, got ${n}`);
  for (const [i, s] of scores.entries())
    if (!Number.isFinite(s)) throw new OptionError(`monitor score of example ${i} is not finite (${s})`);
  const { dSae } = sae.config;
  const meanS = scores.reduce((a, b) => a + b, 0) / n;
  let varS = 0;
  for (const s of scores) varS += (s - meanS) ** 2;
  if (varS === 0) throw new OptionError('every prompt has the same monitor score: no correlation to rank by');
  const sum = new Float64Array(dSae);
  const sumSq = new Float64Array(dSae);
  const sumXS = new Float64Array(dSae);
  const fired = new Float64Array(dSae);
  const max = new Float64Array(dSae);
  examples.forEach((e, i) => {
    const c = codes[i];
    const r = e.promptLength - 1;
    const ds = scores[i] - meanS;
    for (let k = c.offsets[r]; k < c.offsets[r + 1]; k++) {
      const j = c.latents[k];
      const v = c.values[k];
      sum[j] += v;
      sumSq[j] += v * v;
      sumXS[j] += v * ds;
      fired[j]++;
      if (v > max[j]) max[j] = v;
    }
  });
  const all: MonitorFeature[] = [];
  for (let j = 0; j < dSae; j++) {
    if (fired[j] === 0) continue;
    const varX = sumSq[j] - (sum[j] * sum[j]) / n;
    if (!(varX > 0)) continue;
    // Σ (x - x̄)(s - s̄) = Σ x (s - s̄), since Σ (s - s̄) = 0.
    all.push({
      feature: j,
      correlation: sumXS[j] / Math.sqrt(varX * varS),
      freq: fired[j] / n,
      maxActivation: max[j],
    });
  }
  return all
    .sort((a, b) => Math.abs(b.correlation) - Math.abs(a.correlation) || a.feature - b.feature)
    .slice(0, opts.top);
}

/** The `n` rows where `feature` is most active, over every example, strongest first. */
export function topContexts(
  examples: readonly FeatureExample[],
  codes: readonly SparseCodes[],
  feature: number,
  opts: { n: number; before: number },
): FeatureContext[] {
  const hits: { example: number; position: number; activation: number }[] = [];
  codes.forEach((c, example) => {
    for (let r = 0; r < c.rows; r++) {
      for (let k = c.offsets[r]; k < c.offsets[r + 1]; k++) {
        if (c.latents[k] === feature) hits.push({ example, position: r, activation: c.values[k] });
      }
    }
  });
  hits.sort((a, b) => b.activation - a.activation || a.example - b.example || a.position - b.position);
  return hits.slice(0, opts.n).map((h) => {
    const e = examples[h.example];
    return {
      ...h,
      tokens: e.tokens.slice(Math.max(0, h.position - opts.before), h.position + 1),
      inReply: h.position >= e.promptLength,
    };
  });
}
