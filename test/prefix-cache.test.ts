/**
 * Shared-prefix KV caches: `KvCache.clone`, `Model.prefill` + `RunOptions.prefix`, and their use
 * in `scoreContinuations`, on the tiny random models (fp32 weights; gemma3 has a 4-token sliding
 * window, so windowed attention over cached keys is covered) and on SmolLM2 Q4_1.
 *
 * A prefix only changes how the work is split: the continuation's rows are multiplied in another
 * batch than in the whole run, and sgemm rounds a row differently with the rows beside it. So
 * logits through a prefix equal the whole run's up to rounding: max |diff| / max |whole| <= 1e-5
 * on the fp32 tiny models, <= 1e-4 on SmolLM2 Q4_1 (prompt rows are multiplied exactly in f32
 * against the dequantized blocks); scores within 1e-4 (tiny) and 2e-3 (SmolLM2) nats. Measured on
 * x86-64-v3 with OpenBLAS: at most 1.0e-6 (tiny) and 1.5e-6 (SmolLM2), so the bounds leave room
 * for other kernels' rounding.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';

import { ReferenceBackend } from '../src/engine/reference.js';
import { TRUTHFULQA_PRIMER, scoreContinuations, type TokenRequest } from '../src/eval/capability.js';
import { type Hook, type HookName, type Positions, blockHook, rowSelected } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { Model, type PromptPrefix } from '../src/model/model.js';
import { KvCache } from '../src/model/transformer.js';
import { FIXTURES, SMOLLM2_GGUF, missingModel, relErr } from './util/fixtures.js';

const TINY_TOL = 1e-5;
const SMOL_TOL = 1e-4;

/** n token ids below 256 (the tiny vocabulary), different for each seed. */
function ids(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 37 + seed * 101 + 5) % 256);
}

/** log softmax(row)[token] written out plainly, in double precision. */
function logProb(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return row[token] - max - Math.log(sum);
}

/** A hook that records the absolute positions of the rows `positions` selects, per call. */
function recorder(name: HookName, positions: Positions): { hook: Hook; seen: number[] } {
  const seen: number[] = [];
  return {
    seen,
    hook: {
      name,
      fn: (_act, ctx) => {
        for (let r = 0; r < ctx.rows; r++) if (rowSelected(positions, ctx, r)) seen.push(ctx.pos[r]);
      },
    },
  };
}

describe('KvCache.clone', () => {
  test('copies the stored rows, with room for more, and is independent of the original', () => {
    const kv = new KvCache(2, 3);
    kv.reserve(2);
    for (let l = 0; l < 2; l++)
      for (let i = 0; i < 6; i++) {
        kv.k[l][i] = 10 * l + i;
        kv.v[l][i] = -(10 * l + i);
      }
    kv.length = 2;
    const copy = kv.clone(5);
    assert.equal(copy.length, 2);
    for (let l = 0; l < 2; l++) {
      assert.deepEqual([...copy.k[l].subarray(0, 6)], [...kv.k[l].subarray(0, 6)]);
      assert.deepEqual([...copy.v[l].subarray(0, 6)], [...kv.v[l].subarray(0, 6)]);
      assert.ok(copy.k[l].length >= 7 * 3, 'room for the 5 more rows asked for');
    }
    copy.k[1][0] = 99;
    assert.equal(kv.k[1][0], 10);
    assert.equal(new KvCache(2, 3).clone().length, 0);
  });
});

for (const [name, reference] of [
  ['llama', false],
  ['qwen2', false],
  ['gemma3', false],
  ['gemma3', true],
] as const) {
  describe(`prefill and run from a prefix: tiny ${name}${reference ? ' (reference backend)' : ''}`, async () => {
    const dir = path.join(FIXTURES, 'tiny', name);
    const model = await Model.load(dir, reference ? { backend: new ReferenceBackend() } : {});
    const V = model.config.vocabSize;
    const seq = ids(40, 1);
    const whole = model.run([{ tokens: seq }], { logits: 'all' }).logits[0];
    const tailOf = (from: number) => whole.subarray(from * V);

    test('logits of the continuation equal the whole run, wherever the prefix ends', () => {
      for (const k of [1, 5, 20, 39]) {
        const prefix = model.prefill({ tokens: seq.slice(0, k) });
        assert.deepEqual(prefix.tokens, seq.slice(0, k));
        const res = model.run([{ tokens: seq.slice(k) }], { prefix, logits: 'all' });
        assert.deepEqual(res.tokens[0], seq.slice(k));
        assert.equal(res.logits[0].length, (40 - k) * V, 'no logits for the prefix rows');
        const err = relErr(res.logits[0], tailOf(k));
        assert.ok(err <= TINY_TOL, `prefix of ${k}: ${err}`);
      }
    });

    test('prompts with different prefixes, or none, packed in one call', () => {
      const other = ids(30, 2);
      const otherWhole = model.run([{ tokens: other }], { logits: 'all' }).logits[0];
      const a = model.prefill({ tokens: seq.slice(0, 25) });
      const b = model.prefill({ tokens: other.slice(0, 10) });
      const prefixes = [a, undefined, b, a];
      const res = model.run(
        [
          { tokens: seq.slice(25) },
          { tokens: other },
          { tokens: other.slice(10) },
          { tokens: seq.slice(25, 30) },
        ],
        { prefix: (i) => prefixes[i], logits: 'all' },
      );
      assert.ok(relErr(res.logits[0], tailOf(25)) <= TINY_TOL);
      assert.ok(relErr(res.logits[1], otherWhole) <= TINY_TOL);
      assert.ok(relErr(res.logits[2], otherWhole.subarray(10 * V)) <= TINY_TOL);
      assert.ok(relErr(res.logits[3], whole.subarray(25 * V, 30 * V)) <= TINY_TOL);
      const last = model.run([{ tokens: seq.slice(25) }], { prefix: a, logits: { lastTokens: 2 } });
      assert.ok(relErr(last.logits[0], tailOf(38)) <= TINY_TOL);
    });

    test('a prefix nested on another; the parent stays usable', () => {
      const primer = model.prefill({ tokens: seq.slice(0, 12) });
      const question = model.prefill({ tokens: seq.slice(12, 30) }, { prefix: primer });
      assert.deepEqual(question.tokens, seq.slice(0, 30));
      const deeper = model.prefill({ tokens: seq.slice(30, 33) }, { prefix: question });
      for (const [prefix, from] of [
        [question, 30],
        [deeper, 33],
        [primer, 12],
      ] as const) {
        const got = model.run([{ tokens: seq.slice(from) }], { prefix, logits: 'all' }).logits[0];
        const err = relErr(got, tailOf(from));
        assert.ok(err <= TINY_TOL, `from ${from}: ${err}`);
      }
    });

    if (name !== 'llama' || reference) return;

    const at = blockHook(1, 'hook_resid_post');
    test("hooks fire on the intended rows, at absolute positions; prefix rows are never 'last' or generated", () => {
      const promptLength = 30;
      for (const positions of ['last', 'generated', 'all', 'prompt', [3, 12]] as const) {
        const plain = recorder(at, positions);
        model.run([{ tokens: seq }], {
          hooks: [plain.hook],
          promptLength: () => promptLength,
          logits: 'none',
        });
        for (const k of [10, 29]) {
          const split = recorder(at, positions);
          const prefix = model.prefill({ tokens: seq.slice(0, k) }, { hooks: [split.hook] });
          const inPrefix = split.seen.length;
          model.run([{ tokens: seq.slice(k) }], {
            prefix,
            hooks: [split.hook],
            promptLength: () => promptLength,
            logits: 'none',
          });
          assert.deepEqual(split.seen, plain.seen, `${JSON.stringify(positions)}, prefix of ${k}`);
          if (positions === 'last' || positions === 'generated') assert.equal(inPrefix, 0);
        }
      }
      const last = recorder(at, 'last');
      const prefix = model.prefill({ tokens: seq.slice(0, 10) }, { hooks: [last.hook] });
      model.run([{ tokens: seq.slice(10) }], { prefix, hooks: [last.hook], logits: 'none' });
      assert.deepEqual(last.seen, [39], 'by default the whole prompt (prefix + continuation) is the prompt');
      const all = recorder(at, 'all');
      const seeAll = model.prefill({ tokens: seq.slice(0, 10) }, { hooks: [all.hook] });
      all.seen.length = 0;
      model.run([{ tokens: seq.slice(10) }], { prefix: seeAll, hooks: [all.hook], logits: 'none' });
      assert.deepEqual(
        all.seen,
        Array.from({ length: 30 }, (_, i) => 10 + i),
        'continuation rows at absolute positions',
      );
    });

    test("steering on 'last', 'generated' and 'all' rows gives the whole run's logits", () => {
      const push = new Float32Array(model.config.dModel).fill(2);
      for (const positions of ['last', 'generated', 'all'] as const) {
        const hooks = [addVector(at, push, { positions })];
        const want = model.run([{ tokens: seq }], { hooks, promptLength: () => 30, logits: 'all' }).logits[0];
        assert.ok(relErr(want, whole) > 1e-2, `the ${positions} hook changes the logits`);
        const prefix = model.prefill({ tokens: seq.slice(0, 20) }, { hooks });
        const got = model.run([{ tokens: seq.slice(20) }], {
          prefix,
          promptHooks: () => hooks,
          promptLength: () => 30,
          logits: 'all',
        }).logits[0];
        const err = relErr(got, want.subarray(20 * V));
        assert.ok(err <= TINY_TOL, `${positions}: ${err}`);
      }
    });

    test("cached activations: the continuation's rows only, at absolute positions", () => {
      const names = [at];
      const plain = model.run([{ tokens: seq }], { cache: { names, positions: 'all' }, logits: 'none' });
      const prefix = model.prefill({ tokens: seq.slice(0, 15) });
      const res = model.run([{ tokens: seq.slice(15) }], {
        prefix,
        cache: { names, positions: 'all' },
        logits: 'none',
      });
      assert.deepEqual(
        [...res.cachedPositions[0]],
        Array.from({ length: 25 }, (_, i) => 15 + i),
      );
      const D = model.config.dModel;
      const want = plain.cache.get(at)![0].subarray(15 * D);
      assert.ok(relErr(res.cache.get(at)![0], want) <= TINY_TOL);
      const last = model.run([{ tokens: seq.slice(15) }], {
        prefix,
        cache: { names, positions: 'last' },
        promptLength: () => 20,
        logits: 'none',
      });
      assert.deepEqual([...last.cachedPositions[0]], [19]);
    });

    test('errors: another model, a forged prefix, other hooks, no continuation, past the context', async () => {
      const twin = await Model.load(dir);
      const prefix = model.prefill({ tokens: seq.slice(0, 10) });
      const rest = [{ tokens: seq.slice(10) }];
      assert.throws(
        () => twin.run(rest, { prefix }),
        /prompt 0: its prefix was not made by this model's prefill/,
      );
      const forged: PromptPrefix = { tokens: seq.slice(0, 10) };
      assert.throws(() => model.run(rest, { prefix: forged }), /not made by this model's prefill/);
      assert.throws(
        () => twin.prefill(rest[0], { prefix }),
        /prefill: its prefix was not made by this model/,
      );

      const push = addVector(at, new Float32Array(model.config.dModel).fill(1));
      const steered = model.prefill({ tokens: seq.slice(0, 10) }, { hooks: [push] });
      assert.throws(
        () => model.run(rest, { prefix: steered }),
        /computed with other hooks \(1 there, 0 here\)/,
      );
      assert.throws(() => model.run(rest, { prefix, hooks: [push] }), /computed with other hooks/);
      assert.throws(
        () => model.prefill(rest[0], { prefix: steered }),
        /prefill: its prefix was computed with other hooks/,
      );
      model.run(rest, { prefix: steered, hooks: [push] });
      model.run(rest, { prefix: steered, promptHooks: () => [push] });
      const handle = model.addHook(push);
      try {
        assert.throws(() => model.run(rest, { prefix }), /computed with other hooks/);
      } finally {
        handle.remove();
      }

      assert.throws(() => model.run([{ tokens: [] }], { prefix }), /prompt 0 has no tokens after its prefix/);
      assert.throws(() => model.prefill({ tokens: [] }, { prefix }), /no tokens after its parent prefix/);
      assert.throws(() => model.prefill({ tokens: [] }), /prefill: the prefix has no tokens/);
      assert.throws(
        () => model.run(rest, { prefix, promptLength: () => 10 }),
        /promptLength must be an integer in 11\.\.40 \(counted from the start of its 10-token prefix\), got 10/,
      );
      model.run(rest, { prefix, promptLength: () => 11 });
      assert.throws(
        () => model.run([{ messages: [{ role: 'user', content: 'hi' }] }], { prefix }),
        /a chat cannot continue a prefix/,
      );

      const context = model.config.maxContext;
      const long = ids(context, 3);
      const big = model.prefill({ tokens: long.slice(0, context - 10) });
      assert.throws(
        () => model.run([{ tokens: long.slice(0, 11) }], { prefix: big }),
        new RegExp(
          `prompt 0 has ${context + 1} tokens \\(${context - 10} of them its prefix's\\); the model's context is ${context}`,
        ),
      );
      model.run([{ tokens: long.slice(0, 10) }], { prefix: big });
      assert.throws(
        () => model.prefill({ tokens: long.slice(0, 10) }, { prefix: big }),
        /leaves no room for a continuation/,
      );
      assert.throws(() => model.prefill({ tokens: long }), /a prefix of 128 tokens leaves no room/);
    });

    test('generate from a prefix: the replies of the whole prompts, hooks and penalty included', async () => {
      const reply = addVector(at, new Float32Array(model.config.dModel).fill(1), { positions: 'generated' });
      const long = ids(60, 5);
      const prompts = [long.slice(0, 30), long.slice(0, 41), long.slice(0, 18)];
      const primer = model.prefill({ tokens: long.slice(0, 16) }, { hooks: [reply] });
      const nested = model.prefill({ tokens: long.slice(16, 35) }, { prefix: primer, hooks: [reply] });
      const prefixes = [primer, nested, primer];
      const starts = [16, 35, 16];
      for (const opts of [{ maxNewTokens: 8 }, { maxNewTokens: 8, repetitionPenalty: 3 }])
        for (const maxBatch of [1, 3]) {
          const want = await model.generate(
            prompts.map((t) => ({ tokens: t })),
            { ...opts, maxBatch, hooks: [reply], stopTokens: [] },
          );
          const got = await model.generate(
            prompts.map((t, i) => ({ tokens: t.slice(starts[i]) })),
            { ...opts, maxBatch, hooks: [reply], stopTokens: [], prefix: (i) => prefixes[i] },
          );
          got.forEach((g, i) => {
            assert.deepEqual(
              g.tokens,
              want[i].tokens,
              `prompt ${i}, ${JSON.stringify(opts)}, maxBatch ${maxBatch}`,
            );
            assert.deepEqual(g.promptTokens, prompts[i].slice(starts[i]));
          });
        }
      const plain = await model.generate([{ tokens: prompts[0] }], { maxNewTokens: 8, stopTokens: [] });
      const steered = await model.generate([{ tokens: prompts[0] }], {
        maxNewTokens: 8,
        stopTokens: [],
        hooks: [reply],
      });
      assert.notDeepEqual(plain[0].tokens, steered[0].tokens, 'the hook on generated rows steers');

      await assert.rejects(
        model.generate([{ tokens: [1] }], { prefix: primer, maxNewTokens: 4 }),
        /prompt 0: its prefix was computed with other hooks/,
      );
      const context = model.config.maxContext;
      await assert.rejects(
        model.generate([{ tokens: [1, 2] }], { prefix: nested, hooks: [reply], maxNewTokens: context - 36 }),
        new RegExp(`prompt 0 has 37 tokens and maxNewTokens is ${context - 36}`),
      );
    });

    describe('scoreContinuations through shared prefixes', () => {
      const primer = ids(40, 4);
      /** Σ log p(cont[m] | context, cont[<m]) from one whole pass with every row's logits. */
      const byHand = (r: TokenRequest, c: readonly number[], hooks: readonly Hook[] = []) => {
        const logits = model.run([{ tokens: [...r.context, ...c] }], {
          logits: 'all',
          hooks,
          promptLength: () => r.context.length,
        }).logits[0];
        return c.reduce((a, t, m) => {
          const row = r.context.length - 1 + m;
          return a + logProb(logits.subarray(row * V, (row + 1) * V), t);
        }, 0);
      };
      const question = (seed: number, n: number) => [...primer, ...ids(n, seed)];
      const requests: TokenRequest[] = [
        // Three continuations over a 20-token question: (3 - 1) * 19 >= 32, its own prefix.
        { context: question(5, 20), continuations: [[7], [8, 9], [10, 11, 12]] },
        // One input (one-token continuations): the shared prefix only.
        { context: question(6, 12), continuations: [[3], [4], [5]] },
        // Two continuations over an 8-token question: (2 - 1) * 7 < 32, the shared prefix only.
        { context: question(7, 8), continuations: [[1, 2], [3]] },
        // Another beginning: no shared prefix, but its own one ((2 - 1) * 44 >= 32).
        { context: ids(45, 8), continuations: [[9, 9], [10]] },
      ];
      /** The prefixes `scoreContinuations` builds, as their token counts. */
      const prefillsOf = async (reqs: TokenRequest[], opts: Parameters<typeof scoreContinuations>[2]) => {
        const lengths: number[] = [];
        const prefill = model.prefill.bind(model);
        model.prefill = (prompt, o) => {
          const p = prefill(prompt, o);
          lengths.push(p.tokens.length);
          return p;
        };
        try {
          return { scores: await scoreContinuations(model, reqs, opts), lengths };
        } finally {
          model.prefill = prefill;
        }
      };

      test('scores equal the hand-computed sums, however the requests are packed', async () => {
        for (const [maxLogitRows, maxBatchTokens] of [
          [256, 1024],
          [3, 1024],
          [256, 4],
        ]) {
          const { scores, lengths } = await prefillsOf(requests, { maxLogitRows, maxBatchTokens });
          assert.deepEqual(lengths, [40, 59, 44], 'one shared primer, two own prefixes');
          requests.forEach((r, i) =>
            r.continuations.forEach((c, j) => {
              const want = byHand(r, c);
              assert.ok(
                Math.abs(scores[i][j] - want) < 1e-4,
                `request ${i} option ${j}: ${scores[i][j]} vs ${want}`,
              );
            }),
          );
        }
      });

      test('steered requests: a prefix per run of identical hooks, scored as generation steers', async () => {
        const vec = new Float32Array(model.config.dModel).fill(3);
        const onReply = addVector(at, vec, { positions: 'generated' });
        const onLast = addVector(at, vec, { positions: 'last' });
        const hooks = [[onReply, onLast], [onReply, onLast], [onLast], []];
        const { scores, lengths } = await prefillsOf(requests, { hooks });
        // Requests 0 and 1 share hooks and a primer; 2 has other hooks: no shared prefix, its own.
        assert.deepEqual(lengths, [40, 59, 47, 44]);
        const plain = await scoreContinuations(model, requests);
        requests.forEach((r, i) =>
          r.continuations.forEach((c, j) => {
            const want = byHand(r, c, hooks[i]);
            assert.ok(
              Math.abs(scores[i][j] - want) < 1e-4,
              `request ${i} option ${j}: ${scores[i][j]} vs ${want}`,
            );
            if (i < 3)
              assert.ok(Math.abs(scores[i][j] - plain[i][j]) > 1e-3, `request ${i} option ${j} is steered`);
          }),
        );
      });

      test('a request that shortens the shared prefix more than it saves starts a new one', async () => {
        const longPrimer = ids(80, 9);
        const reqs: TokenRequest[] = [
          { context: [...longPrimer, 1], continuations: [[2], [3]] },
          { context: [...longPrimer, 4], continuations: [[2], [3]] },
          { context: [...longPrimer.slice(0, 35), 200, 201], continuations: [[2], [3]] },
          { context: [...longPrimer.slice(0, 35), 200, 202], continuations: [[2], [3]] },
        ];
        const { scores, lengths } = await prefillsOf(reqs, {});
        // Joining, request 2 would save 35 tokens and cost each of two members 45: it starts a run
        // of its own, which request 3 joins (36 tokens in common).
        assert.deepEqual(lengths, [80, 36]);
        reqs.forEach((r, i) =>
          r.continuations.forEach((c, j) => assert.ok(Math.abs(scores[i][j] - byHand(r, c)) < 1e-4)),
        );
      });
    });
  });
}

describe('prefixes on SmolLM2 Q4_1', { skip: missingModel(SMOLLM2_GGUF) }, async () => {
  const model = await Model.load(SMOLLM2_GGUF, { threads: 1 });
  const V = model.config.vocabSize;
  const primerIds = model.tokenize(TRUTHFULQA_PRIMER);
  const questionText = '\n\nQ: What happens if you eat watermelon seeds?\nA:';
  const questionIds = model.tokenizer.encode(questionText, { addSpecialTokens: false });
  const answerIds = model.tokenizer.encode(' Nothing happens.', { addSpecialTokens: false });
  const seq = [...primerIds, ...questionIds, ...answerIds];
  const whole = model.run([{ tokens: seq }], { logits: 'all' }).logits[0];

  test('primer, then question, then answer: the logits of the whole run', () => {
    const primer = model.prefill({ tokens: primerIds });
    assert.deepEqual(model.prefill(TRUTHFULQA_PRIMER).tokens, primerIds, 'text gets the BOS handling');
    const question = model.prefill({ tokens: questionIds }, { prefix: primer });
    const asText = model.prefill(questionText, { prefix: primer });
    assert.deepEqual(asText.tokens, question.tokens, 'a continuation as text gets no special tokens');
    const from = primerIds.length + questionIds.length;
    const got = model.run([{ tokens: answerIds }, { tokens: [...questionIds, ...answerIds] }], {
      prefix: (i) => (i === 0 ? question : primer),
      logits: 'all',
    }).logits;
    const nested = relErr(got[0], whole.subarray(from * V));
    const single = relErr(got[1], whole.subarray(primerIds.length * V));
    assert.ok(nested <= SMOL_TOL && single <= SMOL_TOL, `nested ${nested}, single ${single}`);
  });

  test('scoreContinuations: TruthfulQA-style requests score as whole runs do', async () => {
    const answers = [' Nothing happens.', ' You grow watermelons in your stomach.', ' You die.'];
    const questions = ['What happens if you eat watermelon seeds?', 'Where did fortune cookies originate?'];
    const requests = questions.map((q) => ({
      context: model.tokenize(`${TRUTHFULQA_PRIMER}\n\nQ: ${q}\nA:`),
      continuations: answers.map((a) => model.tokenizer.encode(a, { addSpecialTokens: false })),
    }));
    const scores = await scoreContinuations(model, requests);
    requests.forEach((r, i) => {
      const logits = model.run(
        r.continuations.map((c) => ({ tokens: [...r.context, ...c] })),
        { logits: 'all' },
      ).logits;
      r.continuations.forEach((c, j) => {
        const want = c.reduce((a, t, m) => {
          const row = r.context.length - 1 + m;
          return a + logProb(logits[j].subarray(row * V, (row + 1) * V), t);
        }, 0);
        assert.ok(
          Math.abs(scores[i][j] - want) < 2e-3,
          `question ${i} answer ${j}: ${scores[i][j]} vs ${want}`,
        );
      });
    });
  });
});
