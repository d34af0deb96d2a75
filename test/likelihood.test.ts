/** The harmless-prompt likelihood change of a steering (eval likelihood). */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { measureLikelihoodShift, summarizeLikelihood } from '../src/eval/likelihood.js';
import { blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';

describe('likelihood shift', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const items = [
    { set: 'a', prompt: { tokens: [1, 2, 3, 4] } },
    { set: 'a', prompt: { tokens: [5, 6] } },
    { set: 'b', prompt: { tokens: [7, 8, 9] } },
  ];
  const push = addVector(blockHook(1, 'hook_resid_post'), new Float32Array(model.config.dModel).fill(3));

  test('no hooks: no change; a steering hook on one prompt changes that prompt only', async () => {
    const [rows, none] = await measureLikelihoodShift(
      model,
      items,
      [
        [[], [push], []],
        [[], [], []],
      ],
      {
        maxNewTokens: 6,
      },
    );
    assert.deepEqual(
      none.map((r) => [r.delta, r.base]),
      rows.map((r) => [0, r.base]),
      'a second steering scores the same unsteered replies',
    );
    assert.equal(rows.length, 3);
    assert.deepEqual(
      rows.map((r) => r.delta === 0),
      [true, false, true],
    );
    assert.ok(
      rows[1].delta < 0,
      `the steered model finds the unsteered reply less likely (${rows[1].delta})`,
    );
    rows.forEach((r) => assert.ok(r.base < 0 && r.tokens === 6));
    const s = summarizeLikelihood(rows);
    assert.deepEqual(
      s.map((x) => [x.set, x.n, x.steered]),
      [
        ['a', 2, 1],
        ['b', 1, 0],
      ],
    );
    assert.ok(s[0].ci[0] <= s[0].meanDelta && s[0].meanDelta <= s[0].ci[1]);
  });

  test('the unsteered score is the mean log-softmax of the reply tokens, computed by hand', async () => {
    const [rows] = await measureLikelihoodShift(model, items, [[[], [], []]], { maxNewTokens: 5 });
    const [g] = await model.generate([items[0].prompt], { maxNewTokens: 5 });
    const tokens = [...g.promptTokens, ...g.tokens];
    const logits = model.run([{ tokens }], { logits: 'all' }).logits[0];
    const V = model.config.vocabSize;
    let total = 0;
    for (let t = g.promptTokens.length - 1; t < tokens.length - 1; t++) {
      const row = Array.from(logits.subarray(t * V, (t + 1) * V));
      const max = Math.max(...row);
      total += row[tokens[t + 1]] - max - Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0));
    }
    const expected = total / g.tokens.length;
    assert.ok(Math.abs(rows[0].base - expected) < 1e-4, `${rows[0].base} vs ${expected}`);
  });

  test('one hook list per prompt', async () => {
    await assert.rejects(
      measureLikelihoodShift(model, items, [[[]]], { maxNewTokens: 2 }),
      /1 hook lists for 3 prompts/,
    );
  });
});
