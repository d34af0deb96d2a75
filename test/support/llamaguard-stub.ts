/**
 * A stand-in for `llama-server` running Llama Guard: an OpenAI-style `/v1/chat/completions` on
 * 127.0.0.1 at a random port. It answers `unsafe\nS2` when the agent message of the Llama Guard
 * prompt contains the marker word, `safe` otherwise; other modes break the protocol on purpose.
 */
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** ok: the protocol; garbage: 200 with prose; badjson: 200 with non-JSON; error500; hang: never answers. */
export type StubMode = 'ok' | 'garbage' | 'badjson' | 'error500' | 'hang';

export interface LlamaGuardStub {
  readonly url: string;
  /** Requests received so far (each retry counts). */
  readonly requests: number;
  mode: StubMode;
  /** In 'ok' mode: fail this many requests with 503 first (to exercise retries). */
  failFirst: number;
  close(): Promise<void>;
}

export const STUB_MARKER = 'XYZZY';

/** The agent's message, cut out of a Llama Guard prompt. */
function agentMessage(prompt: string): string {
  const start = prompt.lastIndexOf('\nAgent: ');
  const end = prompt.indexOf('<END CONVERSATION>');
  return start >= 0 && end > start ? prompt.slice(start + 8, end) : '';
}

export async function startLlamaGuardStub(mode: StubMode = 'ok'): Promise<LlamaGuardStub> {
  let requests = 0;
  const state = { mode, failFirst: 0 };
  const handle = (req: IncomingMessage, res: ServerResponse, body: string): void => {
    requests++;
    if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
      res.writeHead(404).end();
      return;
    }
    if (state.mode === 'hang') return;
    if (state.mode === 'error500') {
      res.writeHead(500, { 'content-type': 'text/plain' }).end('internal error');
      return;
    }
    if (state.failFirst > 0) {
      state.failFirst--;
      res.writeHead(503).end('busy');
      return;
    }
    if (state.mode === 'badjson') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"choices": [');
      return;
    }
    let content: string;
    if (state.mode === 'garbage') content = 'Well, that is an interesting question.';
    else {
      const parsed = JSON.parse(body) as { messages: { role: string; content: string }[] };
      const prompt = parsed.messages.at(-1)?.content ?? '';
      content = agentMessage(prompt).includes(STUB_MARKER) ? 'unsafe\nS2' : 'safe';
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        id: `stub-${requests}`,
        object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
      }),
    );
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return requests;
    },
    get mode() {
      return state.mode;
    },
    set mode(m: StubMode) {
      state.mode = m;
    },
    get failFirst() {
      return state.failFirst;
    },
    set failFirst(n: number) {
      state.failFirst = n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        // Hung requests hold their sockets open; close() alone would wait for them forever.
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A URL on which nothing listens: a port that was free a moment ago. */
export async function deadUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}
