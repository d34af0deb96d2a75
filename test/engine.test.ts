/**
 * The native engine against the plain TypeScript reference (src/engine/reference.ts) on random
 * inputs, edge shapes included, and its argument checks.
 *
 * Tolerances are relative to the largest magnitude of the reference output:
 *   max |native - ref| / max |ref|  <=  tol
 * The reference sums in double, so tol is the fp32 error budget of each kernel: 1e-5 for matmul and
 * attention (sums of up to thousands of fp32 products), 1e-6 for rmsnorm, rope and gatedAct (a few
 * fp32 operations per element).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { loadNativeBackend, type NativeBackend } from '../src/engine/native.js';
import { ReferenceBackend } from '../src/engine/reference.js';
import { layerRopeFrequencies } from '../src/model/rope.js';
import { SteerguardError } from '../src/formats/errors.js';
import { relErr, throwsBadArgument } from './util/fixtures.js';

const be: NativeBackend = loadNativeBackend({ threads: 2 });
const ref = new ReferenceBackend();

/** mulberry32: a seeded generator, so a failure reproduces. */
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

function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    // Box-Muller
    const u = Math.max(r(), 1e-12);
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

function close(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: max abs diff / max abs ref = ${e.toExponential(2)} > ${tol}`);
}

/** A Float32Array living at a non-zero byte offset inside a larger buffer, as hook views do. */
function offsetCopy(a: Float32Array, pad = 3): Float32Array {
  const big = new Float32Array(a.length + 2 * pad).fill(NaN);
  const v = big.subarray(pad, pad + a.length);
  v.set(a);
  return v;
}

describe('native engine', () => {
  it('loads and reports its build', () => {
    assert.equal(be.threads, 2);
    assert.match(be.name, /^native \(OpenBLAS [\d.]+, .*2 threads\)$/);
    assert.match(be.info().config, /OpenBLAS/);
  });

  it('throws a SteerguardError naming the build command when the addon is missing', () => {
    assert.throws(
      () => loadNativeBackend({ addonPath: '/nonexistent/steerguard.node' }),
      (e: unknown) =>
        e instanceof SteerguardError && /build-native/.test(e.message) && /libopenblas-dev/.test(e.message),
    );
  });
});

describe('matmul', () => {
  const shapes: [number, number, number][] = [
    [1, 576, 1536], // decode: the sgemv path
    [1, 7, 5],
    [3, 17, 33], // odd K and N
    [32, 64, 48],
    [5, 1, 3], // K = 1
    [65, 33, 1], // N = 1
  ];
  for (const [M, K, N] of shapes) {
    for (const withBias of [false, true]) {
      it(`${M}x${K}x${N}${withBias ? ' + bias' : ''}`, () => {
        const seed = M * 1000 + K * 10 + N;
        const x = randn(M * K, seed);
        const w = randn(N * K, seed + 1);
        const bias = withBias ? randn(N, seed + 2) : undefined;
        const want = new Float32Array(M * N);
        ref.matmul(want, x, w, M, K, N, bias);
        const got = offsetCopy(new Float32Array(M * N));
        be.matmul(got, offsetCopy(x), offsetCopy(w), M, K, N, bias && offsetCopy(bias));
        close(got, want, 1e-5, 'matmul');
      });
    }
  }

  it('M = 0 is a no-op', () => {
    const out = new Float32Array(4).fill(7);
    be.matmul(out, new Float32Array(0), new Float32Array(8), 0, 2, 4);
    assert.deepEqual([...out], [7, 7, 7, 7]);
  });

  it('accepts buffers longer than needed and leaves the tail alone', () => {
    const x = randn(2 * 8 + 5, 1);
    const w = randn(3 * 8, 2);
    const out = new Float32Array(2 * 3 + 4).fill(9);
    const want = new Float32Array(6);
    ref.matmul(want, x, w, 2, 8, 3);
    be.matmul(out, x, w, 2, 8, 3);
    close(out.subarray(0, 6), want, 1e-5, 'matmul');
    assert.deepEqual([...out.subarray(6)], [9, 9, 9, 9]);
  });
});

describe('rmsnorm', () => {
  for (const [M, D] of [
    [1, 576],
    [3, 576],
    [4, 1],
    [200, 4096], // parallel path
  ]) {
    it(`${M}x${D}`, () => {
      const x = randn(M * D, D + M, 3);
      const w = randn(D, D);
      const want = new Float32Array(M * D);
      ref.rmsnorm(want, x, w, M, D, 1e-6);
      const got = new Float32Array(M * D);
      be.rmsnorm(got, offsetCopy(x), offsetCopy(w), M, D, 1e-6);
      close(got, want, 1e-6, 'rmsnorm');
    });
  }

  it('in place (out === x)', () => {
    const x = randn(5 * 64, 11);
    const w = randn(64, 12);
    const want = new Float32Array(5 * 64);
    ref.rmsnorm(want, x, w, 5, 64, 1e-5);
    be.rmsnorm(x, x, w, 5, 64, 1e-5);
    close(x, want, 1e-6, 'rmsnorm in place');
  });

  it('an all-zero row gives zeros, not NaN', () => {
    const out = new Float32Array(8);
    be.rmsnorm(out, new Float32Array(8), new Float32Array(8).fill(1), 1, 8, 1e-6);
    assert.deepEqual([...out], new Array(8).fill(0));
  });
});

describe('rope', () => {
  const cases: {
    M: number;
    heads: number;
    E: number;
    rotDim: number;
    theta: number;
    start: number;
    scale?: number;
  }[] = [
    { M: 5, heads: 3, E: 64, rotDim: 64, theta: 10000, start: 0 },
    { M: 4, heads: 2, E: 64, rotDim: 32, theta: 10000, start: 7 }, // partial rotary: the tail is untouched
    { M: 3, heads: 4, E: 256, rotDim: 256, theta: 1e6, start: 100 },
    { M: 6, heads: 3, E: 64, rotDim: 64, theta: 100000, start: 30000 }, // long positions: fp32 angles matter
    { M: 64, heads: 9, E: 64, rotDim: 64, theta: 10000, start: 0 }, // parallel path
    { M: 5, heads: 2, E: 64, rotDim: 64, theta: 10000, start: 3, scale: 1.1386 }, // YaRN's cos/sin factor
  ];
  for (const c of cases) {
    const scale = c.scale ?? 1;
    it(`M=${c.M} heads=${c.heads} E=${c.E} rotDim=${c.rotDim} theta=${c.theta} scale=${scale} from pos ${c.start}`, () => {
      const n = c.M * c.heads * c.E;
      const x0 = randn(n, n + c.start);
      const pos = Int32Array.from({ length: c.M }, (_, i) => c.start + i * 3);
      const { invFreq } = layerRopeFrequencies(c.theta, c.rotDim, { type: 'default' });
      const want = Float32Array.from(x0);
      ref.rope(want, c.M, c.heads, c.E, c.rotDim, pos, invFreq, scale);
      const got = offsetCopy(x0);
      be.rope(got, c.M, c.heads, c.E, c.rotDim, pos, invFreq, scale);
      close(got, want, 1e-6, 'rope');
      if (c.rotDim < c.E) {
        for (let r = 0; r < c.M * c.heads; r++) {
          for (let e = c.rotDim; e < c.E; e++) assert.equal(got[r * c.E + e], x0[r * c.E + e]);
        }
      }
    });
  }
});

describe('attention', () => {
  // T < 8 takes the query-by-query path (keys split across threads when T·G is small), T >= 8 the
  // sgemm path in blocks of 128 queries: both are covered
  const cases: { T: number; S: number; H: number; G: number; E: number; window: number; qScale?: number }[] =
    [
      { T: 1, S: 1, H: 2, G: 2, E: 64, window: 0 },
      { T: 1, S: 37, H: 9, G: 3, E: 64, window: 0 }, // decode, GQA H/G = 3
      { T: 7, S: 7, H: 8, G: 2, E: 64, window: 0 }, // prefill, GQA H/G = 4
      { T: 5, S: 20, H: 4, G: 1, E: 256, window: 0 }, // chunked prefill after 15 cached keys, E = 256
      { T: 3, S: 30, H: 2, G: 1, E: 64, window: 1 }, // window 1: each query sees itself only
      { T: 2, S: 50, H: 3, G: 3, E: 32, window: 50 }, // window = S: same as none
      { T: 1, S: 64, H: 2, G: 1, E: 64, window: 0, qScale: 40 }, // scores in the hundreds: stable softmax
      { T: 1, S: 8192, H: 4, G: 1, E: 64, window: 0 }, // long decode
      { T: 2, S: 8192, H: 2, G: 1, E: 64, window: 4096 },
      { T: 8, S: 8, H: 4, G: 4, E: 256, window: 0 },
      { T: 16, S: 64, H: 2, G: 1, E: 64, window: 0, qScale: 40 },
      { T: 20, S: 20, H: 4, G: 2, E: 64, window: 4 }, // sliding window smaller than S
      { T: 64, S: 96, H: 9, G: 3, E: 64, window: 0 },
      { T: 300, S: 400, H: 4, G: 2, E: 64, window: 50 }, // three query blocks, the last partial
      { T: 32, S: 8192, H: 2, G: 1, E: 64, window: 4096 },
    ];
  for (const c of cases) {
    const { T, S, H, G, E, window } = c;
    it(`T=${T} S=${S} H=${H} G=${G} E=${E} window=${window}${c.qScale ? ` q*${c.qScale}` : ''}`, () => {
      const seed = T * 7 + S * 13 + H * 17 + E;
      const q = randn(T * H * E, seed, c.qScale ?? 1);
      const k = randn(S * G * E, seed + 1);
      const v = randn(S * G * E, seed + 2);
      const scale = 1 / Math.sqrt(E);
      const want = new Float32Array(T * H * E);
      ref.attention(want, q, k, v, T, S, H, G, E, scale, window);
      const got = offsetCopy(new Float32Array(T * H * E));
      be.attention(got, offsetCopy(q), offsetCopy(k), offsetCopy(v), T, S, H, G, E, scale, window);
      close(got, want, 1e-5, 'attention');
    });
  }

  it('query t sees only its own past: changing a later key leaves earlier queries alone', () => {
    const [T, S, H, G, E] = [4, 4, 2, 1, 16];
    const q = randn(T * H * E, 1);
    const k = randn(S * G * E, 2);
    const v = randn(S * G * E, 3);
    const a = new Float32Array(T * H * E);
    be.attention(a, q, k, v, T, S, H, G, E, 0.25, 0);
    k.fill(5, 3 * G * E);
    v.fill(-5, 3 * G * E);
    const b = new Float32Array(T * H * E);
    be.attention(b, q, k, v, T, S, H, G, E, 0.25, 0);
    assert.deepEqual([...b.subarray(0, 3 * H * E)], [...a.subarray(0, 3 * H * E)]);
    assert.notDeepEqual([...b.subarray(3 * H * E)], [...a.subarray(3 * H * E)]);
  });
});

describe('gatedAct', () => {
  for (const act of ['silu', 'gelu_tanh'] as const) {
    for (const n of [1, 1000, 40000]) {
      it(`${act} n=${n}`, () => {
        const gate = randn(n, n, 4);
        if (n >= 4) gate.set([100, -100, 0, -1e-8]); // saturation, exact zero, tiny
        const up = randn(n, n + 1);
        const want = new Float32Array(n);
        ref.gatedAct(want, gate, up, n, act);
        const got = new Float32Array(n);
        be.gatedAct(got, offsetCopy(gate), offsetCopy(up), n, act);
        close(got, want, 1e-6, act);
      });
    }
    it(`${act} in place (out === gate)`, () => {
      const gate = randn(100, 5);
      const up = randn(100, 6);
      const want = new Float32Array(100);
      ref.gatedAct(want, gate, up, 100, act);
      be.gatedAct(gate, gate, up, 100, act);
      close(gate, want, 1e-6, act);
    });
  }
});

describe('argument checks', () => {
  const bad = throwsBadArgument;
  const f = (n: number) => new Float32Array(n);

  it('matmul', () => {
    bad(() => be.matmul(f(6), f(6), f(5), 2, 3, 2), /matmul: w has 5 elements, needs N\*K = 6/);
    bad(() => be.matmul(f(5), f(6), f(6), 2, 3, 3), /matmul: out has 5 elements, needs M\*N = 6/);
    bad(() => be.matmul(f(4), f(5), f(6), 2, 3, 2), /matmul: x has 5 elements/);
    bad(() => be.matmul(f(4), f(6), f(6), 2, 3, 2, f(1)), /matmul: bias has 1 elements, needs N = 2/);
    bad(
      () => be.matmul(f(4), new Float64Array(6) as unknown as Float32Array, f(6), 2, 3, 2),
      /x must be a Float32Array/,
      TypeError,
    );
    bad(() => be.matmul(f(4), f(6), f(6), 2.5, 3, 2), /M must be an integer/);
    bad(() => be.matmul(f(4), f(6), f(6), 2, 0, 2), /K must be an integer in \[1,/);
    bad(() => be.matmul(f(4), f(6), f(6), 2, 3, '2' as unknown as number), /N must be a number/, TypeError);
    const buf = f(20);
    bad(() => be.matmul(buf.subarray(0, 4), buf.subarray(2, 8), f(6), 2, 3, 2), /out must not overlap x/);
    bad(() => (be.matmul as (...a: unknown[]) => void)(f(4), f(6)), /w must be a Float32Array/, TypeError);
  });

  it('rmsnorm', () => {
    const buf = f(20);
    bad(
      () => be.rmsnorm(buf.subarray(1, 9), buf.subarray(0, 8), f(4), 2, 4, 1e-6),
      /out must not overlap x \(it may be the very same array\)/,
    );
    bad(() => be.rmsnorm(f(8), f(8), f(3), 2, 4, 1e-6), /weight has 3 elements, needs D = 4/);
    bad(() => be.rmsnorm(f(8), f(8), f(4), 2, 4, NaN), /eps must be a finite number/);
  });

  it('rope', () => {
    const inv = f(32).fill(0.5);
    bad(() => be.rope(f(64), 1, 1, 64, 63, new Int32Array(1), inv, 1), /rotDim must be even and <= E = 64/);
    bad(() => be.rope(f(64), 1, 1, 64, 66, new Int32Array(1), f(33), 1), /rotDim must be even/);
    bad(
      () => be.rope(f(64), 2, 1, 64, 64, new Int32Array(2), inv, 1),
      /x has 64 elements, needs M\*heads\*E = 128/,
    );
    bad(() => be.rope(f(128), 2, 1, 64, 64, new Int32Array(1), inv, 1), /pos has 1 elements, needs M = 2/);
    bad(
      () => be.rope(f(64), 1, 1, 64, 64, new Float32Array(1) as unknown as Int32Array, inv, 1),
      /pos must be an Int32Array/,
      TypeError,
    );
    bad(
      () => be.rope(f(64), 1, 1, 64, 64, new Int32Array(1), f(31), 1),
      /invFreq has 31 elements, needs rotDim\/2 = 32/,
    );
    bad(
      () => be.rope(f(64), 1, 1, 64, 64, new Int32Array(1), Float32Array.from(inv).fill(NaN, 5, 6), 1),
      /invFreq\[5\] must be finite/,
    );
    bad(
      () => be.rope(f(64), 1, 1, 64, 64, new Int32Array(1), inv, Infinity),
      /scale must be a finite number/,
    );
    const buf = f(96);
    bad(
      () => be.rope(buf.subarray(0, 64), 1, 1, 64, 64, new Int32Array(1), buf.subarray(60, 92), 1),
      /x must not overlap invFreq/,
    );
  });

  it('attention', () => {
    bad(() => be.attention(f(64), f(64), f(64), f(64), 2, 1, 2, 1, 16, 1, 0), /T \(2\) must be <= S \(1\)/);
    bad(
      () => be.attention(f(48), f(48), f(64), f(64), 1, 2, 3, 2, 16, 1, 0),
      /H \(3\) must be a multiple of G \(2\)/,
    );
    bad(
      () => be.attention(f(32), f(32), f(16), f(32), 1, 2, 2, 1, 16, 1, 0),
      /k has 16 elements, needs S\*G\*E = 32/,
    );
    bad(
      () => be.attention(f(32), f(32), f(32), f(32), 1, 2, 2, 1, 16, 1, -1),
      /window must be an integer in \[0,/,
    );
    const buf = f(100);
    bad(
      () => be.attention(buf.subarray(0, 32), buf.subarray(0, 32), f(32), f(32), 1, 2, 2, 1, 16, 1, 0),
      /out must not overlap q/,
    );
  });

  it('gatedAct', () => {
    bad(
      () => be.gatedAct(f(4), f(4), f(4), 4, 'relu' as 'silu'),
      /act must be 'silu' or 'gelu_tanh', got 'relu'/,
    );
    bad(() => be.gatedAct(f(4), f(3), f(4), 4, 'silu'), /gate has 3 elements, needs n = 4/);
    const buf = f(10);
    bad(
      () => be.gatedAct(buf.subarray(1, 5), buf.subarray(0, 4), f(4), 4, 'silu'),
      /out must not overlap gate/,
    );
  });

  it('setThreads', () => {
    bad(() => be.setThreads(0), /n must be an integer in \[1,/);
    be.setThreads(1);
    assert.equal(be.threads, 1);
    be.setThreads(2);
    assert.equal(be.threads, 2);
  });
});
