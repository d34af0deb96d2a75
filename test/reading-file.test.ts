/**
 * Reading files (concept generalize --save-reading): a round trip, errors that name the field,
 * the model check, and a monitor that scores as the validation scored.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadReading, readingMonitor, saveReading } from '../src/concepts/reading-file.js';
import { type SourceReading, scoreWithReading } from '../src/concepts/sources.js';
import { FormatError, OptionError } from '../src/formats/errors.js';
import { Model } from '../src/model/model.js';
import { FIXTURES } from './util/fixtures.js';
import { seededUniform } from './util/random.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-reading-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('reading files', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const D = model.config.dModel;
  const rand = seededUniform(9);
  const vec = () => Float64Array.from({ length: D }, () => rand() - 0.5);
  const reading: SourceReading = {
    method: 'probe',
    layers: [0, 2],
    directions: [
      { layer: 0, v: vec(), mid: 0.25, spread: 1.5 },
      { layer: 2, v: vec(), mid: -0.5, spread: 0.75 },
    ],
    threshold: 0.4,
  };
  const file = path.join(tmp, 'reading.json');
  saveReading(file, {
    reading,
    model: { name: model.identity.name, fingerprint: model.identity.fingerprint },
    template: 'raw',
    fittedIds: ['a', 'b'],
  });

  test('round trip', () => {
    const r = loadReading(file, model);
    assert.deepEqual(r.reading.layers, [0, 2]);
    assert.equal(r.reading.threshold, 0.4);
    assert.deepEqual(r.fittedIds, ['a', 'b']);
    assert.deepEqual(Array.from(r.reading.directions[1].v), Array.from(reading.directions[1].v));
  });

  test('the monitor scores as the held-out validation did', () => {
    const prompts = [[1, 2, 3], [4, 5, 6, 7], [9]].map((tokens) => ({ tokens }));
    const names = ['blocks.0.hook_resid_post', 'blocks.2.hook_resid_post'] as const;
    const res = model.run(prompts, { cache: { names: [...names], positions: 'last' }, logits: 'none' });
    const acts = {
      layers: [0, 2],
      n: prompts.length,
      d: D,
      data: names.map((n) => {
        const out = new Float32Array(prompts.length * D);
        res.cache.get(n)!.forEach((row, i) => out.set(row, i * D));
        return out;
      }),
    };
    const want = scoreWithReading(acts, reading);
    const m = readingMonitor(reading, { benignBelow: 0 });
    assert.deepEqual(m.hooks, names);
    assert.equal(m.benignBelow, 0);
    prompts.forEach((_, i) => {
      const got = m.score(names.map((n) => res.cache.get(n)![i]));
      assert.ok(Math.abs(got - want[i]) < 1e-9, `prompt ${i}: ${got} vs ${want[i]}`);
    });
  });

  test('bad files: an error naming the field', () => {
    const base = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    const cases: [string, (j: Record<string, unknown>) => void, RegExp][] = [
      ['format', (j) => (j.format = 'x'), /format/],
      ['threshold', (j) => (j.threshold = null), /threshold/],
      ['method', (j) => (j.method = 'svm'), /method/],
      [
        'spread',
        (j) => ((j.directions as Record<string, unknown>[])[0].spread = 0),
        /directions\[0\]\.spread/,
      ],
      ['v', (j) => ((j.directions as { v: unknown[] }[])[1].v[3] = 'NaN'), /directions\[1\]\.v/],
      ['layer twice', (j) => ((j.directions as Record<string, unknown>[])[1].layer = 0), /layer twice/],
    ];
    for (const [what, edit, re] of cases) {
      const j = structuredClone(base);
      edit(j);
      const f = path.join(tmp, `bad-${what.replace(/ /g, '-')}.json`);
      writeFileSync(f, JSON.stringify(j));
      assert.throws(
        () => loadReading(f),
        (e: Error) => e instanceof FormatError && re.test(e.message),
        what,
      );
    }
  });

  test('another model, or a layer past its blocks, is refused', async () => {
    const j = JSON.parse(readFileSync(file, 'utf8')) as { model: { fingerprint: string } };
    j.model.fingerprint = 'ffffffffffffffff';
    const other = path.join(tmp, 'other.json');
    writeFileSync(other, JSON.stringify(j));
    assert.throws(() => loadReading(other, model), OptionError);
    assert.doesNotThrow(() => loadReading(other));
    const deep = JSON.parse(readFileSync(file, 'utf8')) as { directions: { layer: number }[] };
    deep.directions[1].layer = model.config.nLayers;
    const past = path.join(tmp, 'past.json');
    writeFileSync(past, JSON.stringify(deep));
    assert.throws(() => loadReading(past, model), /name layer 3; the model has blocks 0\.\.2/);
  });
});
