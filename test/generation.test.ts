/**
 * Generation on a tiny random llama with a byte-level tokenizer (one token per byte): sampling
 * options, stop strings and the `onText` hold-back, `AbortSignal`, hook names checked against the
 * model, and the context limit.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { OptionError } from '../src/formats/errors.js';
import { GgmlType } from '../src/formats/gguf.js';
import { blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { type GenerateOptions, Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';

/**
 * 256 tokens of plain text so that generations read as ASCII: the letters, a space (byte-level
 * 'Ġ'), then two-letter pairs. With no merges, text encodes one token per character.
 */
function asciiTokens(): string[] {
  const letters = Array.from({ length: 26 }, (_, i) => String.fromCharCode(97 + i));
  const pairs = letters.flatMap((a) => letters.map((b) => a + b));
  return [...letters, '\u0120', ...pairs].slice(0, 256);
}

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-gen-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const file = path.join(tmp, 'tiny-bytes.gguf');
hfToGguf(path.join(FIXTURES, 'tiny', 'llama'), file, GgmlType.F32, (entries) => [
  ...entries,
  { key: 'tokenizer.ggml.model', value: 'gpt2' },
  { key: 'tokenizer.ggml.pre', value: 'gpt2' },
  { key: 'tokenizer.ggml.tokens', value: asciiTokens() },
  { key: 'tokenizer.ggml.merges', value: [] as string[] },
]);

describe('generation on a tiny byte-level model', async () => {
  const model = await Model.load(file);
  const prompt = 'once upon a time';
  const gen = async (opts: GenerateOptions) =>
    (await model.generate([prompt], { stopTokens: [], ...opts }))[0];

  test('the tokenizer is one token per character', () => {
    assert.deepEqual(model.tokenize('hi a'), [7, 8, 26, 0]);
  });

  test('greedy is deterministic and reads as text', async () => {
    const a = await gen({ maxNewTokens: 24 });
    assert.deepEqual((await gen({ maxNewTokens: 24 })).tokens, a.tokens);
    assert.equal(a.tokens.length, 24);
    assert.equal(a.finishReason, 'length');
    assert.match(a.text, /^[a-z ]+$/);
  });

  describe('sampling', () => {
    const N = 24;
    test('top-k 1 and a tiny top-p equal greedy at any temperature', async () => {
      const greedy = (await gen({ maxNewTokens: N })).tokens;
      for (const seed of [1, 2, 3]) {
        assert.deepEqual((await gen({ maxNewTokens: N, temperature: 2, topK: 1, seed })).tokens, greedy);
        assert.deepEqual((await gen({ maxNewTokens: N, temperature: 2, topP: 1e-6, seed })).tokens, greedy);
      }
    });

    test('the same seed gives the same tokens; other seeds and greedy differ', async () => {
      const sample = async (seed: number) => (await gen({ maxNewTokens: N, temperature: 1, seed })).tokens;
      const one = await sample(1);
      assert.deepEqual(await sample(1), one);
      assert.notDeepEqual(await sample(2), one);
      assert.notDeepEqual((await gen({ maxNewTokens: N })).tokens, one);
    });

    test('each prompt of a batch draws from its own seeded stream', async () => {
      const opts = { maxNewTokens: N, temperature: 1, seed: 5, stopTokens: [] };
      const [a, b] = await model.generate([prompt, prompt], opts);
      assert.notDeepEqual(a.tokens, b.tokens);
      assert.deepEqual((await model.generate([prompt], opts))[0].tokens, a.tokens);
    });

    test('the repetition penalty changes greedy output exactly where greedy repeats a token', async () => {
      // Penalising seen tokens cannot change the argmax while the argmax is unseen, so the
      // penalised continuation follows greedy up to greedy's first repeat and leaves it there.
      const greedy = await gen({ maxNewTokens: N });
      const seen = new Set(greedy.promptTokens);
      const firstRepeat = greedy.tokens.findIndex((t) => seen.has(t) || !seen.add(t));
      assert.ok(firstRepeat > 0, 'the tiny model repeats itself within the window');
      const penalised = await gen({ maxNewTokens: N, repetitionPenalty: 10 });
      assert.deepEqual(penalised.tokens.slice(0, firstRepeat), greedy.tokens.slice(0, firstRepeat));
      assert.notEqual(penalised.tokens[firstRepeat], greedy.tokens[firstRepeat]);
    });
  });

  describe('stop strings and streaming', () => {
    test('onText streams exactly the final text', async () => {
      const pieces: string[] = [];
      const g = await gen({ maxNewTokens: 24, onText: (_i, t) => pieces.push(t) });
      assert.ok(pieces.length > 1, 'text arrives in pieces');
      assert.equal(pieces.join(''), g.text);
    });

    test('a stop string spanning tokens cuts the text; onText never emits the stop or past it', async () => {
      const full = await gen({ maxNewTokens: 24 });
      // Tokens are two letters here: start the stop string inside token 5 and end it inside token 7.
      const starts = full.tokens.map((_, i) => model.tokenizer.decode(full.tokens.slice(0, i)).length);
      const stop = full.text.slice(starts[5] + 1, starts[7] + 1);
      assert.ok(stop.length >= 2 && starts[6] > starts[5] + 1, 'the stop spans a token boundary');
      const at = full.text.indexOf(stop);
      const completes = starts.findIndex((s) => s >= at + stop.length);
      const pieces: string[] = [];
      const cut = await gen({ maxNewTokens: 24, stop: ['zzzzzz', stop], onText: (_i, t) => pieces.push(t) });
      assert.equal(cut.finishReason, 'stop');
      assert.equal(cut.text, full.text.slice(0, at));
      assert.deepEqual(cut.tokens, full.tokens.slice(0, completes), 'stops on the token that completes it');
      assert.equal(pieces.join(''), cut.text, 'held-back text was never emitted');
    });

    test('a stop token ends generation and is not returned', async () => {
      const full = await gen({ maxNewTokens: 24 });
      const g = await gen({ maxNewTokens: 24, stopTokens: [full.tokens[4]] });
      assert.equal(g.finishReason, 'stop');
      assert.deepEqual(g.tokens, full.tokens.slice(0, full.tokens.indexOf(full.tokens[4])));
    });
  });

  describe('AbortSignal', () => {
    test('an aborted signal stops before the next step: finishReason aborted, tokens so far', async () => {
      const controller = new AbortController();
      const full = await gen({ maxNewTokens: 24 });
      const g = await gen({
        maxNewTokens: 24,
        signal: controller.signal,
        onToken: (_i, _t, position) => position === 2 && controller.abort(),
      });
      assert.equal(g.finishReason, 'aborted');
      assert.deepEqual(g.tokens, full.tokens.slice(0, 3));
    });

    test('a signal aborted before the call generates nothing', async () => {
      const g = await gen({ maxNewTokens: 24, signal: AbortSignal.abort() });
      assert.equal(g.finishReason, 'aborted');
      assert.deepEqual(g.tokens, []);
    });
  });

  describe('hook names are checked against the model', () => {
    const D = model.config.dModel;
    const past = [
      'blocks.53.hook_resid_post',
      'blocks.3.hook_resid_pre',
      'hook_resid_post',
      'blocks.0.hook_q',
    ];
    const unknown = (name: string) =>
      new RegExp(`unknown hook "${name.replace(/\./g, '\\.')}".*3 blocks.*0\\.\\.2`);
    for (const name of past) {
      const hook = addVector(name as ReturnType<typeof blockHook>, new Float32Array(D));
      test(`${name}: run, generate, addHook and cache names all refuse it`, async () => {
        assert.throws(
          () => model.run([prompt], { hooks: [hook] }),
          (e: unknown) => e instanceof OptionError && unknown(name).test(e.message),
        );
        await assert.rejects(gen({ maxNewTokens: 2, hooks: [hook] }), unknown(name));
        assert.throws(() => model.addHook(hook), unknown(name));
        assert.throws(() => model.run([prompt], { cache: { names: [hook.name] } }), unknown(name));
      });
    }

    test('the last block is accepted, and a refused addHook leaves nothing attached', async () => {
      const plain = (await gen({ maxNewTokens: 4 })).tokens;
      assert.throws(() => model.addHook(addVector('blocks.3.hook_resid_post', new Float32Array(D).fill(50))));
      assert.deepEqual((await gen({ maxNewTokens: 4 })).tokens, plain);
      const last = addVector(blockHook(2, 'hook_resid_post'), new Float32Array(D).fill(50));
      assert.notDeepEqual((await gen({ maxNewTokens: 4, hooks: [last] })).tokens, plain);
    });
  });

  describe('the context limit', () => {
    const C = model.config.maxContext;
    const tokens = (n: number) => ({ tokens: Array.from({ length: n }, (_, i) => i % 26) });

    test('a prompt longer than the context is refused by run and generate', async () => {
      const tooLong = new RegExp(`prompt 0 has ${C + 1} tokens; the model's context is ${C}`);
      assert.throws(() => model.run([tokens(C + 1)]), tooLong);
      await assert.rejects(model.generate([tokens(C + 1)], { maxNewTokens: 1 }), tooLong);
    });

    test('prompt + maxNewTokens past the context is refused, naming both numbers', async () => {
      await assert.rejects(
        model.generate([tokens(4), tokens(C - 20)], { maxNewTokens: 21 }),
        (e: unknown) =>
          e instanceof OptionError &&
          e.message.includes(`prompt 1 has ${C - 20} tokens and maxNewTokens is 21`) &&
          e.message.includes(`context of ${C}`),
      );
      const [g] = await model.generate([tokens(C - 20)], { maxNewTokens: 20, stopTokens: [] });
      assert.equal(g.tokens.length, 20, 'exactly filling the context is allowed');
    });

    test('a million-token prompt is refused at once, before any compute', async () => {
      const t0 = performance.now();
      await assert.rejects(model.generate([tokens(1_000_000)], { maxNewTokens: 16 }), /1000000 tokens/);
      assert.ok(performance.now() - t0 < 1000, `took ${performance.now() - t0} ms`);
    });
  });
});
