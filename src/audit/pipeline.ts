/**
 * `runAudit`: the audit pipeline. Runs the asked-for steps (and the steps they build on) in
 * order, keeping each result in the state file as soon as it is there, reusing results that
 * are still valid, recording a failed step with its error and carrying on with the others, and
 * ends by writing `report.json` and `report.html` (both atomically), failures included.
 *
 * Aborting the `signal` (the CLI does on Ctrl-C) stops after the running batch: the state keeps
 * every finished step and generation run, the report is written for what is there, and the same
 * call resumes.
 *
 * The pipeline composes the same pieces as the CLI commands (src/eval/: prompt sets, judges,
 * evaluations, SCAV hooks) and tells its caller what it does through a Reporter.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';

import { SteerguardError } from '../formats/errors.js';
import { buildJudges, checkJudgeNames } from '../eval/evaluation.js';
import type { Judge } from '../eval/judges.js';
import { checkGeneralizationSources } from '../concepts/generalization.js';
import { loadPromptSet, resolveDataDir } from '../data/datasets.js';
import { CAPABILITY_TASKS, checkBenchmarkData } from '../eval/capability-suite.js';
import { type Reporter, formatDuration, silentReporter } from '../eval/reporter.js';
import type { Model } from '../model/model.js';
import { renderReportHtml } from './html.js';
import { type AuditReport, buildReport, machineInfo } from './report.js';
import { REPLIES_DIR, type ReplyRecord, readReplies } from './runs.js';
import {
  type AuditState,
  STATE_FILE,
  STATE_FORMAT,
  STATE_VERSION,
  checkStateModel,
  jsonSafe,
  loadState,
  lockAuditDir,
  saveState,
  settingsDifferences,
} from './state.js';
import { writeFileAtomic } from '../formats/files.js';
import {
  type AuditContext,
  DIRECTION_FILE,
  READING_FILE,
  SCAV_CONCEPT_FILE,
  STEPS,
  capabilityRowsFile,
  directionSplit,
  loadEvalSets,
  stepKeys,
} from './steps.js';
import {
  type AuditSettings,
  DEFAULT_STEPS,
  STEP_NAMES,
  STEP_NEEDS,
  STEP_TITLES,
  type StepName,
} from './types.js';

export const REPORT_HTML = 'report.html';
export const REPORT_JSON = 'report.json';

/** What `runAudit` audits, where it writes, and how. */
export interface AuditOptions {
  readonly model: Model;
  /** Folder for the state, the report and the replies; created when missing. */
  readonly outDir: string;
  readonly settings: AuditSettings;
  /** Steps asked for; the steps they need run first when not done. Default: `DEFAULT_STEPS`. */
  readonly steps?: readonly StepName[];
  /** Forget earlier results in outDir (the audit's own files only) and start over. */
  readonly restart?: boolean;
  /** Put prompts and replies on the HTML page (under a warning). */
  readonly showText?: boolean;
  /** Folder of the named prompt sets (default: $STEERGUARD_DATA). */
  readonly dataDir?: string;
  /** Activation cache (undefined: the default folder; false: none). */
  readonly cacheDir?: string | false;
  /** Tokens per forward pass when reading activations (default 2048). */
  readonly batchTokens?: number;
  /** How to reach a Llama Guard server ('llamaguard'), and the judge model of the `model-*` judges. */
  readonly judge?: {
    readonly judgeUrl?: string;
    readonly judgeModel?: Model;
    /** The judge model's file, for messages. */
    readonly judgeModelFile?: string;
    /** Seconds per request (default 60). */
    readonly judgeTimeout?: number;
    /** Requests in flight (default 4). */
    readonly judgeConcurrency?: number;
  };
  /** Status lines, warnings and progress (default: none). */
  readonly reporter?: Reporter;
  /** Aborting it stops the audit after the running batch; the state keeps what is finished. */
  readonly signal?: AbortSignal;
  /** steerguard version and command line, for the report. */
  readonly version?: string;
  readonly command?: string;
}

/** What `runAudit` did: the report, its files, and which steps ran, were reused or failed. */
export interface AuditOutcome {
  readonly report: AuditReport;
  readonly files: { readonly html: string; readonly json: string; readonly state: string };
  readonly ran: readonly StepName[];
  readonly reused: readonly StepName[];
  readonly failed: readonly StepName[];
  /** The signal was aborted: some asked-for steps did not run. */
  readonly interrupted: boolean;
  readonly seconds: number;
}

/** The audit's own files in outDir (what --restart removes; nothing else there is touched). */
const OWN_FILES = [
  STATE_FILE,
  READING_FILE,
  DIRECTION_FILE,
  SCAV_CONCEPT_FILE,
  capabilityRowsFile('none'),
  capabilityRowsFile('gated'),
  REPORT_HTML,
  REPORT_JSON,
];

/** The artefact a step leaves in outDir: a stored result without it is redone. */
const STEP_FILES: Partial<Record<StepName, string>> = { reading: READING_FILE, direction: DIRECTION_FILE };

export function removeAuditFiles(outDir: string): void {
  for (const f of OWN_FILES) rmSync(path.join(outDir, f), { force: true });
  rmSync(path.join(outDir, REPLIES_DIR), { recursive: true, force: true });
}

/** Steps to run for `asked`: those and everything they need, in pipeline order. */
export function planSteps(asked: readonly StepName[]): StepName[] {
  const want = new Set<StepName>();
  const add = (s: StepName): void => {
    if (want.has(s)) return;
    for (const d of STEP_NEEDS[s]) add(d);
    want.add(s);
  };
  for (const s of asked) add(s);
  return STEP_NAMES.filter((s) => want.has(s));
}

/** Steps that build on `step`, directly or not. */
function dependants(step: StepName): StepName[] {
  return STEP_NAMES.filter((s) => s !== step && planSteps([s]).includes(step));
}

/**
 * Loads every prompt set the settings name and checks the judges' names and that no evaluated
 * prompt is among the prompts an artefact will be fitted on (the monitor's development sources,
 * the refusal direction's train and validation parts, the SCAV concept's sets), that the
 * evaluated groups share no prompt, and that the monitor's sources are usable, throwing on the
 * first problem. runAudit calls it before it makes the output folder, and the CLI before it loads
 * the model, so that a mistake costs nothing.
 */
export function checkAuditInputs(
  settings: AuditSettings,
  dataDir?: string,
  steps: readonly StepName[] = DEFAULT_STEPS,
): void {
  const s = settings;
  checkJudgeNames(s.judges);
  if (planSteps(steps).includes('capability')) checkBenchmarkData(resolveDataDir(dataDir), CAPABILITY_TASKS);
  if (planSteps(steps).includes('sae')) {
    if (s.sae === null) throw new SteerguardError('the sae step needs an SAE folder: pass --sae DIR');
    if (!existsSync(s.sae)) throw new SteerguardError(`--sae: no such folder: ${s.sae}`);
  }
  const load = (names: readonly string[]) => names.map((n) => loadPromptSet(n, { dataDir, limit: s.limit }));
  const dev = { harmful: load(s.devHarmful), benign: load(s.devBenign) };
  const test = { harmful: load(s.testHarmful), benign: load(s.testBenign) };
  checkGeneralizationSources(dev, test);
  const direction = directionSplit(s, dataDir);
  const scav = [s.scavHarmful, s.scavHarmless].map((n) => loadPromptSet(n, { dataDir }));
  const fitted: { what: string; ids: Map<string, string> }[] = [
    { what: 'the monitor’s development sources', ids: idsOf([...dev.harmful, ...dev.benign]) },
    {
      what: 'the refusal direction’s train and validation prompts',
      ids: idsOf(
        [direction.harmful, direction.harmless].map((x) => ({
          name: x.name,
          prompts: [...x.train, ...x.val],
        })),
      ),
    },
    { what: 'the SCAV concept’s sets', ids: idsOf(scav) },
  ];
  const seen = new Map<string, string>();
  for (const { group, sets } of loadEvalSets(s, dataDir))
    for (const set of sets) {
      for (const f of fitted) {
        const shared = set.prompts.filter((p) => f.ids.has(p.id));
        if (shared.length > 0)
          throw new SteerguardError(
            `evaluated set ${set.name} (${group}) shares ${shared.length} prompt(s) with ${f.what} ` +
              `(${f.ids.get(shared[0].id)}): a figure on prompts an artefact was fitted on is not a result; ` +
              'evaluate on other sources or another part of the set',
          );
      }
      const here = `${set.name} (${group})`;
      for (const p of set.prompts) {
        const other = seen.get(p.id);
        if (other !== undefined && other !== here)
          throw new SteerguardError(
            `evaluated sets ${other} and ${here} share a prompt: each prompt belongs to one evaluated set`,
          );
        seen.set(p.id, here);
      }
    }
}

function idsOf(sets: readonly { name: string; prompts: readonly { id: string }[] }[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const set of sets) for (const p of set.prompts) if (!m.has(p.id)) m.set(p.id, set.name);
  return m;
}

/**
 * Runs the audit (see the top of this file) and writes its report, holding `<outDir>/audit.lock`
 * throughout: one audit per folder at a time.
 */
export async function runAudit(opts: AuditOptions): Promise<AuditOutcome> {
  checkAuditInputs(opts.settings, opts.dataDir, opts.steps);
  const unlock = lockAuditDir(opts.outDir);
  try {
    return await runAuditLocked(opts);
  } finally {
    unlock();
  }
}

async function runAuditLocked(opts: AuditOptions): Promise<AuditOutcome> {
  const { model, settings } = opts;
  const reporter = opts.reporter ?? silentReporter;
  const signal = opts.signal ?? new AbortController().signal;
  const interrupted = (): boolean => signal.aborted;
  const outDir = opts.outDir;
  const t0 = performance.now();
  mkdirSync(outDir, { recursive: true });
  if (opts.restart) removeAuditFiles(outDir);
  const previous = loadState(outDir);
  const c = model.config;
  const identity = model.identity;
  if (previous) {
    checkStateModel(previous, identity, outDir);
    const changed = settingsDifferences(previous.settings, settings);
    if (changed.length > 0)
      reporter.info(
        `settings changed since the audit in ${outDir}: ${changed.join(', ')}; steps that read them are redone`,
      );
  }
  const now = new Date().toISOString();
  const state: AuditState = previous ?? {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    createdAt: now,
    updatedAt: now,
    model: {
      name: identity.name,
      path: identity.path,
      arch: identity.arch,
      fingerprint: identity.fingerprint,
      nLayers: c.nLayers,
      dModel: c.dModel,
    },
    settings,
    steps: {},
    runs: {},
  };
  state.settings = settings;
  saveState(outDir, state);

  const keys = stepKeys(settings, identity.fingerprint);

  let judges: Promise<Judge[]> | undefined;
  const ctx: AuditContext = {
    model,
    outDir,
    state,
    reporter,
    maxTokens: settings.maxTokens,
    batch: settings.batch,
    redact: settings.redact,
    judgeNames: settings.judges,
    judges: () => {
      judges ??= buildJudges(
        {
          judge: settings.judges,
          judgeUrl: opts.judge?.judgeUrl,
          judgeModel: opts.judge?.judgeModelFile ?? opts.judge?.judgeModel?.identity.path,
          judgeTimeout: opts.judge?.judgeTimeout ?? 60,
          judgeConcurrency: opts.judge?.judgeConcurrency ?? 4,
        },
        reporter,
        opts.judge?.judgeModel,
      );
      return judges;
    },
    settings,
    dataDir: opts.dataDir,
    cacheDir: opts.cacheDir,
    batchTokens: opts.batchTokens ?? 2048,
    signal,
    keys,
    memo: new Map(),
  };

  const plan = planSteps(opts.steps ?? DEFAULT_STEPS);
  const ran: StepName[] = [];
  const reused: StepName[] = [];
  const failed: StepName[] = [];
  const valid = (s: StepName): boolean => {
    const rec = state.steps[s];
    if (!rec || rec.status !== 'done' || rec.key !== keys[s]) return false;
    const file = STEP_FILES[s];
    return file === undefined || existsSync(path.join(outDir, file));
  };
  for (const [i, step] of plan.entries()) {
    if (interrupted()) break;
    const banner = `[${i + 1}/${plan.length}] ${step}: ${STEP_TITLES[step]}`;
    if (valid(step)) {
      reporter.info(`${banner}: done earlier (${state.steps[step]!.finishedAt}), reusing it`);
      reused.push(step);
      continue;
    }
    reporter.info(`\n== ${banner} ==`);
    const started = new Date();
    const s0 = performance.now();
    const record = (status: 'done' | 'failed', extra: { result?: unknown; error?: string }): void => {
      (state.steps as Record<string, unknown>)[step] = {
        status,
        key: keys[step],
        startedAt: started.toISOString(),
        finishedAt: new Date().toISOString(),
        seconds: (performance.now() - s0) / 1000,
        ...extra,
      };
    };
    const missing = STEP_NEEDS[step].filter((d) => !valid(d));
    if (missing.length > 0) {
      const why = missing
        .map(
          (d) =>
            `the ${d} step ${state.steps[d]?.status === 'failed' && state.steps[d]?.key === keys[d] ? 'failed' : 'did not run'}`,
        )
        .join(' and ');
      record('failed', { error: `skipped: ${why}` });
      failed.push(step);
      reporter.warn(`${step}: skipped, ${why}`);
      saveState(outDir, state);
      continue;
    }
    // Whatever built on the old result of this step no longer holds.
    for (const d of dependants(step)) delete state.steps[d];
    try {
      const result = await STEPS[step](ctx);
      record('done', { result });
      ran.push(step);
      reporter.info(`${step}: done in ${formatDuration((performance.now() - s0) / 1000)}`);
    } catch (e) {
      if (interrupted()) break;
      const message = e instanceof Error ? e.message || e.name : String(e);
      record('failed', { error: message });
      failed.push(step);
      reporter.warn(`${step} failed: ${message}`, e);
    }
    saveState(outDir, state);
  }
  saveState(outDir, state);

  const seconds = (performance.now() - t0) / 1000;
  const report = buildReport({
    state,
    keys,
    machine: machineInfo(model.backend),
    version: opts.version ?? 'unknown',
    command: opts.command ?? null,
    wallSeconds: seconds,
  });
  let replies: Map<string, readonly ReplyRecord[]> | undefined;
  if (opts.showText) {
    replies = new Map();
    for (const f of report.files.replies) {
      const file = path.join(outDir, f.file);
      if (existsSync(file)) replies.set(f.run, readReplies(file));
    }
  }
  const files = {
    html: path.join(outDir, REPORT_HTML),
    json: path.join(outDir, REPORT_JSON),
    state: path.join(outDir, STATE_FILE),
  };
  writeFileAtomic(files.json, `${JSON.stringify(report, jsonSafe, 1)}\n`);
  writeFileAtomic(files.html, renderReportHtml(report, { replies }));
  if (interrupted())
    reporter.warn(`interrupted; finished steps are kept in ${files.state}: run the same command to resume`);
  return { report, files, ran, reused, failed, interrupted: interrupted(), seconds };
}

/** Throws unless every name is a step. */
export function parseSteps(names: readonly string[]): StepName[] {
  for (const n of names)
    if (!(STEP_NAMES as readonly string[]).includes(n))
      throw new SteerguardError(`unknown step '${n.slice(0, 40)}' (steps: ${STEP_NAMES.join(', ')})`);
  return STEP_NAMES.filter((s) => names.includes(s));
}
