/**
 * `Monitor`: reads a concept from a model while it runs and says when it fires.
 *
 * A reading is the probe logit at each scoring layer (the layers whose probe accuracy beats p1,
 * or those a calibrated threshold names), their mean (the score) and a verdict: flagged when the
 * score exceeds the concept's calibrated threshold. `calibrate` picks that threshold on benign
 * prompts so that at most the target share of them is flagged.
 *
 * During generation, the reading for generated token k is taken at the position that produced
 * it: the last prompt token for k = 0, token k-1 after that. That is the state the model was in
 * when it chose the token, and every generated token gets one. Prompts are generated one at a
 * time, and the token callback runs when a prompt's generation ends (Model.generate reports text,
 * not token ids, as it goes).
 *
 * Shapes: D = d_model.
 */
import { SteerguardError } from '../formats/errors.js';
import { checkLeakage, dedupeById } from '../data/splits.js';
import { type Hook, type HookName, blockHook } from '../hooks/hooks.js';
import type { GenerateOptions, Generation, Model, Prompt } from '../model/model.js';
import { type TemplateMode, extractLastToken, templated } from './activations.js';
import { type Concept, type ConceptExample, type ConceptThreshold, DEFAULT_P1 } from './concept.js';
import type { PromptMonitor } from '../steering/conditional.js';
import { logit, sigmoid } from './probe.js';

export interface MonitorOptions {
  /** Scoring layers: accuracy above p1 (default 0.9); ignored when `layers` is given. */
  readonly p1?: number;
  /** Explicit scoring layers (default: the calibrated threshold's, else by p1). */
  readonly layers?: readonly number[];
  /** Threshold on the score (mean logit), overriding the concept's calibrated one. */
  readonly threshold?: number;
}

export interface LayerReading {
  readonly layer: number;
  readonly logit: number;
  readonly probability: number;
}

export interface MonitorReading {
  readonly layers: readonly LayerReading[];
  /** Mean logit over the scoring layers. */
  readonly score: number;
  /** sigmoid(score). */
  readonly probability: number;
  /** score > threshold; null when there is no threshold. */
  readonly flagged: boolean | null;
}

export interface TokenReading extends MonitorReading {
  /** Index of the prompt. */
  readonly prompt: number;
  /** Index of the generated token (0 = first). */
  readonly index: number;
  readonly token: number;
  /** The token's text ('' without a tokenizer). */
  readonly text: string;
}

export interface MonitorGenerateOptions extends Omit<GenerateOptions, 'hooks' | 'onText' | 'onToken'> {
  /** How text prompts are sent (default: the concept's template mode). */
  readonly template?: TemplateMode;
  /** Hooks that run before the monitor's readers (e.g. SCAV), so the monitor sees their effect. */
  readonly hooks?: readonly Hook[];
  /** Called for every generated token, in order, when its prompt's generation ends. */
  readonly onToken?: (reading: TokenReading) => void;
}

export class Monitor {
  readonly concept: Concept;
  /** Layers the score averages over. */
  readonly layers: readonly number[];
  readonly threshold: number | undefined;

  constructor(concept: Concept, opts: MonitorOptions = {}) {
    this.concept = concept;
    this.layers = opts.layers
      ? [...opts.layers]
      : (concept.threshold?.layers ?? concept.scoringLayers(opts.p1 ?? DEFAULT_P1));
    if (this.layers.length === 0) throw new SteerguardError('a monitor needs at least one layer');
    for (const l of this.layers) concept.layer(l);
    this.threshold = opts.threshold ?? concept.threshold?.value;
    if (this.threshold !== undefined && !Number.isFinite(this.threshold)) {
      throw new SteerguardError(`monitor threshold must be finite, got ${this.threshold}`);
    }
  }

  /**
   * A reading from per-layer logits (in `layers` order). Throws on a non-finite logit: NaN is
   * never above a threshold, so it would read as "not flagged" whatever the prompt.
   */
  fromLogits(logits: readonly number[]): MonitorReading {
    if (logits.length !== this.layers.length)
      throw new SteerguardError(`monitor: ${logits.length} logits for ${this.layers.length} layers`);
    logits.forEach((z, k) => {
      if (!Number.isFinite(z)) throw nonFiniteScore(this.concept.name, this.layers[k], z);
    });
    const layers = this.layers.map((layer, k) => ({
      layer,
      logit: logits[k],
      probability: sigmoid(logits[k]),
    }));
    const score = logits.reduce((s, z) => s + z, 0) / logits.length;
    return {
      layers,
      score,
      probability: sigmoid(score),
      flagged: this.threshold === undefined ? null : score > this.threshold,
    };
  }

  /** A reading from activations [D] per layer (a map, or an array indexed by layer). */
  read(
    rows: ReadonlyMap<number, ArrayLike<number>> | readonly (ArrayLike<number> | undefined)[],
  ): MonitorReading {
    const s = this.concept.score(rows, { layers: this.layers });
    return this.fromLogits(s.layers.map((l) => l.logit));
  }

  /**
   * Readings at the last prompt token of each prompt. Without hooks this goes through the
   * activation cache; with hooks (which change activations) it runs the model.
   */
  async check(
    model: Model,
    prompts: readonly Prompt[],
    opts: {
      template?: TemplateMode;
      hooks?: readonly Hook[];
      cacheDir?: string | false;
      batchTokens?: number;
      onProgress?: (done: number, total: number) => void;
    } = {},
  ): Promise<MonitorReading[]> {
    this.concept.checkModel(model);
    const template = opts.template ?? this.concept.template;
    if (opts.hooks && opts.hooks.length > 0) {
      const names = this.layers.map((l) => blockHook(l, 'hook_resid_post'));
      const res = model.run(
        prompts.map((p) => templated(p, template)),
        {
          hooks: opts.hooks,
          cache: { names, positions: 'last' },
          logits: 'none',
          maxBatchTokens: opts.batchTokens,
        },
      );
      return prompts.map((_, i) =>
        this.fromLogits(this.layers.map((l, k) => this.concept.logit(l, res.cache.get(names[k])![i]))),
      );
    }
    const acts = await extractLastToken(model, prompts, {
      template,
      layers: this.layers,
      cacheDir: opts.cacheDir,
      batchTokens: opts.batchTokens,
      onProgress: opts.onProgress,
    });
    const d = acts.d;
    return prompts.map((_, i) =>
      this.fromLogits(
        this.layers.map((l, k) => this.concept.logit(l, acts.data[k].subarray(i * d, (i + 1) * d))),
      ),
    );
  }

  /**
   * Reading hooks for generation: for each forward call they report, per sequence of the batch,
   * the logit of every scoring layer at rows from the last prompt token on. `sink` gets
   * (seq, token index, layer index, logit).
   */
  readingHooks(sink: (seq: number, index: number, k: number, logit: number) => void): Hook[] {
    return this.layers.map((layer, k): Hook => {
      const name: HookName = blockHook(layer, 'hook_resid_post');
      return {
        name,
        fn: (act, ctx) => {
          const W = ctx.width;
          for (let r = 0; r < ctx.rows; r++) {
            const first = ctx.promptLength[ctx.seq[r]] - 1;
            if (ctx.pos[r] < first) continue;
            sink(
              ctx.seq[r],
              ctx.pos[r] - first,
              k,
              this.concept.logit(layer, act.subarray(r * W, (r + 1) * W)),
            );
          }
        },
      };
    });
  }

  /** Generates the prompts (batched, see Model.generate) with a reading for every generated token. */
  async generate(
    model: Model,
    prompts: readonly Prompt[],
    opts: MonitorGenerateOptions = {},
  ): Promise<{ generations: Generation[]; tokens: TokenReading[][] }> {
    this.concept.checkModel(model);
    const { onToken, hooks: extra, template: asked, ...gen } = opts;
    const template = asked ?? this.concept.template;
    let decode: ((ids: number[]) => string) | undefined;
    try {
      const tk = model.tokenizer;
      decode = (ids) => tk.decode(ids, { skipSpecialTokens: false });
    } catch {
      decode = undefined;
    }
    // logits[prompt][token index][layer]: the row that chose token i was read in the same forward
    // call, so each reading is complete when the token arrives and can be reported live.
    const logits = prompts.map(() => [] as number[][]);
    const readers = this.readingHooks((seq, index, k, z) => {
      (logits[seq][index] ??= new Array<number>(this.layers.length).fill(NaN))[k] = z;
    });
    const tokens: TokenReading[][] = prompts.map(() => []);
    const generations = await model.generate(
      prompts.map((p) => templated(p, template)),
      {
        ...gen,
        hooks: [...(extra ?? []), ...readers],
        onToken: (p, token, index) => {
          const reading: TokenReading = {
            ...this.fromLogits(logits[p][index]),
            prompt: p,
            index,
            token,
            text: decode ? decode([token]) : '',
          };
          tokens[p].push(reading);
          onToken?.(reading);
        },
      },
    );
    return { generations, tokens };
  }
}

/**
 * The threshold on benign scores that flags at most `targetFpr` of them: flagged means score >
 * threshold, so the value is the (k+1)-th highest score with k = floor(targetFpr · n) (above the
 * highest when k = 0). Ties at the threshold are not flagged, so the achieved rate can be lower.
 */
export function calibrateThreshold(
  negativeScores: readonly number[],
  targetFpr: number,
): { value: number; achievedFpr: number } {
  if (!(targetFpr >= 0 && targetFpr < 1))
    throw new SteerguardError(`target false-positive rate must be in [0, 1), got ${targetFpr}`);
  const n = negativeScores.length;
  if (n === 0) throw new SteerguardError('calibration needs at least one benign prompt');
  for (const s of negativeScores)
    if (!Number.isFinite(s)) throw new SteerguardError('a calibration score is not finite');
  const sorted = [...negativeScores].sort((a, b) => b - a);
  const k = Math.floor(targetFpr * n + 1e-9);
  const value = sorted[Math.min(k, n - 1)];
  const achieved = negativeScores.filter((s) => s > value).length / n;
  return { value, achievedFpr: achieved };
}

export interface CalibrateOptions {
  /** Scoring layers (default: accuracy above p1). */
  readonly layers?: readonly number[];
  readonly p1?: number;
  /** Positive prompts, to report the true-positive rate at the threshold. */
  readonly positives?: readonly ConceptExample[];
  /** Name of the benign set, recorded in the concept. */
  readonly setName?: string;
  /** Calibrate (and measure the TPR) on prompts the concept was fitted on anyway. */
  readonly allowOverlap?: boolean;
  readonly cacheDir?: string | false;
  readonly batchTokens?: number;
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * A copy of `concept` with a threshold calibrated on benign prompts for `targetFpr`. Refuses
 * prompts the concept was fitted on unless allowOverlap.
 */
export async function calibrate(
  concept: Concept,
  model: Model,
  negatives: readonly ConceptExample[],
  targetFpr: number,
  opts: CalibrateOptions = {},
): Promise<Concept> {
  concept.checkModel(model);
  const neg = dedupeById(negatives).items;
  if (neg.length === 0) throw new SteerguardError('calibration needs at least one benign prompt');
  const fitted = [
    ...concept.data.ids.train.positive,
    ...concept.data.ids.train.negative,
    ...concept.data.ids.val.positive,
    ...concept.data.ids.val.negative,
  ];
  checkLeakage(fitted, neg, { allow: opts.allowOverlap, what: `concept ${concept.name}` });
  const monitor = new Monitor(concept.withThreshold(undefined), { layers: opts.layers, p1: opts.p1 });
  const check = (items: readonly ConceptExample[]) =>
    monitor.check(
      model,
      items.map((e) => e.prompt),
      { cacheDir: opts.cacheDir, batchTokens: opts.batchTokens, onProgress: opts.onProgress },
    );
  const scores = (await check(neg)).map((r) => r.score);
  const { value, achievedFpr } = calibrateThreshold(scores, targetFpr);
  let achievedTpr: number | null = null;
  if (opts.positives && opts.positives.length > 0) {
    const pos = dedupeById(opts.positives).items;
    checkLeakage(fitted, pos, { allow: opts.allowOverlap, what: `concept ${concept.name}` });
    const ps = (await check(pos)).map((r) => r.score);
    achievedTpr = ps.filter((s) => s > value).length / ps.length;
  }
  const threshold: ConceptThreshold = {
    value,
    layers: [...monitor.layers],
    targetFpr,
    calibrationSet: opts.setName ?? 'negatives',
    n: neg.length,
    achievedFpr,
    achievedTpr,
    ids: neg.map((e) => e.id),
  };
  return concept.withThreshold(threshold);
}

/**
 * A one-layer prompt monitor in the shape conditional steering expects ({hook, score, threshold}):
 * score = P_m at `layer` (default the best layer), flagged above `threshold` (a probability;
 * default the concept's calibrated threshold when it was calibrated on that layer alone, else 0.5).
 */
export function promptMonitor(
  concept: Concept,
  opts: { layer?: number; threshold?: number } = {},
): PromptMonitor {
  const layer =
    opts.layer ??
    (concept.threshold?.layers.length === 1 ? concept.threshold.layers[0] : concept.bestLayer());
  concept.layer(layer);
  const t = concept.threshold;
  const threshold =
    opts.threshold ?? (t && t.layers.length === 1 && t.layers[0] === layer ? sigmoid(t.value) : 0.5);
  if (!(threshold >= 0 && threshold <= 1))
    throw new SteerguardError(`threshold is a probability here; got ${threshold}`);
  return {
    hooks: [blockHook(layer, 'hook_resid_post')],
    score: ([e]) => {
      const z = concept.logit(layer, e);
      if (!Number.isFinite(z)) throw nonFiniteScore(concept.name, layer, z);
      return sigmoid(z);
    },
    threshold,
  };
}

function nonFiniteScore(concept: string, layer: number, z: number): SteerguardError {
  return new SteerguardError(
    `concept ${concept}: the probe logit at layer ${layer} is ${z}, so no verdict can be given; ` +
      'the activation holds NaN or infinity (a damaged model file or a hook writing it)',
  );
}

/** A threshold in probability units as a score (logit) threshold. */
export function thresholdFromProbability(p: number): number {
  if (!(p > 0 && p < 1))
    throw new SteerguardError(`threshold probability must be strictly between 0 and 1, got ${p}`);
  return logit(p);
}
