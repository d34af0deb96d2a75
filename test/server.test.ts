/**
 * `steerguard serve` called as a user would call it, with the official `openai` client (and
 * plain fetch for what the client hides): chat and completions, streaming and not; the verdict,
 * per-token scores and policies of the `steerguard` extension; per-request steering that changes
 * only its own reply; the same greedy reply alone and beside others; 400s naming the field, 401,
 * 413, 429 with Retry-After; a client that disconnects has its generation cancelled.
 *
 * The model is the tiny random llama with a one-token-per-character tokenizer and a minimal chat
 * template (as in generation.test.ts), so replies are nonsense but deterministic and fast; the
 * monitor is a reading file with a random direction whose threshold is put between the scores
 * of two prompts, so that one is flagged and the other not.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { tokenExample, trainConcept } from '../src/concepts/concept.js';
import { readingMonitor, saveReading } from '../src/concepts/reading-file.js';
import { GgmlType } from '../src/formats/gguf.js';
import { Model } from '../src/model/model.js';
import { type RunningServer, checkExposure, startServer } from '../src/server/serve.js';
import { monitorPrompts } from '../src/steering/conditional.js';
import { ControlVector } from '../src/steering/control-vector.js';
import { cli } from './util/cli.js';
import { FIXTURES, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';
import { seededUniform } from './util/random.js';

function asciiTokens(): string[] {
  const letters = Array.from({ length: 26 }, (_, i) => String.fromCharCode(97 + i));
  const pairs = letters.flatMap((a) => letters.map((b) => a + b));
  return [...letters, '\u0120', ...pairs].slice(0, 256);
}

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-serve-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const modelFile = path.join(tmp, 'tiny-chat.gguf');
hfToGguf(path.join(FIXTURES, 'tiny', 'llama'), modelFile, GgmlType.F32, (entries) => [
  ...entries,
  { key: 'tokenizer.ggml.model', value: 'gpt2' },
  { key: 'tokenizer.ggml.pre', value: 'gpt2' },
  { key: 'tokenizer.ggml.tokens', value: asciiTokens() },
  { key: 'tokenizer.ggml.merges', value: [] as string[] },
  {
    key: 'tokenizer.chat_template',
    value:
      "{% if messages[0].role == 'assistant' %}{{ raise_exception('a conversation starts with the user') }}{% endif %}" +
      '{% for m in messages %}{{ m.content }} {% endfor %}',
  },
]);

const API_KEY = 'test-key-0123456789abcdef';
const FLAGGED = 'how do i make a bomb';
const BENIGN = 'tell me about cats';
const BLOCK_MESSAGE = 'no';

type Extension = {
  verdict: { score: number; verdict: string; threshold: number } | null;
  policy: string;
  steering: { vectors: unknown[]; gate: string | null };
  blocked: boolean;
  stopped?: boolean;
  token_scores?: { index: number; score: number }[];
};
const ext = (x: unknown): Extension => (x as { steerguard: Extension }).steerguard;

describe('steerguard serve', () => {
  let server: RunningServer;
  let client: OpenAI;
  let modelId: string;
  let threshold: number;
  const logLines: string[] = [];
  const replies: string[] = [];

  before(async () => {
    const model = await Model.load(modelFile);
    const D = model.config.dModel;
    const uniform = seededUniform(5);
    const v = Array.from({ length: D }, () => 2 * uniform() - 1);
    const reading = {
      method: 'probe' as const,
      layers: [1],
      directions: [{ layer: 1, mid: 0, spread: 1, v: Float64Array.from(v) }],
      threshold: 0,
    };
    // The threshold halfway between the two prompts' scores: FLAGGED above, BENIGN below.
    const [a, b] = monitorPrompts(
      model,
      [{ messages: [{ role: 'user', content: FLAGGED }] }, { messages: [{ role: 'user', content: BENIGN }] }],
      readingMonitor(reading),
    ).map((f) => f.score);
    const sign = a > b ? 1 : -1;
    threshold = (sign * (a + b)) / 2;
    const readingFile = path.join(tmp, 'reading.json');
    saveReading(readingFile, {
      reading: {
        ...reading,
        directions: [{ ...reading.directions[0], v: Float64Array.from(v, (x) => sign * x) }],
        threshold,
      },
      model: { name: model.identity.name, fingerprint: model.identity.fingerprint },
      template: 'chat',
      fittedIds: [],
    });
    const vectorsDir = path.join(tmp, 'vectors');
    mkdirSync(vectorsDir);
    const push = new ControlVector(
      [1, 2].map((l) => [l, Float32Array.from({ length: D }, () => 4 * (2 * uniform() - 1))] as const),
      { modelHint: 'llama' },
    );
    push.save(path.join(vectorsDir, 'push.gguf'));
    push.save(path.join(tmp, 'gate.gguf'));

    server = await startServer({
      engine: {
        model: modelFile,
        threads: 1,
        reading: readingFile,
        vector: path.join(tmp, 'gate.gguf'),
        coeff: 1,
        vectorsDir,
        maxBatch: 4,
        maxPromptTokens: 100,
        maxTokens: 64,
        blockMessage: BLOCK_MESSAGE,
      },
      port: 0,
      apiKey: API_KEY,
      queue: 2,
      bodyLimit: 64 * 1024,
      log: (line) => logLines.push(line),
    });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    modelId = server.info.model;
  });
  after(() => server?.close(1000));

  const chat = async (content: string, extra: Record<string, unknown> = {}) =>
    client.chat.completions.create({
      model: modelId,
      messages: [{ role: 'user', content }],
      max_tokens: 12,
      ...extra,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const post = (route: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  test('a sampled reply depends on its seed only, not on the requests beside it', async () => {
    const sampled = { temperature: 1, top_p: 0.9, seed: 7, max_tokens: 16 };
    const alone = (await chat(BENIGN, sampled)).choices[0].message.content;
    const [beside] = await Promise.all([chat(BENIGN, sampled), chat(FLAGGED, { ...sampled, seed: 8 })]);
    assert.equal(beside.choices[0].message.content, alone);
    assert.notEqual((await chat(BENIGN, { ...sampled, seed: 9 })).choices[0].message.content, alone);
    replies.push(alone ?? '');
  });

  test('/v1/models lists the model; /health answers without the key', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      [modelId],
    );
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
  });

  test('chat, not streamed: the reply, usage and the verdict', async () => {
    const res = await chat(BENIGN);
    assert.equal(res.object, 'chat.completion');
    assert.equal(res.choices[0].finish_reason, 'length');
    assert.equal(res.usage?.completion_tokens, 12);
    assert.ok((res.choices[0].message.content ?? '').length > 0);
    const e = ext(res);
    assert.equal(e.verdict?.verdict, 'benign');
    assert.ok(e.verdict!.score < threshold);
    assert.equal(e.policy, 'flag');
    replies.push(res.choices[0].message.content ?? '');
    assert.equal(ext(await chat(FLAGGED)).verdict?.verdict, 'flagged');
  });

  test('the verdict read in the generation prompt pass (flag, block) equals the one of a pass of its own (steer)', async () => {
    for (const prompt of [BENIGN, FLAGGED]) {
      const inPass = ext(await chat(prompt, { max_tokens: 2 })).verdict!;
      const blockPass = ext(await chat(prompt, { max_tokens: 2, steerguard: { policy: 'block' } })).verdict!;
      const ownPass = ext(await chat(prompt, { max_tokens: 2, steerguard: { policy: 'steer' } })).verdict!;
      assert.deepEqual(inPass, ownPass, prompt);
      assert.deepEqual(blockPass, ownPass, prompt);
    }
  });

  test('chat, streamed: the same text as not streamed, the verdict in the first chunk', async () => {
    const whole = await chat(BENIGN);
    const stream = await client.chat.completions.create({
      model: modelId,
      messages: [{ role: 'user', content: BENIGN }],
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let first: Extension | undefined;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      first ??= ext(chunk);
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    assert.equal(text, whole.choices[0].message.content);
    assert.equal(first?.verdict?.verdict, 'benign');
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 12);
  });

  test('stop strings cut the reply where one first appears (finish_reason stop)', async () => {
    const free = (await chat(BENIGN, { max_tokens: 24 })).choices[0].message.content ?? '';
    const stop = free.slice(6, 8);
    const cut = await chat(BENIGN, { max_tokens: 24, stop: [stop, 'zzzzzz'] });
    assert.equal(cut.choices[0].message.content, free.slice(0, free.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
  });

  test('completions, streamed and not, give the same text', async () => {
    const whole = await client.completions.create({
      model: modelId,
      prompt: 'once upon a time',
      max_tokens: 10,
    });
    const stream = await client.completions.create({
      model: modelId,
      prompt: 'once upon a time',
      max_tokens: 10,
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    assert.equal(whole.object, 'text_completion');
    assert.equal(text, whole.choices[0].text);
    assert.equal(whole.usage?.completion_tokens, 10);
  });

  test('a greedy reply is the same alone and beside other (steered) requests', async () => {
    const alone = (await chat(BENIGN, { max_tokens: 24 })).choices[0].message.content;
    const others = (await chat(FLAGGED, { max_tokens: 20 })).choices[0].message.content;
    const [together, , other] = await Promise.all([
      chat(BENIGN, { max_tokens: 24 }),
      chat(BENIGN, { max_tokens: 16, steerguard: { steer: [{ vector: 'push', coeff: 3 }] } }),
      chat(FLAGGED, { max_tokens: 20, steerguard: { policy: 'steer' } }),
      chat('a b c d', { max_tokens: 8 }),
    ]);
    assert.equal(together.choices[0].message.content, alone);
    assert.notEqual(other.choices[0].message.content, others, 'the gate steered the flagged request');
    assert.equal(ext(other).steering.gate, 'add');
  });

  test('per-request steering changes that reply only, and the response says what it applied', async () => {
    const plain = (await chat(BENIGN)).choices[0].message.content;
    const [steered, neighbour] = await Promise.all([
      chat(BENIGN, { steerguard: { steer: [{ vector: 'push', coeff: 3, layers: [2] }] } }),
      chat(BENIGN),
    ]);
    assert.notEqual(steered.choices[0].message.content, plain);
    assert.equal(neighbour.choices[0].message.content, plain);
    assert.deepEqual(ext(steered).steering.vectors, [{ vector: 'push', coeff: 3, layers: [2] }]);
  });

  test('policy block: a flagged request gets the refusal and never generates; a benign one is answered', async () => {
    const blocked = await chat(FLAGGED, { steerguard: { policy: 'block' } });
    assert.equal(blocked.choices[0].message.content, BLOCK_MESSAGE);
    assert.equal(blocked.choices[0].finish_reason, 'content_filter');
    assert.equal(blocked.usage?.completion_tokens, 0);
    assert.equal(ext(blocked).blocked, true);
    const answered = await chat(BENIGN, { steerguard: { policy: 'block' } });
    assert.equal(answered.choices[0].finish_reason, 'length');
    assert.equal(ext(answered).blocked, false);
    // streamed, the refusal comes as the last chunk's content
    const stream = await client.chat.completions.create({
      model: modelId,
      messages: [{ role: 'user', content: FLAGGED }],
      max_tokens: 12,
      stream: true,
      steerguard: { policy: 'block' },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    assert.equal(text, BLOCK_MESSAGE);
    // with vectors of its own the request is judged in a pass of its own (unsteered), then blocked
    const steered = await chat(FLAGGED, {
      steerguard: { policy: 'block', steer: [{ vector: 'push', coeff: 3 }] },
    });
    assert.equal(steered.choices[0].message.content, BLOCK_MESSAGE);
    assert.equal(steered.usage?.completion_tokens, 0);
    assert.equal(ext(steered).verdict?.verdict, 'flagged');
  });

  test('scores: one per generated token fed back, in the stream and in the whole response', async () => {
    const whole = await chat(FLAGGED, { steerguard: { scores: true } });
    const scores = ext(whole).token_scores!;
    assert.deepEqual(
      scores.map((s) => s.index),
      Array.from({ length: 11 }, (_, i) => i),
      'the last token is never fed back, so it has no score',
    );
    const stream = await client.chat.completions.create({
      model: modelId,
      messages: [{ role: 'user', content: FLAGGED }],
      max_tokens: 12,
      stream: true,
      steerguard: { scores: true },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const streamed: { index: number; score: number }[] = [];
    for await (const chunk of stream) streamed.push(...(ext(chunk)?.token_scores ?? []));
    assert.deepEqual(streamed, scores);
  });

  test('policy stop ends the reply where a token score first crosses the threshold', async () => {
    const free = await chat(FLAGGED, { max_tokens: 24, steerguard: { scores: true } });
    const crossing = ext(free).token_scores!.find((s) => s.score > threshold);
    const stopped = await chat(FLAGGED, { max_tokens: 24, steerguard: { policy: 'stop' } });
    const text = stopped.choices[0].message.content ?? '';
    assert.ok((free.choices[0].message.content ?? '').startsWith(text));
    assert.ok(crossing, 'a token of the free reply scores above the threshold');
    assert.equal(stopped.choices[0].finish_reason, 'content_filter');
    assert.equal(ext(stopped).stopped, true);
    // token k's score is read when it is fed back: the reply ends with token k, as streamed
    assert.equal(stopped.usage?.completion_tokens, crossing.index + 1);
    const stream = await client.chat.completions.create({
      model: modelId,
      messages: [{ role: 'user', content: FLAGGED }],
      max_tokens: 24,
      stream: true,
      steerguard: { policy: 'stop' },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let streamed = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(streamed, text);
    assert.equal(finish, 'content_filter');
  });

  test('bad fields: 400 with an OpenAI error body naming the field', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ temperature: 5 }, 'temperature'],
      [{ max_tokens: 1000 }, 'max_tokens'],
      [{ max_tokens: 1.5 }, 'max_tokens'],
      [{ n: 2 }, 'n'],
      [{ logprobs: true }, 'logprobs'],
      [{ frobnicate: 1 }, 'frobnicate'],
      [{ top_p: 0 }, 'top_p'],
      [{ stop: [''] }, 'stop'],
      [{ steerguard: { steer: [{ vector: 'nope' }] } }, 'steerguard.steer[0].vector'],
      [{ steerguard: { steer: [{ vector: 'push', layers: [3] }] } }, 'steerguard.steer[0].layers'],
      [{ steerguard: { policy: 'maybe' } }, 'steerguard.policy'],
      [{ steerguard: { gate: true } }, 'steerguard.gate'],
      [{ messages: [{ role: 'robot', content: 'hi' }] }, 'messages[0].role'],
      [{ messages: [{ role: 'assistant', content: 'hi' }] }, 'messages'], // the template refuses it
      [{ messages: [{ role: 'user', content: 'a'.repeat(120) }] }, 'messages'],
    ];
    for (const [extra, param] of cases) {
      const res = await post('/v1/chat/completions', {
        model: modelId,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4,
        ...extra,
      });
      assert.equal(res.status, 400, `${param}: status`);
      const body = (await res.json()) as { error: { param: string; message: string; type: string } };
      assert.equal(body.error.param, param);
      assert.equal(body.error.type, 'invalid_request_error');
      assert.match(body.error.message, new RegExp(`^${param.replace(/[[\].]/g, '\\$&')}`));
    }
    const viaClient = await chat('hi', { temperature: -1 }).catch((e: unknown) => e);
    assert.ok(viaClient instanceof OpenAI.BadRequestError);
    assert.equal(viaClient.param, 'temperature');
  });

  test('prompt plus max_tokens past the context: 400 naming max_tokens', async () => {
    const res = await post('/v1/completions', { model: modelId, prompt: 'a'.repeat(90), max_tokens: 60 });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: { param: string } }).error.param, 'max_tokens');
  });

  test('malformed JSON: 400; a body past the limit: 413; an unknown model: 404', async () => {
    const bad = await post('/v1/chat/completions', '{"model": ');
    assert.equal(bad.status, 400);
    assert.ok(((await bad.json()) as { error: { message: string } }).error.message.length > 0);
    const huge = await post('/v1/chat/completions', {
      model: modelId,
      messages: [{ role: 'user', content: 'a'.repeat(10 * 1024 * 1024) }],
    });
    assert.equal(huge.status, 413);
    const other = await post('/v1/chat/completions', {
      model: 'gpt-4',
      messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as { error: { param: string } }).error.param, 'model');
  });

  test('a missing or wrong API key: 401, on every route but /health', async () => {
    const none = await fetch(`${server.url}/v1/models`);
    assert.equal(none.status, 401);
    assert.equal(((await none.json()) as { error: { code: string } }).error.code, 'invalid_api_key');
    const wrong = await post('/v1/chat/completions', {}, { authorization: 'Bearer wrong-key-0123456789' });
    assert.equal(wrong.status, 401);
    assert.equal((await fetch(`${server.url}/metrics`)).status, 401);
    const viaClient = await new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'nope', maxRetries: 0 }).models
      .list()
      .catch((e: unknown) => e);
    assert.ok(viaClient instanceof OpenAI.AuthenticationError);
  });

  /** The burst test's counts, which /metrics must show. */
  const burst = { answered: 0, busy: 0 };
  test('past batch + queue: 429 with Retry-After, and everything else answered', async () => {
    // Batch 4 + queue 2 take 6 requests at once; a burst past that gets 429s unless the server
    // finishes requests while the burst is still arriving (a fast machine), so larger bursts
    // follow until one overflows. Every request is answered 200 or 429, and at least 6 are 200.
    let busy: Response | undefined;
    for (const size of [10, 30, 90]) {
      const results = await Promise.all(
        Array.from({ length: size }, () =>
          post('/v1/completions', { model: modelId, prompt: 'once upon a time', max_tokens: 64 }),
        ),
      );
      const statuses = results.map((r) => r.status);
      const ok = statuses.filter((s) => s === 200).length;
      assert.ok(ok >= 6, `statuses ${statuses}`);
      assert.equal(statuses.filter((s) => s === 429).length, size - ok, `statuses ${statuses}`);
      burst.answered += ok;
      burst.busy += size - ok;
      busy = results.find((r) => r.status === 429);
      if (busy) break;
    }
    assert.ok(busy, 'no burst overflowed the queue');
    assert.equal(busy.headers.get('retry-after'), '1');
    assert.equal(((await busy.json()) as { error: { type: string } }).error.type, 'rate_limit_error');
  });

  test('the dashboard page at / needs no key and loads nothing from elsewhere; its events need the key', async () => {
    const page = await fetch(`${server.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    const html = await page.text();
    assert.match(html, /dashboard\/events/);
    assert.doesNotMatch(html, /(src|href)=["']?(https?:)?\/\//, 'no external asset');
    assert.equal((await fetch(`${server.url}/dashboard/events`)).status, 401);
  });

  test('dashboard events: the request, its verdict, per-token scores and its end, but never its text', async () => {
    const feed = await dashboardFeed(server.url, API_KEY);
    try {
      const prompt = 'the dashboard must not show this prompt';
      const stream = await client.chat.completions.create({
        model: modelId,
        messages: [{ role: 'user', content: prompt }],
        max_tokens: 12,
        stream: true,
        steerguard: { scores: true },
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let id = '';
      let reply = '';
      const scores: { index: number; score: number }[] = [];
      for await (const chunk of stream) {
        id = chunk.id;
        reply += chunk.choices[0]?.delta.content ?? '';
        scores.push(...(ext(chunk)?.token_scores ?? []));
      }
      const events = await feed.until((e) => e.some((x) => x.event === 'done' && x.data.id === id));
      const mine = events.filter((e) => e.data.id === id);
      const start = mine.find((e) => e.event === 'request')!.data;
      assert.equal(start.endpoint, 'chat');
      const verdict = start.verdict as { verdict: string; score: number; threshold: number };
      assert.equal(verdict.threshold, threshold);
      assert.equal(verdict.verdict, verdict.score > threshold ? 'flagged' : 'benign');
      assert.match(String(start.promptHash), /^[0-9a-f]{12}$/);
      assert.equal(start.prompt, undefined);
      assert.deepEqual(
        mine.filter((e) => e.event === 'score').map((e) => ({ index: e.data.index, score: e.data.score })),
        scores,
      );
      assert.ok(mine.filter((e) => e.event === 'text').every((e) => e.data.text === undefined));
      const done = mine.find((e) => e.event === 'done')!.data;
      assert.equal(done.tokens, 12);
      assert.equal(done.finishReason, 'length');
      assert.ok(events.some((e) => e.event === 'stats' && typeof e.data.tokensPerSecond === 'number'));
      assert.ok(reply.length >= 8, reply);
      assert.ok(!feed.raw().includes(prompt), 'the prompt is not in the event stream');
      assert.ok(!feed.raw().includes(reply), 'the reply is not in the event stream');
    } finally {
      feed.close();
    }
  });

  test('/metrics: requests, tokens, queue depth, latency', async () => {
    const text = await (
      await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } })
    ).text();
    for (const name of [
      'steerguard_requests_total',
      'steerguard_tokens_total',
      'steerguard_queue_depth',
      'steerguard_requests_in_flight',
      'steerguard_request_duration_seconds_bucket',
      'steerguard_time_to_first_token_seconds_bucket',
      'steerguard_verdicts_total',
    ])
      assert.ok(text.includes(name), name);
    // the log: one line per request, never prompt or reply text
    assert.ok(logLines.length > 50, `${logLines.length} lines`);
    assert.ok(logLines.some((l) => /^POST \/v1\/chat\/completions 200 \d+ms$/.test(l)));
    for (const text of [FLAGGED, BENIGN, 'once upon a time', ...replies.filter((r) => r.length > 4)])
      assert.ok(!logLines.some((l) => l.includes(text)), 'no prompt or reply text in the log');
    // streamed replies are counted too (Fastify does not see their end)
    // completions answered 200: 2 in the completions test (1 of them streamed), the burst's others
    const counted = (status: number) =>
      new RegExp(
        `steerguard_requests_total\\{endpoint="/v1/completions",status="${status}"\\} (\\d+)\\n`,
      ).exec(text)?.[1];
    assert.equal(counted(200), String(2 + burst.answered));
    assert.equal(counted(429), String(burst.busy));
  });
});

/**
 * Cancellation needs generation slower than the way from a closed socket to the worker, which
 * the tiny model is not (64 tokens take a few milliseconds), so these run on SmolLM2.
 */
describe('steerguard serve: cancelling', { skip: missingModel(SMOLLM2_GGUF) }, () => {
  let server: RunningServer;
  before(async () => {
    server = await startServer({
      engine: {
        model: SMOLLM2_GGUF,
        threads: 1,
        coeff: 1,
        maxBatch: 2,
        maxPromptTokens: 256,
        maxTokens: 256,
        blockMessage: BLOCK_MESSAGE,
      },
      port: 0,
    });
  });
  after(() => server?.close(1000));
  const metric = async (pattern: RegExp) =>
    Number(pattern.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? 0);
  const body = (stream: boolean) =>
    JSON.stringify({ model: server.info.model, prompt: 'Once upon a time', max_tokens: 256, stream });
  const idle = async () => {
    for (let i = 0; i < 500; i++) {
      const health = (await (await fetch(`${server.url}/health`)).json()) as { in_flight: number };
      if (health.in_flight === 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('requests still in flight');
  };

  test('a client that disconnects mid-stream has its generation cancelled; the server keeps serving', async () => {
    const completionTokens = () => metric(/steerguard_tokens_total\{kind="completion"\} (\d+)/);
    const cancelled = () => metric(/steerguard_requests_cancelled_total (\d+)/);
    const [tokensBefore, cancelledBefore] = [await completionTokens(), await cancelled()];
    const controller = new AbortController();
    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: body(true),
      signal: controller.signal,
    });
    const reader = res.body!.getReader();
    await reader.read(); // the first chunk (verdict), before any text
    await reader.read(); // some text
    controller.abort();
    await idle();
    const generated = (await completionTokens()) - tokensBefore;
    assert.ok(generated < 256, `cancelled after ${generated} tokens`);
    assert.equal((await cancelled()) - cancelledBefore, 1);
    const next = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: server.info.model, prompt: 'Hi', max_tokens: 2 }),
    });
    assert.equal(next.status, 200);
  });

  test('a client that leaves before a non-streamed reply is done has its generation cancelled', async () => {
    const cancelledBefore = await metric(/steerguard_requests_cancelled_total (\d+)/);
    const controller = new AbortController();
    const res = fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: body(false),
      signal: controller.signal,
    });
    for (let i = 0; i < 500 && (await metric(/steerguard_requests_in_flight (\d+)/)) === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    controller.abort();
    await assert.rejects(res);
    await idle();
    assert.equal((await metric(/steerguard_requests_cancelled_total (\d+)/)) - cancelledBefore, 1);
  });

  test('close: no new requests; one still running past the grace period is cancelled with a 503', async () => {
    const running = fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: body(false),
    });
    for (let i = 0; i < 500 && (await metric(/steerguard_requests_in_flight (\d+)/)) === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    const closed = server.close(300);
    const res = await running;
    assert.equal(res.status, 503);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'cancelled');
    await closed;
    await assert.rejects(fetch(`${server.url}/health`));
  });
});

test(
  'close: a request still waiting for its place (its verdict to come with its prompt pass) is cancelled with a 503, not a 500',
  { skip: missingModel(SMOLLM2_GGUF) },
  async () => {
    const model = await Model.load(SMOLLM2_GGUF, { weights: 'quantized' });
    const uniform = seededUniform(4);
    const v = Float64Array.from({ length: model.config.dModel }, () => 2 * uniform() - 1);
    const readingFile = path.join(tmp, 'smollm2-reading.json');
    saveReading(readingFile, {
      reading: {
        method: 'probe',
        layers: [15],
        directions: [{ layer: 15, mid: 0, spread: 1, v }],
        threshold: 0,
      },
      model: { name: model.identity.name, fingerprint: model.identity.fingerprint },
      template: 'chat',
      fittedIds: [],
    });
    const server = await startServer({
      engine: {
        model: SMOLLM2_GGUF,
        threads: 1,
        reading: readingFile,
        coeff: 1,
        maxBatch: 1,
        maxPromptTokens: 256,
        maxTokens: 256,
        blockMessage: BLOCK_MESSAGE,
      },
      port: 0,
      queue: 2,
    });
    let closed = false;
    try {
      const send = () =>
        fetch(`${server.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: server.info.model, prompt: 'Once upon a time', max_tokens: 256 }),
        });
      const running = send(); // holds the one place for its 256 tokens
      const waiting = send();
      await new Promise((r) => setTimeout(r, 300));
      const closing = server.close(100);
      closed = true;
      for (const res of [await running, await waiting]) {
        assert.equal(res.status, 503);
        assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'cancelled');
      }
      await closing;
    } finally {
      if (!closed) await server.close(1000);
    }
  },
);

test('a concept as the monitor: its probe probability is the verdict score; --policy-pinned refuses another policy', async () => {
  const model = await Model.load(modelFile);
  // low letters (k..p) against letter pairs, as raw token prompts: the concept test's two distributions
  const random = seededUniform(2);
  const set = (lo: number, hi: number) =>
    Array.from({ length: 30 }, () =>
      tokenExample(
        Array.from({ length: 4 + Math.floor(random() * 5) }, () => lo + Math.floor(random() * (hi - lo))),
      ),
    );
  const { concept } = await trainConcept({
    model,
    positive: set(10, 16),
    negative: set(150, 156),
    cacheDir: path.join(tmp, 'concept-cache'),
  });
  const conceptFile = path.join(tmp, 'tiny.concept.safetensors');
  concept.save(conceptFile);
  const server = await startServer({
    engine: {
      model: modelFile,
      concept: conceptFile,
      coeff: 1,
      maxBatch: 2,
      maxPromptTokens: 64,
      maxTokens: 8,
      blockMessage: 'no',
    },
    port: 0,
    policy: 'block',
    policyPinned: true,
  });
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    // the pinned policy: a request may name it, never another one
    const body = (policy: unknown) =>
      JSON.stringify({
        model: server.info.model,
        prompt: 'klmnopmlk',
        max_tokens: 4,
        steerguard: { policy },
      });
    const post = (policy: unknown) =>
      fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: body(policy),
      });
    for (const weaker of ['flag', 'stop']) {
      const refused = await post(weaker);
      assert.equal(refused.status, 403, weaker);
      const { error } = (await refused.json()) as { error: { param: string; code: string; message: string } };
      assert.equal(error.param, 'steerguard.policy');
      assert.equal(error.code, 'policy_pinned');
      assert.match(error.message, new RegExp(`pins the policy to block .*may not choose ${weaker}`));
    }
    assert.equal((await post('maybe')).status, 400);
    const same = await post('block');
    assert.equal(same.status, 200);
    assert.equal(((await same.json()) as { choices: { text: string }[] }).choices[0].text, 'no');
    const flagged = await client.completions.create({
      model: server.info.model,
      prompt: 'klmnopmlk',
      max_tokens: 4,
    });
    const e = ext(flagged);
    assert.equal(e.verdict?.verdict, 'flagged');
    assert.ok(e.verdict!.score > e.verdict!.threshold && e.verdict!.score <= 1);
    assert.equal(e.blocked, true);
    assert.equal(flagged.choices[0].text, 'no');
  } finally {
    await server.close(1000);
  }
});

test('--dashboard-text: the dashboard events carry prompt and reply text', { timeout: 30_000 }, async () => {
  const server = await startServer({
    engine: { model: modelFile, coeff: 1, maxBatch: 1, maxPromptTokens: 64, maxTokens: 8, blockMessage: '' },
    port: 0,
    dashboardText: true,
  });
  const feed = await dashboardFeed(server.url);
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const res = await client.completions.create({
      model: server.info.model,
      prompt: 'show me',
      max_tokens: 8,
    });
    const events = await feed.until((e) => e.some((x) => x.event === 'done' && x.data.id === res.id));
    assert.equal(events.find((e) => e.event === 'request')?.data.prompt, 'show me');
    const text = events.filter((e) => e.event === 'text' && e.data.id === res.id).map((e) => e.data.text);
    assert.equal(text.join(''), res.choices[0].text);
  } finally {
    // with the page still connected: the close ends its stream rather than waiting on it
    await server.close(1000);
    feed.close();
  }
});

interface DashboardEvent {
  event: string;
  data: Record<string, unknown>;
}

/** Reads a server's `/dashboard/events` (after its first event, so nothing later is missed). */
async function dashboardFeed(url: string, key?: string) {
  const controller = new AbortController();
  const res = await fetch(`${url}/dashboard/events`, {
    headers: key ? { authorization: `Bearer ${key}` } : {},
    signal: controller.signal,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let raw = '';
  const events: DashboardEvent[] = [];
  const readMore = async () => {
    const { value, done } = await reader.read();
    if (done) throw new Error('the dashboard stream ended');
    raw += value;
    const blocks = raw.split('\n\n');
    events.length = 0;
    for (const block of blocks.slice(0, -1)) {
      const event = /^event: (.+)$/m.exec(block)?.[1] ?? 'message';
      const data = /^data: (.+)$/m.exec(block)?.[1];
      if (data !== undefined) events.push({ event, data: JSON.parse(data) as Record<string, unknown> });
    }
  };
  const until = async (done: (events: DashboardEvent[]) => boolean) => {
    while (!done(events)) await readMore();
    return [...events];
  };
  await until((e) => e.some((x) => x.event === 'hello'));
  return { until, raw: () => raw, close: () => controller.abort() };
}

test('what the worker cannot load is an error of startServer, naming it', async () => {
  const empty = path.join(tmp, 'no-vectors');
  mkdirSync(empty);
  const engine = {
    model: modelFile,
    coeff: 1,
    maxBatch: 1,
    maxPromptTokens: 8,
    maxTokens: 8,
    blockMessage: '',
  };
  await assert.rejects(startServer({ engine: { ...engine, vectorsDir: empty }, port: 0 }), /holds no \.gguf/);
  await assert.rejects(
    startServer({ engine: { ...engine, reading: path.join(tmp, 'missing.json') }, port: 0 }),
    /missing\.json/,
  );
});

test('binding beyond loopback needs an API key', () => {
  const r = cli(['serve', '-m', modelFile, '--host', '0.0.0.0'], { env: { STEERGUARD_API_KEY: '' } });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--host 0\.0\.0\.0 exposes the server beyond this machine: it needs --api-key/);
  assert.throws(() => checkExposure('0.0.0.0', undefined), /--api-key/);
  assert.throws(() => checkExposure('0.0.0.0', 'short'), /at least 16 characters/);
  assert.doesNotThrow(() => checkExposure('127.0.0.1', undefined));
  assert.doesNotThrow(() => checkExposure('0.0.0.0', 'a-long-enough-key-123'));
});
