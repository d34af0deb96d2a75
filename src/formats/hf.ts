/**
 * Hugging Face model directories (config.json + safetensors weights + tokenizer files), the local
 * hub cache layout shared with the Python `huggingface_hub`, and downloading into it.
 *
 * Cache layout: <cache>/models--<org>--<name>/refs/<revision> holds a commit sha, and
 * <cache>/models--<org>--<name>/snapshots/<sha>/ holds the files (symlinks into blobs/).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import { FormatError, SteerguardError } from './errors.js';
import { readJsonObject, requireRegularFile } from './files.js';
import { readSafetensorsHeader, type SafetensorsTensorInfo } from './safetensors.js';
import { Tokenizer } from './tokenizer.js';

type Json = Record<string, unknown>;

export interface HfModelDir {
  readonly dir: string;
  /** Parsed config.json. */
  readonly config: Json;
  readonly generationConfig?: Json;
  /** Path of tokenizer.json, when the directory has one. */
  readonly tokenizerJsonPath?: string;
  readonly tokenizerConfig?: Json;
  /** Contents of chat_template.jinja, where newer repos keep the template. */
  readonly chatTemplate?: string;
  /** The safetensors files holding the weights, in index order. */
  readonly weightFiles: readonly string[];
  /** Every tensor of every shard, by name. */
  readonly tensors: Map<string, SafetensorsTensorInfo>;
}

export interface OpenHfModelDirOptions {
  /** Fail when there are no safetensors weights (default true); false for tokenizer-only folders. */
  readonly requireWeights?: boolean;
}

export type ModelSource = { kind: 'gguf'; path: string } | { kind: 'hf-dir'; dir: string };

export interface PullProgress {
  /** Repository path of the file being fetched. */
  readonly file: string;
  /** 1-based position of `file` among the files to fetch. */
  readonly index: number;
  readonly total: number;
  /** Size in bytes as listed by the Hub. */
  readonly bytes: number;
}

export interface PullOptions {
  /** Branch, tag or commit (default "main"). */
  readonly revision?: string;
  readonly onProgress?: (p: PullProgress) => void;
  /** Hub cache to fill (default: hubCacheDir()). */
  readonly cacheDir?: string;
  /** Hub endpoint (default $HF_ENDPOINT or https://huggingface.co). */
  readonly hubUrl?: string;
  /** Access token for gated/private repos (default $HF_TOKEN). */
  readonly accessToken?: string;
  /** Give up when the Hub has not answered a request within this many ms (default 15000). */
  readonly timeoutMs?: number;
  /** Exact repository paths to fetch instead of the default selection (e.g. one .gguf file). */
  readonly files?: readonly string[];
}

const CONFIG = 'config.json';
const INDEX = 'model.safetensors.index.json';
const SINGLE = 'model.safetensors';

function readOptionalJson(path: string): Json | undefined {
  return existsSync(path) ? readJsonObject(path) : undefined;
}

/** Open a Hugging Face model directory: configs, tokenizer files and the safetensors headers. */
export function openHfModelDir(dir: string, options: OpenHfModelDirOptions = {}): HfModelDir {
  const configPath = join(dir, CONFIG);
  if (!existsSync(configPath)) {
    throw new FormatError(configPath, '', 'missing: a Hugging Face model directory needs config.json');
  }
  const config = readJsonObject(configPath);
  const generationConfig = readOptionalJson(join(dir, 'generation_config.json'));
  const tokenizerJsonPath = existsSync(join(dir, 'tokenizer.json')) ? join(dir, 'tokenizer.json') : undefined;
  const tokenizerConfig = readOptionalJson(join(dir, 'tokenizer_config.json'));
  const jinja = join(dir, 'chat_template.jinja');
  requireRegularFile(jinja);
  const chatTemplate = existsSync(jinja) ? readFileSync(jinja, 'utf8') : undefined;

  const weightFiles: string[] = [];
  const tensors = new Map<string, SafetensorsTensorInfo>();
  const indexPath = join(dir, INDEX);
  if (existsSync(indexPath)) {
    const index = readJsonObject(indexPath);
    const weightMap = index.weight_map;
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
      throw new FormatError(indexPath, 'weight_map', 'missing or not an object');
    }
    const byShard = new Map<string, string[]>();
    for (const [tensor, shard] of Object.entries(weightMap)) {
      if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
        throw new FormatError(
          indexPath,
          `weight_map.${tensor}`,
          `${JSON.stringify(shard)} is not a shard file name`,
        );
      }
      const list = byShard.get(shard) ?? [];
      list.push(tensor);
      byShard.set(shard, list);
    }
    if (byShard.size === 0) throw new FormatError(indexPath, 'weight_map', 'lists no tensors');
    for (const shard of byShard.keys()) {
      if (!existsSync(join(dir, shard))) {
        throw new FormatError(indexPath, 'weight_map', `shard ${shard} is missing from ${dir}`);
      }
    }
    for (const [shard, names] of byShard) {
      const file = readSafetensorsHeader(join(dir, shard));
      weightFiles.push(file.path);
      for (const name of names) {
        if (!file.tensors.has(name)) {
          throw new FormatError(indexPath, `weight_map.${name}`, `tensor is not in shard ${shard}`);
        }
      }
      for (const [name, info] of file.tensors) {
        const other = tensors.get(name);
        if (other) throw new FormatError(file.path, name, `tensor also appears in ${other.file}`);
        tensors.set(name, info);
      }
    }
  } else if (existsSync(join(dir, SINGLE))) {
    const file = readSafetensorsHeader(join(dir, SINGLE));
    weightFiles.push(file.path);
    for (const [name, info] of file.tensors) tensors.set(name, info);
  } else if (options.requireWeights ?? true) {
    const others = safeList(dir).filter((f) => /\.(bin|pt|pth|gguf)$/.test(f));
    throw new FormatError(
      join(dir, SINGLE),
      '',
      `missing: no ${SINGLE} or ${INDEX} in ${dir}` +
        (others.length
          ? ` (found ${others.join(', ')}; only safetensors weights are read from model folders)`
          : ''),
    );
  }
  return {
    dir,
    config,
    generationConfig,
    tokenizerJsonPath,
    tokenizerConfig,
    chatTemplate,
    weightFiles,
    tensors,
  };
}

/**
 * The tokenizer of an HF model directory, with EOS ids from generation_config.json/config.json
 * (some models list several) merged in.
 */
export function openHfTokenizer(model: HfModelDir): Tokenizer {
  if (!model.tokenizerJsonPath) {
    throw new FormatError(
      join(model.dir, 'tokenizer.json'),
      '',
      'missing: the model directory has no tokenizer.json',
    );
  }
  const ids = (v: unknown): number[] =>
    typeof v === 'number' ? [v] : Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number') : [];
  const eosTokenIds = [...ids(model.generationConfig?.eos_token_id), ...ids(model.config.eos_token_id)];
  const bos = ids(model.generationConfig?.bos_token_id ?? model.config.bos_token_id)[0];
  return Tokenizer.fromHfFiles(model.tokenizerJsonPath, model.tokenizerConfig ?? {}, {
    bosTokenId: bos,
    eosTokenIds,
    chatTemplate: model.chatTemplate,
  });
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * The local hub cache, with the precedence of the Python huggingface_hub: $HF_HUB_CACHE, else
 * $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
 */
export function hubCacheDir(): string {
  const env = process.env;
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, 'hub');
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface', 'hub');
}

const REPO_ID = /^([A-Za-z0-9][\w.-]*)\/([\w.-]+?)(?:@([\w./-]+))?$/;
const COMMIT = /^[0-9a-f]{40}$/;

/** Parse `org/name` or `org/name@revision`; undefined if `s` is not shaped like a repo id. */
export function parseRepoId(s: string): { repo: string; revision: string } | undefined {
  const m = REPO_ID.exec(s);
  if (!m || m[2].endsWith('.gguf') || m[1] === '.' || m[1] === '..') return undefined;
  return { repo: `${m[1]}/${m[2]}`, revision: m[3] ?? 'main' };
}

/** The snapshot folder of a cached repo revision, or undefined when it is not cached. */
export function cachedSnapshotDir(
  repo: string,
  revision = 'main',
  cacheDir = hubCacheDir(),
): string | undefined {
  const repoDir = join(cacheDir, `models--${repo.replace('/', '--')}`);
  let sha = revision;
  if (!COMMIT.test(revision)) {
    const ref = join(repoDir, 'refs', revision);
    if (!existsSync(ref)) return undefined;
    sha = readFileSync(ref, 'utf8').trim();
  }
  const snap = join(repoDir, 'snapshots', sha);
  return existsSync(snap) && statSync(snap).isDirectory() ? snap : undefined;
}

function resolveDirectory(dir: string, label: string): ModelSource {
  if (existsSync(join(dir, CONFIG))) return { kind: 'hf-dir', dir };
  const ggufs = safeList(dir).filter((f) => extname(f).toLowerCase() === '.gguf');
  if (ggufs.length === 1) return { kind: 'gguf', path: join(dir, ggufs[0]) };
  if (ggufs.length > 1) {
    throw new SteerguardError(
      `${label} holds several GGUF files (${ggufs.sort().join(', ')}); name the one to use, e.g. ${join(dir, ggufs[0])}`,
    );
  }
  throw new SteerguardError(
    `${label} is neither a Hugging Face model folder (no config.json) nor holds a .gguf file`,
  );
}

/**
 * Find a model: a local .gguf file, a local folder (HF layout, or holding exactly one .gguf), or a
 * Hugging Face repo id `org/name[@revision]` already in the local hub cache.
 */
export function resolveModelSource(nameOrPath: string, options: { cacheDir?: string } = {}): ModelSource {
  if (existsSync(nameOrPath)) {
    const path = resolve(nameOrPath);
    if (statSync(path).isDirectory()) return resolveDirectory(path, path);
    if (extname(path).toLowerCase() === '.gguf') return { kind: 'gguf', path };
    throw new SteerguardError(`${path} is not a .gguf file or a model folder`);
  }
  const id = parseRepoId(nameOrPath);
  if (!id)
    throw new SteerguardError(
      `${nameOrPath}: no such file or folder, and not a Hugging Face repo id (org/name)`,
    );
  const cacheDir = options.cacheDir ?? hubCacheDir();
  const snap = cachedSnapshotDir(id.repo, id.revision, cacheDir);
  if (!snap) {
    const rev = id.revision === 'main' ? '' : `@${id.revision}`;
    throw new SteerguardError(
      `${id.repo}${rev} is not in the local Hugging Face cache (${cacheDir}) and not a local path; ` +
        `download it first with: steerguard pull ${id.repo}${rev}`,
    );
  }
  return resolveDirectory(snap, `${id.repo}@${id.revision} (${snap})`);
}

/** Non-weight files a model folder needs; docs, images and other weight formats are skipped. */
const MODEL_FILES = [
  CONFIG,
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'chat_template.jinja',
  INDEX,
  SINGLE,
];

const NO_ANSWER = 'no answer within';

/**
 * A fetch that gives up when no response (headers) arrives within `ms`; the body of a large
 * download may then take as long as it needs.
 */
function fetchWithTimeout(ms: number): typeof fetch {
  return async (input, init) => {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(new Error(`${NO_ANSWER} ${ms} ms`)), ms);
    const outer = init?.signal;
    if (outer) outer.addEventListener('abort', () => ctrl.abort(outer.reason), { once: true });
    try {
      return await fetch(input, { ...init, signal: ctrl.signal });
    } finally {
      clearTimeout(timer);
    }
  };
}

const NETWORK_CODES =
  /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EPIPE|UND_ERR_\w+)$/;

/**
 * If `e` is a failure to talk to the server (not an HTTP error, not a local file problem), the most
 * specific description in its cause chain, e.g. "getaddrinfo ENOTFOUND huggingface.co".
 */
function networkCause(e: unknown): string | undefined {
  const chain: Error[] = [];
  for (
    let cur: unknown = e;
    cur instanceof Error && chain.length < 8;
    cur = (cur as { cause?: unknown }).cause
  ) {
    chain.push(cur);
  }
  const isNetwork = chain.some((c) => {
    const code = (c as NodeJS.ErrnoException).code;
    return (
      c.message === 'fetch failed' ||
      c.name === 'AbortError' ||
      c.name === 'TimeoutError' ||
      c.message.startsWith(NO_ANSWER) ||
      (typeof code === 'string' && NETWORK_CODES.test(code))
    );
  });
  if (!isNetwork) return undefined;
  for (let i = chain.length - 1; i >= 0; i--) {
    const msg = chain[i].message || (chain[i] as NodeJS.ErrnoException).code;
    if (msg && msg !== 'fetch failed') return msg;
  }
  return chain[0].message;
}

/**
 * Download a model's config, tokenizer and safetensors weights into the local hub cache (the same
 * layout the Python huggingface_hub uses, so either can reuse the other's downloads) and return
 * the snapshot folder. Failures come back as one clear SteerguardError.
 */
export async function pullModel(repo: string, options: PullOptions = {}): Promise<string> {
  const id = parseRepoId(repo);
  if (!id) throw new SteerguardError(`${repo} is not a Hugging Face repo id (org/name)`);
  const revision = options.revision ?? id.revision;
  const hubUrl = options.hubUrl ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co';
  const cacheDir = options.cacheDir ?? hubCacheDir();
  if (process.env.HF_HUB_OFFLINE === '1' && !options.hubUrl) {
    throw new SteerguardError(`cannot download ${id.repo}: HF_HUB_OFFLINE=1 is set`);
  }
  // Loaded on demand: the Hub client is only needed for downloads.
  const hub = await import('@huggingface/hub');
  const common = {
    repo: { type: 'model' as const, name: id.repo },
    hubUrl,
    fetch: fetchWithTimeout(options.timeoutMs ?? 15_000),
    ...((options.accessToken ?? process.env.HF_TOKEN)
      ? { accessToken: (options.accessToken ?? process.env.HF_TOKEN) as `hf_${string}` }
      : {}),
  };
  // The Hub client announces each download with console.debug, which would land in the middle of
  // the CLI's stdout (and its --json output); progress goes through onProgress instead.
  const debug = console.debug;
  console.debug = () => {};
  try {
    const info = await hub.modelInfo({ ...common, name: id.repo, additionalFields: ['sha'], revision });
    const sha = info.sha;
    if (typeof sha !== 'string' || !COMMIT.test(sha)) {
      throw new SteerguardError(`the Hub gave no commit for ${id.repo}@${revision}`);
    }
    const listed: { path: string; size: number }[] = [];
    for await (const entry of hub.listFiles({ ...common, revision: sha })) {
      if (entry.type === 'file') listed.push(entry);
    }
    let entries = listed.filter((e) =>
      options.files ? options.files.includes(e.path) : MODEL_FILES.includes(e.path),
    );
    if (!options.files && listed.some((e) => e.path === INDEX)) {
      // Sharded weights: fetch exactly the shards the index names (repos often also carry
      // consolidated or differently-split copies that would double the download).
      const indexPath = await hub.downloadFileToCacheDir({ ...common, path: INDEX, revision: sha, cacheDir });
      const weightMap = readJsonObject(indexPath).weight_map;
      const shards = new Set(
        typeof weightMap === 'object' && weightMap !== null ? Object.values(weightMap) : [],
      );
      entries = [...entries, ...listed.filter((e) => shards.has(e.path))];
    }
    if (options.files) {
      const missing = options.files.filter((f) => !entries.some((e) => e.path === f));
      if (missing.length)
        throw new SteerguardError(`${id.repo}@${revision} has no file ${missing.join(', ')}`);
    } else if (!entries.some((e) => e.path === CONFIG)) {
      throw new SteerguardError(
        `${id.repo} has no config.json, so it is not a transformers model; for GGUF repos pass the file to fetch`,
      );
    }
    let index = 0;
    for (const entry of entries) {
      index++;
      options.onProgress?.({ file: entry.path, index, total: entries.length, bytes: entry.size });
      await hub.downloadFileToCacheDir({ ...common, path: entry.path, revision: sha, cacheDir });
    }
    // downloadFileToCacheDir does not record the branch, so write refs/<revision> the way
    // huggingface_hub does; resolveModelSource finds the snapshot through it.
    if (revision !== sha) {
      const refs = join(cacheDir, `models--${id.repo.replace('/', '--')}`, 'refs');
      mkdirSync(join(refs, ...revision.split('/').slice(0, -1)), { recursive: true });
      writeFileSync(join(refs, revision), sha);
    }
    return join(cacheDir, `models--${id.repo.replace('/', '--')}`, 'snapshots', sha);
  } catch (e) {
    if (e instanceof SteerguardError) throw e;
    const cause = networkCause(e);
    if (cause) {
      const cached = cachedSnapshotDir(id.repo, revision, cacheDir);
      throw new SteerguardError(
        `could not reach the Hugging Face Hub at ${hubUrl} to download ${id.repo} (network error: ${cause})` +
          (cached ? `; a cached copy is at ${cached} and can be used as ${id.repo} without pulling` : ''),
      );
    }
    const status = (e as { statusCode?: number }).statusCode;
    if (status === 401 || status === 403) {
      throw new SteerguardError(
        `${id.repo}: access denied by the Hub (HTTP ${status}); for gated or private models set HF_TOKEN`,
      );
    }
    if (status === 404)
      throw new SteerguardError(`${id.repo}@${revision}: not found on the Hugging Face Hub`);
    throw new SteerguardError(`downloading ${id.repo} failed: ${(e as Error).message}`);
  } finally {
    console.debug = debug;
  }
}
