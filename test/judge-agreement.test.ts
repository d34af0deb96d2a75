/**
 * Judge agreement: accuracy and Cohen's kappa against a hand computation, the threshold fit and
 * its out-of-fold use, label files with bad fields, replies that changed since they were
 * labelled, the activation judge's projection against a direct computation on the tiny model,
 * and `eval judges` end to end on constructed replies. All texts here are benign.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import {
  activationRefusalJudge,
  agreementOf,
  crossValidatedVerdicts,
  fitThreshold,
  matchLabels,
  readLabels,
  replyHash,
  replyRefusalProjections,
  ruleSays,
} from '../src/eval/judge-agreement.js';
import { blockHook } from '../src/hooks/hooks.js';
import { Model } from '../src/model/model.js';
import { seededRandom } from '../src/model/sampling.js';
import { FormatError } from '../src/formats/errors.js';
import { evalCommand } from '../src/cli/commands/eval.js';
import { runCommand } from './util/cli.js';
import { SMOLLM2_GGUF, missingModel } from './util/fixtures.js';

const dir = mkdtempSync(path.join(tmpdir(), 'sg-agreement-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('agreement figures', () => {
  test('accuracy, kappa and the confusion counts of a hand-computed case', () => {
    // 10 labels, 4 positive. Verdicts: tp 3, fn 1, fp 1, tn 4, one without verdict (a negative).
    const truth = [true, true, true, true, false, false, false, false, false, false];
    const verdicts = [true, true, true, false, true, false, false, false, false, null];
    const a = agreementOf('j', 'refused', verdicts, truth);
    assert.deepEqual(a.confusion, { tp: 3, fp: 1, fn: 1, tn: 4 });
    assert.equal(a.noVerdict, 1);
    assert.equal(a.agree, 7);
    assert.equal(a.accuracy, 0.7);
    // kappa on the 9 with a verdict: po = 7/9, pe = (4*4 + 5*5)/81 = 41/81.
    const po = 7 / 9;
    const pe = 41 / 81;
    assert.ok(Math.abs(a.kappa! - (po - pe) / (1 - pe)) < 1e-12);
    assert.ok(a.ci[0] < 0.7 && a.ci[1] > 0.7 && a.ci[1] < 1);
  });

  test('kappa is undefined, not 0 or NaN, when verdicts and labels are all one class', () => {
    const a = agreementOf('j', 'unsafe', [false, false], [false, false]);
    assert.equal(a.kappa, null);
    assert.equal(a.accuracy, 1);
  });

  test('fitThreshold separates separable scores, on the side that fits, mid-gap', () => {
    assert.deepEqual(fitThreshold([1, 2, 3, 10, 11], [false, false, false, true, true]), {
      threshold: 6.5,
      above: true,
    });
    // Positives below: the lower side fits.
    assert.deepEqual(fitThreshold([1, 2, 3, 10, 11], [true, true, true, false, false]), {
      threshold: 6.5,
      above: false,
    });
    // All one class: a cut below everything, upper side (the tie goes to it).
    const t = fitThreshold([1, 2], [true, true]);
    assert.ok(t.above && t.threshold < 1);
    // The best cut of an overlapping case gets 5 of 6 right.
    const s = [0, 1, 2, 3, 4, 5];
    const y = [false, false, true, false, true, true];
    const rule = fitThreshold(s, y);
    assert.equal(s.filter((v, i) => ruleSays(rule, v) === y[i]).length, 5);
  });

  test('cross-validated verdicts use a threshold fitted without the fold', () => {
    // Separable scores: every fold's threshold still separates them.
    // A gap between the classes, so that no fold's midpoint cut lands on a held-out score.
    const s = Array.from({ length: 20 }, (_, i) => (i < 10 ? i : i + 10));
    const y = s.map((v) => v >= 10);
    const { verdicts, rules } = crossValidatedVerdicts(s, y, 5, 3);
    assert.deepEqual(verdicts, y);
    assert.equal(rules.length, 5);
    assert.ok(rules.every((r) => r.above));
    assert.throws(() => crossValidatedVerdicts([1, 2], [true, false], 5), /cannot make 5 folds/);
    assert.throws(() => crossValidatedVerdicts(s, y, 1), /folds must be an integer >= 2/);
  });
});

describe('label files', () => {
  const reply = { run: 'none', set: 'demo', index: 0, prompt: 'Name a colour.', response: 'Blue.' };
  const repliesFile = path.join(dir, 'none.jsonl');
  writeFileSync(repliesFile, `${JSON.stringify(reply)}\n`);
  const label = {
    run: 'none',
    set: 'demo',
    index: 0,
    sha256: replyHash(reply.prompt, reply.response),
    refused: false,
    unsafe: false,
  };
  const write = (name: string, lines: unknown[]) => {
    const f = path.join(dir, name);
    writeFileSync(f, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n'));
    return f;
  };

  test('a good file matches its reply', () => {
    const f = write('good.jsonl', [label]);
    const m = matchLabels(readLabels(f), [repliesFile], f);
    assert.equal(m.length, 1);
    assert.equal(m[0].response, 'Blue.');
  });

  test('bad fields name the file, the line and the field', () => {
    const cases: [unknown[], RegExp][] = [
      [['{not json'], /line 1: not JSON/],
      [[{ ...label, refused: 'no' }], /line 1: refused: expected a boolean/],
      [[{ ...label, sha256: 'abc' }], /sha256: expected 64 hex digits/],
      [[label, label], /labelled twice/],
      [[], /no labels/],
    ];
    cases.forEach(([lines, re], k) => {
      const f = write(`bad${k}.jsonl`, lines);
      assert.throws(
        () => readLabels(f),
        (e: unknown) => e instanceof FormatError && e.message.includes(f) && re.test(e.message),
        String(re),
      );
    });
  });

  test('a reply that changed, is missing or is redacted is an error, not a comparison', () => {
    const changed = write('changed.jsonl', [{ ...label, sha256: replyHash(reply.prompt, 'Red.') }]);
    assert.throws(
      () => matchLabels(readLabels(changed), [repliesFile], changed),
      /differs from the one labelled/,
    );
    const missing = write('missing.jsonl', [{ ...label, index: 5 }]);
    assert.throws(
      () => matchLabels(readLabels(missing), [repliesFile], missing),
      /no reply with this run, set and index/,
    );
    const redacted = path.join(dir, 'redacted.jsonl');
    writeFileSync(redacted, `${JSON.stringify({ run: 'none', set: 'demo', index: 0, promptSha: 'x' })}\n`);
    const f = write('r.jsonl', [label]);
    assert.throws(() => matchLabels(readLabels(f), [redacted], f), /a redacted file cannot be judged/);
  });

  test('eval judges: keyword judges against the labels, as a table and as JSON', async () => {
    const rows = [
      { run: 'none', set: 'demo', index: 0, prompt: 'Name a colour.', response: 'Blue.' },
      { run: 'none', set: 'demo', index: 1, prompt: 'Name a fruit.', response: "I'm sorry, I cannot help." },
      { run: 'none', set: 'demo', index: 2, prompt: 'Name a tree.', response: 'As an AI, oak.' },
    ];
    const rf = path.join(dir, 'cli-replies.jsonl');
    writeFileSync(rf, rows.map((r) => JSON.stringify(r)).join('\n'));
    const lf = write(
      'cli-labels.jsonl',
      rows.map((r, i) => ({
        run: r.run,
        set: r.set,
        index: r.index,
        sha256: replyHash(r.prompt, r.response),
        refused: i === 1,
        unsafe: false,
      })),
    );
    const res = await runCommand(evalCommand, ['judges', '--replies', rf, '--labels', lf, '--json']);
    assert.equal(res.code, 0, res.stderr);
    const doc = JSON.parse(res.stdout) as { n: number; agreement: { judge: string; agree: number }[] };
    assert.equal(doc.n, 3);
    // GCG's list has "As an AI": it calls the third reply a refusal; JailbreakBench's does too.
    assert.deepEqual(
      doc.agreement.map((a) => [a.judge, a.agree]),
      [
        ['keyword-gcg', 2],
        ['keyword-jbb', 2],
      ],
    );
    assert.ok(!res.stdout.includes('Name a fruit') && !res.stderr.includes('Name a fruit'));
    const bad = await runCommand(evalCommand, [
      'judges',
      '--replies',
      rf,
      '--labels',
      lf,
      '--judge',
      'model-xstest',
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /needs --judge-model/);
    const half = await runCommand(evalCommand, [
      'judges',
      '--replies',
      rf,
      '--labels',
      lf,
      '--direction',
      rf,
    ]);
    assert.notEqual(half.code, 0);
    assert.match(half.stderr, /needs both --model and --direction/);
  });
});

describe('activation refusal judge (SmolLM2)', { skip: missingModel(SMOLLM2_GGUF) }, async () => {
  const model = await Model.load(SMOLLM2_GGUF, { threads: 1 });
  const D = model.config.dModel;
  const rnd = seededRandom(5);
  const direction = { direction: Float32Array.from({ length: D }, () => rnd() - 0.5), layer: 10 };
  const items = [
    { prompt: 'Name a colour.', response: 'Blue is a colour of the sky.' },
    { prompt: 'Name a fruit.', response: 'Apple.' },
  ];

  test('the projection is the mean over the first reply tokens of the residual on the unit direction', () => {
    const got = replyRefusalProjections(model, items, direction, { replyTokens: 3 });
    const tok = model.tokenizer;
    const norm = Math.hypot(...direction.direction);
    items.forEach((it, i) => {
      const prompt = tok.encode(
        tok.applyChatTemplate([{ role: 'user', content: it.prompt }], { addGenerationPrompt: true }),
        {
          addSpecialTokens: false,
        },
      );
      const reply = tok.encode(it.response, { addSpecialTokens: false }).slice(0, 3);
      const name = blockHook(10, 'hook_resid_pre');
      const rows = model
        .run([{ tokens: [...prompt, ...reply] }], {
          cache: { names: [name], positions: 'all' },
          logits: 'none',
        })
        .cache.get(name)![0];
      let sum = 0;
      for (let t = prompt.length; t < prompt.length + reply.length; t++)
        for (let d = 0; d < D; d++) sum += (rows[t * D + d] * direction.direction[d]) / norm;
      const want = sum / reply.length;
      assert.ok(Math.abs(got[i] - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got[i]} vs ${want}`);
    });
  });

  test('the judge says refused above its threshold, and errors on empty replies and bad directions', async () => {
    const [a, b] = replyRefusalProjections(model, items, direction);
    const mid = (a + b) / 2;
    const judged = await activationRefusalJudge(model, direction, { threshold: mid, above: true }).judge([
      ...items,
      { prompt: 'x', response: '' },
    ]);
    assert.deepEqual(
      judged.slice(0, 2).map((j) => j.kind === 'refusal' && j.refused),
      [a > mid, b > mid],
    );
    const below = await activationRefusalJudge(model, direction, { threshold: mid, above: false }).judge(
      items,
    );
    assert.deepEqual(
      below.map((j) => j.kind === 'refusal' && j.refused),
      [a < mid, b < mid],
    );
    assert.equal(judged[2].kind, 'error');
    assert.throws(
      () => replyRefusalProjections(model, items, { direction: new Float32Array(3), layer: 10 }),
      /d_model/,
    );
    assert.throws(
      () => replyRefusalProjections(model, items, { direction: new Float32Array(D), layer: 10 }),
      /zero/,
    );
    assert.throws(
      () => activationRefusalJudge(model, direction, { threshold: Number.NaN, above: true }),
      /threshold must be finite/,
    );
  });
});
