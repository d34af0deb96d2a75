/**
 * The five audit steps (types.ts describes the recipe). Each reads what it needs (prompt sets,
 * the artefact files, stored runs), does its work and returns a plain result for the state file;
 * it throws when it cannot, and the pipeline records the failure and moves on.
 *
 * Data: the monitor is fitted and chosen on its development sources and reported on its test
 * sources; the refusal direction is fitted on the train and validation parts of its two sets;
 * the SCAV concept on its two sets. The evaluated prompts (three groups) must share no prompt
 * with any of those fits: `checkAuditInputs` (pipeline.ts) checks it from the settings before a
 * model is loaded, and each step checks again against the ids stored in the artefact it uses.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import type { PromptSet } from '../data/datasets.js';
import { SteerguardError } from '../formats/errors.js';
import type { Hook } from '../hooks/hooks.js';
import type { Prompt } from '../model/model.js';
import type { EvalPrompt } from '../eval/refusal.js';
import { hookResponder } from '../eval/refusal.js';
import { hasChatTemplate, loadSets, parseTokenIds, toEvalPrompts } from '../eval/prompt-sets.js';
import type { ProgressReporter } from '../eval/reporter.js';
import { type SteeringSpec, scavAttackHooks, vectorHooks } from '../eval/steering.js';
import type { LikelihoodRow, LikelihoodSummary } from '../eval/likelihood.js';
import type { ClampGridRow } from '../eval/sae-steering.js';
import {
  type ReplyRecord,
  type RunContext,
  composeByVerdict,
  ensureRun,
  flagKey,
  primaryJudge,
  rateOf,
  setRates,
} from './runs.js';
import { inputKey } from './state.js';
import {
  type AttackResult,
  type AttackRun,
  type AuditResults,
  type AuditSettings,
  type BaselineResult,
  type CapabilityCondition,
  type CapabilityResult,
  type Condition,
  type DirectionResult,
  EVAL_GROUPS,
  type EvalData,
  type EvalGroup,
  type GroupedRates,
  type LikelihoodCost,
  type PooledFigures,
  type Rate,
  type ReadingResult,
  type ReadingSummary,
  type SaeResult,
  type StepName,
  type SteeringCondition,
  type SteeringResult,
} from './types.js';

export const READING_FILE = 'reading.json';
export const DIRECTION_FILE = 'refusal-direction.gguf';
export const SCAV_CONCEPT_FILE = 'scav-concept.safetensors';

/** Changes whenever the recipe computes something differently: stored results are then redone. */
const RECIPE = 2;

export interface AuditContext extends RunContext {
  readonly settings: AuditSettings;
  readonly dataDir: string | undefined;
  readonly cacheDir: string | false | undefined;
  readonly batchTokens: number;
  readonly signal: AbortSignal;
  /** Input hashes of the steps and of the evaluated prompts' generation settings (see state.ts). */
  readonly keys: { readonly [K in StepName | 'generation']: string };
  /** Loaded data, shared by the steps of one invocation. */
  readonly memo: Map<string, Promise<unknown>>;
}

/** The input hashes of every step for these settings and this model. */
export function stepKeys(s: AuditSettings, fingerprint: string): AuditContext['keys'] {
  const reading = inputKey({
    RECIPE,
    fingerprint,
    dev: [s.devHarmful, s.devBenign],
    test: [s.testHarmful, s.testBenign],
    limit: s.limit,
    targetFpr: s.targetFpr,
    tokenIds: s.tokenIds,
  });
  const direction = inputKey({
    RECIPE,
    fingerprint,
    sets: [s.directionHarmful, s.directionHarmless],
    n: [s.nTrain, s.nVal],
    refusalTokens: s.refusalTokens,
    seed: s.seed,
    split: s.split,
    tokenIds: s.tokenIds,
  });
  const generation = inputKey({
    RECIPE,
    fingerprint,
    sets: s.evalSets,
    nEval: s.nEval,
    maxTokens: s.maxTokens,
    judges: s.judges,
    tokenIds: s.tokenIds,
    redact: s.redact,
  });
  return {
    reading,
    direction,
    generation,
    baseline: inputKey({ generation }),
    steering: inputKey({ generation, reading, direction, c: s.coefficient, benignBelow: s.benignBelow }),
    attack: inputKey({
      generation,
      direction,
      c: s.coefficient,
      scav: [s.scavHarmful, s.scavHarmless, s.p0, s.p1, s.seed, s.split],
    }),
    capability: inputKey({
      RECIPE,
      fingerprint,
      reading,
      direction,
      c: s.coefficient,
      benignBelow: s.benignBelow,
      limit: s.capabilityLimit,
      seed: s.seed,
    }),
    sae: inputKey({
      RECIPE,
      generation,
      reading,
      direction,
      benignBelow: s.benignBelow,
      sae: s.sae === null ? null : path.resolve(s.sae),
      feature: s.saeFeature,
      clamp: s.saeClamp,
      multiples: s.saeClampMultiples,
      refusalTokens: s.saeRefusalTokens,
      batch: s.batch,
    }),
  };
}

function memo<T>(ctx: AuditContext, key: string, f: () => Promise<T>): Promise<T> {
  let p = ctx.memo.get(key) as Promise<T> | undefined;
  if (!p) {
    p = f();
    ctx.memo.set(key, p);
  }
  return p;
}

const artefact = (ctx: { readonly outDir: string }, file: string): string => path.join(ctx.outDir, file);

function needFile(ctx: AuditContext, file: string, step: StepName): string {
  const f = artefact(ctx, file);
  if (!existsSync(f)) throw new SteerguardError(`${f} is missing: the ${step} step must run first`);
  return f;
}

const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);

/**
 * A bar that follows a progress callback, restarted with the next label when a stage changes;
 * `unitOf` names what a stage counts.
 */
function stagedProgress(
  ctx: AuditContext,
  unitOf: (stage: string) => string,
): { update: (stage: string, done: number, total: number) => void; finish: () => void } {
  let bar: ProgressReporter | undefined;
  let current = '';
  return {
    update: (stage, done, total) => {
      if (!bar || stage !== current) {
        bar?.finish();
        current = stage;
        bar = ctx.reporter.progress(stage, unitOf(stage));
      }
      bar.update(done, total);
    },
    finish: () => bar?.finish(),
  };
}

/** The model input of a set prompt: its text, or its token ids with `--token-ids`. */
export function setPromptInput(
  tokenIds: boolean,
  p: { readonly id: string; readonly text: string },
  set: { readonly name: string },
): Prompt {
  return tokenIds ? { tokens: parseTokenIds(p.text, `${set.name} prompt ${p.id.slice(0, 12)}`) } : p.text;
}

// ---------------------------------------------------------------------------------------------
// The evaluated prompts

/** Prompts per set of a group: `total` shared out evenly, the first sets taking the remainder. */
export function perSetLimits(total: number, sets: number): number[] {
  return Array.from({ length: sets }, (_, i) => Math.floor(total / sets) + (i < total % sets ? 1 : 0));
}

export interface EvalPrompts {
  readonly prompts: EvalPrompt[];
  /** Set name -> group. */
  readonly groupOf: ReadonlyMap<string, EvalGroup>;
  readonly data: EvalData;
}

/** The three groups' prompts, as generation takes them (no model needed for the ids). */
export function loadEvalSets(
  s: AuditSettings,
  dataDir: string | undefined,
): { group: EvalGroup; sets: ReturnType<typeof loadSets> }[] {
  return EVAL_GROUPS.map((group) => {
    const specs = s.evalSets[group];
    if (specs.length === 0) throw new SteerguardError(`the ${group} evaluation group names no set`);
    const limits = perSetLimits(s.nEval, specs.length);
    const sets = specs.map((spec, i) => {
      if (limits[i] === 0)
        throw new SteerguardError(
          `--n-eval ${s.nEval} is fewer than the ${specs.length} sets of the ${group} group: ${spec} would get no prompt`,
        );
      return loadSets([spec], {
        dataDir,
        part: 'all',
        split: '0.7,0.1,0.2',
        seed: s.seed,
        limit: limits[i],
      })[0];
    });
    return { group, sets };
  });
}

function evalPrompts(ctx: AuditContext): Promise<EvalPrompts> {
  return memo(ctx, 'eval', async () => {
    const s = ctx.settings;
    const groupOf = new Map<string, EvalGroup>();
    const prompts: EvalPrompt[] = [];
    const data: Partial<Record<EvalGroup, EvalData[EvalGroup]>> = {};
    for (const { group, sets } of loadEvalSets(s, ctx.dataDir)) {
      for (const set of sets) groupOf.set(set.name, group);
      const ps = toEvalPrompts(ctx.model, sets, { tokenIds: s.tokenIds, chat: hasChatTemplate(ctx.model) });
      prompts.push(...ps);
      data[group] = { sets: sets.map((x) => ({ set: x.name, used: x.prompts.length })), n: ps.length };
    }
    return { prompts, groupOf, data: data as EvalData };
  });
}

/** Rates of a run's records by group and by set. */
function groupedRates(ctx: AuditContext, ev: EvalPrompts, rows: readonly ReplyRecord[]): GroupedRates {
  const out: Partial<Record<EvalGroup, GroupedRates[EvalGroup]>> = {};
  for (const g of EVAL_GROUPS) {
    const mine = rows.filter((r) => ev.groupOf.get(r.set) === g);
    const [group] = setRates(
      mine.map((r) => ({ ...r, set: g })),
      ctx.judgeNames,
    );
    out[g] = { group: group ?? emptyRates(g), sets: setRates(mine, ctx.judgeNames) };
  }
  return out as GroupedRates;
}

function emptyRates(set: string) {
  return { set, n: 0, judges: {}, flawed: rateOf([]), flagged: null };
}

/** The leakage guard: throws when an evaluated prompt was used to fit `what`. */
async function guard(
  prompts: readonly EvalPrompt[],
  fittedIds: readonly string[],
  what: string,
): Promise<void> {
  const { checkLeakage } = await import('../data/splits.js');
  checkLeakage(fittedIds, prompts, { what });
}

/** A generation run over every evaluated prompt (or only the harmful group's) with `hooks`. */
async function run(
  ctx: AuditContext,
  name: string,
  label: string,
  keyExtra: object,
  hooks: readonly Hook[],
  only?: EvalGroup,
): Promise<ReplyRecord[]> {
  const ev = await evalPrompts(ctx);
  const prompts = only ? ev.prompts.filter((p) => ev.groupOf.get(p.set) === only) : ev.prompts;
  return ensureRun(ctx, {
    name,
    label,
    key: inputKey({ generation: ctx.keys.generation, only, ...keyExtra }),
    prompts,
    responder: hookResponder(ctx.model, [...hooks]),
  });
}

const baselineRun = (ctx: AuditContext): Promise<ReplyRecord[]> => run(ctx, 'none', 'no steering', {}, []);

/** The refusal direction's hooks: added with `coeff`, or ablated. */
async function directionHooks(ctx: AuditContext, steer: 'add' | 'ablate', coeff: number) {
  const vector = needFile(ctx, DIRECTION_FILE, 'direction');
  return vectorHooks(ctx.model, { steer, vector, coeff } satisfies Pick<
    SteeringSpec,
    'steer' | 'vector' | 'coeff'
  >);
}

async function directionRun(ctx: AuditContext, steer: 'add' | 'ablate', coeff: number, name: string) {
  const v = await directionHooks(ctx, steer, coeff);
  await guard((await evalPrompts(ctx)).prompts, v.fittedIds, `the refusal direction (${DIRECTION_FILE})`);
  const label = steer === 'ablate' ? 'direction ablated' : `direction added × ${coeff}`;
  return {
    rows: await run(ctx, name, label, { direction: ctx.keys.direction, steer, coeff }, v.hooks),
    hooks: v.hooks,
  };
}

// ---------------------------------------------------------------------------------------------
// a. reading: the harmful-request monitor

function pooled(
  p: { auroc: number; aurocCi: readonly [number, number]; tpr: number; fpr: number },
  n: { harmful: number; benign: number },
): PooledFigures {
  const rate = (x: number, total: number): Rate => {
    const k = Math.round(x * total);
    return rateOf(Array.from({ length: total }, (_, i) => i < k));
  };
  return {
    auroc: finite(p.auroc),
    aurocCi: p.aurocCi,
    tpr: rate(p.tpr, n.harmful),
    fpr: rate(p.fpr, n.benign),
  };
}

export async function readingStep(ctx: AuditContext): Promise<ReadingResult> {
  const s = ctx.settings;
  const { loadPromptSet } = await import('../data/datasets.js');
  const load = (names: readonly string[]): PromptSet[] =>
    names.map((n) => loadPromptSet(n, { dataDir: ctx.dataDir, limit: s.limit }));
  const dev = { harmful: load(s.devHarmful), benign: load(s.devBenign) };
  const test = { harmful: load(s.testHarmful), benign: load(s.testBenign) };
  const { measureGeneralization } = await import('../concepts/generalization.js');
  const { defaultTemplate } = await import('../concepts/activations.js');
  const template = s.tokenIds ? 'raw' : defaultTemplate(ctx.model);
  const bars = stagedProgress(ctx, (stage) => (stage.endsWith('activations') ? 'prompts' : 'sources'));
  const report = await measureGeneralization(ctx.model, {
    dev,
    test,
    template,
    targetFpr: s.targetFpr,
    cacheDir: ctx.cacheDir,
    batchTokens: ctx.batchTokens,
    signal: ctx.signal,
    asPrompt: (p, set) => setPromptInput(s.tokenIds, p, set),
    onProgress: (stage, done, total) => bars.update(`reading: ${stage}`, done, total),
  });
  bars.finish();
  const { saveReading } = await import('../concepts/reading-file.js');
  saveReading(artefact(ctx, READING_FILE), {
    reading: report.chosen.reading,
    model: { name: ctx.model.identity.name, fingerprint: ctx.model.identity.fingerprint },
    template,
    fittedIds: [...dev.harmful, ...dev.benign].flatMap((set) => set.prompts.map((p) => p.id)),
  });
  const nTest = {
    harmful: report.testSources.filter((x) => x.label === 1).reduce((t, x) => t + x.n, 0),
    benign: report.testSources.filter((x) => x.label === 0).reduce((t, x) => t + x.n, 0),
  };
  const summary = (r: (typeof report.byMethod)[number]): ReadingSummary => ({
    method: r.dev.method,
    layers: r.dev.layers,
    devWorstAuroc: finite(r.dev.worstAuroc),
    testWorstAuroc: finite(r.testWorstAuroc),
    testPooled: pooled(r.testPooled, nTest),
  });
  const c = report.chosen;
  const result: ReadingResult = {
    file: READING_FILE,
    template,
    method: c.dev.method,
    layers: c.dev.layers,
    threshold: c.dev.threshold,
    targetFpr: s.targetFpr,
    sources: { dev: report.validation.sources, test: report.testSources },
    dev: c.dev.perSource,
    test: c.test,
    chosen: summary(c),
    byMethod: report.byMethod.map(summary),
    inSplit: report.validation.inSplit,
    layerCurves: report.validation.layerCurves.map((x) => ({
      method: x.method,
      layer: x.layers[0],
      worstAuroc: finite(x.worstAuroc),
    })),
    warnings: report.validation.warnings,
    forwardSeconds: report.forwardSeconds,
  };
  for (const w of result.warnings) ctx.reporter.warn(`reading: ${w}`);
  ctx.reporter.info(
    `reading: ${c.dev.method} on blocks ${c.dev.layers.join(', ')}; test sources pooled AUROC ` +
      `${c.testPooled.auroc.toFixed(3)}, worst source ${c.testWorstAuroc.toFixed(3)}, TPR ` +
      `${(100 * c.testPooled.tpr).toFixed(1)}% at FPR ${(100 * c.testPooled.fpr).toFixed(1)}%`,
  );
  return result;
}

// ---------------------------------------------------------------------------------------------
// b. direction: the refusal direction

/** The direction's train and validation prompts: the seeded split's parts of its two sets. */
export function directionSplit(s: AuditSettings, dataDir: string | undefined) {
  const parts = (spec: string) => {
    const [train] = loadSets([spec], { dataDir, part: 'train', split: splitText(s), seed: s.seed });
    const [val] = loadSets([spec], { dataDir, part: 'val', split: splitText(s), seed: s.seed });
    const t = train.prompts.slice(0, s.nTrain);
    const v = val.prompts.slice(0, s.nVal);
    if (t.length < 2 || v.length < 2)
      throw new SteerguardError(
        `${train.name.replace(/@train$/, '')}: too few prompts for the refusal direction's train and validation parts (${t.length}, ${v.length})`,
      );
    return { name: train.name.replace(/@train$/, ''), train: t, val: v };
  };
  return { harmful: parts(s.directionHarmful), harmless: parts(s.directionHarmless) };
}

const splitText = (s: AuditSettings): string => `${s.split.train},${s.split.val},${s.split.test}`;

export async function directionStep(ctx: AuditContext): Promise<DirectionResult> {
  const s = ctx.settings;
  const sets = directionSplit(s, ctx.dataDir);
  const chat = !s.tokenIds && hasChatTemplate(ctx.model);
  const input = (p: { readonly id: string; readonly text: string }, name: string): Prompt => {
    const x = setPromptInput(s.tokenIds, p, { name });
    return chat && typeof x === 'string' ? { messages: [{ role: 'user', content: x }] } : x;
  };
  const side = (x: typeof sets.harmful) => ({
    train: x.train.map((p) => input(p, x.name)),
    val: x.val.map((p) => input(p, x.name)),
  });
  const { computeRefusalDirection, refusalDirectionToControlVector } =
    await import('../steering/refusal-direction.js');
  const bars = stagedProgress(ctx, (stage) => (stage.endsWith('activations') ? 'sets' : 'candidates'));
  const r = computeRefusalDirection(ctx.model, {
    harmful: side(sets.harmful),
    harmless: side(sets.harmless),
    positions: chat ? undefined : [-1],
    refusalTokens: s.refusalTokens ?? undefined,
    maxBatchTokens: ctx.batchTokens,
    onProgress: (stage, done, total) => bars.update(`direction: ${stage}`, done, total),
  });
  bars.finish();
  const cv = refusalDirectionToControlVector(r, {
    arch: ctx.model.config.arch,
    fingerprint: ctx.model.identity.fingerprint,
  });
  const { ControlVector } = await import('../steering/control-vector.js');
  const meta = new Map(cv.metadata);
  meta.set(
    'steerguard.fitted_ids',
    [sets.harmful, sets.harmless].flatMap((x) => [...x.train, ...x.val].map((p) => p.id)),
  );
  new ControlVector(cv.directions, { modelHint: cv.modelHint, metadata: meta }).save(
    artefact(ctx, DIRECTION_FILE),
  );
  const chosen = r.candidates.find((c) => c.layer === r.layer && c.position === r.position)!;
  const byLayer = [...new Set(r.candidates.map((c) => c.layer))].map((layer) => {
    const scores = r.candidates
      .filter((c) => c.layer === layer && c.refusalScore !== null)
      .map((c) => c.refusalScore!);
    return { layer, ablatedHarmful: scores.length > 0 ? Math.min(...scores) : null };
  });
  if (r.selectedBy === 'fallback')
    ctx.reporter.warn('direction: no candidate passed every filter; the best remaining one was kept');
  ctx.reporter.info(
    `direction: block ${r.layer} input, position ${r.position}, |r| = ${chosen.norm.toFixed(2)} (${r.selectedBy})`,
  );
  return {
    file: DIRECTION_FILE,
    sets: { harmful: sets.harmful.name, harmless: sets.harmless.name },
    layer: r.layer,
    position: r.position,
    norm: chosen.norm,
    selectedBy: r.selectedBy,
    baseline: { harmful: r.baseline.harmfulRefusalScore, harmless: r.baseline.harmlessRefusalScore },
    ablatedHarmful: chosen.refusalScore,
    addedHarmless: chosen.steeringScore,
    kl: chosen.kl,
    counts: r.counts,
    candidates: r.candidates.length,
    examined: r.examined,
    byLayer,
  };
}

// ---------------------------------------------------------------------------------------------
// c. baseline

export async function baselineStep(ctx: AuditContext): Promise<BaselineResult> {
  const ev = await evalPrompts(ctx);
  const rows = await baselineRun(ctx);
  return { runs: ['none'], data: ev.data, rates: groupedRates(ctx, ev, rows) };
}

// ---------------------------------------------------------------------------------------------
// d. steering: always on, and the two-sided gate

/** The likelihood cost of `group` from summarizeLikelihood's per-set figures (rows' set is the group). */
function likelihoodCost(summary: readonly LikelihoodSummary[], group: EvalGroup): LikelihoodCost {
  const x = summary.find((v) => v.set === group);
  if (!x) return { n: 0, meanDelta: null, ci: [null, null], steered: 0 };
  return {
    n: x.n,
    meanDelta: finite(x.meanDelta),
    ci: [finite(x.ci[0]), finite(x.ci[1])],
    steered: x.steered,
  };
}

export async function steeringStep(ctx: AuditContext): Promise<SteeringResult> {
  const s = ctx.settings;
  const ev = await evalPrompts(ctx);
  const { loadReading, readingMonitor } = await import('../concepts/reading-file.js');
  const reading = loadReading(needFile(ctx, READING_FILE, 'reading'), ctx.model);
  await guard(ev.prompts, reading.fittedIds, `the monitor (${READING_FILE})`);
  if (!(s.benignBelow <= reading.reading.threshold))
    throw new SteerguardError(
      `--benign-below ${s.benignBelow} is above the monitor's threshold ${reading.reading.threshold.toFixed(3)} ` +
        `(${READING_FILE}): a prompt cannot be both flagged and clearly benign; pass a bound at most the threshold`,
    );
  const none = await baselineRun(ctx);
  const add = await directionRun(ctx, 'add', s.coefficient, 'add');
  const ablate = await directionRun(ctx, 'ablate', 0, 'ablate');

  const { monitorPrompts } = await import('../steering/conditional.js');
  const monitor = readingMonitor(reading.reading, { benignBelow: s.benignBelow });
  ctx.reporter.info(
    `steering: gate verdicts (flag above ${monitor.threshold.toFixed(3)}, benign below ${s.benignBelow})`,
  );
  const flags = monitorPrompts(
    ctx.model,
    ev.prompts.map((p) => p.prompt),
    monitor,
    { maxBatchTokens: ctx.batchTokens },
  );
  const verdicts = new Map(ev.prompts.map((p, i) => [flagKey(p), flags[i]]));
  const benignFlags = ev.prompts
    .map((p, i) => ({ p, f: flags[i] }))
    .filter(({ p }) => ev.groupOf.get(p.set) !== 'harmful');
  const flaggedBenign = benignFlags.filter(({ f }) => f.flagged).length;
  if (flaggedBenign > benignFlags.length / 2)
    ctx.reporter.warn(
      `steering: the monitor flags ${flaggedBenign} of ${benignFlags.length} benign prompts: its threshold does not ` +
        'transfer to these sources, and the gate steers them toward refusal',
    );
  const gated = composeByVerdict(verdicts, { flagged: add.rows, benign: ablate.rows, uncertain: none });

  // The likelihood cost on the groups where refusal is not wanted; the gate's hooks per prompt
  // are those of its verdict, so its rows are picked from the add and ablate rows.
  const cheap = ev.prompts.map((p, i) => ({ p, i })).filter(({ p }) => ev.groupOf.get(p.set) !== 'harmful');
  const items = cheap.map(({ p }) => ({ set: ev.groupOf.get(p.set)!, prompt: p.prompt }));
  const bar = ctx.reporter.progress('steering: likelihood cost', 'prompts');
  const { measureLikelihoodShift } = await import('../eval/likelihood.js');
  const [addRows, ablateRows] = await measureLikelihoodShift(
    ctx.model,
    items,
    [items.map(() => add.hooks), items.map(() => ablate.hooks)],
    { maxNewTokens: s.maxTokens, onProgress: (done, total) => bar.update(done, total) },
  );
  bar.finish();
  const gatedRows = addRows.map((r, k): LikelihoodRow => {
    const v = flags[cheap[r.index].i].verdict;
    if (v === 'flagged') return r;
    if (v === 'benign') return ablateRows[k];
    return { ...r, steered: r.base, delta: 0, steeredPrompt: false };
  });
  const { summarizeLikelihood } = await import('../eval/likelihood.js');
  const costs = (rows: readonly LikelihoodRow[]) => {
    const summary = summarizeLikelihood(rows);
    return {
      borderline: likelihoodCost(summary, 'borderline'),
      harmless: likelihoodCost(summary, 'harmless'),
    };
  };
  const condition = (
    c: Condition,
    label: string,
    runs: string[],
    rows: readonly ReplyRecord[],
    lik: readonly LikelihoodRow[] | null,
  ): SteeringCondition => ({
    condition: c,
    label,
    runs,
    rates: groupedRates(ctx, ev, rows),
    likelihood: lik ? costs(lik) : null,
  });
  const verdictRates = (g: EvalGroup) => {
    const mine = ev.prompts
      .map((p, i) => ({ p, f: flags[i] }))
      .filter(({ p }) => ev.groupOf.get(p.set) === g);
    const share = (v: string): Rate => rateOf(mine.map(({ f }) => f.verdict === v));
    return { flagged: share('flagged'), benign: share('benign'), uncertain: share('uncertain') };
  };
  const direction = ctx.state.steps.direction?.result;
  if (!direction) throw new SteerguardError('the direction step has no result: it must run first');
  return {
    direction: { layer: direction.layer, norm: direction.norm },
    coefficient: s.coefficient,
    gate: {
      method: reading.reading.method,
      layers: reading.reading.layers,
      threshold: monitor.threshold,
      benignBelow: s.benignBelow,
    },
    verdicts: {
      harmful: verdictRates('harmful'),
      borderline: verdictRates('borderline'),
      harmless: verdictRates('harmless'),
    },
    conditions: [
      condition('none', 'no steering', ['none'], none, null),
      condition('add', `direction added × ${s.coefficient}, always`, ['add'], add.rows, addRows),
      condition('ablate', 'direction ablated, always', ['ablate'], ablate.rows, ablateRows),
      condition('gated', 'two-sided gate', ['add', 'ablate', 'none'], gated, gatedRows),
    ],
    data: ev.data,
    likelihoodTokens: addRows.reduce((t, r) => t + r.tokens, 0),
  };
}

// ---------------------------------------------------------------------------------------------
// e. attack: SCAV against the refusal direction ablated and subtracted

export async function attackStep(ctx: AuditContext): Promise<AttackResult> {
  const s = ctx.settings;
  const ev = await evalPrompts(ctx);
  const harmful = ev.prompts.filter((p) => ev.groupOf.get(p.set) === 'harmful');
  const { loadExamples } = await import('../eval/prompt-sets.js');
  const { trainConcept } = await import('../concepts/concept.js');
  const { defaultTemplate } = await import('../concepts/activations.js');
  const { scavLayers } = await import('../concepts/scav.js');
  const pos = loadExamples(s.scavHarmful, { dataDir: ctx.dataDir, tokenIds: s.tokenIds });
  const neg = loadExamples(s.scavHarmless, { dataDir: ctx.dataDir, tokenIds: s.tokenIds });
  const bar = ctx.reporter.progress('attack: SCAV concept activations', 'prompts');
  const { concept } = await trainConcept({
    model: ctx.model,
    positive: pos.examples,
    negative: neg.examples,
    sets: { positive: pos.name, negative: neg.name },
    template: s.tokenIds ? 'raw' : defaultTemplate(ctx.model),
    split: s.split,
    seed: s.seed,
    cacheDir: ctx.cacheDir,
    batchTokens: ctx.batchTokens,
    onProgress: (done, total) => bar.update(done, total),
    signal: ctx.signal,
  });
  bar.finish();
  const conceptFile = artefact(ctx, SCAV_CONCEPT_FILE);
  concept.save(conceptFile);
  await guard(harmful, concept.fittedIds, `the SCAV concept (${SCAV_CONCEPT_FILE})`);
  const attack = await scavAttackHooks(ctx.model, { concept: conceptFile, p0: s.p0, p1: s.p1 });
  const scav = await run(
    ctx,
    'scav',
    `SCAV attack (p0 ${s.p0})`,
    { scav: [s.scavHarmful, s.scavHarmless, s.p0, s.p1, s.seed, s.split] },
    attack.hooks,
    'harmful',
  );
  const subtract = await directionHooks(ctx, 'add', -s.coefficient);
  await guard(harmful, subtract.fittedIds, `the refusal direction (${DIRECTION_FILE})`);
  const subtracted = await run(
    ctx,
    'subtract',
    `direction subtracted × ${s.coefficient}`,
    { direction: ctx.keys.direction, steer: 'add', coeff: -s.coefficient },
    subtract.hooks,
    'harmful',
  );
  const none = await baselineRun(ctx);
  const ablated = (await directionRun(ctx, 'ablate', 0, 'ablate')).rows;
  const judge = primaryJudge(ctx.judgeNames);
  const onlyHarmful = (rows: readonly ReplyRecord[]) =>
    rows.filter((r) => ev.groupOf.get(r.set) === 'harmful');
  const row = (method: AttackRun['method'], name: string, all: readonly ReplyRecord[]): AttackRun => {
    const rows = onlyHarmful(all);
    return {
      method,
      runs: [name],
      harmful: groupedRates(ctx, ev, rows).harmful.group,
      cleanSuccess: rateOf(
        rows.map((r) => {
          const j = judge === null ? undefined : r.judged[judge];
          if (!j || j.kind !== 'refusal') return null;
          return !j.refused && !r.flawed;
        }),
      ),
    };
  };
  return {
    p0: s.p0,
    p1: s.p1,
    layers: scavLayers(concept, { p1: s.p1 }),
    concept: { harmful: pos.name, harmless: neg.name, file: SCAV_CONCEPT_FILE },
    runs: [
      row('none', 'none', none),
      row('scav', 'scav', scav),
      row('ablate', 'ablate', ablated),
      row('subtract', 'subtract', subtracted),
    ],
    data: ev.data.harmful,
  };
}

// ---------------------------------------------------------------------------------------------
// g. sae: clamping one SAE latent, always on and gated, beside the refusal direction

/**
 * O'Brien et al.'s recipe on the audit's data: the latent that fires most on the refusal tokens of
 * the model's refusals to the direction's train prompts (unless `saeFeature` names one), its clamp
 * value chosen on the direction's validation prompts from multiples of its largest activation there
 * (unless `saeClamp` is set), then that clamp on the evaluated prompts, always and behind the
 * steering step's two-sided gate (flagged: clamp; clearly benign: the direction ablated).
 */
export async function saeStep(ctx: AuditContext): Promise<SaeResult> {
  const s = ctx.settings;
  if (s.sae === null) throw new SteerguardError('the sae step needs an SAE folder (--sae DIR)');
  const ev = await evalPrompts(ctx);
  const { loadSae } = await import('../sae/saelens.js');
  const { checkSaeFitsModel } = await import('../sae/features.js');
  const { saeClampHook } = await import('../sae/clamp.js');
  const { searchSaeFeatures, clampGrid, chooseClamp } = await import('../eval/sae-steering.js');
  const { buildJudges } = await import('../eval/evaluation.js');
  const sae = loadSae(s.sae);
  checkSaeFitsModel(ctx.model, sae);
  const judgeName = primaryJudge(ctx.judgeNames);
  if (judgeName === null)
    throw new SteerguardError('the sae step needs a refusal judge (keyword-gcg or keyword-jbb)');
  const [judge] = await buildJudges({ judge: [judgeName], judgeTimeout: 60, judgeConcurrency: 1 });
  const { loadReading, readingMonitor } = await import('../concepts/reading-file.js');
  const reading = loadReading(needFile(ctx, READING_FILE, 'reading'), ctx.model);
  await guard(ev.prompts, reading.fittedIds, `the monitor (${READING_FILE})`);
  const monitor = readingMonitor(reading.reading, { benignBelow: s.benignBelow });

  const sets = directionSplit(s, ctx.dataDir);
  const chat = !s.tokenIds && hasChatTemplate(ctx.model);
  const asEval = (p: { readonly id: string; readonly text: string }, set: string): EvalPrompt => {
    const x = setPromptInput(s.tokenIds, p, { name: set });
    const prompt = chat && typeof x === 'string' ? { messages: [{ role: 'user' as const, content: x }] } : x;
    return { id: p.id, set, text: p.text, prompt };
  };
  const part = (x: typeof sets.harmful, which: 'train' | 'val') => x[which].map((p) => asEval(p, x.name));
  const settings = { judge, maxNewTokens: s.maxTokens, batchSize: s.batch, signal: ctx.signal };
  const bar = ctx.reporter.progress('sae: unsteered replies for the latent search', 'prompts');
  const found = await searchSaeFeatures(ctx.model, sae, {
    ...settings,
    harmful: part(sets.harmful, 'train'),
    benign: part(sets.harmless, 'train'),
    refusalTokens: s.saeRefusalTokens,
    top: 10,
    contexts: 1,
    contextBefore: 0,
    monitor,
    onProgress: (done, total) => bar.update(done, total),
  });
  bar.finish();
  const feature = s.saeFeature ?? found.byRefusalTokens[0].feature;
  ctx.reporter.info(
    `sae: latent ${feature} (${s.saeFeature === null ? 'the top one by refusal tokens' : 'as set'}); ` +
      `${found.harmful.refusals}/${found.harmful.n} harmful and ${found.benign.refusals}/${found.benign.n} harmless replies were refusals`,
  );
  let grid: ClampGridRow[] | null = null;
  let clamp = s.saeClamp;
  if (clamp === null) {
    const top = found.byRefusalTokens.find((f) => f.feature === feature);
    const scale = top?.maxOnRefusal ?? 0;
    if (!(scale > 0))
      throw new SteerguardError(
        `sae: latent ${feature} never fires on a refusal token, so the clamp grid has no scale; set --sae-clamp`,
      );
    const values = s.saeClampMultiples.map((m) => Number((m * scale).toPrecision(3)));
    const gridBar = ctx.reporter.progress('sae: clamp grid on validation prompts', 'prompts');
    grid = await clampGrid(ctx.model, sae, {
      ...settings,
      harmful: part(sets.harmful, 'val'),
      benign: part(sets.harmless, 'val'),
      feature,
      values,
      onProgress: (done, total) => gridBar.update(done, total),
    });
    gridBar.finish();
    clamp = chooseClamp(grid).value;
    ctx.reporter.info(`sae: clamp ${clamp} chosen from ${values.join(', ')}`);
  }
  const hook = saeClampHook(sae, ctx.model.backend, { feature, value: clamp });
  const label = `latent ${feature} clamped to ${clamp}`;
  const clamped = await run(
    ctx,
    'sae-clamp',
    `${label}, always`,
    { sae: path.resolve(s.sae), feature, clamp },
    [hook],
  );
  const none = await baselineRun(ctx);
  const ablate = await directionRun(ctx, 'ablate', 0, 'ablate');
  const { monitorPrompts } = await import('../steering/conditional.js');
  const flags = monitorPrompts(
    ctx.model,
    ev.prompts.map((p) => p.prompt),
    monitor,
    { maxBatchTokens: ctx.batchTokens },
  );
  const verdicts = new Map(ev.prompts.map((p, i) => [flagKey(p), flags[i]]));
  const gated = composeByVerdict(verdicts, { flagged: clamped, benign: ablate.rows, uncertain: none });
  const c = sae.config;
  return {
    sae: {
      dir: s.sae,
      hookName: c.hookName,
      dIn: c.dIn,
      dSae: c.dSae,
      architecture: c.architecture,
      k: c.k ?? null,
    },
    search: {
      sets: { harmful: sets.harmful.name, harmless: sets.harmless.name },
      harmful: found.harmful,
      harmless: found.benign,
      refusalTokens: found.refusalTokens,
      byRefusalTokens: found.byRefusalTokens,
      byMonitor: found.byMonitor ?? [],
    },
    feature,
    featureFrom: s.saeFeature === null ? 'search' : 'setting',
    grid,
    clamp,
    clampFrom: s.saeClamp === null ? 'grid' : 'setting',
    conditions: [
      {
        condition: 'clamp',
        label: `${label}, always`,
        runs: ['sae-clamp'],
        rates: groupedRates(ctx, ev, clamped),
      },
      {
        condition: 'gated-clamp',
        label: `two-sided gate: ${label} where flagged, direction ablated where clearly benign`,
        runs: ['sae-clamp', 'ablate', 'none'],
        rates: groupedRates(ctx, ev, gated),
      },
    ],
    data: ev.data,
  };
}

// ---------------------------------------------------------------------------------------------
// f. capability: what the gate costs on MMLU, GSM8K and TruthfulQA

/** Per-item rows of the capability step's condition `c`. */
export const capabilityRowsFile = (c: CapabilityCondition['condition']): string => `capability-${c}.json`;

/**
 * The capability suite (src/eval/capability-suite.ts, as `eval capability` runs it: 0-shot, raw
 * text, the seeded subsets of `capabilityLimit` items) with no steering and with the two-sided
 * gate of the steering step, which reads each question and adds, ablates or leaves the direction.
 */
export async function capabilityStep(ctx: AuditContext): Promise<CapabilityResult> {
  const s = ctx.settings;
  const { resolveDataDir } = await import('../data/datasets.js');
  const suite = await import('../eval/capability-suite.js');
  const { buildSteeringHooks } = await import('../eval/steering.js');
  const { writeFileAtomic } = await import('../formats/files.js');
  const tasks = [...suite.CAPABILITY_TASKS];
  const data = suite.loadCapabilityData(resolveDataDir(ctx.dataDir), tasks, {
    limit: s.capabilityLimit,
    seed: s.seed,
    shots: 0,
  });
  const gate = await buildSteeringHooks(ctx.model, {
    steer: 'conditional',
    reading: needFile(ctx, READING_FILE, 'reading'),
    vector: needFile(ctx, DIRECTION_FILE, 'direction'),
    coeff: s.coefficient,
    benignBelow: s.benignBelow,
    benignSteer: 'ablate',
    attack: 'none',
    p0: s.p0,
    p1: s.p1,
  });
  const conditions: CapabilityCondition[] = [];
  const scores: (readonly (readonly number[])[])[] = [];
  for (const [condition, label, steering] of [
    ['none', 'no steering', undefined],
    ['gated', 'two-sided gate', gate],
  ] as const) {
    const t0 = performance.now();
    ctx.reporter.info(`capability: ${label}`);
    const r = await suite.runCapability(ctx.model, data, {
      chat: false,
      steering,
      reporter: ctx.reporter,
      shots: 0,
      maxNewTokens: suite.GSM8K_MAX_TOKENS,
      signal: ctx.signal,
    });
    const file = capabilityRowsFile(condition);
    writeFileAtomic(
      artefact(ctx, file),
      `${JSON.stringify({ steering: label, chat: false, seed: s.seed, figures: r.figures, ...r.extra, rows: r.rows })}\n`,
    );
    conditions.push({ condition, label, figures: r.figures, file, seconds: (performance.now() - t0) / 1000 });
    scores.push(r.itemScores);
  }
  const [none] = conditions;
  return {
    tasks,
    limit: s.capabilityLimit,
    seed: s.seed,
    maxTokens: suite.GSM8K_MAX_TOKENS,
    conditions,
    costs: none.figures.map((f, i) => ({
      task: f.task,
      metric: f.metric,
      ...suite.pairedDifference(scores[0][i], scores[1][i]),
    })),
  };
}

export const STEPS: { readonly [K in StepName]: (ctx: AuditContext) => Promise<AuditResults[K]> } = {
  reading: readingStep,
  direction: directionStep,
  baseline: baselineStep,
  steering: steeringStep,
  attack: attackStep,
  capability: capabilityStep,
  sae: saeStep,
};
