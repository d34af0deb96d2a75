/**
 * llama.cpp reference (src/reference/llamacpp.ts): loads the real GGUF models with node-llama-cpp's
 * prebuilt CPU binary, checks that greedy decoding is deterministic and reproduces the committed
 * fixtures test/fixtures/llamacpp/<model>.json (written by scripts/reference/llamacpp_greedy.mjs).
 *
 * Skipped, with the reason, when node-llama-cpp, a model file or a fixture is missing, or when
 * the model file is not the one the fixture was made from.
 *
 * The fixture was recorded on one CPU; the same llama.cpp release picks other kernels (and rounds
 * differently) on another, so the recorded tokens are never required verbatim. Where this run's
 * continuation parts from the recording, the recording's top-1/top-2 logit margin at that step
 * must be below CROSS_BUILD_MARGIN: two runs whose logits differ by at most half of it can only
 * part at such a step. A larger margin there means llama.cpp computes something else, not that it
 * rounds differently. (steerguard itself is checked against these recordings, teacher-forced, in
 * parity-real.test.ts, and against transformers in the parity suites.)
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { llamaCppAvailable, loadLlamaCpp } from '../../src/reference/llamacpp.js';
import type { LlamaCppHandle, LlamaCppLoadOptions } from '../../src/reference/llamacpp.js';

/**
 * Logit margin under which two llama.cpp builds may pick different tokens: its int8 activation
 * rounding moves logits by a few tenths, and other kernels round differently.
 */
const CROSS_BUILD_MARGIN = 1;
/** Fixture prompts decoded by the test (the first ones; the rest, e.g. a long prompt, cost too much time). */
const TEST_CASES = 3;
/**
 * One thread: llama.cpp's results do not depend on the thread count (each output row is computed
 * by one thread), and its spinning thread barriers make 2 threads crawl on a busy 2-core machine.
 */
const TEST_THREADS = 1;

interface FixtureCase {
  name: string;
  promptIds: number[];
  greedyIds: number[];
  greedyText: string;
  margins: number[];
}

interface Fixture {
  model: { name: string; file: string; sha256: string };
  llamaCpp: { llamaCppRelease: string; systemInfo: string };
  options: { load: LlamaCppLoadOptions; maxTokens: number };
  cases: FixtureCase[];
}

/** The repository root: the nearest folder up with steerguard's package.json (works from dist/ too). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (
      existsSync(pkg) &&
      (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'steerguard'
    ) {
      return dir;
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('steerguard package.json not found above the test file');
    dir = up;
  }
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const ROOT = repoRoot();
const MODELS_DIR = process.env.STEERGUARD_MODELS ?? join(ROOT, '.cache', 'models');
const available = await llamaCppAvailable();

for (const name of ['smollm2', 'gemma3']) {
  const fixtureFile = join(ROOT, 'test', 'fixtures', 'llamacpp', `${name}.json`);
  const fixture = existsSync(fixtureFile)
    ? (JSON.parse(readFileSync(fixtureFile, 'utf8')) as Fixture)
    : undefined;
  const gguf = fixture ? join(MODELS_DIR, fixture.model.file) : '';
  let skip: string | false = false;
  if (!available) skip = 'node-llama-cpp (optional dependency) is not installed';
  else if (!fixture) skip = `${fixtureFile} is missing: node scripts/reference/llamacpp_greedy.mjs writes it`;
  else if (!existsSync(gguf)) skip = `${gguf} is missing: npm run fetch-models`;
  else if ((await sha256(gguf)) !== fixture.model.sha256) {
    skip = `${gguf} is not the model the fixture was made from (sha256 differs)`;
  }

  describe(`llama.cpp reference: ${name}`, { skip }, () => {
    let h: LlamaCppHandle;
    let fx: Fixture;
    before(async () => {
      fx = fixture as Fixture;
      h = await loadLlamaCpp(gguf, { ...fx.options.load, threads: TEST_THREADS });
    });
    after(async () => {
      await h?.dispose();
    });

    test('uses the prebuilt CPU binary and reports the build', () => {
      assert.equal(h.info.gpu, false);
      assert.equal(h.info.buildType, 'prebuilt');
      assert.equal(h.info.threads, TEST_THREADS);
      assert.match(h.info.systemInfo, /CPU/);
      assert.ok(h.info.llamaCppRelease.length > 0);
    });

    test('tokenize adds nothing; detokenize inverts it', () => {
      const ids = h.tokenize('Hello world', { special: false });
      assert.ok(ids.length >= 2);
      assert.notEqual(ids[0], h.info.bosTokenId);
      assert.equal(h.detokenize(ids), 'Hello world');
      const first = fx.cases[0];
      assert.equal(h.detokenize(first.greedyIds), first.greedyText);
    });

    // Reused by the fixture check, which then decodes each prompt once.
    let first: number[] = [];

    test('greedy is deterministic', async () => {
      const prompt = fx.cases[0].promptIds;
      first = await h.greedy(prompt, fx.options.maxTokens);
      assert.deepEqual(await h.greedy(prompt, fx.options.maxTokens), first);
    });

    test('greedy follows the fixture up to a step where the recording was near a tie', async () => {
      const report: string[] = [];
      for (const [i, c] of fx.cases.slice(0, TEST_CASES).entries()) {
        const got = i === 0 && first.length > 0 ? first : await h.greedy(c.promptIds, fx.options.maxTokens);
        const at = got.findIndex((t, j) => t !== c.greedyIds[j]);
        if (at >= 0)
          assert.ok(
            c.margins[at] < CROSS_BUILD_MARGIN,
            `${name}: case ${i} parts from the recording at step ${at}, where its margin is ${c.margins[at]}`,
          );
        report.push(at < 0 ? 'equal' : `parts at ${at} (recorded margin ${c.margins[at].toFixed(3)})`);
      }
      console.log(`# ${name} llama.cpp vs its recording: ${report.join('; ')}`);
    });
  });
}
