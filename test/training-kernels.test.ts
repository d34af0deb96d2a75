/**
 * The native engine's backward kernels (NativeBackend.backward, src/engine/native/steerguard.c)
 * against training's plain TypeScript ones (plainKernels in fp32 buffers, every sum in double), on
 * random inputs: each adds into gradient buffers that already hold values, and the bound is
 * FP32_TOL on max |diff| / max |ref| of each output (fp32 sums over up to a few thousand terms).
 * Shapes cover what training meets: GQA, sliding windows, sequences longer than one 128-query block,
 * partial rotary dimensions with a YaRN-style scale, single rows, both gated activations.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BackwardKernels } from '../src/engine/backend.js';
import { loadNativeBackend } from '../src/engine/native.js';
import { type GatedActivation, backendKernels, plainKernels } from '../src/training/kernels.js';
import { relErr, throwsBadArgument } from './util/fixtures.js';

const native = loadNativeBackend({ threads: 2 });
const bw: BackwardKernels = native.backward;
const plain = plainKernels<Float32Array>('plain fp32', (n) => new Float32Array(n));
/** max |diff| / max |ref| per output; measured values are in each test's message. */
const FP32_TOL = 1e-5;

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform in [-scale, scale). */
function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (2 * r() - 1) * scale);
}

/** Both kernels from the same starting gradient; asserts each output within FP32_TOL. */
function compare(outs: Float32Array[], run: (o: Float32Array[], which: 'native' | 'plain') => void): number {
  const a = outs.map((o) => o.slice());
  const b = outs.map((o) => o.slice());
  run(a, 'native');
  run(b, 'plain');
  let worst = 0;
  a.forEach((got, i) => {
    const err = relErr(got, b[i]);
    assert.ok(err <= FP32_TOL, `output ${i}: ${err.toExponential(2)}`);
    assert.notDeepEqual(b[i], outs[i], `output ${i} is left unchanged`);
    worst = Math.max(worst, err);
  });
  return worst;
}

describe('native backward kernels equal plain TypeScript (fp32)', () => {
  for (const [M, K, N] of [
    [1, 64, 48],
    [7, 96, 130],
    [40, 256, 8],
    [33, 8, 300],
  ] as const) {
    test(`matmulBackward M=${M} K=${K} N=${N}: dx and dw, each alone or both`, () => {
      const dout = rand(M * N, 1);
      const x = rand(M * K, 2);
      const w = rand(N * K, 3, 0.1);
      const dx0 = rand(M * K, 4);
      const dw0 = rand(N * K, 5);
      compare([dx0, dw0], ([dx, dw], k) =>
        (k === 'native' ? bw : plain).matmulBackward(dx, dw, dout, x, w, M, K, N),
      );
      compare([dx0], ([dx], k) =>
        (k === 'native' ? bw : plain).matmulBackward(dx, undefined, dout, x, w, M, K, N),
      );
      compare([dw0], ([dw], k) =>
        (k === 'native' ? bw : plain).matmulBackward(undefined, dw, dout, x, w, M, K, N),
      );
    });
  }

  for (const [M, D] of [
    [1, 64],
    [37, 576],
    [300, 128],
  ] as const) {
    test(`rmsnormBackward M=${M} D=${D}`, () => {
      const weight = Float32Array.from(rand(D, 6), (v) => 1 + v);
      compare([rand(M * D, 7)], ([dx], k) =>
        (k === 'native' ? bw : plain).rmsnormBackward(
          dx,
          rand(M * D, 8),
          rand(M * D, 9, 3),
          weight,
          M,
          D,
          1e-6,
        ),
      );
    });
  }

  for (const [E, rotDim, scale] of [
    [64, 64, 1],
    [32, 16, 1.2],
  ] as const) {
    test(`ropeBackward E=${E} rotDim=${rotDim} scale=${scale}, and it undoes rope when scale is 1`, () => {
      const [M, heads] = [45, 3];
      const pos = Int32Array.from({ length: M }, (_, i) => (i * 37) % 2000);
      const invFreq = Float32Array.from({ length: rotDim / 2 }, (_, i) => 10000 ** ((-2 * i) / rotDim));
      const x = rand(M * heads * E, 10);
      compare([x], ([dx], k) =>
        (k === 'native' ? bw : plain).ropeBackward(dx, M, heads, E, rotDim, pos, invFreq, scale),
      );
      if (scale !== 1) return;
      const y = x.slice();
      native.rope(y, M, heads, E, rotDim, pos, invFreq, scale);
      bw.ropeBackward(y, M, heads, E, rotDim, pos, invFreq, scale);
      assert.ok(relErr(y, x) <= FP32_TOL);
    });
  }

  for (const [T, H, G, E, window] of [
    [2, 2, 1, 16, 0],
    [12, 4, 2, 16, 4],
    [40, 14, 2, 64, 0],
    [150, 4, 1, 32, 0],
    [150, 4, 4, 32, 37],
  ] as const) {
    test(`attentionBackward T=${T} H=${H} G=${G} E=${E} window=${window}`, () => {
      const scale = 1 / Math.sqrt(E);
      const q = rand(T * H * E, 11, 2);
      const k = rand(T * G * E, 12, 2);
      const v = rand(T * G * E, 13);
      const out = new Float32Array(T * H * E);
      plain.attention(out, q, k, v, T, H, G, E, scale, window);
      const dout = rand(T * H * E, 14);
      const err = compare(
        [rand(T * H * E, 15), rand(T * G * E, 16), rand(T * G * E, 17)],
        ([dq, dk, dv], kind) =>
          (kind === 'native' ? bw : plain).attentionBackward(
            dq,
            dk,
            dv,
            dout,
            q,
            k,
            v,
            out,
            T,
            H,
            G,
            E,
            scale,
            window,
          ),
      );
      assert.ok(err <= FP32_TOL, err.toExponential(2));
    });
  }

  for (const act of ['silu', 'gelu_tanh'] as GatedActivation[]) {
    test(`gatedActBackward ${act}`, () => {
      const n = 70001; // above the threaded kernels' threshold, and odd
      const gate = rand(n, 18, 6);
      const up = rand(n, 19, 2);
      const dout = rand(n, 20);
      compare([rand(n, 21), rand(n, 22)], ([dg, du], k) =>
        (k === 'native' ? bw : plain).gatedActBackward(dg, du, dout, gate, up, n, act),
      );
    });
  }

  test('training on the native engine runs these kernels (backendKernels picks them)', () => {
    const kernels = backendKernels(native);
    assert.match(kernels.name, /forward and backward/);
    // the native argument check, which the plain TypeScript kernel does not have, answers
    const buf = new Float32Array(32);
    throwsBadArgument(
      () => kernels.matmulBackward(buf.subarray(0, 16), undefined, buf.subarray(8, 24), buf, buf, 4, 4, 4),
      /matmulBackward: dx must not overlap dout/,
    );
  });

  test('a gradient output that overlaps an input, or is too short, is refused by name', () => {
    const buf = new Float32Array(64);
    throwsBadArgument(
      () =>
        bw.matmulBackward(
          buf.subarray(0, 16),
          undefined,
          buf.subarray(8, 24),
          rand(16, 1),
          rand(16, 2),
          4,
          4,
          4,
        ),
      /matmulBackward: dx must not overlap dout/,
    );
    throwsBadArgument(
      () => bw.rmsnormBackward(new Float32Array(7), rand(8, 1), rand(8, 2), rand(4, 3), 2, 4, 1e-6),
      /rmsnormBackward: dx has 7 elements, needs M\*D = 8/,
    );
    const t = () => new Float32Array(2 * 2 * 4);
    const dq = t();
    throwsBadArgument(
      () => bw.attentionBackward(dq, t(), t(), t(), dq, t(), t(), t(), 2, 2, 2, 4, 0.5, 0),
      /attentionBackward: dq must not overlap q/,
    );
    throwsBadArgument(
      () => bw.gatedActBackward(t(), t(), t(), t(), t(), 16, 'relu' as GatedActivation),
      /gatedActBackward: act must be 'silu' or 'gelu_tanh', got 'relu'/,
    );
  });
});
