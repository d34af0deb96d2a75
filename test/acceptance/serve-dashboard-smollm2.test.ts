/**
 * The dashboard in a real browser: `steerguard serve` spawned on SmolLM2 with a monitor (a reading
 * with a random direction: its scores mean nothing, but they are computed and streamed as a real
 * one's), the system Chromium driven by playwright-core opening `/`, and a streamed chat request
 * with per-token scores. The page must draw that request's score marks while it streams (a count
 * seen above zero while the row still says `generating`, and growing), end with one mark per
 * score the client received, and a screenshot is saved to test-output/dashboard.png.
 *
 * Skipped without the model or without Chromium (`$CHROMIUM`, default /usr/bin/chromium).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import OpenAI from 'openai';
import { type Browser, chromium } from 'playwright-core';

import { saveReading } from '../../src/concepts/reading-file.js';
import { Model } from '../../src/model/model.js';
import { ROOT, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';
import { seededUniform } from '../util/random.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'test-output', 'dashboard.png');
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const skip =
  missingModel(SMOLLM2_GGUF) ??
  (existsSync(CHROMIUM) ? undefined : `no Chromium at ${CHROMIUM} (set $CHROMIUM)`);

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-dashboard-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * Run in the page (a string: this project's TypeScript has no DOM types): records every change to
 * the table as each row's state and number of score marks, in `window.samples`.
 */
const RECORD_SAMPLES = `
  window.samples = [];
  const rows = document.getElementById('rows');
  new MutationObserver(() => {
    for (const tr of rows.querySelectorAll('tr'))
      window.samples.push({ id: tr.dataset.id, state: tr.dataset.state, marks: tr.querySelectorAll('.score-mark').length });
  }).observe(rows, { subtree: true, childList: true, attributes: true });
`;

interface Sample {
  id: string;
  state: string;
  marks: number;
}

describe('the dashboard in Chromium, on SmolLM2-135M', { skip }, () => {
  let child: ChildProcess;
  let stderr = '';
  let url = '';
  let browser: Browser;

  before(async () => {
    const model = await Model.load(SMOLLM2_GGUF);
    const uniform = seededUniform(3);
    const v = Float64Array.from({ length: model.config.dModel }, () => 2 * uniform() - 1);
    const readingFile = path.join(tmp, 'reading.json');
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
        '--batch',
        '2',
        '--reading',
        readingFile,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    url = await new Promise<string>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = / on (http:\/\/\S+) /.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
    });
    // Chromium refuses to run as root with its sandbox on.
    const root = process.getuid?.() === 0;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: root ? ['--no-sandbox'] : [] });
  });
  after(async () => {
    await browser?.close();
    if (child?.exitCode === null) child.kill('SIGKILL');
  });

  it("draws a streaming request's per-token scores as they arrive, and saves a screenshot", async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 600 } });
    await page.goto(`${url}/`);
    await page.waitForSelector('body[data-live="true"]');
    await page.evaluate(RECORD_SAMPLES);

    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused-on-loopback', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'SmolLM2-135M-Instruct.Q4_1',
      messages: [{ role: 'user', content: 'Write a long story about a dragon who learns to bake bread.' }],
      max_tokens: 48,
      stream: true,
      steerguard: { scores: true },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let id = '';
    let scores = 0;
    for await (const chunk of stream) {
      id = chunk.id;
      scores +=
        (chunk as { steerguard?: { token_scores?: unknown[] } }).steerguard?.token_scores?.length ?? 0;
    }
    assert.ok(scores >= 8, `${scores} token scores streamed`);
    await page.waitForSelector(`tr[data-id="${id}"][data-state="done"]`);

    const samples = ((await page.evaluate('window.samples')) as Sample[]).filter((s) => s.id === id);
    const whileStreaming = samples.filter((s) => s.state === 'generating' && s.marks > 0).map((s) => s.marks);
    assert.ok(whileStreaming.length > 0, 'score marks were drawn before the request finished');
    assert.ok(
      new Set(whileStreaming).size >= 2,
      `the marks grew while it streamed (counts seen: ${[...new Set(whileStreaming)].join(', ')})`,
    );
    assert.equal(await page.locator(`tr[data-id="${id}"] .score-mark`).count(), scores);
    assert.match(
      (await page.locator(`tr[data-id="${id}"]`).textContent()) ?? '',
      /tokens, #[0-9a-f]{12}/,
      'the prompt shown as its token count and hash, not its text',
    );

    mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    rmSync(SCREENSHOT, { force: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    const png = readFileSync(SCREENSHOT);
    assert.ok(png.length > 1000, `${png.length} bytes`);
    assert.deepEqual(png.subarray(0, 8), PNG_SIGNATURE);
  });
});
