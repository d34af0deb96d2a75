/**
 * The live dashboard's feed: request lifecycle events of the server, published as server-sent
 * events on `/dashboard/events` to the page at `/` (dashboard-page.ts).
 *
 * Events carry counts, scores, verdicts and a hash of the prompt; prompt and reply text only when
 * the server was started with `--dashboard-text` (`showText`). Without it no text is kept here at
 * all, so none can leak into the stream.
 */
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';

import type { Accepted, Finished, JobHandle, JobListener } from './engine.js';
import type { EngineInfo, FinishReason } from './protocol.js';
import type { Job, Policy } from './requests.js';

export interface DashboardOptions {
  /** Put prompt and reply text in the events (default: counts, scores and hashes only). */
  readonly showText: boolean;
  /** Finished requests kept for a page that connects later. */
  readonly recent: number;
  /** Pages connected at once; past it: 429. */
  readonly maxSubscribers: number;
}

/** The server's load, as the dashboard's stats show it. */
export interface DashboardLoad {
  readonly inFlight: number;
  readonly waiting: number;
  readonly active: number;
  readonly capacity: number;
}

type RequestState = 'generating' | 'done' | 'cancelled' | 'failed';

/** One request as the dashboard shows it (the `request` event, and the snapshot's list). */
interface RequestView {
  id: string;
  endpoint: string;
  /** ms since the epoch. */
  startedAt: number;
  promptTokens: number;
  /** First 12 hex digits of the SHA-256 of the prompt (its messages, or its text). */
  promptHash: string;
  verdict: Accepted['verdict'];
  policy: Policy;
  steering: Accepted['steering'];
  blocked: boolean;
  /** The request asked for per-token scores. */
  scores: boolean;
  state: RequestState;
  tokens: number;
  /** Per-token monitor scores, by token index. */
  tokenScores: number[];
  finishReason: FinishReason | null;
  ttftMs: number | null;
  durationMs: number | null;
  /** Only with `showText`. */
  prompt?: string;
  reply?: string;
}

/** Completion tokens/s is counted over this window. */
const RATE_WINDOW_MS = 5000;
const STATS_EVERY_MS = 1000;

export class Dashboard {
  private readonly subscribers = new Set<ServerResponse>();
  private readonly live = new Map<string, RequestView>();
  private readonly finished: RequestView[] = [];
  /** (time, tokens) of the completion tokens of the last RATE_WINDOW_MS. */
  private readonly produced: { at: number; tokens: number }[] = [];
  private completed = 0;
  private rateLimited = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly opts: DashboardOptions,
    private readonly info: EngineInfo,
    private readonly load: () => DashboardLoad,
  ) {}

  /** Fewer than `maxSubscribers` pages are connected. */
  canSubscribe(): boolean {
    return this.subscribers.size < this.opts.maxSubscribers;
  }

  /** A page that connects (after `canSubscribe`): the snapshot, then every event until it leaves. */
  subscribe(res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      // nginx: pass the events on as they come
      'x-accel-buffering': 'no',
    });
    this.subscribers.add(res);
    res.on('close', () => {
      this.subscribers.delete(res);
      if (this.subscribers.size === 0) this.stopStats();
    });
    send(res, 'hello', {
      model: this.info.model,
      monitor: this.info.monitor,
      showText: this.opts.showText,
      capacity: this.load().capacity,
      requests: [...this.finished, ...this.live.values()],
    });
    send(res, 'stats', this.stats());
    this.timer ??= setInterval(() => this.publish('stats', this.stats()), STATS_EVERY_MS).unref();
  }

  /** A request refused with 429 (counted in the stats). */
  refused(): void {
    this.rateLimited++;
  }

  /**
   * Publishes an accepted request and returns its handle with every event also published; `id` is
   * the response's id (chatcmpl-..., cmpl-...), `startedAt` the request's `performance.now()`.
   */
  track(
    handle: JobHandle,
    r: { id: string; endpoint: string; job: Job; accepted: Accepted; startedAt: number },
  ): JobHandle {
    const { job, accepted } = r;
    const promptText =
      job.prompt.kind === 'chat'
        ? job.prompt.messages.map((m) => `${m.role}: ${m.content}`).join('\n')
        : job.prompt.text;
    const view: RequestView = {
      id: r.id,
      endpoint: r.endpoint,
      startedAt: Date.now(),
      promptTokens: accepted.promptTokens,
      promptHash: createHash('sha256').update(promptText).digest('hex').slice(0, 12),
      verdict: accepted.verdict,
      policy: job.extension.policy,
      steering: accepted.steering,
      blocked: accepted.blocked,
      scores: job.extension.scores,
      state: 'generating',
      tokens: 0,
      tokenScores: [],
      finishReason: null,
      ttftMs: null,
      durationMs: null,
      ...(this.opts.showText ? { prompt: promptText, reply: '' } : {}),
    };
    this.live.set(view.id, view);
    this.publish('request', view);
    this.publish('stats', this.stats());
    const since = () => Math.round(performance.now() - r.startedAt);
    const count = (tokens: number) => {
      if (tokens > view.tokens) this.countTokens(tokens - view.tokens);
      view.tokens = Math.max(view.tokens, tokens);
    };
    const end = (state: RequestState, finishReason: FinishReason | null) => {
      view.state = state;
      view.finishReason = finishReason;
      view.durationMs = since();
      this.live.delete(view.id);
      this.finished.push(view);
      if (this.finished.length > this.opts.recent) this.finished.shift();
      this.completed++;
      this.publish('done', {
        id: view.id,
        state,
        finishReason,
        tokens: view.tokens,
        durationMs: view.durationMs,
        ...(this.opts.showText && accepted.blocked ? { text: view.reply } : {}),
      });
      this.publish('stats', this.stats());
    };
    const tee = (l: JobListener): JobListener => ({
      onText: (text, tokens) => {
        view.ttftMs ??= since();
        count(tokens);
        if (view.reply !== undefined) view.reply += text;
        this.publish('text', {
          id: view.id,
          tokens: view.tokens,
          ttftMs: view.ttftMs,
          ...(view.reply !== undefined ? { text } : {}),
        });
        l.onText(text, tokens);
      },
      onScore: (index, score) => {
        view.tokenScores[index] = score;
        this.publish('score', { id: view.id, index, score });
        l.onScore(index, score);
      },
      onDone: (result: Finished) => {
        count(result.completionTokens);
        if (view.reply !== undefined && accepted.blocked) view.reply = result.text;
        end(result.finishReason === 'cancelled' ? 'cancelled' : 'done', result.finishReason);
        l.onDone(result);
      },
      onFailed: (error) => {
        end('failed', null);
        l.onFailed(error);
      },
    });
    return { ...handle, listen: (l) => handle.listen(tee(l)) };
  }

  /** Ends every page's stream (the server is closing: an open stream would hold the close). */
  close(): void {
    this.stopStats();
    for (const res of this.subscribers) res.end();
    this.subscribers.clear();
  }

  private stats() {
    this.forgetOldTokens();
    const tokens = this.produced.reduce((a, p) => a + p.tokens, 0);
    return {
      ...this.load(),
      tokensPerSecond: tokens / (RATE_WINDOW_MS / 1000),
      completed: this.completed,
      rateLimited: this.rateLimited,
    };
  }

  private countTokens(tokens: number): void {
    this.produced.push({ at: performance.now(), tokens });
    this.forgetOldTokens();
  }

  private forgetOldTokens(): void {
    const since = performance.now() - RATE_WINDOW_MS;
    while (this.produced.length > 0 && this.produced[0].at < since) this.produced.shift();
  }

  private stopStats(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private publish(event: string, data: unknown): void {
    for (const res of this.subscribers) send(res, event, data);
  }
}

function send(res: ServerResponse, event: string, data: unknown): void {
  if (!res.destroyed && !res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}
