/**
 * `startServer`: the model worker started, the HTTP server listening, and a graceful close. What
 * `steerguard serve` runs, and what tests start in-process.
 */
import { OptionError } from '../formats/errors.js';
import { buildServer } from './app.js';
import { ModelWorker } from './engine.js';
import type { EngineInfo, EngineSettings } from './protocol.js';
import type { Policy } from './requests.js';

export interface ServeOptions {
  readonly engine: EngineSettings;
  /** Address to bind (default 127.0.0.1); any other than loopback needs `apiKey`. */
  readonly host?: string;
  /** Port (default 8000; 0 picks a free one). */
  readonly port?: number;
  readonly apiKey?: string;
  /** Requests that may wait beyond the batch (default 16). */
  readonly queue?: number;
  /** Policy of a request that names none (default flag). */
  readonly policy?: Policy;
  /** Refuse (403) a request that names a policy other than `policy` (default false). */
  readonly policyPinned?: boolean;
  /** Largest request body in bytes (default 1 MiB). */
  readonly bodyLimit?: number;
  readonly log?: (line: string) => void;
  /** Put prompt and reply text in the dashboard's events (default: counts, scores, hashes only). */
  readonly dashboardText?: boolean;
}

export interface RunningServer {
  /** e.g. http://127.0.0.1:8000 */
  readonly url: string;
  readonly info: EngineInfo;
  /** Resolves with the reason if the model worker dies before `close` (the server is then useless). */
  readonly lost: Promise<string>;
  /**
   * Stops accepting requests, lets those in flight finish for up to `graceMs` (default 30 s),
   * cancels the rest, then stops the worker.
   */
  close(graceMs?: number): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** Throws unless binding `host` is safe with the given key: only loopback may go without one. */
export function checkExposure(host: string, apiKey: string | undefined): void {
  if (apiKey === undefined && !LOOPBACK.has(host))
    throw new OptionError(
      `--host ${host} exposes the server beyond this machine: it needs --api-key (clients then send ` +
        '"Authorization: Bearer KEY")',
    );
  if (apiKey !== undefined && apiKey.length < 16)
    throw new OptionError('--api-key must be at least 16 characters');
}

export async function startServer(o: ServeOptions): Promise<RunningServer> {
  const host = o.host ?? '127.0.0.1';
  checkExposure(host, o.apiKey);
  const engine = await ModelWorker.start(o.engine);
  const app = buildServer({
    engine,
    apiKey: o.apiKey,
    maxBatch: o.engine.maxBatch,
    queue: o.queue ?? 16,
    maxTokens: o.engine.maxTokens,
    policy: o.policy ?? 'flag',
    policyPinned: o.policyPinned ?? false,
    bodyLimit: o.bodyLimit ?? 1 << 20,
    log: o.log,
    dashboardText: o.dashboardText ?? false,
  });
  try {
    await app.listen({ host, port: o.port ?? 8000 });
  } catch (e) {
    await engine.close();
    throw e;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : o.port;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    info: engine.info,
    lost: engine.lost.then((why) => (closing ? new Promise<string>(() => {}) : why)),
    close: (graceMs = 30_000) =>
      (closing ??= (async () => {
        const timer = setTimeout(() => engine.cancelAll(), graceMs);
        // A keep-alive connection whose request ends during the close would otherwise hold the
        // close open until its keep-alive timeout.
        const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
        try {
          await app.close();
        } finally {
          clearTimeout(timer);
          clearInterval(sweep);
          await engine.close();
        }
      })()),
  };
}
