/**
 * One refusal evaluation as the CLI and the audit run it: judges chosen by name (a Llama Guard
 * server is checked before any generation; model judges run on a judge model loaded by the
 * caller), then `evaluateRefusal` under a steering, with its
 * progress reported and stoppable through an AbortSignal.
 */
import { OptionError } from '../formats/errors.js';
import type { Model } from '../model/model.js';
import { JUDGE_NAMES, type Judge, makeJudge } from './judges.js';
import { MODEL_JUDGE_FORMATS, type ModelJudgeFormat, modelJudge } from './model-judge.js';
import { type EvalPrompt, type RefusalEvalResult, evaluateRefusal } from './refusal.js';
import { type ProgressReporter, type Reporter, silentReporter } from './reporter.js';
import type { Steering } from './steering.js';

/** Every judge name: keyword lists, Llama Guard over HTTP, and the in-process model judges. */
export const ALL_JUDGE_NAMES: readonly string[] = Object.freeze([
  ...JUDGE_NAMES,
  ...MODEL_JUDGE_FORMATS.map((f) => `model-${f}`),
]);

/** Judges by name, and how to reach a Llama Guard server or load a judge model. */
export interface JudgeSelection {
  /** Judge names (see ALL_JUDGE_NAMES); repeats are dropped. */
  readonly judge: readonly string[];
  /** OpenAI-compatible server running Llama Guard (needed by 'llamaguard'). */
  readonly judgeUrl?: string;
  /** Chat model file the model judges (`model-*`) run on. */
  readonly judgeModel?: string;
  /** Seconds per judge request. */
  readonly judgeTimeout: number;
  /** Judge requests in flight. */
  readonly judgeConcurrency: number;
}

/** What a judge's positive verdict means, from its name: unsafe for the safety classifiers. */
export function judgeMeasures(name: string): 'refusal' | 'unsafe' {
  return name === 'llamaguard' || name === 'model-llamaguard' || name === 'model-harmbench'
    ? 'unsafe'
    : 'refusal';
}

const modelFormat = (name: string): ModelJudgeFormat | undefined =>
  name.startsWith('model-') ? (name.slice(6) as ModelJudgeFormat) : undefined;

/** Throws unless every name is a judge. Returns the names, repeats dropped. */
export function checkJudgeNames(names: readonly string[]): string[] {
  const unique = [...new Set(names)];
  for (const n of unique)
    if (!ALL_JUDGE_NAMES.includes(n))
      throw new OptionError(
        `--judge: unknown judge '${n.slice(0, 40)}' (known: ${ALL_JUDGE_NAMES.join(', ')})`,
      );
  return unique;
}

/**
 * `checkJudgeNames`, and --judge-url with llamaguard (both or neither), --judge-model with a
 * model judge (both or neither). Returns the names.
 */
export function checkJudgeSelection(o: Pick<JudgeSelection, 'judge' | 'judgeUrl' | 'judgeModel'>): string[] {
  const names = checkJudgeNames(o.judge);
  if (names.includes('llamaguard') && o.judgeUrl === undefined)
    throw new OptionError('--judge llamaguard needs --judge-url');
  if (o.judgeUrl !== undefined && !names.includes('llamaguard'))
    throw new OptionError('--judge-url is only used by --judge llamaguard');
  const modelJudges = names.filter((n) => modelFormat(n) !== undefined);
  if (modelJudges.length > 0 && o.judgeModel === undefined)
    throw new OptionError(`--judge ${modelJudges.join(',')} needs --judge-model FILE.gguf (a chat model)`);
  if (o.judgeModel !== undefined && modelJudges.length === 0)
    throw new OptionError(
      `--judge-model is only used by the model judges (${MODEL_JUDGE_FORMATS.map((f) => `model-${f}`).join(', ')})`,
    );
  return names;
}

/**
 * Judges from the selection; a Llama Guard server is asked one benign question first. Model
 * judges run on `judgeModel`, which the caller loads from `o.judgeModel`.
 */
export async function buildJudges(
  o: JudgeSelection,
  reporter: Reporter = silentReporter,
  judgeModel?: Model,
): Promise<Judge[]> {
  const judges = checkJudgeSelection(o).map((n) => {
    const format = modelFormat(n);
    if (format === undefined)
      return makeJudge(n as (typeof JUDGE_NAMES)[number], {
        url: o.judgeUrl,
        timeoutMs: o.judgeTimeout * 1000,
        concurrency: o.judgeConcurrency,
      });
    if (!judgeModel)
      throw new OptionError(`--judge ${n}: the judge model ${o.judgeModel ?? ''} is not loaded`);
    return modelJudge(judgeModel, { format });
  });
  const lg = judges.find((j) => j.name === 'llamaguard');
  if (lg) {
    // Minutes of generation should not end in "the judge server is down".
    reporter.info(`checking the judge server at ${o.judgeUrl} ...`);
    await lg.judge([{ prompt: 'What is the capital of France?', response: 'Paris.' }]);
  }
  return judges;
}

/** Generation settings of an evaluation. */
export interface GenerationSettings {
  /** Tokens generated per reply (greedy). */
  readonly maxTokens: number;
  /** Prompts generated together. */
  readonly batch: number;
  /** 1: off. */
  readonly repetitionPenalty: number;
}

/** Generates and judges every prompt under `steering`, reporting progress per stage. */
export async function runEvaluation(
  model: Model,
  prompts: readonly EvalPrompt[],
  judges: readonly Judge[],
  steering: Steering,
  o: GenerationSettings,
  run: { readonly reporter?: Reporter; readonly signal?: AbortSignal } = {},
): Promise<RefusalEvalResult> {
  const reporter = run.reporter ?? silentReporter;
  let generate: ProgressReporter | undefined;
  let judge: ProgressReporter | undefined;
  reporter.info(
    `${steering.label}: ${prompts.length} prompts, ${o.maxTokens} tokens each, batches of ${o.batch}`,
  );
  try {
    const result = await evaluateRefusal(model, prompts, {
      judges,
      responder: steering.responder,
      maxNewTokens: o.maxTokens,
      batchSize: o.batch,
      repetitionPenalty: o.repetitionPenalty,
      onProgress: (stage, done, total) => {
        if (stage === 'generate') {
          generate ??= reporter.progress(`${steering.label}: generate`, 'prompts');
          generate.update(done, total);
        } else {
          generate?.finish();
          judge ??= reporter.progress(`${steering.label}: judge`, 'replies');
          judge.update(done, total);
        }
      },
      signal: run.signal,
    });
    warnIfGateFlagsEverything(result, steering.label, reporter);
    return result;
  } finally {
    generate?.finish();
    judge?.finish();
  }
}

/**
 * A gate that flags every prompt of every set is always-on steering under another name: the run
 * is valid, but its "conditional" label would mislead, so say so.
 */
function warnIfGateFlagsEverything(result: RefusalEvalResult, label: string, reporter: Reporter): void {
  const flagged = result.summary.filter((r) => r.measures === 'flagged');
  const n = flagged.reduce((s, r) => s + r.n, 0);
  if (flagged.length > 0 && n > 1 && flagged.every((r) => r.positives === r.n))
    reporter.warn(
      `${label}: the monitor flagged all ${n} prompts, benign ones included, so every prompt was steered: ` +
        'the threshold flags everything (raise --threshold, or calibrate the concept on benign prompts)',
    );
}
