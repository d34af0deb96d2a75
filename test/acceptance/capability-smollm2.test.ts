/**
 * eval capability and eval bias on a real model (SmolLM2-135M-Instruct) and the real benchmark
 * files, on a handful of items each: the tokenization of lm-evaluation-harness's requests, the
 * scorer against a full pass, every task end to end, and steering that reaches only the items it
 * is given to.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { before, describe, it } from 'node:test';

import {
  loadBbq,
  loadBbqFile,
  loadCrowsPairs,
  loadGsm8k,
  loadMmlu,
  loadMmluFile,
  loadTruthfulQa,
} from '../../src/data/benchmarks.js';
import { bbqPrompt, evaluateBbq, evaluateCrowsPairs } from '../../src/eval/bias.js';
import {
  type TextRequest,
  argmaxIndex,
  encodeRequest,
  evaluateGsm8k,
  evaluateMmlu,
  evaluateTruthfulQa,
  mmluPrompt,
  sampleItems,
  scoreContinuations,
  truthfulQaPrompt,
} from '../../src/eval/capability.js';
import { blockHook } from '../../src/hooks/hooks.js';
import { addVector } from '../../src/hooks/interventions.js';
import { Model } from '../../src/model/model.js';
import { FIXTURES, SHARED, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const DATA = path.join(SHARED, 'datasets');
const skip =
  missingModel(SMOLLM2_GGUF) ?? (existsSync(path.join(DATA, 'mmlu')) ? undefined : `no datasets at ${DATA}`);

/** test/fixtures/capability/smollm2.json (scripts/reference/make_capability_fixtures.py). */
interface CapabilityFixture {
  readonly versions: Record<string, string>;
  readonly tolerance: { readonly per_continuation_token_nats: number };
  readonly items: readonly FixtureItem[];
}

interface FixtureItem {
  readonly task: 'mmlu' | 'truthfulqa' | 'bbq' | 'crows-pairs';
  /** Relative to ../shared/datasets; `row` counts data records from 0. */
  readonly file: string;
  readonly row: number;
  readonly shots?: readonly { readonly file: string; readonly row: number }[];
  readonly contextIds: readonly number[];
  readonly continuationIds: readonly (readonly number[])[];
  readonly logLikelihoods: readonly number[];
  readonly argmax: number;
  readonly mc1?: boolean;
  readonly mc2?: number;
}

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

  it("every request's token ids and log-likelihoods equal lm-evaluation-harness's on transformers (fixture)", async (t) => {
    const fixture = JSON.parse(
      readFileSync(path.join(FIXTURES, 'capability', 'smollm2.json'), 'utf8'),
    ) as CapabilityFixture;
    const of = (task: FixtureItem['task']) => fixture.items.filter((it) => it.task === task);
    const file = (rel: string) => path.join(DATA, rel);
    const mmluOf = (ref: { file: string; row: number }) => loadMmluFile(file(ref.file))[ref.row];
    const tqaOf = (it: FixtureItem) => loadTruthfulQa(file(it.file))[it.row];
    const tqaOptions = (it: FixtureItem) => {
      const q = tqaOf(it);
      return [...new Set([q.best, ...q.correct, ...q.incorrect])];
    };
    // The text requests, from steerguard's loaders and prompt functions.
    const textOf = (it: FixtureItem): TextRequest => {
      switch (it.task) {
        case 'mmlu':
          return {
            context: mmluPrompt(mmluOf(it), (it.shots ?? []).map(mmluOf)),
            continuations: [' A', ' B', ' C', ' D'],
          };
        case 'truthfulqa':
          return { context: truthfulQaPrompt(tqaOf(it)), continuations: tqaOptions(it).map((a) => ` ${a}`) };
        case 'bbq': {
          const item = loadBbqFile(file(it.file))[it.row];
          return { context: bbqPrompt(item), continuations: item.answers.map((a) => ` ${a}`) };
        }
        case 'crows-pairs': {
          const pair = loadCrowsPairs(file(it.file))[it.row];
          return { context: '', continuations: [pair.more, pair.less] };
        }
      }
    };
    for (const it of fixture.items) {
      const req = encodeRequest(model, textOf(it), { chat: false });
      const where = `${it.task} ${it.file} row ${it.row}${it.shots?.length ? ` ${it.shots.length}-shot` : ''}`;
      assert.deepEqual(req.context, it.contextIds, `${where}: context token ids`);
      assert.deepEqual(req.continuations, it.continuationIds, `${where}: continuation token ids`);
    }

    // Log-likelihoods through the task functions where their rows carry them, else the scorer.
    const dev = loadMmlu(path.join(DATA, 'mmlu'), 'dev');
    const mmluScores = async (shots: number) => {
      const items = of('mmlu').filter((it) => (it.shots?.length ?? 0) === shots);
      // evaluateMmlu takes the first `shots` dev questions of the subject, as the fixture's shots are.
      for (const it of items) {
        const subject = mmluOf(it).subject;
        const want = shots ? [{ file: `mmlu/dev/${subject}_dev.csv`, row: 0 }] : [];
        assert.deepEqual(it.shots ?? [], want);
      }
      const r = await evaluateMmlu(model, items.map(mmluOf), { chat: false, shots, dev });
      return items.map((it, i) => ({ it, scores: r.rows[i].logLikelihoods }));
    };
    const bbqItems = of('bbq');
    const bbq = await evaluateBbq(
      model,
      bbqItems.map((it) => loadBbqFile(file(it.file))[it.row]),
      { chat: false },
    );
    const crowsItems = of('crows-pairs');
    const crows = await evaluateCrowsPairs(
      model,
      crowsItems.map((it) => loadCrowsPairs(file(it.file))[it.row]),
      {},
    );
    const tqaItems = of('truthfulqa');
    const tqaScores = await scoreContinuations(
      model,
      tqaItems.map((it) => encodeRequest(model, textOf(it), { chat: false })),
    );
    const scored = [
      ...(await mmluScores(0)),
      ...(await mmluScores(1)),
      ...tqaItems.map((it, i) => ({ it, scores: tqaScores[i] })),
      ...bbqItems.map((it, i) => ({ it, scores: bbq.rows[i].logLikelihoods })),
      ...crowsItems.map((it, i) => ({ it, scores: [crows.rows[i].more, crows.rows[i].less] })),
    ];
    assert.equal(scored.length, fixture.items.length);
    const perToken = fixture.tolerance.per_continuation_token_nats;
    let worst = 0;
    let worstPerToken = 0;
    for (const { it, scores } of scored) {
      const where = `${it.task} ${it.file} row ${it.row}${it.shots?.length ? ` ${it.shots.length}-shot` : ''}`;
      assert.equal(scores.length, it.logLikelihoods.length, where);
      scores.forEach((x, j) => {
        const tokens = it.continuationIds[j].length;
        const diff = Math.abs(x - it.logLikelihoods[j]);
        worst = Math.max(worst, diff);
        worstPerToken = Math.max(worstPerToken, diff / tokens);
        assert.ok(diff <= perToken * tokens, `${where}: option ${j}: ${x} vs ${it.logLikelihoods[j]}`);
      });
      assert.equal(argmaxIndex(scores), it.argmax, `${where}: argmax`);
    }
    // TruthfulQA's metrics from the same log-likelihoods.
    const tqa = await evaluateTruthfulQa(model, tqaItems.map(tqaOf), { chat: false });
    tqaItems.forEach((it, i) => {
      assert.equal(tqa.rows[i].mc1, it.mc1, `truthfulqa row ${it.row}: mc1`);
      assert.ok(Math.abs(tqa.rows[i].mc2 - it.mc2!) < 1e-3, `truthfulqa row ${it.row}: mc2`);
    });
    t.diagnostic(
      `${scored.length} items, ${scored.reduce((a, s) => a + s.scores.length, 0)} options: max |delta| ` +
        `${worst.toExponential(2)} nats, ${worstPerToken.toExponential(2)} per continuation token ` +
        `(tolerance ${perToken} per token; reference: ` +
        `transformers ${fixture.versions.transformers}, torch ${fixture.versions.torch})`,
    );
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
