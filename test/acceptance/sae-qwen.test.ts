/**
 * SAE steering from the command line on Qwen2.5-Coder-0.5B-Instruct (a model that refuses about
 * half of harmful requests): `sae features` finds latents on the refusal tokens of its refusals,
 * `sae steer` grid-searches a clamp, and `eval refusal` clamps always and behind a monitor. The SAE
 * is random (a trained one is 50 MB): these check the plumbing, the output contract, that no prompt
 * text is printed, and the bad-input errors; EVAL.md has the trained SAE's figures.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { loadPromptSet } from '../../src/data/datasets.js';
import { saveSae } from '../../src/sae/saelens.js';
import { cli } from '../util/cli.js';
import { FIXTURES, QWEN05_GGUF, SHARED, missingModel } from '../util/fixtures.js';
import { randomSae } from '../util/random-sae.js';

const DATA = path.join(SHARED, 'datasets');
const tmp = mkdtempSync(path.join(tmpdir(), 'sg-sae-qwen-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('SAE steering CLI on Qwen2.5-Coder-0.5B-Instruct', { skip: missingModel(QWEN05_GGUF) }, () => {
  const saeDir = path.join(tmp, 'sae');
  // A Top-k SAE on block 12 of the 0.5B model (d_model 896) with random unit decoder rows.
  saveSae(
    randomSae({
      dIn: 896,
      dSae: 1024,
      k: 16,
      seed: 11,
      hookLayer: 12,
      modelName: 'qwen2.5-coder-0.5b-instruct',
      encoder: 'tied',
    }),
    saeDir,
  );
  const common = ['-m', QWEN05_GGUF, '--data-dir', DATA, '--threads', '2'];
  const search = ['--harmful', 'advbench', '--benign', 'alpaca:train', '--part', 'train', '--limit', '6'];
  /** `eval refusal` on HarmBench with the latent clamped always on. */
  const clampEval = (
    o: { sae: string; feature: string; clamp: string; limit: string; maxTokens: string },
    extra: string[] = [],
    timeoutMs = 120_000,
  ) =>
    cli(
      [
        'eval',
        'refusal',
        ...common,
        '--sets',
        'harmbench',
        '--limit',
        o.limit,
        '--max-tokens',
        o.maxTokens,
        '--steer',
        'sae-clamp',
        '--sae',
        o.sae,
        '--feature',
        o.feature,
        '--clamp',
        o.clamp,
        ...extra,
      ],
      { timeoutMs },
    );
  const harmfulText = loadPromptSet('advbench', { dataDir: DATA })
    .prompts.slice(0, 40)
    .map((p) => p.text);
  const printsNoPrompt = (s: string) => {
    for (const t of harmfulText) assert.ok(!s.includes(t), 'a harmful prompt was printed');
  };

  test('sae features ranks latents on the refusal tokens and prints no prompt text', () => {
    const out = path.join(tmp, 'features.json');
    const r = cli(
      [
        'sae',
        'features',
        '--sae',
        saeDir,
        ...common,
        ...search,
        '--max-tokens',
        '12',
        '--top',
        '5',
        '--out',
        out,
        '--json',
      ],
      { timeoutMs: 600_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    printsNoPrompt(r.stdout + r.stderr);
    const doc = JSON.parse(r.stdout) as {
      harmful: { n: number; refusals: number };
      byRefusalTokens: { feature: number; score: number }[];
      contexts: Record<string, { tokens: number[]; text?: string }[]>;
      suggestedClampValues: number[];
    };
    assert.equal(doc.harmful.n, 6);
    assert.ok(doc.harmful.refusals >= 1, 'the model refuses some of the harmful prompts');
    assert.equal(doc.byRefusalTokens.length, 5);
    assert.ok(doc.byRefusalTokens[0].score >= doc.byRefusalTokens[4].score);
    const feature = doc.byRefusalTokens[0].feature;
    const ctx = doc.contexts[String(feature)];
    assert.ok(ctx.length > 0 && ctx.every((c) => c.text === undefined && c.tokens.length > 0));
    assert.equal(doc.suggestedClampValues.length, 4);
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), doc);
  });

  test('sae steer reports each clamp value and chooses one', () => {
    const r = cli(
      [
        'sae',
        'steer',
        '--sae',
        saeDir,
        ...common,
        ...search.slice(0, 4),
        '--part',
        'val',
        '--limit',
        '3',
        '--feature',
        '0',
        '--values',
        '0,40',
        '--max-tokens',
        '8',
        '--json',
      ],
      { timeoutMs: 600_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    printsNoPrompt(r.stdout + r.stderr);
    const doc = JSON.parse(r.stdout) as { grid: { value: number; refusal: { n: number } }[]; chosen: number };
    assert.deepEqual(
      doc.grid.map((g) => [g.value, g.refusal.n]),
      [
        [0, 3],
        [40, 3],
      ],
    );
    assert.ok([0, 40].includes(doc.chosen));
  });

  test('eval refusal --steer sae-clamp clamps the latent while generating', () => {
    const r = clampEval(
      { sae: saeDir, feature: '3', clamp: '20', limit: '2', maxTokens: '6' },
      ['--json'],
      600_000,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /clamp sae latent 3 to 20/);
  });

  test('bad input: a latent past the dictionary, an SAE of another width, a missing part', () => {
    const tooBig = clampEval(
      { sae: saeDir, feature: '5000', clamp: '1', limit: '1', maxTokens: '2' },
      [],
      120_000,
    );
    assert.equal(tooBig.code, 2, tooBig.stderr);
    assert.match(tooBig.stderr, /feature 5000 is not a latent of this SAE \(0\.\.1023\)/);
    const narrow = clampEval(
      { sae: path.join(FIXTURES, 'sae', 'topk'), feature: '0', clamp: '1', limit: '1', maxTokens: '2' },
      [],
      120_000,
    );
    assert.equal(narrow.code, 2, narrow.stderr);
    assert.match(narrow.stderr, /d_in = 8 but the model's d_model is 896/);
    const partial = cli([
      'eval',
      'refusal',
      ...common,
      '--sets',
      'harmbench',
      '--steer',
      'sae-clamp',
      '--sae',
      saeDir,
    ]);
    assert.equal(partial.code, 2);
    assert.match(partial.stderr, /needs all of --sae DIR, --feature J and --clamp C/);
  });
});
