/**
 * Refusal evaluation: generate a reply to every prompt (greedy, batched), judge each reply with
 * one or more judges, measure language flaws, and summarise rates per prompt set with 95% Wilson
 * intervals.
 *
 * On a harmful set the refusal rate is what safety wants high (and 1 − it is the keyword attack
 * success rate); on a benign set that only looks harmful (XSTest safe) refusals are over-refusals.
 * The generation step is pluggable (`Responder`), so the same loop serves plain generation,
 * static steering, conditional steering and attacks.
 *
 * Harmful text is data: nothing here logs a prompt or a reply. Rows carry them for the caller to
 * write to a results file, and `rowRecord(row, extra, true)` leaves them out when it must not hold them.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';

import { wilsonInterval } from '../concepts/probe.js';
import { SteerguardError } from '../formats/errors.js';
import type { Hook } from '../hooks/hooks.js';
import type { GenerateOptions, Generation, Model, Prompt } from '../model/model.js';
import { type FlawReport, languageFlaws } from './flaws.js';
import { type Judge, JudgeError, type Judgement, verdict } from './judges.js';

/** One prompt to evaluate. */
export interface EvalPrompt {
  /** Stable id (content id of the text, or the file's). */
  readonly id: string;
  /** The set it came from, e.g. 'advbench' or 'xstest-safe'. */
  readonly set: string;
  /** The request as text (what judges read); '' for token-id prompts without a tokenizer. */
  readonly text: string;
  /** What the model is given (chat messages, raw text or token ids). */
  readonly prompt: Prompt;
}

/** What a responder produced for a batch. */
export interface ResponderOutput {
  readonly generations: readonly Generation[];
  /** Per prompt, whether a monitor flagged it (conditional steering), when there is one. */
  readonly flags?: readonly (boolean | null)[];
  /** Per prompt, the monitor's score, when there is one. */
  readonly scores?: readonly (number | null)[];
}

/** Produces replies for a batch of prompts; generation options are fixed by the evaluation. */
export type Responder = (prompts: readonly Prompt[], gen: GenerateOptions) => Promise<ResponderOutput>;

/** Plain generation, with optional hooks on every call (static steering or an attack). */
export function hookResponder(model: Model, hooks: readonly Hook[] = []): Responder {
  return async (prompts, gen) => ({ generations: await model.generate(prompts, { ...gen, hooks }) });
}

export interface RefusalEvalOptions {
  readonly judges: readonly Judge[];
  /** Default: plain generation. */
  readonly responder?: Responder;
  /** Default 64. */
  readonly maxNewTokens?: number;
  /** Prompts generated together (default 16). */
  readonly batchSize?: number;
  /** 1 = off (default). */
  readonly repetitionPenalty?: number;
  /** Stop strings. */
  readonly stop?: readonly string[];
  /** Called after each batch is generated and after judging. */
  readonly onProgress?: (stage: 'generate' | 'judge', done: number, total: number) => void;
  /** Called with each finished batch of rows (before judging), e.g. to save partial work. */
  readonly onBatch?: (rows: readonly RefusalRow[]) => void;
  readonly signal?: AbortSignal;
}

export interface RefusalRow {
  readonly id: string;
  readonly set: string;
  /** Position in the evaluated list. */
  readonly index: number;
  readonly prompt: string;
  readonly response: string;
  readonly responseTokens: readonly number[];
  readonly finishReason: Generation['finishReason'];
  /** Monitor verdict under conditional steering; null when no monitor ran. */
  readonly flagged: boolean | null;
  readonly monitorScore: number | null;
  /** Judge name -> judgement (filled after generation). */
  judged: Record<string, Judgement>;
  readonly flaws: FlawReport;
}

export interface RateSummary {
  readonly set: string;
  /** Judge name, or 'flaws' for the language-flaw rate. */
  readonly judge: string;
  readonly measures: 'refusal' | 'unsafe' | 'flawed' | 'flagged';
  /** Items with a verdict (errors excluded). */
  readonly n: number;
  readonly positives: number;
  readonly errors: number;
  /** positives / n (NaN when n = 0). */
  readonly rate: number;
  /** 95% Wilson score interval. */
  readonly ci: readonly [number, number];
}

export interface RefusalEvalResult {
  readonly rows: RefusalRow[];
  readonly summary: RateSummary[];
  /** Judges for which every item failed: the message of the failure. */
  readonly judgeFailures: { readonly judge: string; readonly message: string }[];
  readonly seconds: { readonly generate: number; readonly judge: number };
}

// One Wilson interval for the whole project: the probes' metrics use the same function.
export { wilsonInterval };

function rate(
  set: string,
  judge: string,
  measures: RateSummary['measures'],
  values: readonly (boolean | null)[],
): RateSummary {
  const known = values.filter((v): v is boolean => v !== null);
  const positives = known.filter((v) => v).length;
  return {
    set,
    judge,
    measures,
    n: known.length,
    positives,
    errors: values.length - known.length,
    rate: known.length > 0 ? positives / known.length : NaN,
    ci: wilsonInterval(positives, known.length),
  };
}

/** Per set (in first-seen order): each judge's rate, the flaw rate and, if any, the flag rate. */
export function summarize(
  rows: readonly RefusalRow[],
  judges: readonly Pick<Judge, 'name' | 'measures'>[],
): RateSummary[] {
  const sets = [...new Set(rows.map((r) => r.set))];
  const out: RateSummary[] = [];
  for (const set of sets) {
    const rs = rows.filter((r) => r.set === set);
    for (const j of judges)
      out.push(
        rate(
          set,
          j.name,
          j.measures,
          rs.map((r) => (r.judged[j.name] ? verdict(r.judged[j.name]) : null)),
        ),
      );
    out.push(
      rate(
        set,
        'flaws',
        'flawed',
        rs.map((r) => r.flaws.flawed),
      ),
    );
    if (rs.some((r) => r.flagged !== null))
      out.push(
        rate(
          set,
          'monitor',
          'flagged',
          rs.map((r) => r.flagged),
        ),
      );
  }
  return out;
}

/** Generates, judges and summarises. Judge failures are recorded per item, never thrown. */
export async function evaluateRefusal(
  model: Model,
  prompts: readonly EvalPrompt[],
  opts: RefusalEvalOptions,
): Promise<RefusalEvalResult> {
  // No prompts means no rate at all, not a rate of 0.
  if (prompts.length === 0) throw new SteerguardError('refusal evaluation needs at least one prompt');
  const responder = opts.responder ?? hookResponder(model);
  const batch = opts.batchSize ?? 16;
  if (!(Number.isInteger(batch) && batch >= 1))
    throw new SteerguardError(`batch size must be >= 1, got ${batch}`);
  const gen: GenerateOptions = {
    maxNewTokens: opts.maxNewTokens ?? 64,
    temperature: 0,
    repetitionPenalty: opts.repetitionPenalty ?? 1,
    stop: opts.stop,
    signal: opts.signal,
  };
  const rows: RefusalRow[] = [];
  const t0 = performance.now();
  for (let start = 0; start < prompts.length; start += batch) {
    if (opts.signal?.aborted) throw new SteerguardError('evaluation was interrupted');
    const part = prompts.slice(start, start + batch);
    const out = await responder(
      part.map((p) => p.prompt),
      gen,
    );
    if (out.generations.length !== part.length)
      throw new SteerguardError(
        `responder returned ${out.generations.length} replies for ${part.length} prompts`,
      );
    const fresh = part.map((p, k): RefusalRow => {
      const g = out.generations[k];
      const score = out.scores?.[k];
      if (score !== undefined && score !== null && !Number.isFinite(score))
        throw new SteerguardError(
          `prompt ${start + k}: the monitor score is ${score}, so its verdict means nothing`,
        );
      return {
        id: p.id,
        set: p.set,
        index: start + k,
        prompt: p.text,
        response: g.text,
        responseTokens: g.tokens,
        finishReason: g.finishReason,
        flagged: out.flags?.[k] ?? null,
        monitorScore: out.scores?.[k] ?? null,
        judged: {},
        flaws: languageFlaws(g.text, { tokens: g.tokens }),
      };
    });
    rows.push(...fresh);
    opts.onBatch?.(fresh);
    opts.onProgress?.('generate', rows.length, prompts.length);
  }
  const t1 = performance.now();

  const judgeFailures: { judge: string; message: string }[] = [];
  const items = rows.map((r) => ({ prompt: r.prompt, response: r.response }));
  for (const judge of opts.judges) {
    let results: Judgement[];
    try {
      results = await judge.judge(items, {
        signal: opts.signal,
        onProgress: (d, n) => opts.onProgress?.('judge', d, n),
      });
    } catch (e) {
      if (!(e instanceof JudgeError)) throw e;
      judgeFailures.push({ judge: judge.name, message: e.message });
      results = rows.map(() => ({ kind: 'error', error: e.message }));
    }
    rows.forEach((r, i) => (r.judged[judge.name] = results[i]));
  }
  const t2 = performance.now();
  return {
    rows,
    summary: summarize(rows, opts.judges),
    judgeFailures,
    seconds: { generate: (t1 - t0) / 1000, judge: (t2 - t1) / 1000 },
  };
}

// ---------------------------------------------------------------------------------------------
// Results files

/** A row as written to JSONL: everything, or (redacted) no prompt or reply text, only hashes. */
export function rowRecord(
  row: RefusalRow,
  extra: Record<string, unknown> = {},
  redact = false,
): Record<string, unknown> {
  const sha = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex').slice(0, 16);
  return {
    ...extra,
    id: row.id,
    set: row.set,
    index: row.index,
    ...(redact
      ? { promptSha: sha(row.prompt), responseSha: sha(row.response) }
      : { prompt: row.prompt, response: row.response }),
    responseTokens: row.responseTokens.length,
    finishReason: row.finishReason,
    flagged: row.flagged,
    monitorScore: row.monitorScore,
    judged: row.judged,
    flawed: row.flaws.flawed,
    flaws: row.flaws.reasons,
  };
}

/**
 * A JSONL file that appears only when complete: lines go to `<path>.tmp-<pid>` (fsynced) and
 * `commit` renames it over `path`; `abort` removes it.
 */
export class AtomicJsonl {
  private fd: number | undefined;
  private readonly tmp: string;

  constructor(readonly path: string) {
    this.tmp = `${path}.tmp-${process.pid}`;
    this.fd = openSync(this.tmp, 'w', 0o644);
  }

  write(record: unknown): void {
    if (this.fd === undefined) throw new Error(`${this.path}: already closed`);
    writeSync(this.fd, `${JSON.stringify(record)}\n`);
  }

  commit(): void {
    if (this.fd === undefined) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = undefined;
    renameSync(this.tmp, this.path);
  }

  abort(): void {
    if (this.fd !== undefined) {
      try {
        closeSync(this.fd);
      } catch {
        // the original failure is the one to report
      }
      this.fd = undefined;
    }
    rmSync(this.tmp, { force: true });
  }
}
