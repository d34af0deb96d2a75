/**
 * The resumable, atomic writer behind `steerguard activations`.
 *
 * A run collects activations for N prompts at a set of hooks. Activation runs take minutes to
 * hours, so completed chunks are kept in `<out>.partial/` (one small safetensors file per chunk
 * plus manifest.json, each written whole-or-not-at-all) and an interrupted run resumes after its
 * last completed chunk. The output path only ever sees the finished file, renamed into place.
 * The manifest records each chunk's sha256; on resume a chunk that does not match (a flipped
 * byte, a file replaced) is dropped with a warning (see `dropped`) and computed again, together
 * with the chunks after it, rather than copied into the final file.
 *
 * Final file layout (safetensors):
 *   `<hook>`  [N, D] (one row per prompt), [N, P, D] (P rows per prompt), or, for all-token runs,
 *             [total_tokens, D] packed, with
 *   `offsets` I32 [N + 1]: prompt i owns rows offsets[i] .. offsets[i+1]-1.
 *   metadata: `format`, `format_version`, `descriptor` (the whole descriptor as JSON), each
 *             descriptor field under its own key, `prompt_ids` (JSON array), `dims` (JSON).
 * The file holds no timestamp, so the same inputs always give the same bytes.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

import { OptionError, SteerguardError } from '../formats/errors.js';
import { syncDirectory, writeFileAtomic } from '../formats/files.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorI32,
  writeSafetensors,
  type SafetensorsTensorInfo,
  type SafetensorsWriteTensor,
} from '../formats/safetensors.js';
import { acquireLock, ownsLock, releaseLock } from './lock.js';

export type ActivationDtype = 'F32' | 'F16' | 'BF16';

/**
 * Everything that decides the numbers in an activation file. A run resumes only when the
 * descriptor is identical; any field that changes the activations belongs here (in `extra` if
 * nothing else fits).
 */
export interface ActivationRunDescriptor {
  /** Model identity, e.g. { name, file, sha256 }; compared as a whole. */
  model: Record<string, string>;
  /** Hook names; each becomes a tensor of that name. */
  hooks: string[];
  /** Position spec, canonicalised by the caller (e.g. 'last', 'all', '-1,-2'). */
  positions: string;
  /** Rows each prompt contributes: a fixed count, or 'all' for every token (packed + offsets). */
  rowsPerPrompt: number | 'all';
  /** Chat template (name or text) applied to prompts, '' for none. */
  template: string;
  promptFile: string;
  column: string;
  /** promptListHash of the prompt texts in order. */
  promptsHash: string;
  nPrompts: number;
  /** Storage type of the activations. */
  dtype: ActivationDtype;
  extra?: Record<string, string>;
}

export interface ActivationRunOptions {
  /** Prompt ids in order (PromptRecord.id), stored in the final file; length nPrompts. */
  promptIds: readonly string[];
  /** Discard an unfinished run with a different descriptor instead of refusing. */
  restart?: boolean;
  /**
   * Replace an existing file at the output path (otherwise refused before any work); like
   * `restart`, also discards an unfinished run with a different descriptor.
   */
  overwrite?: boolean;
}

export interface ActivationChunk {
  /** First prompt of the chunk; must equal `run.completed`. */
  start: number;
  /** Prompts in the chunk. */
  count: number;
  /** Per hook, row-major fp32 [rows, D]; rows = count × rowsPerPrompt, or the sum of tokenCounts. */
  activations: Readonly<Record<string, Float32Array>>;
  /** All-token runs: rows of each prompt of the chunk (length `count`). */
  tokenCounts?: readonly number[];
}

export interface ActivationRunResult {
  path: string;
  nPrompts: number;
  /** Rows per hook tensor (N × P, or total tokens). */
  rows: number;
  /** Width of each hook's activations. */
  dims: Record<string, number>;
  bytes: number;
}

interface ChunkEntry {
  file: string;
  start: number;
  count: number;
  rows: number;
  /** sha256 of the chunk file, checked on resume. */
  sha256: string;
}

interface Manifest {
  format: 'steerguard.activations.partial';
  version: 1;
  descriptor: ActivationRunDescriptor;
  /** The prompt ids are not part of the descriptor, but a resumed run must have the same ones. */
  promptIdsHash: string;
  dims: Record<string, number> | null;
  chunks: ChunkEntry[];
}

const MANIFEST = 'manifest.json';
const LOCK = 'lock';
const FINAL_TMP = 'final.safetensors.tmp';
const OFFSETS = 'offsets';
const TOKENS = 'tokens';
export const ACTIVATIONS_FORMAT = 'steerguard.activations';
export const ACTIVATIONS_FORMAT_VERSION = '1';

const BYTES: Record<ActivationDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** The work directory of a run writing to `outPath`. */
export function partialDir(outPath: string): string {
  return `${resolve(outPath)}.partial`;
}

/**
 * Throw OptionError unless a file can be created at `path` (its directory exists and is
 * writable, and `path` is not a directory). Probes by creating and deleting a file, since
 * permission bits do not tell the whole story (read-only mounts, ACLs, root).
 */
export function checkWritable(path: string): void {
  const abs = resolve(path);
  const dir = dirname(abs);
  let st;
  try {
    st = statSync(abs, { throwIfNoEntry: false });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') {
      throw new OptionError(`cannot write ${path}: ${nearestExisting(dir)} is not a directory`);
    }
    throw new OptionError(`cannot write ${path}: ${errnoText(err)}`);
  }
  if (st?.isDirectory()) throw new OptionError(`cannot write ${path}: it is a directory (give a file name)`);
  let dst;
  try {
    dst = statSync(dir, { throwIfNoEntry: false });
  } catch (err) {
    throw new OptionError(`cannot write ${path}: ${errnoText(err)}`);
  }
  if (dst === undefined) throw new OptionError(`cannot write ${path}: directory ${dir} does not exist`);
  if (!dst.isDirectory()) throw new OptionError(`cannot write ${path}: ${dir} is not a directory`);
  const probe = join(dir, `.${basename(abs)}.probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    closeSync(openSync(probe, 'wx'));
  } catch (err) {
    throw new OptionError(`cannot write ${path}: directory ${dir}: ${errnoText(err)}`);
  }
  unlinkSync(probe);
}

/** The deepest existing ancestor of `dir` (or `dir` itself), for messages. */
function nearestExisting(dir: string): string {
  for (let d = dir; ; d = dirname(d)) {
    try {
      statSync(d);
      return d;
    } catch {
      if (dirname(d) === d) return d;
    }
  }
}

function errnoText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EROFS':
      return 'read-only file system';
    case 'ENOSPC':
      return 'no space left on device';
    case 'ENOTDIR':
      return 'a parent is not a directory';
    case 'ENOENT':
      return 'no such directory';
    default:
      return code ?? (err instanceof Error ? err.message : String(err));
  }
}

/** JSON with object keys sorted, so that equal descriptors give equal text. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(
          Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : v,
  );
}

/** Names of the descriptor fields (model.sha256, extra.x, hooks, ...) that differ. */
export function descriptorDifferences(a: ActivationRunDescriptor, b: ActivationRunDescriptor): string[] {
  const out: string[] = [];
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof ActivationRunDescriptor>;
  for (const k of [...keys].sort()) {
    const va: unknown = a[k];
    const vb: unknown = b[k];
    if (canonicalJson(va) === canonicalJson(vb)) continue;
    const isRecord = (v: unknown): v is Record<string, unknown> =>
      v !== null && typeof v === 'object' && !Array.isArray(v);
    if ((k === 'model' || k === 'extra') && (isRecord(va) || isRecord(vb))) {
      const ra = isRecord(va) ? va : {};
      const rb = isRecord(vb) ? vb : {};
      for (const sub of [...new Set([...Object.keys(ra), ...Object.keys(rb)])].sort()) {
        if (canonicalJson(ra[sub]) !== canonicalJson(rb[sub])) out.push(`${k}.${sub}`);
      }
    } else {
      out.push(k);
    }
  }
  return out;
}

function validateDescriptor(d: ActivationRunDescriptor, promptIds: readonly string[]): void {
  const bad = (msg: string): never => {
    throw new OptionError(`activation run: ${msg}`);
  };
  if (d.hooks.length === 0) bad('no hooks chosen');
  if (new Set(d.hooks).size !== d.hooks.length) bad('a hook is named twice');
  for (const h of d.hooks) if (h === '' || h === '__metadata__') bad(`'${h}' cannot be a hook name`);
  if (d.rowsPerPrompt === 'all') {
    if (d.hooks.includes(OFFSETS)) bad(`a hook named '${OFFSETS}' clashes with the offsets tensor`);
  } else if (!Number.isInteger(d.rowsPerPrompt) || d.rowsPerPrompt < 1) {
    bad(`rowsPerPrompt must be a positive integer or 'all', got ${String(d.rowsPerPrompt)}`);
  }
  if (!Number.isInteger(d.nPrompts) || d.nPrompts < 1) {
    bad(`nPrompts must be a positive integer, got ${d.nPrompts}`);
  }
  if (!(d.dtype in BYTES)) bad(`unsupported dtype ${String(d.dtype)}`);
  if (promptIds.length !== d.nPrompts) bad(`${promptIds.length} prompt ids for ${d.nPrompts} prompts`);
}

export class ActivationRun {
  readonly outPath: string;
  readonly descriptor: ActivationRunDescriptor;
  readonly workDir: string;
  /** True when this run picked up chunks left by an earlier, interrupted one. */
  readonly resumed: boolean;
  /**
   * Saved chunks that could not be resumed (damaged, or not what the manifest's checksum says),
   * each as "file (prompts a..b): why"; they and the chunks after them are computed again.
   */
  readonly dropped: readonly string[];
  readonly #promptIds: readonly string[];
  readonly #token: string;
  #manifest: Manifest;
  #closed = false;

  private constructor(
    outPath: string,
    descriptor: ActivationRunDescriptor,
    promptIds: readonly string[],
    token: string,
    manifest: Manifest,
    resumed: boolean,
    dropped: readonly string[],
  ) {
    this.outPath = outPath;
    this.descriptor = descriptor;
    this.workDir = partialDir(outPath);
    this.#promptIds = promptIds;
    this.#token = token;
    this.#manifest = manifest;
    this.resumed = resumed;
    this.dropped = dropped;
  }

  /**
   * Start or resume a run writing to `outPath`. Throws OptionError (before any model work) when
   * the output cannot be written, exists without `overwrite`, or an unfinished run there has a
   * different descriptor and neither `restart` nor `overwrite` is set; SteerguardError when
   * another live process holds the run or its lock file is damaged.
   */
  static async open(
    outPath: string,
    descriptor: ActivationRunDescriptor,
    options: ActivationRunOptions,
  ): Promise<ActivationRun> {
    const desc = JSON.parse(JSON.stringify(descriptor)) as ActivationRunDescriptor;
    validateDescriptor(desc, options.promptIds);
    checkWritable(outPath);
    const abs = resolve(outPath);
    if (existsSync(abs) && !options.overwrite) {
      throw new OptionError(`${outPath} already exists; remove it or pass --overwrite`);
    }
    const work = partialDir(abs);
    try {
      mkdirSync(work, { recursive: true });
    } catch (err) {
      throw new OptionError(`cannot create work directory ${work}: ${errnoText(err)}`);
    }
    const token = acquireLock(join(work, LOCK), outPath);

    const idsHash = createHash('sha256').update(JSON.stringify(options.promptIds)).digest('hex');
    const fresh = (): Manifest => ({
      format: 'steerguard.activations.partial',
      version: 1,
      descriptor: desc,
      promptIdsHash: idsHash,
      dims: null,
      chunks: [],
    });
    let manifest: Manifest | undefined;
    let resumed = false;
    let dropped: string[] = [];
    const manifestPath = join(work, MANIFEST);
    if (existsSync(manifestPath)) {
      let old: Manifest | undefined;
      try {
        old = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
        if (old.format !== 'steerguard.activations.partial' || old.version !== 1) old = undefined;
      } catch {
        old = undefined;
      }
      const differences =
        old === undefined ? ['(unreadable manifest)'] : descriptorDifferences(old.descriptor, desc);
      if (old !== undefined && old.promptIdsHash !== idsHash) differences.push('prompt ids');
      if (differences.length > 0 && !options.restart && !options.overwrite) {
        releaseLock(join(work, LOCK), token);
        throw new OptionError(
          `${work} holds an unfinished run with different settings (${differences.join(', ')}); ` +
            'rerun with the same settings to resume it, or pass --restart (or --overwrite) to discard it',
        );
      }
      if (differences.length === 0 && old !== undefined) {
        const usable = usableChunks(work, old);
        manifest = { ...old, descriptor: desc, chunks: usable.good };
        dropped = usable.dropped;
        resumed = manifest.chunks.length > 0;
        if (manifest.chunks.length === 0) manifest.dims = null;
      }
    }
    manifest ??= fresh();
    removeStrays(work, manifest);
    writeFileAtomic(manifestPath, `${JSON.stringify(manifest, null, 1)}\n`);
    return new ActivationRun(abs, desc, [...options.promptIds], token, manifest, resumed, dropped);
  }

  /** Prompts whose activations are saved; the next chunk starts here. */
  get completed(): number {
    const last = this.#manifest.chunks.at(-1);
    return last === undefined ? 0 : last.start + last.count;
  }

  /** Width of each hook's activations, known after the first chunk. */
  get dims(): Readonly<Record<string, number>> | null {
    return this.#manifest.dims;
  }

  /** Save the activations of prompts start .. start+count-1. */
  async writeChunk(chunk: ActivationChunk): Promise<void> {
    this.#checkOwner();
    const d = this.descriptor;
    const { start, count } = chunk;
    if (start !== this.completed) {
      throw new SteerguardError(
        `activation run: chunk starts at prompt ${start}, expected ${this.completed}`,
      );
    }
    if (!Number.isInteger(count) || count < 1 || start + count > d.nPrompts) {
      throw new SteerguardError(
        `activation run: bad chunk size ${count} at ${start} of ${d.nPrompts} prompts`,
      );
    }
    let rows: number;
    if (d.rowsPerPrompt === 'all') {
      const tc = chunk.tokenCounts;
      if (tc === undefined || tc.length !== count || tc.some((t) => !Number.isInteger(t) || t < 0)) {
        throw new SteerguardError(`activation run: an all-token chunk needs ${count} token counts`);
      }
      rows = tc.reduce((s, t) => s + t, 0);
    } else {
      rows = count * d.rowsPerPrompt;
    }
    const given = Object.keys(chunk.activations);
    const unknown = given.filter((h) => !d.hooks.includes(h));
    if (unknown.length > 0) {
      throw new SteerguardError(`activation run: unexpected hooks ${unknown.join(', ')}`);
    }
    // A chunk of prompts with no tokens at all (possible only for all-token runs) says nothing
    // about widths, so it leaves them unknown or as they were.
    const dims: Record<string, number> = {};
    for (const h of d.hooks) {
      const a = chunk.activations[h];
      if (a === undefined) {
        throw new SteerguardError(`activation run: chunk has no activations for hook ${h}`);
      }
      const known = this.#manifest.dims?.[h];
      if (rows === 0) {
        if (a.length !== 0) {
          throw new SteerguardError(`activation run: hook ${h} has values but the chunk has no rows`);
        }
        dims[h] = known ?? 0;
        continue;
      }
      const dim = a.length / rows;
      if (!Number.isInteger(dim) || dim < 1) {
        throw new SteerguardError(
          `activation run: hook ${h} has ${a.length} values, not a multiple of ${rows} rows`,
        );
      }
      if (known !== undefined && dim !== known) {
        throw new SteerguardError(`activation run: hook ${h} width ${dim}, earlier chunks had ${known}`);
      }
      dims[h] = dim;
    }
    for (const h of d.hooks) {
      const a = chunk.activations[h];
      const bad = a.findIndex((x) => !Number.isFinite(x));
      if (bad >= 0) {
        const row = Math.floor(bad / dims[h]);
        throw new SteerguardError(
          `activation run: hook ${h} has a non-finite value (${a[bad]}) for prompt ${promptOfRow(chunk, d, row)}; ` +
            'nothing of this chunk was saved (a damaged model file or a hook writing NaN or infinity can cause this)',
        );
      }
    }

    const file = `chunk-${String(start).padStart(9, '0')}.safetensors`;
    const tensors: SafetensorsWriteTensor[] = d.hooks.map((h) => ({
      name: h,
      dtype: d.dtype,
      shape: [rows, dims[h]],
      data: chunk.activations[h],
    }));
    if (d.rowsPerPrompt === 'all') {
      tensors.push({
        name: TOKENS,
        dtype: 'I32',
        shape: [count],
        data: Int32Array.from(chunk.tokenCounts ?? []),
      });
    }
    writeSafetensors(join(this.workDir, file), tensors, { start: String(start), count: String(count) });
    const sha256 = fileSha256(join(this.workDir, file));

    const next: Manifest = {
      ...this.#manifest,
      dims: rows > 0 ? dims : this.#manifest.dims,
      chunks: [...this.#manifest.chunks, { file, start, count, rows, sha256 }],
    };
    // The manifest is what makes a chunk count: a crash before this line leaves an orphan file
    // that the next open() deletes and the chunk is computed again.
    this.#checkOwner();
    writeFileAtomic(join(this.workDir, MANIFEST), `${JSON.stringify(next, null, 1)}\n`);
    this.#manifest = next;
  }

  /**
   * Assemble the final file at the output path (atomically) and delete the work directory.
   * Streams chunk by chunk, so memory stays at one chunk tensor however big the run.
   */
  async finish(): Promise<ActivationRunResult> {
    this.#checkOwner();
    const d = this.descriptor;
    const m = this.#manifest;
    if (this.completed !== d.nPrompts) {
      throw new SteerguardError(`activation run: only ${this.completed} of ${d.nPrompts} prompts are done`);
    }
    const dims = m.dims ?? {};
    const rows = m.chunks.reduce((s, c) => s + c.rows, 0);

    let offsets: Int32Array | undefined;
    if (d.rowsPerPrompt === 'all') {
      if (rows > 0x7fffffff) {
        throw new SteerguardError(`activation run: ${rows} rows overflow the I32 offsets`);
      }
      offsets = new Int32Array(d.nPrompts + 1);
      let p = 0;
      for (const c of m.chunks) {
        const tokens = readChunkTokens(join(this.workDir, c.file), c.count);
        for (const t of tokens) {
          offsets[p + 1] = offsets[p] + t;
          p++;
        }
      }
    }

    const header: Record<string, unknown> = {};
    const order: { name: string; bytes: number }[] = [];
    let pos = 0;
    for (const h of d.hooks) {
      const dim = dims[h] ?? 0;
      const shape =
        d.rowsPerPrompt === 'all'
          ? [rows, dim]
          : d.rowsPerPrompt === 1
            ? [d.nPrompts, dim]
            : [d.nPrompts, d.rowsPerPrompt, dim];
      const bytes = rows * dim * BYTES[d.dtype];
      header[h] = { dtype: d.dtype, shape, data_offsets: [pos, pos + bytes] };
      order.push({ name: h, bytes });
      pos += bytes;
    }
    if (offsets !== undefined) {
      header[OFFSETS] = {
        dtype: 'I32',
        shape: [offsets.length],
        data_offsets: [pos, pos + offsets.byteLength],
      };
      pos += offsets.byteLength;
    }
    header.__metadata__ = finalMetadata(d, this.#promptIds, dims);
    let headerText = JSON.stringify(header);
    // Pad with spaces so the data starts 8-byte aligned (allowed by the format, done by its
    // reference writer), which lets readers map F32 tensors without copying.
    headerText += ' '.repeat((8 - ((8 + Buffer.byteLength(headerText)) % 8)) % 8);
    const headerBytes = Buffer.from(headerText, 'utf8');

    const tmp = join(this.workDir, FINAL_TMP);
    const fd = openSync(tmp, 'w');
    try {
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(headerBytes.length));
      writeAll(fd, len);
      writeAll(fd, headerBytes);
      for (const { name } of order) {
        for (const c of m.chunks) {
          if (c.rows === 0) continue;
          writeAll(fd, readChunkTensorBytes(join(this.workDir, c.file), name));
        }
      }
      if (offsets !== undefined) {
        writeAll(fd, Buffer.from(offsets.buffer, offsets.byteOffset, offsets.byteLength));
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.#checkOwner();
    renameSync(tmp, this.outPath);
    syncDirectory(dirname(this.outPath));
    this.#closed = true;
    rmSync(this.workDir, { recursive: true, force: true });
    return {
      path: this.outPath,
      nPrompts: d.nPrompts,
      rows,
      dims: { ...dims },
      bytes: 8 + headerBytes.length + pos,
    };
  }

  /**
   * Stop without finishing (e.g. on Ctrl-C, or an error): the saved chunks stay for a later
   * resume and the lock is released at once rather than left for the next run to find stale.
   * With no chunk saved there is nothing to resume, so the work directory goes too (a run that
   * failed before its first chunk must not hold settings that block the next one).
   */
  release(): void {
    if (this.#closed) return;
    this.#closed = true;
    const lock = join(this.workDir, LOCK);
    if (this.#manifest.chunks.length === 0 && ownsLock(lock, this.#token))
      rmSync(this.workDir, { recursive: true, force: true });
    else releaseLock(lock, this.#token);
  }

  #checkOwner(): void {
    if (this.#closed) throw new SteerguardError('activation run: already finished or released');
    if (!ownsLock(join(this.workDir, LOCK), this.#token)) {
      this.#closed = true;
      throw new SteerguardError(`activation run: another run took over ${this.workDir}`);
    }
  }
}

/** Metadata of the final file: every value a string, as the format requires. */
function finalMetadata(
  d: ActivationRunDescriptor,
  promptIds: readonly string[],
  dims: Record<string, number>,
): Record<string, string> {
  const meta: Record<string, string> = {
    format: ACTIVATIONS_FORMAT,
    format_version: ACTIVATIONS_FORMAT_VERSION,
    descriptor: canonicalJson(d),
  };
  for (const [k, v] of Object.entries(d)) {
    if (v !== undefined) meta[k] = typeof v === 'string' ? v : canonicalJson(v);
  }
  meta.prompt_ids = JSON.stringify(promptIds);
  meta.dims = canonicalJson(dims);
  return meta;
}

/**
 * Read back what {@link ActivationRun.finish} stored in the metadata of a final file.
 * Throws SteerguardError when the metadata is not from an activation run.
 */
export function parseActivationMetadata(metadata: Readonly<Record<string, string>>): {
  descriptor: ActivationRunDescriptor;
  promptIds: string[];
  dims: Record<string, number>;
} {
  if (metadata.format !== ACTIVATIONS_FORMAT) {
    throw new SteerguardError(`not a steerguard activation file (format is ${metadata.format ?? 'missing'})`);
  }
  if (metadata.format_version !== ACTIVATIONS_FORMAT_VERSION) {
    throw new SteerguardError(`activation file version ${metadata.format_version} is not supported`);
  }
  return {
    descriptor: JSON.parse(metadata.descriptor) as ActivationRunDescriptor,
    promptIds: JSON.parse(metadata.prompt_ids) as string[],
    dims: JSON.parse(metadata.dims) as Record<string, number>,
  };
}

/**
 * The leading chunks of a manifest whose files are present, intact and match their checksum, and
 * why the first other one (if any) was dropped.
 */
function usableChunks(work: string, m: Manifest): { good: ChunkEntry[]; dropped: string[] } {
  const good: ChunkEntry[] = [];
  const dropped: string[] = [];
  let next = 0;
  for (const c of m.chunks) {
    const drop = (why: string): void => {
      dropped.push(`${c.file} (prompts ${c.start}..${c.start + c.count - 1}): ${why}`);
    };
    if (c.start !== next) break;
    try {
      if (typeof c.sha256 !== 'string') {
        drop('the manifest has no checksum for it (written by an older steerguard)');
        break;
      }
      if (fileSha256(join(work, c.file)) !== c.sha256) {
        drop('its checksum does not match the manifest');
        break;
      }
      const info = chunkTensors(join(work, c.file));
      const ok =
        m.descriptor.hooks.every((h) => {
          const t = info.get(h);
          return (
            t !== undefined &&
            t.dtype === m.descriptor.dtype &&
            t.shape[0] === c.rows &&
            t.end - t.begin === c.rows * (t.shape[1] ?? 0) * BYTES[m.descriptor.dtype]
          );
        }) &&
        (m.descriptor.rowsPerPrompt !== 'all' || info.get(TOKENS)?.shape[0] === c.count);
      if (!ok) {
        drop('its tensors do not match the manifest');
        break;
      }
    } catch {
      drop('the file is missing or unreadable');
      break;
    }
    good.push(c);
    next = c.start + c.count;
  }
  return { good, dropped };
}

function fileSha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The prompt (index in the run) that row `row` of a chunk belongs to. */
function promptOfRow(chunk: ActivationChunk, d: ActivationRunDescriptor, row: number): number {
  if (d.rowsPerPrompt !== 'all') return chunk.start + Math.floor(row / d.rowsPerPrompt);
  let end = 0;
  const counts = chunk.tokenCounts ?? [];
  for (let k = 0; k < counts.length; k++) {
    end += counts[k];
    if (row < end) return chunk.start + k;
  }
  return chunk.start + counts.length - 1;
}

/** Delete files of the work directory that the manifest does not list (orphans, temp files). */
function removeStrays(work: string, m: Manifest): void {
  const keep = new Set([MANIFEST, LOCK, ...m.chunks.map((c) => c.file)]);
  for (const f of readdirSync(work))
    if (!keep.has(f)) rmSync(join(work, f), { force: true, recursive: true });
}

function writeAll(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

// ---------------------------------------------------------------------------------------------
// Chunk files

function chunkTensors(path: string): Map<string, SafetensorsTensorInfo> {
  return readSafetensorsHeader(path).tensors;
}

function readChunkTensorBytes(path: string, name: string): Buffer {
  const t = chunkTensors(path).get(name);
  if (t === undefined) throw new SteerguardError(`${path}: no tensor ${name}`);
  const buf = Buffer.alloc(t.end - t.begin);
  const fd = openSync(path, 'r');
  try {
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, t.begin + off);
      if (n === 0) throw new SteerguardError(`${path}: file is truncated`);
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

function readChunkTokens(path: string, count: number): Int32Array {
  const t = chunkTensors(path).get(TOKENS);
  const tokens = t === undefined ? undefined : readSafetensorsTensorI32(t);
  if (tokens?.length !== count) {
    throw new SteerguardError(`${path}: tokens tensor is missing or the wrong size`);
  }
  return tokens;
}
