/**
 * measureGeneralization on a real model (SmolLM2-135M-Instruct) and real datasets: fit and choose
 * on development sources, report on test sources that took part in nothing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { measureGeneralization } from '../src/concepts/generalization.js';
import { loadPromptSet } from '../src/data/datasets.js';
import { Model } from '../src/model/model.js';
import { SHARED, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

const DATA = path.join(SHARED, 'datasets');
const set = (name: string, limit = 12) => loadPromptSet(name, { dataDir: DATA, limit });

describe('generalization to held-out sources (SmolLM2)', { skip: missingModel(SMOLLM2_GGUF) }, () => {
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
});
