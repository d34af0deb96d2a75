/**
 * `steerguard serve` spawned as a user runs it, on the real SmolLM2 GGUF (skipped when it is
 * missing): the `openai` client streams a chat completion without and with a per-request control
 * vector (a random one, strong enough to change the reply), and SIGTERM stops the server with
 * exit code 0.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import OpenAI from 'openai';

import { ControlVector } from '../../src/steering/control-vector.js';
import { ROOT, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';
import { seededUniform } from '../util/random.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-serve-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('steerguard serve on SmolLM2-135M', { skip: missingModel(SMOLLM2_GGUF) }, () => {
  let child: ChildProcess;
  let stderr = '';
  let client: OpenAI;
  let exited: Promise<number | NodeJS.Signals | null>;

  before(async () => {
    const vectors = path.join(tmp, 'vectors');
    mkdirSync(vectors);
    const uniform = seededUniform(11);
    new ControlVector(
      [8, 9, 10, 11, 12].map(
        (l) => [l, Float32Array.from({ length: 576 }, () => 2 * uniform() - 1)] as const,
      ),
      { modelHint: 'llama' },
    ).save(path.join(vectors, 'noise.gguf'));
    child = spawn(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'src', 'cli', 'main.js'),
        'serve',
        '-m',
        SMOLLM2_GGUF,
        '--port',
        '0',
        '--threads',
        '2',
        '--vectors',
        vectors,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal)));
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = / on (http:\/\/\S+) /.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
    });
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused-on-loopback', maxRetries: 0 });
  });
  after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });

  const streamChat = async (steerguard?: object) => {
    const stream = await client.chat.completions.create({
      model: 'SmolLM2-135M-Instruct.Q4_1',
      messages: [{ role: 'user', content: 'What is the capital of France?' }],
      max_tokens: 16,
      stream: true,
      ...(steerguard ? { steerguard } : {}),
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let text = '';
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      text += chunk.choices[0]?.delta.content ?? '';
    }
    return { text, chunks };
  };

  it('streams a chat completion, and one steered by a named vector differs', async () => {
    const plain = await streamChat();
    assert.ok(plain.chunks > 3, `${plain.chunks} chunks`);
    assert.match(plain.text, /Paris/);
    const steered = await streamChat({ steer: [{ vector: 'noise', coeff: 8 }] });
    assert.notEqual(steered.text, plain.text);
    assert.equal((await streamChat()).text, plain.text, 'the steering applied to its request only');
  });

  it('SIGTERM: exit code 0', async () => {
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /SIGTERM: no new requests/);
  });
});
