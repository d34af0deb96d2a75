/**
 * Downloads the public datasets of sources.ts into a data directory (the dataset cache unless
 * told otherwise) and checks copies already there.
 *
 * Each file is streamed to a temporary name beside its target while its sha256 is computed, and
 * renamed into place only when hash and size match the pinned ones: a failed, interrupted or
 * corrupted download leaves nothing under a name that a command reads. Files already present with
 * the right checksum are not downloaded again.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import path from 'node:path';

import { OptionError, SteerguardError } from '../formats/errors.js';
import { knownPromptSets } from './datasets.js';
import {
  DATASET_SOURCES,
  type DatasetSource,
  type SourceFile,
  UNFETCHABLE_DATASETS,
  UPSTREAM_BASE,
  datasetOfFile,
  datasetSource,
  sourceUrl,
} from './sources.js';

/** A file of a data directory as compared with its pinned checksum. */
export type FileState = 'ok' | 'missing' | 'modified';

/** Compares `dir/file.path` with the pinned size and sha256. */
export function fileState(dir: string, file: SourceFile): FileState {
  const target = path.join(dir, file.path);
  let size: number;
  try {
    const st = statSync(target);
    if (!st.isFile()) return 'modified';
    size = st.size;
  } catch {
    return 'missing';
  }
  if (size !== file.bytes) return 'modified';
  return sha256Hex(readFileSync(target)) === file.sha256 ? 'ok' : 'modified';
}

/**
 * The datasets `names` ask for: dataset names (`xstest`) or prompt-set names (`xstest-safe`,
 * `alpaca:train`: the dataset holding the set's files); none means those the commands use by
 * default, `all` every downloadable one. Throws OptionError for an unknown name or one that
 * cannot be downloaded (saying why).
 */
export function selectDatasets(names: readonly string[], all = false): DatasetSource[] {
  if (all && names.length > 0) throw new OptionError('give dataset names or --all, not both');
  if (all) return [...DATASET_SOURCES];
  if (names.length === 0) return DATASET_SOURCES.filter((d) => d.byDefault);
  const chosen = new Set<string>();
  for (const name of names) {
    for (const dataset of datasetsNamed(name)) chosen.add(dataset);
  }
  return DATASET_SOURCES.filter((d) => chosen.has(d.name));
}

function datasetsNamed(name: string): string[] {
  if (datasetSource(name) !== undefined) return [name];
  const set = knownPromptSets().find((s) => s.name === name.split(':')[0]);
  const folders = set === undefined ? [name] : [...new Set(set.files.map(datasetOfFile))];
  for (const folder of folders) {
    const unfetchable = UNFETCHABLE_DATASETS.find((u) => u.name === folder);
    if (unfetchable !== undefined) {
      throw new OptionError(`dataset '${folder}' cannot be downloaded: ${unfetchable.reason}`);
    }
    if (datasetSource(folder) === undefined) {
      throw new OptionError(
        `unknown dataset '${name.slice(0, 40)}'; known: ${DATASET_SOURCES.map((d) => d.name).join(', ')} ` +
          "(or a prompt-set name such as 'xstest-safe')",
      );
    }
  }
  return folders;
}

/**
 * The download base: `explicit` (--mirror), else $STEERGUARD_DATA_MIRROR, else GitHub's raw-file
 * host. A mirror serves `owner/name/ref/path` under its base, as that host does.
 */
export function resolveMirror(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv =
    env.STEERGUARD_DATA_MIRROR !== undefined && env.STEERGUARD_DATA_MIRROR !== ''
      ? env.STEERGUARD_DATA_MIRROR
      : undefined;
  const base = explicit ?? fromEnv ?? UPSTREAM_BASE;
  const label = explicit !== undefined ? '--mirror' : 'STEERGUARD_DATA_MIRROR';
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw new OptionError(`${label} must be an http(s) URL; got '${base.slice(0, 80)}'`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new OptionError(`${label} must be an http(s) URL; got '${base.slice(0, 80)}'`);
  }
  return base.replace(/\/+$/, '');
}

/** What happened to one file, as fetchDatasets reports it. */
export type FetchEvent =
  | { readonly kind: 'present'; readonly file: SourceFile }
  | { readonly kind: 'start'; readonly file: SourceFile; readonly url: string; readonly replacing: boolean }
  | { readonly kind: 'bytes'; readonly file: SourceFile; readonly received: number }
  | { readonly kind: 'done'; readonly file: SourceFile };

export interface FetchOptions {
  /** Folder to fill (the dataset cache, sources.ts `datasetCacheDir`, for the CLI). */
  readonly dir: string;
  /** Download base (see resolveMirror); default GitHub's raw-file host. */
  readonly base?: string;
  /** Longest wait for the server to answer or to send more data, ms (default 30 000). */
  readonly timeoutMs?: number;
  /** Stops the download in progress; its partial file is removed. */
  readonly signal?: AbortSignal;
  readonly onEvent?: (event: FetchEvent) => void;
}

export interface FetchedFile {
  readonly dataset: string;
  readonly path: string;
  readonly url: string;
  readonly bytes: number;
  readonly sha256: string;
  /** `present`: already there with the right checksum; `replaced`: there but different. */
  readonly action: 'downloaded' | 'replaced' | 'present';
}

/**
 * Brings every file of `datasets` into `opts.dir`, one at a time, stopping at the first failure
 * (files completed before it stay: each is whole and checked). Throws SteerguardError naming the
 * file and URL for a network failure, an HTTP error, a timeout or a checksum mismatch (with both
 * hashes).
 */
export async function fetchDatasets(
  datasets: readonly DatasetSource[],
  opts: FetchOptions,
): Promise<FetchedFile[]> {
  const base = opts.base ?? UPSTREAM_BASE;
  const results: FetchedFile[] = [];
  for (const dataset of datasets) {
    for (const file of dataset.files) {
      const url = sourceUrl(file, base);
      const state = fileState(opts.dir, file);
      const record = { dataset: dataset.name, path: file.path, url, bytes: file.bytes, sha256: file.sha256 };
      if (state === 'ok') {
        opts.onEvent?.({ kind: 'present', file });
        results.push({ ...record, action: 'present' });
        continue;
      }
      opts.onEvent?.({ kind: 'start', file, url, replacing: state === 'modified' });
      await downloadFile(file, url, path.join(opts.dir, file.path), opts);
      opts.onEvent?.({ kind: 'done', file });
      results.push({ ...record, action: state === 'modified' ? 'replaced' : 'downloaded' });
    }
  }
  return results;
}

async function downloadFile(
  file: SourceFile,
  url: string,
  target: string,
  opts: FetchOptions,
): Promise<void> {
  const folder = path.dirname(target);
  mkdirSync(folder, { recursive: true });
  const partial = `${target}.partial-${process.pid}`;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const controller = new AbortController();
  const onAbort = (): void => controller.abort(new SteerguardError('interrupted'));
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const rearm = (): void => {
    clearTimeout(timer);
    timer = setTimeout(
      () => controller.abort(new SteerguardError(`no answer for ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
  };
  const failure = (problem: string, cause?: unknown): SteerguardError =>
    new SteerguardError(
      `could not download ${file.path} from ${url}: ${problem}; nothing was written`,
      cause === undefined ? undefined : { cause },
    );
  let handle: FileHandle | undefined;
  let done = false;
  try {
    rearm();
    let response: Response;
    try {
      response = await fetch(url, { signal: controller.signal });
    } catch (err) {
      throw failure(reasonOf(controller.signal, err), err);
    }
    if (!response.ok || response.body === null) {
      throw failure(`HTTP ${response.status} ${response.statusText}`.trim());
    }
    handle = await open(partial, 'w');
    const hash = createHash('sha256');
    let received = 0;
    try {
      for await (const chunk of response.body) {
        rearm();
        received += chunk.byteLength;
        if (received > file.bytes) {
          throw failure(`the server sent more than the expected ${file.bytes} bytes (sha256 ${file.sha256})`);
        }
        hash.update(chunk);
        await handle.write(chunk);
        opts.onEvent?.({ kind: 'bytes', file, received });
      }
    } catch (err) {
      if (err instanceof SteerguardError && !controller.signal.aborted) throw err;
      throw failure(reasonOf(controller.signal, err), err);
    }
    await handle.close();
    handle = undefined;
    const actual = hash.digest('hex');
    if (actual !== file.sha256 || received !== file.bytes) {
      throw new SteerguardError(
        `checksum mismatch for ${file.path} from ${url}: expected sha256 ${file.sha256} (${file.bytes} bytes), ` +
          `got ${actual} (${received} bytes); nothing was written`,
      );
    }
    renameSync(partial, target);
    done = true;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    await handle?.close();
    if (!done) {
      rmSync(partial, { force: true });
      removeIfEmpty(folder);
    }
  }
}

/** The abort reason when the download was stopped (timeout, interrupt), else the error's own. */
function reasonOf(signal: AbortSignal, err: unknown): string {
  if (signal.aborted && signal.reason instanceof Error) return signal.reason.message;
  const cause = err instanceof Error ? err.cause : undefined;
  // Node's fetch reports every network failure as 'fetch failed'; the cause says which.
  if (cause instanceof Error && cause.message !== '') return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** A dataset folder this download created stays only if something is in it. */
function removeIfEmpty(folder: string): void {
  try {
    rmdirSync(folder);
  } catch {
    // not empty (other files of the dataset), or already gone
  }
}

function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
