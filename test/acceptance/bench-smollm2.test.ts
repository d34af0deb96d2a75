/**
 * `steerguard bench --json` end to end on the real SmolLM2 GGUF (skipped, saying why, when it is
 * missing), with settings small enough to finish in well under a minute: two interleaved repeats
 * of both steerguard workers, a batched row of 4 sequences, no hooks and no llama.cpp.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { BenchReport, WorkerResult } from '../../src/cli/bench.js';
import { cli } from '../util/cli.js';
import { SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

describe('steerguard bench on SmolLM2-135M', { skip: missingModel(SMOLLM2_GGUF) }, () => {
  it('reports 2 samples per steerguard engine, a batched rate, the memory bound and the load', () => {
    // Under a minute alone; the margin is for a runner shared with other work (a timing is not asserted).
    const r = cli(
      [
        ...['bench', SMOLLM2_GGUF, '--prompts', '1', '--prompt-tokens', '16', '--gen-tokens', '4'],
        ...['--repeats', '2', '--batch', '4', '--no-hook-overhead', '--no-llamacpp', '--json'],
      ],
      { timeoutMs: 300_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as BenchReport;
    const engines: [string, WorkerResult | null][] = [
      ['quantized', report.steerguard],
      ['f32', report.steerguardF32],
    ];
    for (const [name, w] of engines) {
      assert.ok(w, name);
      assert.equal(w.throughput.samples.promptTokensPerSecond.length, 2, name);
      assert.equal(w.throughput.samples.generationTokensPerSecond.length, 2, name);
      assert.ok(w.batched, name);
      assert.equal(w.batched.sequences, 4, name);
      assert.equal(w.batched.samples.length, 2, name);
      assert.ok(w.batched.batchedGenerationTokensPerSecond > 0, name);
      const use = w.memory?.bandwidthUse ?? NaN;
      assert.ok(use > 0 && use < 1.5, `${name}: bandwidth use ${use}`);
      assert.ok((w.memory?.weightBytesPerToken ?? 0) > 50e6, name);
    }
    assert.equal(report.llamacpp, null);
    assert.equal(report.hookOverhead, null);
    const load = report.load;
    assert.ok(Number.isFinite(load.before) && load.before >= 0);
    assert.equal(load.samples.length, 4, 'one reading after each of the 4 workers');
    assert.equal(load.own.length, 4);
    assert.equal(load.max, Math.max(load.before, ...load.samples));
    assert.equal(typeof report.busy, 'boolean');
    assert.equal(report.busy, load.othersMax > load.busyAbove);
    if (report.busy) assert.match(r.stderr, /warning: the machine was busy/);
  });
});
