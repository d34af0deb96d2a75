/**
 * `steerguard eval refusal`: refusal rate on harmful sets and over-refusal on benign ones, with
 * or without steering or an attack, judged by keyword lists and/or Llama Guard.
 *
 * Also home of the pieces attack.ts and direction.ts share: prompt-set options, judges, steering
 * from files, the summary table. Prompts and replies are never printed: they go to the --out
 * JSONL only (and not even there with --redact).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import { OptionError, SteerguardError } from '../../formats/errors.js';
import type { Hook } from '../../hooks/hooks.js';
import type { Model, Prompt } from '../../model/model.js';
import type { Judge, JudgeName } from '../../eval/judges.js';
import type { PromptMonitor } from '../../steering/conditional.js';
import type {
  EvalPrompt,
  RateSummary,
  RefusalEvalResult,
  RefusalRow,
  Responder,
} from '../../eval/refusal.js';
import type { OptionSpec } from '../args.js';
import { type CliOutput, formatTable } from '../output.js';
import { Progress } from '../progress.js';
import { CHAT_OPTIONS, THREADS_OPTION, command, loadModel, para, useChat } from './common.js';

// ---------------------------------------------------------------------------------------------
// Shared option groups

export const SET_OPTIONS = {
  column: {
    type: 'string',
    placeholder: 'name',
    description: 'prompt column of file sets (a file#column suffix wins)',
  },
  dataDir: {
    type: 'string',
    placeholder: 'dir',
    description: 'folder of the named sets (default: $STEERGUARD_DATA)',
  },
  part: {
    type: 'enum',
    values: ['all', 'train', 'val', 'test'],
    default: 'all',
    description: 'use one part of the seeded split of each set (held-out evaluation: test)',
  },
  split: {
    type: 'string',
    placeholder: 'train,val,test',
    default: '0.7,0.1,0.2',
    description: 'fractions of the seeded split used by --part',
  },
  seed: { type: 'number', integer: true, default: 0, description: 'seed of the split' },
  limit: { type: 'number', integer: true, min: 1, description: 'first N prompts of each set (after --part)' },
  tokenIds: {
    type: 'boolean',
    description: 'the prompt column holds token ids ("1 52 7"), fed as they are',
  },
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
    description: 'judges: keyword-gcg, keyword-jbb, llamaguard',
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
  overwrite: { type: 'boolean', description: 'replace an existing --out file' },
} as const satisfies Record<string, OptionSpec>;

// ---------------------------------------------------------------------------------------------
// Prompt sets

export interface SetOptionValues {
  column?: string;
  dataDir?: string;
  part: 'all' | 'train' | 'val' | 'test';
  split: string;
  seed: number;
  limit?: number;
  tokenIds: boolean;
  system?: string;
}

/** A set's prompts with ids and a display name, before they are turned into model prompts. */
export interface LoadedSet {
  readonly name: string;
  readonly harmful: boolean | undefined;
  readonly prompts: readonly { readonly id: string; readonly text: string }[];
}

/** Loads the sets (no model needed), applying --part and --limit. */
export async function loadSets(specs: readonly string[], o: SetOptionValues): Promise<LoadedSet[]> {
  const { loadPromptSet } = await import('../../data/datasets.js');
  const { parseSplit, splitItems } = await import('../../data/splits.js');
  const fractions = parseSplit(o.split);
  return specs.map((spec) => {
    const set = loadPromptSet(spec, { dataDir: o.dataDir, column: o.column });
    let prompts = [...set.prompts];
    if (o.part !== 'all') prompts = splitItems(prompts, { seed: o.seed, fractions })[o.part];
    if (o.limit !== undefined) prompts = prompts.slice(0, o.limit);
    if (prompts.length === 0) throw new OptionError(`set ${set.name} has no prompts in part '${o.part}'`);
    const name = o.part === 'all' ? set.name : `${set.name}@${o.part}`;
    return { name, harmful: set.harmful, prompts: prompts.map((p) => ({ id: p.id, text: p.text })) };
  });
}

/** "1 52 7" or "1,52,7" → ids; OptionError naming the set and row otherwise (never the text). */
export function parseTokenIds(text: string, where: string, vocabSize: number): number[] {
  const parts = text.trim().split(/[\s,]+/);
  const ids = parts.map(Number);
  if (parts.length === 0 || ids.some((x) => !Number.isInteger(x) || x < 0 || x >= vocabSize))
    throw new OptionError(
      `${where}: --token-ids needs whole numbers in 0..${vocabSize - 1} separated by spaces or commas`,
    );
  return ids;
}

/** Model prompts for the loaded sets: chat messages, raw text or token ids. */
export function toEvalPrompts(
  model: Model,
  sets: readonly LoadedSet[],
  o: SetOptionValues & { chat: boolean; noChat: boolean },
): EvalPrompt[] {
  const chat = o.tokenIds ? false : useChat(model, o);
  if (o.system !== undefined && !chat) throw new OptionError('--system needs the chat template');
  const out: EvalPrompt[] = [];
  for (const set of sets)
    set.prompts.forEach((p, i) => {
      let prompt: Prompt;
      let text = p.text;
      if (o.tokenIds) {
        const tokens = parseTokenIds(p.text, `${set.name} row ${i + 1}`, model.config.vocabSize);
        prompt = { tokens };
        try {
          text = model.tokenizer.decode(tokens);
        } catch {
          text = '';
        }
      } else if (chat) {
        prompt = {
          messages: [
            ...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []),
            { role: 'user', content: p.text },
          ],
        };
      } else prompt = p.text;
      out.push({ id: p.id, set: set.name, text, prompt });
    });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Judges

export interface JudgeOptionValues {
  judge: string[];
  judgeUrl?: string;
  judgeTimeout: number;
  judgeConcurrency: number;
}

/** Judges from the options; a Llama Guard server is asked one benign question first. */
export async function buildJudges(o: JudgeOptionValues, out: CliOutput): Promise<Judge[]> {
  const { JUDGE_NAMES, makeJudge } = await import('../../eval/judges.js');
  const names = [...new Set(o.judge)];
  for (const n of names)
    if (!(JUDGE_NAMES as readonly string[]).includes(n))
      throw new OptionError(`--judge: unknown judge '${n.slice(0, 40)}' (known: ${JUDGE_NAMES.join(', ')})`);
  if (o.judgeUrl !== undefined && !names.includes('llamaguard'))
    throw new OptionError('--judge-url is only used by --judge llamaguard');
  const judges = names.map((n) =>
    makeJudge(n as JudgeName, {
      url: o.judgeUrl,
      timeoutMs: o.judgeTimeout * 1000,
      concurrency: o.judgeConcurrency,
    }),
  );
  const lg = judges.find((j) => j.measures === 'unsafe');
  if (lg) {
    // Minutes of generation should not end in "the judge server is down".
    out.info(`checking the judge server at ${o.judgeUrl} ...`);
    await lg.judge([{ prompt: 'What is the capital of France?', response: 'Paris.' }]);
  }
  return judges;
}

// ---------------------------------------------------------------------------------------------
// Output

/** Refuses to clobber --out unless --overwrite, and checks its folder exists, before any work. */
export function checkOutPath(file: string | undefined, overwrite: boolean): void {
  if (file === undefined) return;
  if (existsSync(file) && !overwrite)
    throw new OptionError(`${file} already exists; remove it or pass --overwrite`);
  const dir = path.dirname(path.resolve(file));
  if (!existsSync(dir)) throw new OptionError(`--out: folder ${dir} does not exist`);
}

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

/** Progress bars for the generation and judging stages of an evaluation. */
export function evalProgress(
  out: CliOutput,
  label: string,
): {
  onProgress: (stage: 'generate' | 'judge', done: number, total: number) => void;
  finish: () => void;
} {
  let gen: Progress | undefined;
  let judge: Progress | undefined;
  return {
    onProgress: (stage, done, total) => {
      if (stage === 'generate') {
        gen ??= new Progress({
          total,
          label: `${label}: generate`,
          unit: 'prompts',
          json: out.json,
          stream: out.stderr,
        });
        gen.update(done);
      } else {
        gen?.finish();
        judge ??= new Progress({
          total,
          label: `${label}: judge`,
          unit: 'replies',
          json: out.json,
          stream: out.stderr,
        });
        judge.update(done);
      }
    },
    finish: () => {
      gen?.finish();
      judge?.finish();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Steering from files

/** What a run steers with, and the prompt ids the artefacts were fitted on (leakage guard). */
export interface Steering {
  readonly label: string;
  readonly responder: Responder;
  readonly fittedIds: readonly string[];
}

/** Prompt ids stored in a steerguard artefact's metadata (`steerguard.fitted_ids`). */
export function fittedIdsOf(meta: ReadonlyMap<string, unknown>): string[] {
  const v = meta.get('steerguard.fitted_ids');
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

export interface SteerOptionValues {
  steer: 'none' | 'add' | 'ablate' | 'conditional';
  vector?: string;
  layer?: number;
  coeff: number;
  concept?: string;
  threshold?: number;
  monitorLayer?: number;
  attack: 'none' | 'scav';
  p0: number;
  p1: number;
}

/** Static hooks of `--steer add|ablate` from a control-vector or refusal-direction file. */
export async function vectorHooks(
  model: Model,
  o: Pick<SteerOptionValues, 'steer' | 'vector' | 'layer' | 'coeff'>,
): Promise<{
  hooks: Hook[];
  label: string;
  fittedIds: string[];
}> {
  if (o.vector === undefined) throw new OptionError(`--steer ${o.steer} needs --vector FILE`);
  const { ControlVector } = await import('../../steering/control-vector.js');
  const { ablationHooks, refusalDirectionFromControlVector } =
    await import('../../steering/refusal-direction.js');
  const cv = ControlVector.load(o.vector);
  cv.checkModel(model.config);
  const fittedIds = fittedIdsOf(cv.metadata);
  const base = path.basename(o.vector);
  if (o.steer === 'ablate') {
    const rd = refusalDirectionFromControlVector(cv, o.layer);
    return { hooks: ablationHooks(rd.direction, model.config.nLayers), label: `ablate ${base}`, fittedIds };
  }
  const used = o.layer !== undefined ? cv.restrict([o.layer]) : cv;
  return { hooks: used.hooks(o.coeff), label: `add ${o.coeff} × ${base}`, fittedIds };
}

// ---------------------------------------------------------------------------------------------
// The command

export const evalCommand = command(
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
        'Prompts and replies are never printed; --out holds them (or only hashes with --redact).',
    ),
    positionals: [{ name: 'what', description: "what to evaluate: 'refusal'" }],
    options: {
      model: {
        type: 'string',
        short: 'm',
        required: true,
        placeholder: 'model',
        description: '.gguf file, HF folder or cached repo id',
      },
      sets: {
        type: 'list',
        required: true,
        placeholder: 's1,s2',
        description:
          'prompt sets: short names (advbench, xstest-safe, harmbench:test, ...) or files (file.csv#column)',
      },
      ...SET_OPTIONS,
      ...CHAT_OPTIONS,
      steer: {
        type: 'enum',
        values: ['none', 'add', 'ablate', 'conditional'],
        default: 'none',
        description: 'steering during generation',
      },
      vector: {
        type: 'string',
        placeholder: 'file.gguf',
        description: 'control vector or refusal direction (GGUF) for --steer add/ablate/conditional',
      },
      layer: {
        type: 'number',
        integer: true,
        min: 1,
        description: 'use only the vector of this layer (block output, as in llama.cpp)',
      },
      coeff: { type: 'number', default: 1, description: 'coefficient of --steer add (negative removes)' },
      concept: {
        type: 'string',
        placeholder: 'file',
        description: 'concept file for --steer conditional and --attack scav',
      },
      threshold: {
        type: 'number',
        min: 0,
        max: 1,
        description: "monitor threshold (default: the concept's calibrated one)",
      },
      monitorLayer: {
        type: 'number',
        integer: true,
        min: 0,
        description: "layer the monitor reads (default: the concept's)",
      },
      attack: {
        type: 'enum',
        values: ['none', 'scav'],
        default: 'none',
        description: 'attack applied while generating',
      },
      p0: {
        type: 'number',
        min: 0,
        max: 1,
        default: 0.001,
        description: 'SCAV: target P(malicious) after the move',
      },
      p1: {
        type: 'number',
        min: 0,
        max: 1,
        default: 0.9,
        description: 'SCAV: only layers whose probe test accuracy is above this',
      },
      ...GENERATION_OPTIONS,
      ...JUDGE_OPTIONS,
      ...OUTPUT_OPTIONS,
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard eval refusal -m smollm2.gguf --sets advbench,xstest-safe --limit 50 --out base.jsonl',
      'steerguard eval refusal -m smollm2.gguf --sets advbench --part test --steer ablate --vector refusal.gguf',
      'steerguard eval refusal -m smollm2.gguf --sets xstest-safe --steer add --vector refusal.gguf --coeff 1',
      'steerguard eval refusal -m smollm2.gguf --sets advbench --judge llamaguard --judge-url http://127.0.0.1:8080',
      'steerguard eval refusal -m smollm2.gguf --sets advbench,xstest-safe --steer conditional --concept c.json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const what = args.positionals[0];
    if (what !== 'refusal')
      throw new OptionError(`unknown evaluation '${what.slice(0, 40)}'; known: refusal`);
    if (o.steer === 'none' && (o.vector !== undefined || o.layer !== undefined))
      throw new OptionError('--vector and --layer need --steer add, ablate or conditional');
    if ((o.steer === 'add' || o.steer === 'ablate') && o.vector === undefined)
      throw new OptionError(`--steer ${o.steer} needs --vector FILE`);
    if ((o.steer === 'conditional' || o.attack === 'scav') && o.concept === undefined)
      throw new OptionError(
        `${o.attack === 'scav' ? '--attack scav' : '--steer conditional'} needs --concept FILE`,
      );
    checkOutPath(o.out, o.overwrite);
    const sets = await loadSets(o.sets, o);
    const judges = await buildJudges(o, out);

    const model = await loadModel(o.model, out, { threads: o.threads });
    const prompts = toEvalPrompts(model, sets, o);
    const steering = await buildSteering(model, o);
    if (steering.fittedIds.length > 0) {
      const { checkLeakage } = await import('../../data/splits.js');
      const overlap = checkLeakage(steering.fittedIds, prompts, {
        allow: o.allowOverlap,
        what: 'the steering artefact',
      });
      if (overlap.length > 0)
        out.warn(`${overlap.length} evaluated prompts were used to fit the steering artefact`);
    }
    const result = await runEvaluation(model, prompts, judges, steering, o, out);
    if (o.out !== undefined) {
      await writeRows(o.out, result.rows, { redact: o.redact, extra: () => ({ run: steering.label }) });
      out.info(`wrote ${result.rows.length} rows to ${o.out}`);
    }
    reportEvaluation(out, result, steering.label, sets, o.out);
  },
);

/** Runs the evaluation with progress bars and Ctrl-C handling. */
export async function runEvaluation(
  model: Model,
  prompts: readonly EvalPrompt[],
  judges: readonly Judge[],
  steering: Steering,
  o: { maxTokens: number; batch: number; repetitionPenalty: number },
  out: CliOutput,
): Promise<RefusalEvalResult> {
  const { evaluateRefusal } = await import('../../eval/refusal.js');
  const controller = new AbortController();
  const onSigint = (): void => {
    if (controller.signal.aborted) process.exit(130);
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  const progress = evalProgress(out, steering.label);
  out.info(`${steering.label}: ${prompts.length} prompts, ${o.maxTokens} tokens each, batches of ${o.batch}`);
  try {
    return await evaluateRefusal(model, prompts, {
      judges,
      responder: steering.responder,
      maxNewTokens: o.maxTokens,
      batchSize: o.batch,
      repetitionPenalty: o.repetitionPenalty,
      onProgress: progress.onProgress,
      signal: controller.signal,
    });
  } finally {
    progress.finish();
    process.off('SIGINT', onSigint);
  }
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

/** The responder of --steer / --attack. */
export async function buildSteering(model: Model, o: SteerOptionValues): Promise<Steering> {
  const { hookResponder } = await import('../../eval/refusal.js');
  const attack = o.attack === 'scav' ? await scavAttackHooks(model, o) : undefined;
  const base = attack?.hooks ?? [];
  const prefix = attack ? `${attack.label} + ` : '';
  const fitted = attack?.fittedIds ?? [];
  if (o.steer === 'none')
    return {
      label: attack ? attack.label : 'baseline',
      responder: hookResponder(model, base),
      fittedIds: fitted,
    };
  if (o.steer === 'add' || o.steer === 'ablate') {
    const v = await vectorHooks(model, o);
    return {
      label: `${prefix}${v.label}`,
      responder: hookResponder(model, [...base, ...v.hooks]),
      fittedIds: [...fitted, ...v.fittedIds],
    };
  }
  return conditionalSteering(model, o, base, prefix, fitted);
}

// ---------------------------------------------------------------------------------------------
// Concept-based pieces (SCAV attack, conditional steering)

/** SCAV attack hooks from a concept file. */
export async function scavAttackHooks(
  model: Model,
  o: Pick<SteerOptionValues, 'concept' | 'p0' | 'p1'>,
): Promise<{ hooks: Hook[]; label: string; fittedIds: string[] }> {
  const concept = await loadConceptFor(o.concept!, model);
  const hooks = await scavFor(concept, { target: 'safe', p0: o.p0, p1: o.p1 });
  if (hooks.length === 0)
    throw new SteerguardError(
      `no probe of ${o.concept} is more accurate than --p1 ${o.p1}: SCAV has no layer to move`,
    );
  return { hooks, label: `scav p0=${o.p0}`, fittedIds: concept.fittedIds };
}

async function conditionalSteering(
  model: Model,
  o: SteerOptionValues,
  base: readonly Hook[],
  prefix: string,
  fitted: readonly string[],
): Promise<Steering> {
  const { conditionalGenerate } = await import('../../steering/conditional.js');
  const concept = await loadConceptFor(o.concept!, model);
  const monitor = await monitorFor(concept, { layer: o.monitorLayer, threshold: o.threshold });
  let steer: Hook[];
  let what: string;
  const ids = [...fitted, ...concept.fittedIds];
  if (o.vector !== undefined) {
    const v = await vectorHooks(model, { steer: 'add', vector: o.vector, layer: o.layer, coeff: o.coeff });
    steer = v.hooks;
    what = v.label;
    ids.push(...v.fittedIds);
  } else {
    steer = await scavFor(concept, { target: 'malicious', p0: o.p0, p1: o.p1 });
    what = 'scav defence';
  }
  const responder: Responder = async (prompts, gen) => {
    const r = await conditionalGenerate(model, prompts, { ...gen, monitor, steer, baseHooks: base });
    return {
      generations: r.generations,
      flags: r.flags.map((f) => f.flagged),
      scores: r.flags.map((f) => f.score),
    };
  };
  return { label: `${prefix}conditional ${what}`, responder, fittedIds: ids };
}

type Concept = import('../../concepts/concept.js').Concept;

async function loadConceptFor(file: string, model: Model): Promise<Concept> {
  const { Concept } = await import('../../concepts/concept.js');
  return Concept.load(file, model);
}

/** SCAV hooks; the defence ('malicious') keeps scavHooks' own target probability (0.999). */
async function scavFor(
  concept: Concept,
  o: { target: 'safe' | 'malicious'; p0: number; p1: number },
): Promise<Hook[]> {
  const { scavHooks } = await import('../../concepts/scav.js');
  return scavHooks(concept, { target: o.target, p0: o.target === 'safe' ? o.p0 : undefined, p1: o.p1 });
}

async function monitorFor(
  concept: Concept,
  o: { layer?: number; threshold?: number },
): Promise<PromptMonitor> {
  const { promptMonitor } = await import('../../concepts/monitor.js');
  return promptMonitor(concept, o);
}
