/**
 * Top-k sparse autoencoders (src/sae/): the backward pass against finite differences in float64,
 * the Top-k and JumpReLU forwards, training on synthetic data with a known dictionary, resume,
 * the SAELens layout (round trip, NumPy reference fixture, bad input) and CE-loss recovered on
 * the tiny llama fixture.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { loadBackend } from '../src/engine/select.js';
import { FormatError, OptionError, SteerguardError } from '../src/formats/errors.js';
import {
  readSafetensorsHeader,
  readSafetensorsTensorF32,
  writeSafetensors,
} from '../src/formats/safetensors.js';
import { Model } from '../src/model/model.js';
import { argmax, seededRandom } from '../src/model/sampling.js';
import { saeLoss, type SaeParams } from '../src/sae/loss.js';
import { ceLossRecovered, reconstructionQuality } from '../src/sae/quality.js';
import { Sae, topKIndices } from '../src/sae/sae.js';
import { loadSae, saveSae } from '../src/sae/saelens.js';
import { arraySource, chunkSource, storeSource } from '../src/sae/source.js';
import { SAE_LOCK_FILE, trainSae, type SaeTrainProgress } from '../src/sae/train.js';
import { cli } from './util/cli.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-sae-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const backend = loadBackend();

function gaussian(random: () => number): number {
  const u = Math.max(random(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
}

/** A plain float64 x·wᵀ + bias, the reference for the backend's product. */
function product64(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  M: number,
  K: number,
  N: number,
  bias: Float64Array,
): void {
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = bias[n];
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      out[m * N + n] = s;
    }
}

/**
 * Rows x = Σ c_j D[j] over `active` random atoms of a unit-norm dictionary D[dSae, dIn], with
 * coefficients in [1, 2]: data whose sparse code is known.
 */
function syntheticData(seed: number, dIn: number, atoms: number, active: number, rows: number) {
  const random = seededRandom(seed);
  const dict = new Float32Array(atoms * dIn);
  for (let j = 0; j < atoms; j++) {
    let n = 0;
    for (let i = 0; i < dIn; i++) n += (dict[j * dIn + i] = gaussian(random)) ** 2;
    for (let i = 0; i < dIn; i++) dict[j * dIn + i] /= Math.sqrt(n);
  }
  const x = new Float32Array(rows * dIn);
  for (let r = 0; r < rows; r++)
    for (let a = 0; a < active; a++) {
      const j = Math.floor(random() * atoms);
      const c = 1 + random();
      for (let i = 0; i < dIn; i++) x[r * dIn + i] += c * dict[j * dIn + i];
    }
  return { dict, x };
}

describe('SAE loss and backward', () => {
  const dIn = 6;
  const dSae = 10;
  const rows = 5;
  const random = seededRandom(3);
  const rand = (n: number, s = 1) => Float64Array.from({ length: n }, () => s * gaussian(random));
  const params: SaeParams<Float64Array> = {
    wEnc: rand(dSae * dIn),
    bEnc: rand(dSae, 0.3),
    wDec: rand(dSae * dIn),
    bDec: rand(dIn, 0.5),
  };
  const x = rand(rows * dIn, 2);
  // Half the latents dead, so the AuxK term and its gradient take part.
  const dead = Uint8Array.from({ length: dSae }, (_, j) => (j % 2 === 0 ? 1 : 0));
  const opts = { dIn, dSae, k: 3, kAux: 2, auxCoefficient: 0.5, dead };

  /**
   * The same loss written densely and plainly (all latents, full matrices), with the AuxK target
   * x - x_hat optionally held at given values: the backward treats that target as a constant,
   * so its finite differences are taken with the target fixed.
   */
  function denseLoss(
    p: SaeParams<Float64Array>,
    fixedResidual?: Float64Array,
  ): { loss: number; residual: Float64Array } {
    const residual = new Float64Array(rows * dIn);
    let loss = 0;
    for (let r = 0; r < rows; r++) {
      const z = new Float64Array(dSae);
      for (let j = 0; j < dSae; j++) {
        z[j] = p.bEnc[j];
        for (let i = 0; i < dIn; i++) z[j] += p.wEnc[j * dIn + i] * (x[r * dIn + i] - p.bDec[i]);
      }
      const order = [...z.keys()].sort((a, b) => z[b] - z[a]);
      const f = new Float64Array(dSae);
      for (const j of order.slice(0, 3)) f[j] = Math.max(0, z[j]);
      const deadOrder = order.filter((j) => dead[j] === 1).slice(0, 2);
      const a = new Float64Array(dSae);
      for (const j of deadOrder) a[j] = Math.max(0, z[j]);
      for (let i = 0; i < dIn; i++) {
        let xHat = p.bDec[i];
        let eHat = 0;
        for (let j = 0; j < dSae; j++) {
          xHat += f[j] * p.wDec[j * dIn + i];
          eHat += a[j] * p.wDec[j * dIn + i];
        }
        const res = x[r * dIn + i] - xHat;
        residual[r * dIn + i] = res;
        const target = fixedResidual ? fixedResidual[r * dIn + i] : res;
        loss += (res * res + 0.5 * (eHat - target) ** 2) / rows;
      }
    }
    return { loss, residual };
  }

  test('matches central finite differences in float64, for every parameter', () => {
    const zeros = (): SaeParams<Float64Array> => ({
      wEnc: new Float64Array(dSae * dIn),
      bEnc: new Float64Array(dSae),
      wDec: new Float64Array(dSae * dIn),
      bDec: new Float64Array(dIn),
    });
    const grads = zeros();
    const got = saeLoss(params, x, rows, opts, product64, grads);
    assert.ok(got.aux > 0, 'the auxiliary loss takes part');
    const { loss, residual } = denseLoss(params);
    assert.ok(Math.abs(got.loss - loss) < 1e-12 * Math.max(1, loss), `loss ${got.loss} vs dense ${loss}`);
    const h = 1e-6;
    let checked = 0;
    for (const name of ['wEnc', 'bEnc', 'wDec', 'bDec'] as const) {
      const p = params[name];
      for (let i = 0; i < p.length; i++) {
        const keep = p[i];
        p[i] = keep + h;
        const up = denseLoss(params, residual).loss;
        p[i] = keep - h;
        const down = denseLoss(params, residual).loss;
        p[i] = keep;
        const numeric = (up - down) / (2 * h);
        assert.ok(
          Math.abs(numeric - grads[name][i]) <= 1e-6 * Math.max(1, Math.abs(numeric)),
          `${name}[${i}]: backward ${grads[name][i]}, finite difference ${numeric}`,
        );
        checked++;
      }
    }
    assert.equal(checked, 2 * dSae * dIn + dSae + dIn);
  });

  test('Top-k keeps exactly k latents, the largest, and ReLU drops non-positive ones', () => {
    const z = Float32Array.from([0.5, -1, 3, 3, 2, -0.1, 7, 0]);
    const out = new Int32Array(3);
    topKIndices(z, 3, out);
    assert.deepEqual([...out], [6, 2, 3]);
    const sae = new Sae(
      {
        architecture: 'topk',
        dIn: 1,
        dSae: 8,
        k: 3,
        hookName: 'blocks.0.hook_resid_post',
        hookLayer: 0,
        modelName: '',
        applyBDecToInput: true,
      },
      {
        wEnc: new Float32Array(8),
        bEnc: new Float32Array(8),
        wDec: new Float32Array(8),
        bDec: new Float32Array(1),
      },
    );
    const codes = sae.activate(z, 1);
    assert.deepEqual([...codes.latents], [6, 2, 3]);
    const neg = sae.activate(Float32Array.from([-3, -2, 1, -5, -6, -7, -8, -9]), 1);
    assert.deepEqual([...neg.latents], [2], 'of the top 3, only the positive one is active');
    const random2 = seededRandom(9);
    const many = Float32Array.from({ length: 8 * 50 }, () => 1 + random2());
    const codes50 = sae.activate(many, 50);
    for (let r = 0; r < 50; r++) assert.equal(codes50.offsets[r + 1] - codes50.offsets[r], 3);
  });
});

describe('explained variance with outlier rows', () => {
  test('typical rows are measured apart from the few with a norm far above the median', async () => {
    // Latents +e_i and -e_i with k = 1: x_hat keeps the row's largest coordinate only.
    const dIn = 4;
    const w = new Float32Array(2 * dIn * dIn);
    for (let i = 0; i < dIn; i++) {
      w[i * dIn + i] = 1;
      w[(dIn + i) * dIn + i] = -1;
    }
    const sae = new Sae(
      {
        architecture: 'topk',
        dIn,
        dSae: 2 * dIn,
        k: 1,
        hookName: 'blocks.0.hook_resid_post',
        hookLayer: 0,
        modelName: 'test',
        applyBDecToInput: true,
      },
      { wEnc: w, bEnc: new Float32Array(2 * dIn), wDec: w.slice(), bDec: new Float32Array(dIn) },
    );
    // 200 rows of norm ~1, and every 50th row a "massive activation" of 1000 on dimension 0.
    const random = seededRandom(3);
    const rows = 200;
    const x = Float32Array.from({ length: rows * dIn }, (_, i) =>
      i % (50 * dIn) === 0 ? 1000 : random() * 2 - 1,
    );
    const q = await reconstructionQuality(sae, backend, arraySource(x, dIn, 'x', 7));
    // The same figures straight from their definitions, in double.
    const xHat = sae.decode(sae.encode(backend, x, rows));
    const norm = (r: number) => Math.hypot(...x.subarray(r * dIn, (r + 1) * dIn));
    const norms = Array.from({ length: rows }, (_, r) => norm(r)).sort((a, b) => a - b);
    const cut = 10 * ((norms[99] + norms[100]) / 2);
    const ev = (keep: (r: number) => boolean) => {
      const kept = Array.from({ length: rows }, (_, r) => r).filter(keep);
      const mean = Array.from(
        { length: dIn },
        (_, i) => kept.reduce((a, r) => a + x[r * dIn + i], 0) / kept.length,
      );
      let err = 0;
      let scatter = 0;
      for (const r of kept)
        for (let i = 0; i < dIn; i++) {
          err += (x[r * dIn + i] - xHat[r * dIn + i]) ** 2;
          scatter += (x[r * dIn + i] - mean[i]) ** 2;
        }
      return { n: kept.length, ev: 1 - err / scatter, err, scatter, mean };
    };
    const all = ev(() => true);
    const typical = ev((r) => norm(r) <= cut);
    assert.equal(q.outliers.rows, 4);
    assert.equal(q.typical.rows, 196);
    assert.ok(Math.abs(q.outliers.normAbove - cut) < 1e-9);
    assert.ok(Math.abs(q.explainedVariance - all.ev) < 1e-9);
    assert.ok(Math.abs(q.typical.explainedVariance - typical.ev) < 1e-9);
    assert.ok(Math.abs(q.typical.mse - typical.err / 196) < 1e-9);
    // The outliers' scatter about the mean of all rows, over the whole scatter.
    let outlierScatter = 0;
    for (let r = 0; r < rows; r++)
      if (norm(r) > cut) for (let i = 0; i < dIn; i++) outlierScatter += (x[r * dIn + i] - all.mean[i]) ** 2;
    assert.ok(Math.abs(q.outliers.varianceShare - outlierScatter / all.scatter) < 1e-9);
    // What the split is for: four rows carry the whole figure, the typical ones are far worse.
    assert.ok(q.outliers.varianceShare > 0.95 && q.explainedVariance > 0.99, JSON.stringify(q));
    assert.ok(q.typical.explainedVariance < 0.6, JSON.stringify(q));
  });
});

describe('SAE training', () => {
  const dIn = 16;
  const atoms = 32;
  const { dict, x } = syntheticData(1, dIn, atoms, 2, 6000);
  const source = arraySource(x, dIn, 'synthetic', 500);
  const base = {
    dSae: 64,
    k: 2, // the data's own sparsity
    batchSize: 256,
    lr: 3e-3,
    deadTokens: 2048,
    hookName: 'blocks.0.hook_resid_post',
    hookLayer: 0,
    seed: 5,
  } as const;

  test('loss falls, decoder rows stay unit norm, and most of the known dictionary is recovered', async () => {
    const seen: SaeTrainProgress[] = [];
    const { sae } = await trainSae(backend, source, { ...base, steps: 300, onProgress: (p) => seen.push(p) });
    assert.equal(seen.length, 300);
    const first = seen.slice(0, 5).reduce((a, p) => a + p.mse, 0) / 5;
    const lastMse = seen.slice(-5).reduce((a, p) => a + p.mse, 0) / 5;
    assert.ok(lastMse < first / 5, `mse ${first} -> ${lastMse}`);
    assert.ok(seen.every((p) => p.l0 <= base.k));
    const { wDec } = sae.weights;
    for (let j = 0; j < base.dSae; j++) {
      let n = 0;
      for (let i = 0; i < dIn; i++) n += wDec[j * dIn + i] ** 2;
      assert.ok(Math.abs(Math.sqrt(n) - 1) < 1e-5, `row ${j} norm ${Math.sqrt(n)}`);
    }
    // An atom counts as recovered when some decoder row points the same way (cosine > 0.9).
    let recovered = 0;
    for (let a = 0; a < atoms; a++) {
      let best = 0;
      for (let j = 0; j < base.dSae; j++) {
        let c = 0;
        for (let i = 0; i < dIn; i++) c += dict[a * dIn + i] * wDec[j * dIn + i];
        best = Math.max(best, c);
      }
      if (best > 0.9) recovered++;
    }
    assert.ok(recovered >= 0.8 * atoms, `${recovered} of ${atoms} atoms recovered`);
    const heldOut = syntheticData(1, dIn, atoms, 2, 7000).x.subarray(6000 * dIn);
    const q = await reconstructionQuality(sae, backend, arraySource(heldOut, dIn));
    assert.equal(q.rows, 1000);
    assert.ok(q.explainedVariance > 0.9, `explained variance ${q.explainedVariance}`);
    assert.ok(q.l0 <= base.k && q.l0 > 1);
  });

  test('a run stopped at a checkpoint and resumed ends with the same weights as an uninterrupted one', async () => {
    const opts = { ...base, steps: 40, checkpointEvery: 7 };
    const whole = await trainSae(backend, source, { ...opts, checkpointDir: path.join(tmp, 'whole') });
    const dir = path.join(tmp, 'resumed');
    const part = await trainSae(backend, source, {
      ...opts,
      checkpointDir: dir,
      stopAfterStep: (s) => s === 23,
    });
    assert.equal(part.step, 23);
    // A plain iterator of chunks of another size, re-opened on resume, reads the same rows.
    const iterated = chunkSource(dIn, 'synthetic', function* () {
      for (let r = 0; r < 6000; r += 333) yield x.subarray(r * dIn, Math.min(6000, r + 333) * dIn);
    });
    const rest = await trainSae(backend, iterated, { ...opts, checkpointDir: dir });
    assert.ok(rest.resumed);
    assert.equal(rest.stepsThisRun, 17);
    for (const name of ['wEnc', 'bEnc', 'wDec', 'bDec'] as const)
      assert.deepEqual(rest.sae.weights[name], whole.sae.weights[name], name);
    // Another live process training in the folder holds it.
    writeFileSync(
      path.join(dir, SAE_LOCK_FILE),
      JSON.stringify({ pid: process.ppid, host: hostname(), token: 'someone-else' }),
    );
    await assert.rejects(trainSae(backend, source, { ...opts, checkpointDir: dir }), SteerguardError);
    rmSync(path.join(dir, SAE_LOCK_FILE));
    await assert.rejects(
      trainSae(backend, source, { ...opts, lr: 1e-3, checkpointDir: dir }),
      (e: Error) => e instanceof OptionError && /different settings \(lr\)/.test(e.message),
    );
  });

  test('bad settings and non-finite data are errors', async () => {
    await assert.rejects(
      trainSae(backend, source, { ...base, k: 65, steps: 1 }),
      /k = 65 is larger than the dictionary/,
    );
    const nan = x.slice(0, 512 * dIn);
    nan[300 * dIn + 5] = NaN; // in the second batch
    await assert.rejects(
      trainSae(backend, arraySource(nan, dIn), { ...base, steps: 3, bDecInit: 'zero' }),
      /the loss is NaN at step 2/,
    );
  });
});

describe('SAELens layout', () => {
  const sae = (() => {
    const dIn = 5;
    const dSae = 12;
    const random = seededRandom(11);
    const r = (n: number) => Float32Array.from({ length: n }, () => gaussian(random));
    return new Sae(
      {
        architecture: 'topk',
        dIn,
        dSae,
        k: 3,
        hookName: 'blocks.1.hook_resid_post',
        hookLayer: 1,
        modelName: 'tiny',
        applyBDecToInput: true,
      },
      { wEnc: r(dSae * dIn), bEnc: r(dSae), wDec: r(dSae * dIn), bDec: r(dIn) },
    );
  })();

  test('save then load gives the same SAE, with SAELens names and shapes', () => {
    const dir = path.join(tmp, 'roundtrip');
    saveSae(sae, dir);
    const cfg = JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg.architecture, 'topk');
    assert.equal(cfg.d_in, 5);
    assert.equal(cfg.d_sae, 12);
    assert.equal(cfg.k, 3);
    assert.deepEqual(cfg.activation_fn_kwargs, { k: 3 });
    assert.equal(cfg.hook_name, 'blocks.1.hook_resid_post');
    const header = readSafetensorsHeader(path.join(dir, 'sae_weights.safetensors'));
    assert.deepEqual(header.tensors.get('W_enc')?.shape, [5, 12]);
    assert.deepEqual(header.tensors.get('W_dec')?.shape, [12, 5]);
    // W_enc is stored [d_in, d_sae]: element [i, j] is latent j's encoder weight on input i.
    const wEnc = readSafetensorsTensorF32(header.tensors.get('W_enc')!);
    assert.equal(wEnc[2 * 12 + 7], sae.weights.wEnc[7 * 5 + 2]);
    const back = loadSae(dir);
    assert.deepEqual(back.config, sae.config);
    for (const name of ['wEnc', 'bEnc', 'wDec', 'bDec'] as const)
      assert.deepEqual(back.weights[name], sae.weights[name]);
  });

  test('the committed fixture: names, shapes and the NumPy Top-k / JumpReLU forwards match', () => {
    // test/fixtures/sae/ holds a topk and a jumprelu SAE, inputs, and the outputs
    // scripts/reference/check_sae_layout.py computed from them with NumPy.
    for (const kind of ['topk', 'jumprelu']) {
      const dir = path.join(FIXTURES, 'sae', kind);
      const loaded = loadSae(dir);
      assert.equal(loaded.config.architecture, kind);
      const io = readSafetensorsHeader(path.join(FIXTURES, 'sae', `${kind}-io.safetensors`));
      const input = readSafetensorsTensorF32(io.tensors.get('x')!);
      const want = readSafetensorsTensorF32(io.tensors.get('x_hat_numpy')!);
      const rows = input.length / loaded.config.dIn;
      const got = loaded.reconstruct(backend, input, rows);
      for (let i = 0; i < got.length; i++)
        assert.ok(Math.abs(got[i] - want[i]) < 1e-4, `${kind} x_hat[${i}]: ${got[i]} vs numpy ${want[i]}`);
    }
  });

  test('bad input: missing field, wrong shape, unknown architecture, unsupported options', () => {
    const make = (name: string, edit: (cfg: Record<string, unknown>) => void): string => {
      const dir = path.join(tmp, `bad-${name}`);
      saveSae(sae, dir);
      const cfgPath = path.join(dir, 'cfg.json');
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
      edit(cfg);
      writeFileSync(cfgPath, JSON.stringify(cfg));
      return dir;
    };
    const fails = (dir: string, file: string, field: string, re: RegExp) =>
      assert.throws(
        () => loadSae(dir),
        (e: Error) =>
          e instanceof FormatError && e.file.endsWith(file) && e.field === field && re.test(e.problem),
      );
    fails(
      make('no-din', (c) => delete c.d_in),
      'cfg.json',
      'd_in',
      /missing/,
    );
    fails(
      make('no-hook', (c) => delete c.hook_name),
      'cfg.json',
      'hook_name',
      /missing/,
    );
    fails(
      make('no-k', (c) => {
        delete c.k;
        delete c.activation_fn_kwargs;
      }),
      'cfg.json',
      'k',
      /missing/,
    );
    fails(
      make('arch', (c) => (c.architecture = 'gated')),
      'cfg.json',
      'architecture',
      /unsupported "gated"/,
    );
    fails(
      make('norm', (c) => (c.normalize_activations = 'layer_norm')),
      'cfg.json',
      'normalize_activations',
      /not supported/,
    );
    fails(
      make('big-k', (c) => (c.k = 13)),
      'cfg.json',
      'k',
      /larger than d_sae/,
    );
    fails(
      make('shape', (c) => (c.d_sae = 11)),
      'sae_weights.safetensors',
      'W_enc',
      /shape \[5, 12\], expected \[5, 11\]/,
    );
    const noThreshold = make('jump', (c) => (c.architecture = 'jumprelu'));
    fails(noThreshold, 'sae_weights.safetensors', 'threshold', /missing/);
    // SAELens 6's nested metadata is read too.
    const nested = make('nested', (c) => {
      c.metadata = { hook_name: c.hook_name, model_name: 'm' };
      delete c.hook_name;
      delete c.hook_layer;
    });
    assert.equal(loadSae(nested).config.hookName, 'blocks.1.hook_resid_post');
  });
});

describe('CE-loss recovered (tiny llama)', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const D = model.config.dModel;
  const hookName = 'blocks.0.hook_resid_post';
  // The model's own greedy continuations: text it predicts better than a uniform guess, which is
  // what zero ablation gives (random tokens would score worse than uniform on a random model).
  const greedy = (start: number[], length: number): number[] => {
    const seq = [...start];
    while (seq.length < length) seq.push(argmax(model.run([{ tokens: seq }]).logits[0]));
    return seq;
  };
  const prompts = [greedy([1, 5], 7), greedy([4], 8)];
  /**
   * Latents +e_i and -e_i, b_dec = 0: z = [x, -x], whose positive entries (at most D) are all kept
   * with k = D, so x_hat = x exactly; with k = 1 only the largest coordinate survives.
   */
  const identity = (k: number): Sae => {
    const dSae = 2 * D;
    const w = new Float32Array(dSae * D);
    for (let i = 0; i < D; i++) {
      w[i * D + i] = 1;
      w[(D + i) * D + i] = -1;
    }
    return new Sae(
      {
        architecture: 'topk',
        dIn: D,
        dSae,
        k,
        hookName,
        hookLayer: 0,
        modelName: 'tiny',
        applyBDecToInput: true,
      },
      { wEnc: w, bEnc: new Float32Array(dSae), wDec: w.slice(), bDec: new Float32Array(D) },
    );
  };

  test('an identity SAE recovers ~100%, a crippled one much less', () => {
    const full = ceLossRecovered(model, identity(D), prompts);
    assert.equal(full.tokens, 13);
    assert.ok(
      full.ceZeroAblation > full.ceClean,
      `zero ablation ${full.ceZeroAblation} vs clean ${full.ceClean}`,
    );
    assert.ok(Math.abs(full.recovered - 1) < 1e-3, `recovered ${full.recovered}`);
    const one = ceLossRecovered(model, identity(1), prompts);
    assert.ok(one.recovered < 0.9, `k = 1 recovers ${one.recovered}`);
  });

  test("an SAE whose width is not the model's is an error", () => {
    const narrow = new Sae(
      {
        architecture: 'topk',
        dIn: D + 1,
        dSae: 4,
        k: 1,
        hookName,
        hookLayer: 0,
        modelName: '',
        applyBDecToInput: true,
      },
      {
        wEnc: new Float32Array(4 * (D + 1)),
        bEnc: new Float32Array(4),
        wDec: new Float32Array(4 * (D + 1)),
        bDec: new Float32Array(D + 1),
      },
    );
    assert.throws(() => ceLossRecovered(model, narrow, prompts), /d_model/);
  });

  test('activations from the store stream into training', async () => {
    const file = path.join(tmp, 'acts.safetensors');
    const random = seededRandom(2);
    const x = Float32Array.from({ length: 300 * D }, () => gaussian(random));
    writeSafetensors(file, [{ name: hookName, dtype: 'F16', shape: [300, D], data: x }]);
    const src = storeSource(file, hookName, { chunkRows: 64 });
    assert.equal(src.rows, 300);
    const { sae } = await trainSae(backend, src, {
      dSae: 2 * D,
      k: 4,
      steps: 5,
      batchSize: 100,
      hookName,
      hookLayer: 0,
    });
    assert.equal(sae.config.dIn, D);
    assert.throws(
      () => storeSource(file, 'blocks.3.hook_resid_post'),
      (e: Error) => e instanceof FormatError && /no such tensor/.test(e.message),
    );
  });

  test("an all-token file's first token per prompt can be left out, from any starting row", async () => {
    const file = path.join(tmp, 'acts-offsets.safetensors');
    const width = 2;
    const x = Float32Array.from({ length: 10 * width }, (_, i) => i);
    const offsets = Int32Array.from([0, 3, 4, 8, 10]);
    writeSafetensors(file, [
      { name: hookName, dtype: 'F32', shape: [10, width], data: x },
      { name: 'offsets', dtype: 'I32', shape: [5], data: offsets },
    ]);
    const keptRows = [1, 2, 5, 6, 7, 9];
    const src = storeSource(file, hookName, { chunkRows: 2, skipFirstToken: true });
    assert.equal(src.rows, keptRows.length);
    for (let start = 0; start <= keptRows.length; start++) {
      const got: number[] = [];
      for await (const c of src.chunks(start))
        for (let i = 0; i < c.length; i += width) got.push(c[i] / width);
      assert.deepEqual(got, keptRows.slice(start), `from kept row ${start}`);
    }
    const plain = path.join(tmp, 'acts-no-offsets.safetensors');
    writeSafetensors(plain, [{ name: hookName, dtype: 'F32', shape: [10, width], data: x }]);
    assert.throws(() => storeSource(plain, hookName, { skipFirstToken: true }), /offsets: missing/);
  });

  test('CE recovered leaving the first token alone: identity still ~100%, nothing exactly 0', () => {
    const full = ceLossRecovered(model, identity(D), prompts);
    const r = ceLossRecovered(model, identity(D), prompts, true);
    assert.ok(Math.abs(r.recovered - 1) < 1e-3, `recovered ${r.recovered}`);
    const one = ceLossRecovered(model, identity(1), prompts, true);
    assert.ok(one.recovered < 0.9, `k = 1 recovers ${one.recovered}`);
    // An SAE whose every reconstruction is 0 is zero ablation, so it recovers exactly 0, provided
    // the splice and the ablation leave the same positions alone.
    const id = identity(D);
    const nothing = new Sae(id.config, { ...id.weights, wDec: new Float32Array(id.weights.wDec.length) });
    for (const skip of [false, true]) {
      const r0 = ceLossRecovered(model, nothing, prompts, skip);
      assert.ok(Math.abs(r0.recovered) < 1e-6, `skipFirstToken ${skip}: recovered ${r0.recovered}`);
    }
    assert.notEqual(r.ceZeroAblation, full.ceZeroAblation, 'zero ablation spares position 0');
  });

  test('the CLI trains, resumes, saves SAELens files and evaluates', () => {
    const acts = path.join(tmp, 'cli-acts.safetensors');
    const seqs = Array.from({ length: 12 }, (_, i) => greedy([1 + i], 10));
    const { cache } = model.run(
      seqs.map((t) => ({ tokens: t })),
      { cache: { names: [hookName], positions: 'all' }, logits: 'none' },
    );
    const rows = cache.get(hookName)!;
    const all = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
    rows.reduce((off, r) => (all.set(r, off), off + r.length), 0);
    writeSafetensors(acts, [{ name: hookName, dtype: 'F32', shape: [all.length / D, D], data: all }]);
    const out = path.join(tmp, 'cli-sae');
    const train = (steps: number) =>
      cli([
        'sae',
        'train',
        '--activations',
        acts,
        '--layer',
        '0',
        '--expansion',
        '4',
        '--k',
        '8',
        '--steps',
        String(steps),
        '--batch-size',
        '40',
        '--checkpoint-every',
        '5',
        '--lr',
        '0.01',
        '--out',
        out,
        '--json',
      ]);
    const first = train(10);
    assert.equal(first.code, 0, first.stderr);
    const second = train(30);
    assert.equal(second.code, 0, second.stderr);
    const report = JSON.parse(second.stdout) as {
      step: number;
      stepsThisRun: number;
      resumed: boolean;
      dSae: number;
    };
    assert.deepEqual([report.step, report.stepsThisRun, report.resumed, report.dSae], [30, 20, true, 4 * D]);
    assert.equal(loadSae(out).config.k, 8);

    const prompts = path.join(tmp, 'held-out.jsonl');
    writeFileSync(
      prompts,
      seqs
        .slice(0, 3)
        .map((t) => JSON.stringify({ text: t.join(' ') }))
        .join('\n') + '\n',
    );
    const tiny = path.join(FIXTURES, 'tiny', 'llama');
    const ev = cli([
      'sae',
      'eval',
      '--sae',
      out,
      '--model',
      tiny,
      '--prompts',
      prompts,
      '--token-ids',
      '--layer',
      '0',
      '--json',
    ]);
    assert.equal(ev.code, 0, ev.stderr);
    const q = JSON.parse(ev.stdout) as {
      rows: number;
      explainedVariance: number;
      l0: number;
      ce: { recovered: number };
    };
    assert.equal(q.rows, 27, "each prompt's first token left out");
    assert.ok(q.explainedVariance > 0.5 && q.l0 <= 8, JSON.stringify(q));
    assert.ok(Number.isFinite(q.ce.recovered));
    const wrongLayer = cli([
      'sae',
      'eval',
      '--sae',
      out,
      '--model',
      tiny,
      '--prompts',
      prompts,
      '--token-ids',
      '--layer',
      '1',
    ]);
    assert.equal(wrongLayer.code, 2, wrongLayer.stderr);
    assert.match(wrongLayer.stderr, /reads blocks\.0\.hook_resid_post/);
    const bigK = cli([
      'sae',
      'train',
      '--activations',
      acts,
      '--layer',
      '0',
      '--expansion',
      '1',
      '--k',
      String(D + 1),
      '--steps',
      '1',
      '--out',
      path.join(tmp, 'k'),
    ]);
    assert.notEqual(bigK.code, 0);
    assert.match(bigK.stderr, /larger than the dictionary/);
    const noHook = cli([
      'sae',
      'train',
      '--activations',
      acts,
      '--layer',
      '1',
      '--steps',
      '1',
      '--out',
      path.join(tmp, 'n'),
    ]);
    assert.match(noHook.stderr, /blocks\.1\.hook_resid_post: no such tensor/);
  });
});
