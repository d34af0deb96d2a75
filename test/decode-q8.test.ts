/**
 * `decodeWeights: 'q8'`: prompt passes stay exact fp32; generation steps use Q8_0 weights and stay
 * close to the fp32 logits.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Model } from '../src/model/model.js';
import { FIXTURES, relMaxDiff } from './util/fixtures.js';

const dir = path.join(FIXTURES, 'tiny', 'llama');
const prompts = (
  JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { prompts: number[][] }
).prompts;

test('q8 decoding: exact prompt pass, close generation steps', async () => {
  const exact = await Model.load(dir);
  const q8 = await Model.load(dir, { decodeWeights: 'q8' });
  const p = prompts.map((tokens) => ({ tokens }));
  const a = exact.run(p);
  const b = q8.run(p);
  a.logits.forEach((l, i) => assert.deepEqual(b.logits[i], l));

  const steps: Float32Array[][] = [[], []];
  for (const [i, m] of [exact, q8].entries())
    await m.generate([p[0]], {
      maxNewTokens: 6,
      stopTokens: [],
      hooks: [{ name: 'logits', fn: (act) => void steps[i].push(act.slice()) }],
    });
  assert.deepEqual(steps[1][0], steps[0][0], 'first token comes from the exact prompt pass');
  // Later steps see the same history only while the tokens agree; compare the first decode step.
  const d = relMaxDiff(steps[1][1], steps[0][1]);
  assert.ok(d > 0 && d < 0.05, `q8 step differs by ${d}`);
});

test('decodeWeights rejects unknown values', async () => {
  await assert.rejects(Model.load(dir, { decodeWeights: 'q4' as 'q8' }), /decodeWeights/);
});
