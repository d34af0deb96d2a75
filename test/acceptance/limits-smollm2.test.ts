/**
 * Limits on the real 30-block SmolLM2 GGUF (skipped, saying why, when it is missing): a 1 MB
 * prompt is refused after tokenizing and before any compute, and a hook on a block past the last
 * one is refused instead of silently never firing.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { OptionError } from '../../src/formats/errors.js';
import { addVector } from '../../src/hooks/interventions.js';
import { Model } from '../../src/model/model.js';
import { SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

describe('limits on SmolLM2-135M', { skip: missingModel(SMOLLM2_GGUF) }, async () => {
  const model = await Model.load(SMOLLM2_GGUF);

  test('a 1 MB prompt is refused once tokenized, without allocating its KV cache', async () => {
    const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(23_302);
    assert.ok(prompt.length > 1_000_000);
    const rss = process.memoryUsage().rss;
    const t0 = performance.now();
    await assert.rejects(
      model.generate([prompt], { maxNewTokens: 16 }),
      (e: unknown) =>
        e instanceof OptionError && new RegExp(`context is ${model.config.maxContext}$`).test(e.message),
    );
    const seconds = (performance.now() - t0) / 1000;
    const grownMb = (process.memoryUsage().rss - rss) / 2 ** 20;
    console.log(`# refused in ${seconds.toFixed(1)} s, rss +${grownMb.toFixed(0)} MB`);
    // One layer's K and V for ~230k tokens alone would be 2 * 230k * 192 * 4 bytes = 350 MB.
    assert.ok(grownMb < 300, `rss grew by ${grownMb} MB`);
    assert.ok(seconds < 60, `took ${seconds} s`);
  });

  test('blocks.53 on a 30-block model is refused, naming the range', async () => {
    const hook = addVector('blocks.53.hook_resid_post', new Float32Array(model.config.dModel));
    await assert.rejects(
      model.generate(['Hi'], { maxNewTokens: 1, hooks: [hook] }),
      /unknown hook "blocks\.53\.hook_resid_post": this model has 30 blocks.*0\.\.29/,
    );
  });
});
