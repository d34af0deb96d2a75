/**
 * LoRA adapters at inference (Model.addAdapter, src/model/transformer.ts): applied unmerged as
 * W x + (alpha/r)·B(A x) on q,k,v,o,gate,up,down, checked against a model whose weights hold the
 * merged W + (alpha/r)·B·A (computed here in double), in prompt passes and in generation steps,
 * on the tiny fixture models; a fresh adapter (B = 0) changes nothing, disabling gives the base
 * model back bit for bit, two adapters act as their sum, and the training forward's loss
 * (src/training/backward.ts) equals the cross-entropy of the adapted logits.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { loadBackend } from '../src/engine/select.js';
import { OptionError } from '../src/formats/errors.js';
import type { Hook } from '../src/hooks/hooks.js';
import type { ModelConfig } from '../src/model/config.js';
import { loadModelFiles } from '../src/model/load.js';
import { LORA_TARGETS, type LoraAdapter, type LoraTarget, loraScale, loraShape } from '../src/model/lora.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import type { LayerWeights } from '../src/model/weights.js';
import { loraLoss } from '../src/training/backward.js';
import { backendKernels } from '../src/training/kernels.js';
import { createLora } from '../src/training/lora.js';
import { FIXTURES, relErr } from './util/fixtures.js';

const ARCHS = ['llama', 'qwen2', 'gemma3'];
/**
 * Unmerged against merged logits, max |diff| / max |ref|: both are fp32 forward passes whose
 * products are summed in another order (measured <= 1.7e-6 on these models).
 */
const MERGED_TOL = 1e-5;

const WEIGHT_OF: Record<LoraTarget, keyof LayerWeights> = {
  q: 'wq',
  k: 'wk',
  v: 'wv',
  o: 'wo',
  gate: 'wGate',
  up: 'wUp',
  down: 'wDown',
};

const backend = loadBackend();

function tinyPath(name: string): string {
  return path.join(FIXTURES, 'tiny', name);
}

async function loadTiny(name: string): Promise<Model> {
  return Model.load(tinyPath(name), { weights: 'f32', backend });
}

/** An adapter on `targets` with random A and B (B non-zero). */
function randomAdapter(
  cfg: ModelConfig,
  seed: number,
  targets: readonly LoraTarget[] = LORA_TARGETS,
  rank = 2,
  alpha = 4,
): LoraAdapter<Float32Array> {
  const adapter = createLora(cfg, { rank, alpha, targets, seed }, (n) => new Float32Array(n));
  const random = seededRandom(seed + 1);
  for (const layer of adapter.layers)
    for (const t of targets) {
      const b = layer[t]!.b;
      for (let i = 0; i < b.length; i++) b[i] = (2 * random() - 1) * 0.3;
    }
  return adapter;
}

/** A model of `name` whose weights hold W + (alpha/r)·B·A of every adapter, summed in double. */
function mergedModel(name: string, adapters: readonly LoraAdapter<Float32Array>[]): Model {
  const loaded = loadModelFiles(tinyPath(name), { weights: 'f32' });
  const cfg = loaded.config;
  const layers = loaded.weights.layers.map((lw, l) => {
    const merged: LayerWeights = { ...lw };
    for (const t of LORA_TARGETS) {
      const key = WEIGHT_OF[t];
      const w = lw[key] as Float32Array;
      const { inDim, outDim } = loraShape(cfg, t);
      const out = Float64Array.from(w);
      for (const adapter of adapters) {
        const pair = adapter.layers[l][t];
        if (!pair) continue;
        const s = loraScale(adapter);
        for (let o = 0; o < outDim; o++)
          for (let i = 0; i < inDim; i++) {
            let sum = 0;
            for (let j = 0; j < adapter.rank; j++)
              sum += pair.b[o * adapter.rank + j] * pair.a[j * inDim + i];
            out[o * inDim + i] += s * sum;
          }
      }
      (merged as unknown as Record<string, Float32Array>)[key] = Float32Array.from(out);
    }
    return merged;
  });
  return new Model({ ...loaded, weights: { ...loaded.weights, layers } }, backend);
}

function randomTokens(cfg: ModelConfig, seed: number, length: number): number[] {
  const random = seededRandom(seed);
  return Array.from({ length }, () => Math.floor(random() * cfg.vocabSize));
}

/** Every row's logits of each prompt. */
function allLogits(model: Model, prompts: readonly number[][]): Float32Array[] {
  return model.run(
    prompts.map((tokens) => ({ tokens })),
    { logits: 'all' },
  ).logits;
}

/** Greedy generation of 6 tokens, with each step's logits. */
async function generateWithLogits(model: Model, prompt: number[]) {
  const steps: Float32Array[] = [];
  const reader: Hook = { name: 'logits', fn: (act) => steps.push(act.slice()) };
  const [g] = await model.generate([{ tokens: prompt }], {
    maxNewTokens: 6,
    stopTokens: [],
    hooks: [reader],
  });
  return { tokens: g.tokens, steps };
}

for (const arch of ARCHS)
  describe(`LoRA at inference: ${arch}`, () => {
    test('a fresh adapter (B = 0) changes nothing; disabled and removed give the base logits bit for bit', async () => {
      const model = await loadTiny(arch);
      const prompts = [randomTokens(model.config, 1, 9), randomTokens(model.config, 2, 5)];
      const base = allLogits(model, prompts);
      const fresh = model.addAdapter(
        createLora(
          model.config,
          { rank: 4, alpha: 8, targets: LORA_TARGETS, seed: 3 },
          (n) => new Float32Array(n),
        ),
      );
      assert.deepEqual(allLogits(model, prompts), base);
      fresh.remove();
      const lora = model.addAdapter(randomAdapter(model.config, 5));
      assert.ok(lora.enabled);
      assert.notDeepEqual(allLogits(model, prompts), base);
      lora.disable();
      assert.equal(lora.enabled, false);
      assert.deepEqual(allLogits(model, prompts), base);
      lora.enable();
      assert.notDeepEqual(allLogits(model, prompts), base);
      lora.remove();
      assert.deepEqual(allLogits(model, prompts), base);
      assert.throws(() => lora.enable(), OptionError);
    });

    test('prompt passes and generation steps equal the merged weights W + (alpha/r)·B·A', async (t) => {
      const model = await loadTiny(arch);
      const adapter = randomAdapter(model.config, 11);
      model.addAdapter(adapter);
      const merged = mergedModel(arch, [adapter]);
      const prompts = [randomTokens(model.config, 7, 10), randomTokens(model.config, 8, 3)];
      const got = allLogits(model, prompts);
      const want = allLogits(merged, prompts);
      const base = allLogits(await loadTiny(arch), prompts);
      got.forEach((g, i) => {
        assert.ok(relErr(g, want[i]) <= MERGED_TOL, `prompt ${i}: ${relErr(g, want[i])}`);
        // The adapter moves the logits far more than the tolerance.
        assert.ok(relErr(base[i], want[i]) > 100 * MERGED_TOL, `prompt ${i}: adapter too weak`);
      });
      const gen = await generateWithLogits(model, prompts[0]);
      const genMerged = await generateWithLogits(merged, prompts[0]);
      assert.deepEqual(gen.tokens, genMerged.tokens);
      assert.equal(gen.steps.length, 6);
      const promptErr = Math.max(...got.map((g, i) => relErr(g, want[i])));
      const stepErr = Math.max(...gen.steps.map((s, i) => relErr(s, genMerged.steps[i])));
      assert.ok(stepErr <= MERGED_TOL, `generation steps: ${stepErr}`);
      t.diagnostic(`relative error against merged weights: prompt ${promptErr}, generation ${stepErr}`);
    });

    test('two adapters act as their sum; adapters on some targets only', async () => {
      const model = await loadTiny(arch);
      const first = randomAdapter(model.config, 21, ['q', 'v', 'down'], 3, 6);
      const second = randomAdapter(model.config, 22, ['k', 'o', 'gate', 'up'], 1, 2);
      model.addAdapter(first);
      const onlySecond = model.addAdapter(second);
      const prompts = [randomTokens(model.config, 9, 8)];
      const both = allLogits(model, prompts);
      const want = allLogits(mergedModel(arch, [first, second]), prompts);
      assert.ok(relErr(both[0], want[0]) <= MERGED_TOL, `${relErr(both[0], want[0])}`);
      onlySecond.disable();
      const one = allLogits(model, prompts);
      const wantOne = allLogits(mergedModel(arch, [first]), prompts);
      assert.ok(relErr(one[0], wantOne[0]) <= MERGED_TOL, `${relErr(one[0], wantOne[0])}`);
    });

    test("the training forward's loss equals the cross-entropy of the adapted logits", async () => {
      const model = await loadTiny(arch);
      const adapter = randomAdapter(model.config, 31);
      model.addAdapter(adapter);
      const tokens = randomTokens(model.config, 12, 12);
      const answer = tokens.map((_, t) => t >= 6);
      const trained = loraLoss(
        model.config,
        model.weights,
        adapter,
        [{ tokens, answer }],
        backendKernels(backend),
      );
      const [logits] = allLogits(model, [tokens]);
      const V = model.config.vocabSize;
      let sum = 0;
      let n = 0;
      for (let t = 1; t < tokens.length; t++) {
        if (!answer[t]) continue;
        const row = logits.subarray((t - 1) * V, t * V);
        const max = Math.max(...row);
        let z = 0;
        for (const x of row) z += Math.exp(x - max);
        sum += Math.log(z) + max - row[tokens[t]];
        n++;
      }
      const inference = sum / n;
      assert.ok(Math.abs(trained - inference) <= 1e-5 * Math.abs(inference), `${trained} vs ${inference}`);
    });
  });

describe('LoRA at inference: errors', () => {
  test('an adapter for another model shape is refused', async () => {
    const llama = await loadTiny('llama');
    const qwen = await loadTiny('qwen2');
    const forQwen = randomAdapter(qwen.config, 1);
    if (qwen.config.nLayers === llama.config.nLayers && qwen.config.dModel === llama.config.dModel)
      assert.ok(qwen.config.ffnDim !== llama.config.ffnDim || qwen.config.nKvHeads !== llama.config.nKvHeads);
    assert.throws(() => llama.addAdapter(forQwen), OptionError);
    const fp64 = createLora(
      llama.config,
      { rank: 2, alpha: 4, targets: ['q'], seed: 1 },
      (n) => new Float64Array(n),
    );
    assert.throws(() => llama.addAdapter(fp64 as unknown as LoraAdapter<Float32Array>), /Float32Array/);
  });

  test('a prefix computed with other adapters enabled is refused', async () => {
    const model = await loadTiny('llama');
    const lora = model.addAdapter(randomAdapter(model.config, 2));
    const prefix = model.prefill({ tokens: randomTokens(model.config, 3, 4) });
    const continuation = { tokens: randomTokens(model.config, 4, 3) };
    model.run([continuation], { prefix });
    lora.disable();
    assert.throws(() => model.run([continuation], { prefix }), /LoRA adapters/);
    await assert.rejects(model.generate([continuation], { prefix, maxNewTokens: 1 }), /LoRA adapters/);
    lora.enable();
    const withPrefix = model.run([continuation], { prefix, logits: 'all' }).logits[0];
    const whole = model.run([{ tokens: [...prefix.tokens, ...continuation.tokens] }], { logits: 'all' })
      .logits[0];
    const V = model.config.vocabSize;
    assert.ok(relErr(withPrefix, whole.subarray(4 * V)) <= MERGED_TOL);
  });
});
