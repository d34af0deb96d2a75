/**
 * The numerical core of concepts: logistic regression against scikit-learn and an independent
 * gradient descent, the stationarity of its solutions, AUROC (with ties) and its DeLong interval,
 * Wilson intervals, the directions (mean difference, PCA of differences) and the SCAV step.
 *
 * test/fixtures/probe/sklearn-logreg.json holds three small synthetic problems solved once with
 * scikit-learn (its `generated_by` field says how); no model or dataset is needed here.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import {
  accuracy,
  auroc,
  aurocInterval,
  differenceOfMeans,
  fitLogistic,
  logit,
  pcaDirection,
  sigmoid,
  wilsonInterval,
} from '../src/concepts/probe.js';
import { scavEpsilon, scavStep } from '../src/concepts/scav.js';
import { SteerguardError } from '../src/formats/errors.js';
import { FIXTURES } from './util/fixtures.js';

interface SkCase {
  name: string;
  C: number;
  d: number;
  x: number[];
  y: number[];
  coef: number[];
  intercept: number;
}
const SK = JSON.parse(readFileSync(path.join(FIXTURES, 'probe', 'sklearn-logreg.json'), 'utf8')) as {
  cases: SkCase[];
};

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    // xorshift32: independent of anything in src/.
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
}
function gaussian(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r())) * Math.cos(2 * Math.PI * r());
}

/** Gradient of sum log(1 + exp(-y z)) + ||w||²/2C, written out again here on purpose. */
function gradient(
  x: readonly number[] | Float32Array,
  y: readonly number[] | Uint8Array,
  d: number,
  w: ArrayLike<number>,
  b: number,
  C: number,
) {
  const gw = Array.from({ length: d }, (_, j) => w[j] / C);
  let gb = 0;
  for (let i = 0; i < y.length; i++) {
    let z = b;
    for (let j = 0; j < d; j++) z += w[j] * x[i * d + j];
    const s = y[i] === 1 ? 1 : -1;
    const coeff = -s / (1 + Math.exp(s * z));
    gb += coeff;
    for (let j = 0; j < d; j++) gw[j] += coeff * x[i * d + j];
  }
  return { gw, gb, max: Math.max(Math.abs(gb), ...gw.map(Math.abs)) };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** out[M,N] = x[M,K] · w[N,K]ᵀ in Float32, standing in for the engine's matmul. */
function matmul32(
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  M: number,
  K: number,
  N: number,
): void {
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = Math.fround(0);
      for (let k = 0; k < K; k++) s = Math.fround(s + Math.fround(x[i * K + k] * w[j * K + k]));
      out[i * N + j] = s;
    }
}

describe('logistic regression', () => {
  for (const c of SK.cases) {
    it(`matches scikit-learn on ${c.name} (${c.y.length} x ${c.d}, C=${c.C})`, () => {
      const fit = fitLogistic(c.x, c.y, c.d, { C: c.C });
      assert.ok(fit.converged);
      const scale = Math.max(...c.coef.map(Math.abs));
      assert.ok(maxAbsDiff(fit.w, c.coef) <= 1e-7 * scale, `w differs by ${maxAbsDiff(fit.w, c.coef)}`);
      assert.ok(
        Math.abs(fit.b - c.intercept) <= 1e-7 * Math.max(1, Math.abs(c.intercept)),
        `b ${fit.b} vs ${c.intercept}`,
      );
      // Stationarity, checked with this file's own gradient.
      const g = gradient(c.x, c.y, c.d, fit.w, fit.b, c.C);
      assert.ok(g.max < 1e-6, `gradient ${g.max}`);
      assert.ok(Math.abs(g.max - fit.gradNorm) < 1e-6);
    });

    it(`gives the same solution with a Float32 Gram matrix on ${c.name}`, () => {
      const a = fitLogistic(c.x, c.y, c.d, { C: c.C });
      const b = fitLogistic(c.x, c.y, c.d, { C: c.C, matmul: matmul32 });
      const scale = Math.max(...a.w.map(Math.abs));
      assert.ok(maxAbsDiff(a.w, b.w) <= 1e-8 * scale);
      assert.ok(gradient(c.x, c.y, c.d, b.w, b.b, c.C).max < 1e-6);
    });
  }

  it('agrees with plain gradient descent on a non-separable 3-D problem', () => {
    const r = rng(7);
    const n = 60;
    const d = 3;
    const x: number[] = [];
    const y: number[] = [];
    for (let i = 0; i < n; i++) {
      const label = i % 3 === 0 ? 1 : 0;
      y.push(label);
      x.push(gaussian(r) + 0.8 * label, 0.5 * gaussian(r) - 0.3 * label, gaussian(r) + 2);
    }
    const fit = fitLogistic(x, y, d, { C: 2 });
    // Gradient descent with a step below 1/L, L <= ||[X 1]||_F² / 4 + 1/C.
    let fro = n;
    for (const v of x) fro += v * v;
    const step = 1 / (fro / 4 + 1 / 2);
    const w = [0, 0, 0];
    let b = 0;
    for (let it = 0; it < 200_000; it++) {
      const g = gradient(x, y, d, w, b, 2);
      if (g.max < 1e-12) break;
      for (let j = 0; j < d; j++) w[j] -= step * g.gw[j];
      b -= step * g.gb;
    }
    assert.ok(maxAbsDiff(fit.w, w) < 1e-7, `w ${[...fit.w]} vs ${w}`);
    assert.ok(Math.abs(fit.b - b) < 1e-7);
  });

  it('returns raw-feature weights when standardising', () => {
    const c = SK.cases[1];
    const n = c.y.length;
    const fit = fitLogistic(c.x, c.y, c.d, { standardize: true });
    // Same problem posed on standardised features by hand.
    const mean = Array.from({ length: c.d }, (_, j) => c.y.reduce((s, _y, i) => s + c.x[i * c.d + j], 0) / n);
    const sd = mean.map((m, j) =>
      Math.sqrt(c.y.reduce((s, _y, i) => s + (c.x[i * c.d + j] - m) ** 2, 0) / n),
    );
    const xs = c.x.map((v, k) => (v - mean[k % c.d]) / sd[k % c.d]);
    const ref = fitLogistic(xs, c.y, c.d);
    const wRaw = ref.w.map((v, j) => v / sd[j]);
    const bRaw = ref.b - wRaw.reduce((s, v, j) => s + v * mean[j], 0);
    assert.ok(maxAbsDiff(fit.w, wRaw) < 1e-8 * Math.max(...wRaw.map(Math.abs)));
    assert.ok(Math.abs(fit.b - bRaw) < 1e-7 * Math.max(1, Math.abs(bRaw)));
    // The probabilities on raw rows agree.
    for (let i = 0; i < n; i++) {
      let z1 = fit.b;
      let z2 = ref.b;
      for (let j = 0; j < c.d; j++) {
        z1 += fit.w[j] * c.x[i * c.d + j];
        z2 += ref.w[j] * xs[i * c.d + j];
      }
      assert.ok(Math.abs(z1 - z2) < 1e-7);
    }
  });

  it('fits many features from few examples (the usual probe shape) to a tight gradient', () => {
    const r = rng(3);
    const n = 50;
    const d = 200;
    const x = new Float32Array(n * d);
    const y = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      y[i] = i < 25 ? 1 : 0;
      for (let j = 0; j < d; j++)
        x[i * d + j] = (j < 3 ? 40 : 1) * gaussian(r) + (j === 7 ? (y[i] ? 1 : -1) : 0) + 5;
    }
    const fit = fitLogistic(x, y, d);
    assert.ok(fit.converged);
    assert.ok(gradient(x, y, d, fit.w, fit.b, 1).max < 1e-6);
    assert.equal(
      accuracy(
        Array.from(y, (_, i) => fit.b + fit.w.reduce((s, v, j) => s + v * x[i * d + j], 0)),
        y,
      ),
      1,
    );
  });

  it('refuses one class, NaN and bad labels with clear errors', () => {
    assert.throws(
      () => fitLogistic([1, 2, 3, 4], [1, 1], 2),
      (e: Error) => e instanceof SteerguardError && /both classes/.test(e.message),
    );
    assert.throws(() => fitLogistic([1, NaN, 3, 4], [1, 0], 2), /example 0 has a non-finite value/);
    assert.throws(() => fitLogistic([1, 2, 3, 4], [1, 2], 2), /labels must be 0 or 1/);
    assert.throws(() => fitLogistic([1, 2, 3], [1, 0], 2), /expected 2 rows/);
  });
});

describe('AUROC and intervals', () => {
  /** Pairs counted one by one: the definition. */
  function bruteAuc(s: number[], l: number[]): number {
    let sum = 0;
    let pairs = 0;
    for (let i = 0; i < s.length; i++)
      for (let j = 0; j < s.length; j++)
        if (l[i] === 1 && l[j] === 0) {
          pairs++;
          sum += s[i] > s[j] ? 1 : s[i] === s[j] ? 0.5 : 0;
        }
    return sum / pairs;
  }

  it('handles perfect, reversed, tied and known cases', () => {
    assert.equal(auroc([1, 2, 3, 4], [0, 0, 1, 1]).auroc, 1);
    assert.equal(auroc([4, 3, 2, 1], [0, 0, 1, 1]).auroc, 0);
    assert.equal(auroc([5, 5, 5, 5], [0, 1, 0, 1]).auroc, 0.5);
    assert.equal(auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]).auroc, 0.75);
    assert.equal(auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]).auroc, 0.75);
    assert.equal(auroc([1, 1, 2, 2], [0, 1, 0, 1]).auroc, 0.5);
  });

  it('equals pair counting, and DeLong equals its definition, on random data with ties', () => {
    const r = rng(11);
    const s = Array.from({ length: 57 }, () => Math.round(r() * 12));
    const l = s.map((v, i) => (i % 3 === 0 || (v > 8 && i % 2 === 0) ? 1 : 0));
    const res = auroc(s, l);
    assert.ok(Math.abs(res.auroc - bruteAuc(s, l)) < 1e-12);
    const pos = s.filter((_, i) => l[i] === 1);
    const neg = s.filter((_, i) => l[i] === 0);
    const psi = (a: number, b: number) => (a > b ? 1 : a === b ? 0.5 : 0);
    const v10 = pos.map((a) => neg.reduce((t, b) => t + psi(a, b), 0) / neg.length);
    const v01 = neg.map((b) => pos.reduce((t, a) => t + psi(a, b), 0) / pos.length);
    const varOf = (v: number[]) => v.reduce((t, x) => t + (x - res.auroc) ** 2, 0) / (v.length - 1);
    const se = Math.sqrt(varOf(v10) / pos.length + varOf(v01) / neg.length);
    assert.ok(Math.abs(res.se - se) < 1e-12);
    assert.ok(res.ci[0] <= res.auroc && res.auroc <= res.ci[1]);
    assert.deepEqual(res.ci, aurocInterval(res.auroc, pos.length, neg.length));
  });

  it("Newcombe's interval solves its defining equation and keeps a width at AUROC 1", () => {
    // Hanley–McNeil in its Q1/Q2 form, with both class sizes replaced by their mean N*.
    const hanleyMcNeil = (t: number, nStar: number) => {
      const q1 = t / (2 - t);
      const q2 = (2 * t * t) / (1 + t);
      return (t * (1 - t) + (nStar - 1) * (q1 - t * t) + (nStar - 1) * (q2 - t * t)) / (nStar * nStar);
    };
    for (const [auc, m, n] of [
      [1, 40, 41],
      [0.93, 30, 70],
      [0.5, 12, 12],
      [0, 25, 25],
    ]) {
      const [lo, hi] = aurocInterval(auc, m, n);
      assert.ok(hi - lo > 0.01, `width at ${auc}: ${lo}..${hi}`);
      for (const t of [lo, hi]) {
        if (t === 0 || t === 1) continue;
        const residual = (auc - t) ** 2 - 1.96 ** 2 * hanleyMcNeil(t, (m + n) / 2);
        assert.ok(Math.abs(residual) < 1e-9, `residual ${residual} at ${t}`);
      }
    }
    const [lo, hi] = aurocInterval(1, 40, 41);
    assert.equal(hi, 1);
    assert.ok(lo > 0.9 && lo < 0.99, `lower bound at AUROC 1 with 40 + 41 examples: ${lo}`);
    assert.ok(auroc([0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]).ci[0] < 1);
  });

  it('Wilson intervals match known values', () => {
    const close = (a: [number, number], b: [number, number]) =>
      assert.ok(maxAbsDiff(a, b) < 1e-4, `${a} vs ${b}`);
    close(wilsonInterval(0, 10), [0, 0.2775]);
    close(wilsonInterval(10, 10), [0.7225, 1]);
    close(wilsonInterval(5, 10), [0.2366, 0.7634]);
    assert.deepEqual(wilsonInterval(0, 0), [0, 1]);
  });

  it('accuracy uses score > threshold', () => {
    assert.equal(accuracy([-1, 0, 1, 2], [0, 0, 1, 1]), 1);
    assert.equal(accuracy([0.2, 0.6], [0, 1], 0.5), 1);
  });
});

describe('directions', () => {
  const d = 6;
  const v = [0.5, -0.5, 0.5, 0.5, 0, 0];
  /** Pairs sharing a large random "topic" part, differing along v by a varying amount. */
  function paired(n: number, seed: number) {
    const r = rng(seed);
    const x: number[] = [];
    const y: number[] = [];
    const pos: number[][] = [];
    const neg: number[][] = [];
    for (let i = 0; i < n; i++) {
      const base = Array.from({ length: d }, (_, j) => (j === 4 ? 10 : 1) * gaussian(r));
      const a = 1 + r();
      pos.push(base.map((b, j) => b + a * v[j] + 0.01 * gaussian(r)));
      neg.push(base.map((b, j) => b - a * v[j] + 0.01 * gaussian(r)));
    }
    for (const p of pos) {
      x.push(...p);
      y.push(1);
    }
    for (const q of neg) {
      x.push(...q);
      y.push(0);
    }
    return { x, y, pos, neg };
  }

  it('the difference of means is the difference of the class means', () => {
    const { x, y, pos, neg } = paired(20, 1);
    const dm = differenceOfMeans(x, y, d);
    for (let j = 0; j < d; j++) {
      const ref = pos.reduce((s, p) => s + p[j], 0) / 20 - neg.reduce((s, q) => s + q[j], 0) / 20;
      assert.ok(Math.abs(dm[j] - ref) < 1e-12);
    }
  });

  it('PCA of paired differences finds the varying direction, positives projecting higher', () => {
    const { x, y } = paired(40, 2);
    const p = pcaDirection(x, y, d);
    const norm = Math.sqrt(p.reduce((s, t) => s + t * t, 0));
    assert.ok(Math.abs(norm - 1) < 1e-12);
    const cos = p.reduce((s, t, j) => s + t * v[j], 0);
    assert.ok(cos > 0.999, `cos ${cos}`);
    // Flipping the labels flips the sign.
    const flipped = pcaDirection(
      x,
      y.map((l) => 1 - l),
      d,
    );
    assert.ok(flipped.reduce((s, t, j) => s + t * p[j], 0) < -0.999);
  });
});

describe('SCAV step', () => {
  it('lands exactly on p0 (float64) and moves along w only', () => {
    const r = rng(5);
    for (const p0 of [1e-4, 1e-3, 0.05, 0.5, 0.999]) {
      for (let trial = 0; trial < 20; trial++) {
        const d = 1 + Math.floor(r() * 50);
        const w = Array.from({ length: d }, () => gaussian(r) * 3);
        const e = Array.from({ length: d }, () => gaussian(r) * 20);
        const b = gaussian(r);
        const e2 = scavStep(e, w, b, p0);
        const z = e2.reduce((s, t, j) => s + t * w[j], b);
        assert.ok(Math.abs(sigmoid(z) - p0) < 1e-9, `p0 ${p0}: got ${sigmoid(z)}`);
        assert.ok(Math.abs(z - logit(p0)) < 1e-9 * Math.max(1, Math.abs(z)));
        const eps = scavEpsilon(e, w, b, p0);
        const wn = Math.sqrt(w.reduce((s, t) => s + t * t, 0));
        e2.forEach((t, j) =>
          assert.ok(Math.abs(t - e[j] - (eps * w[j]) / wn) < 1e-9 * Math.max(1, Math.abs(t))),
        );
      }
    }
  });

  it('refuses p0 outside (0, 1) and zero weights', () => {
    assert.throws(() => scavStep([1], [1], 0, 0), /strictly between 0 and 1/);
    assert.throws(() => scavStep([1], [1], 0, 1), /strictly between 0 and 1/);
    assert.throws(() => scavStep([1, 2], [0, 0], 0, 0.5), /all zero/);
  });
});
