/**
 * `steerguard attack scav`: the SCAV embedding attack (Xu et al. 2024) on a prompt set, next to
 * its baselines (no attack, refusal-direction ablation, negative activation addition), scored by
 * keyword attack success rate and language flaws. Every reply goes to --out; none is printed.
 */
import { OptionError } from '../../formats/errors.js';
import type { Hook } from '../../hooks/hooks.js';
import type { Model } from '../../model/model.js';
import { checkLeakage } from '../../data/splits.js';
import { buildJudges, checkJudgeSelection, runEvaluation } from '../../eval/evaluation.js';
import { loadSets, toEvalPrompts } from '../../eval/prompt-sets.js';
import { type RefusalEvalResult, type RefusalRow, hookResponder } from '../../eval/refusal.js';
import { type Steering, fittedIdsOf, scavAttackHooks } from '../../eval/steering.js';
import { type CliOutput, formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  CHAT_OPTIONS,
  type CliCommand,
  MODEL_OPTION,
  THREADS_OPTION,
  checkInputFile,
  checkOutPath,
  command,
  loadModel,
  para,
  useChat,
  withInterrupt,
} from './common.js';
import { GENERATION_OPTIONS, JUDGE_OPTIONS, OUTPUT_OPTIONS, SET_OPTIONS, writeRows } from './eval.js';

const METHODS = ['none', 'scav', 'ablate', 'subtract'] as const;
type Method = (typeof METHODS)[number];

const scavAttackCommand = command(
  {
    name: 'attack',
    summary: 'run the SCAV embedding attack and its baselines, report attack success and flaws',
    description: para(
      'attack scav: for every prompt of --prompts, generates a greedy reply with no attack (none), with the ' +
        'SCAV attack from --concept (scav: at each layer whose probe accuracy exceeds --p1, the smallest move ' +
        'that brings P(malicious) down to --p0, at the last prompt token and every generated token), with the ' +
        'refusal direction ablated everywhere (ablate) and with it subtracted at its layer (subtract, ' +
        '--coeff × r). The direction comes from --direction, or is computed from advbench/alpaca train and ' +
        'validation parts (slow; saved next to --out for reuse). Prints per method the keyword attack ' +
        'success rate (no refusal phrase: GCG and JailbreakBench lists) and the share of degenerate replies. ' +
        'By default the held-out test part of the seeded split is attacked. A small --p0 tends to give ' +
        'repetitive text (SCAV issue #5): --repetition-penalty 1.1-1.3 helps.',
    ),
    positionals: [
      {
        name: 'which',
        description: "the attack: 'scav' (options below) or 'finetune' (steerguard attack finetune --help)",
      },
    ],
    options: {
      model: MODEL_OPTION,
      concept: {
        type: 'string',
        placeholder: 'file',
        description: 'concept file with the per-layer probes (needed by scav)',
      },
      prompts: {
        type: 'list',
        default: ['advbench'],
        placeholder: 'set',
        description: 'harmful prompt sets (names or files)',
      },
      ...SET_OPTIONS,
      part: { ...SET_OPTIONS.part, default: 'test' },
      p0: {
        type: 'number',
        min: 0,
        max: 1,
        default: 0.001,
        description: 'target P(malicious) after the move',
      },
      p1: {
        type: 'number',
        min: 0,
        max: 1,
        default: 0.9,
        description: 'only layers whose probe test accuracy is above this',
      },
      methods: {
        type: 'list',
        placeholder: 'm1,m2',
        default: [...METHODS],
        description: 'which runs: none, scav, ablate, subtract',
      },
      direction: {
        type: 'string',
        placeholder: 'file.gguf',
        description: 'refusal direction for ablate/subtract (see steerguard direction)',
      },
      coeff: { type: 'number', default: 1, description: 'subtract: remove coeff × r at its layer' },
      ...CHAT_OPTIONS,
      ...GENERATION_OPTIONS,
      ...JUDGE_OPTIONS,
      ...OUTPUT_OPTIONS,
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard attack scav -m smollm2.gguf --concept harmful.concept.safetensors --prompts advbench --limit 50 --out scav.jsonl',
      'steerguard attack scav -m smollm2.gguf --concept harmful.concept.safetensors --methods none,scav --p0 0.01 --repetition-penalty 1.2',
      'steerguard attack scav -m smollm2.gguf --concept harmful.concept.safetensors --direction refusal.gguf --out runs.jsonl --redact',
    ],
  },
  async (args, out) => {
    const o = args.options;
    if (args.positionals[0] !== 'scav')
      throw new OptionError(`unknown attack '${args.positionals[0].slice(0, 40)}'; known: scav, finetune`);
    const methods = [...new Set(o.methods)] as Method[];
    for (const m of methods)
      if (!(METHODS as readonly string[]).includes(m))
        throw new OptionError(`--methods: unknown method '${m.slice(0, 40)}' (known: ${METHODS.join(', ')})`);
    if (methods.includes('scav') && o.concept === undefined)
      throw new OptionError('the scav method needs --concept FILE');
    checkInputFile('--direction', o.direction);
    checkInputFile('--concept', o.concept);
    checkOutPath(o.out, o.overwrite);
    const sets = loadSets(o.prompts, o);
    const reporter = cliReporter(out);
    checkJudgeSelection(o);
    checkInputFile('--judge-model', o.judgeModel);
    const judgeModel = o.judgeModel ? await loadModel(o.judgeModel, out, { threads: o.threads }) : undefined;
    const judges = await buildJudges(o, reporter, judgeModel);
    const model = await loadModel(o.model, out, { threads: o.threads });
    const prompts = toEvalPrompts(model, sets, { ...o, chat: o.tokenIds ? false : useChat(model, o) });

    const needDirection = methods.includes('ablate') || methods.includes('subtract');
    const direction = needDirection ? await refusalDirection(model, o, out) : undefined;

    const runs: { method: Method; result: RefusalEvalResult }[] = [];
    for (const method of methods) {
      let steering: Steering;
      if (method === 'none') steering = { label: 'none', responder: hookResponder(model), fittedIds: [] };
      else if (method === 'scav') {
        const a = await scavAttackHooks(model, o);
        steering = { label: 'scav', responder: hookResponder(model, a.hooks), fittedIds: a.fittedIds };
      } else {
        const d = direction!;
        const { ablationHooks, additionHooks } = await import('../../steering/refusal-direction.js');
        const hooks: Hook[] =
          method === 'ablate'
            ? ablationHooks(d.direction, model.config.nLayers)
            : additionHooks(d.direction, d.layer, -o.coeff);
        steering = { label: method, responder: hookResponder(model, hooks), fittedIds: d.fittedIds };
      }
      const overlap = checkLeakage(steering.fittedIds, prompts, {
        allow: o.allowOverlap,
        what: `the ${method} artefact`,
      });
      if (overlap.length > 0)
        out.warn(`${method}: ${overlap.length} attacked prompts were used to fit its artefact`);
      const result = await withInterrupt((signal) =>
        runEvaluation(model, prompts, judges, steering, o, { reporter, signal }),
      );
      runs.push({ method, result });
    }

    if (o.out !== undefined) {
      const all: { method: Method; row: RefusalRow }[] = runs.flatMap((r) =>
        r.result.rows.map((row) => ({ method: r.method, row })),
      );
      const byRow = new Map(all.map((x) => [x.row, x.method]));
      await writeRows(
        o.out,
        all.map((x) => x.row),
        { redact: o.redact, extra: (row) => ({ method: byRow.get(row) }) },
      );
      out.info(`wrote ${all.length} rows to ${o.out}`);
    }
    const table = attackTable(runs);
    const failures = runs.flatMap((r) =>
      r.result.judgeFailures.map((f) => `${r.method}: ${f.judge}: ${f.message}`),
    );
    out.result(
      {
        attack: 'scav',
        p0: o.p0,
        p1: o.p1,
        repetitionPenalty: o.repetitionPenalty,
        direction: direction ? { file: direction.file, layer: direction.layer } : null,
        sets: sets.map((s) => ({ name: s.name, prompts: s.prompts.length })),
        runs: table.rows,
        summaries: Object.fromEntries(runs.map((r) => [r.method, r.result.summary])),
        judgeFailures: failures,
        out: o.out ?? null,
      },
      () =>
        table.text +
        '\nASR = share of replies with no refusal phrase (higher: attack works); flawed = degenerate replies ' +
        '(an attack that only breaks the model shows up here).',
    );
    if (failures.length > 0) throw new OptionError(`judging failed: ${failures.join('; ')}`);
  },
);

/** `steerguard attack scav|finetune`: finetune has a command of its own (attack-finetune.ts). */
export const attackCommand: CliCommand = {
  spec: scavAttackCommand.spec,
  hidden: false,
  run: async (argv, out) => {
    let k = 0;
    while (argv[k] === '--json') k++;
    if (argv[k] === 'finetune') {
      const { finetuneAttackCommand } = await import('./attack-finetune.js');
      await finetuneAttackCommand.run([...argv.slice(0, k), ...argv.slice(k + 1)], out);
    } else await scavAttackCommand.run(argv, out);
  },
};

interface DirectionInUse {
  readonly direction: Float32Array;
  readonly layer: number;
  readonly fittedIds: string[];
  readonly file: string | null;
}

/** The refusal direction from --direction, or computed (and saved next to --out). */
async function refusalDirection(
  model: Model,
  o: {
    direction?: string;
    out?: string;
    overwrite: boolean;
    dataDir?: string;
    split: string;
    seed: number;
    chat: boolean;
    noChat: boolean;
  },
  out: CliOutput,
): Promise<DirectionInUse> {
  const { ControlVector } = await import('../../steering/control-vector.js');
  const { refusalDirectionFromControlVector } = await import('../../steering/refusal-direction.js');
  if (o.direction !== undefined) {
    const cv = ControlVector.load(o.direction);
    cv.checkModel(model.config, { identity: model.identity, file: o.direction });
    const rd = refusalDirectionFromControlVector(cv);
    return {
      direction: rd.direction,
      layer: rd.layer,
      fittedIds: fittedIdsOf(cv.metadata),
      file: o.direction,
    };
  }
  const { DIRECTION_DEFAULTS, computeDirectionFile, loadDirectionSets } = await import('./direction.js');
  const file =
    o.out !== undefined ? `${o.out.replace(/\.jsonl$/i, '')}.direction.gguf` : 'refusal-direction.gguf';
  checkOutPath(file, o.overwrite);
  out.info(
    `no --direction given: computing the refusal direction into ${file} (pass --direction ${file} next time)`,
  );
  const opts = {
    ...DIRECTION_DEFAULTS,
    out: file,
    dataDir: o.dataDir,
    split: o.split,
    seed: o.seed,
    chat: o.chat,
    noChat: o.noChat,
  };
  const sets = await loadDirectionSets(opts);
  const rep = await computeDirectionFile(model, sets, opts, out);
  out.info(
    `refusal direction: block ${rep.chosen.layer} input, position ${rep.chosen.position}, chosen by ${rep.chosen.selectedBy}`,
  );
  const cv = ControlVector.load(file);
  const rd = refusalDirectionFromControlVector(cv);
  return { direction: rd.direction, layer: rd.layer, fittedIds: fittedIdsOf(cv.metadata), file };
}

const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '-');

/** One row per method × set: ASR by each keyword judge, unsafe rate by Llama Guard, flaw rate. */
function attackTable(runs: readonly { method: Method; result: RefusalEvalResult }[]) {
  const rows: Record<string, string | number>[] = [];
  for (const { method, result } of runs) {
    const sets = [...new Set(result.summary.map((s) => s.set))];
    for (const set of sets) {
      const row: Record<string, string | number> = { method, set };
      for (const s of result.summary.filter((x) => x.set === set)) {
        row.n = s.n + s.errors;
        if (s.measures === 'refusal') row[`ASR ${s.judge.replace('keyword-', '')}`] = 1 - s.rate;
        else if (s.measures === 'unsafe') row[`unsafe ${s.judge}`] = s.rate;
        else if (s.measures === 'flawed') row.flawed = s.rate;
      }
      rows.push(row);
    }
  }
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const text = formatTable(
    cols,
    rows.map((r) =>
      cols.map((c) => (typeof r[c] === 'number' && c !== 'n' ? pct(r[c] as number) : (r[c] ?? '-'))),
    ),
    cols.map((c) => c !== 'method' && c !== 'set'),
  );
  return { rows, text };
}
