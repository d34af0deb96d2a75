/**
 * File helpers the readers and writers share.
 *
 * Inputs must be plain files. Opening a named pipe blocks until something writes to it (the
 * command hangs with no message), and a device can be endless, so every model, tokenizer,
 * concept or prompt file is checked before it is opened.
 */
import {
  type Stats,
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';

import { FormatError } from './errors.js';

/**
 * Throws FormatError (naming `path` and `field`) when `path` is a pipe, socket or device. A
 * missing path or a directory is left to the caller's open, which fails at once (ENOENT, EISDIR)
 * and reports it in its own words.
 */
export function requireRegularFile(path: string, field = ''): void {
  let st: Stats | undefined;
  try {
    st = statSync(path, { throwIfNoEntry: false });
  } catch {
    return;
  }
  if (st === undefined || st.isFile() || st.isDirectory()) return;
  throw new FormatError(path, field, `is ${kindOf(st)}, not a regular file; give a file`);
}

function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a plain file';
}

/** A JSON file that must hold an object; a FormatError naming the file otherwise. */
export function readJsonObject(path: string): Record<string, unknown> {
  requireRegularFile(path);
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

/** `text` at `file`, all or nothing: readers see the old file or the new one, never a part. */
export function writeFileAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, file);
}
