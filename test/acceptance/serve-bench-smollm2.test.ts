/**
 * `steerguard bench-serve` at a tiny size on SmolLM2 (skipped without it): the load test runs
 * end to end, and its no-mix-up check passes: under overload every answer is 200 or 429, and every
 * 200 reply equals its prompt's greedy reply alone. No timing is asserted (the machine is shared).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { ServeBenchReport } from '../../src/server/load-test.js';
import { cli } from '../util/cli.js';
import { SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

test('bench-serve on SmolLM2, tiny: the no-mix-up check passes', { skip: missingModel(SMOLLM2_GGUF) }, () => {
  const args = ['bench-serve', '-m', SMOLLM2_GGUF, '--threads', '1', '--batch', '2', '--queue', '2'];
  const size = [
    '--clients',
    '2',
    '--requests-per-client',
    '1',
    '--rounds',
    '1',
    '--overload-clients',
    '8',
    '--prompts',
    '3',
  ];
  const r = cli([...args, ...size, '--max-tokens', '6', '--timeout', '240', '--json'], {
    timeoutMs: 300_000,
  });
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as ServeBenchReport;
  assert.equal(report.noMixUp, true);
  const { alone, concurrent, overload, monitored } = report.phases;
  assert.equal(alone.ok, 3);
  assert.equal(concurrent.ok, 2);
  assert.equal(monitored.ok, 2);
  assert.equal(overload.requests, 8);
  assert.deepEqual(overload.other, []);
  assert.equal(overload.ok + overload.rateLimited, 8);
  // 8 at once against 2 decoding + 2 waiting places: some are refused, the accepted ones answered
  assert.ok(
    overload.rateLimited > 0 && overload.ok >= 4,
    `${overload.ok} answered, ${overload.rateLimited} refused`,
  );
  for (const phase of [alone, concurrent, overload, monitored]) assert.equal(phase.mismatches, 0, phase.name);
  assert.ok(overload.serverPeakRssBytes === null || overload.serverPeakRssBytes > 0);
});
