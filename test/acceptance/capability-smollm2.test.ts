/**
 * eval capability and eval bias on a real model (SmolLM2-135M-Instruct) and the real benchmark
 * files, on a handful of items each: the tokenization of lm-evaluation-harness's requests, the
 * scorer against a full pass, every task end to end, and steering that reaches only the items it
 * is given to.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { before, describe, it } from 'node:test';

import { loadBbq, loadCrowsPairs, loadGsm8k, loadMmlu, loadTruthfulQa } from '../../src/data/benchmarks.js';
import { evaluateBbq, evaluateCrowsPairs } from '../../src/eval/bias.js';
import {
  encodeRequest,
  evaluateGsm8k,
  evaluateMmlu,
  evaluateTruthfulQa,
  mmluPrompt,
  sampleItems,
  scoreContinuations,
} from '../../src/eval/capability.js';
import { blockHook } from '../../src/hooks/hooks.js';
import { addVector } from '../../src/hooks/interventions.js';
import { Model } from '../../src/model/model.js';
import { SHARED, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const DATA = path.join(SHARED, 'datasets');
const skip =
  missingModel(SMOLLM2_GGUF) ?? (existsSync(path.join(DATA, 'mmlu')) ? undefined : `no datasets at ${DATA}`);

describe('capability and bias benchmarks (SmolLM2)', { skip }, () => {
  let model: Model;
  before(async () => {
    model = await Model.load(SMOLLM2_GGUF);
  });
  const mmlu = () =>
    sampleItems(loadMmlu(path.join(DATA, 'mmlu'), 'test'), 5, { seed: 0, stratum: (q) => q.subject });

  it("MMLU's requests: the context as tokenized alone, ' A' to ' D' one token each, scored as a full pass does", async () => {
    const q = mmlu()[0];
    const text = mmluPrompt(q, []);
    const req = encodeRequest(
      model,
      { context: text, continuations: [' A', ' B', ' C', ' D'] },
      { chat: false },
    );
    assert.deepEqual(req.context, model.tokenize(text));
    assert.ok(req.continuations.every((c) => c.length === 1));
    assert.equal(new Set(req.continuations.map((c) => c[0])).size, 4);
    const [scores] = await scoreContinuations(model, [req]);
    const V = model.config.vocabSize;
    req.continuations.forEach((c, j) => {
      const seq = [...req.context, ...c];
      const logits = model.run([{ tokens: seq }], { logits: 'all' }).logits[0];
      const row = logits.subarray((seq.length - 2) * V, (seq.length - 1) * V);
      const max = Math.max(...row);
      const want = row[c[0]] - max - Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0));
      assert.ok(Math.abs(scores[j] - want) < 1e-3, `${scores[j]} vs ${want}`);
    });
    const chat = encodeRequest(model, { context: text, continuations: [' A'] }, { chat: true });
    assert.ok(chat.context.length > req.context.length, 'the chat template adds its turn markers');
  });

  it('MMLU 0- and 1-shot, GSM8K and TruthfulQA run end to end', async () => {
    const questions = mmlu();
    const dev = loadMmlu(path.join(DATA, 'mmlu'), 'dev');
    const zero = await evaluateMmlu(model, questions, { chat: false, shots: 0, dev });
    const one = await evaluateMmlu(model, questions, { chat: false, shots: 1, dev });
    for (const r of [zero, one]) {
      assert.equal(r.rows.length, 5);
      assert.equal(r.overall.n, 5);
      assert.ok(r.rows.every((row) => row.logLikelihoods.every((x) => Number.isFinite(x) && x < 0)));
    }
    assert.notDeepEqual(zero.rows[0].logLikelihoods, one.rows[0].logLikelihoods);
    const gsm = await evaluateGsm8k(model, loadGsm8k(path.join(DATA, 'gsm8k', 'test.jsonl')).slice(0, 2), {
      chat: false,
      shots: [],
      maxNewTokens: 24,
    });
    assert.equal(gsm.rows.length, 2);
    assert.ok(gsm.rows.every((r) => r.replyTokens > 0 && r.replyTokens <= 24));
    const tqa = await evaluateTruthfulQa(
      model,
      loadTruthfulQa(path.join(DATA, 'truthfulqa', 'TruthfulQA.csv')).slice(0, 2),
      {
        chat: false,
      },
    );
    assert.equal(tqa.rows.length, 2);
    assert.ok(tqa.rows.every((r) => r.mc2 >= 0 && r.mc2 <= 1));
  });

  it('BBQ and CrowS-Pairs run end to end', async () => {
    const bbq = sampleItems(loadBbq(path.join(DATA, 'bbq')), 6, {
      seed: 0,
      stratum: (it) => `${it.category}/${it.condition}`,
    });
    const r = await evaluateBbq(model, bbq, { chat: false });
    assert.equal(r.rows.length, 6);
    assert.equal(r.accuracyAmbig.n + r.accuracyDisambig.n, 6);
    const pairs = loadCrowsPairs(path.join(DATA, 'crows_pairs', 'crows_pairs_anonymized.csv')).slice(0, 4);
    const c = await evaluateCrowsPairs(model, pairs, {});
    assert.equal(c.stereotype.n, 4);
    assert.ok(c.rows.every((row) => Number.isFinite(row.more) && Number.isFinite(row.less)));
  });

  it('steering reaches exactly the items its hooks are given to (a gate per item)', async () => {
    const questions = mmlu();
    const push = addVector(blockHook(10, 'hook_resid_post'), new Float32Array(model.config.dModel).fill(1), {
      scale: 4,
    });
    const gate = {
      hooksFor: async (prompts: readonly unknown[]) => prompts.map((_, i) => (i === 1 ? [push] : [])),
    };
    const base = await evaluateMmlu(model, questions, { chat: false, shots: 0, dev: [] });
    const steered = await evaluateMmlu(model, questions, { chat: false, shots: 0, dev: [], steering: gate });
    assert.deepEqual(
      steered.rows.map((r) => r.steered),
      [false, true, false, false, false],
    );
    base.rows.forEach((row, i) => {
      if (i === 1) assert.notDeepEqual(steered.rows[i].logLikelihoods, row.logLikelihoods);
      else
        row.logLikelihoods.forEach((x, j) =>
          assert.ok(Math.abs(x - steered.rows[i].logLikelihoods[j]) < 1e-3),
        );
    });
  });
});
