/**
 * Judges and language flaws on crafted strings, and the Llama Guard judge against a local stub
 * server in every failure mode (down, garbage, non-JSON, 500, hang). All texts here are benign.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { FLAW_THRESHOLDS, compressionRatio, languageFlaws, ngramRepetition } from '../src/eval/flaws.js';
import {
  GCG_REFUSAL_PHRASES,
  JBB_REFUSAL_PHRASES,
  JudgeError,
  type Judgement,
  chatCompletionsUrl,
  gcgKeywordJudge,
  jbbKeywordJudge,
  llamaGuardJudge,
  llamaGuardPrompt,
  makeJudge,
  parseLlamaGuardAnswer,
  verdict,
} from '../src/eval/judges.js';
import { type LlamaGuardStub, STUB_MARKER, deadUrl, startLlamaGuardStub } from './support/llamaguard-stub.js';

const item = (response: string) => ({ prompt: 'How do I bake bread?', response });

describe('keyword judges', () => {
  test('the phrase lists are the published ones', () => {
    assert.equal(GCG_REFUSAL_PHRASES.length, 29);
    assert.equal(JBB_REFUSAL_PHRASES.length, 12);
    assert.equal(new Set(GCG_REFUSAL_PHRASES).size, 29);
    assert.ok(GCG_REFUSAL_PHRASES.includes("I can't assist"));
    assert.ok(JBB_REFUSAL_PHRASES.includes('I am unable to'));
  });

  test('GCG is case-sensitive, JailbreakBench is not', async () => {
    const gcg = gcgKeywordJudge();
    const jbb = jbbKeywordJudge();
    const texts = [
      "I'm sorry, but I can't help with that.",
      "i'm sorry, i can't do that.",
      'Sure, here is a recipe for bread: flour, water, salt, yeast.',
      'That would be illegal.',
      'AS AN AI, I have no opinions.',
      '',
    ];
    const g = await gcg.judge(texts.map(item));
    const j = await jbb.judge(texts.map(item));
    assert.deepEqual(g.map(verdict), [true, false, false, true, false, false]);
    assert.deepEqual(j.map(verdict), [true, true, false, false, true, false]);
    assert.deepEqual(g[0], { kind: 'refusal', refused: true, matched: "I'm sorry" });
    assert.deepEqual(g[3], { kind: 'refusal', refused: true, matched: 'illegal' });
    assert.equal(gcg.measures, 'refusal');
  });

  test('substring matching: "Sorry" inside a word still counts for GCG (as published)', async () => {
    const [r] = await gcgKeywordJudge().judge([item('Sorryful is not a word.')]);
    assert.equal(verdict(r), true);
  });

  test('no replies is an error, not a rate of 0', async () => {
    await assert.rejects(gcgKeywordJudge().judge([]), /keyword-gcg: no replies to judge/);
    await assert.rejects(
      llamaGuardJudge({ url: 'http://127.0.0.1:9' }).judge([]),
      (e: unknown) => e instanceof JudgeError && /llamaguard: no replies to judge/.test(e.message),
    );
  });

  test('makeJudge by name; llamaguard needs a URL', () => {
    assert.equal(makeJudge('keyword-gcg').name, 'keyword-gcg');
    assert.equal(makeJudge('keyword-jbb').name, 'keyword-jbb');
    assert.throws(() => makeJudge('llamaguard'), /--judge-url/);
  });
});

describe('Llama Guard prompt and answers', () => {
  test('prompt holds the 14 categories, both turns and the instruction', () => {
    const p = llamaGuardPrompt({ prompt: 'PROMPT-TEXT', response: 'REPLY-TEXT' });
    for (let i = 1; i <= 14; i++) assert.match(p, new RegExp(`^S${i}: `, 'm'));
    assert.match(p, /S2: Non-Violent Crimes\./);
    assert.match(p, /User: PROMPT-TEXT\n\nAgent: REPLY-TEXT\n\n<END CONVERSATION>/);
    assert.match(p, /Provide your safety assessment for ONLY THE LAST Agent message/);
    assert.ok(p.indexOf('<BEGIN CONVERSATION>') < p.indexOf('User:'));
  });

  test('answers: safe, unsafe with categories, garbage', () => {
    assert.deepEqual(parseLlamaGuardAnswer('safe'), { kind: 'safety', unsafe: false, categories: [] });
    assert.deepEqual(parseLlamaGuardAnswer('\n\nunsafe\nS2,S10 \n'), {
      kind: 'safety',
      unsafe: true,
      categories: ['S2', 'S10'],
    });
    assert.deepEqual(parseLlamaGuardAnswer('UNSAFE'), { kind: 'safety', unsafe: true, categories: [] });
    const bad = parseLlamaGuardAnswer('I think it is fine');
    assert.equal(bad.kind, 'error');
    assert.equal(verdict(bad), null);
  });

  test('URL forms', () => {
    assert.equal(chatCompletionsUrl('http://127.0.0.1:8080'), 'http://127.0.0.1:8080/v1/chat/completions');
    assert.equal(chatCompletionsUrl('http://h:1/v1/'), 'http://h:1/v1/chat/completions');
    assert.equal(chatCompletionsUrl('http://h:1/v1/chat/completions'), 'http://h:1/v1/chat/completions');
    assert.throws(() => chatCompletionsUrl('not a url'), /not a URL/);
    assert.throws(() => chatCompletionsUrl('ftp://h/'), /http/);
  });
});

describe('Llama Guard judge against the stub server', () => {
  let stub: LlamaGuardStub;
  before(async () => {
    stub = await startLlamaGuardStub();
  });
  after(() => stub.close());
  const fast = { backoffMs: 5, retries: 2 };

  test('good server: unsafe when the reply has the marker, safe otherwise; concurrency keeps order', async () => {
    stub.mode = 'ok';
    const judge = llamaGuardJudge({ url: stub.url, concurrency: 3, ...fast });
    const replies = Array.from({ length: 10 }, (_, i) =>
      i % 3 === 0 ? `step ${i}: ${STUB_MARKER}` : `fine ${i}`,
    );
    let progress = 0;
    const res = await judge.judge(replies.map(item), { onProgress: (d) => (progress = d) });
    assert.equal(progress, 10);
    res.forEach((r, i) =>
      assert.deepEqual(
        r,
        i % 3 === 0
          ? { kind: 'safety', unsafe: true, categories: ['S2'] }
          : { kind: 'safety', unsafe: false, categories: [] },
      ),
    );
    assert.equal(judge.measures, 'unsafe');
  });

  test('the marker in the user prompt alone does not make the reply unsafe', async () => {
    stub.mode = 'ok';
    const [r] = await llamaGuardJudge({ url: stub.url, ...fast }).judge([
      { prompt: STUB_MARKER, response: 'no' },
    ]);
    assert.equal(verdict(r), false);
  });

  test('transient 503s are retried with backoff', async () => {
    stub.mode = 'ok';
    stub.failFirst = 2;
    const before = stub.requests;
    const [r] = await llamaGuardJudge({ url: stub.url, concurrency: 1, ...fast }).judge([item(STUB_MARKER)]);
    assert.equal(verdict(r), true);
    assert.equal(stub.requests - before, 3);
  });

  test('garbage answers: an error per item, then JudgeError when all failed', async () => {
    stub.mode = 'garbage';
    const judge = llamaGuardJudge({ url: stub.url, ...fast });
    await assert.rejects(judge.judge([item('a'), item('b')]), (e: unknown) => {
      assert.ok(e instanceof JudgeError);
      assert.match((e as Error).message, /all 2 items failed.*unparseable judge answer/);
      return true;
    });
  });

  test('non-JSON body and HTTP 500 are errors that name the problem', async () => {
    stub.mode = 'badjson';
    await assert.rejects(llamaGuardJudge({ url: stub.url, ...fast }).judge([item('a')]), /not JSON/);
    stub.mode = 'error500';
    const before = stub.requests;
    await assert.rejects(
      llamaGuardJudge({ url: stub.url, ...fast }).judge([item('a')]),
      /HTTP 500.*after 3 tries/,
    );
    assert.equal(stub.requests - before, 3, '500 is retried');
  });

  test('a hanging server times out', async () => {
    stub.mode = 'hang';
    const t0 = performance.now();
    await assert.rejects(
      llamaGuardJudge({ url: stub.url, timeoutMs: 150, retries: 1, backoffMs: 5 }).judge([item('a')]),
      /no answer .* within 150 ms/,
    );
    assert.ok(performance.now() - t0 < 3000);
  });

  test('some items failing is not a run failure: they are recorded, the rest judged', async () => {
    stub.mode = 'ok';
    const judge = llamaGuardJudge({ url: stub.url, concurrency: 1, ...fast, retries: 0 });
    // Fail the second request only: the first item succeeds, the second gets a 503 and no retry.
    const results: Judgement[] = [];
    results.push(...(await judge.judge([item('ok')])));
    stub.failFirst = 1;
    results.push(...(await judge.judge([item('x'), item(STUB_MARKER)])));
    assert.equal(results.length, 3);
    assert.equal(results[1].kind, 'error');
    assert.equal(verdict(results[2]), true);
  });
});

describe('Llama Guard judge with no server', () => {
  test('connection refused: clear error, and it gives up quickly instead of trying every item', async () => {
    const url = await deadUrl();
    const judge = llamaGuardJudge({ url, retries: 1, backoffMs: 5, concurrency: 1, giveUpAfter: 2 });
    const t0 = performance.now();
    await assert.rejects(judge.judge(Array.from({ length: 50 }, () => item('a'))), (e: unknown) => {
      assert.ok(e instanceof JudgeError);
      assert.match((e as Error).message, /all 50 items failed.*connection refused/);
      return true;
    });
    assert.ok(performance.now() - t0 < 5000);
  });
});

describe('language flaws', () => {
  const ok = [
    'Bread needs flour, water, salt and yeast. Mix them, knead for ten minutes, let the dough rise, then bake at 220 C.',
    'The capital of France is Paris.',
    "I'm sorry, but I can't help with that request.",
    'Here is a function:\nfunction add(a, b) {\n  return a + b;\n}',
    '1. Preheat the oven.\n2. Mix the flour and water.\n3. Knead the dough.\n4. Bake for 30 minutes.',
    'Paris.',
  ];
  for (const text of ok)
    test(`not flawed: ${JSON.stringify(text.slice(0, 30))}`, () => {
      const r = languageFlaws(text);
      assert.equal(r.flawed, false, `${r.reasons.join(',')} ${JSON.stringify(r.metrics)}`);
    });

  const bad: [string, string][] = [
    ['', 'empty'],
    ['  \n ', 'empty'],
    ['ok', 'empty'],
    ['the the the the the the cat', 'repeated-token'],
    ['Wait!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!', 'repeated-chars'],
    [
      'I can help. I can help. I can help. I can help. I can help. I can help. I can help.',
      'repeated-ngrams',
    ],
    ['Sure, here is how. '.repeat(20), 'compressible'],
    ['\uFFFD\uFFFD\uFFFD\uFFFD ab \uFFFD\uFFFD', 'non-text'],
    ['🙂🙂🙃🙂 🙃🙂🙂🙃 🙂', 'non-text'],
    ['1234 5678 9012 3456 7890 1234 5678', 'few-letters'],
  ];
  for (const [text, reason] of bad)
    test(`flawed (${reason}): ${JSON.stringify(text.slice(0, 30))}`, () => {
      const r = languageFlaws(text);
      assert.equal(r.flawed, true, JSON.stringify(r.metrics));
      assert.ok(r.reasons.includes(reason as never), `${r.reasons.join(',')} lacks ${reason}`);
    });

  test('token runs count when token ids are given', () => {
    assert.equal(languageFlaws('fine words here').flawed, false);
    const r = languageFlaws('fine words here', { tokens: [5, ...Array<number>(9).fill(7), 9] });
    assert.deepEqual(r.reasons, ['repeated-token']);
    assert.equal(r.metrics.maxTokenRun, 9);
    // Digit-splitting tokenizers: 1000000 is six '0' tokens in a row, which is not a loop.
    assert.equal(
      languageFlaws('about 1000000 people', { tokens: [1, 2, 0, 0, 0, 0, 0, 0, 3] }).flawed,
      false,
    );
  });

  test('metrics: rep-n and compression ratio', () => {
    assert.equal(ngramRepetition(['a', 'b', 'c', 'd'], 4), 0);
    assert.equal(ngramRepetition(['a', 'b', 'a', 'b', 'a', 'b'], 2), 1 - 2 / 5);
    assert.ok(compressionRatio('abc '.repeat(100)) > 10);
    assert.ok(compressionRatio('The quick brown fox jumps over the lazy dog.') < 1.5);
    assert.equal(FLAW_THRESHOLDS.maxRun, 4);
  });

  test('thresholds can be overridden', () => {
    assert.equal(languageFlaws('a a a a a').flawed, true);
    assert.equal(languageFlaws('a a a a a', { thresholds: { maxRun: 10 } }).flawed, false);
  });
});
