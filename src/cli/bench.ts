/**
 * `steerguard bench`: steerguard against llama.cpp (node-llama-cpp) on the same GGUF file, the
 * same token ids and the same thread count, plus the cost of steerguard's hooks, the rate of
 * batched generation and how close generation comes to the machine's memory bandwidth. With a
 * natively built `llama-bench` (scripts/build-llama-bench.sh), llama.cpp is also measured that way:
 * the same workload shape (prompt length, generated tokens, threads), but llama-bench's own token
 * ids, and its generation test starts from an empty context rather than after the prompt.
 *
 * Each measurement runs in a child process of its own (`steerguard bench-worker`), one at a time:
 * peak RSS is a per-process number, so measuring both engines in one process would charge each
 * with the other's memory, and running them at once would make them fight over the cores.
 * Repeats interleave: repeat r runs one worker per engine, in an order rotated by r, so that drift
 * (thermal, other load) and going first hit every engine alike, and the medians come from workers
 * spread over the whole run rather than from one engine's block of it.
 *
 * Timing rules, the same for both engines:
 * - prompt processing: each prompt is one forward pass over all its tokens (batch of one
 *   sequence), timed from the call to the logits of its last token; rate = tokens / seconds over
 *   all prompts;
 * - generation: after each prompt, `genTokens` single-token decode steps, greedy, batch 1, EOS
 *   ignored; the prompt pass is excluded;
 * - each worker process makes one untimed warm-up run first; every figure is the median over
 *   `repeats` workers, shown with their range.
 *
 * The 1-minute load average is read before the run and after each worker. Figures from a machine
 * where other processes held the cores the engines need are flagged (`busy`), since they say more
 * about the other processes than about the engines.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { OptionError, SteerguardError } from '../formats/errors.js';
import type { Hook, HookName } from '../hooks/hooks.js';
import type { WeightStorage } from '../model/load.js';
import { type ModelWeights, matrixBytes } from '../model/weights.js';
import { formatTable } from './output.js';

/** What to measure. */
export interface BenchSettings {
  readonly threads: number;
  readonly prompts: number;
  readonly promptTokens: number;
  readonly genTokens: number;
  /** Workers per engine; each figure is the median over them. */
  readonly repeats: number;
  /** Also time steerguard with hooks reading and editing every hook_resid_post. */
  readonly hookOverhead: boolean;
  /** Also run llama.cpp. */
  readonly llamacpp: boolean;
  /**
   * How steerguard holds the weights. 'quantized' (the GGUF's blocks, int8 dot products when
   * generating, as llama.cpp does) also runs an fp32 worker without hooks, so both rows are in one
   * report.
   */
  readonly weights: WeightStorage;
  /** Sequences decoded together for the batched-generation row; 1 leaves the row out. */
  readonly batch: number;
  /** Refuse to start when the 1-minute load average is above this; null: always start. */
  readonly maxLoad: number | null;
  /** A natively built llama-bench binary to measure as well; null: none. */
  readonly llamaBench: string | null;
}

/** What one worker measures; `repeat` (from 0) rotates the order of the hook settings. */
export interface WorkerSettings extends Pick<
  BenchSettings,
  'threads' | 'genTokens' | 'hookOverhead' | 'weights' | 'batch'
> {
  readonly repeat: number;
}

/** Benign text the bench prompts are cut from (any text works; this one is fixed for repeatability). */
export const BENCH_TEXT =
  'The river rises in the hills above the old mill town and winds through orchards, pastures and ' +
  'small stone villages before it reaches the sea. In spring the water runs high and cold with melted ' +
  'snow; by late summer it slows to a clear, shallow stream where children wade and herons fish. ' +
  'Farmers along its banks have kept records of the floods for three hundred years, noting the dates ' +
  'of the first blossoms, the height of the water at the bridge and the size of each harvest. ' +
  'Those notebooks, now kept in the town library, are a quiet history of weather, work and patience. ';

/** Medians over the repeats, in tokens per second. */
export interface Throughput {
  promptTokensPerSecond: number;
  generationTokensPerSecond: number;
  /** Every repeat's figures, in run order. */
  samples: { promptTokensPerSecond: number[]; generationTokensPerSecond: number[] };
}

/** `sequences` prompts decoded together: tokens of all of them per second of decoding steps. */
export interface BatchedThroughput {
  sequences: number;
  /** Median over the repeats. */
  batchedGenerationTokensPerSecond: number;
  /** Every repeat's figure, in run order. */
  samples: number[];
}

/**
 * Single-sequence generation against memory bandwidth: every decode step reads each weight
 * matrix once, so weights per token × tokens/s is a lower bound on the bytes read per second.
 */
export interface MemoryBound {
  /** Bytes of the matrices a decode step multiplies: every layer's, and lm_head (once when tied). */
  weightBytesPerToken: number;
  /**
   * One thread's copy of 256 MiB (read + written bytes per second), best of 5 after a warm-up;
   * over several workers, the best of theirs.
   */
  copyBandwidthGBps: number;
  /** weightBytesPerToken × generation tokens/s ÷ copy bandwidth, as a fraction. */
  bandwidthUse: number;
}

export type HookVariant = 'none' | 'read' | 'add';

export const HOOK_VARIANT_LABELS: Record<HookVariant, string> = {
  none: 'no hooks',
  read: 'read every hook_resid_post (all positions)',
  add: 'add a vector at every hook_resid_post (all positions)',
};

/**
 * What a bench-worker prints (one JSON line on stdout), and, merged over the repeats by
 * {@link mergeRuns}, an engine's figures in the report.
 */
export interface WorkerResult {
  engine: 'steerguard' | 'llamacpp' | 'llama-bench';
  /** steerguard only: how the weights were held. */
  weights?: WeightStorage;
  /** Seconds to load the model (median over the repeats); null: llama-bench does not report it. */
  loadSeconds: number | null;
  /** Figures without hooks. */
  throughput: Throughput;
  /** Steerguard with hooks, when asked. */
  hooks: Partial<Record<HookVariant, Throughput>> | null;
  /**
   * Largest resident set of the worker process, bytes (for steerguard: before any hook ran, before
   * the batched run and the copy-bandwidth buffers); the largest over the repeats. Null when it
   * could not be read (llama-bench without /usr/bin/time or /proc; `build.peakRss` says so).
   */
  peakRssBytes: number | null;
  /** steerguard only, when the batch setting is above 1. */
  batched: BatchedThroughput | null;
  /** steerguard only. */
  memory: MemoryBound | null;
  /** Engine build facts: BLAS config and SIMD level, or llama.cpp release and system info. */
  build: Record<string, string | number | boolean | string[]>;
}

/** The 1-minute load average around a bench run. */
export interface LoadRecord {
  /** Before the first worker. */
  before: number;
  /** After each worker, in run order. */
  samples: number[];
  /** The highest of `before` and `samples`. */
  max: number;
  /** Per sample: the part of it that the bench's own workers account for (see {@link ownLoad}). */
  own: number[];
  /** The highest load of other processes: `before`, and each sample less its own part. */
  othersMax: number;
  /** Other processes' load above this held cores the engines need ({@link busyLoadLimit}). */
  busyAbove: number;
}

export interface BenchReport {
  model: string;
  date: string;
  settings: BenchSettings;
  machine: MachineInfo;
  /** SHA-256 prefix of the prompt ids, to show that runs compared the same input. */
  promptIdsHash: string;
  steerguard: WorkerResult;
  /** fp32-weight figures, when the main run kept the weights quantized. */
  steerguardF32: WorkerResult | null;
  llamacpp: WorkerResult | null;
  /** Why llama.cpp has no figures, when it has none. */
  llamacppError: string | null;
  /** The native llama-bench's figures, when `settings.llamaBench` was given. */
  llamaBench: WorkerResult | null;
  hookOverhead: HookOverheadRow[] | null;
  load: LoadRecord;
  /** Other processes held cores the engines need at some point: the figures are not comparable. */
  busy: boolean;
  /** Wall time of each engine's workers together, seconds (loads, warm-ups and measurements). */
  wallSeconds: {
    steerguard: number;
    steerguardF32: number | null;
    llamacpp: number | null;
    llamaBench: number | null;
  };
}

export interface HookOverheadRow {
  variant: HookVariant;
  label: string;
  promptTokensPerSecond: number;
  generationTokensPerSecond: number;
  /** Time with the hooks over time without (1.05 = 5% slower). */
  promptTimeRatio: number;
  generationTimeRatio: number;
}

export interface MachineInfo {
  cpu: string;
  logicalCores: number;
  availableParallelism: number;
  memoryBytes: number;
  os: string;
  node: string;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function machineInfo(): MachineInfo {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch {
    // not Linux: os.cpus() has it
  }
  return {
    cpu,
    logicalCores: os.cpus().length,
    availableParallelism: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
  };
}

/**
 * Bench prompts: `count` windows of `length` token ids over the tokenized bench text (repeated as
 * needed), each starting at a different offset, after BOS when the model wants one. Built once,
 * by the parent, so both engines get the identical ids.
 */
export async function benchPromptTokens(
  ggufPath: string,
  count: number,
  length: number,
): Promise<number[][]> {
  const { readGguf } = await import('../formats/gguf.js');
  const { Tokenizer } = await import('../formats/tokenizer.js');
  const file = readGguf(ggufPath);
  const tok = Tokenizer.fromGgufMetadata(file.metadata, ggufPath);
  const once = tok.encode(BENCH_TEXT, { addSpecialTokens: false });
  const withSpecial = tok.encode(BENCH_TEXT, { addSpecialTokens: true });
  const bos = tok.bosTokenId;
  const prefix = bos !== undefined && withSpecial[0] === bos && once[0] !== bos ? [bos] : [];
  if (once.length === 0)
    throw new SteerguardError(`${ggufPath}: the tokenizer gives no tokens for the bench text`);
  const stride = 17;
  const need = (count - 1) * stride + length;
  const body: number[] = [];
  while (body.length < need) body.push(...once);
  const n = length - prefix.length;
  if (n < 1) throw new OptionError(`--prompt-tokens must be at least ${prefix.length + 1}`);
  return Array.from({ length: count }, (_, k) => [...prefix, ...body.slice(k * stride, k * stride + n)]);
}

// ---------------------------------------------------------------------------------------------
// Machine load, merging repeats, memory bound (pure, apart from readLoadAverage)

const LOADAVG_FILE = '/proc/loadavg';

/** The 1-minute load average: /proc/loadavg on Linux, os.loadavg() where that file is missing. */
export function readLoadAverage(): number {
  if (!existsSync(LOADAVG_FILE)) return os.loadavg()[0];
  const text = readFileSync(LOADAVG_FILE, 'utf8');
  const load = Number(text.split(/\s+/)[0]);
  if (!Number.isFinite(load)) {
    throw new SteerguardError(`${LOADAVG_FILE}: no 1-minute load average in '${text.trim().slice(0, 60)}'`);
  }
  return load;
}

/**
 * The highest load other processes may put on the machine without taking cores the engines need:
 * the cores left over by `threads` engine threads, plus half a core for daemons and the parent.
 */
export function busyLoadLimit(threads: number, cores: number): number {
  return cores - threads + 0.5;
}

/** Whether a load of other processes held cores that `threads` engine threads need. */
export function isBusy(othersLoad: number, threads: number, cores: number): boolean {
  return othersLoad > busyLoadLimit(threads, cores);
}

/** Time constant of the kernel's 1-minute load average, seconds. */
const LOAD_AVERAGE_SECONDS = 60;

/**
 * The part of the 1-minute load average at time `at` that the bench's own workers account for,
 * each of them counted as `threads` runnable threads from its start to its end (times in
 * seconds). The kernel's average decays by e^(-t/60), so a worker that just finished still shows:
 * without taking it out, the bench's own threads would make a machine with as many cores as
 * threads look busy after every worker.
 */
export function ownLoad(
  workers: readonly { start: number; end: number }[],
  at: number,
  threads: number,
): number {
  let load = 0;
  let time = workers.length > 0 ? workers[0].start : at;
  const decay = (t: number): number => Math.exp(-Math.max(0, t) / LOAD_AVERAGE_SECONDS);
  for (const w of workers) {
    if (w.start >= at) break;
    load *= decay(w.start - time);
    const end = Math.min(w.end, at);
    const d = decay(end - w.start);
    load = load * d + threads * (1 - d);
    time = end;
  }
  return load * decay(at - time);
}

/** The load record of a run, from the reading before it and those after each worker. */
export function summarizeLoad(
  before: number,
  samples: readonly number[],
  own: readonly number[],
  threads: number,
  cores: number,
): LoadRecord {
  const others = samples.map((x, k) => Math.max(0, x - own[k]));
  return {
    before,
    samples: [...samples],
    max: Math.max(before, ...samples),
    own: [...own],
    othersMax: Math.max(before, ...others),
    busyAbove: busyLoadLimit(threads, cores),
  };
}

/** The order in which the engines run in repeat `repeat`: rotated, so each one goes first in turn. */
export function engineOrder<T>(engines: readonly T[], repeat: number): T[] {
  return engines.map((_, k) => engines[(k + repeat) % engines.length]);
}

/** Fraction of the copy bandwidth that reading `weightBytesPerToken` at `tokensPerSecond` takes. */
export function bandwidthUse(weightBytesPerToken: number, tokensPerSecond: number, copyGBps: number): number {
  return (weightBytesPerToken * tokensPerSecond) / (copyGBps * 1e9);
}

function mergeThroughput(ts: readonly Throughput[]): Throughput {
  const pp = ts.flatMap((t) => t.samples.promptTokensPerSecond);
  const gen = ts.flatMap((t) => t.samples.generationTokensPerSecond);
  return {
    promptTokensPerSecond: median(pp),
    generationTokensPerSecond: median(gen),
    samples: { promptTokensPerSecond: pp, generationTokensPerSecond: gen },
  };
}

/**
 * One engine's figures from its workers (one per repeat, in run order): every sample kept, the
 * medians of them, the largest peak RSS, the median load time and the best copy bandwidth.
 */
export function mergeRuns(runs: readonly WorkerResult[]): WorkerResult {
  if (runs.length === 0) throw new SteerguardError('mergeRuns: no worker results');
  const first = runs[0];
  const throughput = mergeThroughput(runs.map((w) => w.throughput));
  let hooks: WorkerResult['hooks'] = null;
  if (first.hooks) {
    hooks = {};
    for (const v of ['none', 'read', 'add'] as const) {
      const ts = runs.flatMap((w) => w.hooks?.[v] ?? []);
      if (ts.length > 0) hooks[v] = mergeThroughput(ts);
    }
  }
  let batched: BatchedThroughput | null = null;
  if (first.batched) {
    const samples = runs.flatMap((w) => w.batched?.samples ?? []);
    batched = {
      sequences: first.batched.sequences,
      batchedGenerationTokensPerSecond: median(samples),
      samples,
    };
  }
  let memory: MemoryBound | null = null;
  if (first.memory) {
    const copyBandwidthGBps = Math.max(...runs.map((w) => w.memory?.copyBandwidthGBps ?? 0));
    const bytes = first.memory.weightBytesPerToken;
    memory = {
      weightBytesPerToken: bytes,
      copyBandwidthGBps,
      bandwidthUse: bandwidthUse(bytes, throughput.generationTokensPerSecond, copyBandwidthGBps),
    };
  }
  const loads = runs.flatMap((w) => (w.loadSeconds === null ? [] : [w.loadSeconds]));
  const rss = runs.flatMap((w) => (w.peakRssBytes === null ? [] : [w.peakRssBytes]));
  return {
    ...first,
    loadSeconds: loads.length > 0 ? median(loads) : null,
    throughput,
    hooks,
    peakRssBytes: rss.length > 0 ? Math.max(...rss) : null,
    batched,
    memory,
  };
}

/** Bytes of the weight matrices one decode step multiplies (the embedding is looked up, not read). */
export function weightBytesPerToken(weights: ModelWeights): number {
  let bytes = matrixBytes(weights.lmHead);
  for (const l of weights.layers)
    for (const m of [l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown]) bytes += matrixBytes(m);
  return bytes;
}

const MIB = 1024 * 1024;

/**
 * One thread's memory copy rate, GB/s of bytes read plus written: the best of 5 copies of a
 * 256 MiB buffer (far past any cache), after one copy that faults the destination's pages in.
 */
function copyBandwidthGBps(): number {
  const size = 256 * MIB;
  const src = Buffer.alloc(size, 1);
  const dst = Buffer.allocUnsafeSlow(size);
  src.copy(dst);
  let best = Infinity;
  for (let k = 0; k < 5; k++) {
    const t = performance.now();
    src.copy(dst);
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return (2 * size) / best / 1e9;
}

// ---------------------------------------------------------------------------------------------
// Workers (run inside `steerguard bench-worker`)

/** Small, fixed pseudo-random vector: an edit that touches every value but changes little. */
function smallVector(d: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const v = new Float32Array(d);
  for (let i = 0; i < d; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    v[i] = (a / 2 ** 32 - 0.5) * 2e-3;
  }
  return v;
}

/**
 * A hook on hook_embed (which fires first in every forward pass) that notes when decoding step 1
 * starts: timing from there leaves the prompt passes of step 0 out.
 */
function stepOneTimer(): { hook: Hook; start: () => number } {
  let stepOne = 0;
  return {
    hook: {
      name: 'hook_embed',
      fn: (_act, ctx) => {
        if (ctx.step === 1 && stepOne === 0) stepOne = performance.now();
      },
    },
    start: () => stepOne,
  };
}

/** One steerguard worker: a warm-up, then one timed run of every setting. */
export async function steerguardWorker(
  modelPath: string,
  prompts: number[][],
  s: WorkerSettings,
): Promise<WorkerResult> {
  const { Model } = await import('../model/model.js');
  const { addVector } = await import('../hooks/interventions.js');
  const { blockHook } = await import('../hooks/hooks.js');
  const t0 = performance.now();
  const model = await Model.load(modelPath, { threads: s.threads, weights: s.weights });
  const loadSeconds = (performance.now() - t0) / 1000;
  const residPost: HookName[] = Array.from({ length: model.config.nLayers }, (_, l) =>
    blockHook(l, 'hook_resid_post'),
  );
  const vector = smallVector(model.config.dModel, 1);

  const variants: HookVariant[] = s.hookOverhead ? ['none', 'read', 'add'] : ['none'];
  const genHooks = (v: HookVariant, sink: Float32Array[]): Hook[] =>
    v === 'read'
      ? residPost.map((name) => ({ name, fn: (act: Float32Array) => void sink.push(act.slice()) }))
      : v === 'add'
        ? residPost.map((name) => addVector(name, vector, { positions: 'all' }))
        : [];

  const measure = async (
    v: HookVariant,
    batch: number[][],
    genTokens: number,
  ): Promise<{ pp: number; gen: number }> => {
    let ppTokens = 0;
    let ppSeconds = 0;
    for (const p of batch) {
      const start = performance.now();
      model.run([{ tokens: p }], {
        logits: 'last',
        hooks: v === 'add' ? genHooks('add', []) : undefined,
        cache: v === 'read' ? { names: residPost, positions: 'all' } : undefined,
      });
      ppSeconds += (performance.now() - start) / 1000;
      ppTokens += p.length;
    }
    let genSeconds = 0;
    for (const p of batch) {
      const timer = stepOneTimer();
      const sink: Float32Array[] = [];
      await model.generate([{ tokens: p }], {
        maxNewTokens: genTokens + 1,
        stopTokens: [],
        hooks: [timer.hook, ...genHooks(v, sink)],
      });
      genSeconds += (performance.now() - timer.start()) / 1000;
    }
    return { pp: ppTokens / ppSeconds, gen: (genTokens * batch.length) / genSeconds };
  };

  // Warm-up at full prompt length in every setting: the first calls pay for page faults on the
  // weights, BLAS buffers for the batch shape, thread start-up and compiling the hook code, and
  // a short warm-up leaves some of that to the first timed variant.
  // Peak RSS is taken after the no-hooks warm-up (variants[0]), before any hook has run: prompts
  // all have the same length, so the timed runs reach no higher.
  let peakRssBytes = 0;
  for (const v of variants) {
    await measure(v, prompts.slice(0, 1), Math.min(s.genTokens, 16));
    if (v === 'none') peakRssBytes = process.resourceUsage().maxRSS * 1024;
  }

  // The variants' order rotates with the repeat, so that drift and going first or last hit each
  // of them alike over the repeats.
  const timed = new Map<HookVariant, Throughput>();
  for (const v of engineOrder(variants, s.repeat)) {
    const m = await measure(v, prompts, s.genTokens);
    timed.set(v, {
      promptTokensPerSecond: m.pp,
      generationTokensPerSecond: m.gen,
      samples: { promptTokensPerSecond: [m.pp], generationTokensPerSecond: [m.gen] },
    });
  }

  let batched: BatchedThroughput | null = null;
  if (s.batch > 1) {
    const timer = stepOneTimer();
    await model.generate(
      Array.from({ length: s.batch }, (_, k) => ({ tokens: prompts[k % prompts.length] })),
      { maxNewTokens: s.genTokens + 1, stopTokens: [], maxBatch: s.batch, hooks: [timer.hook] },
    );
    const rate = (s.batch * s.genTokens) / ((performance.now() - timer.start()) / 1000);
    batched = { sequences: s.batch, batchedGenerationTokensPerSecond: rate, samples: [rate] };
  }

  // Last, so that its 512 MiB of buffers stay out of the peak RSS and out of the caches above.
  const copyGBps = copyBandwidthGBps();
  const weightBytes = weightBytesPerToken(model.weights);
  const none = timed.get('none')!;

  const backend = model.backend as {
    name: string;
    info?: () => { config: string; simd: string; threads: number };
  };
  const info = backend.info?.();
  return {
    engine: 'steerguard',
    weights: s.weights,
    loadSeconds,
    throughput: none,
    hooks: s.hookOverhead ? Object.fromEntries(timed) : null,
    peakRssBytes,
    batched,
    memory: {
      weightBytesPerToken: weightBytes,
      copyBandwidthGBps: copyGBps,
      bandwidthUse: bandwidthUse(weightBytes, none.generationTokensPerSecond, copyGBps),
    },
    build: {
      backend: backend.name,
      ...(info ? { blasConfig: info.config, simd: info.simd, threads: info.threads } : {}),
    },
  };
}

/** One llama.cpp worker: a warm-up, then one timed run. */
export async function llamaCppWorker(
  modelPath: string,
  prompts: number[][],
  s: Pick<BenchSettings, 'threads' | 'genTokens'>,
): Promise<WorkerResult> {
  const { loadLlamaCpp } = await import('../reference/llamacpp.js');
  const longest = Math.max(...prompts.map((p) => p.length));
  const t0 = performance.now();
  const handle = await loadLlamaCpp(modelPath, {
    threads: s.threads,
    batchSize: Math.max(512, longest),
    contextSize: Math.max(1024, longest + s.genTokens + 16),
  });
  const loadSeconds = (performance.now() - t0) / 1000;
  try {
    const res = await handle.bench({ promptTokens: prompts, genTokens: s.genTokens, warmup: true });
    const pp = res.promptTokensPerSecond;
    const gen = res.generationTokensPerSecond;
    const i = handle.info;
    return {
      engine: 'llamacpp',
      loadSeconds,
      throughput: {
        promptTokensPerSecond: pp,
        generationTokensPerSecond: gen,
        samples: { promptTokensPerSecond: [pp], generationTokensPerSecond: [gen] },
      },
      hooks: null,
      peakRssBytes: res.peakRssBytes,
      batched: null,
      memory: null,
      build: {
        nodeLlamaCpp: i.nodeLlamaCppVersion,
        llamaCppRelease: i.llamaCppRelease,
        llamaCppRepo: i.llamaCppRepo,
        buildType: i.buildType,
        systemInfo: i.systemInfo,
        cpuFeatures: i.cpuFeatures,
        threads: i.threads,
        kvCacheType: i.kvCacheType,
        flashAttention: i.flashAttention,
      },
    };
  } finally {
    await handle.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Native llama-bench (run by the parent directly: it is its own process already)

/** What a llama-bench run is expected to have measured: its `-p`, `-n` and `-t`. */
export interface LlamaBenchShape {
  readonly promptTokens: number;
  readonly genTokens: number;
  readonly threads: number;
}

/** The rates of one `llama-bench -o json` run, and its build facts. */
export interface LlamaBenchFigures {
  promptTokensPerSecond: number;
  generationTokensPerSecond: number;
  build: Record<string, string | number | boolean>;
}

type JsonObject = Record<string, unknown>;

const isObject = (x: unknown): x is JsonObject => typeof x === 'object' && x !== null && !Array.isArray(x);

/** Build facts copied from llama-bench's JSON, when present. */
const LLAMA_BENCH_BUILD_FIELDS = [
  'build_commit',
  'build_number',
  'cpu_info',
  'backends',
  'model_type',
  'n_batch',
  'n_ubatch',
  'type_k',
  'type_v',
  'flash_attn',
] as const;

/**
 * The prompt-processing and generation rates (`avg_ts`) in the JSON array `llama-bench -o json`
 * prints: the test with n_prompt = promptTokens and n_gen = 0, and the one with n_prompt = 0 and
 * n_gen = genTokens, both at the expected thread count. `source` (the binary) names the errors.
 */
export function parseLlamaBenchJson(text: string, shape: LlamaBenchShape, source: string): LlamaBenchFigures {
  const fail = (why: string): never => {
    throw new SteerguardError(`llama-bench (${source}): ${why}`);
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    const start = text.trim().slice(0, 80);
    return fail(`its output is not JSON (it starts '${start}'); was it run with -o json?`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every(isObject)) {
    return fail('its JSON output is not a non-empty array of test results');
  }
  const tests = parsed as JsonObject[];
  const find = (kind: string, nPrompt: number, nGen: number): number => {
    const t = tests.find((x) => x.n_prompt === nPrompt && x.n_gen === nGen);
    if (!t) return fail(`its JSON output has no ${kind} test (n_prompt ${nPrompt}, n_gen ${nGen})`);
    if (t.n_threads !== undefined && t.n_threads !== shape.threads) {
      fail(`its ${kind} test ran with n_threads ${String(t.n_threads)}, not ${shape.threads}`);
    }
    const rate = t.avg_ts;
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0) {
      return fail(`its ${kind} test has no positive finite avg_ts (got ${JSON.stringify(rate)})`);
    }
    return rate;
  };
  const promptTokensPerSecond = find('prompt-processing', shape.promptTokens, 0);
  const generationTokensPerSecond = find('generation', 0, shape.genTokens);
  const build: Record<string, string | number | boolean> = {};
  for (const field of LLAMA_BENCH_BUILD_FIELDS) {
    const v = tests[0][field];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') build[field] = v;
  }
  return { promptTokensPerSecond, generationTokensPerSecond, build };
}

/** How a child's peak RSS is read: GNU time's %M, polling /proc/PID/status VmHWM, or not at all. */
export type RssProbe = 'gnu-time' | 'proc-vmhwm' | 'none';

const GNU_TIME = '/usr/bin/time';

export const RSS_PROBE_LABELS: Record<RssProbe, string> = {
  'gnu-time': `${GNU_TIME} -f %M`,
  'proc-vmhwm': 'VmHWM polled from /proc/PID/status every 50 ms',
  none: 'not measured (no GNU /usr/bin/time and no /proc)',
};

/** Where a peak RSS figure came from, or why there is none. */
function rssSourceLabel(probe: RssProbe, measured: boolean): string {
  if (measured || probe === 'none') return RSS_PROBE_LABELS[probe];
  return `not measured (${RSS_PROBE_LABELS[probe]} gave no reading)`;
}

/** The best way this machine has to read a child's peak RSS (tries `/usr/bin/time -f %M` once). */
export function chooseRssProbe(dir: string): RssProbe {
  if (existsSync(GNU_TIME)) {
    const file = path.join(dir, 'time-probe.txt');
    const r = spawnSync(GNU_TIME, ['-f', '%M', '-o', file, 'true'], { stdio: 'ignore' });
    if (r.status === 0 && existsSync(file) && /^\d+\s*$/.test(readFileSync(file, 'utf8'))) return 'gnu-time';
  }
  return existsSync('/proc/self/status') ? 'proc-vmhwm' : 'none';
}

/** Refuses a --llama-bench path that is not an executable file, before anything is measured. */
export function checkLlamaBenchBinary(binary: string): void {
  if (!existsSync(binary) || !statSync(binary).isFile()) {
    throw new OptionError(
      `--llama-bench ${binary}: no such file (build one with scripts/build-llama-bench.sh)`,
    );
  }
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    throw new OptionError(`--llama-bench ${binary}: not executable`);
  }
}

/**
 * One run of `llama-bench -m MODEL -t T -p P -n G -r 1 -o json` (it warms up by itself), as a
 * worker result with its peak RSS read by `probe`. stderr lines go to `onLine`; a failure is an
 * error naming llama-bench, with the end of its stderr.
 */
export function runLlamaBench(
  binary: string,
  modelPath: string,
  shape: LlamaBenchShape,
  probe: RssProbe,
  dir: string,
  onLine: (line: string) => void,
): Promise<WorkerResult> {
  const args = ['-m', modelPath, '-t', String(shape.threads), '-p', String(shape.promptTokens)];
  args.push('-n', String(shape.genTokens), '-r', '1', '-o', 'json');
  const rssFile = path.join(dir, 'llama-bench-rss.txt');
  rmSync(rssFile, { force: true });
  const [file, argv] =
    probe === 'gnu-time' ? [GNU_TIME, ['-f', '%M', '-o', rssFile, binary, ...args]] : [binary, args];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let hwmKiB = 0;
    const poll =
      probe === 'proc-vmhwm'
        ? setInterval(() => {
            try {
              const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
              if (m) hwmKiB = Math.max(hwmKiB, Number(m[1]));
            } catch {
              // the process has just exited; the readings so far stand
            }
          }, 50)
        : undefined;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      for (const line of d.split('\n')) if (line.trim() !== '') onLine(line);
    });
    child.on('error', (err) => {
      clearInterval(poll);
      reject(new SteerguardError(`llama-bench (${binary}) did not start: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearInterval(poll);
      if (code !== 0) {
        const tail = stderr.trim().split('\n').slice(-6).join('\n');
        reject(new SteerguardError(`llama-bench (${binary}) failed (${signal ?? `exit ${code}`}): ${tail}`));
        return;
      }
      try {
        const f = parseLlamaBenchJson(stdout, shape, binary);
        let peakRssBytes: number | null = null;
        if (probe === 'gnu-time') {
          const kib = Number(readFileSync(rssFile, 'utf8').trim());
          if (Number.isFinite(kib) && kib > 0) peakRssBytes = kib * 1024;
        } else if (hwmKiB > 0) {
          peakRssBytes = hwmKiB * 1024;
        }
        const pp = f.promptTokensPerSecond;
        const gen = f.generationTokensPerSecond;
        resolve({
          engine: 'llama-bench',
          loadSeconds: null,
          throughput: {
            promptTokensPerSecond: pp,
            generationTokensPerSecond: gen,
            samples: { promptTokensPerSecond: [pp], generationTokensPerSecond: [gen] },
          },
          hooks: null,
          peakRssBytes,
          batched: null,
          memory: null,
          build: { ...f.build, binary, peakRss: rssSourceLabel(probe, peakRssBytes !== null) },
        });
      } catch (err) {
        reject(err as Error);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Parent

/** Path of the CLI entry, for spawning workers (dist/src/cli/main.js next to this file). */
function mainScript(): string {
  return fileURLToPath(new URL('./main.js', import.meta.url));
}

/** Runs one worker to completion; its stderr is kept and shown only if it fails. */
function runWorker(args: string[], onLine: (line: string) => void): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [mainScript(), 'bench-worker', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      for (const line of d.split('\n')) if (line.trim() !== '') onLine(line);
    });
    // Ctrl-C reaches the whole process group; the worker dies with it and the parent with this.
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) {
        try {
          resolve(JSON.parse(stdout) as WorkerResult);
        } catch {
          reject(new SteerguardError(`bench worker printed no result (stdout: ${stdout.slice(0, 200)})`));
        }
        return;
      }
      const tail = stderr.trim().split('\n').slice(-6).join('\n');
      reject(new SteerguardError(`bench worker ${args[1]} failed (${signal ?? `exit ${code}`}): ${tail}`));
    });
  });
}

export type EngineKey = 'steerguard' | 'steerguardF32' | 'llamacpp' | 'llamaBench';

/**
 * The engines a run measures, in their order for repeat 0 (later repeats rotate it): steerguard,
 * its fp32 run when the weights are quantized, llama.cpp through node-llama-cpp, native llama-bench.
 */
export function benchEngines(s: BenchSettings): { key: EngineKey; label: string }[] {
  return [
    { key: 'steerguard' as const, label: `steerguard${s.weights === 'quantized' ? '' : ` ${s.weights}`}` },
    ...(s.weights === 'quantized' ? [{ key: 'steerguardF32' as const, label: 'steerguard f32' }] : []),
    ...(s.llamacpp ? [{ key: 'llamacpp' as const, label: 'llama.cpp (node-llama-cpp)' }] : []),
    ...(s.llamaBench !== null
      ? [{ key: 'llamaBench' as const, label: 'llama.cpp (native llama-bench)' }]
      : []),
  ];
}

/** bench-worker arguments for an engine that runs in a worker. */
function workerEngineArgs(key: Exclude<EngineKey, 'llamaBench'>, s: BenchSettings): string[] {
  switch (key) {
    case 'steerguard':
      return [
        '--engine',
        'steerguard',
        '--weights',
        s.weights,
        ...(s.hookOverhead ? [] : ['--no-hook-overhead']),
      ];
    case 'steerguardF32':
      return ['--engine', 'steerguard', '--weights', 'f32', '--no-hook-overhead'];
    case 'llamacpp':
      return ['--engine', 'llamacpp'];
  }
}

export async function runBench(
  modelPath: string,
  s: BenchSettings,
  log: (message: string) => void,
): Promise<BenchReport> {
  if (!/\.gguf$/i.test(modelPath)) {
    throw new OptionError(`bench compares with llama.cpp, so it needs a .gguf file; got ${modelPath}`);
  }
  if (s.llamaBench !== null) checkLlamaBenchBinary(s.llamaBench);
  const loadBefore = readLoadAverage();
  if (s.maxLoad !== null && loadBefore > s.maxLoad) {
    throw new OptionError(
      `the 1-minute load average is ${loadBefore.toFixed(2)}, above --max-load ${s.maxLoad}: nothing was measured`,
    );
  }
  const prompts = await benchPromptTokens(modelPath, s.prompts, s.promptTokens);
  const { createHash } = await import('node:crypto');
  const promptIdsHash = createHash('sha256').update(JSON.stringify(prompts)).digest('hex').slice(0, 16);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'steerguard-bench-'));
  const tokensFile = path.join(dir, 'prompts.json');
  writeFileSync(tokensFile, JSON.stringify(prompts));
  const common = [
    '--model',
    modelPath,
    '--tokens-file',
    tokensFile,
    '--threads',
    String(s.threads),
    '--gen-tokens',
    String(s.genTokens),
    '--batch',
    String(s.batch),
  ];
  const engines = benchEngines(s);
  const rssProbe = s.llamaBench !== null ? chooseRssProbe(dir) : 'none';
  const shape: LlamaBenchShape = { promptTokens: s.promptTokens, genTokens: s.genTokens, threads: s.threads };
  const measure = (key: EngineKey, r: number, onLine: (line: string) => void): Promise<WorkerResult> =>
    key === 'llamaBench'
      ? runLlamaBench(s.llamaBench!, modelPath, shape, rssProbe, dir, onLine)
      : runWorker([...workerEngineArgs(key, s), ...common, '--repeat', String(r)], onLine);

  const date = new Date().toISOString();
  const runs = new Map<EngineKey, WorkerResult[]>(engines.map((e) => [e.key, []]));
  const wall = new Map<EngineKey, number>();
  const spans: { start: number; end: number }[] = [];
  const loadSamples: number[] = [];
  const ownSamples: number[] = [];
  let llamacppError: string | null = s.llamacpp ? null : 'skipped (--no-llamacpp)';
  try {
    for (let r = 0; r < s.repeats; r++) {
      for (const e of engineOrder(engines, r)) {
        // A failed llama.cpp worker leaves the other engines' figures standing, not its own.
        if (e.key === 'llamacpp' && llamacppError !== null) continue;
        log(`bench: repeat ${r + 1}/${s.repeats}, ${e.label}`);
        const start = performance.now() / 1000;
        try {
          const result = await measure(e.key, r, (line) => log(`  [${e.label}] ${line}`));
          runs.get(e.key)!.push(result);
        } catch (err) {
          if (e.key !== 'llamacpp') throw err;
          llamacppError = `repeat ${r + 1}: ${(err as Error).message}`;
        }
        const end = performance.now() / 1000;
        spans.push({ start, end });
        wall.set(e.key, (wall.get(e.key) ?? 0) + (end - start));
        loadSamples.push(readLoadAverage());
        ownSamples.push(ownLoad(spans, end, s.threads));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const merged = (key: EngineKey): WorkerResult | null => {
    const rs = runs.get(key);
    return rs && rs.length > 0 ? mergeRuns(rs) : null;
  };
  const steerguard = merged('steerguard')!;
  const cores = os.availableParallelism();
  const load = summarizeLoad(loadBefore, loadSamples, ownSamples, s.threads, cores);
  return {
    model: modelPath,
    date,
    settings: s,
    machine: machineInfo(),
    promptIdsHash,
    steerguard,
    steerguardF32: merged('steerguardF32'),
    llamacpp: llamacppError === null ? merged('llamacpp') : null,
    llamacppError,
    llamaBench: merged('llamaBench'),
    hookOverhead: hookRows(steerguard),
    load,
    busy: isBusy(load.othersMax, s.threads, cores),
    wallSeconds: {
      steerguard: wall.get('steerguard') ?? 0,
      steerguardF32: wall.get('steerguardF32') ?? null,
      llamacpp: llamacppError === null ? (wall.get('llamacpp') ?? null) : null,
      llamaBench: wall.get('llamaBench') ?? null,
    },
  };
}

function hookRows(w: WorkerResult): HookOverheadRow[] | null {
  if (!w.hooks?.none) return null;
  const base = w.hooks.none;
  return (['none', 'read', 'add'] as const).flatMap((v) => {
    const t = w.hooks?.[v];
    if (!t) return [];
    return [
      {
        variant: v,
        label: HOOK_VARIANT_LABELS[v],
        promptTokensPerSecond: t.promptTokensPerSecond,
        generationTokensPerSecond: t.generationTokensPerSecond,
        promptTimeRatio: base.promptTokensPerSecond / t.promptTokensPerSecond,
        generationTimeRatio: base.generationTokensPerSecond / t.generationTokensPerSecond,
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------------
// Output

const rate = (x: number): string => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
const ratio = (x: number): string => `${x.toFixed(2)}×`;
const mib = (b: number | null): string => (b === null ? 'n/a' : `${Math.round(b / MIB)} MiB`);

/** A median with the range of its samples, e.g. `129 (121–133)`; the median alone for one sample. */
export function rateWithRange(x: number, samples: readonly number[]): string {
  if (samples.length < 2) return rate(x);
  return `${rate(x)} (${rate(Math.min(...samples))}–${rate(Math.max(...samples))})`;
}

const weightsLabel = (w: WorkerResult): string => `steerguard (${w.weights ?? 'f32'} weights)`;

function steerguardResults(r: BenchReport): WorkerResult[] {
  return r.steerguardF32 ? [r.steerguard, r.steerguardF32] : [r.steerguard];
}

function engineRows(r: BenchReport): string[][] {
  const rows: string[][] = [];
  const add = (name: string, w: WorkerResult): void => {
    const t = w.throughput;
    rows.push([
      name,
      rateWithRange(t.promptTokensPerSecond, t.samples.promptTokensPerSecond),
      rateWithRange(t.generationTokensPerSecond, t.samples.generationTokensPerSecond),
      mib(w.peakRssBytes),
      w.loadSeconds === null ? 'n/a' : w.loadSeconds.toFixed(1),
    ]);
    if (w.batched) {
      const b = w.batched;
      const single = b.batchedGenerationTokensPerSecond / t.generationTokensPerSecond;
      rows.push([
        `${name}, ${b.sequences} sequences (aggregate gen tok/s)`,
        '',
        `${rateWithRange(b.batchedGenerationTokensPerSecond, b.samples)}, ${single.toFixed(1)}× single`,
        '',
        '',
      ]);
    }
  };
  for (const w of steerguardResults(r)) add(weightsLabel(w), w);
  if (r.llamacpp) add(NODE_LLAMA_CPP_LABEL, r.llamacpp);
  if (r.llamaBench) add(LLAMA_BENCH_LABEL, r.llamaBench);
  // The native build is the reference when there is one: it is what llama.cpp gives on this CPU.
  const reference = r.llamaBench
    ? { name: 'llama.cpp (native)', w: r.llamaBench }
    : r.llamacpp
      ? { name: 'llama.cpp (node-llama-cpp)', w: r.llamacpp }
      : null;
  if (!reference) {
    rows.push(['llama.cpp', 'n/a', 'n/a', 'n/a', 'n/a']);
    return rows;
  }
  const sg = r.steerguard;
  const ref = reference.w;
  rows.push([
    `steerguard / ${reference.name}`,
    ratio(sg.throughput.promptTokensPerSecond / ref.throughput.promptTokensPerSecond),
    ratio(sg.throughput.generationTokensPerSecond / ref.throughput.generationTokensPerSecond),
    sg.peakRssBytes !== null && ref.peakRssBytes !== null ? ratio(sg.peakRssBytes / ref.peakRssBytes) : 'n/a',
    '',
  ]);
  return rows;
}

const NODE_LLAMA_CPP_LABEL = 'llama.cpp (node-llama-cpp)';
const LLAMA_BENCH_LABEL = 'llama.cpp (native llama-bench)';

const ENGINE_HEADERS = ['engine', 'prompt tok/s', 'gen tok/s', 'peak RSS', 'load s'];
const HOOK_HEADERS = ['steerguard hooks', 'prompt tok/s', 'prompt time', 'gen tok/s', 'gen time'];

function hookTableRows(r: BenchReport): string[][] {
  return (r.hookOverhead ?? []).map((h) => {
    const samples = r.steerguard.hooks?.[h.variant]?.samples;
    return [
      h.label,
      rateWithRange(h.promptTokensPerSecond, samples?.promptTokensPerSecond ?? []),
      ratio(h.promptTimeRatio),
      rateWithRange(h.generationTokensPerSecond, samples?.generationTokensPerSecond ?? []),
      ratio(h.generationTimeRatio),
    ];
  });
}

/** The first line of the output when other processes held the engines' cores. */
function busyWarning(r: BenchReport): string[] {
  if (!r.busy) return [];
  const cores = r.machine.availableParallelism;
  return [
    `WARNING: the machine was busy (load ${r.load.othersMax.toFixed(2)} on ${cores} cores); these figures are not comparable`,
  ];
}

/** How single-sequence generation compares with the measured copy bandwidth, per steerguard row. */
function memoryLines(r: BenchReport): string[] {
  return steerguardResults(r).flatMap((w) => {
    const m = w.memory;
    if (!m) return [];
    const readGBps = (m.weightBytesPerToken * w.throughput.generationTokensPerSecond) / 1e9;
    return [
      `memory bound, ${weightsLabel(w)}: ${Math.round(m.weightBytesPerToken / 1e6)} MB of weights per token; ` +
        `single-sequence generation reads ${readGBps.toFixed(1)} GB/s = ${Math.round(m.bandwidthUse * 100)}% ` +
        `of the measured copy bandwidth (${m.copyBandwidthGBps.toFixed(1)} GB/s)`,
    ];
  });
}

function loadLine(r: BenchReport): string {
  const l = r.load;
  const after =
    l.samples.length === 0
      ? ''
      : `, ${Math.min(...l.samples).toFixed(2)}–${Math.max(...l.samples).toFixed(2)} after the workers ` +
        `(up to ${Math.max(...l.own).toFixed(2)} of it their own threads)`;
  return (
    `load: 1-minute average ${l.before.toFixed(2)} before the run${after}; other processes' load ` +
    `above ${l.busyAbove.toFixed(2)} on ${r.machine.availableParallelism} cores counts as busy` +
    (r.busy ? ` (it reached ${l.othersMax.toFixed(2)})` : '')
  );
}

function llamaBenchLine(w: WorkerResult, s: BenchSettings): string {
  const b = w.build;
  const field = (k: string): string => (b[k] === undefined ? 'unknown' : String(b[k]));
  return (
    `llama.cpp native: ${field('binary')}, build ${field('build_commit')} (${field('build_number')}), ` +
    `${field('backends')}, ${field('cpu_info')}; the same shape (${s.promptTokens}-token prompt, ` +
    `${s.genTokens} generated tokens, ${s.threads} threads) but llama-bench's own token ids, one ` +
    `prompt per test, generation from an empty context; load time not reported; peak RSS ${field('peakRss')}`
  );
}

function contextLines(r: BenchReport): string[] {
  const s = r.settings;
  const m = r.machine;
  const sb = r.steerguard.build;
  const lb = r.llamacpp?.build;
  const w = r.wallSeconds;
  const walls = [
    `${w.steerguard.toFixed(0)}s ${weightsLabel(r.steerguard)}`,
    ...(w.steerguardF32 !== null ? [`${w.steerguardF32.toFixed(0)}s f32`] : []),
    ...(w.llamacpp !== null ? [`${w.llamacpp.toFixed(0)}s node-llama-cpp`] : []),
    ...(w.llamaBench !== null ? [`${w.llamaBench.toFixed(0)}s llama-bench`] : []),
  ];
  return [
    `model: ${path.basename(r.model)}`,
    `workload: ${s.prompts} prompts × ${s.promptTokens} tokens, then ${s.genTokens} generated tokens each ` +
      `(greedy, batch 1)${s.batch > 1 ? `; batched: ${s.batch} sequences decoded together` : ''}; ` +
      `${s.threads} thread${s.threads === 1 ? '' : 's'} per engine; median (min–max) of ${s.repeats} ` +
      `interleaved repeat${s.repeats === 1 ? '' : 's'}, one worker process per engine and repeat`,
    `machine: ${m.cpu}, ${m.logicalCores} logical cores, ${Math.round(m.memoryBytes / 2 ** 30)} GiB, ${m.os}, node ${m.node}`,
    loadLine(r),
    `steerguard: ${String(sb.blasConfig ?? sb.backend)}${sb.simd !== undefined ? `, kernels ${String(sb.simd)}` : ''}`,
    lb
      ? `llama.cpp: ${String(lb.llamaCppRepo)} ${String(lb.llamaCppRelease)} (${String(lb.buildType)}, node-llama-cpp ${String(lb.nodeLlamaCpp)}, KV ${String(lb.kvCacheType)}), ${String(lb.systemInfo)}`
      : `llama.cpp: ${r.llamacppError ?? 'not run'}`,
    ...(r.llamaBench ? [llamaBenchLine(r.llamaBench, s)] : []),
    `date: ${r.date}; wall time ${walls.join(', ')}`,
  ];
}

export function formatBenchText(r: BenchReport): string {
  const right = [false, true, true, true, true];
  const parts = [
    ...busyWarning(r),
    contextLines(r).join('\n'),
    '',
    formatTable(ENGINE_HEADERS, engineRows(r), right).trimEnd(),
    '',
    ...memoryLines(r),
  ];
  if (r.hookOverhead) {
    parts.push('', formatTable(HOOK_HEADERS, hookTableRows(r), right).trimEnd());
    parts.push('(time: with hooks ÷ without; 1.05× = 5% slower)');
  }
  return `${parts.join('\n')}\n`;
}

function markdownTable(headers: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map((_, k) => (k === 0 ? '---' : '---:'))), ...rows.map(line)].join(
    '\n',
  );
}

/** The report as Markdown, ready to paste into BENCHMARKS.md. */
export function formatBenchMarkdown(r: BenchReport): string {
  const warning = busyWarning(r);
  const memory = memoryLines(r);
  const parts = [
    ...(warning.length > 0 ? [...warning, ''] : []),
    `### ${path.basename(r.model)}, ${r.settings.threads} thread${r.settings.threads === 1 ? '' : 's'}`,
    '',
    ...contextLines(r).map((l) => `- ${l}`),
    '',
    markdownTable(ENGINE_HEADERS, engineRows(r)),
    ...(memory.length > 0 ? ['', ...memory.map((l) => `- ${l}`)] : []),
  ];
  if (r.hookOverhead) {
    parts.push(
      '',
      markdownTable(HOOK_HEADERS, hookTableRows(r)),
      '',
      'Time: with hooks ÷ without (1.05× = 5% slower).',
    );
  }
  return `${parts.join('\n')}\n`;
}
