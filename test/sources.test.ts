/**
 * Leave-one-source-out validation (src/concepts/sources.ts) on synthetic activations where the
 * in-split choice and the held-out choice differ, and its refusals of sources it cannot validate.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type LabelledSource,
  fitSourceReading,
  leaveOneSourceOut,
  scoreWithReading,
  thresholdAtFpr,
} from '../src/concepts/sources.js';
import { auroc } from '../src/concepts/probe.js';
import { gaussian, seededUniform } from './util/random.js';

const D = 24;

/**
 * Two layers. Layer 0 carries only dataset style: each source has its own large offset along its
 * own axis, and no sign of harm, so a pooled random split separates the classes perfectly (the
 * sources of each class are there on both sides) while a source never seen scores like chance.
 * Layer 1 carries harm: ±1 along a shared axis plus unit noise, the same for every source.
 */
function synthetic(perSource = 40, seed = 7) {
  const r = seededUniform(seed);
  const names: [string, 0 | 1][] = [
    ['harm-a', 1],
    ['harm-b', 1],
    ['harm-c', 1],
    ['benign-a', 0],
    ['benign-b', 0],
    ['benign-c', 0],
  ];
  const n = names.length * perSource;
  const style = new Float32Array(n * D);
  const harm = new Float32Array(n * D);
  const sources: LabelledSource[] = [];
  let row = 0;
  names.forEach(([name, label], k) => {
    const ids: string[] = [];
    for (let i = 0; i < perSource; i++, row++) {
      ids.push(`${name}-${i}`);
      for (let j = 0; j < D; j++) {
        style[row * D + j] = 0.3 * gaussian(r) + (j === 2 + k ? 6 : 0);
        harm[row * D + j] = gaussian(r) + (j === 0 ? (label ? 1.2 : -1.2) : 0);
      }
    }
    sources.push({ name, label, ids });
  });
  return { acts: { layers: [0, 1], n, d: D, data: [style, harm] }, sources };
}

describe('leave-one-source-out selection', () => {
  it('chooses the layer that generalises to unseen sources, where the in-split choice does not', () => {
    const { acts, sources } = synthetic();
    const v = leaveOneSourceOut(acts, sources, { combine: [1, 2] });
    assert.equal(v.inSplit.layer, 0, 'a pooled split rewards the style layer');
    assert.ok(v.inSplit.accuracy > 0.95, `in-split accuracy ${v.inSplit.accuracy}`);
    assert.ok(
      v.inSplit.heldOutWorstAuroc < 0.75,
      `style layer on unseen sources: ${v.inSplit.heldOutWorstAuroc}`,
    );
    assert.deepEqual(v.selection.layers, [1]);
    assert.ok(v.selection.worstAuroc > 0.85, `harm layer worst held-out AUROC ${v.selection.worstAuroc}`);
    assert.equal(v.selection.perSource.length, 6);
    for (const row of v.selection.perSource) {
      assert.ok(row.aurocCi[0] < row.auroc && row.auroc <= row.aurocCi[1]);
      assert.ok(row.tprCi[0] <= row.tpr && row.tpr <= row.tprCi[1]);
    }
    // The threshold leaves about 5% of the benign out-of-fold scores above it.
    const benignFpr = v.selection.perSource.filter((s) => s.label === 1).map((s) => s.fpr);
    for (const f of benignFpr) assert.ok(f <= 0.05 + 1e-12, `pooled benign FPR ${f}`);
  });

  it('fits the chosen reading on all sources and scores new rows on the same scale', () => {
    const { acts, sources } = synthetic();
    const v = leaveOneSourceOut(acts, sources, { methods: ['mean-diff'], combine: [1] });
    const reading = fitSourceReading(acts, sources, v.selection);
    const fresh = synthetic(30, 99);
    const scores = scoreWithReading(fresh.acts, reading);
    const labels = fresh.sources.flatMap((s) => s.ids.map(() => s.label));
    assert.ok(auroc(scores, labels).auroc > 0.9);
  });

  it('refuses a source too small to hold out, a lone source of a class, and a prompt in both classes', () => {
    const { acts, sources } = synthetic();
    const small = sources.map((s, k) => (k === 0 ? { ...s, ids: s.ids } : s));
    assert.throws(
      () => leaveOneSourceOut(acts, small, { minPerSource: 41 }),
      /harm-a has 40 prompt\(s\).*at least 41/,
    );
    const oneHarmful = [
      {
        name: 'harm-all',
        label: 1 as const,
        ids: sources.filter((s) => s.label === 1).flatMap((s) => s.ids),
      },
      ...sources.filter((s) => s.label === 0),
    ];
    assert.throws(() => leaveOneSourceOut(acts, oneHarmful), /at least 2 harmful sources, got 1/);
    const clash = sources.map((s) =>
      s.name === 'benign-a' ? { ...s, ids: [sources[0].ids[0], ...s.ids.slice(1)] } : s,
    );
    assert.throws(
      () => leaveOneSourceOut(acts, clash),
      /harm-a \(harmful\) and benign-a \(benign\) share a prompt/,
    );
  });

  it('keeps a prompt found in two sources of one class in the first only, and says so', () => {
    const { acts, sources } = synthetic();
    const dup = sources.map((s) =>
      s.name === 'harm-b' ? { ...s, ids: [sources[0].ids[3], ...s.ids.slice(1)] } : s,
    );
    const v = leaveOneSourceOut(acts, dup, { methods: ['mean-diff'], combine: [1] });
    assert.equal(v.sources.find((s) => s.name === 'harm-b')!.n, 39);
    assert.match(v.warnings.join('\n'), /1 prompt\(s\) of harm-b are also in/);
  });

  it('thresholdAtFpr leaves at most that share above it', () => {
    const benign = Array.from({ length: 100 }, (_, i) => i);
    const t = thresholdAtFpr(benign, 0.05);
    assert.equal(benign.filter((v) => v > t).length, 5);
  });
});
