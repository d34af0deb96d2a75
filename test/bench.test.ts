/**
 * The pieces of `steerguard bench` that decide what a run reports, on literal inputs: the engine
 * list and order per repeat, reading llama-bench's JSON (and running a stand-in llama-bench
 * script), merging per-repeat workers into medians and ranges, the busy-machine check and the
 * bench's own share of the load average, the memory-bandwidth fraction, and the text and Markdown
 * output of a hand-made report. Nothing here runs a model.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  type BenchReport,
  type BenchSettings,
  type WorkerResult,
  bandwidthUse,
  benchEngines,
  busyLoadLimit,
  chooseRssProbe,
  engineOrder,
  formatBenchMarkdown,
  formatBenchText,
  isBusy,
  mergeRuns,
  ownLoad,
  parseLlamaBenchJson,
  rateWithRange,
  readLoadAverage,
  runLlamaBench,
  summarizeLoad,
  weightBytesPerToken,
} from '../src/cli/bench.js';
import { benchCommand } from '../src/cli/commands/bench.js';
import { GgmlType } from '../src/formats/quant.js';
import type { LayerWeights, ModelWeights, QuantizedMatrix } from '../src/model/weights.js';
import { runCommand } from './util/cli.js';

/** A steerguard worker's result for one repeat. */
function steerguardRun(o: {
  pp: number;
  gen: number;
  rss: number;
  load: number;
  batched: number;
  copy: number;
}): WorkerResult {
  const t = (pp: number, gen: number) => ({
    promptTokensPerSecond: pp,
    generationTokensPerSecond: gen,
    samples: { promptTokensPerSecond: [pp], generationTokensPerSecond: [gen] },
  });
  return {
    engine: 'steerguard',
    weights: 'quantized',
    loadSeconds: o.load,
    throughput: t(o.pp, o.gen),
    hooks: { none: t(o.pp, o.gen), read: t(o.pp - 10, o.gen - 2) },
    peakRssBytes: o.rss,
    batched: { sequences: 16, batchedGenerationTokensPerSecond: o.batched, samples: [o.batched] },
    memory: { weightBytesPerToken: 100e6, copyBandwidthGBps: o.copy, bandwidthUse: 0 },
    build: { backend: 'native' },
  };
}

describe('engineOrder', () => {
  it('puts each of two engines first once over 2 repeats (ABBA)', () => {
    const orders = [0, 1].map((r) => engineOrder(['steerguard', 'llamacpp'], r));
    assert.deepEqual(orders, [
      ['steerguard', 'llamacpp'],
      ['llamacpp', 'steerguard'],
    ]);
    assert.deepEqual(new Set(orders.map((o) => o[0])), new Set(['steerguard', 'llamacpp']));
  });

  it('puts each of three engines in each place once over 3 repeats, and wraps after', () => {
    const engines = ['q', 'f32', 'llama'];
    const orders = [0, 1, 2].map((r) => engineOrder(engines, r));
    for (let place = 0; place < 3; place++)
      assert.deepEqual(new Set(orders.map((o) => o[place])), new Set(engines), `place ${place}`);
    for (const o of orders) assert.deepEqual([...o].sort(), [...engines].sort());
    assert.deepEqual(engineOrder(engines, 3), orders[0]);
  });
});

describe('benchEngines', () => {
  const settings = (o: Partial<BenchSettings>): BenchSettings => ({
    threads: 2,
    prompts: 4,
    promptTokens: 128,
    genTokens: 64,
    repeats: 4,
    hookOverhead: false,
    llamacpp: true,
    weights: 'quantized',
    batch: 16,
    maxLoad: null,
    llamaBench: null,
    ...o,
  });

  it('adds native llama-bench as a fourth engine, and rotation puts each of the 4 in each place once', () => {
    const keys = benchEngines(settings({ llamaBench: '/opt/llama-bench' })).map((e) => e.key);
    assert.deepEqual(keys, ['steerguard', 'steerguardF32', 'llamacpp', 'llamaBench']);
    const orders = [0, 1, 2, 3].map((r) => engineOrder(keys, r));
    assert.deepEqual(orders[1], ['steerguardF32', 'llamacpp', 'llamaBench', 'steerguard']);
    for (let place = 0; place < 4; place++)
      assert.deepEqual(new Set(orders.map((o) => o[place])), new Set(keys), `place ${place}`);
  });

  it('leaves out the engines that are not asked for', () => {
    const keys = (o: Partial<BenchSettings>) => benchEngines(settings(o)).map((e) => e.key);
    assert.deepEqual(keys({}), ['steerguard', 'steerguardF32', 'llamacpp']);
    assert.deepEqual(keys({ llamacpp: false, llamaBench: 'lb', weights: 'f32' }), [
      'steerguard',
      'llamaBench',
    ]);
  });
});

/** One `llama-bench -o json` run's output, in its field names, with made-up numbers. */
const llamaBenchOutput = (o: { threads?: number; ppTs?: unknown; tests?: 'both' | 'pp' } = {}): string => {
  const test = (nPrompt: number, nGen: number, avgTs: unknown) => ({
    build_commit: 'llama-cpp-python-0.3.16-vendor',
    build_number: 0,
    cpu_info: 'AMD EPYC',
    gpu_info: '',
    backends: 'CPU',
    model_filename: '/models/m.gguf',
    model_type: 'llama ?B Q4_1',
    model_size: 85000000,
    model_n_params: 134515008,
    n_batch: 2048,
    n_ubatch: 512,
    n_threads: o.threads ?? 2,
    cpu_mask: '0x0',
    cpu_strict: false,
    poll: 50,
    type_k: 'f16',
    type_v: 'f16',
    n_gpu_layers: 99,
    split_mode: 'layer',
    main_gpu: 0,
    no_kv_offload: false,
    flash_attn: false,
    tensor_split: '0.00',
    tensor_buft_overrides: 'none',
    defrag_thold: -1.0,
    use_mmap: true,
    embeddings: false,
    no_op_offload: 0,
    n_prompt: nPrompt,
    n_gen: nGen,
    n_depth: 0,
    test_time: '2026-12-01T15:30:00Z',
    avg_ns: 1000000,
    stddev_ns: 0,
    avg_ts: avgTs,
    stddev_ts: 0.0,
    samples_ns: [1000000],
    samples_ts: [avgTs],
  });
  const tests = [test(128, 0, o.ppTs ?? 812.5)];
  if ((o.tests ?? 'both') === 'both') tests.push(test(0, 64, 95.25));
  return `${JSON.stringify(tests, null, 2)}\n`;
};

describe('parseLlamaBenchJson', () => {
  const shape = { promptTokens: 128, genTokens: 64, threads: 2 };

  it('takes avg_ts of the pp test as prompt tok/s and of the tg test as generation tok/s', () => {
    const f = parseLlamaBenchJson(llamaBenchOutput(), shape, 'bin/llama-bench');
    assert.equal(f.promptTokensPerSecond, 812.5);
    assert.equal(f.generationTokensPerSecond, 95.25);
    assert.equal(f.build.build_commit, 'llama-cpp-python-0.3.16-vendor');
    assert.equal(f.build.backends, 'CPU');
    assert.equal(f.build.cpu_info, 'AMD EPYC');
  });

  it('gives a clear error naming llama-bench for output it cannot use', () => {
    const cases: [string, RegExp][] = [
      ['main: error: failed to load model', /its output is not JSON \(it starts 'main: error/],
      ['{"n_prompt": 128}', /not a non-empty array of test results/],
      ['[]', /not a non-empty array/],
      [llamaBenchOutput({ tests: 'pp' }), /no generation test \(n_prompt 0, n_gen 64\)/],
      [llamaBenchOutput({ threads: 4 }), /prompt-processing test ran with n_threads 4, not 2/],
      [llamaBenchOutput({ ppTs: 0 }), /prompt-processing test has no positive finite avg_ts \(got 0\)/],
      [llamaBenchOutput({ ppTs: 'fast' }), /no positive finite avg_ts \(got "fast"\)/],
    ];
    for (const [text, why] of cases) {
      assert.throws(
        () => parseLlamaBenchJson(text, shape, 'bin/llama-bench'),
        (e: Error) => /^llama-bench \(bin\/llama-bench\): /.test(e.message) && why.test(e.message),
        text.slice(0, 40),
      );
    }
    assert.throws(
      () => parseLlamaBenchJson(llamaBenchOutput(), { ...shape, promptTokens: 16 }, 'lb'),
      /llama-bench \(lb\): its JSON output has no prompt-processing test \(n_prompt 16, n_gen 0\)/,
    );
  });
});

describe('runLlamaBench', () => {
  /** A stand-in llama-bench: a shell script that logs its arguments and prints `stdout`. */
  const fakeLlamaBench = (dir: string, stdout: string, exitCode = 0): string => {
    const bin = path.join(dir, `llama-bench-${exitCode}`);
    const script = `#!/bin/sh\necho "args: $*" >&2\ncat <<'JSON'\n${stdout}JSON\nexit ${exitCode}\n`;
    writeFileSync(bin, script, { mode: 0o755 });
    return bin;
  };
  const shape = { promptTokens: 128, genTokens: 64, threads: 2 };

  it('runs it with -m -t -p -n -r 1 -o json, and reads its rates and peak RSS', async (t) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'steerguard-llama-bench-test-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const bin = fakeLlamaBench(dir, llamaBenchOutput());
    const lines: string[] = [];
    const probe = chooseRssProbe(dir);
    const w = await runLlamaBench(bin, 'm.gguf', shape, probe, dir, (l) => lines.push(l));
    assert.deepEqual(lines, ['args: -m m.gguf -t 2 -p 128 -n 64 -r 1 -o json']);
    assert.equal(w.engine, 'llama-bench');
    assert.deepEqual(w.throughput.samples, {
      promptTokensPerSecond: [812.5],
      generationTokensPerSecond: [95.25],
    });
    assert.equal(w.loadSeconds, null);
    assert.equal(w.build.binary, bin);
    if (probe === 'none') assert.equal(w.peakRssBytes, null);
    else assert.ok((w.peakRssBytes ?? 0) > 0, `${probe}: ${String(w.build.peakRss)}`);
  });

  it('a failing run is an error naming llama-bench, with the end of its stderr', async (t) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'steerguard-llama-bench-test-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const bin = fakeLlamaBench(dir, '', 3);
    await assert.rejects(
      runLlamaBench(bin, 'm.gguf', shape, 'none', dir, () => {}),
      /^SteerguardError: llama-bench \(.*llama-bench-3\) failed \(exit 3\): args: -m m\.gguf/,
    );
  });
});

describe('mergeRuns', () => {
  const runs = [
    steerguardRun({ pp: 121, gen: 30, rss: 200e6, load: 0.9, batched: 150, copy: 14.2 }),
    steerguardRun({ pp: 133, gen: 34, rss: 250e6, load: 0.7, batched: 170, copy: 12.0 }),
    steerguardRun({ pp: 129, gen: 32, rss: 220e6, load: 0.8, batched: 160, copy: 13.1 }),
  ];
  const m = mergeRuns(runs);

  it('keeps every sample in run order and takes their medians', () => {
    assert.deepEqual(m.throughput.samples.promptTokensPerSecond, [121, 133, 129]);
    assert.deepEqual(m.throughput.samples.generationTokensPerSecond, [30, 34, 32]);
    assert.equal(m.throughput.promptTokensPerSecond, 129);
    assert.equal(m.throughput.generationTokensPerSecond, 32);
    assert.deepEqual(m.hooks?.read?.samples.promptTokensPerSecond, [111, 123, 119]);
    assert.equal(m.hooks?.read?.generationTokensPerSecond, 30);
    assert.equal(m.hooks?.add, undefined);
    assert.deepEqual(m.batched, {
      sequences: 16,
      batchedGenerationTokensPerSecond: 160,
      samples: [150, 170, 160],
    });
  });

  it('takes the largest peak RSS, the median load time and the best copy bandwidth', () => {
    assert.equal(m.peakRssBytes, 250e6);
    assert.equal(m.loadSeconds, 0.8);
    assert.equal(m.memory?.copyBandwidthGBps, 14.2);
    // 100 MB per token × 32 tok/s = 3.2 GB/s of 14.2 GB/s
    assert.ok(Math.abs((m.memory?.bandwidthUse ?? NaN) - 3.2 / 14.2) < 1e-12);
  });

  it('refuses an empty list', () => {
    assert.throws(() => mergeRuns([]), /no worker results/);
  });
});

describe('machine load', () => {
  it('busy: other processes above the cores the engines leave free, plus half a core', () => {
    assert.equal(busyLoadLimit(2, 2), 0.5);
    assert.equal(isBusy(0.4, 2, 2), false);
    assert.equal(isBusy(0.6, 2, 2), true);
    assert.equal(isBusy(14.4, 2, 16), false);
    assert.equal(isBusy(14.6, 2, 16), true);
  });

  it('ownLoad follows the kernel average: e^(-t/60) towards the worker threads, then away', () => {
    assert.equal(ownLoad([], 100, 2), 0);
    const one = [{ start: 0, end: 60 }];
    assert.ok(Math.abs(ownLoad(one, 60, 2) - 2 * (1 - Math.exp(-1))) < 1e-12);
    assert.ok(Math.abs(ownLoad(one, 120, 2) - 2 * (1 - Math.exp(-1)) * Math.exp(-1)) < 1e-12);
    assert.ok(Math.abs(ownLoad(one, 30, 2) - 2 * (1 - Math.exp(-0.5))) < 1e-12, 'read during the worker');
    // two 30 s workers with a 30 s gap
    const two = [
      { start: 0, end: 30 },
      { start: 60, end: 90 },
    ];
    const afterFirst = 2 * (1 - Math.exp(-0.5));
    const want = afterFirst * Math.exp(-1) + 2 * (1 - Math.exp(-0.5));
    assert.ok(Math.abs(ownLoad(two, 90, 2) - want) < 1e-12);
    assert.equal(ownLoad(two, 30, 2), afterFirst, 'a worker that starts later does not count yet');
  });

  it('summarizeLoad takes the bench’s own share out of each sample, never below 0', () => {
    const quiet = summarizeLoad(0.2, [2.5, 1.0], [2.0, 1.9], 2, 2);
    assert.deepEqual(quiet, {
      before: 0.2,
      samples: [2.5, 1.0],
      max: 2.5,
      own: [2.0, 1.9],
      othersMax: 0.5,
      busyAbove: 0.5,
    });
    assert.equal(isBusy(quiet.othersMax, 2, 2), false);
    const loaded = summarizeLoad(0.2, [3.3, 2.0], [2.0, 1.9], 2, 2);
    assert.ok(Math.abs(loaded.othersMax - 1.3) < 1e-12);
    assert.equal(isBusy(loaded.othersMax, 2, 2), true);
    const busyBefore = summarizeLoad(1.7, [], [], 2, 2);
    assert.equal(busyBefore.othersMax, 1.7);
    assert.equal(busyBefore.max, 1.7);
  });

  it('reads a finite, non-negative 1-minute load average', () => {
    const load = readLoadAverage();
    assert.ok(Number.isFinite(load) && load >= 0, String(load));
  });
});

describe('memory bound', () => {
  it('bandwidthUse: weight bytes per token × tokens/s over the copy rate', () => {
    assert.ok(Math.abs(bandwidthUse(395e6, 14.7, 14.2) - (395e6 * 14.7) / 14.2e9) < 1e-12);
    assert.equal(bandwidthUse(1e9, 2, 4), 0.5);
  });

  it('weightBytesPerToken counts every layer matrix and lm_head, not the embedding', () => {
    const q = (bytes: number): QuantizedMatrix => ({
      type: GgmlType.Q8_0,
      rows: 1,
      cols: 32,
      bytes: new Uint8Array(bytes),
    });
    const layer = (k: number): LayerWeights => ({
      attnNorm: new Float32Array(4),
      mlpNorm: new Float32Array(4),
      wq: q(1 * k),
      wk: q(2 * k),
      wv: q(4 * k),
      wo: new Float32Array(2 * k), // 8k bytes
      wGate: q(16 * k),
      wUp: q(32 * k),
      wDown: q(64 * k),
    });
    const embed = new Float32Array(1000);
    const weights: ModelWeights = {
      embed,
      layers: [layer(1), layer(10)],
      finalNorm: new Float32Array(4),
      lmHead: q(1000),
    };
    assert.equal(weightBytesPerToken(weights), 1000 + 127 * 11);
    assert.equal(weightBytesPerToken({ ...weights, lmHead: embed }), 4000 + 127 * 11, 'tied: once');
  });
});

describe('bench output', () => {
  const steerguard = mergeRuns([
    steerguardRun({ pp: 121, gen: 30, rss: 200 * 2 ** 20, load: 0.9, batched: 150, copy: 14.2 }),
    steerguardRun({ pp: 133, gen: 34, rss: 250 * 2 ** 20, load: 0.7, batched: 170, copy: 12.0 }),
    steerguardRun({ pp: 129, gen: 32, rss: 220 * 2 ** 20, load: 0.8, batched: 160, copy: 13.1 }),
  ]);
  const report = (busy: boolean): BenchReport => ({
    model: '/models/m.gguf',
    date: '2026-12-01T00:00:00.000Z',
    settings: {
      threads: 2,
      prompts: 4,
      promptTokens: 128,
      genTokens: 64,
      repeats: 3,
      hookOverhead: false,
      llamacpp: false,
      weights: 'quantized',
      batch: 16,
      maxLoad: null,
      llamaBench: null,
    },
    machine: {
      cpu: 'cpu',
      logicalCores: 2,
      availableParallelism: 2,
      memoryBytes: 2 ** 34,
      os: 'Linux',
      node: 'v20',
    },
    promptIdsHash: '0123456789abcdef',
    steerguard,
    steerguardF32: null,
    llamacpp: null,
    llamacppError: 'skipped (--no-llamacpp)',
    llamaBench: null,
    hookOverhead: null,
    load: summarizeLoad(busy ? 1.234 : 0.1, [2.0, 2.1, 2.2], [1.8, 1.9, 2.0], 2, 2),
    busy,
    wallSeconds: { steerguard: 30, steerguardF32: null, llamacpp: null, llamaBench: null },
  });

  it('shows each median with its range, the batched row and the memory-bound line', () => {
    const text = formatBenchText(report(false));
    assert.doesNotMatch(text, /WARNING/);
    assert.match(text, /^model: m\.gguf$/m);
    assert.match(
      text,
      /steerguard \(quantized weights\) +129 \(121–133\) +32\.0 \(30\.0–34\.0\) +250 MiB +0\.8/,
    );
    assert.match(
      text,
      /steerguard \(quantized weights\), 16 sequences \(aggregate gen tok\/s\) +160 \(150–170\), 5\.0× single/,
    );
    assert.match(
      text,
      /memory bound, steerguard \(quantized weights\): 100 MB of weights per token; single-sequence generation reads 3\.2 GB\/s = 23% of the measured copy bandwidth \(14\.2 GB\/s\)/,
    );
    assert.match(text, /median \(min–max\) of 3 interleaved repeats/);
    assert.match(text, /load: 1-minute average 0\.10 before the run, 2\.00–2\.20 after the workers/);
  });

  it('starts with a warning naming the load when the machine was busy', () => {
    const warning =
      'WARNING: the machine was busy (load 1.23 on 2 cores); these figures are not comparable\n';
    assert.ok(formatBenchText(report(true)).startsWith(warning));
    const md = formatBenchMarkdown(report(true));
    assert.ok(md.startsWith(warning), md.slice(0, 120));
    assert.match(md, /\| steerguard \(quantized weights\) \| 129 \(121–133\) \| 32\.0 \(30\.0–34\.0\) \|/);
    assert.doesNotMatch(formatBenchMarkdown(report(false)), /WARNING/);
  });

  it('with native llama-bench: its row, the node-llama-cpp row, and ratios against the native one', () => {
    const t = (pp: number, gen: number) => ({
      promptTokensPerSecond: pp,
      generationTokensPerSecond: gen,
      samples: { promptTokensPerSecond: [pp], generationTokensPerSecond: [gen] },
    });
    const other = { hooks: null, batched: null, memory: null };
    const nodeLlamaCpp: WorkerResult = {
      engine: 'llamacpp',
      loadSeconds: 0.5,
      throughput: t(200, 40),
      peakRssBytes: 125 * 2 ** 20,
      build: { llamaCppRelease: 'b1' },
      ...other,
    };
    const native: WorkerResult = {
      engine: 'llama-bench',
      loadSeconds: null,
      throughput: t(258, 64),
      peakRssBytes: null,
      build: { binary: 'lb', build_commit: 'abc', build_number: 1, peakRss: 'not measured' },
      ...other,
    };
    const text = formatBenchText({
      ...report(false),
      llamacpp: nodeLlamaCpp,
      llamacppError: null,
      llamaBench: native,
      wallSeconds: { steerguard: 30, steerguardF32: null, llamacpp: 5, llamaBench: 4 },
    });
    assert.match(text, /llama\.cpp \(node-llama-cpp\) +200 +40\.0 +125 MiB +0\.5/);
    assert.match(text, /llama\.cpp \(native llama-bench\) +258 +64\.0 +n\/a +n\/a/);
    assert.match(text, /steerguard \/ llama\.cpp \(native\) +0\.50× +0\.50× +n\/a/);
    assert.doesNotMatch(text, /steerguard \/ llama\.cpp \(node-llama-cpp\)/);
    assert.match(text, /llama\.cpp native: lb, build abc \(1\).*llama-bench's own token ids/);
    assert.match(text, /4s llama-bench/);
  });

  it('rateWithRange shows one sample alone', () => {
    assert.equal(rateWithRange(129, [121, 133, 129]), '129 (121–133)');
    assert.equal(rateWithRange(37.25, [37.25]), '37.3');
  });
});

describe('bench options', () => {
  it('--max-load below the current load refuses before measuring anything', async (t) => {
    const load = readLoadAverage();
    if (load <= 0) return t.skip('the load average is 0 here, so no --max-load is below it');
    // The file does not exist: the load check comes before anything reads it.
    const r = await runCommand(benchCommand, ['no-such-model.gguf', '--max-load', '0']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /above --max-load 0: nothing was measured/);
    assert.equal(r.stdout, '');
  });

  it('--llama-bench that is missing or not executable refuses before measuring anything', async () => {
    const missing = await runCommand(benchCommand, ['m.gguf', '--llama-bench', '/no/such/llama-bench']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /--llama-bench \/no\/such\/llama-bench: no such file/);
    assert.equal(missing.stdout, '');
    const notExecutable = fileURLToPath(import.meta.url);
    const r = await runCommand(benchCommand, ['m.gguf', '--llama-bench', notExecutable]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /: not executable/);
  });

  it('rejects --batch outside 1..256 and a negative --max-load', async () => {
    for (const args of [
      ['--batch', '0'],
      ['--batch', '257'],
      ['--max-load', '-1'],
    ]) {
      const r = await runCommand(benchCommand, ['m.gguf', ...args]);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, args[0] === '--batch' ? /--batch must be/ : /--max-load must be at least 0/);
    }
  });
});
