/**
 * Train / validation / test splits, duplicate removal and the leakage guard.
 *
 * A prompt's split depends only on its own content id and the seed (a hash mapped to [0, 1) and
 * compared with the cumulative fractions), so adding or removing prompts never moves another
 * prompt to a different split, and the same prompt lands in the same split in every set it
 * appears in. Split sizes are therefore close to, not exactly, the requested fractions.
 *
 * Content ids hash the normalised text (see {@link normalizePromptText}), so a copy that differs
 * only in case or spacing counts as the same prompt for deduplication, splitting and leakage.
 */
import { createHash } from 'node:crypto';

import { OptionError, SteerguardError } from '../formats/errors.js';
import { promptId } from './prompts.js';

export type SplitName = 'train' | 'val' | 'test';
export const SPLIT_NAMES: readonly SplitName[] = ['train', 'val', 'test'];

/** Fractions of the prompts in each split; they sum to 1. */
export interface SplitFractions {
  readonly train: number;
  readonly val: number;
  readonly test: number;
}

export const DEFAULT_SPLIT: SplitFractions = { train: 0.7, val: 0.1, test: 0.2 };

/** `'0.7,0.1,0.2'` (train, val, test; must sum to 1, val and test may be 0). */
export function parseSplit(text: string): SplitFractions {
  const parts = text.split(',').map((s) => s.trim());
  const nums = parts.map(Number);
  if (parts.length !== 3 || parts.some((p) => p === '') || nums.some((x) => !Number.isFinite(x) || x < 0)) {
    throw new OptionError(
      `--split must be three non-negative numbers train,val,test like 0.7,0.1,0.2; got '${text.slice(0, 40)}'`,
    );
  }
  const [train, val, test] = nums;
  if (Math.abs(train + val + test - 1) > 1e-6) {
    throw new OptionError(`--split fractions must sum to 1; ${parts.join(' + ')} = ${train + val + test}`);
  }
  if (train <= 0) throw new OptionError('--split: the train fraction must be above 0');
  return { train, val, test };
}

export function formatSplit(f: SplitFractions): string {
  return `${f.train},${f.val},${f.test}`;
}

/**
 * The text used to decide that two prompts are the same: Unicode NFKC, lower case, runs of
 * white space collapsed to one space, trimmed.
 */
export function normalizePromptText(text: string): string {
  return text.normalize('NFKC').toLowerCase().replace(/\s+/g, ' ').trim();
}

/** Id of a prompt's normalised text (16 hex digits). */
export function contentId(text: string): string {
  return promptId(normalizePromptText(text));
}

/** Where a prompt id falls in [0, 1) for `seed`: uniform, and independent of every other prompt. */
export function splitUnit(id: string, seed: number): number {
  const h = createHash('sha256').update(`steerguard-split\0${seed}\0${id}`, 'utf8').digest();
  // 48 bits are plenty and stay exact in a double.
  return h.readUIntBE(0, 6) / 2 ** 48;
}

export function assignSplit(id: string, seed: number, fractions: SplitFractions = DEFAULT_SPLIT): SplitName {
  const u = splitUnit(id, seed);
  if (u < fractions.train) return 'train';
  if (u < fractions.train + fractions.val) return 'val';
  return 'test';
}

export interface Splits<T> {
  readonly train: T[];
  readonly val: T[];
  readonly test: T[];
}

/** Splits items by their `id`; each split keeps the input order. */
export function splitItems<T extends { readonly id: string }>(
  items: readonly T[],
  opts: { seed?: number; fractions?: SplitFractions } = {},
): Splits<T> {
  const seed = opts.seed ?? 0;
  const fractions = opts.fractions ?? DEFAULT_SPLIT;
  const out: Splits<T> = { train: [], val: [], test: [] };
  for (const item of items) out[assignSplit(item.id, seed, fractions)].push(item);
  return out;
}

/** Keeps the first of each group of items whose texts normalise alike. */
export function dedupeByText<T extends { readonly text: string }>(
  items: readonly T[],
): { items: T[]; removed: number } {
  const seen = new Set<string>();
  const kept: T[] = [];
  for (const item of items) {
    const key = normalizePromptText(item.text);
    if (seen.has(key)) continue;
    seen.add(key);
    kept.push(item);
  }
  return { items: kept, removed: items.length - kept.length };
}

/** Keeps the first of each group of items with the same id. */
export function dedupeById<T extends { readonly id: string }>(
  items: readonly T[],
): { items: T[]; removed: number } {
  const seen = new Set<string>();
  const kept = items.filter((it) => (seen.has(it.id) ? false : (seen.add(it.id), true)));
  return { items: kept, removed: items.length - kept.length };
}

/**
 * Evaluation data overlaps the data an artifact was fitted on. Carries the overlapping ids (never
 * the prompt texts, which may be harmful).
 */
export class LeakageError extends SteerguardError {
  override readonly name = 'LeakageError';
  constructor(
    readonly overlap: readonly string[],
    readonly evaluated: number,
    what: string,
  ) {
    super(
      `${overlap.length} of ${evaluated} evaluation prompts were used to fit ${what}; results on them are not ` +
        'results. Evaluate on held-out prompts (e.g. the test split with the same --seed and --split) or ' +
        'pass --allow-overlap to go on anyway',
    );
  }
}

/** Ids of `items` that are among `fitted`. */
export function findOverlap(fitted: Iterable<string>, items: readonly { readonly id: string }[]): string[] {
  const set = fitted instanceof Set ? (fitted as Set<string>) : new Set(fitted);
  return items.filter((it) => set.has(it.id)).map((it) => it.id);
}

/**
 * The leakage guard: throws LeakageError when any of `items` was fitted on, unless `allow`; then
 * returns the overlapping ids so the caller can report them.
 */
export function checkLeakage(
  fitted: Iterable<string>,
  items: readonly { readonly id: string }[],
  opts: { allow?: boolean; what?: string } = {},
): string[] {
  const overlap = findOverlap(fitted, items);
  if (overlap.length > 0 && !opts.allow)
    throw new LeakageError(overlap, items.length, opts.what ?? 'this artifact');
  return overlap;
}
