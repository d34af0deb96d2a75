/**
 * Generation runs of the audit: one evaluation (generate, judge, measure flaws) of a list of
 * prompts under one intervention, saved as `<out>/replies/<name>.jsonl` and recorded in the state
 * with its rates. Steps share runs: the unsteered run serves the baseline, the gate's uncertain
 * prompts and the attack's no-attack row; the ablated run serves steering, the gate's benign
 * prompts and the attack's comparison; each is generated once.
 *
 * Gated steering is composed from runs rather than generated again: a flagged prompt gets the
 * reply of the run with the direction added, a clearly benign one the reply of the run with it
 * ablated, an uncertain one the unsteered reply. That is exactly what `conditionalGenerate`
 * produces, because greedy generation does not depend on which prompts share a batch
 * (test/batched-generation.test.ts), and it saves a third of the generation.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { wilsonInterval } from '../concepts/probe.js';
import { SteerguardError } from '../formats/errors.js';
import type { Judge, Judgement } from '../eval/judges.js';
import { verdict } from '../eval/judges.js';
import type { EvalPrompt, Responder } from '../eval/refusal.js';
import { AtomicJsonl, rowRecord } from '../eval/refusal.js';
import { judgeMeasures, runEvaluation } from '../eval/evaluation.js';
import type { Reporter } from '../eval/reporter.js';
import type { Model } from '../model/model.js';
import type { PromptVerdict } from '../steering/conditional.js';
import { type AuditState, saveState } from './state.js';
import type { Rate, RunRecord, SetRates } from './types.js';

/** One line of a replies file (rowRecord's shape plus the run name). */
export interface ReplyRecord {
  readonly run: string;
  readonly id: string;
  readonly set: string;
  readonly index: number;
  /** Absent when the audit redacts texts (then promptSha / responseSha are there). */
  readonly prompt?: string;
  readonly response?: string;
  readonly promptSha?: string;
  readonly responseSha?: string;
  readonly responseTokens: number;
  readonly finishReason: string;
  readonly flagged: boolean | null;
  readonly monitorScore: number | null;
  readonly judged: Readonly<Record<string, Judgement>>;
  readonly flawed: boolean;
  readonly flaws: readonly string[];
}

export const REPLIES_DIR = 'replies';

/** The refusal judge the charts and the summary use: JailbreakBench's list when asked for. */
export function primaryJudge(judges: readonly string[]): string | null {
  if (judges.includes('keyword-jbb')) return 'keyword-jbb';
  return judges.find((j) => judgeMeasures(j) === 'refusal') ?? null;
}

export function rateOf(values: readonly (boolean | null)[]): Rate {
  const known = values.filter((v): v is boolean => v !== null);
  const positives = known.filter((v) => v).length;
  return {
    positives,
    n: known.length,
    errors: values.length - known.length,
    rate: known.length > 0 ? positives / known.length : null,
    ci: wilsonInterval(positives, known.length),
  };
}

/** Rates per set, in first-seen order. */
export function setRates(records: readonly ReplyRecord[], judges: readonly string[]): SetRates[] {
  const sets = [...new Set(records.map((r) => r.set))];
  return sets.map((set) => {
    const rs = records.filter((r) => r.set === set);
    const byJudge: Record<string, Rate & { measures: 'refusal' | 'unsafe' }> = {};
    for (const j of judges)
      byJudge[j] = {
        ...rateOf(rs.map((r) => (r.judged[j] ? verdict(r.judged[j]) : null))),
        measures: judgeMeasures(j),
      };
    return {
      set,
      n: rs.length,
      judges: byJudge,
      flawed: rateOf(rs.map((r) => r.flawed)),
      flagged: rs.some((r) => r.flagged !== null) ? rateOf(rs.map((r) => r.flagged)) : null,
    };
  });
}

/** The rates of `set` among `sets`; throws when it is missing (a bug, not a user error). */
export function ratesFor(sets: readonly SetRates[], set: string): SetRates {
  const s = sets.find((x) => x.set === set);
  if (!s) throw new SteerguardError(`no results for set ${set}`);
  return s;
}

export function readReplies(file: string): ReplyRecord[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as ReplyRecord);
}

const recordKey = (r: { readonly set: string; readonly id: string }): string => `${r.set}\u0000${r.id}`;

/**
 * Two-sided gated steering from runs over the same prompts: each prompt takes the reply of the
 * run its verdict names (flagged: steered toward refusal; benign: steered away; uncertain: no
 * steering); every record carries the monitor's verdict and score.
 */
export function composeByVerdict(
  verdicts: ReadonlyMap<string, { readonly verdict: PromptVerdict; readonly score: number }>,
  runs: { readonly [V in PromptVerdict]: readonly ReplyRecord[] },
): ReplyRecord[] {
  const byKey = (rows: readonly ReplyRecord[]) => new Map(rows.map((r) => [recordKey(r), r]));
  const maps = { flagged: byKey(runs.flagged), benign: byKey(runs.benign), uncertain: byKey(runs.uncertain) };
  return runs.uncertain.map((r) => {
    const k = recordKey(r);
    const v = verdicts.get(k);
    const chosen = v ? maps[v.verdict].get(k) : undefined;
    if (!v || !chosen)
      throw new SteerguardError(`prompt ${r.id} of ${r.set} has no monitor verdict or no reply in its run`);
    return { ...chosen, flagged: v.verdict === 'flagged', monitorScore: v.score };
  });
}

export function flagKey(p: { readonly set: string; readonly id: string }): string {
  return recordKey(p);
}

export interface RunContext {
  readonly model: Model;
  readonly outDir: string;
  readonly state: AuditState;
  readonly reporter: Reporter;
  readonly maxTokens: number;
  readonly batch: number;
  readonly redact: boolean;
  readonly judgeNames: readonly string[];
  readonly judges: () => Promise<Judge[]>;
  /** Aborted on Ctrl-C: no new run starts after it. */
  readonly signal?: AbortSignal;
}

export interface RunSpec {
  /** File-safe name, unique in the audit. */
  readonly name: string;
  readonly label: string;
  /** Inputs hash: a stored run with another key is generated again. */
  readonly key: string;
  readonly prompts: readonly EvalPrompt[];
  readonly responder: Responder;
}

/** The run's replies: from disk when an identical run is recorded, else generated and saved. */
export async function ensureRun(ctx: RunContext, spec: RunSpec): Promise<ReplyRecord[]> {
  const rel = path.join(REPLIES_DIR, `${spec.name}.jsonl`);
  const file = path.join(ctx.outDir, rel);
  const prev = ctx.state.runs[spec.name];
  if (prev && prev.key === spec.key && existsSync(file)) {
    const rows = readReplies(file);
    if (rows.length === spec.prompts.length) {
      ctx.reporter.info(`${spec.label}: reusing ${rows.length} replies from ${rel}`);
      return rows;
    }
  }
  if (ctx.signal?.aborted) throw new SteerguardError('interrupted');
  const judges = await ctx.judges();
  const res = await runEvaluation(
    ctx.model,
    spec.prompts,
    judges,
    { label: spec.label, responder: spec.responder, fittedIds: [] },
    { maxTokens: ctx.maxTokens, batch: ctx.batch, repetitionPenalty: 1 },
    { reporter: ctx.reporter, signal: ctx.signal },
  );
  if (res.judgeFailures.length > 0)
    throw new SteerguardError(
      `${spec.label}: ${res.judgeFailures.map((f) => `judge ${f.judge} failed on every reply: ${f.message}`).join('; ')}`,
    );
  const records = res.rows.map((r) => rowRecord(r, { run: spec.name }, ctx.redact) as unknown as ReplyRecord);
  mkdirSync(path.join(ctx.outDir, REPLIES_DIR), { recursive: true });
  const w = new AtomicJsonl(file);
  try {
    for (const r of records) w.write(r);
    w.commit();
  } catch (e) {
    w.abort();
    throw e;
  }
  const record: RunRecord = {
    name: spec.name,
    label: spec.label,
    key: spec.key,
    file: rel,
    prompts: records.length,
    seconds: res.seconds.generate + res.seconds.judge,
    finishedAt: new Date().toISOString(),
    sets: setRates(records, ctx.judgeNames),
  };
  ctx.state.runs[spec.name] = record;
  saveState(ctx.outDir, ctx.state);
  return records;
}
