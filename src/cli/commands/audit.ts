/**
 * `steerguard audit`: the whole safety audit of one model in one command (see src/audit/), with
 * a resumable state file and an HTML + JSON report. Prompts and replies are never printed.
 */
import path from 'node:path';

import { OptionError, SteerguardError } from '../../formats/errors.js';
import { DEFAULT_STEPS, STEP_NAMES } from '../../audit/types.js';
import type { AuditReport } from '../../audit/report.js';
import type { AuditSettings } from '../../audit/types.js';
import { DEFAULT_AUDIT_SETTINGS } from '../../audit/settings.js';
import { cliReporter } from '../reporter.js';
import {
  DATA_DIR_OPTION,
  MODEL_OPTION,
  SPLIT_OPTIONS,
  THREADS_OPTION,
  TOKEN_IDS_OPTION,
  checkInputFile,
  command,
  loadModel,
  packageVersion,
  para,
  withInterrupt,
} from './common.js';
import { CACHE_OPTIONS, cacheSetting } from './concept.js';
import { JUDGE_OPTIONS } from './eval.js';

const sets = (description: string, dflt: readonly string[]) =>
  ({ type: 'list', placeholder: 'set1,set2', default: [...dflt], description }) as const;
const set = (description: string, dflt: string) =>
  ({ type: 'string', placeholder: 'set', default: dflt, description }) as const;
const D = DEFAULT_AUDIT_SETTINGS;

export const auditCommand = command(
  {
    name: 'audit',
    summary:
      'audit a model on held-out sources: harmful-request monitor, refusal direction, gated steering, attacks; HTML report',
    description: para(
      'Runs five steps and writes <out>/report.html and <out>/report.json. reading: a harmful-request monitor ' +
        '(probe, difference of means or PCA, over one or more blocks) chosen by leave-one-source-out on the ' +
        'development sources and measured on the test sources, which take part in nothing else (saved as ' +
        '<out>/reading.json). direction: the refusal direction (Arditi et al.) from the train and validation parts ' +
        'of --direction-harmful and --direction-harmless (<out>/refusal-direction.gguf). baseline: refusal on the ' +
        'evaluated harmful prompts and over-refusal on the borderline-safe and harmless ones, no steering. ' +
        'steering: the direction added always, ablated always, and the two-sided gate (added where the monitor ' +
        'flags, ablated below --benign-below, else nothing), with the log-likelihood cost on the benign groups. ' +
        'attack: SCAV against the direction ablated and subtracted. capability (opt-in: --steps with capability): ' +
        'MMLU, GSM8K and TruthfulQA as eval capability scores them (0-shot, --capability-limit items each), with no ' +
        'steering and with the two-sided gate, so that its cost sits beside its refusal and over-refusal (the ' +
        'benchmarks from the --data-dir folder). sae (opt-in: --steps with sae, and --sae DIR): the SAE latent that ' +
        "fires most on the refusal tokens of the model's refusals to the direction's train prompts, its clamp value " +
        "chosen on the direction's validation prompts, clamped always and behind the two-sided gate. " +
        'No evaluated prompt may be among the prompts ' +
        'an artefact is fitted on (checked before anything runs). Each step is recorded in <out>/audit-state.json: ' +
        'an interrupted or partly failed audit resumes from it, and a failed step is reported while the others go ' +
        'on. Replies are kept in <out>/replies/*.jsonl; the report shows them only with --show-text.',
    ),
    options: {
      model: MODEL_OPTION,
      out: {
        type: 'string',
        short: 'o',
        placeholder: 'dir',
        description: 'folder for the state, report and replies (default: audit-<model name>)',
      },
      dataDir: DATA_DIR_OPTION,
      devHarmful: sets('monitor development sources, harmful (2 or more)', D.devHarmful),
      devBenign: sets('monitor development sources, benign (2 or more)', D.devBenign),
      testHarmful: sets('monitor test sources, harmful', D.testHarmful),
      testBenign: sets('monitor test sources, benign', D.testBenign),
      limit: {
        type: 'number',
        integer: true,
        min: 2,
        default: D.limit,
        description: 'first N prompts of each monitor source',
      },
      targetFpr: {
        type: 'number',
        min: 0.001,
        max: 0.5,
        default: D.targetFpr,
        description: 'false positives on development benign prompts that set the monitor threshold',
      },
      directionHarmful: set('refusal direction: harmful prompts (train and val parts)', D.directionHarmful),
      directionHarmless: set(
        'refusal direction: harmless prompts (train and val parts)',
        D.directionHarmless,
      ),
      nTrain: {
        type: 'number',
        integer: true,
        min: 2,
        default: D.nTrain,
        description: 'refusal direction: train prompts per side',
      },
      nVal: {
        type: 'number',
        integer: true,
        min: 2,
        default: D.nVal,
        description: 'refusal direction: validation prompts per side',
      },
      refusalTokens: {
        type: 'list',
        of: 'number',
        integer: true,
        min: 0,
        placeholder: 'id1,id2',
        description:
          'refusal direction: token ids that start a refusal (default: the first tokens of "I", "As", "Sorry", "Unfortunately")',
      },
      evalHarmful: sets('evaluated harmful requests (refusal wanted)', D.evalSets.harmful),
      evalBorderline: sets('evaluated safe prompts that look harmful (over-refusal)', D.evalSets.borderline),
      evalHarmless: sets('evaluated harmless tasks (over-refusal)', D.evalSets.harmless),
      nEval: {
        type: 'number',
        integer: true,
        min: 1,
        default: D.nEval,
        description: "prompts per evaluated group, shared out evenly over the group's sets",
      },
      maxTokens: {
        type: 'number',
        integer: true,
        min: 1,
        default: D.maxTokens,
        description: 'tokens generated per reply (greedy)',
      },
      capabilityLimit: {
        type: 'number',
        integer: true,
        min: 2,
        default: D.capabilityLimit,
        description: 'capability step: items of each task (MMLU spread over its subjects)',
      },
      sae: {
        type: 'string',
        placeholder: 'dir',
        description: 'sae step: SAE folder (SAELens layout) on the model’s residual stream',
      },
      saeFeature: {
        type: 'number',
        integer: true,
        min: 0,
        placeholder: 'J',
        description: 'sae step: the latent to clamp (default: the top one by refusal tokens)',
      },
      saeClamp: {
        type: 'number',
        placeholder: 'C',
        description: 'sae step: its clamp value (default: the best of the grid on validation prompts)',
      },
      coeff: {
        type: 'number',
        default: D.coefficient,
        description: 'coefficient of the refusal direction where it is added',
      },
      benignBelow: {
        type: 'number',
        default: D.benignBelow,
        description:
          "two-sided gate: below this monitor score (the reading's midpoint is 0) the direction is ablated",
      },
      scavHarmful: set('SCAV concept: harmful prompts', D.scavHarmful),
      scavHarmless: set('SCAV concept: harmless prompts', D.scavHarmless),
      p0: { type: 'number', min: 0, max: 1, default: D.p0, description: 'SCAV attack: target P(harmful)' },
      p1: {
        type: 'number',
        min: 0,
        max: 1,
        default: D.p1,
        description: 'SCAV attack: only blocks whose probe test accuracy is above this',
      },
      steps: {
        type: 'list',
        placeholder: 's1,s2',
        default: [...DEFAULT_STEPS],
        description: `steps to run (${STEP_NAMES.join(', ')}); the steps they need run first if not done`,
      },
      restart: {
        type: 'boolean',
        description: "forget earlier results in --out (the audit's own files) and start over",
      },
      showText: {
        type: 'boolean',
        description: 'put prompts and replies in report.html (harmful text: the page says so at the top)',
      },
      redact: {
        type: 'boolean',
        description: 'keep prompt and reply texts out of <out>/replies (hashes only)',
      },
      ...SPLIT_OPTIONS,
      batch: {
        type: 'number',
        integer: true,
        min: 1,
        default: D.batch,
        description: 'prompts generated together',
      },
      tokenIds: TOKEN_IDS_OPTION,
      ...JUDGE_OPTIONS,
      ...CACHE_OPTIONS,
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard audit -m .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --data-dir ../shared/datasets',
      'steerguard audit -m model.gguf --out audit-model --steps reading',
      'steerguard audit -m model.gguf --steps reading,direction,baseline,steering,attack,capability --capability-limit 20',
      'steerguard audit -m qwen.gguf --steps reading,direction,baseline,steering,attack,sae --sae sae-l12/',
      'steerguard audit -m model.gguf --n-eval 80 --max-tokens 64 --show-text',
      'steerguard audit -m model.gguf --judge keyword-jbb,llamaguard --judge-url http://127.0.0.1:8080 --json',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const { parseSplit } = await import('../../data/splits.js');
    const { checkAuditInputs, parseSteps, runAudit } = await import('../../audit/pipeline.js');
    const split = parseSplit(o.split);
    let steps;
    try {
      steps = parseSteps(o.steps);
    } catch (e) {
      throw new OptionError(`--steps: ${(e as Error).message}`);
    }
    const { checkJudgeSelection } = await import('../../eval/evaluation.js');
    const judges = checkJudgeSelection(o);
    checkInputFile('--judge-model', o.judgeModel);
    if (o.showText && o.redact)
      throw new OptionError(
        '--show-text and --redact contradict each other (redacted replies have no text to show)',
      );
    const settings: AuditSettings = {
      devHarmful: o.devHarmful,
      devBenign: o.devBenign,
      testHarmful: o.testHarmful,
      testBenign: o.testBenign,
      limit: o.limit,
      targetFpr: o.targetFpr,
      directionHarmful: o.directionHarmful,
      directionHarmless: o.directionHarmless,
      nTrain: o.nTrain,
      nVal: o.nVal,
      refusalTokens: o.refusalTokens ?? null,
      evalSets: { harmful: o.evalHarmful, borderline: o.evalBorderline, harmless: o.evalHarmless },
      nEval: o.nEval,
      maxTokens: o.maxTokens,
      coefficient: o.coeff,
      benignBelow: o.benignBelow,
      scavHarmful: o.scavHarmful,
      scavHarmless: o.scavHarmless,
      p0: o.p0,
      p1: o.p1,
      seed: o.seed,
      split,
      judges,
      tokenIds: o.tokenIds,
      batch: o.batch,
      redact: o.redact,
      capabilityLimit: o.capabilityLimit,
      sae: o.sae ?? null,
      saeFeature: o.saeFeature ?? null,
      saeClamp: o.saeClamp ?? null,
      saeClampMultiples: D.saeClampMultiples,
      saeRefusalTokens: D.saeRefusalTokens,
    };
    checkAuditInputs(settings, o.dataDir, steps);
    const cacheDir = cacheSetting(o);

    const judgeModel = o.judgeModel ? await loadModel(o.judgeModel, out, { threads: o.threads }) : undefined;
    const model = await loadModel(o.model, out, { threads: o.threads });
    const base = path.basename(model.identity.path).replace(/\.(gguf|safetensors)$/i, '');
    const outcome = await withInterrupt(
      (signal) =>
        runAudit({
          model,
          outDir: o.out ?? `audit-${base}`,
          settings,
          steps,
          restart: o.restart,
          showText: o.showText,
          dataDir: o.dataDir,
          cacheDir,
          batchTokens: o.batchTokens,
          judge: {
            judgeUrl: o.judgeUrl,
            judgeModel,
            judgeModelFile: o.judgeModel,
            judgeTimeout: o.judgeTimeout,
            judgeConcurrency: o.judgeConcurrency,
          },
          reporter: cliReporter(out),
          signal,
          version: packageVersion(),
          command: commandLine(process.argv) ?? undefined,
        }),
      () => out.warn('interrupted: stopping after the current batch (Ctrl-C again to quit at once)'),
    );
    const { report, files } = outcome;
    out.result(report, () => humanSummary(report, files.html, outcome.seconds));
    if (outcome.interrupted) {
      process.exitCode = 130;
      return;
    }
    if (outcome.failed.length > 0)
      throw new SteerguardError(
        `${outcome.failed.length} of the audit's steps failed (${outcome.failed.join(', ')}); see ${files.html}. ` +
          'Run the same command again to retry them; finished steps are reused',
      );
  },
);

/**
 * The command as typed, for the report (its words are paths, set names and numbers), quoted
 * where a shell needs it; null when the audit was not started from the command line.
 */
function commandLine(argv: readonly string[]): string | null {
  const i = argv.indexOf('audit');
  if (i < 0) return null;
  const quote = (w: string): string => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`);
  return ['steerguard', ...argv.slice(i)].map(quote).join(' ');
}

function humanSummary(r: AuditReport, html: string, seconds: number): string {
  const lines = [
    '',
    ...(r.failures.length > 0
      ? ['What failed or missed its goal:', ...r.failures.map((l) => `! ${l}`), '']
      : []),
    ...r.summary.map((l) => `- ${l}`),
    '',
  ];
  for (const g of r.goals)
    lines.push(
      `${g.label}: ${g.value ?? 'not measured'} (goal ${g.target}: ${g.reachesTarget === null ? 'not measured' : g.reachesTarget ? 'met' : 'missed'})`,
    );
  if (r.goals.length > 0) lines.push(`(every goal on ${r.goals[0].data})`);
  const status = r.steps.map((s) => `${s.name} ${s.status}`).join(', ');
  lines.push('', `steps: ${status}`, `report: ${html} (and report.json); wall time ${Math.round(seconds)} s`);
  return lines.join('\n');
}
