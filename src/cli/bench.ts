/**
 * `steerguard bench`: steerguard against llama.cpp (node-llama-cpp) on the same GGUF file, the
 * same token ids and the same thread count, plus the cost of steerguard's hooks.
 *
 * Each engine runs in its own child process (`steerguard bench-worker`), one after the other:
 * peak RSS is a per-process number, so measuring both in one process would charge each with the
 * other's memory, and running them at once would make them fight over the cores.
 *
 * Timing rules, the same for both engines:
 * - prompt processing: each prompt is one forward pass over all its tokens (batch of one
 *   sequence), timed from the call to the logits of its last token; rate = tokens / seconds over
 *   all prompts;
 * - generation: after each prompt, `genTokens` single-token decode steps, greedy, batch 1, EOS
 *   ignored; the prompt pass is excluded;
 * - one untimed warm-up first; every figure is the median over `repeats` runs.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { OptionError, SteerguardError } from '../formats/errors.js';
import type { Hook, HookName } from '../hooks/hooks.js';
import type { WeightStorage } from '../model/load.js';
import { formatTable } from './output.js';

/** What to measure. */
export interface BenchSettings {
  readonly threads: number;
  readonly prompts: number;
  readonly promptTokens: number;
  readonly genTokens: number;
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

export type HookVariant = 'none' | 'read' | 'add';

export const HOOK_VARIANT_LABELS: Record<HookVariant, string> = {
  none: 'no hooks',
  read: 'read every hook_resid_post (all positions)',
  add: 'add a vector at every hook_resid_post (all positions)',
};

/** What a bench-worker prints (one JSON line on stdout). */
export interface WorkerResult {
  engine: 'steerguard' | 'llamacpp';
  /** steerguard only: how the weights were held. */
  weights?: WeightStorage;
  loadSeconds: number;
  /** Figures without hooks. */
  throughput: Throughput;
  /** Steerguard with hooks, when asked. */
  hooks: Partial<Record<HookVariant, Throughput>> | null;
  /** Largest resident set of the worker process, bytes (for steerguard: before any hook ran). */
  peakRssBytes: number;
  /** Engine build facts: BLAS config and SIMD level, or llama.cpp release and system info. */
  build: Record<string, string | number | boolean | string[]>;
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
  hookOverhead: HookOverheadRow[] | null;
  /** Wall time of each worker process, seconds (load, warm-up and every repeat). */
  wallSeconds: { steerguard: number; llamacpp: number | null };
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

export async function steerguardWorker(
  modelPath: string,
  prompts: number[][],
  s: Pick<BenchSettings, 'threads' | 'genTokens' | 'repeats' | 'hookOverhead' | 'weights'>,
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
      // The decode steps are timed from the start of step 1 (hook_embed fires first in every
      // forward pass), which leaves the prompt pass of step 0 out.
      let stepOne = 0;
      const timer: Hook = {
        name: 'hook_embed',
        fn: (_act, ctx) => {
          if (ctx.step === 1) stepOne = performance.now();
        },
      };
      const sink: Float32Array[] = [];
      await model.generate([{ tokens: p }], {
        maxNewTokens: genTokens + 1,
        stopTokens: [],
        hooks: [timer, ...genHooks(v, sink)],
      });
      genSeconds += (performance.now() - stepOne) / 1000;
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

  const samples = new Map<HookVariant, { pp: number[]; gen: number[] }>(
    variants.map((v) => [v, { pp: [], gen: [] }]),
  );
  for (let r = 0; r < s.repeats; r++) {
    // Variants interleave, in an order that rotates per repeat, so that drift (thermal, other
    // load) and going first or last hit each of them alike.
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(k + r) % variants.length];
      const m = await measure(v, prompts, s.genTokens);
      samples.get(v)!.pp.push(m.pp);
      samples.get(v)!.gen.push(m.gen);
    }
  }
  const summary = (v: HookVariant): Throughput => {
    const x = samples.get(v)!;
    return {
      promptTokensPerSecond: median(x.pp),
      generationTokensPerSecond: median(x.gen),
      samples: { promptTokensPerSecond: x.pp, generationTokensPerSecond: x.gen },
    };
  };
  const backend = model.backend as {
    name: string;
    info?: () => { config: string; simd: string; threads: number };
  };
  const info = backend.info?.();
  return {
    engine: 'steerguard',
    weights: s.weights,
    loadSeconds,
    throughput: summary('none'),
    hooks: s.hookOverhead ? { none: summary('none'), read: summary('read'), add: summary('add') } : null,
    peakRssBytes,
    build: {
      backend: backend.name,
      ...(info ? { blasConfig: info.config, simd: info.simd, threads: info.threads } : {}),
    },
  };
}

export async function llamaCppWorker(
  modelPath: string,
  prompts: number[][],
  s: Pick<BenchSettings, 'threads' | 'genTokens' | 'repeats'>,
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
    const pp: number[] = [];
    const gen: number[] = [];
    let peakRssBytes = 0;
    for (let r = 0; r < s.repeats; r++) {
      const res = await handle.bench({ promptTokens: prompts, genTokens: s.genTokens, warmup: r === 0 });
      pp.push(res.promptTokensPerSecond);
      gen.push(res.generationTokensPerSecond);
      peakRssBytes = res.peakRssBytes;
    }
    const i = handle.info;
    return {
      engine: 'llamacpp',
      loadSeconds,
      throughput: {
        promptTokensPerSecond: median(pp),
        generationTokensPerSecond: median(gen),
        samples: { promptTokensPerSecond: pp, generationTokensPerSecond: gen },
      },
      hooks: null,
      peakRssBytes,
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

export async function runBench(
  modelPath: string,
  s: BenchSettings,
  log: (message: string) => void,
): Promise<BenchReport> {
  if (!/\.gguf$/i.test(modelPath)) {
    throw new OptionError(`bench compares with llama.cpp, so it needs a .gguf file; got ${modelPath}`);
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
    '--repeats',
    String(s.repeats),
  ];
  const date = new Date().toISOString();
  try {
    log(
      `bench: steerguard (${s.repeats} repeat${s.repeats === 1 ? '' : 's'}${s.hookOverhead ? ', 3 hook settings' : ''})`,
    );
    let t = performance.now();
    const steerguard = await runWorker(
      [
        '--engine',
        'steerguard',
        '--weights',
        s.weights,
        ...common,
        ...(s.hookOverhead ? [] : ['--no-hook-overhead']),
      ],
      (line) => log(`  [steerguard] ${line}`),
    );
    const steerguardSeconds = (performance.now() - t) / 1000;
    let steerguardF32: WorkerResult | null = null;
    if (s.weights === 'quantized') {
      log('bench: steerguard with fp32 weights (no hooks)');
      steerguardF32 = await runWorker(
        ['--engine', 'steerguard', '--weights', 'f32', ...common, '--no-hook-overhead'],
        (line) => log(`  [steerguard f32] ${line}`),
      );
    }
    let llamacpp: WorkerResult | null = null;
    let llamacppError: string | null = null;
    let llamacppSeconds: number | null = null;
    if (s.llamacpp) {
      log('bench: llama.cpp');
      t = performance.now();
      try {
        llamacpp = await runWorker(['--engine', 'llamacpp', ...common], (line) =>
          log(`  [llama.cpp] ${line}`),
        );
        llamacppSeconds = (performance.now() - t) / 1000;
      } catch (err) {
        llamacppError = (err as Error).message;
      }
    } else {
      llamacppError = 'skipped (--no-llamacpp)';
    }
    return {
      model: modelPath,
      date,
      settings: s,
      machine: machineInfo(),
      promptIdsHash,
      steerguard,
      steerguardF32,
      llamacpp,
      llamacppError,
      hookOverhead: hookRows(steerguard),
      wallSeconds: { steerguard: steerguardSeconds, llamacpp: llamacppSeconds },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

const MIB = 1024 * 1024;
const rate = (x: number): string => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
const ratio = (x: number): string => `${x.toFixed(2)}×`;
const mib = (b: number): string => `${Math.round(b / MIB)} MiB`;

function engineRows(r: BenchReport): string[][] {
  const rows: string[][] = [];
  const add = (name: string, w: WorkerResult): void => {
    rows.push([
      name,
      rate(w.throughput.promptTokensPerSecond),
      rate(w.throughput.generationTokensPerSecond),
      mib(w.peakRssBytes),
      w.loadSeconds.toFixed(1),
    ]);
  };
  add(`steerguard (${r.steerguard.weights ?? 'f32'} weights)`, r.steerguard);
  if (r.steerguardF32) add('steerguard (f32 weights)', r.steerguardF32);
  if (r.llamacpp) {
    add('llama.cpp', r.llamacpp);
    rows.push([
      'steerguard / llama.cpp',
      ratio(r.steerguard.throughput.promptTokensPerSecond / r.llamacpp.throughput.promptTokensPerSecond),
      ratio(
        r.steerguard.throughput.generationTokensPerSecond / r.llamacpp.throughput.generationTokensPerSecond,
      ),
      ratio(r.steerguard.peakRssBytes / r.llamacpp.peakRssBytes),
      '',
    ]);
  } else {
    rows.push(['llama.cpp', 'n/a', 'n/a', 'n/a', 'n/a']);
  }
  return rows;
}

const ENGINE_HEADERS = ['engine', 'prompt tok/s', 'gen tok/s', 'peak RSS', 'load s'];
const HOOK_HEADERS = ['steerguard hooks', 'prompt tok/s', 'prompt time', 'gen tok/s', 'gen time'];

function hookTableRows(r: BenchReport): string[][] {
  return (r.hookOverhead ?? []).map((h) => [
    h.label,
    rate(h.promptTokensPerSecond),
    ratio(h.promptTimeRatio),
    rate(h.generationTokensPerSecond),
    ratio(h.generationTimeRatio),
  ]);
}

function contextLines(r: BenchReport): string[] {
  const s = r.settings;
  const m = r.machine;
  const sb = r.steerguard.build;
  const lb = r.llamacpp?.build;
  return [
    `model: ${path.basename(r.model)}`,
    `workload: ${s.prompts} prompts × ${s.promptTokens} tokens, then ${s.genTokens} generated tokens each ` +
      `(greedy, batch 1); ${s.threads} thread${s.threads === 1 ? '' : 's'} per engine; median of ${s.repeats}`,
    `machine: ${m.cpu}, ${m.logicalCores} logical cores, ${Math.round(m.memoryBytes / 2 ** 30)} GiB, ${m.os}, node ${m.node}`,
    `steerguard: ${String(sb.blasConfig ?? sb.backend)}${sb.simd !== undefined ? `, kernels ${String(sb.simd)}` : ''}`,
    lb
      ? `llama.cpp: ${String(lb.llamaCppRepo)} ${String(lb.llamaCppRelease)} (${String(lb.buildType)}, node-llama-cpp ${String(lb.nodeLlamaCpp)}, KV ${String(lb.kvCacheType)}), ${String(lb.systemInfo)}`
      : `llama.cpp: ${r.llamacppError ?? 'not run'}`,
    `date: ${r.date}; wall time ${r.wallSeconds.steerguard.toFixed(0)}s steerguard` +
      (r.wallSeconds.llamacpp !== null ? `, ${r.wallSeconds.llamacpp.toFixed(0)}s llama.cpp` : ''),
  ];
}

export function formatBenchText(r: BenchReport): string {
  const right = [false, true, true, true, true];
  const parts = [contextLines(r).join('\n'), '', formatTable(ENGINE_HEADERS, engineRows(r), right).trimEnd()];
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
  const parts = [
    `### ${path.basename(r.model)}, ${r.settings.threads} thread${r.settings.threads === 1 ? '' : 's'}`,
    '',
    ...contextLines(r).map((l) => `- ${l}`),
    '',
    markdownTable(ENGINE_HEADERS, engineRows(r)),
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
