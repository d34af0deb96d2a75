/**
 * The HTTP side of `steerguard serve` (Fastify): OpenAI's `/v1/chat/completions`,
 * `/v1/completions` (streaming as server-sent events, or not) and `/v1/models`, with the
 * `steerguard` extension in requests and responses; `/health`, `/metrics`, and the live dashboard
 * (`/`, fed by `/dashboard/events`; dashboard.ts). The model runs in a worker thread (engine.ts,
 * worker.ts); this side only checks requests, keeps the queue bound, relays events and cancels
 * the generation of a client that leaves.
 *
 * No prompt or reply text is logged: `log` receives method, path, status, duration and counts.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';

import { DASHBOARD_CSP, DASHBOARD_HTML } from './dashboard-page.js';
import { Dashboard } from './dashboard.js';
import type { Accepted, Finished, JobHandle, ModelWorker } from './engine.js';
import { ServerMetrics } from './metrics.js';
import type { FinishReason } from './protocol.js';
import {
  type ParsedRequest,
  type Policy,
  RequestError,
  parseChatRequest,
  parseCompletionRequest,
} from './requests.js';

export interface ServerOptions {
  readonly engine: ModelWorker;
  /** Bearer token every route but /health requires (none: no check; loopback only, see serve). */
  readonly apiKey?: string;
  /** Sequences the worker decodes together. */
  readonly maxBatch: number;
  /** Requests that may wait beyond `maxBatch`; past it: 429. */
  readonly queue: number;
  /** Largest max_tokens (and the default). */
  readonly maxTokens: number;
  /** Policy of a request that names none. */
  readonly policy: Policy;
  /** Requests may not name another policy than `policy` (403). */
  readonly policyPinned: boolean;
  /** Largest request body, bytes (past it: 413). */
  readonly bodyLimit: number;
  /** One line per request, without any prompt or reply text. */
  readonly log?: (line: string) => void;
  /** The dashboard's events carry prompt and reply text (default: counts, scores, hashes only). */
  readonly dashboardText?: boolean;
}

/** Dashboard pages connected at once. */
const DASHBOARD_SUBSCRIBERS = 16;
/** Finished requests a dashboard that connects is shown. */
const DASHBOARD_RECENT = 50;

interface Score {
  readonly index: number;
  readonly score: number;
}

type Endpoint = 'chat' | 'completions';

/** Seconds a client told 429 should wait before retrying. */
const RETRY_AFTER_SECONDS = 1;

/** Builds the server (not yet listening). */
export function buildServer(opts: ServerOptions): FastifyInstance {
  const { engine } = opts;
  const metrics = new ServerMetrics(() => ({ inFlight: engine.inFlight, ...engine.load }));
  const app = Fastify({ logger: false, bodyLimit: opts.bodyLimit, return503OnClosing: true });
  const defaults = { policy: opts.policy, policyPinned: opts.policyPinned, maxTokens: opts.maxTokens };
  const keyDigest = opts.apiKey === undefined ? undefined : sha256(opts.apiKey);
  const capacity = opts.maxBatch + opts.queue;
  const dashboard = new Dashboard(
    {
      showText: opts.dashboardText ?? false,
      recent: DASHBOARD_RECENT,
      maxSubscribers: DASHBOARD_SUBSCRIBERS,
    },
    engine.info,
    () => ({ inFlight: engine.inFlight, ...engine.load, capacity }),
  );
  // An open dashboard stream would hold the close open.
  app.addHook('preClose', (done) => {
    dashboard.close();
    done();
  });

  app.addHook('onRequest', async (req, reply) => {
    (req as TimedRequest).startedAt = performance.now();
    // The page holds no data (it asks for the key itself); its events need the key.
    const route = req.url.split('?')[0];
    if (keyDigest === undefined || route === '/health' || route === '/') return;
    const header = req.headers.authorization ?? '';
    const match = /^Bearer (.+)$/.exec(header);
    if (!match || !timingSafeEqual(sha256(match[1]), keyDigest)) {
      const e = new RequestError(
        401,
        match ? 'incorrect API key' : 'missing API key: send "Authorization: Bearer KEY"',
        null,
        'invalid_api_key',
      );
      return reply.code(401).send(e.body());
    }
  });
  // Streamed (hijacked) replies pass here too, when their last byte is sent.
  app.addHook('onResponse', async (req, reply) => {
    metrics.requests.inc({ endpoint: routeName(req), status: String(reply.statusCode) });
    const ms = performance.now() - (req as TimedRequest).startedAt;
    opts.log?.(`${req.method} ${req.url.split('?')[0]} ${reply.statusCode} ${ms.toFixed(0)}ms`);
  });

  app.setErrorHandler((err: unknown, _req, reply) => {
    if (err instanceof RequestError) return reply.code(err.status).send(err.body());
    const e = err as { statusCode?: number; message?: string; code?: string };
    const status = typeof e.statusCode === 'number' && e.statusCode >= 400 ? e.statusCode : 500;
    const message =
      e.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
        ? `the request body is larger than the server's limit of ${opts.bodyLimit} bytes`
        : status >= 500
          ? 'internal server error'
          : (e.message ?? 'bad request');
    return reply.code(status).send(new RequestError(status, message, null, e.code ?? null).body());
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .code(404)
      .send(
        new RequestError(404, `no route ${req.method} ${req.url.split('?')[0]}`, null, 'not_found').body(),
      ),
  );

  app.get('/health', async (_req, reply) => {
    if (engine.failed) return reply.code(503).send({ status: 'unavailable', reason: engine.failed });
    return { status: 'ok', in_flight: engine.inFlight, ...engine.load };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  app.get('/', async (_req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', DASHBOARD_CSP);
    reply.header('cache-control', 'no-cache');
    return DASHBOARD_HTML;
  });
  app.get('/dashboard/events', async (_req, reply) => {
    if (!dashboard.canSubscribe())
      throw new RequestError(
        429,
        `${DASHBOARD_SUBSCRIBERS} dashboards are connected already; close one`,
        null,
        'dashboard_full',
        'rate_limit_error',
      );
    reply.hijack();
    dashboard.subscribe(reply.raw);
  });
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: engine.info.model, object: 'model', created: 0, owned_by: 'steerguard' }],
  }));

  const generate = (endpoint: Endpoint) => async (req: FastifyRequest, reply: FastifyReply) => {
    const parsed =
      endpoint === 'chat' ? parseChatRequest(req.body, defaults) : parseCompletionRequest(req.body, defaults);
    if (parsed.model !== engine.info.model)
      throw new RequestError(
        404,
        `model: ${JSON.stringify(parsed.model)} is not served here (this server serves ${JSON.stringify(engine.info.model)})`,
        'model',
        'model_not_found',
      );
    if (engine.inFlight >= capacity) {
      dashboard.refused();
      reply.header('retry-after', String(RETRY_AFTER_SECONDS));
      throw new RequestError(
        429,
        `the server is busy (${engine.inFlight} requests in flight, at most ${capacity}); retry later`,
        null,
        'queue_full',
        'rate_limit_error',
      );
    }
    const submitted = engine.submit(parsed.job);
    let finished = false;
    // 'close' also fires after a complete response; only a close before the end cancels.
    reply.raw.on('close', () => {
      if (!finished) submitted.cancel();
    });
    const accepted = await submitted.accepted;
    metrics.tokens.inc({ kind: 'prompt' }, accepted.promptTokens);
    if (accepted.verdict) metrics.verdicts.inc({ verdict: accepted.verdict.verdict });
    if (accepted.blocked) metrics.verdicts.inc({ verdict: 'blocked' });
    const started = (req as TimedRequest).startedAt;
    const onFirstText = () => metrics.firstToken.observe({ endpoint }, (performance.now() - started) / 1000);
    const onEnd = (result: Finished) => {
      finished = true;
      metrics.tokens.inc({ kind: 'completion' }, result.completionTokens);
      if (result.finishReason === 'cancelled') metrics.cancelled.inc();
      if (result.finishReason === 'content_filter' && !accepted.blocked)
        metrics.verdicts.inc({ verdict: 'stopped' });
      metrics.latency.observe({ endpoint }, (performance.now() - started) / 1000);
    };
    const shape = new Reply(endpoint, parsed, accepted, engine.info.model);
    const handle = dashboard.track(submitted, {
      id: shape.id,
      endpoint,
      job: parsed.job,
      accepted,
      startedAt: started,
    });
    if (!parsed.stream) {
      const result = await collect(handle, onFirstText);
      onEnd(result.finished);
      if (result.finished.finishReason === 'cancelled')
        throw new RequestError(
          503,
          'the request was cancelled (the server is shutting down)',
          null,
          'cancelled',
        );
      return shape.whole(result.finished, result.scores);
    }
    return streamEvents(reply, handle, shape, onFirstText, onEnd);
  };
  app.post('/v1/chat/completions', generate('chat'));
  app.post('/v1/completions', generate('completions'));
  return app;
}

interface TimedRequest extends FastifyRequest {
  startedAt: number;
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function routeName(req: FastifyRequest): string {
  const url = req.routeOptions.url;
  return url === undefined ? 'unknown' : url;
}

/** Waits for a job's end, keeping its scores. */
function collect(
  handle: JobHandle,
  onFirstText: () => void,
): Promise<{ finished: Finished; scores: Score[] }> {
  return new Promise((resolve, reject) => {
    const scores: Score[] = [];
    let first = true;
    handle.listen({
      onText: () => {
        if (first) onFirstText();
        first = false;
      },
      onScore: (index, score) => scores.push({ index, score }),
      onDone: (finished) => resolve({ finished, scores }),
      onFailed: reject,
    });
  });
}

/** Streams a job as server-sent events in OpenAI's chunk format, then `data: [DONE]`. */
function streamEvents(
  reply: FastifyReply,
  handle: JobHandle,
  shape: Reply,
  onFirstText: () => void,
  onEnd: (result: Finished) => void,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  const send = (data: unknown): void => {
    if (!res.destroyed && !res.writableEnded) res.write(`data: ${JSON.stringify(data)}\n\n`);
  };
  const scores: Score[] = [];
  const takeScores = () => scores.splice(0);
  send(shape.firstChunk());
  let first = true;
  return new Promise((resolve) => {
    const end = () => {
      if (!res.destroyed && !res.writableEnded) res.end('data: [DONE]\n\n');
      resolve();
    };
    handle.listen({
      onText: (text) => {
        if (first) onFirstText();
        first = false;
        send(shape.textChunk(text, takeScores()));
      },
      onScore: (index, score) => scores.push({ index, score }),
      onDone: (result) => {
        onEnd(result);
        if (result.finishReason === 'cancelled')
          send(new RequestError(503, 'the request was cancelled', null, 'cancelled').body());
        else {
          send(shape.finalChunk(result, takeScores()));
          if (shape.parsed.includeUsage) send(shape.usageChunk(result));
        }
        end();
      },
      onFailed: (error) => {
        send(error.body());
        end();
      },
    });
  });
}

/** The response bodies and chunks of one request. */
class Reply {
  readonly id: string;
  private readonly created = Math.floor(Date.now() / 1000);

  constructor(
    private readonly endpoint: Endpoint,
    readonly parsed: ParsedRequest,
    private readonly accepted: Accepted,
    private readonly model: string,
  ) {
    this.id = `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
  }

  /** The `steerguard` field: the verdict and steering always, scores when asked. */
  private extension(finish: FinishReason | undefined, scores: Score[] | undefined) {
    const ext = this.parsed.job.extension;
    return {
      verdict: this.accepted.verdict,
      policy: ext.policy,
      steering: this.accepted.steering,
      blocked: this.accepted.blocked,
      ...(finish !== undefined ? { stopped: finish === 'content_filter' && !this.accepted.blocked } : {}),
      ...(ext.scores && scores !== undefined ? { token_scores: scores } : {}),
    };
  }

  private usage(r: Finished) {
    return {
      prompt_tokens: this.accepted.promptTokens,
      completion_tokens: r.completionTokens,
      total_tokens: this.accepted.promptTokens + r.completionTokens,
    };
  }

  whole(r: Finished, scores: Score[]) {
    const base = { id: this.id, created: this.created, model: this.model };
    const finish_reason = r.finishReason;
    if (this.endpoint === 'chat')
      return {
        ...base,
        object: 'chat.completion',
        choices: [
          { index: 0, message: { role: 'assistant', content: r.text }, finish_reason, logprobs: null },
        ],
        usage: this.usage(r),
        steerguard: this.extension(r.finishReason, scores),
      };
    return {
      ...base,
      object: 'text_completion',
      choices: [{ index: 0, text: r.text, finish_reason, logprobs: null }],
      usage: this.usage(r),
      steerguard: this.extension(r.finishReason, scores),
    };
  }

  private chunk(
    delta: { role?: 'assistant'; content?: string },
    finish: FinishReason | null,
    steerguard: object | undefined,
  ) {
    const base = { id: this.id, created: this.created, model: this.model };
    const choice =
      this.endpoint === 'chat'
        ? { index: 0, delta, finish_reason: finish, logprobs: null }
        : { index: 0, text: delta.content ?? '', finish_reason: finish, logprobs: null };
    return {
      ...base,
      object: this.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion',
      choices: [choice],
      ...(steerguard ? { steerguard } : {}),
    };
  }

  /** The first chunk: the assistant role and the verdict, before any generated text. */
  firstChunk() {
    return this.chunk({ role: 'assistant', content: '' }, null, this.extension(undefined, undefined));
  }

  textChunk(text: string, scores: Score[]) {
    const ext = this.parsed.job.extension.scores && scores.length > 0 ? { token_scores: scores } : undefined;
    return this.chunk({ content: text }, null, ext);
  }

  finalChunk(r: Finished, scores: Score[]) {
    // A blocked request's reply has not been sent as text chunks: it comes here.
    const content = this.accepted.blocked ? r.text : undefined;
    return this.chunk(
      content === undefined ? {} : { content },
      r.finishReason,
      this.extension(r.finishReason, scores),
    );
  }

  usageChunk(r: Finished) {
    return {
      id: this.id,
      created: this.created,
      model: this.model,
      object: this.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion',
      choices: [],
      usage: this.usage(r),
    };
  }
}
