/**
 * LoRA fine-tuning (src/training/train.ts, data.ts): resuming from a checkpoint continues bit for
 * bit, gradient accumulation equals a larger batch, the schedule, the loss falls, bad input is an
 * error; and chat-template masking marks exactly the assistant's tokens on SmolLM2's and Qwen's
 * templates (their GGUF tokenizers; skipped when the files are missing).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadBackend } from '../src/engine/select.js';
import { FormatError, OptionError, SteerguardError } from '../src/formats/errors.js';
import { readGguf } from '../src/formats/gguf.js';
import { type ChatMessage, Tokenizer } from '../src/formats/tokenizer.js';
import { loadModelFiles } from '../src/model/load.js';
import { seededRandom } from '../src/model/sampling.js';
import type { TrainingSequence } from '../src/training/backward.js';
import { chatSequence, readTrainingFile, trainingSequences } from '../src/training/data.js';
import { backendKernels } from '../src/training/kernels.js';
import { type LoraTrainOptions, scheduledLr, trainLora } from '../src/training/train.js';
import { FIXTURES, QWEN05_GGUF, SMOLLM2_GGUF, missingModel, relErr } from './util/fixtures.js';

const kernels = backendKernels(loadBackend());
const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-lora-train-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const tiny = loadModelFiles(path.join(FIXTURES, 'tiny', 'llama'), { weights: 'f32' });
const { config: cfg, weights } = tiny;

function sequences(n: number, seed: number): TrainingSequence[] {
  const random = seededRandom(seed);
  return Array.from({ length: n }, () => {
    const length = 6 + Math.floor(random() * 5);
    const tokens = Array.from({ length }, () => Math.floor(random() * cfg.vocabSize));
    return { tokens, answer: tokens.map((_, t) => t >= 3) };
  });
}

const BASE: LoraTrainOptions = {
  targets: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'],
  rank: 2,
  alpha: 4,
  epochs: 1,
  lr: 5e-3,
  batch: 2,
  warmup: 1,
  valSplit: 0.2,
  seed: 3,
};

const flat = (layers: readonly Partial<Record<string, { a: Float32Array; b: Float32Array }>>[]) =>
  Float32Array.from(layers.flatMap((l) => Object.values(l).flatMap((p) => [...p!.a, ...p!.b])));
const withoutTimes = (steps: readonly { seconds: number }[]) => steps.map((s) => ({ ...s, seconds: 0 }));

describe('LoRA training loop', () => {
  const data = sequences(10, 1);

  test('4 steps straight = 2 steps, a checkpoint, resume, 2 steps (bit for bit)', async () => {
    const straightFile = path.join(scratch, 'straight.safetensors');
    const straight = await trainLora(cfg, weights, kernels, data, { ...BASE, checkpointFile: straightFile });
    assert.equal(straight.steps, 4); // 8 training sequences, 2 per step
    assert.equal(straight.valSequences, 2);
    assert.ok(straight.finished);

    const file = path.join(scratch, 'resumed.safetensors');
    let calls = 0;
    const first = await trainLora(cfg, weights, kernels, data, {
      ...BASE,
      checkpointFile: file,
      stopAfterStep: () => ++calls === 2,
    });
    assert.equal(first.step, 2);
    assert.equal(first.finished, false);
    const rest = await trainLora(cfg, weights, kernels, data, {
      ...BASE,
      checkpointFile: file,
      resume: true,
    });
    assert.equal(rest.resumedFrom, 2);
    assert.ok(rest.finished);
    assert.deepEqual(flat(rest.adapter.layers), flat(straight.adapter.layers));
    assert.deepEqual(withoutTimes(rest.log.steps), withoutTimes(straight.log.steps));
    assert.deepEqual(rest.log.validation, straight.log.validation);
    assert.equal(straight.log.validation.length, 1);
  });

  test('resuming with other settings or other data is refused', async () => {
    const file = path.join(scratch, 'other.safetensors');
    await trainLora(cfg, weights, kernels, data, {
      ...BASE,
      checkpointFile: file,
      stopAfterStep: () => true,
    });
    await assert.rejects(
      trainLora(cfg, weights, kernels, data, { ...BASE, lr: 1e-3, checkpointFile: file, resume: true }),
      /other settings or data \(lr\)/,
    );
    await assert.rejects(
      trainLora(cfg, weights, kernels, sequences(10, 2), { ...BASE, checkpointFile: file, resume: true }),
      /\(data\)/,
    );
    await assert.rejects(
      trainLora(cfg, weights, kernels, data, {
        ...BASE,
        checkpointFile: path.join(scratch, 'none'),
        resume: true,
      }),
      /does not exist/,
    );
  });

  test('batch 4 = batch 2 with 2 accumulation steps', async () => {
    const opts = { ...BASE, valSplit: 0, epochs: 2 };
    const big = await trainLora(cfg, weights, kernels, data, { ...opts, batch: 4 });
    const accumulated = await trainLora(cfg, weights, kernels, data, { ...opts, batch: 2, gradAccum: 2 });
    assert.equal(big.steps, 6);
    assert.equal(accumulated.steps, 6);
    // The two differ only in the order of fp32 sums (one call of 4 sequences or two of 2), which
    // AdamW's normalised steps amplify over 6 steps: measured 7.6e-6 with the plain TypeScript
    // backward, 4.5e-6 (1 thread) to 1.2e-5 (2 threads) with the native one. Weighting the two
    // calls equally instead of by their answer tokens gives 0.17.
    const err = relErr(flat(accumulated.adapter.layers), flat(big.adapter.layers));
    assert.ok(err <= 3e-5, `${err}`);
    big.log.steps.forEach((s, i) =>
      assert.ok(Math.abs(s.loss - accumulated.log.steps[i].loss) <= 1e-5 * s.loss),
    );
  });

  test('the loss falls when the same sequences are trained on', async () => {
    const few = sequences(2, 5);
    const res = await trainLora(cfg, weights, kernels, few, {
      ...BASE,
      valSplit: 0,
      epochs: 15,
      lr: 2e-2,
      warmup: 0,
    });
    const losses = res.log.steps.map((s) => s.loss);
    assert.ok(losses[losses.length - 1] < losses[0] / 3, `${losses[0]} -> ${losses[losses.length - 1]}`);
  });

  test('warm-up then cosine: full rate after warm-up, above zero at the end', () => {
    const lrs = Array.from({ length: 6 }, (_, i) => scheduledLr(i + 1, 6, 2, 1));
    assert.deepEqual(lrs.slice(0, 3), [0.5, 1, 1]);
    for (let i = 3; i < 6; i++) assert.ok(lrs[i] < lrs[i - 1] && lrs[i] > 0);
    assert.ok(Math.abs(lrs[3] - (1 + Math.cos(Math.PI / 4)) / 2) < 1e-15);
  });

  test('bad options and a diverged model are errors', async () => {
    await assert.rejects(trainLora(cfg, weights, kernels, [], BASE), OptionError);
    await assert.rejects(trainLora(cfg, weights, kernels, data, { ...BASE, rank: 0 }), /rank/);
    await assert.rejects(trainLora(cfg, weights, kernels, data, { ...BASE, warmup: 4 }), /warmup/);
    await assert.rejects(
      trainLora(cfg, weights, kernels, data, { ...BASE, targets: ['lm_head'] }),
      /unknown LoRA target/,
    );
    const broken = loadModelFiles(path.join(FIXTURES, 'tiny', 'llama'), { weights: 'f32' }).weights;
    (broken.layers[0].wq as Float32Array)[0] = NaN;
    await assert.rejects(trainLora(cfg, broken, kernels, data, BASE), SteerguardError);
  });
});

describe('training data', () => {
  test('JSONL rows: chats, prompt/response pairs, token ids; errors name the file and line', () => {
    const file = path.join(scratch, 'data.jsonl');
    writeFileSync(
      file,
      [
        JSON.stringify({
          messages: [
            { role: 'user', content: 'a' },
            { role: 'assistant', content: 'b' },
          ],
        }),
        '',
        JSON.stringify({ prompt: 'c', response: 'd' }),
        JSON.stringify({ tokens: [1, 2, 3], answer: [0, 1, 1] }),
      ].join('\n'),
    );
    const { records, sources } = readTrainingFile(file);
    assert.deepEqual(
      records.map((r) => r.kind),
      ['chat', 'chat', 'tokens'],
    );
    assert.deepEqual(
      sources.map((s) => s.line),
      [1, 3, 4],
    );
    const bad = (rows: string[], field: RegExp) => {
      writeFileSync(file, rows.join('\n'));
      assert.throws(
        () => {
          const read = readTrainingFile(file);
          trainingSequences(read.records, read.sources, { vocabSize: 10 });
        },
        (e: unknown) => e instanceof FormatError && e.file === file && field.test(e.field),
      );
    };
    bad(['{"prompt": "x"}'], /^line 1$/);
    bad(['{"text": "x"}'], /^line 1$/);
    bad(['{"tokens": [1, 2], "answer": [0, 1]}', '{"tokens": [1, 2], "answer": [1, 1]}'], /^line 2: answer$/);
    bad(['{"tokens": [1, 20], "answer": [0, 1]}'], /^line 1: tokens$/);
    bad(['{"tokens": [1, 2], "answer": [0, 0]}'], /^line 1: answer$/);
    bad(['{"messages": [{"role": "user"}]}'], /^line 1: messages$/);
    bad([], /^$/);
  });

  test('--max-tokens cuts sequences and drops those left without an answer', () => {
    const records = [
      { kind: 'tokens' as const, sequence: { tokens: [1, 2, 3, 4], answer: [false, false, true, true] } },
      { kind: 'tokens' as const, sequence: { tokens: [1, 2, 3, 4], answer: [false, true, true, true] } },
    ];
    const sources = [
      { file: 'f', line: 1 },
      { file: 'f', line: 2 },
    ];
    const res = trainingSequences(records, sources, { vocabSize: 10, maxTokens: 2 });
    assert.equal(res.dropped, 1);
    assert.equal(res.truncated, 2);
    assert.deepEqual(res.sequences, [{ tokens: [1, 2], answer: [false, true] }]);
  });

  const conversation: ChatMessage[] = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a colour.' },
    { role: 'assistant', content: 'Blue.' },
    { role: 'user', content: 'Another, in two words?' },
    { role: 'assistant', content: 'Deep  red, \n maybe.' },
  ];
  for (const [name, file] of [
    ['SmolLM2', SMOLLM2_GGUF],
    ['Qwen2.5', QWEN05_GGUF],
  ] as const)
    test(
      `chat masking on ${name}'s template: exactly the assistant's tokens`,
      { skip: missingModel(file) ?? false },
      () => {
        const tok = Tokenizer.fromGgufMetadata(readGguf(file).metadata, file);
        const seq = chatSequence(tok, conversation, { file: 'data.jsonl', line: 1 });
        const whole = tok.applyChatTemplate(conversation, { addGenerationPrompt: false });
        assert.equal(tok.decode(seq.tokens, { skipSpecialTokens: false }), whole);
        // The answer stretches, decoded: each assistant content and its end-of-turn token, nothing else.
        const stretches: number[][] = [];
        seq.answer.forEach((a, t) => {
          if (!a) return;
          if (t === 0 || !seq.answer[t - 1]) stretches.push([]);
          stretches[stretches.length - 1].push(seq.tokens[t]);
        });
        assert.deepEqual(
          stretches.map((s) => tok.decode(s, { skipSpecialTokens: false })),
          ['Blue.<|im_end|>', 'Deep  red, \n maybe.<|im_end|>'],
        );
        // The tokens before each answer are those generation is prompted with.
        const starts = seq.answer.flatMap((a, t) => (a && !seq.answer[t - 1] ? [t] : []));
        [2, 4].forEach((i, k) => {
          const prompt = tok.encode(
            tok.applyChatTemplate(conversation.slice(0, i), { addGenerationPrompt: true }),
            {
              addSpecialTokens: false,
            },
          );
          assert.deepEqual(seq.tokens.slice(0, starts[k]), prompt, `turn ${i}`);
        });
        assert.throws(
          () => chatSequence(tok, conversation.slice(0, 2), { file: 'data.jsonl', line: 7 }),
          /data\.jsonl: line 7: the conversation has no assistant turn/,
        );
      },
    );
});
