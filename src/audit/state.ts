/**
 * The audit's state file, `<out>/audit-state.json`: which steps ran, with what inputs, what they
 * found or how they failed, and which generation runs are already on disk.
 *
 * The file is rewritten whole (temporary file, fsync, rename) after every step and every
 * generation run, so a killed audit leaves the last consistent state behind and the next run
 * resumes from it. Nothing in it is prompt or reply text: only set names, counts, content ids,
 * rates and error messages.
 *
 * Staleness: each step and run records a key, a hash of everything its result depends on (the
 * model, the settings it reads, the keys of the steps it builds on). A stored result whose key
 * differs from the one the current settings give is redone; the others are reused.
 *
 * One audit at a time per folder: `<out>/audit.lock` (the activation store's lock, see
 * src/activations/lock.ts) is held while an audit runs, so two audits with the same --out
 * cannot mix their replies and state.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { acquireLock, releaseLock } from '../activations/lock.js';
import { FormatError, SteerguardError } from '../formats/errors.js';
import { writeFileAtomic } from '../formats/files.js';
import type { AuditResults, AuditSettings, RunRecord, StepName } from './types.js';

export const STATE_FORMAT = 'steerguard.audit-state';
export const STATE_VERSION = 2;
export const STATE_FILE = 'audit-state.json';
export const LOCK_FILE = 'audit.lock';

export interface StepRecord<K extends StepName = StepName> {
  readonly status: 'done' | 'failed';
  /** Hash of the step's inputs (see the file comment). */
  readonly key: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly seconds: number;
  /** The failure, in the words of the error that ended the step. */
  readonly error?: string;
  readonly result?: AuditResults[K];
}

export interface AuditState {
  readonly format: typeof STATE_FORMAT;
  readonly version: typeof STATE_VERSION;
  readonly createdAt: string;
  updatedAt: string;
  /** The model audited: a different model in the same folder is refused. */
  readonly model: {
    readonly name: string;
    readonly path: string;
    readonly arch: string;
    readonly fingerprint: string;
    readonly nLayers: number;
    readonly dModel: number;
  };
  /** Settings of the latest invocation. */
  settings: AuditSettings;
  steps: { [K in StepName]?: StepRecord<K> };
  /** Generation runs by name ('baseline', 'add-4', ...). */
  runs: Record<string, RunRecord>;
}

/** Short stable hash of a JSON-able value (object keys in insertion order, as built by the caller). */
export function inputKey(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value), 'utf8').digest('hex').slice(0, 16);
}

export function statePath(outDir: string): string {
  return path.join(outDir, STATE_FILE);
}

/** The state in `outDir`, or undefined when there is none. Throws FormatError for a broken file. */
export function loadState(outDir: string): AuditState | undefined {
  const file = statePath(outDir);
  if (!existsSync(file)) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    throw new FormatError(file, '', 'is not valid JSON (remove it or pass --restart)');
  }
  const s = doc as Partial<AuditState> | null;
  if (!s || typeof s !== 'object' || s.format !== STATE_FORMAT)
    throw new FormatError(file, 'format', `is not a ${STATE_FORMAT} file`);
  if (s.version !== STATE_VERSION)
    throw new FormatError(
      file,
      'version',
      `is ${String(s.version)}; this steerguard writes version ${STATE_VERSION} (pass --restart)`,
    );
  if (!s.model || typeof s.model.fingerprint !== 'string' || !s.steps || !s.runs)
    throw new FormatError(file, '', 'lacks the model, steps or runs (pass --restart)');
  return s as AuditState;
}

export function saveState(outDir: string, state: AuditState): void {
  state.updatedAt = new Date().toISOString();
  writeFileAtomic(statePath(outDir), `${JSON.stringify(state, jsonSafe, 1)}\n`);
}

/** JSON has no NaN or Infinity: they are stored as null and read back as null. */
export function jsonSafe(_key: string, v: unknown): unknown {
  return typeof v === 'number' && !Number.isFinite(v) ? null : v;
}

/** Throws unless `state` belongs to the model with `fingerprint`. */
export function checkStateModel(
  state: AuditState,
  model: { fingerprint: string; name: string },
  outDir: string,
): void {
  if (state.model.fingerprint !== model.fingerprint)
    throw new SteerguardError(
      `${outDir} holds an audit of ${state.model.name} (fingerprint ${state.model.fingerprint.slice(0, 12)}), ` +
        `not of ${model.name} (fingerprint ${model.fingerprint.slice(0, 12)}); use another --out or pass --restart`,
    );
}

/**
 * Takes `<outDir>/audit.lock` (creating outDir) and returns the function that releases it.
 * Throws SteerguardError while another audit writes to outDir, or when the lock file is damaged
 * (the message says how to clear it).
 */
export function lockAuditDir(outDir: string): () => void {
  mkdirSync(outDir, { recursive: true });
  const lock = path.join(outDir, LOCK_FILE);
  const token = acquireLock(lock, outDir);
  return () => releaseLock(lock, token);
}

/** The settings that differ between two invocations, as "name old -> new". */
export function settingsDifferences(before: AuditSettings, now: AuditSettings): string[] {
  const keys = [...new Set([...Object.keys(before), ...Object.keys(now)])] as (keyof AuditSettings)[];
  const text = (v: unknown): string => (v === undefined ? '(unset)' : JSON.stringify(v));
  return keys
    .filter((k) => text(before[k]) !== text(now[k]))
    .map((k) => `${k} ${text(before[k])} -> ${text(now[k])}`);
}
