/**
 * sampleToken and checkSampling on hand-made logits: the repetition penalty's Hugging Face
 * semantics, temperature, top-k and top-p against exact probabilities, and option validation.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OptionError } from '../src/formats/errors.js';
import { type SamplingOptions, checkSampling, sampleToken, seededRandom } from '../src/model/sampling.js';

/** Share of `draws` samples that pick each token. */
function frequencies(logits: number[], o: SamplingOptions, draws = 20_000): number[] {
  const random = seededRandom(1);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sampleToken(Float32Array.from(logits), [], o, random)]++;
  return counts.map((c) => c / draws);
}

function near(got: number[], want: number[], tol = 0.015): void {
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) <= tol, `token ${i}: ${g} vs ${want[i]}`));
}

test('the repetition penalty divides positive logits and multiplies negative ones of seen tokens', () => {
  const pick = (logits: number[], history: number[]) =>
    sampleToken(Float32Array.from(logits), history, { repetitionPenalty: 2 }, Math.random);
  assert.equal(pick([2, 1.5, 0], [0]), 1, '2 / 2 = 1 < 1.5');
  assert.equal(pick([2, 1.5, 0], [1]), 0, 'the unseen argmax is kept');
  assert.equal(pick([-1, -1.5, -3], [0]), 1, '-1 * 2 = -2 < -1.5');
  assert.equal(pick([-1, -1.5, -3], []), 0, 'no history, no change');
});

test('temperature samples softmax(logits / T)', () => {
  near(frequencies([0, Math.log(3)], { temperature: 1 }), [0.25, 0.75]);
  near(frequencies([0, Math.log(3)], { temperature: 2 }), [
    1 / (1 + Math.sqrt(3)),
    Math.sqrt(3) / (1 + Math.sqrt(3)),
  ]);
});

test('top-k keeps the k best; top-p the smallest set reaching p; both renormalise', () => {
  const logits = [0.5, 0.3, 0.2].map(Math.log);
  near(frequencies(logits, { temperature: 1, topK: 2 }), [0.625, 0.375, 0]);
  near(frequencies(logits, { temperature: 1, topP: 0.6 }), [0.625, 0.375, 0]);
  near(frequencies(logits, { temperature: 1, topP: 0.5 }), [1, 0, 0]);
  near(frequencies(logits, { temperature: 1, topK: 1 }), [1, 0, 0]);
});

test('the seeded generator repeats per seed and differs across seeds', () => {
  const draw = (seed: number) => Array.from({ length: 8 }, seededRandom(seed));
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
  for (const x of draw(9)) assert.ok(x >= 0 && x < 1);
});

test('bad sampling options are refused by name', () => {
  for (const [o, name] of [
    [{ temperature: -1 }, 'temperature'],
    [{ temperature: Number.NaN }, 'temperature'],
    [{ temperature: Infinity }, 'temperature'],
    [{ topK: 1.5 }, 'topK'],
    [{ topK: -1 }, 'topK'],
    [{ topP: 0 }, 'topP'],
    [{ topP: 1.5 }, 'topP'],
    [{ repetitionPenalty: 0 }, 'repetitionPenalty'],
    [{ repetitionPenalty: Number.NaN }, 'repetitionPenalty'],
  ] as const)
    assert.throws(
      () => checkSampling(o),
      (e: unknown) => e instanceof OptionError && e.message.startsWith(`${name}:`),
    );
  checkSampling({ temperature: 0.7, topK: 40, topP: 0.9, repetitionPenalty: 1.1, seed: 3 });
});
