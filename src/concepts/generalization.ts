/**
 * Does a harmful-request reading generalise? Fit and choose on development sources by
 * leave-one-source-out validation (sources.ts), then report on test sources that took part in
 * nothing: the headline figures of a concept.
 *
 *   const report = await measureGeneralization(model, {
 *     dev: { harmful: [advbench, scavMalicious], benign: [alpaca, xstestSafeHomonyms] },
 *     test: { harmful: [harmbench], benign: [xstestSafePrivacy] },
 *   });
 *   report.chosen.test;   // per test source: AUROC, TPR at the dev-chosen threshold, intervals
 *
 * Each reading (probe, difference of means, PCA) gets its own best candidate on the dev sources
 * and its own test table, so the three are compared on the same held-out sources.
 */
import { SteerguardError } from '../formats/errors.js';
import type { PromptSet, SetPrompt } from '../data/datasets.js';
import type { Model, Prompt } from '../model/model.js';
import { type ExtractOptions, type LayerActivations, extractLastToken } from './activations.js';
import { engineMatmul, singleThreaded } from './concept.js';
import { auroc, wilsonInterval } from './probe.js';
import {
  type HeldOutSourceResult,
  type LabelledSource,
  type ReadingCandidate,
  type ReadingMethod,
  type SourceReading,
  type SourceValidation,
  type SourceValidationOptions,
  bestCandidate,
  checkSources,
  fitSourceReading,
  leaveOneSourceOut,
  scoreWithReading,
} from './sources.js';

export interface SourceGroups {
  readonly harmful: readonly PromptSet[];
  readonly benign: readonly PromptSet[];
}

export interface GeneralizationOptions
  extends
    Pick<ExtractOptions, 'template' | 'layers' | 'cacheDir' | 'batchTokens' | 'signal'>,
    Omit<SourceValidationOptions, 'onProgress'> {
  /** Sources to fit and choose on (at least 2 of each class). */
  readonly dev: SourceGroups;
  /** Sources used for nothing but the report (at least 1 of each class). */
  readonly test: SourceGroups;
  /** The model input of a source's prompt (default its text, templated by `template`). */
  readonly asPrompt?: (prompt: SetPrompt, source: PromptSet) => Prompt;
  /** Progress of the two stages. */
  readonly onProgress?: (stage: 'activations' | 'folds', done: number, total: number) => void;
}

export interface ReadingReport {
  /** The reading's best candidate on the dev sources (validation figures). */
  readonly dev: ReadingCandidate;
  /** Its figures on the test sources (headline figures). */
  /** Each test source against the other class's test rows, at the dev-chosen threshold. */
  readonly test: readonly HeldOutSourceResult[];
  readonly testWorstAuroc: number;
  /** All test rows pooled, harmful against benign. */
  readonly testPooled: {
    readonly auroc: number;
    readonly aurocCi: readonly [number, number];
    readonly tpr: number;
    readonly fpr: number;
  };
  readonly reading: SourceReading;
}

export interface GeneralizationReport {
  readonly validation: SourceValidation;
  /** The reading leave-one-source-out chose, with its test figures. */
  readonly chosen: ReadingReport;
  /** Every reading's own best candidate, on the same test sources (for comparison). */
  readonly byMethod: readonly ReadingReport[];
  readonly testSources: readonly { readonly name: string; readonly label: 0 | 1; readonly n: number }[];
  readonly forwardSeconds: number;
}

function labelled(groups: SourceGroups): LabelledSource[] {
  return [
    ...groups.harmful.map((s) => ({ name: s.name, label: 1 as const, ids: s.prompts.map((p) => p.id) })),
    ...groups.benign.map((s) => ({ name: s.name, label: 0 as const, ids: s.prompts.map((p) => p.id) })),
  ];
}

function slice(acts: LayerActivations, from: number, to: number): LayerActivations {
  const d = acts.d;
  return { ...acts, n: to - from, data: acts.data.map((m) => m.subarray(from * d, to * d)) };
}

/** Test table of one fitted reading. */
function testFigures(
  acts: LayerActivations,
  sources: readonly LabelledSource[],
  reading: SourceReading,
): Omit<ReadingReport, 'dev' | 'reading'> {
  const scores = scoreWithReading(acts, reading);
  const owner: number[] = sources.flatMap((s, k) => s.ids.map(() => k));
  const rowsOf = (pred: (k: number) => boolean): number[] => {
    const out: number[] = [];
    scores.forEach((v, i) => pred(owner[i]) && out.push(v));
    return out;
  };
  const harmful = rowsOf((k) => sources[k].label === 1);
  const benign = rowsOf((k) => sources[k].label === 0);
  const figures = (pos: number[], neg: number[]) => {
    const au = auroc([...pos, ...neg], [...pos.map(() => 1), ...neg.map(() => 0)]);
    const tp = pos.filter((v) => v > reading.threshold).length;
    const fp = neg.filter((v) => v > reading.threshold).length;
    return { au, tp, fp };
  };
  const test = sources.map((s, k): HeldOutSourceResult => {
    const mine = rowsOf((j) => j === k);
    const [pos, neg] = s.label === 1 ? [mine, benign] : [harmful, mine];
    const { au, tp, fp } = figures(pos, neg);
    return {
      source: s.name,
      label: s.label,
      n: mine.length,
      auroc: au.auroc,
      aurocCi: au.ci,
      tpr: tp / pos.length,
      tprCi: wilsonInterval(tp, pos.length),
      fpr: fp / neg.length,
    };
  });
  const pooled = figures(harmful, benign);
  return {
    test,
    testWorstAuroc: Math.min(...test.map((t) => t.auroc)),
    testPooled: {
      auroc: pooled.au.auroc,
      aurocCi: pooled.au.ci,
      tpr: pooled.tp / harmful.length,
      fpr: pooled.fp / benign.length,
    },
  };
}

/**
 * Checks the sources before any activation is computed: the development sources as
 * leaveOneSourceOut needs them, at least one test source of each class, and no test prompt among
 * the development prompts (a test figure on prompts used for fitting or choosing is not one).
 */
export function checkGeneralizationSources(
  devGroups: SourceGroups,
  testGroups: SourceGroups,
  minPerSource?: number,
): { dev: LabelledSource[]; test: LabelledSource[] } {
  const dev = labelled(devGroups);
  const test = labelled(testGroups);
  checkSources(dev, minPerSource);
  for (const label of [1, 0] as const)
    if (!test.some((s) => s.label === label))
      throw new SteerguardError(`the test sources need at least one ${label ? 'harmful' : 'benign'} source`);
  const devIds = new Map<string, string>();
  for (const s of dev) for (const id of s.ids) devIds.set(id, s.name);
  for (const s of test) {
    const shared = s.ids.filter((id) => devIds.has(id));
    if (shared.length > 0)
      throw new SteerguardError(
        `test source ${s.name} shares ${shared.length} prompt(s) with dev source ${devIds.get(shared[0])}: ` +
          'a test figure on prompts the reading was fitted or chosen on is not a test figure',
      );
  }
  return { dev, test };
}

/** Runs the protocol of the file comment on `model`. */
export async function measureGeneralization(
  model: Model,
  opts: GeneralizationOptions,
): Promise<GeneralizationReport> {
  const { dev, test } = checkGeneralizationSources(opts.dev, opts.test, opts.minPerSource);
  const sets = [...opts.dev.harmful, ...opts.dev.benign, ...opts.test.harmful, ...opts.test.benign];
  const prompts = sets.flatMap((s) => s.prompts.map((p) => (opts.asPrompt ? opts.asPrompt(p, s) : p.text)));
  const acts = await extractLastToken(model, prompts, {
    template: opts.template,
    layers: opts.layers,
    cacheDir: opts.cacheDir,
    batchTokens: opts.batchTokens,
    signal: opts.signal,
    onProgress: (done, total) => opts.onProgress?.('activations', done, total),
  });
  const nDev = dev.reduce((n, s) => n + s.ids.length, 0);
  const devActs = slice(acts, 0, nDev);
  const testActs = slice(acts, nDev, acts.n);
  const fitOptions: SourceValidationOptions = {
    methods: opts.methods,
    combine: opts.combine,
    targetFpr: opts.targetFpr,
    minPerSource: opts.minPerSource,
    C: opts.C,
    standardize: opts.standardize,
    matmul: opts.matmul ?? engineMatmul(model),
  };
  const validation = singleThreaded(model, () =>
    leaveOneSourceOut(devActs, dev, {
      ...fitOptions,
      onProgress: (done, total) => opts.onProgress?.('folds', done, total),
    }),
  );

  const reportFor = (cand: ReadingCandidate): ReadingReport => {
    const reading = fitSourceReading(devActs, dev, cand, fitOptions);
    return { dev: cand, reading, ...testFigures(testActs, test, reading) };
  };
  const methods = [...new Set(validation.candidates.map((c) => c.method))] as ReadingMethod[];
  const bestOf = (m: ReadingMethod): ReadingCandidate =>
    bestCandidate(validation.candidates.filter((c) => c.method === m));
  const chosen = reportFor(validation.selection);
  const byMethod = methods.map((m) => (m === validation.selection.method ? chosen : reportFor(bestOf(m))));
  return {
    validation,
    chosen,
    byMethod,
    testSources: test.map((s) => ({ name: s.name, label: s.label, n: s.ids.length })),
    forwardSeconds: acts.forwardSeconds,
  };
}
