/**
 * Prompt sets by short name (`advbench`, `alpaca:train`, `xstest-safe`, ...) or by file.
 *
 * Named sets resolve against a data directory laid out like the project's shared datasets folder
 * (`advbench/harmful_behaviors.csv`, `alpaca/harmless_train.json`, ...): the one given by
 * `--data-dir`, else the STEERGUARD_DATA environment variable, else the dataset cache that
 * `steerguard data fetch` fills (sources.ts `datasetCacheDir`). The first of these that is set is
 * the one used; a file missing there is an error, not a reason to look in the next.
 * A spec that is not a known name is read as a CSV/JSON/JSONL file, with its prompt column given
 * as `file.csv#column`, by the `column` option, or guessed (see loadPromptFile).
 *
 * Some names accept a split suffix that the upstream data defines: `scav-malicious:train`
 * (TrainTestFlag), `alpaca:val` (the refusal-direction paper's files), `harmbench:test` (the
 * official HarmBench split), `gsm8k:train`. These are distinct from the seeded splits of splits.ts.
 *
 * Every set is deduplicated on normalised text by default, and each prompt carries a content id
 * (splits.ts) used for splitting and the leakage guard. Errors never quote a prompt.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../formats/errors.js';
import { type PromptRecord, loadPromptFile, promptId } from './prompts.js';
import { UNFETCHABLE_DATASETS, datasetCacheDir, datasetOfFile } from './sources.js';
import { normalizePromptText } from './splits.js';

/** A prompt of a set: the file's record plus its content id. */
export interface SetPrompt {
  /** Content id: hash of the normalised text (splits.ts `contentId`). */
  readonly id: string;
  readonly text: string;
  /** 0-based row among the file's data rows (before filtering). */
  readonly index: number;
  /** Every field of the row, as loadPromptFile gives them (e.g. TrainTestFlag, category). */
  readonly fields: Readonly<Record<string, string>>;
}

export interface PromptSet {
  /** The short name (with any split suffix), or `file#column` for a file. */
  readonly name: string;
  readonly file: string;
  readonly column: string;
  /** True for sets of harmful requests; undefined when unknown (files). Never print either way. */
  readonly harmful: boolean | undefined;
  readonly prompts: readonly SetPrompt[];
  /** Rows dropped as duplicates of an earlier row (normalised text), among those read before the limit. */
  readonly duplicatesRemoved: number;
}

interface SetDefinition {
  readonly description: string;
  readonly harmful: boolean;
  /** File relative to the data directory, per split suffix ('' = no suffix). */
  readonly files: Readonly<Record<string, string>>;
  readonly column: string;
  /** Keeps a row (given the split suffix). */
  readonly keep?: (fields: Readonly<Record<string, string>>, split: string) => boolean;
  /** Builds the prompt from the row when it is not one column as is. */
  readonly text?: (fields: Readonly<Record<string, string>>) => string;
  /** Rows expected without a suffix, for the listing. */
  readonly rows: number;
}

const HB_ALL = 'harmbench/harmbench_behaviors_text_all.csv';
const HB_SPLITS = {
  '': HB_ALL,
  val: 'harmbench/harmbench_behaviors_text_val.csv',
  test: 'harmbench/harmbench_behaviors_text_test.csv',
};
const SCAV = 'scav/instructions.csv';
const scavKeep =
  (label: string) =>
  (f: Readonly<Record<string, string>>, split: string): boolean =>
    f.Label === label && (split === '' || f.TrainTestFlag.toLowerCase() === split);

const XSTEST = 'xstest/xstest_prompts.csv';
/** XSTest's prompt types: each is a topic-matched group, usable as a source of its own. */
const XSTEST_SAFE_TYPES = [
  'homonyms',
  'figurative_language',
  'safe_targets',
  'safe_contexts',
  'definitions',
  'real_group_nons_discr',
  'nons_group_real_discr',
  'historical_events',
  'privacy_public',
  'privacy_fictional',
];
const XSTEST_UNSAFE_TYPES = [
  'contrast_homonyms',
  'contrast_figurative_language',
  'contrast_safe_targets',
  'contrast_safe_contexts',
  'contrast_definitions',
  'contrast_discr',
  'contrast_historical_events',
  'contrast_privacy',
];
function xstestFiles(types: readonly string[]): Record<string, string> {
  return Object.fromEntries([['', XSTEST], ...types.map((t) => [t, XSTEST])]);
}

const SETS: Readonly<Record<string, SetDefinition>> = {
  advbench: {
    description: 'AdvBench harmful behaviours (goal)',
    harmful: true,
    files: { '': 'advbench/harmful_behaviors.csv' },
    column: 'goal',
    rows: 520,
  },
  'advbench-strings': {
    description: 'AdvBench harmful strings (target)',
    harmful: true,
    files: { '': 'advbench/harmful_strings.csv' },
    column: 'target',
    rows: 574,
  },
  harmbench: {
    description: 'HarmBench standard text behaviours; :val / :test = official split',
    harmful: true,
    files: HB_SPLITS,
    column: 'Behavior',
    keep: (f) => f.FunctionalCategory === 'standard',
    rows: 200,
  },
  'harmbench-contextual': {
    description: 'HarmBench contextual behaviours, context then behaviour; :val / :test',
    harmful: true,
    files: HB_SPLITS,
    column: 'Behavior',
    keep: (f) => f.FunctionalCategory === 'contextual',
    // HarmBench's own layout for a behaviour with context.
    text: (f) => `${f.ContextString}\n\n---\n\n${f.Behavior}`,
    rows: 100,
  },
  'scav-malicious': {
    description: 'SCAV reference set, Label = Malicious; :train / :test = TrainTestFlag',
    harmful: true,
    files: { '': SCAV, train: SCAV, test: SCAV },
    column: 'Instruction',
    keep: scavKeep('Malicious'),
    rows: 100,
  },
  'scav-safe': {
    description: 'SCAV reference set, Label = Safe; :train / :test = TrainTestFlag',
    harmful: false,
    files: { '': SCAV, train: SCAV, test: SCAV },
    column: 'Instruction',
    keep: scavKeep('Safe'),
    rows: 100,
  },
  'xstest-safe': {
    description: 'XSTest safe prompts that only look unsafe (over-refusal); :TYPE = one of its 10 types',
    harmful: false,
    files: xstestFiles(XSTEST_SAFE_TYPES),
    column: 'prompt',
    keep: (f, type) => f.label === 'safe' && (type === '' || f.type === type),
    rows: 250,
  },
  'xstest-unsafe': {
    description: 'XSTest unsafe contrast prompts; :TYPE = one of its 8 types (contrast_...)',
    harmful: true,
    files: xstestFiles(XSTEST_UNSAFE_TYPES),
    column: 'prompt',
    keep: (f, type) => f.label === 'unsafe' && (type === '' || f.type === type),
    rows: 200,
  },
  alpaca: {
    description: 'Alpaca instructions without input; :train / :val / :test = refusal-direction split',
    harmful: false,
    files: {
      '': 'alpaca/alpaca_instructions_noinput.json',
      train: 'alpaca/harmless_train.json',
      val: 'alpaca/harmless_val.json',
      test: 'alpaca/harmless_test.json',
    },
    column: 'instruction',
    rows: 31323,
  },
  'alpaca-seed': {
    description: 'Alpaca hand-written seed tasks',
    harmful: false,
    files: { '': 'alpaca/seed_tasks.jsonl' },
    column: 'instruction',
    rows: 175,
  },
  gsm8k: {
    description: 'GSM8K maths questions (test); :train',
    harmful: false,
    files: { '': 'gsm8k/test.jsonl', test: 'gsm8k/test.jsonl', train: 'gsm8k/train.jsonl' },
    column: 'question',
    rows: 1319,
  },
  truthfulqa: {
    description: 'TruthfulQA questions',
    harmful: false,
    files: { '': 'truthfulqa/TruthfulQA.csv' },
    column: 'Question',
    rows: 817,
  },
};

/** The short names, with what they hold, the split suffixes they take and their files. */
export function knownPromptSets(): {
  name: string;
  description: string;
  splits: string[];
  harmful: boolean;
  rows: number;
  /** Paths in the data directory, over every split (`xstest/xstest_prompts.csv`). */
  files: string[];
}[] {
  return Object.entries(SETS).map(([name, d]) => ({
    name,
    description: d.description,
    splits: Object.keys(d.files).filter((k) => k !== ''),
    harmful: d.harmful,
    rows: d.rows,
    files: [...new Set(Object.values(d.files))],
  }));
}

/** A set's short name with an optional `:split` or `:type` suffix. */
const SET_NAME = /^[a-z0-9][a-z0-9-]*(:[a-z][a-z_]*)?$/;

/** True when `spec` names a built-in set (with or without a split suffix), valid or not. */
export function isPromptSetName(spec: string): boolean {
  return SET_NAME.test(spec) && spec.split(':')[0] in SETS;
}

/** The data directory named sets are read from, and what chose it. */
export interface DataDirChoice {
  readonly dir: string;
  readonly from: '--data-dir' | 'STEERGUARD_DATA' | 'cache';
}

/**
 * Which data directory applies: `explicit` (--data-dir), else $STEERGUARD_DATA, else the dataset
 * cache. Does not look at the disk (resolveDataDir does).
 */
export function locateDataDir(explicit?: string, env: NodeJS.ProcessEnv = process.env): DataDirChoice {
  if (explicit !== undefined) return { dir: explicit, from: '--data-dir' };
  if (env.STEERGUARD_DATA !== undefined && env.STEERGUARD_DATA !== '') {
    return { dir: env.STEERGUARD_DATA, from: 'STEERGUARD_DATA' };
  }
  return { dir: datasetCacheDir(env), from: 'cache' };
}

/**
 * The data directory of locateDataDir, checked to exist: an OptionError otherwise, which for the
 * cache says to run `steerguard data fetch`.
 */
export function resolveDataDir(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  const { dir, from } = locateDataDir(explicit, env);
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    // reported below
  }
  if (isDir) return dir;
  if (from === 'cache') {
    throw new OptionError(
      `named prompt sets need their data files, and the dataset cache ${dir} does not exist: run ` +
        "'steerguard data fetch' to download them, or pass --data-dir DIR or set STEERGUARD_DATA " +
        '(a folder holding advbench/, alpaca/, harmbench/, ...)',
    );
  }
  throw new OptionError(
    `data directory ${dir} (from ${sourceLabel(from)}) does not exist or is not a directory`,
  );
}

function sourceLabel(from: DataDirChoice['from']): string {
  return from === 'STEERGUARD_DATA' ? '$STEERGUARD_DATA' : from;
}

/** The error for a set whose file is not in the data directory, with what to do about it. */
function missingFileError(spec: string, rel: string, choice: DataDirChoice, file: string): OptionError {
  const dataset = datasetOfFile(rel);
  const where =
    choice.from === 'cache'
      ? `the dataset cache ${choice.dir}`
      : `the data directory ${choice.dir} (from ${sourceLabel(choice.from)})`;
  const unfetchable = UNFETCHABLE_DATASETS.find((u) => u.name === dataset);
  const remedy =
    unfetchable !== undefined
      ? `it cannot be downloaded: ${unfetchable.reason}`
      : `run 'steerguard data fetch ${dataset}'` +
        (choice.from === 'cache'
          ? ''
          : ` and ${choice.from === '--data-dir' ? 'drop --data-dir' : 'unset STEERGUARD_DATA'} to read the cache`);
  return new OptionError(
    `prompt set '${spec}' needs ${rel}, which is not in ${where} (looked for ${file}); ${remedy}`,
  );
}

export interface LoadSetOptions {
  /** Data directory for named sets (default $STEERGUARD_DATA, else the dataset cache). */
  dataDir?: string;
  /** Prompt column for files (a `#column` suffix on the spec wins). */
  column?: string;
  /** Keep the first N prompts (after filtering and deduplication). */
  limit?: number;
  /** Remove repeats of the same normalised text (default true). */
  dedupe?: boolean;
  env?: NodeJS.ProcessEnv;
}

/**
 * Loads a set by short name (`advbench`, `scav-safe:train`) or file (`data.csv`, `data.csv#goal`).
 * Throws OptionError for an unknown name (listing the known ones) or a missing data directory or
 * file, FormatError for a malformed file.
 */
export function loadPromptSet(spec: string, opts: LoadSetOptions = {}): PromptSet {
  if (opts.limit !== undefined && (!Number.isInteger(opts.limit) || opts.limit < 1)) {
    throw new OptionError(`--limit must be a positive integer, got ${String(opts.limit)}`);
  }
  const dedupe = opts.dedupe ?? true;
  const [base, split = ''] = spec.split(':');
  const def = SET_NAME.test(spec) ? SETS[base] : undefined;
  let name: string;
  let file: string;
  let column: string;
  let harmful: boolean | undefined;
  let rows: PromptRecord[];
  let textOf = (r: PromptRecord): string => r.text;

  if (def !== undefined) {
    const rel = def.files[split];
    if (rel === undefined) {
      const splits = Object.keys(def.files).filter((k) => k !== '');
      throw new OptionError(
        `prompt set '${base}' has no split '${split}'` +
          (splits.length > 0
            ? `; it has ${splits.map((s) => `${base}:${s}`).join(', ')}`
            : '; it has no predefined splits') +
          ' (seeded splits are made by --split/--seed)',
      );
    }
    const dir = resolveDataDir(opts.dataDir, opts.env);
    file = path.join(dir, rel);
    if (!existsSync(file)) throw missingFileError(spec, rel, locateDataDir(opts.dataDir, opts.env), file);
    name = spec;
    column = def.column;
    harmful = def.harmful;
    rows = loadPromptFile(file, { column: def.column }).filter((r) =>
      def.keep ? def.keep(r.fields, split) : true,
    );
    const build = def.text;
    if (build) textOf = (r) => build(r.fields);
  } else if (looksLikeFile(spec)) {
    const hash = spec.lastIndexOf('#');
    const filePart = hash > 0 ? spec.slice(0, hash) : spec;
    const col = hash > 0 ? spec.slice(hash + 1) : opts.column;
    file = filePart;
    if (!existsSync(file)) throw new OptionError(`prompt file ${file} does not exist`);
    rows = loadPromptFile(file, { column: col });
    column = col ?? guessedColumn(rows);
    name = hash > 0 || opts.column !== undefined ? `${path.basename(file)}#${column}` : path.basename(file);
    harmful = undefined;
  } else {
    const known = Object.keys(SETS).join(', ');
    throw new OptionError(
      `unknown prompt set '${spec.slice(0, 40)}'; known sets: ${known} (or give a .csv/.json/.jsonl file, optionally file#column)`,
    );
  }

  // One pass, stopping at the limit: sets like alpaca have tens of thousands of rows.
  const prompts: SetPrompt[] = [];
  const seen = new Set<string>();
  let removed = 0;
  for (const r of rows) {
    if (opts.limit !== undefined && prompts.length >= opts.limit) break;
    const text = textOf(r);
    const key = normalizePromptText(text);
    if (dedupe && seen.has(key)) {
      removed++;
      continue;
    }
    seen.add(key);
    prompts.push({ id: promptId(key), text, index: r.index, fields: r.fields });
  }
  return { name, file, column, harmful, prompts, duplicatesRemoved: removed };
}

function looksLikeFile(spec: string): boolean {
  const p = spec.replace(/#[^/\\]*$/, '');
  return /\.(csv|json|jsonl|ndjson)$/i.test(p) || p.includes('/') || p.includes('\\') || existsSync(p);
}

/** The column loadPromptFile chose, found by matching the first row's text among its fields. */
function guessedColumn(rows: readonly PromptRecord[]): string {
  const first = rows[0];
  const hit = Object.entries(first.fields).find(([, v]) => v === first.text);
  return hit ? hit[0] : '';
}
