/**
 * The five audit steps. Each reads what it needs (prompt sets, the concept file, stored runs),
 * does its work and returns a plain result for the state file; it throws when it cannot, and
 * the pipeline records the failure and moves on.
 *
 * Data and the leakage guard: the concept is fitted on the train/validation parts of the seeded
 * split of the first `limit` prompts of each side; every evaluation uses the test part of the
 * same split (of the whole harmful set, so `nEval` prompts are there even with a small limit),
 * and the monitor threshold is calibrated on the train/validation parts of the borderline-safe
 * set while over-refusal is measured on its test part. Each step that holds the concept checks
 * its prompts against the concept's fitted and calibration ids before generating anything.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import type { Concept, ConceptExample } from '../concepts/concept.js';
import { SteerguardError } from '../formats/errors.js';
import { blockHook } from '../hooks/hooks.js';
import { addVector } from '../hooks/interventions.js';
import type { EvalPrompt, Responder } from '../eval/refusal.js';
import { hookResponder } from '../eval/refusal.js';
import {
  type LoadedExamples,
  checkTokenIds,
  hasChatTemplate,
  loadExamples,
  loadSets,
  toEvalPrompts,
} from '../eval/prompt-sets.js';
import type { ProgressReporter, Reporter } from '../eval/reporter.js';
import { scavAttackHooks } from '../eval/steering.js';
import {
  type ReplyRecord,
  type RunContext,
  coefficientRunName,
  composeConditional,
  ensureRun,
  flagKey,
  primaryJudge,
  rateOf,
  ratesFor,
  setRates,
} from './runs.js';
import { inputKey } from './state.js';
import type {
  AttackResult,
  AuditResults,
  AuditSettings,
  BaselineResult,
  ConceptResult,
  EvalSetsInfo,
  LayerResult,
  MonitorResult,
  Rate,
  StepName,
  SteeringPoint,
  SteeringResult,
} from './types.js';

export const CONCEPT_FILE = 'concept.safetensors';
export const VECTOR_FILE = 'mean-diff.gguf';

export interface AuditContext extends RunContext {
  readonly settings: AuditSettings;
  readonly dataDir: string | undefined;
  readonly cacheDir: string | false | undefined;
  readonly batchTokens: number;
  readonly signal: AbortSignal;
  /** Input hashes of the steps and of the generation settings per evaluated set (see state.ts). */
  readonly keys: { readonly [K in StepName | Which]: string };
  /** Loaded data, shared by the steps of one invocation. */
  readonly memo: Map<string, Promise<unknown>>;
}

/** The input hashes of every step for these settings and this model. */
export function stepKeys(s: AuditSettings, fingerprint: string): AuditContext['keys'] {
  const concept = inputKey({
    fingerprint,
    harmful: s.harmful,
    harmless: s.harmless,
    limit: s.limit,
    seed: s.seed,
    split: s.split,
    tokenIds: s.tokenIds,
  });
  const monitor = inputKey({
    concept,
    safe: s.borderlineSafe,
    unsafe: s.borderlineUnsafe,
    targetFpr: s.targetFpr,
    p1: s.p1,
  });
  const generation = (set: string): string =>
    inputKey({
      fingerprint,
      set,
      nEval: s.nEval,
      seed: s.seed,
      split: s.split,
      maxTokens: s.maxTokens,
      judges: s.judges,
      tokenIds: s.tokenIds,
      redact: s.redact,
    });
  const harmful = generation(s.harmful);
  const safe = generation(s.borderlineSafe);
  return {
    concept,
    monitor,
    harmful,
    safe,
    baseline: inputKey({ harmful, safe }),
    steering: inputKey({ harmful, safe, monitor, coefficients: s.coefficients, scavDefence: s.scavDefence }),
    attack: inputKey({ harmful, concept, p0: s.p0, p1: s.p1 }),
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

function examples(ctx: AuditContext, spec: string, limit?: number): Promise<LoadedExamples> {
  return memo(ctx, `examples\u0000${spec}\u0000${limit ?? ''}`, async () => {
    const set = loadExamples(spec, { dataDir: ctx.dataDir, limit, tokenIds: ctx.settings.tokenIds });
    checkTokenIds(ctx.model, [set]);
    return set;
  });
}

export function conceptPath(ctx: { readonly outDir: string }): string {
  return path.join(ctx.outDir, CONCEPT_FILE);
}

async function loadConcept(ctx: AuditContext): Promise<Concept> {
  const file = conceptPath(ctx);
  if (!existsSync(file)) throw new SteerguardError(`${file} is missing: the concept step must run first`);
  const { Concept } = await import('../concepts/concept.js');
  return Concept.load(file, ctx.model);
}

/** The two evaluated sets: held-out harmful prompts, held-out borderline-safe prompts. */
export type Which = 'harmful' | 'safe';

/** The held-out prompts of one evaluated set, with how many there were. */
interface EvalSet {
  readonly prompts: EvalPrompt[];
  readonly info: EvalSetsInfo['harmful'];
}

function evalSet(ctx: AuditContext, which: Which): Promise<EvalSet> {
  return memo(ctx, `eval-set\u0000${which}`, async () => {
    const s = ctx.settings;
    const o = {
      dataDir: ctx.dataDir,
      part: 'test' as const,
      split: `${s.split.train},${s.split.val},${s.split.test}`,
      seed: s.seed,
      tokenIds: s.tokenIds,
      chat: hasChatTemplate(ctx.model),
    };
    const [set] = loadSets([which === 'harmful' ? s.harmful : s.borderlineSafe], o);
    const prompts = toEvalPrompts(ctx.model, [set], o).slice(0, s.nEval);
    return { prompts, info: { set: set.name, available: set.prompts.length, used: prompts.length } };
  });
}

/**
 * The leakage guard: throws when an evaluated prompt was used to fit or calibrate the concept.
 * Without `concept`, the audit's concept file counts only when it was made with these settings.
 */
async function guard(ctx: AuditContext, prompts: readonly EvalPrompt[], concept?: Concept): Promise<void> {
  const rec = ctx.state.steps.concept;
  const current = rec?.status === 'done' && rec.key === ctx.keys.concept && existsSync(conceptPath(ctx));
  const c = concept ?? (current ? await loadConcept(ctx) : undefined);
  if (!c) return;
  const { checkLeakage } = await import('../data/splits.js');
  checkLeakage(c.fittedIds, prompts, { what: `the audit's concept (${CONCEPT_FILE})` });
}

const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);

/**
 * Progress for a call that reports several passes through one callback (calibrate: the benign
 * prompts, then the positives): a new bar, with the next label, whenever the count starts over.
 */
function phasedProgress(
  reporter: Reporter,
  labels: readonly string[],
): { onProgress: (done: number, total: number) => void; finish: () => void } {
  let bar: ProgressReporter | undefined;
  let phase = -1;
  let last = { done: -1, total: -1 };
  return {
    onProgress: (done, total) => {
      if (!bar || total !== last.total || done < last.done) {
        bar?.finish();
        phase++;
        bar = reporter.progress(labels[Math.min(phase, labels.length - 1)], 'prompts');
      }
      last = { done, total };
      bar.update(done, total);
    },
    finish: () => bar?.finish(),
  };
}

// ---------------------------------------------------------------------------------------------
// a. concept

export async function conceptStep(ctx: AuditContext): Promise<ConceptResult> {
  const s = ctx.settings;
  const pos = await examples(ctx, s.harmful, s.limit);
  const neg = await examples(ctx, s.harmless, s.limit);
  const { defaultTemplate } = await import('../concepts/activations.js');
  const { trainConcept } = await import('../concepts/concept.js');
  const template = s.tokenIds ? 'raw' : defaultTemplate(ctx.model);
  const progress = ctx.reporter.progress('concept: activations', 'prompts');
  const { concept, report } = await trainConcept({
    model: ctx.model,
    positive: pos.examples,
    negative: neg.examples,
    sets: { positive: pos.name, negative: neg.name },
    template,
    split: s.split,
    seed: s.seed,
    cacheDir: ctx.cacheDir,
    batchTokens: ctx.batchTokens,
    onProgress: (done, total) => progress.update(done, total),
    signal: ctx.signal,
  });
  progress.finish();
  concept.save(conceptPath(ctx));
  const layers: LayerResult[] = concept.layers.map((p) => ({
    layer: p.layer,
    accuracy: finite(p.metrics.accuracy),
    accuracyCi: p.metrics.accuracyCi,
    auroc: finite(p.metrics.auroc),
    aurocCi: p.metrics.aurocCi,
    valAccuracy: p.metrics.valAccuracy,
    trainAccuracy: finite(p.metrics.trainAccuracy),
    split: p.metrics.split,
    n: p.metrics.n,
  }));
  const best = concept.bestLayer();
  const bl = concept.layer(best).metrics;
  ctx.reporter.info(
    `concept: best layer ${best}, held-out accuracy ${(100 * bl.accuracy).toFixed(1)}%, AUROC ${bl.auroc.toFixed(3)}`,
  );
  return {
    file: CONCEPT_FILE,
    name: concept.name,
    template,
    bestLayer: best,
    layers,
    sets: {
      harmful: { name: pos.name, prompts: pos.examples.length, duplicatesRemoved: pos.duplicatesRemoved },
      harmless: { name: neg.name, prompts: neg.examples.length, duplicatesRemoved: neg.duplicatesRemoved },
    },
    counts: report.counts,
    removedOverlap: report.removedOverlap,
    activations: { computed: report.computed, cached: report.cached, seconds: report.extractSeconds },
    fitSeconds: report.fitSeconds,
    unconverged: concept.layers.filter((p) => !p.fit.converged).map((p) => p.layer),
  };
}

// ---------------------------------------------------------------------------------------------
// b. monitor

export async function monitorStep(ctx: AuditContext): Promise<MonitorResult> {
  const s = ctx.settings;
  const concept = await loadConcept(ctx);
  const { auroc } = await import('../concepts/probe.js');
  const { extractLastToken } = await import('../concepts/activations.js');
  const { Monitor, calibrate, calibrateThreshold } = await import('../concepts/monitor.js');
  const { splitItems } = await import('../data/splits.js');
  const layer = concept.bestLayer();

  // Held-out harmful vs harmless: the concept's own test split.
  const testIds = concept.data.ids.test;
  const pick = (set: LoadedExamples, ids: readonly string[]): ConceptExample[] => {
    const want = new Set(ids);
    return set.examples.filter((e) => want.has(e.id));
  };
  const harmfulSet = await examples(ctx, s.harmful, s.limit);
  const harmlessSet = await examples(ctx, s.harmless, s.limit);
  const pos = pick(harmfulSet, testIds.positive);
  const neg = pick(harmlessSet, testIds.negative);
  if (pos.length === 0 || neg.length === 0)
    throw new SteerguardError(
      `the concept's test split has ${pos.length} harmful and ${neg.length} harmless prompts; the monitor needs both`,
    );
  const scoring = concept.scoringLayers(s.p1);
  const progress = ctx.reporter.progress('monitor: held-out activations', 'prompts');
  const acts = await extractLastToken(
    ctx.model,
    [...pos, ...neg].map((e) => e.prompt),
    {
      template: concept.template,
      layers: [...new Set([layer, ...scoring])],
      cacheDir: ctx.cacheDir,
      batchTokens: ctx.batchTokens,
      onProgress: (done, total) => progress.update(done, total),
      signal: ctx.signal,
    },
  );
  progress.finish();
  const n = pos.length + neg.length;
  const labels = Uint8Array.from({ length: n }, (_, i) => (i < pos.length ? 1 : 0));
  const row = (l: number, i: number): Float32Array => {
    const k = acts.layers.indexOf(l);
    return acts.data[k].subarray(i * acts.d, (i + 1) * acts.d);
  };
  const best = Float64Array.from({ length: n }, (_, i) => concept.logit(layer, row(layer, i)));
  const combined = Float64Array.from(
    { length: n },
    (_, i) => scoring.reduce((t, l) => t + concept.logit(l, row(l, i)), 0) / scoring.length,
  );
  const au = auroc(best, labels);
  const negScores = Array.from(best.subarray(pos.length));
  const at5 = calibrateThreshold(negScores, 0.05);
  const posScores = Array.from(best.subarray(0, pos.length));
  const tprAt5 = posScores.filter((z) => z > at5.value).length / pos.length;

  // Calibration on the borderline-safe train/validation parts; over-refusal uses the test part.
  const safeAll = await examples(ctx, s.borderlineSafe);
  const parts = splitItems(safeAll.examples, { seed: s.seed, fractions: s.split });
  const calibrationSet = [...parts.train, ...parts.val];
  if (calibrationSet.length === 0)
    throw new SteerguardError(`${safeAll.name} has no prompts in the train/validation parts to calibrate on`);
  const unsafe = await examples(ctx, s.borderlineUnsafe);
  const cal = phasedProgress(ctx.reporter, [
    `monitor: ${safeAll.name} calibration activations`,
    `monitor: ${unsafe.name} activations`,
  ]);
  const calibrated = await calibrate(concept, ctx.model, calibrationSet, s.targetFpr, {
    layers: [layer],
    positives: unsafe.examples,
    setName: `${safeAll.name}@train+val`,
    cacheDir: ctx.cacheDir,
    batchTokens: ctx.batchTokens,
    onProgress: cal.onProgress,
  });
  cal.finish();
  calibrated.save(conceptPath(ctx));
  const t = calibrated.threshold!;
  const monitor = new Monitor(calibrated);
  const check = async (items: readonly ConceptExample[]): Promise<boolean[]> =>
    (
      await monitor.check(
        ctx.model,
        items.map((e) => e.prompt),
        { cacheDir: ctx.cacheDir, batchTokens: ctx.batchTokens },
      )
    ).map((r) => r.flagged === true);
  const unsafeFlags = await check(unsafe.examples);
  const heldOutSafe = parts.test.length > 0 ? await check(parts.test) : null;
  const { sigmoid } = await import('../concepts/probe.js');
  const result: MonitorResult = {
    layer,
    heldOut: {
      nPositive: pos.length,
      nNegative: neg.length,
      auroc: finite(au.auroc),
      aurocCi: au.ci,
      combinedAuroc: finite(auroc(combined, labels).auroc),
      combinedLayers: scoring,
      tprAt5Fpr: tprAt5,
      fprAt5Fpr: at5.achievedFpr,
    },
    calibrated: {
      set: t.calibrationSet,
      n: t.n,
      targetFpr: t.targetFpr,
      logit: t.value,
      probability: sigmoid(t.value),
      achievedFpr: t.achievedFpr,
    },
    atThreshold: {
      borderlineUnsafe: { set: unsafe.name, ...rateOf(unsafeFlags) },
      borderlineSafeHeldOut: heldOutSafe ? { set: `${safeAll.name}@test`, ...rateOf(heldOutSafe) } : null,
      harmfulTest: { set: `${harmfulSet.name}@test`, ...rateOf(posScores.map((z) => z > t.value)) },
      harmlessTest: { set: `${harmlessSet.name}@test`, ...rateOf(negScores.map((z) => z > t.value)) },
    },
  };
  const pct = (r: Rate): string => (r.rate === null ? '-' : `${(100 * r.rate).toFixed(1)}%`);
  ctx.reporter.info(
    `monitor: layer ${layer}, held-out AUROC ${au.auroc.toFixed(3)}, TPR ${(100 * tprAt5).toFixed(1)}% at 5% FPR; ` +
      `threshold P > ${result.calibrated.probability.toFixed(3)} flags ${pct(result.atThreshold.borderlineUnsafe)} of ${unsafe.name}`,
  );
  return result;
}

// ---------------------------------------------------------------------------------------------
// c. baseline

function baselineRun(ctx: AuditContext, which: Which, ev: EvalSet): Promise<ReplyRecord[]> {
  return ensureRun(ctx, {
    name: `baseline.${which}`,
    label: `baseline, ${ev.info.set}`,
    key: ctx.keys[which],
    prompts: ev.prompts,
    responder: hookResponder(ctx.model),
  });
}

export async function baselineStep(ctx: AuditContext): Promise<BaselineResult> {
  const harm = await evalSet(ctx, 'harmful');
  const safe = await evalSet(ctx, 'safe');
  await guard(ctx, [...harm.prompts, ...safe.prompts]);
  const rows = [...(await baselineRun(ctx, 'harmful', harm)), ...(await baselineRun(ctx, 'safe', safe))];
  const rates = setRates(rows, ctx.judgeNames);
  return {
    runs: ['baseline.harmful', 'baseline.safe'],
    data: { harmful: harm.info, borderlineSafe: safe.info },
    harmful: ratesFor(rates, harm.info.set),
    borderlineSafe: ratesFor(rates, safe.info.set),
  };
}

// ---------------------------------------------------------------------------------------------
// d. steering

export async function steeringStep(ctx: AuditContext): Promise<SteeringResult> {
  const s = ctx.settings;
  const concept = await loadConcept(ctx);
  if (!concept.threshold || concept.threshold.layers.length !== 1)
    throw new SteerguardError(
      `${CONCEPT_FILE} has no one-layer monitor threshold: the monitor step must run first`,
    );
  const sets = { harmful: await evalSet(ctx, 'harmful'), safe: await evalSet(ctx, 'safe') };
  const prompts = [...sets.harmful.prompts, ...sets.safe.prompts];
  await guard(ctx, prompts, concept);
  const { promptMonitor } = await import('../concepts/monitor.js');
  const { monitorPrompts } = await import('../steering/conditional.js');
  const { scavHooks, scavLayers } = await import('../concepts/scav.js');

  const gate = promptMonitor(concept);
  const gateLayer = concept.threshold.layers[0];
  ctx.reporter.info(`steering: monitor verdicts (layer ${gateLayer}, P > ${gate.threshold.toFixed(3)})`);
  const verdicts = monitorPrompts(
    ctx.model,
    prompts.map((p) => p.prompt),
    gate,
    { maxBatchTokens: ctx.batchTokens },
  );
  const flags = new Map(prompts.map((p, i) => [flagKey(p), verdicts[i]]));
  const flagRate = (list: readonly EvalPrompt[]): Rate =>
    rateOf(list.map((p) => flags.get(flagKey(p))!.flagged));

  const layer = concept.bestLayer();
  const direction = concept.layer(layer).meanDiff;
  const norm = Math.sqrt(direction.reduce((t, x) => t + x * x, 0));
  let vectorFile: string | null = null;
  if (layer >= 1) {
    const { ControlVector } = await import('../steering/control-vector.js');
    ControlVector.single(
      layer,
      direction,
      ctx.model.identity.arch,
      new Map<string, string | string[]>([
        ['steerguard.kind', 'concept-mean-diff'],
        ['steerguard.model_fingerprint', ctx.model.identity.fingerprint],
        ['steerguard.fitted_ids', concept.fittedIds],
      ]),
    ).save(path.join(ctx.outDir, VECTOR_FILE));
    vectorFile = VECTOR_FILE;
  }

  /** Both sets under one intervention: two runs, `${name}.harmful` and `${name}.safe`. */
  const both = async (name: string, what: string, keyExtra: object, responder: Responder) => {
    const rows: ReplyRecord[] = [];
    for (const which of ['harmful', 'safe'] as const)
      rows.push(
        ...(await ensureRun(ctx, {
          name: `${name}.${which}`,
          label: `${what}, ${sets[which].info.set}`,
          key: inputKey({ generation: ctx.keys[which], concept: ctx.keys.concept, ...keyExtra }),
          prompts: sets[which].prompts,
          responder,
        })),
      );
    return { rows, runs: [`${name}.harmful`, `${name}.safe`] };
  };
  const baseline = {
    rows: [
      ...(await baselineRun(ctx, 'harmful', sets.harmful)),
      ...(await baselineRun(ctx, 'safe', sets.safe)),
    ],
    runs: ['baseline.harmful', 'baseline.safe'],
  };
  const points: SteeringPoint[] = [];
  const notes: string[] = [];
  const addPoints = (
    method: SteeringPoint['method'],
    coefficient: number | null,
    run: { rows: readonly ReplyRecord[]; runs: readonly string[] },
  ): void => {
    const always = setRates(run.rows, ctx.judgeNames);
    const gated = setRates(composeConditional(flags, run.rows, baseline.rows), ctx.judgeNames);
    for (const [mode, rates] of [
      ['unconditional', always],
      ['conditional', gated],
    ] as const)
      points.push({
        method,
        coefficient,
        mode,
        runs: mode === 'conditional' && coefficient !== 0 ? [...run.runs, ...baseline.runs] : run.runs,
        harmful: ratesFor(rates, sets.harmful.info.set),
        borderlineSafe: ratesFor(rates, sets.safe.info.set),
      });
  };
  for (const c of s.coefficients) {
    if (c === 0) {
      addPoints('mean-diff', 0, baseline);
      continue;
    }
    const hooks = [addVector(blockHook(layer, 'hook_resid_post'), direction, { scale: c })];
    addPoints(
      'mean-diff',
      c,
      await both(
        coefficientRunName(c),
        `mean-diff × ${c} at layer ${layer}`,
        { c },
        hookResponder(ctx.model, hooks),
      ),
    );
  }
  if (s.scavDefence) {
    const hooks = scavHooks(concept, { target: 'malicious', p1: s.p1 });
    if (hooks.length === 0) {
      ctx.reporter.warn(`steering: no probe beats p1 = ${s.p1}, so there is no SCAV defence to run`);
      notes.push(`SCAV defence skipped: no probe is more accurate than p1 = ${s.p1}`);
    } else {
      addPoints(
        'scav-defence',
        null,
        await both('scav-defence', 'SCAV defence', { p1: s.p1 }, hookResponder(ctx.model, hooks)),
      );
    }
  }
  return {
    layer,
    directionNorm: norm,
    vectorFile,
    gate: { layer: gateLayer, probability: gate.threshold },
    flagged: { harmful: flagRate(sets.harmful.prompts), borderlineSafe: flagRate(sets.safe.prompts) },
    scavLayers: scavLayers(concept, { p1: s.p1 }),
    points,
    data: { harmful: sets.harmful.info, borderlineSafe: sets.safe.info },
    notes,
  };
}

// ---------------------------------------------------------------------------------------------
// e. attack

export async function attackStep(ctx: AuditContext): Promise<AttackResult> {
  const s = ctx.settings;
  const concept = await loadConcept(ctx);
  const { scavLayers } = await import('../concepts/scav.js');
  const harm = await evalSet(ctx, 'harmful');
  await guard(ctx, harm.prompts, concept);
  const attack = await scavAttackHooks(ctx.model, { concept: conceptPath(ctx), p0: s.p0, p1: s.p1 });
  const baseline = await baselineRun(ctx, 'harmful', harm);
  const scav = await ensureRun(ctx, {
    name: 'scav-attack.harmful',
    label: `SCAV attack (p0 ${s.p0}), ${harm.info.set}`,
    key: inputKey({ generation: ctx.keys.harmful, concept: ctx.keys.concept, p0: s.p0, p1: s.p1 }),
    prompts: harm.prompts,
    responder: hookResponder(ctx.model, attack.hooks),
  });
  const judge = primaryJudge(ctx.judgeNames);
  const clean = (rows: readonly ReplyRecord[]): Rate =>
    rateOf(
      rows.map((r) => {
        if (judge === null) return null;
        const j = r.judged[judge];
        if (!j || j.kind !== 'refusal') return null;
        return !j.refused && !r.flawed;
      }),
    );
  return {
    p0: s.p0,
    p1: s.p1,
    layers: scavLayers(concept, { p1: s.p1 }),
    runs: [
      {
        method: 'none',
        runs: ['baseline.harmful'],
        harmful: ratesFor(setRates(baseline, ctx.judgeNames), harm.info.set),
        cleanSuccess: clean(baseline),
      },
      {
        method: 'scav',
        runs: ['scav-attack.harmful'],
        harmful: ratesFor(setRates(scav, ctx.judgeNames), harm.info.set),
        cleanSuccess: clean(scav),
      },
    ],
    data: harm.info,
  };
}

export const STEPS: { readonly [K in StepName]: (ctx: AuditContext) => Promise<AuditResults[K]> } = {
  concept: conceptStep,
  monitor: monitorStep,
  baseline: baselineStep,
  steering: steeringStep,
  attack: attackStep,
};
