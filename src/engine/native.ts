/**
 * The native engine: src/engine/native/steerguard.c (OpenBLAS + OpenMP) behind the Backend interface.
 *
 * scripts/build-native.mjs compiles the C file once per CPU level (build/steerguard-x86-64-v3.node,
 * build/steerguard-x86-64.node, ...) and lists them, best first, in build/steerguard-native.json with
 * the /proc/cpuinfo flags each needs. The loader takes the first one this CPU has every flag of, so a
 * build never runs instructions the CPU lacks; without /proc/cpuinfo (macOS, ...) only levels that
 * need no flag qualify. Loading the addon is the first time its code runs, so the choice is made
 * before, from the flags, not by the addon itself.
 *
 * The addon reads and writes the typed arrays' own memory (no copies) and checks every length and
 * overlap before it does, throwing a TypeError or RangeError with code STEERGUARD_BAD_ARGUMENT that
 * names the argument. Calls are synchronous: a kernel blocks the event loop while it runs.
 *
 * The thread count is process-wide (OpenBLAS has one pool): the last `loadNativeBackend({ threads })`
 * or `setThreads` wins for every NativeBackend in the process, and `threads` always reports it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { SteerguardError } from '../formats/errors.js';
import type { Backend, BackwardKernels } from './backend.js';

/** The kernels every backend has; the addon exports them under the same names and signatures. */
type Kernels = Pick<Backend, 'matmul' | 'rmsnorm' | 'rope' | 'attention' | 'gatedAct'> & {
  matmulQuant: NonNullable<Backend['matmulQuant']>;
};

/** What each build/steerguard-<level>.node exports (see the bindings at the bottom of steerguard.c). */
interface NativeAddon extends Kernels, BackwardKernels {
  setThreads(n: number): void;
  info(): NativeInfo;
}

/** Build facts of the loaded addon. */
export interface NativeInfo {
  /** openblas_get_config(), e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64". */
  readonly config: string;
  /** Threads used by OpenBLAS and by the OpenMP kernels. */
  readonly threads: number;
  /** Instruction set the non-BLAS kernels were compiled for: "avx2+fma", "avx" or "scalar". */
  readonly simd: string;
}

export interface NativeOptions {
  /** Threads for OpenBLAS and the OpenMP kernels. Default: env STEERGUARD_THREADS, else os.availableParallelism(). */
  threads?: number;
  /**
   * Path of the .node file, used as is (no CPU check). Default: env STEERGUARD_NATIVE, else the best
   * level listed in build/steerguard-native.json (build/ is env STEERGUARD_BUILD_DIR when set).
   */
  addonPath?: string;
}

/** The native engine cannot be used here: not built, no level for this CPU, or it does not load. */
export class NativeUnavailableError extends SteerguardError {
  override readonly name = 'NativeUnavailableError';
  /**
   * @param reason what is missing, in a few words, for one-line notices
   * @param remedy what to do about it
   */
  constructor(
    readonly reason: string,
    remedy: string,
  ) {
    super(`native engine: ${reason}. ${remedy}`);
  }
}

const BUILD_HINT =
  'Run `npm run build:native` (or `node scripts/build-native.mjs`); it needs a C compiler with OpenMP ' +
  'and OpenBLAS (Debian/Ubuntu: apt-get install build-essential libopenblas-dev).';

/** build/steerguard-native.json, as scripts/build-native.mjs writes it. */
interface BuildManifest {
  variants: { file: string; level: string; requires: string[] }[];
}

/** A built addon chosen for this CPU. */
interface AddonFile {
  file: string;
  /** The CPU level it was compiled for ("x86-64-v3", "x86-64", "portable", "custom"), or the file name of an explicit path. */
  level: string;
}

/**
 * The package root: the nearest ancestor of this file holding package.json. Walking up works from
 * both src/engine (tsx, tests) and dist/src/engine (compiled); an ancestor that holds the built
 * addon wins, in case a package.json is ever emitted into dist/.
 */
function packageRoots(): string[] {
  const roots: string[] = [];
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) roots.push(dir);
    const parent = path.dirname(dir);
    if (parent === dir) return roots;
    dir = parent;
  }
}

function isSteerguardRoot(dir: string): boolean {
  try {
    return (
      (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name ===
      'steerguard'
    );
  } catch {
    return false;
  }
}

const MANIFEST = 'steerguard-native.json';

function buildDir(): string {
  const env = process.env.STEERGUARD_BUILD_DIR;
  if (env) return path.resolve(env);
  const roots = packageRoots().filter(isSteerguardRoot);
  const root = roots.find((r) => existsSync(path.join(r, 'build', MANIFEST))) ?? roots[0];
  if (!root) {
    throw new SteerguardError(
      `native engine: cannot find the steerguard package root above ${import.meta.url}`,
    );
  }
  return path.join(root, 'build');
}

let cpuFlagsRead: Set<string> | undefined;

/** The CPU's feature flags from /proc/cpuinfo (x86 "flags" line, read once); empty where there is none. */
function cpuFlags(): Set<string> {
  if (cpuFlagsRead) return cpuFlagsRead;
  let text = '';
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // not Linux: only the builds that need no flag qualify
  }
  const line = /^flags\s*:(.*)$/m.exec(text);
  cpuFlagsRead = new Set(line ? line[1].trim().split(/\s+/) : []);
  return cpuFlagsRead;
}

function readManifest(file: string): BuildManifest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new NativeUnavailableError(`not built: ${file} is missing`, BUILD_HINT);
    }
    throw new NativeUnavailableError(`${file} is unreadable (${(e as Error).message})`, BUILD_HINT);
  }
  const variants = (parsed as { variants?: unknown }).variants;
  const valid =
    Array.isArray(variants) &&
    variants.every(
      (v: { file?: unknown; level?: unknown; requires?: unknown }) =>
        typeof v.file === 'string' &&
        typeof v.level === 'string' &&
        Array.isArray(v.requires) &&
        v.requires.every((f) => typeof f === 'string'),
    );
  if (!valid) throw new NativeUnavailableError(`${file}: variants is malformed`, BUILD_HINT);
  return { variants: variants as BuildManifest['variants'] };
}

function findAddon(explicit: string | undefined): AddonFile {
  if (explicit) return { file: path.resolve(explicit), level: path.basename(explicit) };
  const dir = buildDir();
  const { variants } = readManifest(path.join(dir, MANIFEST));
  const flags = cpuFlags();
  const best = variants.find((v) => v.requires.every((f) => flags.has(f)));
  if (!best) {
    throw new NativeUnavailableError(
      `none of the built levels (${variants.map((v) => v.level).join(', ')}) runs on this CPU`,
      'Rebuild on this machine with `STEERGUARD_CFLAGS="-O3 -march=native" node scripts/build-native.mjs`.',
    );
  }
  return { file: path.join(dir, best.file), level: best.level };
}

function defaultThreads(): number {
  const env = process.env.STEERGUARD_THREADS;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) {
      throw new SteerguardError(`STEERGUARD_THREADS must be a positive integer, got '${env}'`);
    }
    return n;
  }
  return os.availableParallelism();
}

/** Loaded addons by path, so a second loadNativeBackend() skips the file checks. */
const loaded = new Map<string, NativeAddon>();

function loadAddon(file: string): NativeAddon {
  const cached = loaded.get(file);
  if (cached) return cached;
  if (!existsSync(file)) throw new NativeUnavailableError(`not built: ${file} is missing`, BUILD_HINT);
  // OpenBLAS keeps its own thread pool next to OpenMP's. Under libgomp's default wait policy idle
  // OpenMP threads spin after each kernel and fight OpenBLAS's threads for the cores: on the shared
  // 2-core machine, one run in ten of a decode-like kernel sequence took ~35x longer (docs/ENGINE.md).
  // Passive threads sleep at once and cost microseconds to wake. libgomp reads this variable once,
  // when the addon loads it, so it is set here; a value the user set wins.
  if (!process.env.OMP_WAIT_POLICY) process.env.OMP_WAIT_POLICY = 'PASSIVE';
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (e) {
    throw new NativeUnavailableError(
      `cannot load ${file}: ${(e as Error).message}`,
      'Rebuild it with `node scripts/build-native.mjs --force` (is libopenblas still installed?).',
    );
  }
  loaded.set(file, addon);
  return addon;
}

/** The kernels of backend.ts on the CPU, through OpenBLAS and OpenMP, plus quantised extras. */
export class NativeBackend implements Backend, Kernels {
  readonly matmul: Kernels['matmul'];
  readonly rmsnorm: Kernels['rmsnorm'];
  readonly rope: Kernels['rope'];
  readonly attention: Kernels['attention'];
  readonly gatedAct: Kernels['gatedAct'];
  readonly matmulQuant: Kernels['matmulQuant'];
  readonly backward: BackwardKernels;

  /** @internal use loadNativeBackend() */
  constructor(
    private readonly addon: NativeAddon,
    /** The CPU level of the loaded build, e.g. "x86-64-v3"; the file name for an explicit addonPath. */
    readonly level: string,
  ) {
    // The addon's functions are the kernels themselves (they ignore `this`), so no wrapper restates them.
    this.matmul = addon.matmul;
    this.rmsnorm = addon.rmsnorm;
    this.rope = addon.rope;
    this.attention = addon.attention;
    this.gatedAct = addon.gatedAct;
    this.matmulQuant = addon.matmulQuant;
    this.backward = {
      matmulBackward: addon.matmulBackward,
      rmsnormBackward: addon.rmsnormBackward,
      ropeBackward: addon.ropeBackward,
      attentionBackward: addon.attentionBackward,
      gatedActBackward: addon.gatedActBackward,
    };
  }

  get name(): string {
    const i = this.addon.info();
    const blas = /OpenBLAS\s+\S+/.exec(i.config)?.[0] ?? i.config;
    return `native (${blas}, ${this.level}, ${i.simd}, ${i.threads} thread${i.threads === 1 ? '' : 's'})`;
  }

  get threads(): number {
    return this.addon.info().threads;
  }

  /** Build facts: the OpenBLAS configuration string, thread count and SIMD level. */
  info(): NativeInfo {
    return this.addon.info();
  }

  /** Threads for OpenBLAS and the OpenMP kernels, for the whole process. */
  setThreads(n: number): void {
    this.addon.setThreads(n);
  }
}

/**
 * Loads the best build of the addon for this CPU and sets the process-wide thread count.
 * Throws a NativeUnavailableError that says how to build it when no build is there, none fits the
 * CPU, or it cannot load; a SteerguardError for a bad thread count.
 */
export function loadNativeBackend(options: NativeOptions = {}): NativeBackend {
  const chosen = findAddon(options.addonPath ?? process.env.STEERGUARD_NATIVE);
  const addon = loadAddon(chosen.file);
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1) {
    throw new SteerguardError(`native engine: threads must be a positive integer, got ${threads}`);
  }
  addon.setThreads(threads);
  return new NativeBackend(addon, chosen.level);
}
