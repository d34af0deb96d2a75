/**
 * `weights: 'quantized'` (the default on the native backend): a GGUF file's blocks stay in memory;
 * prompt passes match the fp32 path, generation steps (int8 activations) stay close to it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ReferenceBackend } from '../src/engine/reference.js';
import { GgmlType } from '../src/formats/quant.js';
import { Model } from '../src/model/model.js';
import { FIXTURES, relMaxDiff } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';

const dir = path.join(FIXTURES, 'tiny', 'llama');
const prompts = (
  JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { prompts: number[][] }
).prompts;
const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-quantized-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
// llama, so the q/k rows are also reordered as blocks (unpermuteRotaryRows) on the quantized path
const gguf = path.join(tmp, 'tiny-llama-q8_0.gguf');
hfToGguf(dir, gguf, GgmlType.Q8_0);

test('quantized weights: blocks in memory, exact prompt pass, close generation steps', async () => {
  const exact = await Model.load(gguf, { weights: 'f32' });
  const quant = await Model.load(gguf);
  const wq = quant.weights.layers[0].wq;
  assert.ok(!(wq instanceof Float32Array) && wq.type === GgmlType.Q8_0, 'the default keeps Q8_0 blocks');
  assert.ok(exact.weights.layers[0].wq instanceof Float32Array);
  assert.equal(quant.identity.fingerprint, exact.identity.fingerprint, 'same values, same fingerprint');

  const p = prompts.map((tokens) => ({ tokens }));
  const a = exact.run(p);
  const b = quant.run(p);
  a.logits.forEach((l, i) => assert.ok(relMaxDiff(b.logits[i], l) < 1e-5, `prompt ${i}`));

  const steps: Float32Array[][] = [[], []];
  for (const [i, m] of [exact, quant].entries())
    await m.generate([p[0]], {
      maxNewTokens: 6,
      stopTokens: [],
      hooks: [{ name: 'logits', fn: (act) => void steps[i].push(act.slice()) }],
    });
  assert.ok(relMaxDiff(steps[1][0], steps[0][0]) < 1e-5, 'first token comes from the exact prompt pass');
  // Later steps see the same history only while the tokens agree; compare the first decode step.
  const d = relMaxDiff(steps[1][1], steps[0][1]);
  assert.ok(d > 0 && d < 0.05, `quantized step differs by ${d}`);
});

test('safetensors checkpoints stay fp32 under the default', async () => {
  const m = await Model.load(dir);
  assert.ok(m.weights.layers[0].wq instanceof Float32Array);
});

test('a backend without quantized kernels loads fp32 by default and refuses quantized', async () => {
  const backend = new ReferenceBackend();
  const m = await Model.load(gguf, { backend });
  assert.ok(m.weights.layers[0].wq instanceof Float32Array);
  await assert.rejects(Model.load(gguf, { backend, weights: 'quantized' }), /no quantized kernels/);
});

test('weights rejects unknown values', async () => {
  await assert.rejects(Model.load(gguf, { weights: 'q8' as 'f32' }), /weights must be 'f32' or 'quantized'/);
});
