/**
 * `steerguard bench-serve`: a load test of `steerguard serve`, which it starts itself on loopback
 * (a child process per server setting, port 0; the monitor's server beside the plain one) and drives with streaming chat clients:
 *
 * - alone: one client, each prompt once, one after the other; these greedy replies are the
 *   reference of the no-mix-up checks;
 * - `clients` concurrent clients, `requestsPerClient` requests each: aggregate tokens/s and its
 *   ratio to one client's; the same on a second server with a monitor, every request asking for
 *   per-token scores: the monitor's cost in throughput. The two alternate for `rounds` rounds
 *   (off-on, on-off, ...), both servers running throughout, so that a drifting load weighs on both;
 * - `overloadClients` at once against `batch` + `queue` places: every answer must be 200 or 429,
 *   and every 200 reply equal to its prompt's reply alone (greedy: a reply must not depend on its
 *   neighbours); the server's peak RSS after it;
 * - time to first token (p50, p99) and per-request decoding rate for each.
 *
 * Bounded: counts are options with small maxima, and the whole run aborts past `timeoutSeconds`.
 * Prompts are a fixed list of benign requests; reply text is compared, never printed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { type MachineInfo, machineInfo, median, readLoadAverage } from '../cli/bench.js';
import { saveReading } from '../concepts/reading-file.js';
import { SteerguardError } from '../formats/errors.js';
import { Model } from '../model/model.js';

export interface ServeBenchSettings {
  readonly model: string;
  readonly threads: number;
  /** Decoding places (`serve --batch`); also the clients of the concurrent phases by default. */
  readonly batch: number;
  /** `serve --queue` of the overload phase. */
  readonly queue: number;
  readonly clients: number;
  readonly requestsPerClient: number;
  /** Rounds of the concurrent phase, each without and with the monitor, interleaved. */
  readonly rounds: number;
  readonly overloadClients: number;
  /** Distinct prompts (from the fixed list). */
  readonly prompts: number;
  /** max_tokens of every request. */
  readonly maxTokens: number;
  /** The monitor of the monitor phase; undefined: a reading with a random direction at the middle layer. */
  readonly reading: string | undefined;
  readonly timeoutSeconds: number;
}

/** One request as a client saw it. */
interface ClientResult {
  readonly prompt: number;
  readonly status: number;
  readonly text: string;
  readonly completionTokens: number;
  /** ms from sending to the first generated text (null: none came). */
  readonly ttftMs: number | null;
  readonly totalMs: number;
}

export interface PhaseFigures {
  readonly name: string;
  readonly clients: number;
  readonly requests: number;
  readonly ok: number;
  readonly rateLimited: number;
  /** Statuses other than 200 and 429. */
  readonly other: number[];
  readonly completionTokens: number;
  readonly wallSeconds: number;
  /** Completion tokens of all 200 replies ÷ the phase's wall time. */
  readonly aggregateTokensPerSecond: number;
  readonly ttftP50Ms: number;
  readonly ttftP99Ms: number;
  /** Median over requests of (tokens − 1) ÷ (last byte − first text). */
  readonly perRequestTokensPerSecondP50: number;
  /** 200 replies that differ from their prompt's reply alone. */
  readonly mismatches: number;
  /** The server's peak RSS (VmHWM) after the phase, bytes (null where /proc is missing). */
  readonly serverPeakRssBytes: number | null;
}

export interface ServeBenchReport {
  readonly model: string;
  readonly date: string;
  readonly settings: ServeBenchSettings;
  readonly machine: MachineInfo;
  /** 1-minute load average before the run and after each step (alone, each round, overload). */
  readonly load: { readonly before: number; readonly after: number[] };
  readonly phases: {
    readonly alone: PhaseFigures;
    readonly concurrent: PhaseFigures;
    readonly overload: PhaseFigures;
    readonly monitored: PhaseFigures;
  };
  /** concurrent ÷ alone aggregate tokens/s. */
  readonly concurrencyRatio: number;
  /** 1 − monitored ÷ concurrent aggregate tokens/s, in %. */
  readonly monitorCostPercent: number;
  /** Every status of the overload phase 200 or 429, and no 200 reply differing from alone. */
  readonly noMixUp: boolean;
  readonly wallSeconds: number;
}

/** Benign requests with long answers (so that max_tokens, not the end of turn, ends most replies). */
const PROMPTS = [
  'Write a short story about a lighthouse keeper.',
  'Explain how a bicycle gear system works.',
  'Describe a walk through a forest in autumn.',
  'List some tips for learning to play the piano.',
  'Explain why the sky is blue, step by step.',
  'Write a letter to a friend about a recent trip to the sea.',
  'Describe how bread is made, from flour to loaf.',
  'Explain the rules of chess to a beginner.',
  'Write a poem about the moon over a quiet city.',
  'Describe the life cycle of a butterfly.',
  'Explain how rain forms in clouds.',
  'Give advice for planting a small vegetable garden.',
  'Describe a busy market in the morning.',
  'Explain how a library organizes its books.',
  'Write a story about a robot that learns to paint.',
  'Explain how the heart pumps blood around the body.',
] as const;

export const SERVE_BENCH_MAX_PROMPTS = PROMPTS.length;

const MAIN_JS = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export async function runServeBench(
  s: ServeBenchSettings,
  log: (line: string) => void,
): Promise<ServeBenchReport> {
  if (s.prompts > PROMPTS.length) throw new SteerguardError(`--prompts: at most ${PROMPTS.length}`);
  const started = performance.now();
  const deadline = AbortSignal.timeout(s.timeoutSeconds * 1000);
  const loadBefore = readLoadAverage();
  const loadAfter: number[] = [];
  const tmp = await mkdtemp(path.join(tmpdir(), 'steerguard-bench-serve-'));
  const servers: ChildProcess[] = [];
  const stopAll = () => {
    for (const c of servers) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  deadline.addEventListener('abort', stopAll);
  try {
    const modelId = path.basename(s.model).replace(/\.gguf$/, '');
    const common = [
      '--threads',
      String(s.threads),
      '--batch',
      String(s.batch),
      '--max-tokens',
      String(s.maxTokens),
    ];
    // Both servers from the start, the concurrent rounds without and with the monitor interleaved
    // (off-on, then on-off, ...): a machine whose load drifts then weighs on both alike.
    const reading = s.reading ?? (await randomReading(s.model, path.join(tmp, 'reading.json')));
    const plain = await startServe(s.model, [...common, '--queue', String(s.queue)], servers, deadline);
    const monitoredServer = await startServe(
      s.model,
      [...common, '--queue', String(s.queue), '--reading', reading],
      servers,
      deadline,
    );
    const client = new Client(plain.url, modelId, s.maxTokens, deadline);
    const scored = new Client(monitoredServer.url, modelId, s.maxTokens, deadline);
    log(`servers: ${plain.url} (no monitor), ${monitoredServer.url} (monitor, per-token scores); warming up`);
    await client.request(0, false);
    await scored.request(0, true);

    log(`alone: ${s.prompts} requests, one at a time`);
    const alone = await timed(async () => {
      const out: ClientResult[] = [];
      for (let p = 0; p < s.prompts; p++) out.push(await client.request(p, false));
      return out;
    });
    loadAfter.push(readLoadAverage());
    for (const r of alone.results)
      if (r.status !== 200) throw new SteerguardError(`a request alone was answered ${r.status}`);
    const reference = alone.results.map((r) => r.text);
    const alonePhase = figures('alone', 1, alone, reference, peakRss(plain.pid));

    const concurrently = (c: Client, scores: boolean) =>
      timed(async () => {
        const lists = await Promise.all(
          Array.from({ length: s.clients }, async (_, k) => {
            const out: ClientResult[] = [];
            for (let j = 0; j < s.requestsPerClient; j++)
              out.push(await c.request((k + j * s.clients) % s.prompts, scores));
            return out;
          }),
        );
        return lists.flat();
      });
    const off: Timed[] = [];
    const on: Timed[] = [];
    for (let round = 0; round < s.rounds; round++) {
      for (const monitor of round % 2 === 0 ? [false, true] : [true, false]) {
        log(
          `round ${round + 1}/${s.rounds}: ${s.clients} clients × ${s.requestsPerClient} requests` +
            (monitor ? ' with the monitor and per-token scores' : ''),
        );
        (monitor ? on : off).push(await concurrently(monitor ? scored : client, monitor));
        loadAfter.push(readLoadAverage());
      }
    }
    const merged = (ts: Timed[]): Timed => ({
      results: ts.flatMap((t) => t.results),
      seconds: ts.reduce((a, t) => a + t.seconds, 0),
    });
    const concurrent = figures('concurrent', s.clients, merged(off), reference, peakRss(plain.pid));
    const monitored = figures('monitored', s.clients, merged(on), reference, peakRss(monitoredServer.pid));

    log(`${s.overloadClients} clients at once against batch ${s.batch} + queue ${s.queue}`);
    const overload = await timed(() =>
      Promise.all(Array.from({ length: s.overloadClients }, (_, k) => client.request(k % s.prompts, false))),
    );
    loadAfter.push(readLoadAverage());
    const overloadPhase = figures('overload', s.overloadClients, overload, reference, peakRss(plain.pid));
    await Promise.all([stopServe(plain.child), stopServe(monitoredServer.child)]);

    const noMixUp =
      overloadPhase.other.length === 0 &&
      [alonePhase, concurrent, overloadPhase, monitored].every((p) => p.mismatches === 0);
    return {
      model: s.model,
      date: new Date().toISOString(),
      settings: s,
      machine: machineInfo(),
      load: { before: loadBefore, after: loadAfter },
      phases: { alone: alonePhase, concurrent, overload: overloadPhase, monitored },
      concurrencyRatio: concurrent.aggregateTokensPerSecond / alonePhase.aggregateTokensPerSecond,
      monitorCostPercent:
        100 * (1 - monitored.aggregateTokensPerSecond / concurrent.aggregateTokensPerSecond),
      noMixUp,
      wallSeconds: (performance.now() - started) / 1000,
    };
  } catch (e) {
    if (deadline.aborted)
      throw new SteerguardError(
        `bench-serve: the run took longer than --timeout ${s.timeoutSeconds}s; stopped`,
      );
    throw e;
  } finally {
    stopAll();
    await rm(tmp, { recursive: true, force: true });
  }
}

interface Timed {
  readonly results: ClientResult[];
  readonly seconds: number;
}

async function timed(run: () => Promise<ClientResult[]>): Promise<Timed> {
  const t0 = performance.now();
  const results = await run();
  return { results, seconds: (performance.now() - t0) / 1000 };
}

/** The q-quantile (nearest rank) of `xs`. */
function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

function figures(
  name: string,
  clients: number,
  t: Timed,
  reference: readonly string[],
  serverPeakRssBytes: number | null,
): PhaseFigures {
  const ok = t.results.filter((r) => r.status === 200);
  const tokens = ok.reduce((a, r) => a + r.completionTokens, 0);
  const ttft = ok.filter((r) => r.ttftMs !== null).map((r) => r.ttftMs as number);
  const rates = ok
    .filter((r) => r.ttftMs !== null && r.completionTokens > 1 && r.totalMs > (r.ttftMs as number))
    .map((r) => ((r.completionTokens - 1) * 1000) / (r.totalMs - (r.ttftMs as number)));
  return {
    name,
    clients,
    requests: t.results.length,
    ok: ok.length,
    rateLimited: t.results.filter((r) => r.status === 429).length,
    other: t.results.filter((r) => r.status !== 200 && r.status !== 429).map((r) => r.status),
    completionTokens: tokens,
    wallSeconds: t.seconds,
    aggregateTokensPerSecond: tokens / t.seconds,
    ttftP50Ms: quantile(ttft, 0.5),
    ttftP99Ms: quantile(ttft, 0.99),
    perRequestTokensPerSecondP50: median(rates),
    mismatches: ok.filter((r) => r.text !== reference[r.prompt]).length,
    serverPeakRssBytes,
  };
}

/** A streaming chat client of one server. */
class Client {
  constructor(
    private readonly url: string,
    private readonly model: string,
    private readonly maxTokens: number,
    private readonly signal: AbortSignal,
  ) {}

  async request(prompt: number, scores: boolean): Promise<ClientResult> {
    const t0 = performance.now();
    const res = await fetch(`${this.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: this.model,
        messages: [{ role: 'user', content: PROMPTS[prompt] }],
        max_tokens: this.maxTokens,
        stream: true,
        stream_options: { include_usage: true },
        ...(scores ? { steerguard: { scores: true } } : {}),
      }),
      signal: this.signal,
    });
    if (res.status !== 200) {
      await res.arrayBuffer();
      return {
        prompt,
        status: res.status,
        text: '',
        completionTokens: 0,
        ttftMs: null,
        totalMs: performance.now() - t0,
      };
    }
    let text = '';
    let ttftMs: number | null = null;
    let completionTokens = 0;
    let buffer = '';
    const decoder = new TextDecoder();
    for await (const bytes of res.body as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(bytes, { stream: true });
      let at: number;
      while ((at = buffer.indexOf('\n\n')) >= 0) {
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + 2);
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const chunk = JSON.parse(line.slice(6)) as {
          error?: { message: string };
          choices?: { delta?: { content?: string } }[];
          usage?: { completion_tokens: number };
        };
        if (chunk.error) throw new SteerguardError(`a stream ended with an error: ${chunk.error.message}`);
        const piece = chunk.choices?.[0]?.delta?.content ?? '';
        if (piece !== '' && ttftMs === null) ttftMs = performance.now() - t0;
        text += piece;
        if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
      }
    }
    return { prompt, status: 200, text, completionTokens, ttftMs, totalMs: performance.now() - t0 };
  }
}

/** Spawns `steerguard serve` on 127.0.0.1, any free port; resolves once it listens. */
async function startServe(
  model: string,
  args: readonly string[],
  servers: ChildProcess[],
  signal: AbortSignal,
): Promise<{ url: string; pid: number; child: ChildProcess }> {
  const child = spawn(
    process.execPath,
    [MAIN_JS, 'serve', '-m', model, '--host', '127.0.0.1', '--port', '0', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, STEERGUARD_API_KEY: '' } },
  );
  servers.push(child);
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = / on (http:\/\/127\.0\.0\.1:\d+) /.exec(stderr);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) =>
      reject(new SteerguardError(`steerguard serve exited (${code}): ${stderr.trim()}`)),
    );
    signal.addEventListener('abort', () => reject(new SteerguardError('timed out starting the server')));
  });
  return { url, pid: child.pid!, child };
}

async function stopServe(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/** The peak resident set of a process (VmHWM), bytes; null where /proc has no status for it. */
function peakRss(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * A reading with a random direction at the middle layer: its scores mean nothing, but the
 * monitor costs what a real one costs (a prompt pass, a projection per generated token).
 */
async function randomReading(modelFile: string, file: string): Promise<string> {
  const model = await Model.load(modelFile, { weights: 'quantized' });
  const layer = Math.floor(model.config.nLayers / 2);
  let seed = 1;
  const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
  const v = Float64Array.from({ length: model.config.dModel }, () => 2 * random() - 1);
  saveReading(file, {
    reading: {
      method: 'probe',
      layers: [layer],
      directions: [{ layer, mid: 0, spread: 1, v }],
      threshold: 0,
    },
    model: { name: model.identity.name, fingerprint: model.identity.fingerprint },
    template: 'chat',
    fittedIds: [],
  });
  return file;
}

const ms = (x: number) => (Number.isFinite(x) ? `${x.toFixed(0)} ms` : '–');
const rate = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const mib = (x: number | null) => (x === null ? '–' : `${(x / 2 ** 20).toFixed(0)} MiB`);

/** The report as Markdown (a BENCHMARKS.md section's body). */
export function formatServeBenchMarkdown(r: ServeBenchReport, command: string): string {
  const s = r.settings;
  const m = r.machine;
  const p = r.phases;
  const rows = [p.alone, p.concurrent, p.overload, p.monitored].map((f) => [
    {
      alone: '1 client, alone',
      concurrent: `${f.clients} clients`,
      overload: `${f.clients} clients, queue ${s.queue}`,
      monitored: `${f.clients} clients, monitor + scores`,
    }[f.name as keyof typeof p],
    String(f.requests),
    `${f.ok} / ${f.rateLimited}${f.other.length > 0 ? ` / other: ${f.other.join(',')}` : ''}`,
    `${f.completionTokens} in ${f.wallSeconds.toFixed(1)} s`,
    rate(f.aggregateTokensPerSecond),
    ms(f.ttftP50Ms),
    ms(f.ttftP99Ms),
    rate(f.perRequestTokensPerSecondP50),
    `${f.ok - f.mismatches} / ${f.ok}`,
    mib(f.serverPeakRssBytes),
  ]);
  const header = [
    'phase',
    'requests',
    '200 / 429',
    'completion tokens',
    'aggregate tokens/s',
    'TTFT p50',
    'TTFT p99',
    'tokens/s per request (p50)',
    'replies equal to alone',
    'server peak RSS',
  ];
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const table = [line(header), line(header.map((_, k) => (k === 0 ? '---' : '---:'))), ...rows.map(line)];
  const goal = (met: boolean) => (met ? 'met' : 'not met');
  return [
    `- command: \`${command}\``,
    `- model: ${path.basename(r.model)}; date ${r.date}; wall time ${r.wallSeconds.toFixed(0)} s`,
    `- machine: ${m.cpu}, ${m.logicalCores} logical cores, ${Math.round(m.memoryBytes / 2 ** 30)} GiB, ${m.os}, node ${m.node}`,
    `- 1-minute load average: ${r.load.before.toFixed(2)} before, ${r.load.after.map((x) => x.toFixed(2)).join(', ')} after alone, each round and overload`,
    `- settings: serve --threads ${s.threads} --batch ${s.batch} --queue ${s.queue} --max-tokens ${s.maxTokens}; ` +
      `streaming chat, greedy, max_tokens ${s.maxTokens}; ${s.prompts} distinct prompts; ${s.clients} clients × ` +
      `${s.requestsPerClient} requests, ${s.rounds} rounds each without and with the monitor, interleaved; ` +
      `overload ${s.overloadClients} clients at once; monitor ` +
      `${s.reading ?? 'a reading with a random direction at the middle layer'}`,
    '',
    ...table,
    '',
    `- ${s.clients} clients ÷ 1 client, aggregate tokens/s: ${r.concurrencyRatio.toFixed(2)}× (goal ≥ 5×: ${goal(r.concurrencyRatio >= 5)})`,
    `- cost of the monitor with per-token scores: ${r.monitorCostPercent.toFixed(1)}% of the aggregate tokens/s (goal ≤ 5%: ${goal(r.monitorCostPercent <= 5)})`,
    `- no mix-up: ${r.noMixUp ? 'passed' : 'FAILED'} (every overload answer 200 or 429; every 200 reply equal to its prompt's reply alone)`,
  ].join('\n');
}
