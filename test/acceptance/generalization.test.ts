/**
 * measureGeneralization on a real model (SmolLM2-135M-Instruct) and real datasets: fit and choose
 * on development sources, report on test sources that took part in nothing.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { measureGeneralization } from '../../src/concepts/generalization.js';
import { loadPromptSet } from '../../src/data/datasets.js';
import { Model } from '../../src/model/model.js';
import { ROOT, SHARED, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const DATA = path.join(SHARED, 'datasets');
const set = (name: string, limit = 12) => loadPromptSet(name, { dataDir: DATA, limit });

const skip =
  missingModel(SMOLLM2_GGUF) ??
  (existsSync(path.join(DATA, 'advbench')) ? undefined : `no datasets at ${DATA}`);

describe('generalization to held-out sources (SmolLM2)', { skip }, () => {
  let model: Model;
  let cacheDir: string;
  before(async () => {
    model = await Model.load(SMOLLM2_GGUF);
    cacheDir = mkdtempSync(path.join(tmpdir(), 'sg-gen-'));
  });
  after(() => rmSync(cacheDir, { recursive: true, force: true }));

  const dev = () => ({
    harmful: [set('advbench'), set('scav-malicious')],
    benign: [set('alpaca:train'), set('xstest-safe:homonyms')],
  });
  const test = () => ({ harmful: [set('harmbench')], benign: [set('xstest-safe:privacy_public')] });

  it('reports every reading on the same untouched test sources', async () => {
    const layers = [3, 10, 20];
    const report = await measureGeneralization(model, {
      dev: dev(),
      test: test(),
      cacheDir,
      combine: [1, 2],
      layers,
    });
    assert.deepEqual(
      report.testSources.map((s) => [s.name, s.label, s.n]),
      [
        ['harmbench', 1, 12],
        ['xstest-safe:privacy_public', 0, 12],
      ],
    );
    assert.deepEqual(
      report.byMethod.map((r) => r.dev.method),
      ['probe', 'mean-diff', 'pca'],
    );
    assert.ok(report.byMethod.includes(report.chosen));
    for (const r of report.byMethod) {
      assert.ok(r.dev.layers.every((l) => layers.includes(l)));
      assert.equal(r.test.length, 2);
      for (const t of r.test) {
        assert.ok(t.auroc >= 0 && t.auroc <= 1 && t.aurocCi[0] < t.aurocCi[1], JSON.stringify(t));
        assert.ok(t.tpr >= 0 && t.tpr <= 1);
      }
      assert.equal(r.testWorstAuroc, Math.min(...r.test.map((t) => t.auroc)));
    }
    assert.equal(report.validation.sources.length, 4);
  });

  it('refuses a test source that shares prompts with a dev source', async () => {
    await assert.rejects(
      measureGeneralization(model, {
        dev: dev(),
        test: { harmful: [set('advbench', 14)], benign: [set('xstest-safe:privacy_public')] },
        cacheDir,
      }),
      /test source advbench shares 12 prompt\(s\) with dev source advbench/,
    );
  });

  const cli = (args: string[]) =>
    spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'src', 'cli', 'main.js'), 'concept', 'generalize', ...args],
      {
        encoding: 'utf8',
        env: { ...process.env, STEERGUARD_DATA: DATA },
        timeout: 120_000,
      },
    );
  const sources = [
    ...['--harmful', 'advbench,scav-malicious', '--benign', 'alpaca:train,xstest-safe:homonyms'],
    ...['--test-harmful', 'harmbench', '--test-benign', 'xstest-safe:privacy_public', '--limit', '12'],
  ];

  it('the CLI prints the test table, writes --out, and never prints a prompt', () => {
    const outFile = path.join(cacheDir, 'gen.json');
    const r = cli([
      '-m',
      SMOLLM2_GGUF,
      ...sources,
      '--layers',
      '3,10',
      '--cache-dir',
      cacheDir,
      '--out',
      outFile,
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /TEST SOURCES \(used for nothing else; the headline\)/);
    assert.match(r.stdout, /harmbench +harmful +12/);
    const report = JSON.parse(readFileSync(outFile, 'utf8')) as { byMethod: { method: string }[] };
    assert.deepEqual(
      report.byMethod.map((m) => m.method),
      ['probe', 'mean-diff', 'pca'],
    );
    for (const name of ['harmbench', 'advbench', 'xstest-safe:privacy_public'])
      for (const p of set(name).prompts)
        assert.ok(!(r.stdout + r.stderr).includes(p.text), `${name} text printed`);
  });

  it('the CLI refuses too few sources before loading the model', () => {
    const r = cli(['-m', '/nonexistent/model.gguf', ...sources.slice(0, 1), 'advbench', ...sources.slice(2)]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /at least 2 harmful sources, got 1/);
    assert.doesNotMatch(r.stderr, /nonexistent/);
  });
});
