/**
 * SAE refusal steering as O'Brien et al. (2024) choose it: generate the model's replies to
 * development prompts, find the latents that fire on the refusal tokens of its refusals (and,
 * besides, the latents that follow the concept monitor), then grid-search a clamp value on
 * validation prompts. The chosen clamp is evaluated like any other steering (`eval refusal
 * --steer sae-clamp`, unconditional or behind the gate) on prompts neither step saw.
 */
import { OptionError } from '../formats/errors.js';
import type { Model } from '../model/model.js';
import {
  type FeatureContext,
  type FeatureExample,
  type MonitorFeature,
  type RefusalTokenFeature,
  exampleCodes,
  rankByMonitorCorrelation,
  rankByRefusalTokens,
  topContexts,
} from '../sae/features.js';
import { saeClampHook } from '../sae/clamp.js';
import type { Sae } from '../sae/sae.js';
import { type PromptMonitor, monitorPrompts } from '../steering/conditional.js';
import type { Judge } from './judges.js';
import { verdict } from './judges.js';
import {
  type EvalPrompt,
  type RefusalRow,
  evaluateRefusal,
  hookResponder,
  wilsonInterval,
} from './refusal.js';

/** How replies are generated and judged for the search and the grid. */
export interface SaeReplySettings {
  /** A refusal judge (keyword-gcg, say): its verdict is what "refusal" means here. */
  readonly judge: Judge;
  readonly maxNewTokens: number;
  readonly batchSize: number;
  readonly onProgress?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
}

export interface SaeFeatureSearchOptions extends SaeReplySettings {
  readonly harmful: readonly EvalPrompt[];
  readonly benign: readonly EvalPrompt[];
  /** Reply tokens counted as "the refusal tokens" of a refusal (from the reply's start). */
  readonly refusalTokens: number;
  /** Latents listed per ranking. */
  readonly top: number;
  /** Strongest contexts kept per listed latent. */
  readonly contexts: number;
  /** Tokens kept before each context's token. */
  readonly contextBefore: number;
  /** Also rank by correlation with this monitor's score. */
  readonly monitor?: PromptMonitor;
}

export interface SaeFeatureSearch {
  readonly harmful: { readonly n: number; readonly refusals: number };
  readonly benign: { readonly n: number; readonly refusals: number };
  /** Rows counted on each side of the refusal-token contrast. */
  readonly refusalTokens: number;
  readonly byRefusalTokens: readonly RefusalTokenFeature[];
  readonly byMonitor: readonly MonitorFeature[] | null;
  /** Per listed latent (either ranking), where it fires most. */
  readonly contexts: ReadonlyMap<number, readonly FeatureContext[]>;
  /** The prompts and replies, as token ids, that the contexts index into. */
  readonly examples: readonly FeatureExample[];
  /** Which prompt each example is (harmful first, then benign). */
  readonly prompts: readonly EvalPrompt[];
}

/** Replies to `prompts` with `hooks` (none by default), judged. */
async function judgedReplies(
  model: Model,
  prompts: readonly EvalPrompt[],
  s: SaeReplySettings,
  responder = hookResponder(model),
): Promise<RefusalRow[]> {
  const res = await evaluateRefusal(model, prompts, {
    judges: [s.judge],
    responder,
    maxNewTokens: s.maxNewTokens,
    batchSize: s.batchSize,
    onProgress: (stage, done, total) => {
      if (stage === 'generate') s.onProgress?.(done, total);
    },
    signal: s.signal,
  });
  if (res.judgeFailures.length > 0)
    throw new OptionError(`judge ${s.judge.name}: ${res.judgeFailures[0].message}`);
  return res.rows;
}

/** The two rankings of the file comment, from fresh unsteered replies to the development prompts. */
export async function searchSaeFeatures(
  model: Model,
  sae: Sae,
  o: SaeFeatureSearchOptions,
): Promise<SaeFeatureSearch> {
  if (o.harmful.length === 0 || o.benign.length === 0)
    throw new OptionError('the feature search needs harmful and benign prompts');
  const prompts = [...o.harmful, ...o.benign];
  const rows = await judgedReplies(model, prompts, o);
  const refused = rows.map((r, i) => {
    const v = verdict(r.judged[o.judge.name]);
    if (v === null) throw new OptionError(`judge ${o.judge.name} gave reply ${i} no verdict`);
    return v;
  });
  const examples: FeatureExample[] = rows.map((r, i) => {
    const prompt = model.tokenize(prompts[i].prompt);
    return { tokens: [...prompt, ...r.responseTokens], promptLength: prompt.length, refusal: refused[i] };
  });
  const codes = exampleCodes(model, sae, examples);
  const byRefusalTokens = rankByRefusalTokens(sae, examples, codes, {
    refusalTokens: o.refusalTokens,
    top: o.top,
  });
  let byMonitor: MonitorFeature[] | null = null;
  if (o.monitor) {
    const scores = monitorPrompts(
      model,
      prompts.map((p) => p.prompt),
      o.monitor,
    ).map((f) => f.score);
    byMonitor = rankByMonitorCorrelation(sae, examples, codes, scores, { top: o.top });
  }
  const contexts = new Map<number, FeatureContext[]>();
  for (const f of [...byRefusalTokens, ...(byMonitor ?? [])]) {
    if (!contexts.has(f.feature))
      contexts.set(
        f.feature,
        topContexts(examples, codes, f.feature, { n: o.contexts, before: o.contextBefore }),
      );
  }
  const nHarmful = o.harmful.length;
  const count = (from: number, to: number): number => refused.slice(from, to).filter(Boolean).length;
  return {
    harmful: { n: nHarmful, refusals: count(0, nHarmful) },
    benign: { n: o.benign.length, refusals: count(nHarmful, prompts.length) },
    refusalTokens: o.refusalTokens,
    byRefusalTokens,
    byMonitor,
    contexts,
    examples,
    prompts,
  };
}

/** A rate with its 95% Wilson interval. */
export interface GridRate {
  readonly positives: number;
  readonly n: number;
  readonly rate: number;
  readonly ci: readonly [number, number];
}

function gridRate(values: readonly boolean[]): GridRate {
  const positives = values.filter(Boolean).length;
  return {
    positives,
    n: values.length,
    rate: positives / values.length,
    ci: wilsonInterval(positives, values.length),
  };
}

/** One clamp value of the grid, on the validation prompts. */
export interface ClampGridRow {
  readonly value: number;
  /** Refusal of harmful prompts (wanted). */
  readonly refusal: GridRate;
  /** Refusal of benign prompts. */
  readonly overRefusal: GridRate;
  /** Degenerate replies (language flaws), both sets together. */
  readonly flawed: GridRate;
  /** refusal - overRefusal - flawed: what the choice maximises. */
  readonly objective: number;
}

export interface ClampGridOptions extends SaeReplySettings {
  readonly harmful: readonly EvalPrompt[];
  readonly benign: readonly EvalPrompt[];
  readonly feature: number;
  readonly values: readonly number[];
}

/**
 * Each clamp value, always on, on the validation prompts. The choice (`chooseClamp`) is the value
 * with the best refusal minus over-refusal minus flaw rate. `onProgress` counts replies over the
 * whole grid (total: prompts × values).
 */
export async function clampGrid(model: Model, sae: Sae, o: ClampGridOptions): Promise<ClampGridRow[]> {
  if (o.values.length === 0) throw new OptionError('the clamp grid needs at least one value');
  if (o.harmful.length === 0 || o.benign.length === 0)
    throw new OptionError('the clamp grid needs harmful and benign validation prompts');
  const prompts = [...o.harmful, ...o.benign];
  const out: ClampGridRow[] = [];
  const gridTotal = prompts.length * o.values.length;
  for (const [v, value] of o.values.entries()) {
    const hook = saeClampHook(sae, model.backend, { feature: o.feature, value });
    const settings: SaeReplySettings = {
      ...o,
      onProgress: (done) => o.onProgress?.(v * prompts.length + done, gridTotal),
    };
    const rows = await judgedReplies(model, prompts, settings, hookResponder(model, [hook]));
    const refusedOf = (r: RefusalRow): boolean => verdict(r.judged[o.judge.name]) === true;
    const refusal = gridRate(rows.slice(0, o.harmful.length).map(refusedOf));
    const overRefusal = gridRate(rows.slice(o.harmful.length).map(refusedOf));
    const flawed = gridRate(rows.map((r) => r.flaws.flawed));
    out.push({
      value,
      refusal,
      overRefusal,
      flawed,
      objective: refusal.rate - overRefusal.rate - flawed.rate,
    });
  }
  return out;
}

/** The grid row with the largest objective (ties: the smaller |value|, then the smaller value). */
export function chooseClamp(rows: readonly ClampGridRow[]): ClampGridRow {
  if (rows.length === 0) throw new OptionError('no clamp values to choose from');
  return [...rows].sort(
    (a, b) => b.objective - a.objective || Math.abs(a.value) - Math.abs(b.value) || a.value - b.value,
  )[0];
}
