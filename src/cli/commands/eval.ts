/**
 * `steerguard eval refusal`: refusal rate on harmful sets and over-refusal on benign ones, with
 * or without steering or an attack, judged by keyword lists and/or Llama Guard. The work is done
 * by src/eval/ (prompt sets, steering from files, judges, the evaluation); this file holds the
 * options and the output, and the option groups attack.ts and direction.ts share.
 *
 * Prompts and replies are never printed: they go to the --out JSONL only (and not even there
 * with --redact).
 */
import { OptionError, SteerguardError } from '../../formats/errors.js';
import { checkLeakage } from '../../data/splits.js';
import { buildJudges, checkJudgeSelection, runEvaluation } from '../../eval/evaluation.js';
import { type LoadedSet, loadSets, toEvalPrompts } from '../../eval/prompt-sets.js';
import { buildSteering, buildSteeringHooks } from '../../eval/steering.js';
import type { RateSummary, RefusalEvalResult, RefusalRow } from '../../eval/refusal.js';
import type { OptionSpec } from '../args.js';
import { type CliOutput, formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import { biasCommand, capabilityCommand } from './eval-capability.js';
import { judgesCommand } from './eval-judges.js';
import { STEERING_OPTIONS, checkSteeringOptions } from './steering-options.js';
import {
  CHAT_OPTIONS,
  COLUMN_OPTION,
  DATA_DIR_OPTION,
  MODEL_OPTION,
  OVERWRITE_OPTION,
  SPLIT_OPTIONS,
  THREADS_OPTION,
  TOKEN_IDS_OPTION,
  type CliCommand,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
  useChat,
  withInterrupt,
  ADAPTER_OPTION,
  attachAdapters,
} from './common.js';

// ---------------------------------------------------------------------------------------------
// Shared option groups

export const SET_OPTIONS = {
  column: COLUMN_OPTION,
  dataDir: DATA_DIR_OPTION,
  part: {
    type: 'enum',
    values: ['all', 'train', 'val', 'test'],
    default: 'all',
    description: 'use one part of the seeded split of each set (held-out evaluation: test)',
  },
  ...SPLIT_OPTIONS,
  limit: { type: 'number', integer: true, min: 1, description: 'first N prompts of each set (after --part)' },
  tokenIds: TOKEN_IDS_OPTION,
  system: { type: 'string', placeholder: 'text', description: 'system message (chat template only)' },
  allowOverlap: {
    type: 'boolean',
    description:
      'evaluate even on prompts the steering artefact was fitted on (results are then not results)',
  },
} as const satisfies Record<string, OptionSpec>;

export const GENERATION_OPTIONS = {
  maxTokens: {
    type: 'number',
    integer: true,
    min: 1,
    default: 64,
    description: 'tokens generated per reply (greedy)',
  },
  batch: { type: 'number', integer: true, min: 1, default: 16, description: 'prompts generated together' },
  repetitionPenalty: {
    type: 'number',
    min: 0,
    default: 1,
    description: 'penalise repeated tokens (1: off; 1.1 to 1.3 against the loops strong steering causes)',
  },
} as const satisfies Record<string, OptionSpec>;

export const JUDGE_OPTIONS = {
  judge: {
    type: 'list',
    placeholder: 'j1,j2',
    default: ['keyword-gcg', 'keyword-jbb'],
    description:
      'judges: keyword-gcg, keyword-jbb, llamaguard (a server), model-llamaguard, model-harmbench, model-xstest (a judge model run in-process)',
  },
  judgeModel: {
    type: 'string',
    placeholder: 'file.gguf',
    description: 'chat model the model-* judges run on, loaded in-process',
  },
  judgeUrl: {
    type: 'string',
    placeholder: 'url',
    description: 'OpenAI-compatible server running Llama Guard, e.g. http://127.0.0.1:8080',
  },
  judgeTimeout: { type: 'number', min: 1, default: 60, description: 'seconds per judge request' },
  judgeConcurrency: {
    type: 'number',
    integer: true,
    min: 1,
    default: 4,
    description: 'judge requests in flight',
  },
} as const satisfies Record<string, OptionSpec>;

export const OUTPUT_OPTIONS = {
  out: {
    type: 'string',
    short: 'o',
    placeholder: 'file.jsonl',
    description: 'write every reply and judgement here (written whole, atomically)',
  },
  redact: { type: 'boolean', description: 'leave prompt and reply text out of --out (hashes only)' },
  overwrite: OVERWRITE_OPTION,
} as const satisfies Record<string, OptionSpec>;

// ---------------------------------------------------------------------------------------------
// Output

const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

/** The summary as a table: one row per set × measure. */
export function formatSummary(summary: readonly RateSummary[], label?: string): string {
  const rows = summary.map((s) => [
    ...(label !== undefined ? [label] : []),
    s.set,
    s.judge,
    s.measures,
    s.n,
    pct(s.rate),
    `${pct(s.ci[0])}–${pct(s.ci[1])}`,
    s.errors,
  ]);
  const head = [
    ...(label !== undefined ? ['run'] : []),
    'set',
    'judge',
    'rate of',
    'n',
    'rate',
    '95% CI',
    'errors',
  ];
  const right = head.map((h) => ['n', 'rate', 'errors'].includes(h));
  return formatTable(head, rows, right);
}

/** Writes rows to an atomic JSONL file; `extra` fields go first on every line. */
export async function writeRows(
  file: string,
  rows: readonly RefusalRow[],
  opts: { redact: boolean; extra?: (row: RefusalRow) => Record<string, unknown> },
): Promise<void> {
  const { AtomicJsonl, rowRecord } = await import('../../eval/refusal.js');
  const w = new AtomicJsonl(file);
  try {
    for (const r of rows) w.write(rowRecord(r, opts.extra?.(r) ?? {}, opts.redact));
    w.commit();
  } catch (e) {
    w.abort();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// The command

const refusalEvalCommand = command(
  {
    name: 'eval',
    summary: 'measure refusal and over-refusal, with or without steering or an attack',
    description: para(
      'eval refusal: generates a greedy reply to every prompt of --sets (batched), judges each with ' +
        '--judge, and prints per set the rate of refusals (keyword judges) or unsafe replies (llamaguard) ' +
        'with a 95% Wilson interval, and the rate of degenerate replies (language flaws). On harmful sets a ' +
        'refusal is the wanted answer; on XSTest safe prompts it is an over-refusal. --steer add adds a ' +
        'control vector (llama.cpp semantics: direction.L at the output of block L); --steer ablate removes ' +
        'a refusal direction everywhere; --steer conditional steers only the prompts the --concept monitor ' +
        'flags (with --vector if given, else the SCAV defence); --attack scav applies the SCAV attack. ' +
        'Prompts and replies are never printed; --out holds them (or only hashes with --redact). ' +
        "eval likelihood: the steering's cost on harmless prompts: each prompt is answered greedily without " +
        'steering, and the mean per-token log-likelihood of that reply is compared with and without the ' +
        "steering (a gate's verdict chosen per prompt), per set with a 95% interval over prompts. " +
        'eval capability (MMLU, GSM8K, TruthfulQA), eval bias (BBQ, CrowS-Pairs), eval judges (agreement of ' +
        'the judges with hand labels) and eval multiturn (a Crescendo-style multi-turn attack) take their own ' +
        "options: run 'steerguard eval capability --help', 'steerguard eval bias --help', " +
        "'steerguard eval judges --help' or 'steerguard eval multiturn --help'.",
    ),
    positionals: [
      {
        name: 'what',
        description:
          "what to evaluate: 'refusal', 'likelihood', 'capability', 'bias', 'judges' or 'multiturn'",
      },
    ],
    options: {
      model: MODEL_OPTION,
      sets: {
        type: 'list',
        required: true,
        placeholder: 's1,s2',
        description:
          'prompt sets: short names (advbench, xstest-safe, harmbench:test, ...) or files (file.csv#column)',
      },
      ...SET_OPTIONS,
      ...CHAT_OPTIONS,
      ...STEERING_OPTIONS,
      ...GENERATION_OPTIONS,
      ...JUDGE_OPTIONS,
      ...OUTPUT_OPTIONS,
      adapter: ADAPTER_OPTION,
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard eval refusal -m smollm2.gguf --sets advbench,xstest-safe --limit 50 --out base.jsonl',
      'steerguard eval refusal -m smollm2.gguf --sets advbench --part test --steer ablate --vector refusal.gguf',
      'steerguard eval refusal -m smollm2.gguf --sets xstest-safe --steer add --vector refusal.gguf --coeff 1',
      'steerguard eval refusal -m smollm2.gguf --sets advbench --judge llamaguard --judge-url http://127.0.0.1:8080',
      'steerguard eval refusal -m smollm2.gguf --sets advbench,xstest-safe --steer conditional --concept harmful.concept.safetensors',
      'steerguard eval refusal -m qwen.gguf --sets harmbench,xstest-safe --steer conditional --reading reading.json --vector refusal.gguf --coeff 1 --benign-below 0 --benign-steer ablate',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const reporter = cliReporter(out);
    const what = args.positionals[0];
    if (what !== 'refusal' && what !== 'likelihood')
      throw new OptionError(
        what in EVAL_ACTIONS
          ? `put '${what}' right after 'eval': steerguard eval ${what} --help`
          : `unknown evaluation '${what.slice(0, 40)}'; known: refusal, likelihood, capability, bias, judges, multiturn`,
      );
    checkSteeringOptions(o);
    checkOutPath(o.out, o.overwrite);
    const sets = loadSets(o.sets, o);
    if (what === 'likelihood') {
      // options that change nothing here would be silently ignored: refuse them
      const unused = [
        o.judgeUrl !== undefined && '--judge-url',
        o.redact && '--redact',
        o.repetitionPenalty !== 1 && '--repetition-penalty',
      ].filter((x): x is string => typeof x === 'string');
      if (unused.length > 0) throw new OptionError(`eval likelihood does not use ${unused.join(', ')}`);
      await likelihoodEval(o, sets, out);
      return;
    }
    checkJudgeSelection(o);
    checkInputFile('--judge-model', o.judgeModel);
    const judgeModel = o.judgeModel ? await loadModel(o.judgeModel, out, { threads: o.threads }) : undefined;
    const judges = await buildJudges(o, reporter, judgeModel);
    const model = await loadModel(o.model, out, { threads: o.threads });
    await attachAdapters(model, o.adapter, out);
    const prompts = toEvalPrompts(model, sets, { ...o, chat: o.tokenIds ? false : useChat(model, o) });
    const steering = await buildSteering(model, o);
    if (steering.fittedIds.length > 0) {
      const overlap = checkLeakage(steering.fittedIds, prompts, {
        allow: o.allowOverlap,
        what: 'the steering artefact',
      });
      if (overlap.length > 0)
        out.warn(`${overlap.length} evaluated prompts were used to fit the steering artefact`);
    }
    const result = await withInterrupt((signal) =>
      runEvaluation(model, prompts, judges, steering, o, { reporter, signal }),
    );
    if (o.out !== undefined) {
      await writeRows(o.out, result.rows, {
        redact: o.redact,
        // Rows of an adapted model say so: they are not the base model's.
        extra: () => ({ run: steering.label, ...(o.adapter ? { adapters: o.adapter } : {}) }),
      });
      out.info(`wrote ${result.rows.length} rows to ${o.out}`);
    }
    reportEvaluation(out, result, steering.label, sets, o.out);
  },
);

// eval-multiturn.ts imports this file's option groups, so it is loaded when asked for (a static
// import both ways would read them before they exist).
const EVAL_ACTIONS: Readonly<Record<string, () => Promise<CliCommand>>> = {
  capability: async () => capabilityCommand,
  bias: async () => biasCommand,
  judges: async () => judgesCommand,
  multiturn: async () => (await import('./eval-multiturn.js')).multiturnCommand,
};

/**
 * `steerguard eval refusal|likelihood|capability|bias|judges|multiturn`: the last four have
 * commands of their own.
 */
export const evalCommand: CliCommand = {
  spec: refusalEvalCommand.spec,
  hidden: false,
  run: async (argv, out) => {
    let k = 0;
    while (argv[k] === '--json') k++;
    const sub =
      argv[k] !== undefined && Object.hasOwn(EVAL_ACTIONS, argv[k])
        ? await EVAL_ACTIONS[argv[k]]()
        : undefined;
    if (sub) await sub.run([...argv.slice(0, k), ...argv.slice(k + 1)], out);
    else await refusalEvalCommand.run(argv, out);
  },
};

/** `eval likelihood`: see the command description and src/eval/likelihood.ts. */
async function likelihoodEval(
  o: Parameters<typeof buildSteeringHooks>[1] &
    Parameters<typeof toEvalPrompts>[2] & {
      model: string;
      threads?: number;
      adapter?: readonly string[];
      maxTokens: number;
      out?: string;
      allowOverlap?: boolean;
      noChat: boolean;
    },
  sets: readonly LoadedSet[],
  out: CliOutput,
): Promise<void> {
  const model = await loadModel(o.model, out, { threads: o.threads });
  await attachAdapters(model, o.adapter, out);
  const prompts = toEvalPrompts(model, sets, { ...o, chat: o.tokenIds ? false : useChat(model, o) });
  const steering = await buildSteeringHooks(model, o);
  const overlap = checkLeakage(steering.fittedIds, prompts, {
    allow: o.allowOverlap,
    what: 'the steering artefact',
  });
  if (overlap.length > 0)
    out.warn(`${overlap.length} evaluated prompts were used to fit the steering artefact`);
  const { measureLikelihoodShift, summarizeLikelihood } = await import('../../eval/likelihood.js');
  out.info(`${steering.label}: ${prompts.length} prompts, replies of up to ${o.maxTokens} tokens`);
  const hooks = await steering.hooksFor(prompts.map((p) => p.prompt));
  const bar = cliReporter(out).progress('likelihood', 'prompts');
  const [rows] = await measureLikelihoodShift(model, prompts, [hooks], {
    maxNewTokens: o.maxTokens,
    onProgress: (done, total) => bar.update(done, total),
  });
  bar.finish();
  if (rows.length < prompts.length)
    out.warn(`${prompts.length - rows.length} prompts got an empty unsteered reply and are left out`);
  const summary = summarizeLikelihood(rows);
  if (o.out !== undefined) {
    const { writeFileAtomic } = await import('../../formats/files.js');
    writeFileAtomic(o.out, `${JSON.stringify({ steering: steering.label, rows })}\n`);
  }
  out.result({ steering: steering.label, summary }, () =>
    formatTable(
      ['set', 'n', 'steered', 'Δ log-lik / token', '95% CI', 'unsteered log-lik / token'],
      summary.map((s) => [
        s.set,
        s.n,
        s.steered,
        s.meanDelta.toFixed(3),
        `${s.ci[0].toFixed(3)}–${s.ci[1].toFixed(3)}`,
        s.meanBase.toFixed(3),
      ]),
      [false, true, true, true, true, true],
    ),
  );
}

/** Prints the summary (and, in --json mode, the whole result without texts); fails on judge failure. */
export function reportEvaluation(
  out: CliOutput,
  result: RefusalEvalResult,
  label: string,
  sets: readonly LoadedSet[],
  file: string | undefined,
): void {
  const doc = {
    run: label,
    sets: sets.map((s) => ({ name: s.name, prompts: s.prompts.length, harmful: s.harmful ?? null })),
    summary: result.summary,
    judgeFailures: result.judgeFailures,
    seconds: result.seconds,
    out: file ?? null,
  };
  out.result(doc, () => {
    const note = sets.some((s) => s.harmful === false)
      ? '\nOn harmful sets refusal is the wanted answer; on benign sets (xstest-safe) it is over-refusal.'
      : '';
    return (
      formatSummary(result.summary) +
      `\ngenerate ${result.seconds.generate.toFixed(1)}s, judge ${result.seconds.judge.toFixed(1)}s${note}`
    );
  });
  if (result.judgeFailures.length > 0)
    throw new SteerguardError(
      result.judgeFailures.map((f) => `judge ${f.judge} failed on every reply: ${f.message}`).join('; ') +
        (file ? ` (the replies are in ${file})` : ''),
    );
}
