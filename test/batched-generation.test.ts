/**
 * Batched generation (continuous batching, per-prompt hooks) gives the tokens one-at-a-time
 * generation gives, greedy, for prompts of mixed lengths that finish at different steps: each
 * sequence's arithmetic is its own, whatever joins or leaves the batch.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { OptionError } from '../src/formats/errors.js';
import { GgmlType } from '../src/formats/quant.js';
import { type Hook, blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { type GenerateOptions, Model, type SequenceOptions } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';
import { seededUniform } from './util/random.js';

const dir = path.join(FIXTURES, 'tiny', 'llama');
// prompt lengths 12, 1, 24, 5, 9, 17, 3, 20
const prompts = (
  JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { prompts: number[][] }
).prompts.map((tokens) => ({ tokens }));
const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-batched-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const gguf = path.join(tmp, 'tiny-llama-q8_0.gguf');
hfToGguf(dir, gguf, GgmlType.Q8_0);

describe('batched generation', async () => {
  const model = await Model.load(gguf); // quantized: exact prompt passes, int8 decoding steps
  const D = model.config.dModel;
  const uniform = seededUniform(3);
  const steer = Float32Array.from({ length: D }, () => 2 * (2 * uniform() - 1));
  const name = blockHook(1, 'hook_resid_post');
  const alone = async (opts: GenerateOptions, hooksOf: (i: number) => Hook[] = () => []) => {
    const out: number[][] = [];
    for (const [i, p] of prompts.entries()) {
      const [g] = await model.generate([p], { ...opts, hooks: [...hooksOf(i), ...(opts.hooks ?? [])] });
      out.push(g.tokens);
    }
    return out;
  };
  // A stop token taken from one reply, so that sequences finish at different steps.
  const free = await alone({ maxNewTokens: 16, stopTokens: [] });
  const stopTokens = [free[0][4]];
  const base: GenerateOptions = { maxNewTokens: 16, stopTokens };

  test('the replies end at different steps', async () => {
    const lengths = (await alone(base)).map((t) => t.length);
    assert.ok(new Set(lengths).size > 1, `lengths ${lengths}`);
    assert.ok(lengths.includes(4) && lengths.includes(16), `lengths ${lengths}`);
  });

  for (const maxBatch of [1, 3, 8]) {
    test(`maxBatch ${maxBatch}: the tokens of one-at-a-time generation`, async () => {
      const want = await alone(base);
      const got = await model.generate(prompts, { ...base, maxBatch });
      assert.deepEqual(
        got.map((g) => g.tokens),
        want,
      );
      got.forEach((g, i) => assert.deepEqual(g.promptTokens, prompts[i].tokens));
    });
  }

  test('with a hook on every sequence', async () => {
    const hooks = [addVector(name, steer, { scale: 4 })];
    const want = await alone({ ...base, hooks });
    const got = await model.generate(prompts, { ...base, hooks, maxBatch: 3 });
    assert.deepEqual(
      got.map((g) => g.tokens),
      want,
    );
    assert.notDeepEqual(want, await alone(base), 'the hook changes the replies');
  });

  test('per-prompt hooks touch only their own sequence', async () => {
    // odd prompts steered, even ones not
    const own = (i: number): Hook[] => (i % 2 === 1 ? [addVector(name, steer, { scale: 4 })] : []);
    const want = await alone(base, own);
    const seen = new Map<number, Set<number>>();
    const spy = (i: number): Hook => ({
      name,
      fn: (_act, ctx) => {
        for (let r = 0; r < ctx.rows; r++) (seen.get(i) ?? seen.set(i, new Set()).get(i)!).add(ctx.seq[r]);
      },
    });
    const got = await model.generate(prompts, {
      ...base,
      maxBatch: 3,
      promptHooks: (i) => [...own(i), spy(i)],
    });
    assert.deepEqual(
      got.map((g) => g.tokens),
      want,
    );
    for (const [i, seqs] of seen) assert.deepEqual([...seqs], [i], `prompt ${i}'s hook saw only its rows`);
    assert.equal(seen.size, prompts.length);
  });

  test('ctx.seq is the prompt index in every step, ctx.pos counts on from the prompt', async () => {
    const rows = new Map<number, number[]>();
    const reader: Hook = {
      name,
      fn: (_act, ctx) => {
        for (let r = 0; r < ctx.rows; r++)
          (rows.get(ctx.seq[r]) ?? rows.set(ctx.seq[r], []).get(ctx.seq[r])!).push(ctx.pos[r]);
      },
    };
    const got = await model.generate(prompts, { ...base, maxBatch: 2, hooks: [reader] });
    got.forEach((g, i) => {
      // every prompt position, then one row per generated token that was fed back
      const n = prompts[i].tokens.length;
      const fed = g.finishReason === 'length' ? g.tokens.length - 1 : g.tokens.length;
      assert.deepEqual(
        rows.get(i),
        Array.from({ length: n + fed }, (_, p) => p),
        `prompt ${i}`,
      );
    });
  });

  const seqBase: SequenceOptions = { maxNewTokens: 16, stopTokens };

  test('a decoder: prompts that join while others decode get the tokens of one-at-a-time generation', async () => {
    const own = (i: number): Hook[] => (i % 2 === 1 ? [addVector(name, steer, { scale: 4 })] : []);
    const want = await alone(base, own);
    const decoder = model.decoder({ maxBatch: 3 });
    const replies: Promise<number[]>[] = [];
    const add = (i: number) =>
      replies.push(decoder.add(prompts[i], { ...seqBase, hooks: own(i) }).then((g) => g.tokens));
    // two prompts at first, then one more after every step: each joins a batch mid-decode
    add(0);
    add(1);
    let next = 2;
    let steps = 0;
    while (!decoder.idle || next < prompts.length) {
      decoder.step();
      steps++;
      assert.ok(decoder.active <= 3, `at most maxBatch decode together (${decoder.active})`);
      if (next < prompts.length) add(next++);
    }
    assert.deepEqual(await Promise.all(replies), want);
    assert.ok(steps > 16, `${steps} steps`);
  });

  test('a decoder: an aborted sequence ends alone, a failing hook fails only its sequence', async () => {
    const decoder = model.decoder({ maxBatch: 4 });
    const controller = new AbortController();
    const broken: Hook = {
      name,
      fn: () => {
        throw new Error('hook failed');
      },
    };
    const aborted = decoder.add(prompts[0], { ...seqBase, signal: controller.signal });
    const failing = decoder.add(prompts[1], { ...seqBase, hooks: [broken] });
    const fine = decoder.add(prompts[2], seqBase);
    decoder.step();
    controller.abort();
    while (!decoder.idle) decoder.step();
    assert.equal((await aborted).finishReason, 'aborted');
    assert.equal((await aborted).tokens.length, 1);
    await assert.rejects(failing, /hook failed/);
    assert.deepEqual((await fine).tokens, (await alone(base))[2]);
  });

  test('maxBatch must be a positive integer', async () => {
    for (const maxBatch of [0, 1.5, -1])
      await assert.rejects(model.generate(prompts, { ...base, maxBatch }), OptionError);
  });

  test('bad options are errors even with no prompt to generate', async () => {
    await assert.rejects(model.generate([], { maxNewTokens: -1 }), OptionError);
    await assert.rejects(model.generate([], { temperature: -1 }), OptionError);
    await assert.rejects(model.generate([], { maxBatch: 0 }), OptionError);
  });
});
