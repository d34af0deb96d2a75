/**
 * eval capability's pieces on the tiny fixture and constructed data: the log-likelihood scorer
 * against sums of log-softmax computed by hand from `model.run` logits, the logits and per-prompt
 * hooks of `model.run` it relies on, the GSM8K answer extractor, TruthfulQA's MC2 mass, the seeded
 * subsets, MMLU's prompt, and the loaders' errors on a malformed file.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { loadGsm8k, loadMmlu, loadMmluFile, loadTruthfulQa } from '../src/data/benchmarks.js';
import {
  extractFinalNumber,
  meanOf,
  mmluPrompt,
  sampleItems,
  scoreContinuations,
  trueMass,
} from '../src/eval/capability.js';
import { figureChanges, figureItems, pairedDifference } from '../src/eval/capability-suite.js';
import { FormatError } from '../src/formats/errors.js';
import { blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import { Model } from '../src/model/model.js';
import { cli } from './util/cli.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-capability-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** log softmax(row)[token] written out plainly, in double precision. */
function logProb(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return row[token] - max - Math.log(sum);
}

describe('log-likelihood scorer (tiny llama)', async () => {
  const model = await Model.load(path.join(FIXTURES, 'tiny', 'llama'));
  const V = model.config.vocabSize;
  /** Σ log p(cont[m] | context, cont[<m]) from one full pass with every row's logits. */
  const byHand = (context: number[], cont: number[], hooks: ReturnType<typeof addVector>[] = []) => {
    const seq = [...context, ...cont];
    const logits = model.run([{ tokens: seq }], { logits: 'all', hooks }).logits[0];
    let total = 0;
    for (let m = 0; m < cont.length; m++) {
      const row = context.length - 1 + m;
      total += logProb(logits.subarray(row * V, (row + 1) * V), cont[m]);
    }
    return total;
  };
  const requests = [
    { context: [1, 2, 3], continuations: [[4], [5], [6, 7, 8], [4, 9]] },
    { context: [10, 11], continuations: [[12, 13], [14]] },
    { context: [3], continuations: [[2], [1]] },
  ];
  const push = addVector(blockHook(1, 'hook_resid_post'), new Float32Array(model.config.dModel).fill(2));

  test('equals the hand-computed sum of log-probabilities, however the requests are packed', async () => {
    for (const [maxLogitRows, maxBatchTokens] of [
      [1, 1024],
      [4, 1024],
      [256, 1024],
      [256, 5],
    ]) {
      const got = await scoreContinuations(model, requests, { maxLogitRows, maxBatchTokens });
      requests.forEach((r, i) =>
        r.continuations.forEach((c, j) => {
          const want = byHand(r.context, c);
          assert.ok(want < 0);
          assert.ok(
            Math.abs(got[i][j] - want) < 1e-4,
            `request ${i} continuation ${j} (${maxLogitRows} rows, ${maxBatchTokens} tokens): ${got[i][j]} vs ${want}`,
          );
        }),
      );
    }
  });

  test('a hand-computed case: two one-token continuations read the same last row', async () => {
    const logits = model.run([{ tokens: [5, 6, 7] }], { logits: 'last' }).logits[0];
    const [[a, b]] = await scoreContinuations(model, [{ context: [5, 6, 7], continuations: [[8], [9]] }]);
    assert.ok(Math.abs(a - b - (logits[8] - logits[9])) < 1e-5, 'the difference is the logit difference');
    assert.ok(Math.abs(a - logProb(logits, 8)) < 1e-5);
  });

  test('hooks apply to their own request only', async () => {
    const got = await scoreContinuations(model, requests, { hooks: [[], [push], []] });
    const plain = await scoreContinuations(model, requests);
    assert.deepEqual(got[0], plain[0]);
    assert.deepEqual(got[2], plain[2]);
    got[1].forEach((x, j) => {
      assert.notEqual(x, plain[1][j]);
      assert.ok(Math.abs(x - byHand(requests[1].context, requests[1].continuations[j], [push])) < 1e-4);
    });
  });

  test('model.run promptLength: a reply scored teacher-forced is steered where generation steered it', async () => {
    const onReply = addVector(
      blockHook(1, 'hook_resid_post'),
      new Float32Array(model.config.dModel).fill(3),
      {
        positions: 'generated',
      },
    );
    const [g] = await model.generate([{ tokens: [1, 2, 3] }], { maxNewTokens: 5, hooks: [onReply] });
    assert.equal(g.tokens.length, 5);
    const seq = [1, 2, 3, ...g.tokens];
    const scored = model.run([{ tokens: seq }], { logits: 'all', hooks: [onReply], promptLength: () => 3 })
      .logits[0];
    g.tokens.forEach((t, m) => {
      const row = scored.subarray((2 + m) * V, (3 + m) * V);
      assert.equal(row.indexOf(Math.max(...row)), t, `reply token ${m}`);
    });
    const asPrompt = model.run([{ tokens: seq }], { logits: 'all', hooks: [onReply] }).logits[0];
    assert.notDeepEqual(asPrompt.subarray(3 * V), scored.subarray(3 * V), 'without it the hook never fires');
    assert.throws(
      () => model.run([{ tokens: seq }], { promptLength: () => 0 }),
      /promptLength must be an integer in 1\.\.8/,
    );
  });

  test("the scorer steers a continuation's tokens as generated ones", async () => {
    const onReply = addVector(
      blockHook(1, 'hook_resid_post'),
      new Float32Array(model.config.dModel).fill(3),
      {
        positions: 'generated',
      },
    );
    const req = { context: [1, 2, 3], continuations: [[4], [5, 6, 7]] };
    const [plain] = await scoreContinuations(model, [req]);
    const [steered] = await scoreContinuations(model, [req], { hooks: [[onReply]] });
    assert.equal(steered[0], plain[0], 'a one-token continuation is read at the last prompt token');
    assert.notEqual(steered[1], plain[1]);
    const seq = [1, 2, 3, 5, 6, 7];
    const logits = model.run([{ tokens: seq }], { logits: 'all', hooks: [onReply], promptLength: () => 3 })
      .logits[0];
    const want = [5, 6, 7].reduce((a, t, m) => a + logProb(logits.subarray((2 + m) * V, (3 + m) * V), t), 0);
    assert.ok(Math.abs(steered[1] - want) < 1e-4, `${steered[1]} vs ${want}`);
  });

  test('bad requests are errors', async () => {
    await assert.rejects(scoreContinuations(model, [{ context: [], continuations: [[1]] }]), /empty context/);
    await assert.rejects(scoreContinuations(model, [{ context: [1], continuations: [[]] }]), /no tokens/);
    await assert.rejects(scoreContinuations(model, requests, { hooks: [[]] }), /1 hook lists for 3 requests/);
  });

  test('model.run: lastTokens logits are the tail of all logits; promptHooks steer one prompt', () => {
    const prompts = [{ tokens: [1, 2, 3, 4, 5] }, { tokens: [6, 7] }];
    const all = model.run(prompts, { logits: 'all' }).logits;
    const tail = model.run(prompts, { logits: { lastTokens: 3 } }).logits;
    assert.equal(tail[0].length, 3 * V);
    assert.equal(tail[1].length, 2 * V, 'a shorter prompt gives all its rows');
    for (let i = 0; i < 2; i++) {
      const want = all[i].subarray(all[i].length - tail[i].length);
      for (let k = 0; k < want.length; k++) assert.ok(Math.abs(tail[i][k] - want[k]) < 1e-4);
    }
    const own = model.run(prompts, { logits: 'last', promptHooks: (i) => (i === 1 ? [push] : []) }).logits;
    const alone = model.run([prompts[1]], { logits: 'last', hooks: [push] }).logits[0];
    const none = model.run([prompts[0]], { logits: 'last' }).logits[0];
    for (let k = 0; k < V; k++) {
      assert.ok(Math.abs(own[1][k] - alone[k]) < 1e-4);
      assert.ok(Math.abs(own[0][k] - none[k]) < 1e-4);
    }
    assert.throws(
      () => model.run(prompts, { logits: { lastTokens: 0 } }),
      /lastTokens must be an integer >= 1/,
    );
  });
});

describe('GSM8K answer extractor', () => {
  const cases: [string, number | undefined][] = [
    ['Janet sells 9 eggs.\n#### 42', 42],
    ['#### 1,000', 1000],
    ['She has 3 apples, then 5. #### -7', -7],
    ['The answer is 1,234.', 1234],
    ['So 12 + 3 = 15. The answer is 15 apples, not 20.', 15],
    ['It costs $5.50.', 5.5],
    ['The total is $1,250.75 in all', 1250.75],
    ['The temperature fell to -4 degrees.', -4],
    ['First 10, then 20, so 30.', 30],
    ['He pays 2.5 dollars.', 2.5],
    ['The answer is: 8', 8],
    ['I do not know.', undefined],
    ['', undefined],
    ['20 - 5 = 15', 15],
    ['She paid 30 - 5', 5],
    ['The change is -3.', -3],
    ['He lost -$4.25 on it', -4.25],
  ];
  for (const [text, want] of cases)
    test(JSON.stringify(text), () => assert.equal(extractFinalNumber(text), want));
});

describe('TruthfulQA MC2 and intervals', () => {
  test('the mass of the true answers, normalised over all answers', () => {
    const t = [Math.log(0.2), Math.log(0.1)];
    const f = [Math.log(0.1)];
    assert.ok(Math.abs(trueMass(t, f) - 0.75) < 1e-12);
    // Very negative log-likelihoods (long answers) stay finite.
    assert.ok(Math.abs(trueMass([-1000], [-1000 - Math.log(3)]) - 0.75) < 1e-9);
  });
  test('a mean with its normal interval, clipped to the range', () => {
    const m = meanOf([0, 1, 1, 1], [0, 1]);
    assert.equal(m.mean, 0.75);
    assert.equal(m.ci[1], 1);
    assert.ok(m.ci[0] > 0 && m.ci[0] < 0.75);
  });
});

describe('paired difference (the audit capability cost)', () => {
  test('b − a item by item, with mean ± 1.96 sd/√n of the differences', () => {
    // differences 1, 0, 0, -1, 1: mean 0.2, sd √0.7
    const d = pairedDifference([0, 1, 1, 1, 0], [1, 1, 1, 0, 1]);
    assert.equal(d.n, 5);
    assert.ok(Math.abs(d.delta - 0.2) < 1e-12);
    const half = (1.96 * Math.sqrt(0.7)) / Math.sqrt(5);
    assert.ok(Math.abs(d.ci[0] - (0.2 - half)) < 1e-12 && Math.abs(d.ci[1] - (0.2 + half)) < 1e-12);
  });
  test('unequal or empty lists are errors', () => {
    assert.throws(() => pairedDifference([1, 0], [1]), /two equal, non-empty lists \(got 2 and 1\)/);
    assert.throws(() => pairedDifference([], []), /non-empty/);
  });
});

describe('changes from an earlier rows file (eval capability --compare)', () => {
  const rows = (correct: boolean[], mc2: number[]) => ({
    mmlu: correct.map((c, i) => ({ subject: 'anatomy', row: 10 + i, correct: c })),
    truthfulqa: mc2.map((m, i) => ({ index: i, mc1: m > 0.5, mc2: m })),
  });
  test('each figure of both runs gets its paired change, in figure order', () => {
    const before = figureItems(rows([true, false, false, true], [0.2, 0.6, 0.4, 0.9]), 0, 'base');
    const after = figureItems(rows([true, true, false, true], [0.3, 0.6, 0.6, 0.9]), 0, 'now');
    const c = figureChanges(before, after, 'base');
    assert.deepEqual(
      c.map((x) => [x.task, x.metric, x.n, x.before, x.after]),
      [
        ['mmlu', 'accuracy (0-shot)', 4, 0.5, 0.75],
        ['truthfulqa', 'MC1 accuracy', 4, 0.5, 0.75],
        ['truthfulqa', 'MC2 true mass', 4, 0.525, 0.6],
      ],
    );
    assert.ok(Math.abs(c[2].delta - 0.075) < 1e-12);
    assert.deepEqual(c[0].ci, pairedDifference([1, 0, 0, 1], [1, 1, 0, 1]).ci);
  });
  test('other items, no common task or a malformed row are errors naming the file', () => {
    const base = figureItems(rows([true, false], [0.2, 0.6]), 0, 'base');
    const shifted = rows([true, false], [0.2, 0.6]);
    shifted.mmlu[1].row = 99;
    assert.throws(
      () => figureChanges(base, figureItems(shifted, 0, 'now'), 'base.json'),
      /base\.json: its mmlu items are not this run's .*item 1 differs/,
    );
    assert.throws(
      () => figureChanges(base, figureItems({ gsm8k: [] }, 0, 'now'), 'base.json'),
      /no task in common/,
    );
    assert.throws(
      () => figureItems({ mmlu: [{ subject: 'x', row: 1, correct: 'yes' }] }, 0, 'f.json'),
      /f\.json: rows\.mmlu\[0\]\.correct is not a boolean/,
    );
  });
});

describe('seeded subsets', () => {
  const items = Array.from({ length: 30 }, (_, i) => ({ i, s: i < 20 ? 'a' : 'b' }));
  test('fixed by the seed, spread over strata, in the original order', () => {
    const one = sampleItems(items, 6, { seed: 1, stratum: (x) => x.s });
    assert.deepEqual(one, sampleItems(items, 6, { seed: 1, stratum: (x) => x.s }));
    assert.notDeepEqual(one, sampleItems(items, 6, { seed: 2, stratum: (x) => x.s }));
    assert.equal(one.filter((x) => x.s === 'b').length, 3, 'round-robin over the strata');
    assert.deepEqual(
      one.map((x) => x.i),
      [...one.map((x) => x.i)].sort((a, b) => a - b),
    );
    assert.equal(sampleItems(items, 100, { seed: 0 }).length, 30);
    assert.throws(() => sampleItems(items, 0, { seed: 0 }), /limit must be an integer >= 1/);
  });
});

describe('MMLU prompt and benchmark files', () => {
  const q = {
    subject: 'high_school_physics',
    question: ' Why? ',
    choices: ['a', 'b', 'c', 'd'],
    answer: 2,
    row: 0,
  } as const;
  test('the lm-evaluation-harness layout', () => {
    assert.equal(
      mmluPrompt(q, [{ ...q, question: 'Shot?', answer: 1 }]),
      'The following are multiple choice questions (with answers) about high school physics.\n\n' +
        'Shot?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n' +
        'Why?\nA. a\nB. b\nC. c\nD. d\nAnswer:',
    );
  });

  const mmluDir = path.join(tmp, 'mmlu');
  mkdirSync(path.join(mmluDir, 'test'), { recursive: true });
  const good = 'question,choice0,choice1,choice2,choice3,answer\nWhat?,w,x,"y, z",v,2\n';
  writeFileSync(path.join(mmluDir, 'test', 'anatomy_test.csv'), good);

  test('an MMLU file is read with its subject', () => {
    assert.deepEqual(loadMmlu(mmluDir, 'test'), [
      { subject: 'anatomy', question: 'What?', choices: ['w', 'x', 'y, z', 'v'], answer: 2, row: 0 },
    ]);
  });

  test('a wrong header names the file and the column', () => {
    const file = path.join(tmp, 'bad_test.csv');
    writeFileSync(file, 'question,A,B,C,D,answer\nWhat?,w,x,y,v,2\n');
    assert.throws(
      () => loadMmluFile(file),
      (e: unknown) =>
        e instanceof FormatError &&
        e.file === file &&
        e.field === 'header column 2' &&
        /expected 'choice0', found 'A'/.test(e.message),
    );
  });

  test('a bad answer or a short row names the line and the field', () => {
    const file = path.join(tmp, 'answer_test.csv');
    writeFileSync(file, 'question,choice0,choice1,choice2,choice3,answer\nWhat?,w,x,y,v,E\n');
    assert.throws(() => loadMmluFile(file), /answer_test\.csv: line 2: answer: expected 0, 1, 2 or 3/);
    writeFileSync(file, 'question,choice0,choice1,choice2,choice3,answer\nWhat?,w,x,2\n');
    assert.throws(() => loadMmluFile(file), /line 2: 4 fields; expected 6/);
  });

  test('GSM8K and TruthfulQA files: the reference number, formatted answers, missing fields', () => {
    const g = path.join(tmp, 'gsm.jsonl');
    writeFileSync(g, `${JSON.stringify({ question: 'How many?', answer: 'It is 1+2=3.\n#### 1,003' })}\n`);
    assert.deepEqual(loadGsm8k(g), [
      { question: 'How many?', solution: 'It is 1+2=3.\n#### 1,003', answer: 1003 },
    ]);
    writeFileSync(g, `${JSON.stringify({ question: 'How many?', answer: 'three' })}\n`);
    assert.throws(() => loadGsm8k(g), /gsm\.jsonl: line 1: answer: does not end in '#### <number>'/);
    const t = path.join(tmp, 'tqa.csv');
    writeFileSync(
      t,
      'Type,Question,Best Answer,Correct Answers,Incorrect Answers\nA,Why? ,Because,Because; So.;,No; Never.\n',
    );
    assert.deepEqual(loadTruthfulQa(t), [
      { question: 'Why?', best: 'Because.', correct: ['Because.', 'So.'], incorrect: ['No.', 'Never.'] },
    ]);
    writeFileSync(t, 'Question,Best Answer,Correct Answers\nWhy?,Because,Because\n');
    assert.throws(() => loadTruthfulQa(t), /tqa\.csv: column 'Incorrect Answers': missing from the header/);
  });

  /** A data folder holding one MMLU subject file with `csv`. */
  const mmluData = (name: string, csv: string): string => {
    const data = path.join(tmp, name);
    mkdirSync(path.join(data, 'mmlu', 'test'), { recursive: true });
    writeFileSync(path.join(data, 'mmlu', 'test', 'anatomy_test.csv'), csv);
    return data;
  };
  /** `eval capability --tasks mmlu` on a model file that does not exist (it must never load). */
  const mmluRun = (data: string, extra: string[]) =>
    cli([
      'eval',
      'capability',
      '-m',
      path.join(tmp, 'no-model.gguf'),
      '--tasks',
      'mmlu',
      '--data-dir',
      data,
      ...extra,
    ]);

  test('eval capability: a wrong MMLU header fails before the model loads, nothing written', () => {
    const data = mmluData('data', 'question,choice0,answer\nWhat?,w,1\n');
    const out = path.join(tmp, 'rows.json');
    const r = mmluRun(data, ['--out', out]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /anatomy_test\.csv: header column 3: expected 'choice1', found 'answer'/);
    assert.equal(existsSync(out), false);
  });

  test('eval capability --compare: a baseline scored another way fails before the model loads', () => {
    const data = mmluData(
      'data-compare',
      'question,choice0,choice1,choice2,choice3,answer\nWhat?,a,b,c,d,B\n',
    );
    const base = path.join(tmp, 'base-rows.json');
    const run = (extra: string[]) => mmluRun(data, ['--compare', base, ...extra]);
    const rows = { mmlu: [{ subject: 'anatomy', row: 0, correct: true }] };
    writeFileSync(base, JSON.stringify({ chat: false, shots: 0, maxTokens: 256, rows }));
    const shots = run(['--shots', '5']);
    assert.equal(shots.code, 2, shots.stderr);
    assert.match(shots.stderr, /base-rows\.json was scored with shots = 0, this run with 5/);
    const chat = run(['--chat']);
    assert.equal(chat.code, 2, chat.stderr);
    assert.match(chat.stderr, /base-rows\.json was scored with chat = false, this run with true/);
    writeFileSync(base, JSON.stringify({ chat: false, rows }));
    const old = run([]);
    assert.equal(old.code, 2, old.stderr);
    assert.match(old.stderr, /base-rows\.json does not record 'shots'/);
  });

  test('eval capability and bias refuse unknown tasks and options', () => {
    const r = cli(['eval', 'capability', '-m', 'm.gguf', '--tasks', 'mmlu,hellaswag']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /unknown capability task 'hellaswag'; known: mmlu, gsm8k, truthfulqa/);
    const b = cli(['eval', 'bias', '-m', 'm.gguf', '--tasks', 'bbq', '--shots', '5']);
    assert.equal(b.code, 2);
    assert.match(b.stderr, /unknown option --shots/);
    const c = cli(['eval', 'bias', '-m', 'm.gguf', '--steer', 'conditional', '--reading', 'r.json']);
    assert.equal(c.code, 2);
    assert.match(c.stderr, /crows-pairs has no prompt for a gate to read/);
    const u = cli(['eval', 'capability', '-m', 'm.gguf', '--tasks', 'truthfulqa', '--max-tokens', '9']);
    assert.equal(u.code, 2);
    assert.match(u.stderr, /--tasks truthfulqa does not use --max-tokens \(gsm8k\)/);
    const m = cli(['eval', '-m', 'm.gguf', 'capability', '--tasks', 'mmlu']);
    assert.notEqual(m.code, 0);
    const h = cli(['eval', 'capability', '--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /Usage: steerguard eval capability/);
    assert.match(h.stdout, /--shots/);
  });
});
