/**
 * Inputs must be plain files. Opening a named pipe blocks until something writes to it (the
 * command hangs with no message), and a device can be endless, so every model, tokenizer,
 * concept or prompt file is checked before it is opened.
 */
import { type Stats, statSync } from 'node:fs';

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
