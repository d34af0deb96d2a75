/** File helpers the readers and writers share. */
import { closeSync, fsyncSync, openSync, readFileSync } from 'node:fs';

import { FormatError } from './errors.js';

/** A JSON file that must hold an object; a FormatError naming the file otherwise. */
export function readJsonObject(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new FormatError(path, '', `cannot read: ${(e as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new FormatError(path, '', `not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new FormatError(path, '', 'must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/**
 * Makes a rename into `dir` durable across a crash. Best effort: some platforms and file systems
 * refuse fsync on a directory, and the file itself is already complete and in place.
 */
export function syncDirectory(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Durability of the rename is not guaranteed here; the data is still correct.
  }
}
