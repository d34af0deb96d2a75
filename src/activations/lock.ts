/**
 * One writer per output: a small JSON lock file `{ pid, host, token }` created with O_EXCL next
 * to what is being written (an activation run's work directory, an audit's folder).
 *
 * Another process's live lock is respected. A lock left by a dead process on this host (kill -9),
 * or by this same process (an abandoned writer object), is taken over, and the old owner notices
 * on its next {@link ownsLock} check. A lock file that is not such a JSON object (truncated,
 * edited) is refused with a message that says how to clear it, rather than guessed about.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';

import { SteerguardError } from '../formats/errors.js';

interface LockInfo {
  readonly pid: number;
  readonly host: string;
  readonly token: string;
}

/** What is in the lock file: nothing, a valid lock, or something else. */
type LockRead =
  | { readonly kind: 'none' }
  | { readonly kind: 'lock'; readonly lock: LockInfo }
  | { readonly kind: 'garbage' };

function readLock(lockPath: string): LockRead {
  let text: string;
  try {
    text = readFileSync(lockPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'none' };
    return { kind: 'garbage' };
  }
  try {
    const v = JSON.parse(text) as Partial<LockInfo> | null;
    if (
      v !== null &&
      typeof v === 'object' &&
      Number.isInteger(v.pid) &&
      (v.pid as number) > 0 &&
      typeof v.host === 'string' &&
      v.host !== '' &&
      typeof v.token === 'string' &&
      v.token !== ''
    ) {
      return { kind: 'lock', lock: { pid: v.pid as number, host: v.host, token: v.token } };
    }
  } catch {
    // Not JSON: garbage, below.
  }
  return { kind: 'garbage' };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the lock at `lockPath` for writing `what` (a path, for messages) and returns its token.
 * Throws SteerguardError when another live process holds it, when it is held from another host,
 * or when the lock file is unreadable; each message says how to clear the lock.
 */
export function acquireLock(lockPath: string, what: string): string {
  const token = randomBytes(8).toString('hex');
  const mine = JSON.stringify({ pid: process.pid, host: hostname(), token } satisfies LockInfo);
  try {
    writeFileSync(lockPath, mine, { flag: 'wx' });
    return token;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const held = readLock(lockPath);
  if (held.kind === 'garbage') {
    throw new SteerguardError(
      `${what}: the lock file ${lockPath} is not a steerguard lock (damaged or edited), so it cannot tell ` +
        `whether another run is writing there; if none is, delete ${lockPath} and run again`,
    );
  }
  if (held.kind === 'lock' && held.lock.pid !== process.pid) {
    if (held.lock.host !== hostname()) {
      throw new SteerguardError(
        `${what} is being written by process ${held.lock.pid} on host ${held.lock.host}; ` +
          `if that run is gone, delete ${lockPath}`,
      );
    }
    if (isAlive(held.lock.pid)) {
      throw new SteerguardError(
        `${what} is being written by another steerguard process (pid ${held.lock.pid}); wait for it or stop it`,
      );
    }
  }
  // Replaced by rename, so a reader never sees half a lock.
  const tmp = `${lockPath}.tmp-${process.pid}`;
  writeFileSync(tmp, mine);
  renameSync(tmp, lockPath);
  // Two processes taking over the same stale lock at once: only the last rename wins.
  if (!ownsLock(lockPath, token)) {
    throw new SteerguardError(`${what} was claimed by another process at the same moment`);
  }
  return token;
}

/** Whether the lock at `lockPath` is still the one `token` was given for. */
export function ownsLock(lockPath: string, token: string): boolean {
  const held = readLock(lockPath);
  return held.kind === 'lock' && held.lock.token === token;
}

/** Removes the lock if it is still ours (a run that took it over keeps it). */
export function releaseLock(lockPath: string, token: string): void {
  if (ownsLock(lockPath, token)) rmSync(lockPath, { force: true });
}
