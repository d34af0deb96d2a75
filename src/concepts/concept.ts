/**
 * `Concept`: a linear reading of one idea (e.g. "this request is malicious") from a model's
 * residual stream, one probe per layer, as SCAV (Xu et al. 2024) defines it.
 *
 *   const { concept } = await trainConcept({ model, positive, negative });
 *   concept.save('malicious.concept.safetensors');
 *   const c = Concept.load('malicious.concept.safetensors', model);   // checks the model
 *   c.probability(c.bestLayer(), activationRow);
 *
 * Per layer L a concept holds the logistic-regression probe P(positive | e) = sigmoid(w·e + b) on
 * the last-token `blocks.L.hook_resid_post`, the difference of class means and the repeng-style
 * PCA direction, with held-out metrics. It records the model it was fitted on and the content ids
 * of every prompt it was fitted on (train and validation splits), which the leakage guard checks
 * before any evaluation.
 *
 * File: safetensors with `probe.{L}.weight` [D], `probe.{L}.bias` [1], `mean_diff.{L}` [D],
 * `pca.{L}` [D] (F32) and metadata `format` = steerguard.concept, `format_version`, `concept`
 * (JSON: everything else, the bias again in full precision). Written atomically.
 *
 * Shapes: N prompts, L layers, D = d_model.
 */
import { FormatError, SteerguardError } from '../formats/errors.js';
import { readSafetensorsHeader, readSafetensorsTensorF32, writeSafetensors } from '../formats/safetensors.js';
import type { SetPrompt } from '../data/datasets.js';
import { promptId } from '../data/prompts.js';
import {
  DEFAULT_SPLIT,
  type SplitFractions,
  type SplitName,
  SPLIT_NAMES,
  checkLeakage,
  dedupeById,
  splitItems,
} from '../data/splits.js';
import type { ModelIdentity } from '../model/load.js';
import type { Model, Prompt } from '../model/model.js';
import {
  type LayerActivations,
  type TemplateMode,
  defaultTemplate,
  extractLastToken,
} from './activations.js';
import {
  type MatmulF32,
  accuracy,
  auroc,
  differenceOfMeans,
  fitLogistic,
  pcaDirection,
  sigmoid,
  wilsonInterval,
} from './probe.js';

export const CONCEPT_FORMAT = 'steerguard.concept';
export const CONCEPT_FORMAT_VERSION = '1';

/** A prompt with its content id (the id splits and the leakage guard use). */
export interface ConceptExample {
  readonly id: string;
  readonly prompt: Prompt;
}

/** The prompts of a loaded set as examples (text prompts; the template is applied at extraction). */
export function examplesFromSet(set: { readonly prompts: readonly SetPrompt[] }): ConceptExample[] {
  return set.prompts.map((p) => ({ id: p.id, prompt: p.text }));
}

/** A token-id prompt as an example (id from the ids, for tests and tokenizer-less models). */
export function tokenExample(tokens: readonly number[]): ConceptExample {
  return { id: promptId(`tokens:${tokens.join(',')}`), prompt: { tokens: [...tokens] } };
}

/** The model a concept belongs to. */
export interface ConceptModel extends ModelIdentity {
  readonly nLayers: number;
  readonly dModel: number;
}

export interface ProbeMetrics {
  /** Which examples accuracy and AUROC are measured on: 'test' unless it lacked a class. */
  readonly split: SplitName;
  readonly n: number;
  readonly nPositive: number;
  readonly nNegative: number;
  /** Share right with P >= 0.5 meaning positive (w·e + b > 0). */
  readonly accuracy: number;
  /** Wilson 95% interval. */
  readonly accuracyCi: readonly [number, number];
  readonly auroc: number;
  /** DeLong 95% interval. */
  readonly aurocCi: readonly [number, number];
  readonly trainAccuracy: number;
  /** null when the validation split is empty or one-class. */
  readonly valAccuracy: number | null;
  /** AUROC of the projection on the mean difference, and on the PCA direction, same examples. */
  readonly meanDiffAuroc: number;
  readonly pcaAuroc: number;
}

export interface LayerProbe {
  readonly layer: number;
  /** [D] probe weights on raw activations. */
  readonly w: Float32Array;
  readonly b: number;
  /** [D] mean(positive) - mean(negative) on the train split. */
  readonly meanDiff: Float32Array;
  /** [D] unit first principal component of paired differences, positives projecting higher. */
  readonly pca: Float32Array;
  readonly metrics: ProbeMetrics;
  /** Solver report: Newton iterations, convergence, max |gradient| at the solution. */
  readonly fit: { readonly iterations: number; readonly converged: boolean; readonly gradNorm: number };
}

export interface ConceptData {
  /** Names (or files) of the positive and negative prompt sets. */
  readonly positive: string;
  readonly negative: string;
  /** Held-out sets given explicitly (instead of, or next to, the seeded test split). */
  readonly testPositive: string | null;
  readonly testNegative: string | null;
  readonly seed: number;
  readonly split: SplitFractions;
  /** Content ids per split and class. */
  readonly ids: {
    readonly [K in SplitName]: { readonly positive: readonly string[]; readonly negative: readonly string[] };
  };
  /** Prompts found in both sets, left out of both. */
  readonly removedOverlap: number;
}

/** A monitor threshold on the concept score (see Concept.score), with how it was chosen. */
export interface ConceptThreshold {
  /** Flag when score > value; the score is the mean probe logit over `layers`. */
  readonly value: number;
  readonly layers: readonly number[];
  readonly targetFpr: number;
  /** Name of the (benign) calibration set. */
  readonly calibrationSet: string;
  readonly n: number;
  /** Share of the calibration set flagged at this threshold. */
  readonly achievedFpr: number;
  /** Share of a positive set flagged, when one was given. */
  readonly achievedTpr: number | null;
  /** Content ids of the calibration prompts (kept out of later evaluations). */
  readonly ids: readonly string[];
}

export interface ConceptInit {
  readonly name: string;
  readonly model: ConceptModel;
  readonly template: TemplateMode;
  readonly probe: { readonly C: number; readonly standardize: boolean };
  readonly data: ConceptData;
  readonly layers: readonly LayerProbe[];
  readonly threshold?: ConceptThreshold;
}

/** Per-layer reading and the combined score of one activation set. */
export interface ConceptScore {
  readonly layers: readonly {
    readonly layer: number;
    readonly logit: number;
    readonly probability: number;
  }[];
  /** Mean probe logit over the scoring layers. */
  readonly score: number;
  /** sigmoid(score). */
  readonly probability: number;
}

/** Default accuracy a layer's probe must beat to take part in scores and SCAV (the paper's P1). */
export const DEFAULT_P1 = 0.9;

export class Concept {
  readonly name: string;
  readonly model: ConceptModel;
  readonly hook = 'resid_post' as const;
  readonly position = 'last' as const;
  readonly template: TemplateMode;
  readonly probe: { readonly C: number; readonly standardize: boolean };
  readonly data: ConceptData;
  readonly layers: readonly LayerProbe[];
  readonly threshold: ConceptThreshold | undefined;

  constructor(init: ConceptInit) {
    this.name = init.name;
    this.model = init.model;
    this.template = init.template;
    this.probe = init.probe;
    this.data = init.data;
    this.layers = [...init.layers].sort((a, b) => a.layer - b.layer);
    this.threshold = init.threshold;
    if (this.layers.length === 0) throw new SteerguardError(`concept ${this.name} has no layers`);
    for (const p of this.layers) {
      if (
        p.w.length !== this.model.dModel ||
        p.meanDiff.length !== this.model.dModel ||
        p.pca.length !== this.model.dModel
      ) {
        throw new SteerguardError(
          `concept ${this.name}: layer ${p.layer} vectors do not have d_model = ${this.model.dModel} values`,
        );
      }
    }
  }

  /** Fits a concept; see trainConcept, which also returns timings and split counts. */
  static async train(opts: TrainConceptOptions): Promise<Concept> {
    return (await trainConcept(opts)).concept;
  }

  /** The probe of block `layer`; throws when the concept has none there. */
  layer(layer: number): LayerProbe {
    const p = this.layers.find((x) => x.layer === layer);
    if (!p)
      throw new SteerguardError(
        `concept ${this.name} has no probe for layer ${layer} (it has ${this.layerList()})`,
      );
    return p;
  }

  private layerList(): string {
    const ls = this.layers.map((p) => p.layer);
    return ls.length > 6 ? `${ls[0]}..${ls[ls.length - 1]}` : ls.join(', ');
  }

  /** w·e + b at `layer` (Float64). */
  logit(layer: number, activation: ArrayLike<number>): number {
    const p = this.layer(layer);
    if (activation.length !== p.w.length) {
      throw new SteerguardError(
        `activation has ${activation.length} values, the concept expects ${p.w.length}`,
      );
    }
    let z = p.b;
    for (let j = 0; j < p.w.length; j++) z += p.w[j] * activation[j];
    return z;
  }

  /** P(positive | activation) at `layer`. */
  probability(layer: number, activation: ArrayLike<number>): number {
    return sigmoid(this.logit(layer, activation));
  }

  /**
   * Layers whose probe accuracy beats `p1` (default 0.9), or the best layer alone when none does:
   * the layers scores and monitors use.
   */
  scoringLayers(p1 = DEFAULT_P1): number[] {
    const good = this.layers.filter((p) => p.metrics.accuracy > p1).map((p) => p.layer);
    return good.length > 0 ? good : [this.bestLayer()];
  }

  /**
   * Reads activations of one prompt, `rows` giving the activation [D] of each layer (a map or an
   * array indexed by layer). The score is the mean probe logit over `layers` (default: the
   * calibrated threshold's layers, else scoringLayers(p1)). Throws when a logit is not finite.
   */
  score(
    rows: ReadonlyMap<number, ArrayLike<number>> | readonly (ArrayLike<number> | undefined)[],
    opts: { layers?: readonly number[]; p1?: number } = {},
  ): ConceptScore {
    const layers = opts.layers ?? this.threshold?.layers ?? this.scoringLayers(opts.p1);
    const get = (l: number): ArrayLike<number> | undefined =>
      rows instanceof Map ? rows.get(l) : (rows as readonly (ArrayLike<number> | undefined)[])[l];
    const per = layers.map((l) => {
      const row = get(l);
      if (row === undefined) throw new SteerguardError(`no activation given for layer ${l}`);
      const z = this.logit(l, row);
      if (!Number.isFinite(z))
        throw new SteerguardError(
          `concept ${this.name}: the probe logit at layer ${l} is ${z}; the activation holds NaN or infinity`,
        );
      return { layer: l, logit: z, probability: sigmoid(z) };
    });
    const score = per.reduce((s, p) => s + p.logit, 0) / per.length;
    return { layers: per, score, probability: sigmoid(score) };
  }

  /**
   * The layer to use alone: best validation accuracy (test accuracy without a validation split),
   * then test accuracy, then test AUROC, then the earlier layer.
   */
  bestLayer(): number {
    const key = (p: LayerProbe): number[] => [
      p.metrics.valAccuracy ?? p.metrics.accuracy,
      p.metrics.accuracy,
      p.metrics.auroc,
    ];
    let best = this.layers[0];
    for (const p of this.layers.slice(1)) {
      const a = key(p);
      const b = key(best);
      for (let k = 0; k < a.length; k++) {
        if (a[k] > b[k]) {
          best = p;
          break;
        }
        if (a[k] < b[k]) break;
      }
    }
    return best.layer;
  }

  /** Content ids the concept was fitted or calibrated on: keep them out of evaluations. */
  get fittedIds(): string[] {
    const ids = this.data.ids;
    return [
      ...ids.train.positive,
      ...ids.train.negative,
      ...ids.val.positive,
      ...ids.val.negative,
      ...(this.threshold?.ids ?? []),
    ];
  }

  withThreshold(threshold: ConceptThreshold | undefined): Concept {
    return new Concept({ ...this.init(), threshold });
  }

  private init(): ConceptInit {
    return {
      name: this.name,
      model: this.model,
      template: this.template,
      probe: this.probe,
      data: this.data,
      layers: this.layers,
      threshold: this.threshold,
    };
  }

  /** Throws unless `model` is the model this concept was fitted on (or, with allowOtherModel, one of its shape). */
  checkModel(
    model: {
      readonly identity: ModelIdentity;
      readonly config: { readonly nLayers: number; readonly dModel: number };
    },
    opts: { allowOtherModel?: boolean } = {},
  ): void {
    const m = this.model;
    const c = model.config;
    const maxLayer = this.layers[this.layers.length - 1].layer;
    if (c.dModel !== m.dModel || c.nLayers <= maxLayer) {
      throw new SteerguardError(
        `concept ${this.name} was fitted on ${m.name} (${m.nLayers} layers, d_model ${m.dModel}); ` +
          `${model.identity.name} has ${c.nLayers} layers and d_model ${c.dModel}, so it cannot be used there`,
      );
    }
    if (model.identity.fingerprint !== m.fingerprint && !opts.allowOtherModel) {
      throw new SteerguardError(
        `concept ${this.name} was fitted on ${m.name} (fingerprint ${m.fingerprint.slice(0, 12)}), not on ` +
          `${model.identity.name} (fingerprint ${model.identity.fingerprint.slice(0, 12)}); a probe only reads the ` +
          'model it was trained on (pass allowOtherModel / --allow-other-model for a re-quantised copy of it)',
      );
    }
  }

  /** Writes the concept file atomically (see the file comment). */
  save(path: string): void {
    const tensors = this.layers.flatMap((p) => [
      { name: `probe.${p.layer}.weight`, dtype: 'F32' as const, shape: [p.w.length], data: p.w },
      { name: `probe.${p.layer}.bias`, dtype: 'F32' as const, shape: [1], data: Float32Array.of(p.b) },
      { name: `mean_diff.${p.layer}`, dtype: 'F32' as const, shape: [p.meanDiff.length], data: p.meanDiff },
      { name: `pca.${p.layer}`, dtype: 'F32' as const, shape: [p.pca.length], data: p.pca },
    ]);
    const meta = {
      name: this.name,
      model: this.model,
      hook: this.hook,
      position: this.position,
      template: this.template,
      probe: this.probe,
      data: this.data,
      layers: this.layers.map((p) => ({ layer: p.layer, b: p.b, metrics: p.metrics, fit: p.fit })),
      threshold: this.threshold ?? null,
    };
    writeSafetensors(path, tensors, {
      format: CONCEPT_FORMAT,
      format_version: CONCEPT_FORMAT_VERSION,
      concept: JSON.stringify(meta, (_k, v: unknown) =>
        typeof v === 'number' && !Number.isFinite(v) ? null : v,
      ),
    });
  }

  /**
   * Reads a concept file. With `model`, also checks that it is the model the concept was fitted
   * on (see checkModel). Throws FormatError for a file that is not a readable concept.
   */
  static load(
    path: string,
    model?: {
      readonly identity: ModelIdentity;
      readonly config: { readonly nLayers: number; readonly dModel: number };
    },
    opts: { allowOtherModel?: boolean } = {},
  ): Concept {
    const st = readSafetensorsHeader(path);
    const m = st.metadata;
    if (m.format !== CONCEPT_FORMAT) {
      throw new FormatError(
        path,
        '__metadata__.format',
        `is ${JSON.stringify(m.format ?? null)}, not a ${CONCEPT_FORMAT} file`,
      );
    }
    if (m.format_version !== CONCEPT_FORMAT_VERSION) {
      throw new FormatError(
        path,
        '__metadata__.format_version',
        `is ${JSON.stringify(m.format_version ?? null)}; this steerguard reads version ${CONCEPT_FORMAT_VERSION} (retrain the concept or upgrade)`,
      );
    }
    let meta: ConceptJson;
    try {
      meta = JSON.parse(m.concept ?? '') as ConceptJson;
    } catch {
      throw new FormatError(path, '__metadata__.concept', 'is not valid JSON');
    }
    if (
      !meta ||
      typeof meta !== 'object' ||
      !Array.isArray(meta.layers) ||
      !meta.model ||
      typeof meta.model.dModel !== 'number'
    ) {
      throw new FormatError(path, '__metadata__.concept', 'lacks the model or the layer list');
    }
    const d = meta.model.dModel;
    // A NaN or infinite weight makes every score NaN, and NaN > threshold is false: the monitor
    // would say "not flagged" for every prompt. So every number a score uses must be finite.
    const vec = (name: string, len: number): Float32Array => {
      const info = st.tensors.get(name);
      if (!info) throw new FormatError(path, name, 'missing tensor');
      const v = readSafetensorsTensorF32(info);
      if (v.length !== len) throw new FormatError(path, name, `has ${v.length} values, expected ${len}`);
      const bad = v.findIndex((x) => !Number.isFinite(x));
      if (bad >= 0) throw new FormatError(path, name, `value ${bad} is ${v[bad]}, not a finite number`);
      return v;
    };
    const finite = (field: string, v: unknown): number => {
      if (typeof v !== 'number' || !Number.isFinite(v))
        throw new FormatError(path, field, `is ${JSON.stringify(v ?? null)}, not a finite number`);
      return v;
    };
    const layers: LayerProbe[] = meta.layers.map((l, k) => {
      const w = vec(`probe.${l.layer}.weight`, d);
      const bias = vec(`probe.${l.layer}.bias`, 1)[0];
      return {
        layer: l.layer,
        w,
        // save() writes b next to the tensor; a file without it uses the tensor's value.
        b: l.b === undefined ? bias : finite(`__metadata__.concept.layers[${k}].b`, l.b),
        meanDiff: vec(`mean_diff.${l.layer}`, d),
        pca: vec(`pca.${l.layer}`, d),
        metrics: nullsToNaN(l.metrics),
        fit: l.fit,
      };
    });
    if (meta.threshold) finite('__metadata__.concept.threshold.value', meta.threshold.value);
    const concept = new Concept({
      name: meta.name,
      model: meta.model,
      template: meta.template,
      probe: meta.probe,
      data: meta.data,
      layers,
      threshold: meta.threshold ?? undefined,
    });
    if (model) concept.checkModel(model, opts);
    return concept;
  }

  /** A JSON summary (no vectors, no prompt ids). */
  summary() {
    return {
      name: this.name,
      model: {
        name: this.model.name,
        fingerprint: this.model.fingerprint,
        nLayers: this.model.nLayers,
        dModel: this.model.dModel,
      },
      template: this.template,
      data: {
        positive: this.data.positive,
        negative: this.data.negative,
        testPositive: this.data.testPositive,
        testNegative: this.data.testNegative,
        seed: this.data.seed,
        split: this.data.split,
        counts: Object.fromEntries(
          SPLIT_NAMES.map((s) => [
            s,
            { positive: this.data.ids[s].positive.length, negative: this.data.ids[s].negative.length },
          ]),
        ),
        removedOverlap: this.data.removedOverlap,
      },
      bestLayer: this.bestLayer(),
      layers: this.layers.map((p) => ({ layer: p.layer, ...p.metrics, fit: p.fit })),
      threshold: this.threshold
        ? { ...this.threshold, ids: undefined, calibrationPrompts: this.threshold.ids.length }
        : null,
    };
  }
}

interface ConceptJson {
  name: string;
  model: ConceptModel;
  template: TemplateMode;
  probe: { C: number; standardize: boolean };
  data: ConceptData;
  layers: { layer: number; b?: number; metrics: ProbeMetrics; fit: LayerProbe['fit'] }[];
  threshold: ConceptThreshold | null;
}

/** JSON has no NaN: metrics saved as null come back as NaN. */
function nullsToNaN(m: ProbeMetrics): ProbeMetrics {
  const fix = (v: number | null): number => (v === null ? NaN : v);
  return {
    ...m,
    accuracy: fix(m.accuracy),
    auroc: fix(m.auroc),
    trainAccuracy: fix(m.trainAccuracy),
    meanDiffAuroc: fix(m.meanDiffAuroc),
    pcaAuroc: fix(m.pcaAuroc),
  };
}

// ---------------------------------------------------------------------------------------------
// Training and evaluation

export interface TrainConceptOptions {
  readonly model: Model;
  readonly positive: readonly ConceptExample[];
  readonly negative: readonly ConceptExample[];
  /** Held-out sets: added to the test split (each must not overlap the training sets). */
  readonly testPositive?: readonly ConceptExample[];
  readonly testNegative?: readonly ConceptExample[];
  /** Default `${positive}-vs-${negative}`. */
  readonly name?: string;
  /** Set names recorded in the concept. */
  readonly sets?: { positive?: string; negative?: string; testPositive?: string; testNegative?: string };
  /** Default: 'chat' when the model has a chat template. */
  readonly template?: TemplateMode;
  readonly split?: SplitFractions;
  readonly seed?: number;
  /** Logistic-regression C (default 1). */
  readonly C?: number;
  readonly standardize?: boolean;
  /** Layers to fit (default all). */
  readonly layers?: readonly number[];
  readonly cacheDir?: string | false;
  readonly batchTokens?: number;
  readonly onProgress?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
  /** Let the model's engine compute the solver's Gram matrices in Float32 (default true; exact either way). */
  readonly useEngine?: boolean;
}

export interface TrainReport {
  readonly counts: { readonly [K in SplitName]: { readonly positive: number; readonly negative: number } };
  readonly removedOverlap: number;
  /** Prompts read from the activation cache / run through the model. */
  readonly cached: number;
  readonly computed: number;
  /** Wall time of activation extraction (cache reads included) and of the probe fits. */
  readonly extractSeconds: number;
  readonly forwardSeconds: number;
  readonly fitSeconds: number;
  /** CPU time of the probe fits (all threads): on a shared machine, steadier than wall time. */
  readonly fitCpuSeconds: number;
}

/** Float32 matmul of the model's engine, for the probe solver's Gram matrices. */
export function engineMatmul(model: Model): MatmulF32 | undefined {
  const be = model.backend;
  return typeof be?.matmul === 'function' ? (out, x, w, M, K, N) => be.matmul(out, x, w, M, K, N) : undefined;
}

/**
 * Runs `f` with the engine on one thread when it can be switched (the native engine), restoring
 * the count after. The solver calls matmul once per layer between long stretches of JavaScript;
 * idle BLAS worker threads spin for a while after each call and take the core the solver needs.
 */
export function singleThreaded<T>(model: Model, f: () => T): T {
  const be = model.backend as Model['backend'] & { setThreads?: (n: number) => void };
  const before = be.threads;
  if (typeof be.setThreads !== 'function' || before <= 1) return f();
  be.setThreads(1);
  try {
    return f();
  } finally {
    be.setThreads(before);
  }
}

/**
 * Fits a concept: splits both sets by content id and seed, extracts last-token activations of all
 * prompts (cached), fits per layer on the train split and measures on the test split.
 * Throws SteerguardError for an empty set or a split without both classes.
 */
export async function trainConcept(
  opts: TrainConceptOptions,
): Promise<{ concept: Concept; report: TrainReport }> {
  const { model } = opts;
  const seed = opts.seed ?? 0;
  const fractions = opts.split ?? DEFAULT_SPLIT;
  const sets = opts.sets ?? {};
  const posName = sets.positive ?? 'positive';
  const negName = sets.negative ?? 'negative';
  if (opts.positive.length === 0) throw new SteerguardError(`the positive set (${posName}) is empty`);
  if (opts.negative.length === 0) throw new SteerguardError(`the negative set (${negName}) is empty`);

  let pos = dedupeById(opts.positive).items;
  let neg = dedupeById(opts.negative).items;
  const posIds = new Set(pos.map((e) => e.id));
  const both = new Set(neg.filter((e) => posIds.has(e.id)).map((e) => e.id));
  if (both.size > 0) {
    pos = pos.filter((e) => !both.has(e.id));
    neg = neg.filter((e) => !both.has(e.id));
  }
  const ps = splitItems(pos, { seed, fractions });
  const ns = splitItems(neg, { seed, fractions });
  const testPos = [...ps.test];
  const testNeg = [...ns.test];
  const trainIds = [...ps.train, ...ps.val, ...ns.train, ...ns.val].map((e) => e.id);
  const addTest = (
    extra: readonly ConceptExample[] | undefined,
    into: ConceptExample[],
    what: string,
  ): void => {
    if (!extra) return;
    const uniq = dedupeById(extra).items;
    checkLeakage(trainIds, uniq, {
      what: `this concept's train/val split (the held-out ${what} set overlaps them)`,
    });
    const have = new Set(into.map((e) => e.id));
    for (const e of uniq) if (!have.has(e.id)) into.push(e);
  };
  addTest(opts.testPositive, testPos, 'positive');
  addTest(opts.testNegative, testNeg, 'negative');

  if (ps.train.length === 0 || ns.train.length === 0) {
    throw new SteerguardError(
      `the train split has ${ps.train.length} positive and ${ns.train.length} negative prompts; a probe needs both ` +
        '(use more prompts or a larger train fraction in --split)',
    );
  }

  const template = opts.template ?? defaultTemplate(model);
  const groups: { split: SplitName; label: 0 | 1; items: readonly ConceptExample[] }[] = [
    { split: 'train', label: 1, items: ps.train },
    { split: 'train', label: 0, items: ns.train },
    { split: 'val', label: 1, items: ps.val },
    { split: 'val', label: 0, items: ns.val },
    { split: 'test', label: 1, items: testPos },
    { split: 'test', label: 0, items: testNeg },
  ];
  const all = groups.flatMap((g) => g.items.map((e) => ({ e, split: g.split, label: g.label })));
  const t0 = performance.now();
  const acts = await extractLastToken(
    model,
    all.map((a) => a.e.prompt),
    {
      template,
      layers: opts.layers,
      cacheDir: opts.cacheDir,
      batchTokens: opts.batchTokens,
      onProgress: opts.onProgress,
      signal: opts.signal,
    },
  );
  const extractSeconds = (performance.now() - t0) / 1000;

  const t1 = performance.now();
  const cpu1 = process.cpuUsage();
  const layers = singleThreaded(model, () =>
    fitLayers(
      acts,
      all.map((a) => a.split),
      all.map((a) => a.label),
      {
        C: opts.C ?? 1,
        standardize: opts.standardize ?? false,
        matmul: opts.useEngine === false ? undefined : engineMatmul(model),
      },
    ),
  );
  const fitSeconds = (performance.now() - t1) / 1000;
  const cpu = process.cpuUsage(cpu1);
  const fitCpuSeconds = (cpu.user + cpu.system) / 1e6;

  const c = model.config;
  const ids = (items: readonly ConceptExample[]): string[] => items.map((e) => e.id);
  const concept = new Concept({
    name: opts.name ?? `${posName}-vs-${negName}`,
    model: { ...model.identity, nLayers: c.nLayers, dModel: c.dModel },
    template,
    probe: { C: opts.C ?? 1, standardize: opts.standardize ?? false },
    data: {
      positive: posName,
      negative: negName,
      testPositive: sets.testPositive ?? (opts.testPositive ? 'test-positive' : null),
      testNegative: sets.testNegative ?? (opts.testNegative ? 'test-negative' : null),
      seed,
      split: fractions,
      ids: {
        train: { positive: ids(ps.train), negative: ids(ns.train) },
        val: { positive: ids(ps.val), negative: ids(ns.val) },
        test: { positive: ids(testPos), negative: ids(testNeg) },
      },
      removedOverlap: both.size,
    },
    layers,
  });
  const count = (s: SplitName) => ({
    positive: concept.data.ids[s].positive.length,
    negative: concept.data.ids[s].negative.length,
  });
  return {
    concept,
    report: {
      counts: { train: count('train'), val: count('val'), test: count('test') },
      removedOverlap: both.size,
      cached: acts.cached,
      computed: acts.computed,
      extractSeconds,
      forwardSeconds: acts.forwardSeconds,
      fitSeconds,
      fitCpuSeconds,
    },
  };
}

function rowsOf(m: Float32Array, idx: readonly number[], d: number): Float32Array {
  const out = new Float32Array(idx.length * d);
  idx.forEach((i, k) => out.set(m.subarray(i * d, (i + 1) * d), k * d));
  return out;
}

function project(m: Float32Array, n: number, d: number, v: ArrayLike<number>, b = 0): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = b;
    const o = i * d;
    for (let j = 0; j < d; j++) s += m[o + j] * v[j];
    out[i] = s;
  }
  return out;
}

/**
 * Fits every layer of `acts` on the rows marked 'train' and measures on 'test' (falling back to
 * 'val', then 'train', when a split lacks a class). Exported for benchmarks and tests.
 */
export function fitLayers(
  acts: Pick<LayerActivations, 'layers' | 'n' | 'd' | 'data'>,
  splits: readonly SplitName[],
  labels: readonly (0 | 1)[],
  opts: { C?: number; standardize?: boolean; matmul?: MatmulF32 } = {},
): LayerProbe[] {
  const { d } = acts;
  const idx = (s: SplitName): number[] => splits.map((x, i) => (x === s ? i : -1)).filter((i) => i >= 0);
  const bySplit = { train: idx('train'), val: idx('val'), test: idx('test') };
  const labelsOf = (rows: readonly number[]): Uint8Array => Uint8Array.from(rows, (i) => labels[i]);
  const twoClasses = (rows: readonly number[]): boolean => {
    const l = labelsOf(rows);
    return l.includes(1) && l.includes(0);
  };
  const evalSplit: SplitName = twoClasses(bySplit.test) ? 'test' : twoClasses(bySplit.val) ? 'val' : 'train';
  const trainY = labelsOf(bySplit.train);
  return acts.layers.map((layer, k) => {
    const m = acts.data[k];
    const xTrain = rowsOf(m, bySplit.train, d);
    const fit = fitLogistic(xTrain, trainY, d, {
      C: opts.C,
      standardize: opts.standardize,
      matmul: opts.matmul,
    });
    const meanDiff = differenceOfMeans(xTrain, trainY, d);
    const pca = pcaDirection(xTrain, trainY, d, { matmul: opts.matmul });
    const scoreOn = (rows: readonly number[], v: ArrayLike<number>, b = 0): Float64Array =>
      project(rowsOf(m, rows, d), rows.length, d, v, b);
    const evalRows = bySplit[evalSplit];
    const evalY = labelsOf(evalRows);
    const z = scoreOn(evalRows, fit.w, fit.b);
    const acc = accuracy(z, evalY);
    const au = auroc(z, evalY);
    const right = Math.round(acc * evalRows.length);
    const nPos = evalY.reduce((s, v) => s + v, 0);
    const valY = labelsOf(bySplit.val);
    const valAccuracy = twoClasses(bySplit.val) ? accuracy(scoreOn(bySplit.val, fit.w, fit.b), valY) : null;
    const metrics: ProbeMetrics = {
      split: evalSplit,
      n: evalRows.length,
      nPositive: nPos,
      nNegative: evalRows.length - nPos,
      accuracy: acc,
      accuracyCi: wilsonInterval(right, evalRows.length),
      auroc: au.auroc,
      aurocCi: au.ci,
      trainAccuracy: accuracy(project(xTrain, bySplit.train.length, d, fit.w, fit.b), trainY),
      valAccuracy,
      meanDiffAuroc: auroc(scoreOn(evalRows, meanDiff), evalY).auroc,
      pcaAuroc: auroc(scoreOn(evalRows, pca), evalY).auroc,
    };
    return {
      layer,
      w: Float32Array.from(fit.w),
      b: fit.b,
      meanDiff: Float32Array.from(meanDiff),
      pca: Float32Array.from(pca),
      metrics,
      fit: { iterations: fit.iterations, converged: fit.converged, gradNorm: fit.gradNorm },
    };
  });
}

export interface EvalLayerResult {
  readonly layer: number;
  readonly n: number;
  readonly accuracy: number;
  readonly accuracyCi: readonly [number, number];
  readonly auroc: number;
  readonly aurocCi: readonly [number, number];
}

export interface ConceptEvaluation {
  readonly nPositive: number;
  readonly nNegative: number;
  readonly layers: readonly EvalLayerResult[];
  /** The combined score (mean logit over the scoring layers) as a classifier. */
  readonly combined: EvalLayerResult & {
    readonly scoringLayers: readonly number[];
    /** Rates at the calibrated threshold, when the concept has one. */
    readonly atThreshold: { readonly threshold: number; readonly tpr: number; readonly fpr: number } | null;
  };
  /** Evaluation prompts the concept was fitted on (only when allowed). */
  readonly overlap: number;
  readonly cached: number;
  readonly computed: number;
}

/**
 * Measures a concept on labelled prompts. Refuses (LeakageError) prompts the concept was fitted
 * or calibrated on unless `allowOverlap`.
 */
export async function evaluateConcept(
  concept: Concept,
  model: Model,
  positive: readonly ConceptExample[],
  negative: readonly ConceptExample[],
  opts: {
    allowOverlap?: boolean;
    p1?: number;
    cacheDir?: string | false;
    batchTokens?: number;
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<ConceptEvaluation> {
  concept.checkModel(model);
  const pos = dedupeById(positive).items;
  const neg = dedupeById(negative).items;
  if (pos.length === 0 || neg.length === 0) {
    throw new SteerguardError(
      `evaluation needs both classes; got ${pos.length} positive and ${neg.length} negative prompts`,
    );
  }
  const overlap = checkLeakage(concept.fittedIds, [...pos, ...neg], {
    allow: opts.allowOverlap,
    what: `concept ${concept.name}`,
  });
  const items = [...pos, ...neg];
  const labels = Uint8Array.from(items, (_, i) => (i < pos.length ? 1 : 0));
  const acts = await extractLastToken(
    model,
    items.map((e) => e.prompt),
    {
      template: concept.template,
      layers: concept.layers.map((p) => p.layer),
      cacheDir: opts.cacheDir,
      batchTokens: opts.batchTokens,
      onProgress: opts.onProgress,
    },
  );
  const n = items.length;
  const d = acts.d;
  const logits = acts.layers.map((l, k) => {
    const p = concept.layer(l);
    return project(acts.data[k], n, d, p.w, p.b);
  });
  const result = (layer: number, z: Float64Array): EvalLayerResult => {
    const acc = accuracy(z, labels);
    const au = auroc(z, labels);
    return {
      layer,
      n,
      accuracy: acc,
      accuracyCi: wilsonInterval(Math.round(acc * n), n),
      auroc: au.auroc,
      aurocCi: au.ci,
    };
  };
  const scoring = concept.threshold?.layers ?? concept.scoringLayers(opts.p1);
  const combinedZ = new Float64Array(n);
  for (const l of scoring) {
    const z = logits[acts.layers.indexOf(l)];
    for (let i = 0; i < n; i++) combinedZ[i] += z[i] / scoring.length;
  }
  let atThreshold: ConceptEvaluation['combined']['atThreshold'] = null;
  if (concept.threshold) {
    const t = concept.threshold.value;
    let tp = 0;
    let fp = 0;
    for (let i = 0; i < n; i++) {
      if (!(combinedZ[i] > t)) continue;
      if (labels[i] === 1) tp++;
      else fp++;
    }
    atThreshold = { threshold: t, tpr: tp / pos.length, fpr: fp / neg.length };
  }
  return {
    nPositive: pos.length,
    nNegative: neg.length,
    layers: acts.layers.map((l, k) => result(l, logits[k])),
    combined: { ...result(-1, combinedZ), scoringLayers: scoring, atThreshold },
    overlap: overlap.length,
    cached: acts.cached,
    computed: acts.computed,
  };
}
