/**
 * Refusal direction: the scores' maths, the selection rules on made-up candidates, the whole
 * procedure on the tiny llama with synthetic token sets (shapes, mean differences, lazy scoring
 * picking what full scoring picks), and directional ablation leaving no component anywhere.
 * The real-model part (template positions, refusal tokens) skips without the SmolLM2 file.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';

import { type Hook, type HookName, blockHook } from '../src/hooks/hooks.js';
import { Model } from '../src/model/model.js';
import {
  type DirectionCandidate,
  ablationHooks,
  additionHooks,
  computeRefusalDirection,
  klDivergence,
  layerCutoff,
  postInstructionPositions,
  refusalScore,
  refusalTokenIds,
  selectDirection,
} from '../src/steering/refusal-direction.js';
import { FIXTURES, SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

describe('scores', () => {
  test('refusal score is the log-odds of the refusal tokens', () => {
    const V = 100;
    const uniform = new Float32Array(V);
    const p = 2 / V;
    assert.ok(Math.abs(refusalScore(uniform, [3, 4]) - Math.log(p / (1 - p))) < 1e-6);
    const peaked = new Float32Array(V);
    peaked[3] = 50;
    assert.ok(refusalScore(peaked, [3]) > 10);
    assert.ok(refusalScore(peaked, [4]) < -10);
  });

  test('KL divergence', () => {
    const a = Float32Array.from([1, 2, 3]);
    assert.equal(klDivergence(a, a), 0);
    assert.ok(Math.abs(klDivergence(a, Float32Array.from([11, 12, 13]))) < 1e-9, 'shift invariant');
    // P = (1/2, 1/2), Q = (1/4·e^0.., ...): compare with the direct formula.
    const p = Float32Array.from([0, 0]);
    const q = Float32Array.from([0, Math.log(3)]);
    const expected = 0.5 * Math.log(0.5 / 0.25) + 0.5 * Math.log(0.5 / 0.75);
    assert.ok(Math.abs(klDivergence(p, q) - expected) < 1e-6);
  });
});

describe('selection rules', () => {
  const cand = (
    layer: number,
    refusalScore: number,
    steeringScore: number,
    kl: number,
  ): DirectionCandidate => ({
    layer,
    position: -1,
    norm: 1,
    refusalScore,
    steeringScore,
    kl,
    discarded: [],
  });

  test('lowest ablation refusal score among candidates passing every filter', () => {
    const cs = [
      cand(3, -5, 1, 0.05), // passes
      cand(4, -9, 1, 0.5), // KL too high
      cand(5, -8, -1, 0.01), // addition does not induce refusal
      cand(9, -10, 2, 0.01), // last 20% of 10 layers
      cand(2, -4, 0.5, 0.1), // passes (KL exactly at the limit)
    ];
    const best = selectDirection(cs, { nLayers: 10 });
    assert.equal(best, cs[0]);
    assert.deepEqual(
      cs.map((c) => c.discarded),
      [[], ['kl'], ['no-induction'], ['late-layer'], []],
    );
    assert.equal(layerCutoff(10), 8);
    assert.equal(layerCutoff(30), 24);
  });

  test('nothing qualifies → undefined; unscored candidates are never chosen', () => {
    assert.equal(selectDirection([cand(1, -1, -1, 0)], { nLayers: 10 }), undefined);
    const partial = { ...cand(1, -3, 1, 0), kl: null };
    assert.equal(selectDirection([partial], { nLayers: 10 }), undefined);
    assert.deepEqual(partial.discarded, []);
  });

  test('thresholds are options', () => {
    const c = cand(3, -5, 0.2, 0.3);
    assert.equal(selectDirection([c], { nLayers: 10 }), undefined);
    assert.equal(selectDirection([c], { nLayers: 10, klThreshold: 0.5 }), c);
    assert.equal(selectDirection([c], { nLayers: 10, klThreshold: 0.5, inductionThreshold: 0.3 }), undefined);
  });
});

describe('refusal direction on the tiny llama', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const L = model.config.nLayers;
  const D = model.config.dModel;
  // Synthetic "chat template": three fixed tokens after the request.
  const suffix = [200, 201, 202];
  const mk = (seed: number, lo: number) => ({
    tokens: [
      1,
      ...Array.from({ length: 4 + (seed % 3) }, (_, i) => lo + ((seed * 7 + i * 3) % 30)),
      ...suffix,
    ],
  });
  const harmful = Array.from({ length: 10 }, (_, i) => mk(i, 10));
  const harmless = Array.from({ length: 10 }, (_, i) => mk(i, 100));
  const positions = [-3, -2, -1];
  const base = {
    harmful: { train: harmful.slice(0, 6), val: harmful.slice(6) },
    harmless: { train: harmless.slice(0, 6), val: harmless.slice(6) },
    positions,
    refusalTokens: [5, 6],
    filterPrompts: false,
  };

  test('every layer × position is a candidate; r is the mean difference at blocks.l.hook_resid_pre', () => {
    // By default block 1's input (block 0's output, which a control vector cannot carry) is left out.
    const byDefault = computeRefusalDirection(model, { ...base, pruneLayerFraction: 0 });
    assert.deepEqual([...new Set(byDefault.candidates.map((c) => c.layer))], [2]);
    const res = computeRefusalDirection(model, {
      ...base,
      layers: [1, 2],
      fullReport: true,
      pruneLayerFraction: 0,
    });
    assert.equal(res.candidates.length, (L - 1) * positions.length);
    assert.deepEqual(
      res.candidates.map((c) => [c.layer, c.position]),
      [1, 2].flatMap((l) => positions.map((p) => [l, p])),
    );
    for (const c of res.candidates) {
      assert.ok(
        c.refusalScore !== null && c.steeringScore !== null && c.kl !== null,
        'full report scores all',
      );
      assert.ok(c.kl! >= 0);
    }
    assert.equal(res.direction.length, D);
    assert.deepEqual(res.counts, { harmfulTrain: 6, harmlessTrain: 6, harmfulVal: 4, harmlessVal: 4 });

    // Recompute the chosen candidate by hand.
    const name = blockHook(res.layer, 'hook_resid_pre');
    const k = positions.indexOf(res.position);
    const meanAt = (ps: readonly { tokens: number[] }[]) => {
      const rows = model.run(ps, { cache: { names: [name], positions }, logits: 'none' }).cache.get(name)!;
      return Array.from({ length: D }, (_, d) => rows.reduce((s, r) => s + r[k * D + d], 0) / rows.length);
    };
    const h = meanAt(base.harmful.train);
    const s = meanAt(base.harmless.train);
    for (let d = 0; d < D; d++) assert.ok(Math.abs(res.direction[d] - (h[d] - s[d])) < 1e-4);
  });

  test('lazy scoring picks the same candidate as scoring everything', () => {
    for (const klThreshold of [0.1, 100]) {
      const opts = { ...base, pruneLayerFraction: 0, klThreshold };
      const full = computeRefusalDirection(model, { ...opts, fullReport: true });
      const lazy = computeRefusalDirection(model, opts);
      assert.deepEqual(
        [lazy.layer, lazy.position, lazy.selectedBy],
        [full.layer, full.position, full.selectedBy],
      );
      assert.deepEqual(lazy.direction, full.direction);
    }
  });

  test('late layers are not scored and not chosen', () => {
    const res = computeRefusalDirection(model, { ...base, layers: [1, 2] });
    const cutoff = layerCutoff(L);
    for (const c of res.candidates.filter((x) => x.layer >= cutoff)) {
      assert.equal(c.refusalScore, null);
      assert.ok(c.discarded.includes('late-layer'));
    }
    assert.ok(res.layer < cutoff);
    // A model with no block before the cutoff (3 blocks, candidates from block 2) keeps a late one.
    const shallow = computeRefusalDirection(model, base);
    assert.equal(shallow.layer, 2);
    assert.equal(shallow.selectedBy, 'fallback');
  });

  test('bad options are refused', () => {
    assert.throws(() => computeRefusalDirection(model, { ...base, positions: [0] }), /negative offsets/);
    assert.throws(() => computeRefusalDirection(model, { ...base, layers: [0] }), /within 1\.\./);
    assert.throws(() => computeRefusalDirection(model, { ...base, refusalTokens: [999] }), /vocabulary/);
    assert.throws(
      () => computeRefusalDirection(model, { ...base, harmful: { train: [], val: harmful } }),
      /harmful\.train has no prompts/,
    );
  });

  test('directional ablation leaves no component along r anywhere, in the prompt pass and while generating', async () => {
    const r = Float32Array.from({ length: D }, (_, i) => Math.cos(i * 0.7) + 0.3);
    let n2 = 0;
    for (const x of r) n2 += x * x;
    const unit = r.map((x) => x / Math.sqrt(n2));
    const names: HookName[] = [];
    for (let l = 0; l < L; l++)
      for (const k of [
        'hook_resid_pre',
        'hook_attn_out',
        'hook_resid_mid',
        'hook_mlp_out',
        'hook_resid_post',
      ] as const)
        names.push(blockHook(l, k));
    let worst = 0;
    let seen = 0;
    const readers: Hook[] = names.map((name) => ({
      name,
      fn: (act, ctx) => {
        for (let row = 0; row < ctx.rows; row++) {
          let dot = 0;
          let norm = 0;
          for (let d = 0; d < D; d++) {
            dot += act[row * D + d] * unit[d];
            norm += act[row * D + d] ** 2;
          }
          worst = Math.max(worst, Math.abs(dot) / Math.sqrt(norm));
          seen++;
        }
      },
    }));
    const hooks = [...ablationHooks(r, L), ...readers];
    assert.equal(ablationHooks(r, L).length, 3 * L);
    model.run(harmful.slice(0, 3), { hooks, logits: 'none' });
    await model.generate(harmful.slice(0, 2), { hooks, maxNewTokens: 4 });
    assert.ok(seen > 0);
    assert.ok(worst < 1e-5, `largest |cos| along r: ${worst}`);

    // Without ablation the stream does have a component along r.
    worst = 0;
    model.run(harmful.slice(0, 3), { hooks: readers, logits: 'none' });
    assert.ok(worst > 1e-3);
  });

  test('activation addition changes only blocks >= its layer', () => {
    const r = Float32Array.from({ length: D }, () => 1);
    const name0 = blockHook(0, 'hook_resid_post');
    const name2 = blockHook(2, 'hook_resid_pre');
    const plain = model.run(harmful.slice(0, 2), {
      cache: { names: [name0, name2], positions: 'all' },
      logits: 'none',
    });
    const added = model.run(harmful.slice(0, 2), {
      hooks: additionHooks(r, 2, 3),
      cache: { names: [name0, name2], positions: 'all' },
      logits: 'none',
    });
    assert.deepEqual(added.cache.get(name0), plain.cache.get(name0));
    const a = added.cache.get(name2)![0];
    const p = plain.cache.get(name2)![0];
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - p[i] - 3) < 1e-4);
  });
});

describe('refusal direction helpers on SmolLM2', { skip: missingModel(SMOLLM2_GGUF) }, async () => {
  const model = await Model.load(SMOLLM2_GGUF);

  test('post-instruction positions of ChatML are the tokens of `<|im_end|>\\n<|im_start|>assistant\\n`', () => {
    // SmolLM2's vocabulary splits "assistant" in two, so there are six.
    assert.deepEqual(postInstructionPositions(model), [-6, -5, -4, -3, -2, -1]);
    const toks = model.tokenize({ messages: [{ role: 'user', content: 'Hello there' }] });
    assert.equal(model.tokenizer.decode(toks.slice(-6)), '<|im_end|>\n<|im_start|>assistant\n');
  });

  test('refusal tokens include "I" and decode to refusal openings', () => {
    const ids = refusalTokenIds(model.tokenizer);
    assert.ok(ids.includes(model.tokenizer.encode('I', { addSpecialTokens: false })[0]));
    const words = ids.map((t) => model.tokenizer.decode([t]));
    assert.ok(words.includes('I') && words.includes('As'), words.join('|'));
  });
});
