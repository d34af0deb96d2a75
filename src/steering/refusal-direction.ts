/**
 * The refusal direction (Arditi et al. 2024): a single residual-stream direction that mediates
 * refusal. Candidates are r = mean(harmful) − mean(harmless) at the input of block l
 * (`blocks.{l}.hook_resid_pre`) and at each post-instruction position (the chat-template tokens
 * after the user message, counted from the end: −1 is the last prompt token).
 *
 * Selection, as in the paper: among candidates not in the last 20% of layers, whose directional
 * ablation keeps KL on harmless prompts ≤ 0.1 and whose activation addition makes harmless
 * prompts look refused (steering score > 0), take the one whose ablation lowers the refusal score
 * on harmful prompts most. Refusal score = log-odds that the first reply token is a
 * refusal-starting token ("I", "As", "Sorry", ...), at the last prompt position.
 *
 * Cost control: the ablation refusal score is computed for every eligible candidate (one forward
 * pass over the harmful validation prompts each); KL and steering score are then computed in
 * order of that score only until one candidate passes both filters, which picks the same winner
 * as scoring everything (`fullReport` scores everything anyway).
 *
 * Shapes: L blocks, D = d_model, V = vocabulary, P = number of positions.
 */
import { OptionError, SteerguardError } from '../formats/errors.js';
import type { GgufValue } from '../formats/gguf.js';
import type { Tokenizer } from '../formats/tokenizer.js';
import { type Hook, type HookName, blockHook } from '../hooks/hooks.js';
import { ablateDirection, addVector } from '../hooks/interventions.js';
import type { Model, Prompt } from '../model/model.js';
import { ControlVector, MODEL_FINGERPRINT_KEY } from './control-vector.js';

// ---------------------------------------------------------------------------------------------
// Interventions

/**
 * Directional ablation for the whole model: x ← x − r̂ r̂ᵀ x at every block input, attention
 * output and MLP output, all positions. Every block output is then free of r̂ as well, since it is
 * the sum of three ablated terms.
 */
export function ablationHooks(direction: Float32Array, nLayers: number): Hook[] {
  const hooks: Hook[] = [];
  for (let l = 0; l < nLayers; l++)
    for (const kind of ['hook_resid_pre', 'hook_attn_out', 'hook_mlp_out'] as const)
      hooks.push(ablateDirection(blockHook(l, kind), direction, { positions: 'all' }));
  return hooks;
}

/** Activation addition x ← x + coeff · r at the input of block `layer`, all positions. */
export function additionHooks(direction: Float32Array, layer: number, coeff = 1): Hook[] {
  return [addVector(blockHook(layer, 'hook_resid_pre'), direction, { scale: coeff, positions: 'all' })];
}

// ---------------------------------------------------------------------------------------------
// Scores

/** Words whose first token starts a typical refusal. */
export const REFUSAL_START_WORDS: readonly string[] = ['I', 'As', 'Sorry', 'Unfortunately'];

/** Token ids that start the given words (first token of each, deduplicated). */
export function refusalTokenIds(
  tokenizer: Tokenizer,
  words: readonly string[] = REFUSAL_START_WORDS,
): number[] {
  const ids = new Set<number>();
  for (const w of words) {
    const t = tokenizer.encode(w, { addSpecialTokens: false });
    if (t.length > 0) ids.add(t[0]);
  }
  if (ids.size === 0) throw new SteerguardError('no refusal-starting token found in the vocabulary');
  return [...ids];
}

function logSumExp(x: Float32Array): number {
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  let s = 0;
  for (const v of x) s += Math.exp(v - max);
  return max + Math.log(s);
}

/** log p − log(1 − p), p = total probability of `tokens` under softmax(logits [V]). */
export function refusalScore(logits: Float32Array, tokens: readonly number[]): number {
  const lse = logSumExp(logits);
  let p = 0;
  for (const t of tokens) p += Math.exp(logits[t] - lse);
  const eps = 1e-8;
  return Math.log(p + eps) - Math.log(Math.max(0, 1 - p) + eps);
}

/** KL(P ‖ Q) in nats, P = softmax(p), Q = softmax(q). */
export function klDivergence(p: Float32Array, q: Float32Array): number {
  if (p.length !== q.length) throw new Error(`logit lengths differ: ${p.length} vs ${q.length}`);
  const lp = logSumExp(p);
  const lq = logSumExp(q);
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i] - lp;
    kl += Math.exp(a) * (a - (q[i] - lq));
  }
  return Math.max(0, kl);
}

const mean = (xs: readonly number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length;

// ---------------------------------------------------------------------------------------------
// Positions

/**
 * Offsets (from the end) of the chat-template tokens that follow the user message, e.g. for
 * ChatML `<|im_end|>`, `\n`, `<|im_start|>`, `assistant`, `\n` → [−5, −4, −3, −2, −1].
 */
export function postInstructionPositions(model: Model): number[] {
  const tok = model.tokenizer;
  const sentinel = 'Name three colours.';
  const text = tok.applyChatTemplate([{ role: 'user', content: sentinel }], { addGenerationPrompt: true });
  const full = model.tokenize({ messages: [{ role: 'user', content: sentinel }] });
  const at = text.lastIndexOf(sentinel);
  if (at < 0) throw new SteerguardError('the chat template does not contain the user message verbatim');
  const prefix = tok.encode(text.slice(0, at + sentinel.length), { addSpecialTokens: false });
  const k = full.length - prefix.length;
  const samePrefix = prefix.every((t, i) => full[i] === t);
  if (!samePrefix || k < 1)
    throw new SteerguardError(
      'cannot tell which tokens follow the user message in this chat template; give the positions explicitly',
    );
  return Array.from({ length: k }, (_, i) => i - k);
}

// ---------------------------------------------------------------------------------------------
// Candidates and selection

export interface DirectionCandidate {
  /** Block whose input the direction was read at (`blocks.{layer}.hook_resid_pre`). */
  readonly layer: number;
  /** Prompt position, negative from the end. */
  readonly position: number;
  /** ‖r‖. */
  readonly norm: number;
  /** Mean refusal score on harmful validation prompts with r ablated (lower: refusal removed). */
  refusalScore: number | null;
  /** Mean refusal score on harmless validation prompts with r added at its layer (> 0 needed). */
  steeringScore: number | null;
  /** Mean KL(baseline ‖ ablated) of the last-token distribution on harmless validation prompts. */
  kl: number | null;
  /** Why the candidate cannot be chosen; empty when it passed every filter that was computed. */
  discarded: string[];
}

export interface SelectionRules {
  readonly nLayers: number;
  /** Default 0.1. */
  readonly klThreshold?: number;
  /** Candidates in the last this-fraction of layers are out (default 0.2). */
  readonly pruneLayerFraction?: number;
  /** The steering score must exceed this (default 0). */
  readonly inductionThreshold?: number;
}

/** First layer excluded by the late-layer rule. */
export function layerCutoff(nLayers: number, pruneLayerFraction = 0.2): number {
  return Math.floor(nLayers * (1 - pruneLayerFraction));
}

/** Reasons a fully or partly scored candidate is out (null scores are not judged). */
export function discardReasons(c: DirectionCandidate, rules: SelectionRules): string[] {
  const out: string[] = [];
  if (c.layer >= layerCutoff(rules.nLayers, rules.pruneLayerFraction)) out.push('late-layer');
  if (!(c.norm > 0) || !Number.isFinite(c.norm)) out.push('zero-direction');
  if (c.refusalScore !== null && !Number.isFinite(c.refusalScore)) out.push('not-finite');
  if (c.kl !== null && !(c.kl <= (rules.klThreshold ?? 0.1))) out.push('kl');
  if (c.steeringScore !== null && !(c.steeringScore > (rules.inductionThreshold ?? 0)))
    out.push('no-induction');
  return out;
}

/**
 * The candidate with the lowest ablation refusal score among those with every score computed and
 * no discard reason; undefined when none qualifies. Fills in each candidate's `discarded`.
 */
export function selectDirection(
  candidates: readonly DirectionCandidate[],
  rules: SelectionRules,
): DirectionCandidate | undefined {
  let best: DirectionCandidate | undefined;
  for (const c of candidates) {
    c.discarded = discardReasons(c, rules);
    const complete = c.refusalScore !== null && c.steeringScore !== null && c.kl !== null;
    if (!complete || c.discarded.length > 0) continue;
    if (best === undefined || c.refusalScore! < best.refusalScore!) best = c;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Mean differences

/** Per layer, per position: mean activation [D] over prompts at `blocks.{l}.hook_resid_pre`. */
function meanActivations(
  cache: Map<HookName, Float32Array[]>,
  layers: readonly number[],
  P: number,
  D: number,
  keep: readonly number[],
): Float64Array[][] {
  return layers.map((l) => {
    const rows = cache.get(blockHook(l, 'hook_resid_pre'))!;
    return Array.from({ length: P }, (_, p) => {
      const acc = new Float64Array(D);
      for (const i of keep) {
        const a = rows[i];
        if (a.length !== P * D)
          throw new SteerguardError(`prompt ${i} is shorter than the ${P} positions asked for`);
        for (let d = 0; d < D; d++) acc[d] += a[p * D + d];
      }
      for (let d = 0; d < D; d++) acc[d] /= keep.length;
      return acc;
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The whole procedure

export interface PromptSplit {
  readonly train: readonly Prompt[];
  readonly val: readonly Prompt[];
}

export interface RefusalDirectionOptions {
  readonly harmful: PromptSplit;
  readonly harmless: PromptSplit;
  /** Negative offsets of the candidate positions; default: the post-instruction template tokens. */
  readonly positions?: readonly number[];
  /**
   * Candidate layers (block inputs); default 2..L−1: block 0's input is the token embedding, and
   * block 1's is block 0's output, which a llama.cpp control vector cannot carry (its direction.0
   * is never applied), so a direction found there could not be saved.
   */
  readonly layers?: readonly number[];
  /** Refusal-starting token ids; default the first tokens of REFUSAL_START_WORDS. */
  readonly refusalTokens?: readonly number[];
  readonly klThreshold?: number;
  readonly pruneLayerFraction?: number;
  /**
   * Keep only harmful prompts the model refuses (baseline score > 0) and harmless ones it does
   * not (< 0), as the paper does, unless fewer than 2 would remain on a side (default true).
   */
  readonly filterPrompts?: boolean;
  /** Score every candidate on every measure, not only until the winner is known (default false). */
  readonly fullReport?: boolean;
  /**
   * Without fullReport, give up looking for a candidate that passes every filter after examining
   * this many (default 32) and fall back: models that hardly refuse (small ones) may have none, and
   * each examination costs two passes over the harmless validation prompts.
   */
  readonly maxExamined?: number;
  /** The steering score must exceed this (default 0: refusal tokens more likely than not). */
  readonly inductionThreshold?: number;
  readonly maxBatchTokens?: number;
  /** Progress: a stage name and its done/total count. */
  readonly onProgress?: (stage: string, done: number, total: number) => void;
}

export interface RefusalDirectionResult {
  /** The chosen r (not normalised): add it with coefficient ±1, ablate its direction. */
  readonly direction: Float32Array;
  readonly layer: number;
  readonly position: number;
  /** 'filters': passed every filter; 'fallback': none did, the best non-late one by KL then score. */
  readonly selectedBy: 'filters' | 'fallback';
  readonly candidates: readonly DirectionCandidate[];
  readonly positions: readonly number[];
  readonly refusalTokens: readonly number[];
  readonly baseline: { readonly harmfulRefusalScore: number; readonly harmlessRefusalScore: number };
  /** Candidates whose KL (and steering score) were computed. */
  readonly examined: number;
  /** Prompts used per side after filtering. */
  readonly counts: {
    readonly harmfulTrain: number;
    readonly harmlessTrain: number;
    readonly harmfulVal: number;
    readonly harmlessVal: number;
  };
}

function keepIndices(scores: readonly number[], want: (s: number) => boolean, enabled: boolean): number[] {
  const all = scores.map((_, i) => i);
  if (!enabled) return all;
  const kept = all.filter((i) => want(scores[i]));
  return kept.length >= 2 ? kept : all;
}

export function computeRefusalDirection(model: Model, opts: RefusalDirectionOptions): RefusalDirectionResult {
  const L = model.config.nLayers;
  const D = model.config.dModel;
  for (const [name, set] of [
    ['harmful.train', opts.harmful.train],
    ['harmless.train', opts.harmless.train],
    ['harmful.val', opts.harmful.val],
    ['harmless.val', opts.harmless.val],
  ] as const)
    if (set.length < 1) throw new OptionError(`refusal direction: ${name} has no prompts`);
  const positions = [...(opts.positions ?? postInstructionPositions(model))].sort((a, b) => a - b);
  if (positions.length === 0 || positions.some((p) => !Number.isInteger(p) || p >= 0))
    throw new OptionError(`positions must be negative offsets from the end, got ${positions.join(', ')}`);
  const layers = [...(opts.layers ?? Array.from({ length: Math.max(0, L - 2) }, (_, i) => i + 2))].sort(
    (a, b) => a - b,
  );
  if (layers.some((l) => !Number.isInteger(l) || l < 1 || l >= L))
    throw new OptionError(`candidate layers must be within 1..${L - 1}`);
  const refusalTokens = [...(opts.refusalTokens ?? refusalTokenIds(model.tokenizer))];
  if (refusalTokens.some((t) => !(Number.isInteger(t) && t >= 0 && t < model.config.vocabSize)))
    throw new OptionError('refusal token ids must be within the vocabulary');
  const rules: SelectionRules = {
    nLayers: L,
    klThreshold: opts.klThreshold,
    pruneLayerFraction: opts.pruneLayerFraction,
    inductionThreshold: opts.inductionThreshold,
  };
  const filter = opts.filterPrompts ?? true;
  const mbt = opts.maxBatchTokens;
  const progress = opts.onProgress ?? (() => {});
  const P = positions.length;
  const score = (logits: Float32Array[], idx: readonly number[]) =>
    mean(idx.map((i) => refusalScore(logits[i], refusalTokens)));

  // Training activations and baseline refusal scores come from the same pass.
  const names = layers.map((l) => blockHook(l, 'hook_resid_pre'));
  progress('activations', 0, 2);
  const hTrain = model.run(opts.harmful.train, {
    cache: { names, positions },
    logits: 'last',
    maxBatchTokens: mbt,
  });
  progress('activations', 1, 2);
  const sTrain = model.run(opts.harmless.train, {
    cache: { names, positions },
    logits: 'last',
    maxBatchTokens: mbt,
  });
  progress('activations', 2, 2);
  const hKeep = keepIndices(
    hTrain.logits.map((x) => refusalScore(x, refusalTokens)),
    (s) => s > 0,
    filter,
  );
  const sKeep = keepIndices(
    sTrain.logits.map((x) => refusalScore(x, refusalTokens)),
    (s) => s < 0,
    filter,
  );
  const hMean = meanActivations(hTrain.cache, layers, P, D, hKeep);
  const sMean = meanActivations(sTrain.cache, layers, P, D, sKeep);

  const baseH = model.run(opts.harmful.val, { logits: 'last', maxBatchTokens: mbt }).logits;
  const baseS = model.run(opts.harmless.val, { logits: 'last', maxBatchTokens: mbt }).logits;
  const hvKeep = keepIndices(
    baseH.map((x) => refusalScore(x, refusalTokens)),
    (s) => s > 0,
    filter,
  );
  const svKeep = keepIndices(
    baseS.map((x) => refusalScore(x, refusalTokens)),
    (s) => s < 0,
    filter,
  );
  const harmfulVal = hvKeep.map((i) => opts.harmful.val[i]);
  const harmlessVal = svKeep.map((i) => opts.harmless.val[i]);
  const baseS2 = svKeep.map((i) => baseS[i]);
  const all = (n: number) => Array.from({ length: n }, (_, i) => i);

  const vectors = new Map<DirectionCandidate, Float32Array>();
  const candidates: DirectionCandidate[] = [];
  layers.forEach((l, li) =>
    positions.forEach((pos, pi) => {
      const r = new Float32Array(D);
      let n2 = 0;
      for (let d = 0; d < D; d++) {
        r[d] = hMean[li][pi][d] - sMean[li][pi][d];
        n2 += r[d] * r[d];
      }
      const c: DirectionCandidate = {
        layer: l,
        position: pos,
        norm: Math.sqrt(n2),
        refusalScore: null,
        steeringScore: null,
        kl: null,
        discarded: [],
      };
      candidates.push(c);
      vectors.set(c, r);
    }),
  );

  const cutoff = layerCutoff(L, opts.pruneLayerFraction);
  // A model too shallow to have a candidate before the late layers scores the late ones (and
  // can only fall back to one of them).
  const shallow = !candidates.some((c) => c.layer < cutoff);
  const eligible = candidates.filter((c) => opts.fullReport || ((shallow || c.layer < cutoff) && c.norm > 0));
  eligible.forEach((c, k) => {
    const logits = model.run(harmfulVal, {
      hooks: ablationHooks(vectors.get(c)!, L),
      logits: 'last',
      maxBatchTokens: mbt,
    });
    c.refusalScore = score(logits.logits, all(harmfulVal.length));
    progress('ablation', k + 1, eligible.length);
  });

  const scoreRest = (c: DirectionCandidate): void => {
    const r = vectors.get(c)!;
    const abl = model.run(harmlessVal, {
      hooks: ablationHooks(r, L),
      logits: 'last',
      maxBatchTokens: mbt,
    }).logits;
    c.kl = mean(abl.map((q, i) => klDivergence(baseS2[i], q)));
    // A candidate already out on KL needs no steering score, unless everything is to be scored.
    if (!opts.fullReport && discardReasons(c, rules).length > 0) return;
    const add = model.run(harmlessVal, {
      hooks: additionHooks(r, c.layer, 1),
      logits: 'last',
      maxBatchTokens: mbt,
    });
    c.steeringScore = score(add.logits, all(harmlessVal.length));
  };
  const order = [...eligible].sort((a, b) => a.refusalScore! - b.refusalScore!);
  const maxExamined = opts.fullReport ? Infinity : (opts.maxExamined ?? 32);
  let examined = 0;
  for (let k = 0; k < order.length && examined < maxExamined; k++) {
    const c = order[k];
    if (!opts.fullReport && discardReasons(c, rules).length > 0) continue;
    scoreRest(c);
    examined++;
    progress('filters', examined, Math.min(maxExamined, order.length));
    if (!opts.fullReport && discardReasons(c, rules).length === 0) break;
  }

  let chosen = selectDirection(candidates, rules);
  let selectedBy: RefusalDirectionResult['selectedBy'] = 'filters';
  if (!chosen) {
    // Nothing passed: prefer candidates that at least keep KL low, then the lowest refusal score.
    selectedBy = 'fallback';
    const pool = candidates.filter(
      (c) => c.refusalScore !== null && c.norm > 0 && (shallow || c.layer < cutoff),
    );
    if (pool.length === 0) throw new SteerguardError('no candidate direction could be scored');
    const klOk = pool.filter((c) => c.kl !== null && c.kl <= (opts.klThreshold ?? 0.1));
    chosen = (klOk.length > 0 ? klOk : pool).reduce((a, b) => (b.refusalScore! < a.refusalScore! ? b : a));
  }

  return {
    direction: vectors.get(chosen)!,
    layer: chosen.layer,
    position: chosen.position,
    selectedBy,
    candidates,
    examined,
    positions,
    refusalTokens,
    baseline: {
      harmfulRefusalScore: score(baseH, hvKeep),
      harmlessRefusalScore: score(baseS, svKeep),
    },
    counts: {
      harmfulTrain: hKeep.length,
      harmlessTrain: sKeep.length,
      harmfulVal: harmfulVal.length,
      harmlessVal: harmlessVal.length,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Files

/** A refusal direction as used by steering: r and the block whose input it belongs to. */
export interface RefusalDirection {
  /** r, not normalised. */
  readonly direction: Float32Array;
  /** Add r at `blocks.{layer}.hook_resid_pre` (= the output of block layer − 1). */
  readonly layer: number;
  /** Position it was read at, when known. */
  readonly position?: number;
}

const KEY = 'steerguard.refusal_direction';

/**
 * The refusal direction as a llama.cpp control vector: r at the input of block l is r added to the
 * output of block l − 1, so it is stored as `direction.{l−1}`. `llama-cli --control-vector FILE`
 * then adds it (+1 induces refusal; `--control-vector-scaled FILE -1` removes it).
 */
export function refusalDirectionToControlVector(
  result: Pick<RefusalDirectionResult, 'direction' | 'layer' | 'position'> &
    Partial<Pick<RefusalDirectionResult, 'candidates' | 'selectedBy'>>,
  model: { arch: string; fingerprint?: string },
): ControlVector {
  if (result.layer < 1)
    throw new OptionError('a direction at the input of block 0 has no control-vector form');
  const meta = new Map<string, GgufValue>([
    ['steerguard.kind', 'refusal-direction'],
    [`${KEY}.layer`, result.layer],
    [`${KEY}.position`, result.position],
  ]);
  if (model.fingerprint) meta.set(MODEL_FINGERPRINT_KEY, model.fingerprint);
  const c = result.candidates?.find((x) => x.layer === result.layer && x.position === result.position);
  if (c?.refusalScore != null) meta.set(`${KEY}.refusal_score`, c.refusalScore);
  if (c?.steeringScore != null) meta.set(`${KEY}.steering_score`, c.steeringScore);
  if (c?.kl != null) meta.set(`${KEY}.kl`, c.kl);
  if (result.selectedBy) meta.set(`${KEY}.selected_by`, result.selectedBy);
  return ControlVector.single(result.layer - 1, result.direction, model.arch, meta);
}

/**
 * A refusal direction from a control vector: a steerguard refusal-direction file, or any vector
 * with one layer L (then taken as r at the input of block L + 1). `layer` picks one of several.
 */
export function refusalDirectionFromControlVector(cv: ControlVector, layer?: number): RefusalDirection {
  const stored = cv.metadata.get(`${KEY}.layer`);
  const position = cv.metadata.get(`${KEY}.position`);
  let cvLayer: number;
  if (layer !== undefined) cvLayer = layer;
  else if (typeof stored === 'number') cvLayer = stored - 1;
  else if (cv.layers.length === 1) cvLayer = cv.layers[0];
  else
    throw new OptionError(
      `the control vector has directions for layers ${cv.layers.join(', ')}; pick one (--layer) to use it as a refusal direction`,
    );
  return {
    direction: cv.direction(cvLayer),
    layer: cvLayer + 1,
    position: typeof position === 'number' ? position : undefined,
  };
}
