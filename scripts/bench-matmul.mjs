#!/usr/bin/env node
/**
 * Matmul throughput of the native engine against plain JavaScript loops, in the same process.
 *
 *   npx tsc -p tsconfig.json && node scripts/bench-matmul.mjs [--threads N] [--no-js] [--kernels | --quant]
 *
 * Shapes are M x K x N: out[M,N] = x[M,K] · w[N,K]ᵀ, the engine's matmul. They are SmolLM2-135M's
 * (d_model 576, MLP 1536, vocab 49152) and Qwen2.5-0.5B's (896, MLP 4864) at decode (M = 1), a small
 * batch (32) and a 512-token prompt. Each figure is the median of repeated runs within a short time
 * budget; the plain-JS loop (register-blocked, split over worker threads like the native kernels) gets
 * fewer repeats because it is ~100x slower. Absolute numbers drift with the machine's load, so
 * compare the columns of one run, and repeat the run.
 *
 * --kernels adds the quantized matmul (matmulQuant) against fp32 and the non-matmul kernels at typical
 * sizes: per block type, M = 1 with int8 activations ('q8', decoding) and with exact fp32 dots, and
 * M = 512 through the dequantized tiles and sgemm ('f32', prompts), on random blocks. --quant runs
 * that table alone.
 */
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { URL } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

// ----------------------------------------------------------------------------
// the plain-JS kernel (also the body of the worker threads)

/** out rows [n0, n1) of x[M,K] · w[N,K]ᵀ: 2 x-rows by 4 w-rows per step, 8 sums in registers. */
function jsMatmulRange(out, x, w, M, K, N, n0, n1) {
  const NB = 64; // w rows per block: 64 rows of K <= 896 floats stay in L2 while x streams by
  for (let nb = n0; nb < n1; nb += NB) {
    const nbEnd = Math.min(nb + NB, n1);
    for (let m = 0; m < M; m += 2) {
      const two = m + 1 < M;
      const xa = m * K;
      const xb = two ? xa + K : xa;
      let n = nb;
      for (; n + 4 <= nbEnd; n += 4) {
        const w0 = n * K;
        const w1 = w0 + K;
        const w2 = w1 + K;
        const w3 = w2 + K;
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0; // prettier-ignore
        for (let k = 0; k < K; k++) {
          const p = x[xa + k];
          const q = x[xb + k];
          const v0 = w[w0 + k];
          const v1 = w[w1 + k];
          const v2 = w[w2 + k];
          const v3 = w[w3 + k];
          a0 += p * v0;
          a1 += p * v1;
          a2 += p * v2;
          a3 += p * v3;
          b0 += q * v0;
          b1 += q * v1;
          b2 += q * v2;
          b3 += q * v3;
        }
        out[m * N + n] = a0;
        out[m * N + n + 1] = a1;
        out[m * N + n + 2] = a2;
        out[m * N + n + 3] = a3;
        if (two) {
          out[(m + 1) * N + n] = b0;
          out[(m + 1) * N + n + 1] = b1;
          out[(m + 1) * N + n + 2] = b2;
          out[(m + 1) * N + n + 3] = b3;
        }
      }
      for (; n < nbEnd; n++) {
        for (let r = m; r < (two ? m + 2 : m + 1); r++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += x[r * K + k] * w[n * K + k];
          out[r * N + n] = s;
        }
      }
    }
  }
}

if (!isMainThread) {
  const { x, w, out } = workerData;
  parentPort.on('message', ({ M, K, N, n0, n1 }) => {
    jsMatmulRange(new Float32Array(out), new Float32Array(x), new Float32Array(w), M, K, N, n0, n1);
    parentPort.postMessage('done');
  });
} else {
  await main();
}

// ----------------------------------------------------------------------------

async function main() {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const threads = Number(opt('--threads', '2'));
  const withJs = !args.includes('--no-js');
  const withKernels = args.includes('--kernels');
  const quantOnly = args.includes('--quant');

  let native, quant;
  try {
    native = await import('../dist/src/engine/native.js');
    quant = await import('../dist/src/formats/quant.js');
  } catch (e) {
    console.error(`cannot import dist/: run \`npx tsc -p tsconfig.json\` first (${e.message})`);
    process.exit(1);
  }
  const be = native.loadNativeBackend({ threads });
  if (quantOnly) return benchQuant(be, quant);

  const shapes = [
    [1, 576, 1536],
    [1, 576, 49152],
    [32, 576, 1536],
    [512, 576, 1536],
    [512, 896, 4864],
  ];
  const maxX = Math.max(...shapes.map(([M, K]) => M * K));
  const maxW = Math.max(...shapes.map(([, K, N]) => N * K));
  const maxO = Math.max(...shapes.map(([M, , N]) => M * N));
  // shared memory, so the JS workers and the addon read the very same arrays
  const sx = new SharedArrayBuffer(maxX * 4);
  const sw = new SharedArrayBuffer(maxW * 4);
  const so = new SharedArrayBuffer(maxO * 4);
  fillRandom(new Float32Array(sx), 1);
  fillRandom(new Float32Array(sw), 2);

  const workers = withJs
    ? Array.from(
        { length: threads },
        () => new Worker(new URL(import.meta.url), { workerData: { x: sx, w: sw, out: so } }),
      )
    : [];
  const jsMatmul = (M, K, N) =>
    Promise.all(
      workers.map((wk, i) => {
        const n0 = Math.floor((N * i) / workers.length);
        const n1 = Math.floor((N * (i + 1)) / workers.length);
        return new Promise((resolve) => {
          wk.once('message', resolve);
          wk.postMessage({ M, K, N, n0, n1 });
        });
      }),
    );

  console.log(`# ${be.name}`);
  console.log(
    `# ${os.cpus()[0]?.model ?? 'cpu'}, ${os.availableParallelism()} cores, Node ${process.version}, load ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  console.log(`# ${new Date().toISOString()}`);
  console.log('');
  console.log(
    '| M x K x N | native ms (median) | native GFLOP/s (median) | native GFLOP/s (best) | plain JS ms | plain JS GFLOP/s | native / JS |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|');

  if (withJs) {
    for (let i = 0; i < 3; i++) await jsMatmul(8, 64, 256); // JIT warm-up on a small shape
  }
  for (const [M, K, N] of shapes) {
    const x = new Float32Array(sx, 0, M * K);
    const w = new Float32Array(sw, 0, N * K);
    const out = new Float32Array(so, 0, M * N);
    const flop = 2 * M * K * N;
    const tn = await timeIt(() => be.matmul(out, x, w, M, K, N), 400, 200);
    let js = '| — | — | — |';
    if (withJs) {
      const check = Float32Array.from(out);
      // about one second per shape: enough for a median on the small ones, one run on the largest
      const tj = await timeIt(() => jsMatmul(M, K, N), 1000, 15, flop > 1e9 ? 0 : 1);
      const err = maxRelDiff(out, check);
      if (err > 1e-4) throw new Error(`plain JS and native disagree on ${M}x${K}x${N}: ${err}`);
      js = `| ${tj.median.toFixed(1)} | ${gflops(flop, tj.median)} | ${(tj.median / tn.median).toFixed(0)}x |`;
    }
    console.log(
      `| ${M}x${K}x${N} | ${tn.median.toFixed(3)} | ${gflops(flop, tn.median)} | ${gflops(flop, tn.best)} ${js}`,
    );
  }
  await Promise.all(workers.map((wk) => wk.terminate()));

  if (withKernels) {
    console.log('');
    await benchQuant(be, quant);

    console.log('');
    console.log('| kernel | shape | ms (median) | ms (best) |');
    console.log('|---|---|---:|---:|');
    const buf = (n, seed) => fillRandom(new Float32Array(n), seed);
    const row = async (name, shape, f) => {
      const t = await timeIt(f, 300, 300);
      console.log(`| ${name} | ${shape} | ${t.median.toFixed(3)} | ${t.best.toFixed(3)} |`);
    };
    for (const [T, S] of [
      [1, 512],
      [1, 8192],
      [512, 512],
    ]) {
      const [H, G, E] = [9, 3, 64];
      const q = buf(T * H * E, 3);
      const k = buf(S * G * E, 4);
      const v = buf(S * G * E, 5);
      const o = new Float32Array(T * H * E);
      await row('attention', `T=${T} S=${S} H=${H} G=${G} E=${E}`, () =>
        be.attention(o, q, k, v, T, S, H, G, E, 0.125, 0),
      );
    }
    {
      const n = 512 * 1536;
      const g = buf(n, 6);
      const u = buf(n, 7);
      const o = new Float32Array(n);
      for (const act of ['silu', 'gelu_tanh'])
        await row(`gatedAct ${act}`, `n=512x1536`, () => be.gatedAct(o, g, u, n, act));
    }
    {
      const x = buf(512 * 576, 8);
      const wt = buf(576, 9);
      const o = new Float32Array(512 * 576);
      await row('rmsnorm', 'M=512 D=576', () => be.rmsnorm(o, x, wt, 512, 576, 1e-5));
      await row('rmsnorm', 'M=1 D=576', () => be.rmsnorm(o, x, wt, 1, 576, 1e-5));
      const xr = buf(512 * 9 * 64, 10);
      const pos = Int32Array.from({ length: 512 }, (_, i) => i);
      const invFreq = Float32Array.from({ length: 32 }, (_, i) => 10000 ** (-i / 32));
      await row('rope', 'M=512 heads=9 E=64', () => be.rope(xr, 512, 9, 64, 64, pos, invFreq, 1));
    }
  }
}

/** The quantized matmul against fp32 on the same (dequantized) weights, per block type. */
async function benchQuant(be, quant) {
  console.log(
    '| type | M x K x N | fp32 matmul ms (median / best) | quantized ms (median / best) | weight bytes: fp32 / quantized | speed-up (median / best) |',
  );
  console.log('|---|---|---:|---:|---:|---:|');
  const { GgmlType } = quant;
  for (const [name, type] of [
    ['Q4_0', GgmlType.Q4_0],
    ['Q4_1', GgmlType.Q4_1],
    ['Q5_0', GgmlType.Q5_0],
    ['Q8_0', GgmlType.Q8_0],
    ['Q4_K', GgmlType.Q4_K],
    ['Q5_K', GgmlType.Q5_K],
    ['Q6_K', GgmlType.Q6_K],
  ]) {
    // Qwen2.5-0.5B's MLP down projection (4864 = 19 k-quant blocks), and a 1024-wide LM head over
    // its vocabulary: 622 MB of fp32, far beyond the caches
    for (const [M, K, N, activations] of [
      [1, 4864, 896, 'q8'],
      [1, 4864, 896, 'f32'],
      [1, 1024, 151936, 'q8'],
      [512, 4864, 896, 'f32'],
    ]) {
      const wq = randomBlocks(quant, type, N * K);
      const w = quant.dequantize(type, wq, N * K);
      const x = fillRandom(new Float32Array(M * K), 9);
      const out = new Float32Array(M * N);
      const budget = M === 1 ? 400 : 1500;
      const tf = await timeIt(() => be.matmul(out, x, w, M, K, N), budget, 200);
      const tq = await timeIt(
        () => be.matmulQuant(out, x, wq, type, M, K, N, undefined, activations),
        budget,
        200,
      );
      const both = (t) => `${t.median.toFixed(3)} / ${t.best.toFixed(3)}`;
      console.log(
        `| ${name} ${activations} | ${M}x${K}x${N} | ${both(tf)} | ${both(tq)} | ${(w.byteLength / 1e6).toFixed(0)} / ${(wq.length / 1e6).toFixed(0)} MB | ` +
          `${(tf.median / tq.median).toFixed(1)}x / ${(tf.best / tq.best).toFixed(1)}x |`,
      );
    }
  }
}

/** `n` values of random blocks of `type` with fp16 scales of 0.01 (d, and m or dmin
 * where the type has one; d of Q6_K is at byte 208), so no value is an fp16 infinity or NaN. */
function randomBlocks(quant, type, n) {
  const bytes = new Uint8Array(quant.ggmlByteLength(type, n));
  fillRandomBytes(bytes, type);
  const size = quant.ggmlTypeSize(type);
  const { Q4_1, Q5_1, Q4_K, Q5_K, Q6_K } = quant.GgmlType;
  const withMin = [Q4_1, Q5_1, Q4_K, Q5_K].includes(type);
  const halves = type === Q6_K ? [208] : withMin ? [0, 2] : [0];
  const h = quant.f32ToF16(0.01);
  for (let o = 0; o < bytes.length; o += size)
    for (const f of halves) {
      bytes[o + f] = h & 0xff;
      bytes[o + f + 1] = h >>> 8;
    }
  return bytes;
}

function fillRandomBytes(a, seed) {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < a.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = s & 0xff;
  }
}

function fillRandom(a, seed) {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

/**
 * Median and best milliseconds of f() over as many runs as fit in budgetMs (at least one, at most
 * maxRuns). On a shared machine the noise only ever adds time, so the best run is the steadier figure.
 */
async function timeIt(f, budgetMs, maxRuns, warmup = 2) {
  for (let i = 0; i < warmup; i++) await f();
  const times = [];
  const start = performance.now();
  while (times.length < maxRuns && (times.length === 0 || performance.now() - start < budgetMs)) {
    const t0 = performance.now();
    await f();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { median: times[times.length >> 1], best: times[0] };
}

function gflops(flop, ms) {
  const g = flop / ms / 1e6;
  return g >= 10 ? g.toFixed(0) : g.toFixed(2);
}

function maxRelDiff(a, b) {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}
