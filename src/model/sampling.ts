/**
 * Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k, top-p
 * and a repetition penalty (Hugging Face semantics: divide positive logits, multiply negative ones).
 */
import { OptionError, SteerguardError } from '../formats/errors.js';

export interface SamplingOptions {
  /** 0 (default) picks the argmax; > 0 samples from softmax(logits / temperature). */
  readonly temperature?: number;
  /** Keep only the k most likely tokens (0 = off). */
  readonly topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = off). */
  readonly topP?: number;
  /** > 1 discourages tokens already in the sequence (1 = off). */
  readonly repetitionPenalty?: number;
  /** Seed of the random generator; the same seed gives the same text. */
  readonly seed?: number;
}

/** Validates sampling options; throws an OptionError naming the bad one. */
export function checkSampling(o: SamplingOptions): void {
  const bad = (name: string, why: string) => {
    throw new OptionError(`${name}: ${why}`);
  };
  if (o.temperature !== undefined && !(o.temperature >= 0 && Number.isFinite(o.temperature)))
    bad('temperature', `must be >= 0, got ${o.temperature}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0))
    bad('topK', `must be an integer >= 0, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) bad('topP', `must be in (0, 1], got ${o.topP}`);
  if (o.repetitionPenalty !== undefined && !(o.repetitionPenalty > 0 && Number.isFinite(o.repetitionPenalty)))
    bad('repetitionPenalty', `must be > 0, got ${o.repetitionPenalty}`);
}

/** Small, fast, seedable PRNG (mulberry32) returning floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Index of the largest value (the first one on ties). */
export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/**
 * Throws unless every logit is a number below +infinity and one is finite (-infinity masks a
 * token). The argmax of NaN logits is token 0, often a stop token: generation would end with
 * no reply, which reads as a model that says nothing rather than a broken one.
 */
function checkLogits(logits: Float32Array): void {
  let finite = false;
  for (let i = 0; i < logits.length; i++) {
    const z = logits[i];
    if (Number.isNaN(z) || z === Infinity)
      throw new SteerguardError(
        `the model produced a non-finite logit (${z}) for token ${i}; ` +
          'a damaged model file or a hook writing NaN or infinity can cause this',
      );
    if (z !== -Infinity) finite = true;
  }
  if (!finite) throw new SteerguardError('the model produced logits that are all -infinity');
}

/**
 * Picks the next token. Throws a SteerguardError on NaN or +infinity logits. `logits` [V] is modified (penalty applied). `history` is the sequence so
 * far, used by the repetition penalty.
 */
export function sampleToken(
  logits: Float32Array,
  history: readonly number[],
  o: SamplingOptions,
  random: () => number,
): number {
  checkLogits(logits);
  const penalty = o.repetitionPenalty ?? 1;
  if (penalty !== 1) {
    const seen = new Set(history);
    for (const t of seen) logits[t] = logits[t] > 0 ? logits[t] / penalty : logits[t] * penalty;
  }
  const temperature = o.temperature ?? 0;
  if (temperature === 0) return argmax(logits);

  // Candidates sorted by logit, cut by top-k, then softmax, then top-p.
  let idx = Array.from({ length: logits.length }, (_, i) => i);
  const topK = o.topK ?? 0;
  idx.sort((a, b) => logits[b] - logits[a]);
  if (topK > 0 && topK < idx.length) idx = idx.slice(0, topK);
  const max = logits[idx[0]];
  const probs = idx.map((i) => Math.exp((logits[i] - max) / temperature));
  const total = probs.reduce((s, p) => s + p, 0);
  for (let i = 0; i < probs.length; i++) probs[i] /= total;
  const topP = o.topP ?? 1;
  let keep = probs.length;
  if (topP < 1) {
    let cum = 0;
    for (let i = 0; i < probs.length; i++) {
      cum += probs[i];
      if (cum >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  const kept = probs.slice(0, keep);
  const mass = kept.reduce((s, p) => s + p, 0);
  let u = random() * mass;
  for (let i = 0; i < keep; i++) {
    u -= kept[i];
    if (u <= 0) return idx[i];
  }
  return idx[keep - 1];
}
