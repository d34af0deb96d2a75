/**
 * Concepts end to end on the tiny random llama fixture (no tokenizer: token-id prompts): training
 * on two separable token distributions, the file round trip, model checks, the leakage guard, the
 * activation cache, the clear errors, and the `concept` CLI actions.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { extractLastToken } from '../src/concepts/activations.js';
import {
  Concept,
  type ConceptExample,
  evaluateConcept,
  tokenExample,
  trainConcept,
} from '../src/concepts/concept.js';
import { conceptAccuracySvg } from '../src/concepts/plot.js';
import { assignSplit, LeakageError } from '../src/data/splits.js';
import { FormatError, SteerguardError } from '../src/formats/errors.js';
import { Model } from '../src/model/model.js';
import { CliOutput } from '../src/cli/output.js';
import { conceptCommand } from '../src/cli/commands/concept.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-concept-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** `count` distinct token prompts of 4-8 tokens drawn from [lo, hi), deterministic in `seed`. */
function tokenSet(seed: number, count: number, lo: number, hi: number): ConceptExample[] {
  let s = seed * 7919 + 1;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const out = new Map<string, ConceptExample>();
  while (out.size < count) {
    const len = 4 + Math.floor(next() * 5);
    const e = tokenExample(Array.from({ length: len }, () => lo + Math.floor(next() * (hi - lo))));
    out.set(e.id, e);
  }
  return [...out.values()];
}

/** A hook that counts forward passes (it fires once per forward call). */
function countForwards(model: Model): { count: () => number; remove: () => void } {
  let n = 0;
  const h = model.addHook({ name: 'hook_embed', fn: () => void n++ });
  return { count: () => n, remove: () => h.remove() };
}

describe('concepts on tiny llama', () => {
  let model: Model;
  const positive = tokenSet(1, 40, 10, 15);
  const negative = tokenSet(2, 40, 150, 155);
  let concept: Concept;
  const cacheDir = path.join(tmp, 'cache');

  before(async () => {
    model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
    const res = await trainConcept({
      model,
      positive,
      negative,
      cacheDir,
      sets: { positive: 'low-tokens', negative: 'high-tokens' },
    });
    concept = res.concept;
    assert.equal(res.report.computed, 80);
    assert.equal(res.report.cached, 0);
  });

  it('fits every layer and separates the two distributions on held-out prompts', () => {
    assert.equal(concept.layers.length, model.config.nLayers);
    assert.equal(concept.template, 'raw');
    for (const p of concept.layers) {
      assert.equal(p.w.length, 64);
      assert.ok(p.fit.converged);
      assert.equal(p.metrics.split, 'test');
      assert.ok(p.metrics.n > 0);
      assert.ok(
        p.metrics.accuracyCi[0] <= p.metrics.accuracy && p.metrics.accuracy <= p.metrics.accuracyCi[1],
      );
    }
    const best = concept.layer(concept.bestLayer());
    assert.ok(best.metrics.accuracy >= 0.9, `best accuracy ${best.metrics.accuracy}`);
    assert.ok(best.metrics.auroc >= 0.95);
    // The split follows the seeded assignment.
    const ids = concept.data.ids;
    for (const e of positive)
      assert.ok(ids[assignSplit(e.id, 0, concept.data.split)].positive.includes(e.id));
    assert.equal(ids.train.positive.length + ids.val.positive.length + ids.test.positive.length, 40);
    assert.deepEqual(
      new Set(concept.fittedIds),
      new Set([...ids.train.positive, ...ids.train.negative, ...ids.val.positive, ...ids.val.negative]),
    );
  });

  it('reads probabilities and combined scores consistently', async () => {
    const acts = await extractLastToken(model, [positive[0].prompt, negative[0].prompt], { cacheDir });
    const rows = (i: number) => acts.layers.map((_, k) => acts.data[k].subarray(i * 64, (i + 1) * 64));
    const l = concept.bestLayer();
    const z = concept.logit(l, rows(0)[l]);
    assert.ok(Math.abs(concept.probability(l, rows(0)[l]) - 1 / (1 + Math.exp(-z))) < 1e-12);
    const s = concept.score(rows(0));
    const layers = concept.scoringLayers();
    assert.deepEqual(
      s.layers.map((x) => x.layer),
      layers,
    );
    assert.ok(
      Math.abs(s.score - layers.reduce((t, ly) => t + concept.logit(ly, rows(0)[ly]), 0) / layers.length) <
        1e-9,
    );
  });

  it('round-trips through a file', () => {
    const file = path.join(tmp, 'c.safetensors');
    concept.save(file);
    const back = Concept.load(file, model);
    assert.equal(back.name, concept.name);
    assert.deepEqual(back.model, concept.model);
    assert.deepEqual(back.data, concept.data);
    assert.equal(back.template, concept.template);
    assert.equal(back.bestLayer(), concept.bestLayer());
    concept.layers.forEach((p, k) => {
      const q = back.layers[k];
      assert.equal(q.layer, p.layer);
      assert.deepEqual(q.w, p.w);
      assert.equal(q.b, p.b);
      assert.deepEqual(q.meanDiff, p.meanDiff);
      assert.deepEqual(q.pca, p.pca);
      assert.deepEqual(q.metrics, p.metrics);
      assert.deepEqual(q.fit, p.fit);
    });
  });

  it('refuses another model, naming both', async () => {
    const file = path.join(tmp, 'c.safetensors');
    const sameShape = await Model.load(path.join(FIXTURES, 'tiny', 'llama-tied-bf16'));
    assert.throws(() => Concept.load(file, sameShape), /fitted on .*llama.*fingerprint.*not on/);
    assert.doesNotThrow(() => Concept.load(file, sameShape, { allowOtherModel: true }));
    const fewerLayers = await Model.load(path.join(FIXTURES, 'tiny', 'qwen2'));
    assert.throws(
      () => Concept.load(file, fewerLayers, { allowOtherModel: true }),
      /has 2 layers.*cannot be used/,
    );
  });

  it('refuses files that are not concepts', () => {
    const file = path.join(tmp, 'not-a-concept.safetensors');
    writeFileSync(file, Buffer.alloc(3));
    assert.throws(
      () => Concept.load(file),
      (e: Error) => e.name === 'FormatError',
    );
    assert.throws(
      () => Concept.load(path.join(FIXTURES, 'tiny', 'llama', 'model.safetensors')),
      /not a steerguard.concept file/,
    );
  });

  it('a concept file with a NaN or infinite weight, bias or threshold is refused on load, naming the field', () => {
    const withLayer = (k: number, edit: (p: Concept['layers'][number]) => Concept['layers'][number]) =>
      new Concept({
        name: concept.name,
        model: concept.model,
        template: concept.template,
        probe: concept.probe,
        data: concept.data,
        layers: concept.layers.map((p, j) => (j === k ? edit(p) : p)),
      });
    const file = path.join(tmp, 'bad.safetensors');
    const refused = (c: Concept, field: RegExp, value: RegExp): void => {
      c.save(file);
      assert.throws(
        () => Concept.load(file),
        (e: unknown) =>
          e instanceof FormatError && e.file === file && field.test(e.field) && value.test(e.message),
      );
    };
    const nanW = new Float32Array(concept.layers[1].w);
    nanW[3] = NaN;
    refused(
      withLayer(1, (p) => ({ ...p, w: nanW })),
      /^probe\.1\.weight$/,
      /value 3 is NaN/,
    );
    const infPca = new Float32Array(concept.layers[0].pca);
    infPca[0] = -Infinity;
    refused(
      withLayer(0, (p) => ({ ...p, pca: infPca })),
      /^pca\.0$/,
      /-Infinity/,
    );
    refused(
      withLayer(2, (p) => ({ ...p, b: NaN })),
      /^probe\.2\.bias$/,
      /NaN/,
    );
    const t = {
      value: 0,
      layers: [1],
      targetFpr: 0.1,
      calibrationSet: 'x',
      n: 1,
      achievedFpr: 0,
      achievedTpr: null,
      ids: [],
    };
    refused(concept.withThreshold({ ...t, value: NaN }), /^__metadata__\.concept\.threshold\.value$/, /null/);
    concept.withThreshold(t).save(file);
    assert.doesNotThrow(() => Concept.load(file));
    // A NaN activation gives no score at all.
    const row = new Float32Array(64).fill(NaN);
    assert.throws(() => concept.score([row, row, row], { layers: [1] }), /probe logit at layer 1 is NaN/);
  });

  it('evaluation refuses prompts the concept was fitted on, unless allowed', async () => {
    await assert.rejects(
      evaluateConcept(concept, model, positive, negative, { cacheDir }),
      (e: Error) => e instanceof LeakageError,
    );
    const testIds = new Set([...concept.data.ids.test.positive, ...concept.data.ids.test.negative]);
    const heldPos = positive.filter((e) => testIds.has(e.id));
    const heldNeg = negative.filter((e) => testIds.has(e.id));
    const res = await evaluateConcept(concept, model, heldPos, heldNeg, { cacheDir });
    assert.equal(res.overlap, 0);
    assert.equal(res.computed, 0, 'all held-out activations come from the cache');
    const l = concept.bestLayer();
    assert.equal(res.layers.find((x) => x.layer === l)!.accuracy, concept.layer(l).metrics.accuracy);
    const allowed = await evaluateConcept(concept, model, positive, negative, {
      cacheDir,
      allowOverlap: true,
    });
    assert.equal(allowed.overlap, concept.fittedIds.length);
  });

  it('a second training run reads every activation from the cache (no forward pass)', async () => {
    const files = readdirSync(cacheDir, { recursive: true }).filter((f) =>
      String(f).endsWith('.safetensors'),
    );
    assert.equal(files.length, 80);
    const counter = countForwards(model);
    try {
      const res = await trainConcept({ model, positive, negative, cacheDir });
      assert.equal(counter.count(), 0);
      assert.equal(res.report.cached, 80);
      assert.equal(res.report.computed, 0);
      concept.layers.forEach((p, k) => assert.deepEqual(res.concept.layers[k].w, p.w));
      // Without the cache the model runs.
      await extractLastToken(model, [positive[0].prompt], { cacheDir: false });
      assert.ok(counter.count() > 0);
    } finally {
      counter.remove();
    }
  });

  it('a damaged cache entry is recomputed', async () => {
    const dir = path.join(tmp, 'cache2');
    const one = [positive[3].prompt];
    await extractLastToken(model, one, { cacheDir: dir });
    const file = readdirSync(dir, { recursive: true })
      .map(String)
      .find((f) => f.endsWith('.safetensors'))!;
    writeFileSync(path.join(dir, file), 'garbage');
    const again = await extractLastToken(model, one, { cacheDir: dir });
    assert.equal(again.computed, 1);
    const third = await extractLastToken(model, one, { cacheDir: dir });
    assert.equal(third.cached, 1);
    assert.deepEqual(third.data, again.data);
  });

  it('clear errors for empty sets, a one-class train split and NaN activations', async () => {
    await assert.rejects(
      trainConcept({ model, positive: [], negative, cacheDir: false }),
      /positive set \(positive\) is empty/,
    );
    // One negative prompt that the seeded split sends to the test split.
    const lone = tokenSet(9, 50, 150, 155).find((e) => assignSplit(e.id, 0) === 'test')!;
    await assert.rejects(
      trainConcept({ model, positive, negative: [lone], cacheDir }),
      /train split has \d+ positive and 0 negative/,
    );
    const nan = model.addHook({ name: 'blocks.1.hook_resid_post', fn: (act) => act.fill(NaN) });
    try {
      await assert.rejects(
        trainConcept({
          model,
          positive: tokenSet(3, 6, 10, 15),
          negative: tokenSet(4, 6, 150, 155),
          cacheDir: false,
        }),
        (e: Error) =>
          e instanceof SteerguardError &&
          /non-finite activation .* blocks\.1\.hook_resid_post/.test(e.message),
      );
    } finally {
      nan.remove();
    }
  });

  it('prompts in both sets are left out of both', async () => {
    const shared = positive.slice(0, 3);
    const res = await trainConcept({ model, positive, negative: [...negative, ...shared], cacheDir });
    assert.equal(res.report.removedOverlap, 3);
    const all = Object.values(res.concept.data.ids).flatMap((x) => [...x.positive, ...x.negative]);
    for (const e of shared) assert.ok(!all.includes(e.id));
  });

  it('explicit held-out sets join the test split and must not overlap training', async () => {
    const extraPos = tokenSet(5, 10, 10, 15);
    const extraNeg = tokenSet(6, 10, 150, 155);
    const res = await trainConcept({
      model,
      positive,
      negative,
      testPositive: extraPos,
      testNegative: extraNeg,
      cacheDir,
    });
    for (const e of extraPos) assert.ok(res.concept.data.ids.test.positive.includes(e.id));
    await assert.rejects(
      trainConcept({ model, positive, negative, testPositive: positive, cacheDir }),
      (e: Error) => e instanceof LeakageError,
    );
  });

  it('draws the accuracy curve as a standalone SVG', () => {
    const svg = conceptAccuracySvg(concept.layers, { title: 'tiny <llama> & co' });
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /95%/);
    assert.match(svg, /tiny &lt;llama&gt; &amp; co/);
    assert.match(svg, /layer/);
    assert.equal((svg.match(/<polyline/g) ?? []).length >= 2, true);
  });
});

/** Runs a `concept` action in process; resolves to the exit code and what it printed. */
async function runConcept(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const { runMain } = await import('../src/cli/output.js');
  const code = await runMain(argv, (out: CliOutput) => conceptCommand.run(argv, out), {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
  });
  process.exitCode = 0;
  return { code, stdout, stderr };
}

describe('concept CLI', () => {
  const dir = path.join(tmp, 'cli');
  const modelDir = path.join(FIXTURES, 'tiny', 'llama');
  const write = (name: string, sets: ConceptExample[]) => {
    const file = path.join(dir, name);
    const lines = sets.map((e) =>
      JSON.stringify({ ids: (e.prompt as { tokens: number[] }).tokens.join(' ') }),
    );
    writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  };
  before(() => mkdirSync(dir, { recursive: true }));

  it('train, show and eval (with the leakage guard)', async () => {
    const pos = write('pos.jsonl', tokenSet(11, 30, 10, 15));
    const neg = write('neg.jsonl', tokenSet(12, 30, 150, 155));
    const out = path.join(dir, 'c.safetensors');
    const svg = path.join(dir, 'c.svg');
    const common = ['--column', 'ids', '--token-ids', '--cache-dir', path.join(dir, 'cache')];
    const train = await runConcept([
      'train',
      '-m',
      modelDir,
      '--positive',
      pos,
      '--negative',
      neg,
      '--out',
      out,
      '--svg',
      svg,
      ...common,
    ]);
    assert.equal(train.code, 0, train.stderr);
    assert.match(train.stdout, /layer +test acc/);
    assert.match(train.stdout, /best layer \d/);
    assert.ok(existsSync(out) && existsSync(svg));

    const again = await runConcept([
      'train',
      '-m',
      modelDir,
      '--positive',
      pos,
      '--negative',
      neg,
      '--out',
      out,
      ...common,
    ]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already exists/);

    const json = await runConcept([
      '--json',
      'train',
      '-m',
      modelDir,
      '--positive',
      pos,
      '--negative',
      neg,
      '--out',
      out,
      '--overwrite',
      ...common,
    ]);
    assert.equal(json.code, 0, json.stderr);
    const doc = JSON.parse(json.stdout) as {
      report: { cached: number; computed: number };
      concept: { layers: unknown[] };
    };
    assert.equal(doc.report.computed, 0);
    assert.equal(doc.report.cached, 60);
    assert.equal(doc.concept.layers.length, 3);

    const show = await runConcept(['show', '-c', out]);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /no monitor threshold/);

    const leak = await runConcept([
      'eval',
      '-c',
      out,
      '-m',
      modelDir,
      '--positive',
      pos,
      '--negative',
      neg,
      ...common,
    ]);
    assert.equal(leak.code, 2);
    assert.match(leak.stderr, /were used to fit.*--part test/);
    const held = await runConcept([
      'eval',
      '-c',
      out,
      '-m',
      modelDir,
      '--positive',
      pos,
      '--negative',
      neg,
      '--part',
      'test',
      ...common,
    ]);
    assert.equal(held.code, 0, held.stderr);
    assert.match(held.stdout, /combined \(\d+ layers\)/);

    const bad = await runConcept(['frobnicate']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown action 'frobnicate'/);
    // a name every object inherits is not an action either
    const inherited = await runConcept(['toString']);
    assert.equal(inherited.code, 2);
    assert.match(inherited.stderr, /unknown action 'toString' for 'steerguard concept'/);
    const help = await runConcept(['train', '--help']);
    assert.match(help.stdout, /^Usage: steerguard concept train /);
  });
});
