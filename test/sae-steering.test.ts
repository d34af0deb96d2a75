/**
 * SAE clamp steering and feature search (src/sae/clamp.ts, src/sae/features.ts): clamping a latent
 * to its own value is the identity, the clamp moves the stream along exactly that latent's decoder
 * row, bad clamps are errors, and the two rankings on codes whose answer is known.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';

import { loadBackend } from '../src/engine/select.js';
import { OptionError } from '../src/formats/errors.js';
import type { HookContext } from '../src/hooks/hooks.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { checkClamp, latentActivations, saeClampHook } from '../src/sae/clamp.js';
import {
  type FeatureExample,
  checkSaeFitsModel,
  exampleCodes,
  rankByMonitorCorrelation,
  rankByRefusalTokens,
  topContexts,
} from '../src/sae/features.js';
import type { SparseCodes } from '../src/sae/sae.js';
import { makeJudge } from '../src/eval/judges.js';
import type { EvalPrompt } from '../src/eval/refusal.js';
import { chooseClamp, clampGrid } from '../src/eval/sae-steering.js';
import { FIXTURES } from './util/fixtures.js';
import { randomSae } from './util/random-sae.js';

const backend = loadBackend();

/** A hook context for `rows` prompt rows of one sequence. */
function context(rows: number, width: number): HookContext {
  return {
    name: 'blocks.0.hook_resid_post',
    layer: 0,
    rows,
    width,
    seq: new Int32Array(rows),
    pos: Int32Array.from({ length: rows }, (_, i) => i),
    promptLength: Int32Array.of(rows),
    step: 0,
  };
}

describe('SAE clamp', () => {
  const D = 16;
  const sae = randomSae({ dIn: D, dSae: 48, k: 6, seed: 1 });
  const random = seededRandom(7);
  const x = Float32Array.from({ length: 3 * D }, () => random() * 4 - 2);

  test('clamping a latent to its own value leaves the row as it is', () => {
    const codes = sae.encode(backend, x, 3);
    for (let r = 0; r < 3; r++) {
      const j = codes.latents[codes.offsets[r]];
      const own = latentActivations(sae, backend, x.subarray(r * D, (r + 1) * D), 1, j)[0];
      assert.ok(own > 0, 'the latent is active on its row');
      const row = x.slice(r * D, (r + 1) * D);
      saeClampHook(sae, backend, { feature: j, value: own }).fn(row, context(1, D));
      assert.deepEqual(row, x.subarray(r * D, (r + 1) * D));
    }
    // A latent Top-k drops is 0: clamping it to 0 changes nothing either.
    const silent = [...Array(48).keys()].find((j) =>
      latentActivations(sae, backend, x, 3, j).every((v) => v === 0),
    );
    assert.ok(silent !== undefined);
    const rows = x.slice();
    saeClampHook(sae, backend, { feature: silent, value: 0 }).fn(rows, context(3, D));
    assert.deepEqual(rows, x);
  });

  test('the clamp adds (c - f_j(x)) W_dec[j] to every row, and nothing else', () => {
    const j = 5;
    const c = 3.5;
    const f = latentActivations(sae, backend, x, 3, j);
    const rows = x.slice();
    saeClampHook(sae, backend, { feature: j, value: c }).fn(rows, context(3, D));
    for (let r = 0; r < 3; r++)
      for (let i = 0; i < D; i++) {
        const want = x[r * D + i] + (c - f[r]) * sae.weights.wDec[j * D + i];
        assert.ok(
          Math.abs(rows[r * D + i] - want) < 1e-5,
          `row ${r} col ${i}: ${rows[r * D + i]} vs ${want}`,
        );
      }
  });

  test('only the selected positions move', () => {
    const rows = x.slice();
    saeClampHook(sae, backend, { feature: 2, value: 10 }, { positions: [1] }).fn(rows, context(3, D));
    assert.deepEqual(rows.subarray(0, D), x.subarray(0, D));
    assert.deepEqual(rows.subarray(2 * D), x.subarray(2 * D));
    assert.notDeepEqual(rows.subarray(D, 2 * D), x.subarray(D, 2 * D));
  });

  test('a latent outside the dictionary, a non-finite value or a wrong width is an error', () => {
    assert.throws(() => checkClamp(sae, { feature: 48, value: 1 }), OptionError);
    assert.throws(() => checkClamp(sae, { feature: -1, value: 1 }), /not a latent/);
    assert.throws(() => checkClamp(sae, { feature: 0, value: NaN }), /finite/);
    const hook = saeClampHook(sae, backend, { feature: 0, value: 1 });
    assert.throws(() => hook.fn(new Float32Array(8), context(1, 8)), /width 16/);
  });
});

describe('SAE clamp in a model (tiny llama)', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const D = model.config.dModel;
  const sae = randomSae({ dIn: D, dSae: 4 * D, k: 8, seed: 3, hookLayer: 1 });
  const tokens = [1, 5, 9, 2, 7, 3];

  test('clamping a latent that never fires to 0 gives the same logits; a large clamp changes them', () => {
    const { cache } = model.run([{ tokens }], {
      cache: { names: ['blocks.1.hook_resid_post'], positions: 'all' },
    });
    const acts = cache.get('blocks.1.hook_resid_post')![0];
    const silent = [...Array(4 * D).keys()].find((j) =>
      latentActivations(sae, backend, acts, tokens.length, j).every((v) => v === 0),
    );
    assert.ok(silent !== undefined);
    const clean = model.run([{ tokens }]).logits[0];
    const same = model.run([{ tokens }], {
      hooks: [saeClampHook(sae, model.backend, { feature: silent, value: 0 })],
    }).logits[0];
    assert.deepEqual(same, clean);
    const moved = model.run([{ tokens }], {
      hooks: [saeClampHook(sae, model.backend, { feature: silent, value: 50 })],
    }).logits[0];
    assert.ok(moved.some((v, i) => Math.abs(v - clean[i]) > 1e-3));
  });

  test('the clamp grid reports progress over the whole grid and scores every value', async () => {
    const prompt = (id: string, ids: number[]): EvalPrompt => ({
      id,
      set: 't',
      text: '',
      prompt: { tokens: ids },
    });
    const seen: [number, number][] = [];
    const rows = await clampGrid(model, sae, {
      harmful: [prompt('h1', [1, 5, 9]), prompt('h2', [1, 7])],
      benign: [prompt('b1', [1, 3, 3])],
      feature: 0,
      values: [0, 2, 40],
      judge: makeJudge('keyword-gcg'),
      maxNewTokens: 2,
      batchSize: 2,
      onProgress: (done, total) => seen.push([done, total]),
    });
    assert.deepEqual(
      rows.map((r) => [r.value, r.refusal.n, r.overRefusal.n, r.flawed.n]),
      [
        [0, 2, 1, 3],
        [2, 2, 1, 3],
        [40, 2, 1, 3],
      ],
    );
    assert.ok(seen.every(([, total]) => total === 9));
    assert.ok(seen.every(([done], i) => i === 0 || done >= seen[i - 1][0]));
    assert.equal(seen.at(-1)![0], 9);
    assert.throws(() => chooseClamp([]), OptionError);
  });

  test('an SAE for another width or a layer the model lacks is refused', () => {
    assert.throws(
      () => checkSaeFitsModel(model, randomSae({ dIn: D + 1, dSae: 8, k: 2, seed: 1 })),
      /d_in = 65 .* d_model is 64/,
    );
    assert.throws(
      () => checkSaeFitsModel(model, randomSae({ dIn: D, dSae: 8, k: 2, seed: 1, hookLayer: 3 })),
      /block 3 .* blocks 0\.\.2/,
    );
  });

  test('exampleCodes encodes every row of prompt and reply', () => {
    const examples: FeatureExample[] = [
      { tokens, promptLength: 4, refusal: true },
      { tokens: [2, 2, 8], promptLength: 1, refusal: false },
    ];
    const codes = exampleCodes(model, sae, examples);
    assert.deepEqual(
      codes.map((c) => c.rows),
      [6, 3],
    );
    assert.throws(
      () => exampleCodes(model, sae, [{ tokens, promptLength: 0, refusal: false }]),
      /prompt length 0/,
    );
  });
});

/** Codes from a dense table [rows][latents] (0 = inactive). */
function codesOf(table: number[][]): SparseCodes {
  const offsets = new Int32Array(table.length + 1);
  const latents: number[] = [];
  const values: number[] = [];
  table.forEach((row, r) => {
    row.forEach((v, j) => {
      if (v !== 0) {
        latents.push(j);
        values.push(v);
      }
    });
    offsets[r + 1] = latents.length;
  });
  return {
    rows: table.length,
    offsets,
    latents: Int32Array.from(latents),
    values: Float32Array.from(values),
  };
}

describe('feature rankings', () => {
  const sae = randomSae({ dIn: 4, dSae: 3, k: 2, seed: 1 });
  // Two refusals and one compliance, prompt length 1, two reply rows each. Latent 0 fires on
  // refusal replies only, latent 1 on every reply, latent 2 only on the prompt.
  const examples: FeatureExample[] = [
    { tokens: [1, 2, 3], promptLength: 1, refusal: true },
    { tokens: [4, 5, 6], promptLength: 1, refusal: true },
    { tokens: [7, 8, 9], promptLength: 1, refusal: false },
  ];
  const codes = [
    codesOf([
      [0, 0, 5],
      [2, 1, 0],
      [4, 1, 0],
    ]),
    codesOf([
      [0, 0, 1],
      [6, 1, 0],
      [0, 1, 0],
    ]),
    codesOf([
      [0, 0, 3],
      [0, 1, 0],
      [0, 1, 0],
    ]),
  ];

  test('by refusal tokens: a latent of every reply scores nothing, a refusal latent leads', () => {
    const ranked = rankByRefusalTokens(sae, examples, codes, { refusalTokens: 2, top: 3 });
    assert.equal(ranked[0].feature, 0);
    assert.equal(ranked[0].meanOnRefusal, 3);
    assert.equal(ranked[0].meanElsewhere, 0);
    assert.equal(ranked[0].freqOnRefusal, 0.75);
    assert.equal(ranked[0].maxOnRefusal, 6);
    assert.equal(ranked.find((r) => r.feature === 1)!.score, 0);
    // only the first reply token counts with refusalTokens = 1
    const first = rankByRefusalTokens(sae, examples, codes, { refusalTokens: 1, top: 1 })[0];
    assert.equal(first.meanOnRefusal, 4);
  });

  test('by refusal tokens: no refusal, or nothing but refusals, is an error', () => {
    const none = examples.map((e) => ({ ...e, refusal: false }));
    assert.throws(() => rankByRefusalTokens(sae, none, codes, { refusalTokens: 2, top: 1 }), /no refusal/);
    const all = examples.map((e) => ({ ...e, refusal: true }));
    assert.throws(() => rankByRefusalTokens(sae, all, codes, { refusalTokens: 2, top: 1 }), /every reply/);
  });

  test('by the monitor: the latent that follows the score at the last prompt token', () => {
    // Last prompt token = row 0: latent 2 has 5, 1, 3; scores follow it exactly (affinely).
    const ranked = rankByMonitorCorrelation(sae, examples, codes, [0.9, 0.1, 0.5], { top: 3 });
    assert.equal(ranked.length, 1, 'latents silent at the last prompt token have no correlation');
    assert.equal(ranked[0].feature, 2);
    assert.ok(Math.abs(ranked[0].correlation - 1) < 1e-12);
    assert.throws(() => rankByMonitorCorrelation(sae, examples, codes, [0.5, 0.5, 0.5], { top: 1 }), /same/);
    assert.throws(
      () => rankByMonitorCorrelation(sae, examples, codes, [0.5, NaN, 0.5], { top: 1 }),
      /finite/,
    );
  });

  test('contexts: strongest first, with the tokens before', () => {
    const ctx = topContexts(examples, codes, 0, { n: 2, before: 1 });
    assert.deepEqual(
      ctx.map((c) => [c.example, c.position, c.activation, c.tokens, c.inReply]),
      [
        [1, 1, 6, [4, 5], true],
        [0, 2, 4, [2, 3], true],
      ],
    );
  });
});
