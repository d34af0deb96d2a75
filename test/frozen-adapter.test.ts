/**
 * Training with frozen adapters on (src/training/train.ts `frozenAdapters`, the mechanism of the
 * security-vector defence): the trainable adapter's gradient with a frozen adapter merged in
 * equals central differences of the loss with both adapters applied unmerged (fp64), the frozen
 * adapter is never changed, a checkpoint is resumed only with the same frozen adapters, and an
 * adapter trained with a frozen one that already fits the data learns less of that data than
 * one trained without it (the defence's effect, on the tiny llama).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadBackend } from '../src/engine/select.js';
import { OptionError } from '../src/formats/errors.js';
import type { ModelConfig } from '../src/model/config.js';
import { loadModelFiles } from '../src/model/load.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { type TrainingSequence, loraLoss, loraLossAndGradients } from '../src/training/backward.js';
import { F64_KERNELS, backendKernels } from '../src/training/kernels.js';
import { LORA_TARGETS, type LoraAdapter, createLora, loraScale } from '../src/training/lora.js';
import { type LoraTrainOptions, trainLora, withFrozenAdapters } from '../src/training/train.js';
import { FIXTURES, relErr } from './util/fixtures.js';

const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-frozen-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

function sequence(cfg: ModelConfig, seed: number, length = 12): TrainingSequence {
  const random = seededRandom(seed);
  const tokens = Array.from({ length }, () => Math.floor(random() * cfg.vocabSize));
  return { tokens, answer: tokens.map((_, t) => (t >= 5 && t <= 8) || t === 10) };
}

/** An adapter on every target with random A and B (B non-zero). */
function randomAdapter<A extends Float32Array | Float64Array>(
  cfg: ModelConfig,
  o: { rank: number; alpha: number; seed: number },
  alloc: (n: number) => A,
): LoraAdapter<A> {
  const adapter = createLora(cfg, { ...o, targets: LORA_TARGETS }, alloc);
  const random = seededRandom(o.seed + 1);
  for (const layer of adapter.layers)
    for (const t of LORA_TARGETS) {
      const b = layer[t]!.b;
      for (let i = 0; i < b.length; i++) b[i] = (2 * random() - 1) * 0.2;
    }
  return adapter;
}

/**
 * Both adapters as one of rank rF + rT and scale 1, applied unmerged: A stacks their rows, B
 * their columns times each one's alpha/r. Its output is frozen's plus trainable's.
 */
function combined(
  frozen: LoraAdapter<Float32Array>,
  trainable: LoraAdapter<Float64Array>,
): LoraAdapter<Float64Array> {
  const rank = frozen.rank + trainable.rank;
  const sf = loraScale(frozen);
  const st = loraScale(trainable);
  const layers = frozen.layers.map((lf, l) =>
    Object.fromEntries(
      LORA_TARGETS.map((t) => {
        const f = lf[t]!;
        const tr = trainable.layers[l][t]!;
        const a = Float64Array.from([...f.a, ...tr.a]);
        const out = f.b.length / frozen.rank;
        const b = new Float64Array(out * rank);
        for (let o = 0; o < out; o++) {
          for (let r = 0; r < frozen.rank; r++) b[o * rank + r] = sf * f.b[o * frozen.rank + r];
          for (let r = 0; r < trainable.rank; r++)
            b[o * rank + frozen.rank + r] = st * tr.b[o * trainable.rank + r];
        }
        return [t, { a, b }];
      }),
    ),
  );
  return { rank, alpha: rank, targets: LORA_TARGETS, layers };
}

for (const arch of ['llama', 'qwen2', 'gemma3']) {
  describe(`frozen adapters on the tiny ${arch}`, () => {
    const { config: cfg, weights } = loadModelFiles(path.join(FIXTURES, 'tiny', arch), { weights: 'f32' });
    const frozen = randomAdapter(cfg, { rank: 3, alpha: 5, seed: 11 }, (n) => new Float32Array(n));
    const seqs = [sequence(cfg, 5)];

    test("the trainable adapter's gradient equals central differences with the frozen one on", () => {
      const trainable = randomAdapter(cfg, { rank: 2, alpha: 4, seed: 21 }, (n) => new Float64Array(n));
      const merged = withFrozenAdapters(cfg, weights, [frozen]);
      const { loss, grads } = loraLossAndGradients(cfg, merged, trainable, seqs, F64_KERNELS);
      const unmerged = () => loraLoss(cfg, weights, combined(frozen, trainable), seqs, F64_KERNELS);
      assert.ok(Math.abs(loss - unmerged()) <= 1e-6 * Math.abs(loss), `loss ${loss} vs ${unmerged()}`);
      // ... and differs from the loss without the frozen adapter (it is really on).
      assert.ok(Math.abs(loss - loraLoss(cfg, weights, trainable, seqs, F64_KERNELS)) > 1e-3);
      const step = 1e-5;
      let worst = 0;
      for (const t of LORA_TARGETS)
        for (const which of ['a', 'b'] as const) {
          const p = trainable.layers[1][t]![which];
          for (const i of [0, p.length - 1]) {
            const keep = p[i];
            p[i] = keep + step;
            const up = unmerged();
            p[i] = keep - step;
            const down = unmerged();
            p[i] = keep;
            const numeric = (up - down) / (2 * step);
            const analytic = grads[1][t]![which][i];
            const err = Math.abs(analytic - numeric);
            worst = Math.max(worst, err / (Math.abs(numeric) + 1e-12));
            assert.ok(
              err <= 1e-7 + 1e-4 * Math.abs(numeric),
              `${t}.${which}[${i}]: ${analytic} vs ${numeric}`,
            );
          }
        }
      assert.ok(worst < 1e-4, `worst relative error ${worst}`);
    });

    test("the merged forward equals the model's with both adapters on (inference, fp32)", async () => {
      const trainable = randomAdapter(cfg, { rank: 2, alpha: 4, seed: 31 }, (n) => new Float32Array(n));
      const kernels = backendKernels(loadBackend());
      const merged = withFrozenAdapters(cfg, weights, [frozen]);
      const training = loraLoss(cfg, merged, trainable, seqs, kernels);
      const model = await Model.load(path.join(FIXTURES, 'tiny', arch), { weights: 'f32' });
      model.addAdapter(frozen);
      model.addAdapter(trainable);
      const s = seqs[0];
      const { logits } = model.run([{ tokens: s.tokens }], { logits: 'all' });
      const V = cfg.vocabSize;
      let sum = 0;
      let n = 0;
      for (let t = 1; t < s.tokens.length; t++) {
        if (!s.answer[t]) continue;
        const row = logits[0].subarray((t - 1) * V, t * V);
        let max = -Infinity;
        for (const x of row) max = Math.max(max, x);
        let z = 0;
        for (const x of row) z += Math.exp(x - max);
        sum += max + Math.log(z) - row[s.tokens[t]];
        n++;
      }
      assert.ok(relErr(Float64Array.of(training), Float64Array.of(sum / n)) < 1e-5);
    });
  });
}

describe('trainLora with a frozen adapter (tiny llama)', () => {
  const { config: cfg, weights } = loadModelFiles(path.join(FIXTURES, 'tiny', 'llama'), { weights: 'f32' });
  const kernels = backendKernels(loadBackend());
  const data = [sequence(cfg, 1), sequence(cfg, 2), sequence(cfg, 3), sequence(cfg, 4)];
  const BASE: LoraTrainOptions = { targets: LORA_TARGETS, rank: 4, alpha: 8, epochs: 10, lr: 1e-2, batch: 4 };
  const meanLoss = (a: LoraAdapter<Float32Array>) => loraLoss(cfg, weights, a, data, kernels);

  test('the frozen adapter is not changed; learning is blocked once it fits the data', async () => {
    // The "security vector": fits the data by itself.
    const sv = (await trainLora(cfg, weights, kernels, data, { ...BASE, seed: 7 })).adapter;
    const svCopy = structuredClone(sv);
    const svLoss = meanLoss(sv);
    const plain = await trainLora(cfg, weights, kernels, data, { ...BASE, epochs: 5, seed: 1 });
    const defended = await trainLora(cfg, weights, kernels, data, {
      ...BASE,
      epochs: 5,
      seed: 1,
      frozenAdapters: [sv],
    });
    assert.deepEqual(sv, svCopy);
    assert.ok(defended.log.steps[0].loss < 0.5 * plain.log.steps[0].loss, 'the frozen adapter is on');
    assert.ok(Math.abs(defended.log.steps[0].loss - svLoss) < 1e-4 * svLoss + 1e-6);
    const base = loraLoss(
      cfg,
      weights,
      createLora(cfg, { ...BASE, seed: 1 }, (n) => new Float32Array(n)),
      data,
      kernels,
    );
    // Used without the security vector, the defended adapter has learned much less of the data.
    const learnedPlain = base - meanLoss(plain.adapter);
    const learnedDefended = base - meanLoss(defended.adapter);
    assert.ok(learnedPlain > 3, `plain training learned ${learnedPlain}`);
    assert.ok(learnedDefended < 0.5 * learnedPlain, `${learnedDefended} vs ${learnedPlain}`);
  });

  test('a checkpoint is resumed only with the same frozen adapters', async () => {
    const sv = randomAdapter(cfg, { rank: 2, alpha: 4, seed: 3 }, (n) => new Float32Array(n));
    const other = randomAdapter(cfg, { rank: 2, alpha: 4, seed: 4 }, (n) => new Float32Array(n));
    const file = path.join(scratch, 'frozen.safetensors');
    const opts = { ...BASE, epochs: 2, batch: 2, checkpointFile: file };
    let calls = 0;
    await trainLora(cfg, weights, kernels, data, {
      ...opts,
      frozenAdapters: [sv],
      stopAfterStep: () => ++calls === 1,
    });
    for (const frozenAdapters of [[], [other]])
      await assert.rejects(
        trainLora(cfg, weights, kernels, data, { ...opts, frozenAdapters, resume: true }),
        (e: unknown) => e instanceof OptionError && /other settings or data \(frozen\)/.test(e.message),
      );
    const resumed = await trainLora(cfg, weights, kernels, data, {
      ...opts,
      frozenAdapters: [sv],
      resume: true,
    });
    assert.equal(resumed.resumedFrom, 1);
    assert.ok(resumed.finished);
  });

  test('a frozen adapter for another model is refused', () => {
    const wrong = createLora(
      { ...cfg, nLayers: cfg.nLayers + 1 },
      { rank: 2, alpha: 4, targets: ['q'], seed: 0 },
      (n) => new Float32Array(n),
    );
    assert.throws(() => withFrozenAdapters(cfg, weights, [wrong]), /layers/);
  });
});
