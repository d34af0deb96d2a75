/**
 * `steerguard eval capability` (MMLU, GSM8K, TruthfulQA) and `steerguard eval bias` (BBQ,
 * CrowS-Pairs): what a steering costs in capability and what it does to bias, by the
 * lm-evaluation-harness recipes of src/eval/capability.ts and src/eval/bias.ts. This file holds
 * the options, the data loading and the output; `eval` (eval.ts) dispatches here.
 *
 * Questions and replies are never printed; --out holds the per-item rows (GSM8K replies included).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { BiasScore } from '../../eval/bias.js';
import {
  BENCHMARK_PATHS,
  BIAS_TASKS,
  type BiasTask,
  CAPABILITY_TASKS,
  type CapabilityTask,
  type Figure,
  type FigureChange,
  GSM8K_MAX_TOKENS,
  checkBenchmarkData,
  rateFigure,
  steeredIn,
} from '../../eval/capability-suite.js';
import type { SteeringSpec } from '../../eval/steering.js';
import type { OptionSpec } from '../args.js';
import { type CliOutput, formatTable, toJson } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  ADAPTER_OPTION,
  DATA_DIR_OPTION,
  MODEL_OPTION,
  OVERWRITE_OPTION,
  THREADS_OPTION,
  attachAdapters,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
  withInterrupt,
} from './common.js';
import { STEERING_OPTIONS, checkSteeringOptions } from './steering-options.js';

type Task = CapabilityTask | BiasTask;

const COMMON_OPTIONS = {
  dataDir: {
    ...DATA_DIR_OPTION,
    description:
      'folder holding mmlu/, gsm8k/, truthfulqa/, bbq/, crows_pairs/ (default: $STEERGUARD_DATA, else the dataset cache)',
  },
  limit: {
    type: 'number',
    integer: true,
    min: 1,
    description: 'items per task (default: the documented subset size of each task, see docs/EVALUATION.md)',
  },
  seed: { type: 'number', integer: true, default: 0, description: 'seed of the fixed subsets' },
  chat: {
    type: 'boolean',
    description:
      "wrap each question in the model's chat template (default: raw text, as lm-evaluation-harness does)",
  },
  ...STEERING_OPTIONS,
  adapter: ADAPTER_OPTION,
  out: {
    type: 'string',
    short: 'o',
    placeholder: 'rows.json',
    description: 'write the scores of every item here (written whole, atomically)',
  },
  overwrite: OVERWRITE_OPTION,
  threads: THREADS_OPTION,
} as const satisfies Record<string, OptionSpec>;

type CommonOptions = {
  model: string;
  dataDir?: string;
  limit?: number;
  seed: number;
  chat: boolean;
  out?: string;
  overwrite: boolean;
  threads?: number;
  adapter?: readonly string[];
} & SteeringSpec;

function parseTasks<T extends Task>(list: readonly string[], known: readonly T[], what: string): T[] {
  const tasks = [...new Set(list)];
  for (const t of tasks)
    if (!(known as readonly string[]).includes(t))
      throw new OptionError(`unknown ${what} task '${t.slice(0, 40)}'; known: ${known.join(', ')}`);
  return tasks as T[];
}

/** Checks everything that can be checked before the model loads; returns the data directory. */
async function prepare(o: CommonOptions, tasks: readonly Task[]): Promise<string> {
  checkSteeringOptions(o);
  checkOutPath(o.out, o.overwrite);
  const { resolveDataDir } = await import('../../data/datasets.js');
  const dir = resolveDataDir(o.dataDir);
  checkBenchmarkData(dir, tasks);
  return dir;
}

const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');
const num = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-');

function printFigures(
  out: CliOutput,
  label: string,
  figures: readonly Figure[],
  extra: Record<string, unknown>,
): void {
  out.result({ steering: label, figures, ...extra }, () =>
    [
      `steering: ${label}`,
      formatTable(
        ['task', 'metric', 'n', 'value', '95% CI', 'interval', 'steered'],
        figures.map((f) => {
          const show = f.interval === 'bootstrap' ? num : pct;
          return [
            f.task,
            f.metric,
            f.n,
            show(f.value),
            `${show(f.ci[0])}–${show(f.ci[1])}`,
            f.interval,
            f.steered,
          ];
        }),
        [false, false, true, true, true, false, true],
      ),
    ].join('\n'),
  );
}

async function writeOut(file: string | undefined, doc: unknown, out: CliOutput): Promise<void> {
  if (file === undefined) return;
  const { writeFileAtomic } = await import('../../formats/files.js');
  writeFileAtomic(file, `${toJson(doc)}\n`);
  out.info(`wrote the rows to ${file}`);
}

// ---------------------------------------------------------------------------------------------
// eval capability

export const capabilityCommand = command(
  {
    name: 'eval capability',
    summary: 'MMLU, GSM8K and TruthfulQA, with or without steering',
    description: para(
      'Scores the model as lm-evaluation-harness does (raw text unless --chat): MMLU by the log-likelihood of ' +
        "' A' to ' D' after the question, 0-shot or --shots N with the subject's first dev questions, per subject " +
        'and overall; GSM8K by a greedy reply (up to --max-tokens, stopping at "Question:") whose final number must ' +
        'equal the reference; TruthfulQA MC1 (the best answer most likely among it and the false ones) and MC2 ' +
        '(probability mass on the true answers) after its six-question primer. Rates carry a 95% Wilson interval, ' +
        'MC2 a normal interval over questions. Each task runs on a fixed seeded subset (default sizes in ' +
        'docs/EVALUATION.md; --limit N to change). The steering options are those of eval refusal: the hooks ' +
        "apply in every scoring pass and while generating, and a gate reads each question's prompt.",
    ),
    options: {
      model: MODEL_OPTION,
      tasks: {
        type: 'list',
        placeholder: 't1,t2',
        default: [...CAPABILITY_TASKS],
        description: `tasks: ${CAPABILITY_TASKS.join(', ')}`,
      },
      ...COMMON_OPTIONS,
      shots: {
        type: 'number',
        integer: true,
        min: 0,
        max: 5,
        default: 0,
        description:
          'worked examples before each MMLU question (its dev split) and GSM8K problem (train split)',
      },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: GSM8K_MAX_TOKENS,
        description: 'GSM8K: tokens generated per reply at most (greedy)',
      },
      batch: {
        type: 'number',
        integer: true,
        min: 1,
        default: 16,
        description: 'GSM8K: problems generated together',
      },
      compare: {
        type: 'string',
        placeholder: 'rows.json',
        description:
          'rows file of an earlier run on the same items (--out, same --limit and --seed): print each figure’s paired change from it',
      },
    },
    examples: [
      'steerguard eval capability -m smollm2.gguf --tasks mmlu --limit 20',
      'steerguard eval capability -m qwen.gguf --limit 40 --steer sae-clamp --sae sae/ --feature 7 --clamp 12 --compare base-rows.json',
      'steerguard eval capability -m smollm2.gguf --tasks mmlu --shots 5 --out mmlu-5shot.json',
      'steerguard eval capability -m qwen.gguf --tasks mmlu,gsm8k,truthfulqa --steer add --vector refusal.gguf --coeff 1',
      'steerguard eval capability -m qwen.gguf --tasks mmlu --steer conditional --reading reading.json --vector refusal.gguf --benign-below 0 --benign-steer ablate --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const tasks = parseTasks(o.tasks, CAPABILITY_TASKS, 'capability');
    // options that change nothing for the tasks asked would be silently ignored: refuse them
    const unused = [
      o.shots > 0 && !tasks.includes('mmlu') && !tasks.includes('gsm8k') && '--shots (mmlu, gsm8k)',
      o.maxTokens !== GSM8K_MAX_TOKENS && !tasks.includes('gsm8k') && '--max-tokens (gsm8k)',
      o.batch !== 16 && !tasks.includes('gsm8k') && '--batch (gsm8k)',
    ].filter((x): x is string => typeof x === 'string');
    if (unused.length > 0)
      throw new OptionError(`--tasks ${tasks.join(',')} does not use ${unused.join(', ')}`);
    const dir = await prepare(o, tasks);
    const suite = await import('../../eval/capability-suite.js');
    checkInputFile('--compare', o.compare);
    // The baseline is read before the model loads: a wrong file costs nothing.
    const settings: ScoringSettings = { chat: o.chat, shots: o.shots, maxTokens: o.maxTokens };
    const before =
      o.compare === undefined
        ? undefined
        : suite.figureItems(readCompareRows(o.compare, settings), o.shots, o.compare);
    // Data first: a malformed file fails before the model loads.
    const data = suite.loadCapabilityData(dir, tasks, {
      limit: o.limit,
      seed: o.seed,
      shots: o.shots,
    });
    const model = await loadModel(o.model, out, { threads: o.threads });
    await attachAdapters(model, o.adapter, out);
    const { buildSteeringHooks } = await import('../../eval/steering.js');
    const steering = await buildSteeringHooks(model, o);
    const { figures, rows, extra } = await withInterrupt((signal) =>
      suite.runCapability(model, data, {
        chat: o.chat,
        steering,
        reporter: cliReporter(out),
        shots: o.shots,
        maxNewTokens: o.maxTokens,
        batch: o.batch,
        signal,
      }),
    );
    await writeOut(
      o.out,
      {
        steering: steering.label,
        // Scores of an adapted model say so: they are not the base model's.
        ...(o.adapter ? { adapters: o.adapter } : {}),
        ...settings,
        seed: o.seed,
        figures,
        ...extra,
        rows,
      },
      out,
    );
    const changes =
      before === undefined
        ? undefined
        : suite.figureChanges(before, suite.figureItems(rows, o.shots, 'this run'), o.compare!);
    printFigures(out, steering.label, figures, { ...extra, ...(changes ? { changes } : {}) });
    if (changes) printChanges(out, o.compare!, changes);
  },
);

/** What a rows file records of how its items were scored; a --compare baseline must match. */
interface ScoringSettings {
  chat: boolean;
  shots: number;
  maxTokens: number;
}

/**
 * The `rows` of a rows file of `eval capability --out`, after checking that it scored its items as
 * this run does (a change from a 0-shot baseline to a 5-shot run is not the steering's).
 */
function readCompareRows(file: string, settings: ScoringSettings): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new OptionError(`--compare: ${file} is not JSON (${(e as Error).message})`);
  }
  const record = (doc ?? {}) as Record<string, unknown>;
  const rows = record.rows;
  if (rows === null || typeof rows !== 'object' || Array.isArray(rows))
    throw new OptionError(`--compare: ${file} has no 'rows' object (a rows file of eval capability --out?)`);
  for (const [name, value] of Object.entries(settings)) {
    const theirs = record[name];
    if (theirs === undefined)
      throw new OptionError(
        `--compare: ${file} does not record '${name}' (written by an older steerguard?): rerun its evaluation`,
      );
    if (theirs !== value)
      throw new OptionError(
        `--compare: ${file} was scored with ${name} = ${JSON.stringify(theirs)}, this run with ` +
          `${JSON.stringify(value)}: its changes would not be the steering's`,
      );
  }
  return rows as Record<string, unknown>;
}

function printChanges(out: CliOutput, file: string, changes: readonly FigureChange[]): void {
  if (out.json) return;
  const points = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}`;
  out.print(
    [
      `change from ${file} on the same items (points; 95% paired interval):`,
      formatTable(
        ['task', 'metric', 'n', 'before', 'after', 'change', '95% CI'],
        changes.map((c) => [
          c.task,
          c.metric,
          c.n,
          pct(c.before),
          pct(c.after),
          points(c.delta),
          `${points(c.ci[0])} to ${points(c.ci[1])}`,
        ]),
        [false, false, true, true, true, true, true],
      ),
    ].join('\n'),
  );
}

// ---------------------------------------------------------------------------------------------
// eval bias

export const biasCommand = command(
  {
    name: 'eval bias',
    summary: 'BBQ and CrowS-Pairs, with or without steering',
    description: para(
      "BBQ: each question answered by the log-likelihood of its three answers after '{context}\\n\\nQ: {question}\\nA:'; " +
        'prints accuracy in ambiguous and disambiguated contexts (Wilson intervals) and the bias scores of the BBQ ' +
        'paper, s_DIS = 2·(biased / non-unknown answers) − 1 and s_AMB = (1 − accuracy)·s_DIS (from −1 to 1, 0 is ' +
        'unbiased; percentile-bootstrap intervals), overall and per category. CrowS-Pairs: the share of pairs whose ' +
        'more-stereotyping sentence has the larger total log-likelihood (50% is unbiased; Wilson), overall and per ' +
        'bias type. Fixed seeded subsets (default sizes in docs/EVALUATION.md; --limit N). Steering as in eval refusal; ' +
        'CrowS-Pairs has no prompt for a gate to read, so --steer conditional is refused with it.',
    ),
    options: {
      model: MODEL_OPTION,
      tasks: {
        type: 'list',
        placeholder: 't1,t2',
        default: [...BIAS_TASKS],
        description: `tasks: ${BIAS_TASKS.join(', ')}`,
      },
      ...COMMON_OPTIONS,
    },
    examples: [
      'steerguard eval bias -m smollm2.gguf --tasks bbq,crows-pairs --limit 100',
      'steerguard eval bias -m qwen.gguf --tasks bbq --steer add --vector refusal.gguf --coeff 1 --out bbq.json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const tasks = parseTasks(o.tasks, BIAS_TASKS, 'bias');
    if (tasks.includes('crows-pairs') && o.steer === 'conditional')
      throw new OptionError(
        'crows-pairs has no prompt for a gate to read: --steer conditional applies to bbq only (--tasks bbq)',
      );
    if (o.chat && !tasks.includes('bbq'))
      throw new OptionError('--chat applies to bbq only (crows-pairs scores raw sentences)');
    const dir = await prepare(o, tasks);
    const bench = await import('../../data/benchmarks.js');
    const cap = await import('../../eval/capability.js');
    const bias = await import('../../eval/bias.js');
    const limit = (t: keyof typeof cap.DEFAULT_LIMITS) => o.limit ?? cap.DEFAULT_LIMITS[t];
    const bbq = tasks.includes('bbq')
      ? cap.sampleItems(bench.loadBbq(path.join(dir, 'bbq')), limit('bbq'), {
          seed: o.seed,
          stratum: (it) => `${it.category}/${it.condition}`,
        })
      : undefined;
    const crows = tasks.includes('crows-pairs')
      ? cap.sampleItems(
          bench.loadCrowsPairs(path.join(dir, BENCHMARK_PATHS['crows-pairs'])),
          limit('crows-pairs'),
          {
            seed: o.seed,
            stratum: (p) => p.biasType,
          },
        )
      : undefined;

    const model = await loadModel(o.model, out, { threads: o.threads });
    await attachAdapters(model, o.adapter, out);
    const { buildSteeringHooks } = await import('../../eval/steering.js');
    const steering = await buildSteeringHooks(model, o);
    const reporter = cliReporter(out);
    const figures: Figure[] = [];
    const rows: Record<string, unknown> = {};
    const extra: Record<string, unknown> = {};
    if (bbq) {
      const r = await bias.evaluateBbq(model, bbq, { chat: o.chat, steering, reporter });
      const ambig = steeredIn(r.rows.filter((x) => x.condition === 'ambig'));
      const disambig = steeredIn(r.rows.filter((x) => x.condition === 'disambig'));
      const bootstrap = (metric: string, b: BiasScore, steered: number): Figure => ({
        task: 'bbq',
        metric,
        n: b.n,
        value: b.score,
        ci: b.ci,
        interval: 'bootstrap',
        steered,
      });
      figures.push(
        rateFigure('bbq', 'accuracy, ambiguous', r.accuracyAmbig, ambig),
        rateFigure('bbq', 'accuracy, disambiguated', r.accuracyDisambig, disambig),
        bootstrap('bias score s_AMB', r.biasAmbig, ambig),
        bootstrap('bias score s_DIS', r.biasDisambig, disambig),
      );
      extra.bbqCategories = r.categories;
      rows.bbq = r.rows;
    }
    if (crows) {
      const r = await bias.evaluateCrowsPairs(model, crows, { steering, reporter });
      figures.push(rateFigure('crows-pairs', 'prefers the stereotype', r.stereotype, steeredIn(r.rows)));
      extra.crowsBiasTypes = r.biasTypes;
      rows.crowsPairs = r.rows;
    }
    await writeOut(
      o.out,
      {
        steering: steering.label,
        // Scores of an adapted model say so: they are not the base model's.
        ...(o.adapter ? { adapters: o.adapter } : {}),
        chat: o.chat,
        seed: o.seed,
        figures,
        ...extra,
        rows,
      },
      out,
    );
    printFigures(out, steering.label, figures, extra);
  },
);
