/**
 * One refusal evaluation as the CLI and the audit run it: judges chosen by name (a Llama Guard
 * server is checked before any generation), then `evaluateRefusal` under a steering, with its
 * progress reported and stoppable through an AbortSignal.
 */
import { OptionError } from '../formats/errors.js';
import type { Model } from '../model/model.js';
import { JUDGE_NAMES, type Judge, type JudgeName, makeJudge } from './judges.js';
import { type EvalPrompt, type RefusalEvalResult, evaluateRefusal } from './refusal.js';
import { type ProgressReporter, type Reporter, silentReporter } from './reporter.js';
import type { Steering } from './steering.js';

/** Judges by name, and how to reach a Llama Guard server. */
export interface JudgeSelection {
  /** Judge names (see JUDGE_NAMES); repeats are dropped. */
  readonly judge: readonly string[];
  /** OpenAI-compatible server running Llama Guard (needed by 'llamaguard'). */
  readonly judgeUrl?: string;
  /** Seconds per judge request. */
  readonly judgeTimeout: number;
  /** Judge requests in flight. */
  readonly judgeConcurrency: number;
}

/** Throws unless every name is a judge and --judge-url goes with llamaguard. Returns the names. */
export function checkJudgeNames(o: Pick<JudgeSelection, 'judge' | 'judgeUrl'>): JudgeName[] {
  const names = [...new Set(o.judge)];
  for (const n of names)
    if (!(JUDGE_NAMES as readonly string[]).includes(n))
      throw new OptionError(`--judge: unknown judge '${n.slice(0, 40)}' (known: ${JUDGE_NAMES.join(', ')})`);
  if (o.judgeUrl !== undefined && !names.includes('llamaguard'))
    throw new OptionError('--judge-url is only used by --judge llamaguard');
  return names as JudgeName[];
}

/** Judges from the selection; a Llama Guard server is asked one benign question first. */
export async function buildJudges(o: JudgeSelection, reporter: Reporter = silentReporter): Promise<Judge[]> {
  const judges = checkJudgeNames(o).map((n) =>
    makeJudge(n, { url: o.judgeUrl, timeoutMs: o.judgeTimeout * 1000, concurrency: o.judgeConcurrency }),
  );
  const lg = judges.find((j) => j.measures === 'unsafe');
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
