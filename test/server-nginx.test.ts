/**
 * Scale-out as docs/SERVER.md documents it: two `steerguard serve` replicas on loopback behind
 * nginx, with the nginx configuration read from docs/SERVER.md itself (only its ports replaced),
 * so the documented file is the tested one. Requests spread over both replicas, give the same
 * greedy reply from either, stream through nginx, and are still answered when one replica is
 * gone. Skipped with the reason when nginx is not installed (.ci/run installs it).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { GgmlType } from '../src/formats/gguf.js';
import { type RunningServer, startServer } from '../src/server/serve.js';
import { FIXTURES, ROOT } from './util/fixtures.js';
import { hfToGguf } from './util/hf-to-gguf.js';

// Debian puts it in /usr/sbin, which a non-root PATH may lack.
const NGINX = process.env.NGINX ?? (existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx');
const nginxMissing =
  spawnSync(NGINX, ['-v'], { encoding: 'utf8' }).status === 0
    ? undefined
    : `nginx is not installed (no \`${NGINX}\` on PATH; set $NGINX, or apt-get install nginx)`;

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-nginx-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The ```nginx block of docs/SERVER.md, with its listen port and replica ports replaced. */
function documentedConfig(listen: number, replicas: readonly number[]): string {
  const doc = readFileSync(path.join(ROOT, 'docs', 'SERVER.md'), 'utf8');
  const block = /```nginx\n([\s\S]*?)```/.exec(doc)?.[1];
  assert.ok(block, 'docs/SERVER.md has an ```nginx block');
  assert.match(block, /listen 127\.0\.0\.1:8000;/);
  let k = 0;
  const conf = block
    .replace('listen 127.0.0.1:8000;', `listen 127.0.0.1:${listen};`)
    .replace(/server 127\.0\.0\.1:800[12]/g, () => `server 127.0.0.1:${replicas[k++]}`);
  assert.equal(k, replicas.length, 'one server line per replica');
  return conf;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe('two replicas behind nginx (the docs/SERVER.md configuration)', { skip: nginxMissing }, () => {
  const replicas: RunningServer[] = [];
  let nginx: ChildProcess;
  let url = '';
  let nginxLog = '';

  before(async () => {
    const modelFile = path.join(tmp, 'tiny.gguf');
    // the one-token-per-character tokenizer of server.test.ts
    const letters = Array.from({ length: 26 }, (_, i) => String.fromCharCode(97 + i));
    hfToGguf(path.join(FIXTURES, 'tiny', 'llama'), modelFile, GgmlType.F32, (entries) => [
      ...entries,
      { key: 'tokenizer.ggml.model', value: 'gpt2' },
      { key: 'tokenizer.ggml.pre', value: 'gpt2' },
      {
        key: 'tokenizer.ggml.tokens',
        value: [...letters, '\u0120', ...letters.flatMap((a) => letters.map((b) => a + b))].slice(0, 256),
      },
      { key: 'tokenizer.ggml.merges', value: [] as string[] },
    ]);
    for (let i = 0; i < 2; i++)
      replicas.push(
        await startServer({
          engine: {
            model: modelFile,
            threads: 1,
            coeff: 1,
            maxBatch: 1,
            maxPromptTokens: 64,
            maxTokens: 16,
            blockMessage: '',
          },
          port: 0,
          queue: 0,
        }),
      );
    const listen = await freePort();
    const ports = replicas.map((r) => Number(new URL(r.url).port));
    for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(path.join(tmp, d));
    // The documented file goes in nginx's http block; around it what a test run needs: the
    // foreground, one process (no user switch when root), every path in the temporary folder.
    const conf = [
      'daemon off;',
      'master_process off;',
      `pid ${tmp}/nginx.pid;`,
      `error_log ${tmp}/error.log;`,
      'events { worker_connections 64; }',
      'http {',
      '  access_log off;',
      ...['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
        (d) => `  ${d === 'body' ? 'client_body' : d}_temp_path ${tmp}/${d};`,
      ),
      documentedConfig(listen, ports),
      '}',
    ].join('\n');
    writeFileSync(path.join(tmp, 'nginx.conf'), conf);
    nginx = spawn(NGINX, ['-p', tmp, '-e', `${tmp}/error.log`, '-c', path.join(tmp, 'nginx.conf')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    nginx.stderr!.on('data', (d: Buffer) => (nginxLog += d.toString()));
    url = `http://127.0.0.1:${listen}`;
    for (let tries = 0; ; tries++) {
      const ok = await fetch(`${url}/health`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      if (tries > 100 || nginx.exitCode !== null) throw new Error(`nginx did not start: ${nginxLog}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  after(async () => {
    nginx?.kill('SIGTERM');
    await Promise.all(replicas.map((r) => r.close(1000)));
  });

  const complete = async (stream = false) => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: replicas[0].info.model, prompt: 'hello there', max_tokens: 12, stream }),
    });
    return { res, replica: res.headers.get('x-steerguard-replica') ?? '' };
  };

  test('requests spread over both replicas, and either gives the same greedy reply', async () => {
    const seen = new Set<string>();
    const texts = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const { res, replica } = await complete();
      assert.equal(res.status, 200);
      seen.add(replica);
      texts.add(((await res.json()) as { choices: { text: string }[] }).choices[0].text);
    }
    assert.deepEqual(
      [...seen].sort(),
      replicas.map((r) => new URL(r.url).host).sort(),
      'both replicas answered',
    );
    assert.equal(texts.size, 1, 'the same reply from either replica');
  });

  test('a stream passes through nginx as server-sent events, ending with [DONE]', async () => {
    const whole = ((await (await complete()).res.json()) as { choices: { text: string }[] }).choices[0].text;
    const { res } = await complete(true);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const events = (await res.text()).split('\n\n').filter((e) => e.startsWith('data: '));
    assert.equal(events.at(-1), 'data: [DONE]');
    const text = events
      .slice(0, -1)
      .map((e) => (JSON.parse(e.slice(6)) as { choices: { text: string }[] }).choices[0]?.text ?? '')
      .join('');
    assert.equal(text, whole);
  });

  test('with one replica gone, requests are still answered by the other', async () => {
    await replicas[0].close(1000);
    const left = new URL(replicas[1].url).host;
    for (let i = 0; i < 3; i++) {
      const { res, replica } = await complete();
      assert.equal(res.status, 200);
      assert.match(replica, new RegExp(`${left.replace(/\./g, '\\.')}$`));
      await res.arrayBuffer();
    }
  });
});
