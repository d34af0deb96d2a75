/**
 * Batched generation on real checkpoints (quantized default): the replies of a batch with
 * continuous batching are the replies of one-at-a-time generation, greedy, with and without a
 * steering hook, for chat prompts of different lengths.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { blockHook } from '../../src/hooks/hooks.js';
import { addVector } from '../../src/hooks/interventions.js';
import { type GenerateOptions, Model } from '../../src/model/model.js';
import { QWEN05_GGUF, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';
import { seededUniform } from '../util/random.js';

const requests = [
  'Hi!',
  'Explain how rainbows form, in two sentences.',
  'Write a haiku about autumn leaves falling on a quiet river at dusk.',
  'What is 17 times 23?',
  'List three uses of baking soda around the house and say why each one works.',
  'Name a prime number.',
];
const prompts = requests.map((content) => ({ messages: [{ role: 'user' as const, content }] }));

for (const [label, file] of [
  ['SmolLM2-135M-Instruct', SMOLLM2_GGUF],
  ['Qwen2.5-Coder-0.5B-Instruct', QWEN05_GGUF],
] as const)
  describe(`batched generation on ${label}`, { skip: missingModel(file) }, async () => {
    const model = await Model.load(file, { threads: 2 });
    const uniform = seededUniform(5);
    const v = Float32Array.from({ length: model.config.dModel }, () => 2 * uniform() - 1);
    const hook = addVector(blockHook(Math.floor(model.config.nLayers / 2), 'hook_resid_post'), v, {
      scale: 2,
    });
    for (const [what, extra] of [
      ['plain', {}],
      ['with a hook', { hooks: [hook] }],
    ] as const)
      test(`${what}: maxBatch 4 gives the one-at-a-time replies`, async () => {
        const opts: GenerateOptions = { maxNewTokens: 20, ...extra };
        const want: number[][] = [];
        for (const p of prompts) want.push((await model.generate([p], opts))[0].tokens);
        const got = await model.generate(prompts, { ...opts, maxBatch: 4 });
        assert.deepEqual(
          got.map((g) => g.tokens),
          want,
        );
        assert.ok(new Set(want.map((t) => t.length)).size > 1 || want.every((t) => t.length === 20));
      });
  });
