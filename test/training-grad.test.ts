/**
 * Gradients of the LoRA training loss (src/training/) on the tiny random models of every
 * architecture (test/fixtures/tiny/*: llama untied, llama tied with bf16 weights, qwen2 with q/k/v
 * biases, gemma3 with sliding windows, qk norms, sandwich norms and GELU, and the rotary-scaled ones).
 *
 * - Finite differences: the fp64 kernels' analytic gradient of random entries of every target's A
 *   and B (B non-zero, so A's gradient is too) and of the input embeddings, against central
 *   differences of the fp64 loss with step 1e-5. Their error is ~1e-10 (truncation h²·L''' and
 *   rounding 1e-16·L/h), so |analytic − numeric| <= 1e-8 + 1e-6·|numeric| is tight.
 * - The fp32 training path (the engine backend's forward kernels) against the fp64 gradients.
 * - PyTorch: loss and every A and B gradient against transformers with hand-made LoRA, computed in
 *   float64 by scripts/reference/make_lora_grad_fixtures.py (test/fixtures/tiny/<arch>/lora-grad.safetensors).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { loadBackend } from '../src/engine/select.js';
import { OptionError, SteerguardError } from '../src/formats/errors.js';
import type { ModelConfig } from '../src/model/config.js';
import { loadModelFiles } from '../src/model/load.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import type { ModelWeights } from '../src/model/weights.js';
import {
  type LossAndGradients,
  type TrainingSequence,
  loraLoss,
  loraLossAndGradients,
} from '../src/training/backward.js';
import { AdamW } from '../src/training/adamw.js';
import { F64_KERNELS, type Floats, backendKernels } from '../src/training/kernels.js';
import {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraTarget,
  createLora,
  loraShape,
  zeroLoraLayers,
} from '../src/training/lora.js';
import { FIXTURES, readFixture, relErr } from './util/fixtures.js';

const ARCHS = ['llama', 'llama-tied-bf16', 'qwen2', 'gemma3'];
const ROPE_SCALED = ['llama-rope-llama3', 'qwen2-rope-yarn', 'gemma3-rope-linear'];
const STEP = 1e-5;
const FD_ABS = 1e-8;
const FD_REL = 1e-6;
/**
 * Against PyTorch, relative error per tensor (max |diff| / max |ref|). Measured (docs/TRAINING.md):
 * fp64 <= 1.5e-6, limited by transformers' fp32 norms, rotary and softmax inside its float64 model;
 * fp32 on the native engine <= 4.5e-6.
 */
const PYTORCH_TOL = 1e-5;
const FP32_TOL = 1e-4;

interface Tiny {
  cfg: ModelConfig;
  w: ModelWeights;
}

function loadTiny(name: string): Tiny {
  const loaded = loadModelFiles(path.join(FIXTURES, 'tiny', name), { weights: 'f32' });
  return { cfg: loaded.config, w: loaded.weights };
}

/** A random sequence longer than gemma3's window of 4, with answer tokens at 5..8 and 10 only. */
function sequence(cfg: ModelConfig, seed: number, length = 12): TrainingSequence {
  const random = seededRandom(seed);
  const tokens = Array.from({ length }, () => Math.floor(random() * cfg.vocabSize));
  const answer = tokens.map((_, t) => (t >= 5 && t <= 8) || t === 10);
  return { tokens, answer };
}

/** An fp64 adapter on every target with random A and B (B non-zero, unlike a fresh adapter). */
function randomAdapter(cfg: ModelConfig, seed: number): LoraAdapter<Float64Array> {
  const adapter = createLora(
    cfg,
    { rank: 2, alpha: 4, targets: LORA_TARGETS, seed },
    (n) => new Float64Array(n),
  );
  const random = seededRandom(seed + 1);
  for (const layer of adapter.layers)
    for (const t of LORA_TARGETS) {
      const b = layer[t]!.b;
      for (let i = 0; i < b.length; i++) b[i] = (2 * random() - 1) * 0.2;
    }
  return adapter;
}

function toF32(adapter: LoraAdapter<Float64Array>): LoraAdapter<Float32Array> {
  return {
    ...adapter,
    layers: adapter.layers.map((layer) =>
      Object.fromEntries(
        Object.entries(layer).map(([t, p]) => [t, { a: Float32Array.from(p.a), b: Float32Array.from(p.b) }]),
      ),
    ),
  };
}

/** Central difference of the fp64 loss in one entry of a buffer the loss reads. */
function numericGrad(buf: Float64Array | Float32Array, i: number, loss: () => number, step = STEP): number {
  const keep = buf[i];
  buf[i] = keep + step;
  const up = loss();
  buf[i] = keep - step;
  const down = loss();
  buf[i] = keep;
  return (up - down) / (2 * step);
}

function assertClose(analytic: number, numeric: number, what: string): void {
  const err = Math.abs(analytic - numeric);
  assert.ok(
    err <= FD_ABS + FD_REL * Math.abs(numeric),
    `${what}: analytic ${analytic.toExponential(6)} vs numeric ${numeric.toExponential(6)}`,
  );
}

for (const name of [...ARCHS, ...ROPE_SCALED]) {
  describe(`LoRA gradients, tiny ${name}`, () => {
    const { cfg, w } = loadTiny(name);
    const seqs = [sequence(cfg, 7)];

    test('every target: A and B entries equal central differences (fp64)', () => {
      const adapter = randomAdapter(cfg, 11);
      const { grads, loss } = loraLossAndGradients(cfg, w, adapter, seqs, F64_KERNELS);
      assert.ok(Number.isFinite(loss) && loss > 0);
      const random = seededRandom(13);
      const f = () => loraLoss(cfg, w, adapter, seqs, F64_KERNELS);
      for (const t of LORA_TARGETS)
        for (let trial = 0; trial < 2; trial++) {
          const l = Math.floor(random() * cfg.nLayers);
          for (const which of ['a', 'b'] as const) {
            const buf = adapter.layers[l][t]![which];
            const i = Math.floor(random() * buf.length);
            assertClose(grads[l][t]![which][i], numericGrad(buf, i, f), `layer ${l} ${t}.${which}[${i}]`);
          }
        }
    });

    test('input embeddings: dLoss/d(hook_embed) equals central differences (fp64)', () => {
      const adapter = randomAdapter(cfg, 17);
      const { embedGrad } = loraLossAndGradients(cfg, w, adapter, seqs, F64_KERNELS, { embedGrad: true });
      assert.ok(embedGrad);
      const { tokens } = seqs[0];
      const D = cfg.dModel;
      // A copy of the input embedding only: a tied head keeps reading the original matrix.
      const embed = Float32Array.from(w.embed as Float32Array);
      const input: ModelWeights = { ...w, embed };
      const f = () => loraLoss(cfg, input, adapter, seqs, F64_KERNELS);
      for (const t of [0, 3, 6, 11]) {
        const d = (t * 7) % D;
        // the entry moves every row holding this token, each by embedScale
        let analytic = 0;
        tokens.forEach((id, row) => {
          if (id === tokens[t]) analytic += embedGrad[row * D + d] * cfg.embedScale;
        });
        // fp32 storage: a step of 1e-3 (exact in the buffer's grid is not needed, the step is read back)
        const i = tokens[t] * D + d;
        const keep = embed[i];
        embed[i] = keep + 1e-3;
        const hUp = embed[i] - keep;
        const up = f();
        embed[i] = keep - 1e-3;
        const hDown = keep - embed[i];
        const down = f();
        embed[i] = keep;
        const numeric = (up - down) / (hUp + hDown);
        // steps of 1e-3: truncation ~1e-6·L''', so a looser bound than the adapter's
        assert.ok(
          Math.abs(analytic - numeric) <= 1e-6 + 1e-3 * Math.abs(numeric),
          `embed row ${t} dim ${d}: analytic ${analytic} vs numeric ${numeric}`,
        );
      }
    });

    test('a fresh adapter (B = 0): dA is exactly 0, dB equals central differences', () => {
      const adapter = createLora(
        cfg,
        { rank: 2, alpha: 8, targets: ['q', 'v', 'down'], seed: 3 },
        (n) => new Float64Array(n),
      );
      const { grads } = loraLossAndGradients(cfg, w, adapter, seqs, F64_KERNELS);
      const f = () => loraLoss(cfg, w, adapter, seqs, F64_KERNELS);
      for (const t of ['q', 'v', 'down'] as const) {
        assert.ok(
          grads[0][t]!.a.every((g) => g === 0),
          `${t}.a`,
        );
        const i = 1;
        assertClose(grads[0][t]!.b[i], numericGrad(adapter.layers[0][t]!.b, i, f), `layer 0 ${t}.b[${i}]`);
      }
      assert.equal(grads[0].k, undefined);
    });

    test('with B = 0 the loss is that of the inference forward (src/model/transformer.ts)', async () => {
      const fresh = createLora(
        cfg,
        { rank: 2, alpha: 4, targets: LORA_TARGETS, seed: 5 },
        (n) => new Float64Array(n),
      );
      const model = await Model.load(path.join(FIXTURES, 'tiny', name), { weights: 'f32', threads: 1 });
      const { tokens, answer } = seqs[0];
      const logits = model.run([{ tokens }], { logits: 'all' }).logits[0];
      const V = cfg.vocabSize;
      let sum = 0;
      let n = 0;
      for (let t = 1; t < tokens.length; t++) {
        if (!answer[t]) continue;
        const row = logits.subarray((t - 1) * V, t * V);
        const mx = Math.max(...row);
        const lse = mx + Math.log(row.reduce((acc, x) => acc + Math.exp(x - mx), 0));
        sum += lse - row[tokens[t]];
        n++;
      }
      const want = sum / n;
      const got = loraLoss(cfg, w, fresh, seqs, F64_KERNELS);
      assert.ok(Math.abs(got - want) <= 1e-5 * want, `training ${got} vs inference ${want}`);
    });

    test('AdamW overfits one sequence: 10 steps from a fresh adapter cut the loss by 3x', () => {
      const adapter = createLora(
        cfg,
        { rank: 4, alpha: 8, targets: LORA_TARGETS, seed: 1 },
        (n): Float32Array => new Float32Array(n),
      );
      const kernels = backendKernels(loadBackend({ threads: 1 }));
      const optimiser = new AdamW(adapter, { lr: 1e-2 });
      const first = loraLossAndGradients(cfg, w, adapter, seqs, kernels);
      optimiser.step(first.grads);
      for (let s = 1; s < 10; s++) optimiser.step(loraLossAndGradients(cfg, w, adapter, seqs, kernels).grads);
      const last = loraLoss(cfg, w, adapter, seqs, kernels);
      assert.ok(last < first.loss / 3, `loss ${first.loss} -> ${last}`);
    });

    test('packed sequences: loss and gradients are the answer-weighted mean of separate ones', () => {
      const adapter = randomAdapter(cfg, 19);
      const second: TrainingSequence = {
        tokens: sequence(cfg, 23, 7).tokens,
        answer: [false, true, true, false, false, false, true],
      };
      const packed = loraLossAndGradients(cfg, w, adapter, [seqs[0], second], F64_KERNELS);
      const one = loraLossAndGradients(cfg, w, adapter, [seqs[0]], F64_KERNELS);
      const two = loraLossAndGradients(cfg, w, adapter, [second], F64_KERNELS);
      const [n1, n2] = [one.answerTokens, two.answerTokens];
      assert.equal(packed.answerTokens, n1 + n2);
      assert.ok(Math.abs(packed.loss - (n1 * one.loss + n2 * two.loss) / (n1 + n2)) < 1e-12);
      for (let l = 0; l < cfg.nLayers; l++)
        for (const t of LORA_TARGETS)
          for (const which of ['a', 'b'] as const) {
            const want = one.grads[l][t]![which].map(
              (g, i) => (n1 * g + n2 * two.grads[l][t]![which][i]) / (n1 + n2),
            );
            assert.ok(relErr(packed.grads[l][t]![which], want) < 1e-10, `layer ${l} ${t}.${which}`);
          }
    });

    test('recomputing each block in the backward gives the same gradients, bit for bit', () => {
      const adapter = toF32(randomAdapter(cfg, 31));
      const kernels = backendKernels(loadBackend({ threads: 1 }));
      const kept = loraLossAndGradients(cfg, w, adapter, seqs, kernels, { embedGrad: true });
      const again = loraLossAndGradients(cfg, w, adapter, seqs, kernels, {
        embedGrad: true,
        recompute: true,
      });
      assert.equal(again.loss, kept.loss);
      assert.deepEqual(again.embedGrad, kept.embedGrad);
      assert.deepEqual(again.grads, kept.grads);
    });

    test('fp32 on the engine backend equals the fp64 gradients', () => {
      const adapter = randomAdapter(cfg, 29);
      const f64 = loraLossAndGradients(cfg, w, adapter, seqs, F64_KERNELS);
      const f32 = loraLossAndGradients(
        cfg,
        w,
        toF32(adapter),
        seqs,
        backendKernels(loadBackend({ threads: 1 })),
      );
      assert.ok(Math.abs(f32.loss - f64.loss) <= 1e-5 * f64.loss, `loss ${f32.loss} vs ${f64.loss}`);
      for (let l = 0; l < cfg.nLayers; l++)
        for (const t of LORA_TARGETS)
          for (const which of ['a', 'b'] as const) {
            const err = relErr(f32.grads[l][t]![which], f64.grads[l][t]![which]);
            assert.ok(err <= FP32_TOL, `layer ${l} ${t}.${which}: ${err.toExponential(2)}`);
          }
    });
  });
}

describe('LoRA gradients vs PyTorch (transformers, float64)', () => {
  for (const name of ARCHS) {
    const file = path.join(FIXTURES, 'tiny', name, 'lora-grad.safetensors');
    const { cfg, w } = loadTiny(name);
    const ref = readFixture(file);
    const get = (key: string) => {
      const t = ref.get(key);
      assert.ok(t, `${file} has no ${key}`);
      return t.data;
    };
    const [rank, alpha] = get('lora_config');
    const seqs = [{ tokens: Array.from(get('tokens')), answer: Array.from(get('answer'), (a) => a === 1) }];
    const layers = zeroLoraLayers(cfg, rank, LORA_TARGETS, (n) => new Float64Array(n));
    layers.forEach((layer, l) =>
      LORA_TARGETS.forEach((t) => {
        layer[t]!.a.set(get(`lora.${l}.${t}.A`));
        layer[t]!.b.set(get(`lora.${l}.${t}.B`));
      }),
    );
    const adapter: LoraAdapter<Float64Array> = { rank, alpha, targets: LORA_TARGETS, layers };

    const compare = (got: LossAndGradients<Floats>, lossTol: number, gradTol: number) => {
      const want = get('loss')[0];
      assert.ok(Math.abs(got.loss - want) <= lossTol * want, `loss ${got.loss} vs torch ${want}`);
      for (let l = 0; l < cfg.nLayers; l++)
        for (const t of LORA_TARGETS)
          for (const which of ['A', 'B'] as const) {
            const g = got.grads[l][t]![which === 'A' ? 'a' : 'b'];
            const err = relErr(g, get(`grad.${l}.${t}.${which}`));
            assert.ok(err <= gradTol, `layer ${l} ${t}.${which}: ${err.toExponential(2)}`);
          }
      const embedErr = relErr(got.embedGrad!, get('grad.embed'));
      assert.ok(embedErr <= gradTol, `embeddings: ${embedErr.toExponential(2)}`);
    };

    test(`${name}: fp64 kernels`, () => {
      compare(
        loraLossAndGradients(cfg, w, adapter, seqs, F64_KERNELS, { embedGrad: true }),
        1e-6,
        PYTORCH_TOL,
      );
    });
    test(`${name}: fp32 on the engine backend`, () => {
      const kernels = backendKernels(loadBackend({ threads: 1 }));
      compare(
        loraLossAndGradients(cfg, w, toF32(adapter), seqs, kernels, { embedGrad: true }),
        1e-5,
        FP32_TOL,
      );
    });
  }
});

describe('training input errors', () => {
  const { cfg, w } = loadTiny('llama');
  const adapter = randomAdapter(cfg, 5);
  const seq = sequence(cfg, 7);
  const run = (seqs: TrainingSequence[], a: LoraAdapter<Floats> = adapter) =>
    loraLossAndGradients(cfg, w, a as LoraAdapter<Float64Array>, seqs, F64_KERNELS);

  test('bad LoRA options', () => {
    const make = (rank: number, alpha: number, targets: string[]) =>
      createLora(cfg, { rank, alpha, targets, seed: 1 }, (n) => new Float64Array(n));
    assert.throws(() => make(0, 8, ['q']), /rank must be an integer >= 1, got 0/);
    assert.throws(() => make(1.5, 8, ['q']), OptionError);
    assert.throws(() => make(2, Number.NaN, ['q']), /alpha/);
    assert.throws(() => make(2, 8, ['q_proj']), /unknown LoRA target "q_proj"/);
    assert.throws(() => make(2, 8, ['q', 'q']), /given twice/);
    assert.throws(() => make(2, 8, []), /at least one target/);
  });

  test('bad sequences', () => {
    assert.throws(
      () => run([{ tokens: seq.tokens, answer: seq.answer.map(() => false) }]),
      /no answer tokens/,
    );
    assert.throws(() => run([{ tokens: [1, 2], answer: [true, true] }]), /token 0 cannot be an answer/);
    assert.throws(() => run([{ tokens: [1, 2], answer: [false] }]), /1 entries for 2 tokens/);
    assert.throws(
      () => run([{ tokens: [1, cfg.vocabSize], answer: [false, true] }]),
      /outside the vocabulary/,
    );
    assert.throws(() => run([]), /at least one sequence/);
  });

  test('an adapter for another model shape', () => {
    assert.throws(
      () => run([seq], { ...adapter, layers: adapter.layers.slice(1) }),
      /adapter has 2 layers, the model 3/,
    );
    assert.throws(
      () => run([seq], { ...adapter, rank: 3 }),
      /layer 0 q\.a holds 128 values; this model needs 192/,
    );
    const small = loadTiny('gemma3-rope-linear').cfg; // d_model 32
    const other = createLora(
      small,
      { rank: 2, alpha: 4, targets: ['q'], seed: 1 },
      (n) => new Float64Array(n),
    );
    assert.throws(
      () => run([seq], { ...other, layers: [...other.layers, other.layers[0]] }),
      /an adapter for another model\?/,
    );
    const holes = adapter.layers.map((layer) => ({ ...layer }));
    delete holes[1].up;
    assert.throws(() => run([seq], { ...adapter, layers: holes }), /layer 1 up\.a holds 0 values/);
    assert.throws(
      () => run([seq], { ...adapter, targets: ['q'] }),
      /layer 0 has a k pair, but k is not one of its targets/,
    );
    assert.throws(() => run([seq], { ...adapter, rank: 0 }), /rank must be an integer >= 1/);
  });

  test('a NaN loss is an error, not a gradient', () => {
    const layers = adapter.layers.map((layer) => ({ ...layer }));
    const nan = new Float64Array(adapter.layers[0].q!.b.length).fill(Number.NaN);
    layers[0].q = { a: adapter.layers[0].q!.a, b: nan };
    assert.throws(
      () => run([seq], { ...adapter, layers }),
      (e: unknown) => e instanceof SteerguardError && /training loss is NaN/.test(e.message),
    );
  });

  test('quantized weights are refused', () => {
    const q = { ...w, embed: { bytes: new Uint8Array(0), type: 2 } } as unknown as ModelWeights;
    assert.throws(
      () => loraLoss(cfg, q, adapter, [seq], F64_KERNELS),
      /fp32 weights, but the embedding is quantized/,
    );
  });

  test('shapes: loraShape matches the model', () => {
    const shapes = Object.fromEntries(LORA_TARGETS.map((t: LoraTarget) => [t, loraShape(cfg, t)]));
    assert.deepEqual(shapes.k, { inDim: cfg.dModel, outDim: cfg.nKvHeads * cfg.headDim });
    assert.deepEqual(shapes.down, { inDim: cfg.ffnDim, outDim: cfg.dModel });
  });
});

describe('AdamW', () => {
  const adapter = (): LoraAdapter<Float64Array> => ({
    rank: 1,
    alpha: 1,
    targets: ['q'],
    layers: [{ q: { a: Float64Array.from([1, -2]), b: Float64Array.from([0.25]) } }],
  });
  const grads = (a: number[], b: number[]) => [{ q: { a: Float64Array.from(a), b: Float64Array.from(b) } }];

  test('two steps equal torch.optim.AdamW(lr=0.1, weight_decay=0.01)', () => {
    const p = adapter();
    const optimiser = new AdamW(p, { lr: 0.1 });
    optimiser.step(grads([0.5, -0.1], [0]));
    optimiser.step(grads([0.2, 0.3], [-1e-3]));
    // torch 2.13, float64: [0.8082434839009282, -1.9455209911100655, 0.32391288026631015]
    const want = [0.8082434839009282, -1.9455209911100655, 0.32391288026631015];
    [...p.layers[0].q!.a, ...p.layers[0].q!.b].forEach((x, i) =>
      assert.ok(Math.abs(x - want[i]) < 1e-14, `${i}: ${x}`),
    );
    assert.equal(optimiser.steps, 2);
  });

  test('bad options and gradients are errors; a non-finite gradient changes nothing', () => {
    assert.throws(() => new AdamW(adapter(), { lr: 0 }), /learning rate must be a finite number > 0, got 0/);
    assert.throws(() => new AdamW(adapter(), { lr: 1e-3, beta2: 1 }), /beta2 must be in \[0, 1\)/);
    assert.throws(() => new AdamW(adapter(), { lr: 1e-3, weightDecay: -1 }), /weight decay/);
    const p = adapter();
    const optimiser = new AdamW(p, { lr: 0.1 });
    assert.throws(
      () => optimiser.step(grads([Number.NaN, 0], [0])),
      /q\.a: the gradient is not finite; no step taken/,
    );
    assert.throws(() => optimiser.step(grads([0], [0])), /does not match the adapter's shape/);
    assert.throws(() => optimiser.step([]), /gradients for 0 layers, the adapter has 1/);
    assert.deepEqual([...p.layers[0].q!.a], [1, -2]);
    assert.equal(optimiser.steps, 0);
  });
});
