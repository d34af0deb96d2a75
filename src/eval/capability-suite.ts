/**
 * The capability suite as one call: MMLU, GSM8K and TruthfulQA loaded from a data folder on their
 * fixed seeded subsets, run under one steering, and summarised as figures with 95% intervals.
 * `steerguard eval capability` and the audit's capability step both run it, so that the audit's
 * capability cost is the number `eval capability` prints for the same subsets.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import {
  type Gsm8kProblem,
  type MmluQuestion,
  type TruthfulQaQuestion,
  loadGsm8k,
  loadMmlu,
  loadTruthfulQa,
} from '../data/benchmarks.js';
import { OptionError } from '../formats/errors.js';
import type { Model } from '../model/model.js';
import {
  DEFAULT_LIMITS,
  type Rate,
  type TaskOptions,
  evaluateGsm8k,
  evaluateMmlu,
  evaluateTruthfulQa,
  sampleItems,
} from './capability.js';

export const CAPABILITY_TASKS = ['mmlu', 'gsm8k', 'truthfulqa'] as const;
export type CapabilityTask = (typeof CAPABILITY_TASKS)[number];
export const BIAS_TASKS = ['bbq', 'crows-pairs'] as const;
export type BiasTask = (typeof BIAS_TASKS)[number];

/** Where each benchmark lies under the data folder (`../shared/datasets` layout). */
export const BENCHMARK_PATHS: Readonly<Record<CapabilityTask | BiasTask, string>> = {
  mmlu: 'mmlu',
  gsm8k: 'gsm8k/test.jsonl',
  truthfulqa: 'truthfulqa/TruthfulQA.csv',
  bbq: 'bbq',
  'crows-pairs': 'crows_pairs/crows_pairs_anonymized.csv',
};

/** Throws, naming the path, unless every task's data is under `dir`. */
export function checkBenchmarkData(dir: string, tasks: readonly (CapabilityTask | BiasTask)[]): void {
  for (const t of tasks) {
    const p = path.join(dir, BENCHMARK_PATHS[t]);
    if (!existsSync(p)) throw new OptionError(`task ${t} needs ${p}, which does not exist`);
  }
}

/** One task's headline number, as printed, in --json and in the audit report. */
export interface Figure {
  readonly task: string;
  readonly metric: string;
  readonly n: number;
  readonly value: number;
  readonly ci: readonly [number, number];
  /** How the interval is computed. */
  readonly interval: 'wilson' | 'normal' | 'bootstrap';
  /** Items the steering put hooks on (all of them for static steering, none for the baseline). */
  readonly steered: number;
}

export function rateFigure(task: string, metric: string, r: Rate, steered: number): Figure {
  return { task, metric, n: r.n, value: r.rate, ci: r.ci, interval: 'wilson', steered };
}

export const steeredIn = (rows: readonly { readonly steered: boolean }[]): number =>
  rows.filter((r) => r.steered).length;

/** The items of each asked task, loaded and subset before any model runs. */
export interface CapabilityData {
  readonly mmlu?: { readonly test: readonly MmluQuestion[]; readonly dev: readonly MmluQuestion[] };
  readonly gsm8k?: { readonly test: readonly Gsm8kProblem[]; readonly shots: readonly Gsm8kProblem[] };
  readonly truthfulqa?: readonly TruthfulQaQuestion[];
}

export interface CapabilityDataOptions {
  /** Items per task (default: `DEFAULT_LIMITS`). */
  readonly limit?: number;
  readonly seed: number;
  /** Worked examples before each MMLU question (dev split) and GSM8K problem (train split). */
  readonly shots: number;
}

/**
 * Loads the asked tasks from `dir` on their fixed seeded subsets (MMLU stratified by subject), so
 * that a malformed file fails before a model is loaded.
 */
export function loadCapabilityData(
  dir: string,
  tasks: readonly CapabilityTask[],
  o: CapabilityDataOptions,
): CapabilityData {
  checkBenchmarkData(dir, tasks);
  const limit = (t: CapabilityTask) => o.limit ?? DEFAULT_LIMITS[t];
  const file = (t: CapabilityTask) => path.join(dir, BENCHMARK_PATHS[t]);
  return {
    mmlu: tasks.includes('mmlu')
      ? {
          test: sampleItems(loadMmlu(file('mmlu'), 'test'), limit('mmlu'), {
            seed: o.seed,
            stratum: (q) => q.subject,
          }),
          dev: o.shots > 0 ? loadMmlu(file('mmlu'), 'dev') : [],
        }
      : undefined,
    gsm8k: tasks.includes('gsm8k')
      ? {
          test: sampleItems(loadGsm8k(file('gsm8k')), limit('gsm8k'), { seed: o.seed }),
          shots:
            o.shots > 0
              ? sampleItems(loadGsm8k(path.join(path.dirname(file('gsm8k')), 'train.jsonl')), o.shots, {
                  seed: o.seed,
                })
              : [],
        }
      : undefined,
    truthfulqa: tasks.includes('truthfulqa')
      ? sampleItems(loadTruthfulQa(file('truthfulqa')), limit('truthfulqa'), { seed: o.seed })
      : undefined,
  };
}

/** GSM8K's default reply budget: room for a worked answer before "Question:" (lm-evaluation-harness: 256). */
export const GSM8K_MAX_TOKENS = 256;

export interface CapabilityRunOptions extends TaskOptions {
  /** MMLU worked examples (the data's dev split must hold them). */
  readonly shots: number;
  /** GSM8K: tokens generated per reply at most (greedy). */
  readonly maxNewTokens: number;
  /** GSM8K: problems generated together (default 16). */
  readonly batch?: number;
  readonly signal?: AbortSignal;
}

/** What one run of the suite gives: the figures, the per-item rows by task, and per-task extras. */
export interface CapabilityRun {
  readonly figures: readonly Figure[];
  /** Per-item rows by task (GSM8K rows carry their reply). */
  readonly rows: Readonly<Record<string, unknown>>;
  /** MMLU per subject (`mmluSubjects`) and GSM8K replies with no number (`gsm8kUnparsed`). */
  readonly extra: Readonly<Record<string, unknown>>;
  /** Each figure's per-item values (1 correct, 0 not; MC2 the true mass), in item order. */
  readonly itemScores: readonly (readonly number[])[];
}

/** A paired difference of means over the same items: b − a, with a 95% normal interval. */
export interface PairedDifference {
  readonly n: number;
  readonly delta: number;
  readonly ci: readonly [number, number];
}

/**
 * The mean of b[i] − a[i] with mean ± 1.96·sd/√n: the change a steering makes on the same items,
 * narrower than comparing the two runs' own intervals when the items agree mostly.
 */
export function pairedDifference(a: readonly number[], b: readonly number[]): PairedDifference {
  if (a.length !== b.length || a.length === 0)
    throw new OptionError(
      `a paired difference needs two equal, non-empty lists (got ${a.length} and ${b.length})`,
    );
  const d = a.map((x, i) => b[i] - x);
  const n = d.length;
  const mean = d.reduce((s, x) => s + x, 0) / n;
  const sd = n > 1 ? Math.sqrt(d.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1)) : NaN;
  const half = (1.96 * sd) / Math.sqrt(n);
  return { n, delta: mean, ci: [mean - half, mean + half] };
}

/**
 * The metric names of the suite's figures and of their paired changes, for a run with `shots`
 * worked examples before each MMLU question and GSM8K problem.
 */
export function capabilityMetrics(shots: number): {
  mmlu: string;
  gsm8k: string;
  mc1: string;
  mc2: string;
} {
  return {
    mmlu: `accuracy (${shots}-shot)`,
    gsm8k: `exact match (${shots}-shot)`,
    mc1: 'MC1 accuracy',
    mc2: 'MC2 true mass',
  };
}

/** One figure's items as a rows file holds them: a key per item and its score. */
export interface FigureItems {
  readonly task: string;
  readonly metric: string;
  readonly keys: readonly string[];
  readonly scores: readonly number[];
}

/**
 * The per-item scores of each figure from the `rows` of `runCapability` (or of a rows file of
 * `eval capability --out`) of a run with `shots` worked examples: MMLU accuracy, GSM8K exact match,
 * TruthfulQA MC1 and MC2, in that order, for the tasks present, named as the run's figures
 * ({@link capabilityMetrics}). `where` names the source in errors.
 */
export function figureItems(
  rows: Readonly<Record<string, unknown>>,
  shots: number,
  where: string,
): FigureItems[] {
  const metric = capabilityMetrics(shots);
  const list = (task: string): Record<string, unknown>[] | undefined => {
    const v = rows[task];
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) throw new OptionError(`${where}: rows.${task} is not a list`);
    return v as Record<string, unknown>[];
  };
  const field = (
    task: string,
    r: Record<string, unknown>,
    i: number,
    name: string,
    kind: 'number' | 'boolean',
  ) => {
    const v = r[name];
    if (typeof v !== kind || (kind === 'number' && !Number.isFinite(v)))
      throw new OptionError(
        `${where}: rows.${task}[${i}].${name} is not a ${kind === 'number' ? 'finite number' : 'boolean'}`,
      );
    return v as number | boolean;
  };
  const out: FigureItems[] = [];
  const mmlu = list('mmlu');
  if (mmlu)
    out.push({
      task: 'mmlu',
      metric: metric.mmlu,
      keys: mmlu.map((r, i) => `${String(r.subject)}/${String(r.row ?? r.index ?? i)}`),
      scores: mmlu.map((r, i) => (field('mmlu', r, i, 'correct', 'boolean') ? 1 : 0)),
    });
  const gsm8k = list('gsm8k');
  if (gsm8k)
    out.push({
      task: 'gsm8k',
      metric: metric.gsm8k,
      keys: gsm8k.map((r, i) => String(field('gsm8k', r, i, 'index', 'number'))),
      scores: gsm8k.map((r, i) => (field('gsm8k', r, i, 'correct', 'boolean') ? 1 : 0)),
    });
  const tqa = list('truthfulqa');
  if (tqa) {
    const keys = tqa.map((r, i) => String(field('truthfulqa', r, i, 'index', 'number')));
    out.push(
      {
        task: 'truthfulqa',
        metric: metric.mc1,
        keys,
        scores: tqa.map((r, i) => (field('truthfulqa', r, i, 'mc1', 'boolean') ? 1 : 0)),
      },
      {
        task: 'truthfulqa',
        metric: metric.mc2,
        keys,
        scores: tqa.map((r, i) => field('truthfulqa', r, i, 'mc2', 'number') as number),
      },
    );
  }
  return out;
}

/** A figure's change from a baseline run to this one, on the same items. */
export interface FigureChange extends PairedDifference {
  readonly task: string;
  readonly metric: string;
  readonly before: number;
  readonly after: number;
}

/**
 * Paired changes (`after` − `before`) for every figure both runs have. The items must be the same
 * (same task subsets: same --limit and --seed), else an error naming the first that differs.
 */
export function figureChanges(
  before: readonly FigureItems[],
  after: readonly FigureItems[],
  where: string,
): FigureChange[] {
  const out: FigureChange[] = [];
  for (const a of after) {
    const b = before.find((x) => x.task === a.task && x.metric === a.metric);
    if (!b) continue;
    const k = a.keys.findIndex((key, i) => b.keys[i] !== key);
    if (a.keys.length !== b.keys.length || k >= 0)
      throw new OptionError(
        `${where}: its ${a.task} items are not this run's (${b.keys.length} vs ${a.keys.length} items` +
          `${k >= 0 ? `, item ${k} differs` : ''}): use the same --limit and --seed`,
      );
    const mean = (x: readonly number[]) => x.reduce((t, v) => t + v, 0) / x.length;
    out.push({
      task: a.task,
      metric: a.metric,
      before: mean(b.scores),
      after: mean(a.scores),
      ...pairedDifference(b.scores, a.scores),
    });
  }
  if (out.length === 0) throw new OptionError(`${where}: no task in common with this run`);
  return out;
}

/** Runs every task present in `data` under `opts.steering` (none: the unsteered model). */
export async function runCapability(
  model: Model,
  data: CapabilityData,
  opts: CapabilityRunOptions,
): Promise<CapabilityRun> {
  const run: TaskOptions = { chat: opts.chat, steering: opts.steering, reporter: opts.reporter };
  const figures: Figure[] = [];
  const itemScores: number[][] = [];
  const rows: Record<string, unknown> = {};
  const extra: Record<string, unknown> = {};
  const bit = (x: boolean) => (x ? 1 : 0);
  const metric = capabilityMetrics(opts.shots);
  if (data.mmlu) {
    const r = await evaluateMmlu(model, data.mmlu.test, { ...run, shots: opts.shots, dev: data.mmlu.dev });
    figures.push(rateFigure('mmlu', metric.mmlu, r.overall, steeredIn(r.rows)));
    itemScores.push(r.rows.map((x) => bit(x.correct)));
    extra.mmluSubjects = r.subjects;
    rows.mmlu = r.rows;
  }
  if (data.gsm8k) {
    const r = await evaluateGsm8k(model, data.gsm8k.test, {
      ...run,
      shots: data.gsm8k.shots,
      maxNewTokens: opts.maxNewTokens,
      batch: opts.batch,
      signal: opts.signal,
    });
    figures.push(rateFigure('gsm8k', metric.gsm8k, r.accuracy, steeredIn(r.rows)));
    itemScores.push(r.rows.map((x) => bit(x.correct)));
    extra.gsm8kUnparsed = r.unparsed;
    rows.gsm8k = r.rows.map((row, i) => ({ ...row, reply: r.replies[i] }));
  }
  if (data.truthfulqa) {
    const r = await evaluateTruthfulQa(model, data.truthfulqa, run);
    const steered = steeredIn(r.rows);
    figures.push(rateFigure('truthfulqa', metric.mc1, r.mc1, steered), {
      task: 'truthfulqa',
      metric: metric.mc2,
      n: r.mc2.n,
      value: r.mc2.mean,
      ci: r.mc2.ci,
      interval: 'normal',
      steered,
    });
    itemScores.push(
      r.rows.map((x) => bit(x.mc1)),
      r.rows.map((x) => x.mc2),
    );
    rows.truthfulqa = r.rows;
  }
  return { figures, rows, extra, itemScores };
}
