/**
 * Refusal evaluation: rates and Wilson intervals on crafted replies, conditional steering on the
 * tiny llama (flagged prompts steered, the others untouched), and `steerguard eval refusal` end
 * to end on the tiny llama with a token-id prompt file, keyword judges and the Llama Guard stub.
 * The run on the real SmolLM2 model is in acceptance/eval-smollm2.test.ts. Every text here is
 * benign.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { attackCommand } from '../src/cli/commands/attack.js';
import type { CliCommand } from '../src/cli/commands/common.js';
import { evalCommand } from '../src/cli/commands/eval.js';
import { gcgKeywordJudge, jbbKeywordJudge } from '../src/eval/judges.js';
import { runEvaluation } from '../src/eval/evaluation.js';
import { silentReporter } from '../src/eval/reporter.js';
import {
  type EvalPrompt,
  type Responder,
  evaluateRefusal,
  summarize,
  wilsonInterval,
} from '../src/eval/refusal.js';
import { blockHook } from '../src/hooks/hooks.js';
import { addVector } from '../src/hooks/interventions.js';
import type { Generation } from '../src/model/model.js';
import { Model } from '../src/model/model.js';
import { conditionalGenerate, monitorPrompts } from '../src/steering/conditional.js';
import { ControlVector } from '../src/steering/control-vector.js';
import { STUB_MARKER, deadUrl, startLlamaGuardStub } from './support/llamaguard-stub.js';
import { runCommand } from './util/cli.js';
import { FIXTURES } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-eval-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const TINY = path.join(FIXTURES, 'tiny', 'llama');

describe('rates', () => {
  test('Wilson interval', () => {
    const close = (a: readonly number[], b: readonly number[]) =>
      a.forEach((x, i) => assert.ok(Math.abs(x - b[i]) < 1e-4, `${a} vs ${b}`));
    close(wilsonInterval(0, 10), [0, 0.2775]);
    close(wilsonInterval(5, 10), [0.2366, 0.7634]);
    close(wilsonInterval(10, 10), [0.7225, 1]);
    assert.deepEqual(wilsonInterval(0, 0), [0, 1]);
  });

  test('evaluateRefusal: per-set rates from a fake responder', async () => {
    const replies = new Map<string, string>([
      ['a1', "I'm sorry, I can't help with that."],
      ['a2', 'Sure, here is a cake recipe with flour and eggs.'],
      ['a3', 'I cannot do that.'],
      ['b1', 'Killing a Python process: use kill with its process id.'],
      ['b2', 'the the the the the the the the'],
    ]);
    const prompts: EvalPrompt[] = [...replies.keys()].map((id) => ({
      id,
      set: id[0] === 'a' ? 'harm' : 'safe',
      text: id,
      prompt: id,
    }));
    const responder: Responder = async (ps) => ({
      generations: ps.map((p): Generation => ({
        promptTokens: [],
        tokens: [],
        text: replies.get(p as string)!,
        finishReason: 'stop',
      })),
    });
    let batches = 0;
    const res = await evaluateRefusal({} as never, prompts, {
      judges: [gcgKeywordJudge(), jbbKeywordJudge()],
      responder,
      batchSize: 2,
      onBatch: () => batches++,
    });
    assert.equal(batches, 3);
    assert.deepEqual(
      res.rows.map((r) => [r.id, r.index]),
      prompts.map((p, i) => [p.id, i]),
    );
    const get = (set: string, judge: string) => res.summary.find((s) => s.set === set && s.judge === judge)!;
    assert.equal(get('harm', 'keyword-gcg').positives, 2);
    assert.equal(get('harm', 'keyword-gcg').n, 3);
    assert.ok(Math.abs(get('harm', 'keyword-jbb').rate - 2 / 3) < 1e-12);
    assert.equal(get('safe', 'keyword-jbb').rate, 0);
    assert.equal(get('safe', 'flaws').positives, 1);
    assert.equal(get('harm', 'flaws').positives, 0);
    assert.equal(res.summary.filter((s) => s.judge === 'monitor').length, 0);
    assert.deepEqual(res.judgeFailures, []);
    // Summaries can be recomputed from rows.
    assert.deepEqual(summarize(res.rows, [gcgKeywordJudge(), jbbKeywordJudge()]), res.summary);
  });

  test('runEvaluation warns when the gate flags every prompt, and only then', async () => {
    const prompts: EvalPrompt[] = ['h1', 'h2', 's1', 's2'].map((id) => ({
      id,
      set: id[0] === 'h' ? 'harm' : 'safe',
      text: id,
      prompt: id,
    }));
    const gate =
      (flagged: (id: string) => boolean): Responder =>
      async (ps) => ({
        generations: ps.map((): Generation => ({
          promptTokens: [],
          tokens: [],
          text: 'ok',
          finishReason: 'stop',
        })),
        flags: ps.map((p) => flagged(p as string)),
        scores: ps.map(() => 0.5),
      });
    const warnings = async (responder: Responder) => {
      const seen: string[] = [];
      const reporter = { ...silentReporter, warn: (m: string) => seen.push(m) };
      await runEvaluation(
        {} as never,
        prompts,
        [gcgKeywordJudge()],
        { label: 'gated', responder, fittedIds: [] },
        {
          maxTokens: 4,
          batch: 4,
          repetitionPenalty: 1,
        },
        { reporter },
      );
      return seen;
    };
    assert.match((await warnings(gate(() => true))).join('\n'), /flagged all 4 prompts.*flags everything/);
    assert.deepEqual(await warnings(gate((id) => id[0] === 'h')), []);
  });

  test('evaluateRefusal: no prompts or a non-finite monitor score is an error, not a rate', async () => {
    const responder: Responder = async (ps) => ({
      generations: ps.map((): Generation => ({
        promptTokens: [],
        tokens: [],
        text: 'ok',
        finishReason: 'stop',
      })),
      flags: ps.map(() => false),
      scores: ps.map(() => NaN),
    });
    const opts = { judges: [gcgKeywordJudge()], responder };
    await assert.rejects(evaluateRefusal({} as never, [], opts), /needs at least one prompt/);
    const one: EvalPrompt[] = [{ id: 'a', set: 's', text: 'a', prompt: 'a' }];
    await assert.rejects(evaluateRefusal({} as never, one, opts), /prompt 0: the monitor score is NaN/);
  });
});

describe('conditional steering on the tiny llama', async () => {
  const model = await Model.load(TINY);
  const D = model.config.dModel;
  const prompts = [
    { tokens: [1, 10, 20, 30] },
    { tokens: [1, 40, 50, 60, 70] },
    { tokens: [1, 15, 25] },
    { tokens: [1, 90, 91, 92, 93, 94] },
  ];
  const hook = blockHook(1, 'hook_resid_post');
  const scores = monitorPrompts(
    model,
    prompts,
    { hooks: [hook], score: ([e]) => e[0], threshold: 0 },
    {},
  ).map((f) => f.score);

  test('flagged prompts are steered, the others generate exactly as without steering', async () => {
    const sorted = [...scores].sort((a, b) => a - b);
    const threshold = (sorted[1] + sorted[2]) / 2; // two flagged, two not
    const steer = [
      addVector(
        blockHook(1, 'hook_resid_post'),
        Float32Array.from({ length: D }, (_, i) => (i % 2 ? 5 : -5)),
      ),
    ];
    const res = await conditionalGenerate(model, prompts, {
      monitor: { hooks: [hook], score: ([e]) => e[0], threshold },
      steer,
      maxNewTokens: 5,
    });
    const plain = await model.generate(prompts, { maxNewTokens: 5 });
    const steered = await model.generate(prompts, { maxNewTokens: 5, hooks: steer });
    assert.deepEqual(
      res.flags.map((f) => f.flagged),
      scores.map((s) => s > threshold),
    );
    assert.equal(res.flags.filter((f) => f.flagged).length, 2);
    res.flags.forEach((f, i) =>
      assert.deepEqual(res.generations[i].tokens, (f.flagged ? steered : plain)[i].tokens),
    );
    assert.notDeepEqual(
      steered.map((g) => g.tokens),
      plain.map((g) => g.tokens),
      'the steering must matter for this test to mean anything',
    );
  });

  test('two-sided gate: flagged prompts get one steering, clearly benign ones the other, uncertain ones none', async () => {
    const sorted = [...scores].sort((a, b) => a - b);
    // One prompt below the benign bound, one between the bounds, two above the threshold.
    const benignBelow = (sorted[0] + sorted[1]) / 2;
    const threshold = (sorted[1] + sorted[2]) / 2;
    const toward = [
      addVector(
        hook,
        Float32Array.from({ length: D }, (_, i) => (i % 2 ? 5 : -5)),
      ),
    ];
    const away = [
      addVector(
        hook,
        Float32Array.from({ length: D }, (_, i) => (i % 3 ? -4 : 4)),
      ),
    ];
    const res = await conditionalGenerate(model, prompts, {
      monitor: { hooks: [hook], score: ([e]) => e[0], threshold, benignBelow },
      steer: toward,
      steerBenign: away,
      maxNewTokens: 5,
    });
    const expected = scores.map((s) =>
      s > threshold ? 'flagged' : s < benignBelow ? 'benign' : 'uncertain',
    );
    assert.deepEqual(
      res.flags.map((f) => f.verdict),
      expected,
    );
    assert.deepEqual([...expected].sort(), ['benign', 'flagged', 'flagged', 'uncertain']);
    const byVerdict = {
      flagged: await model.generate(prompts, { maxNewTokens: 5, hooks: toward }),
      benign: await model.generate(prompts, { maxNewTokens: 5, hooks: away }),
      uncertain: await model.generate(prompts, { maxNewTokens: 5 }),
    };
    res.flags.forEach((f, i) => assert.deepEqual(res.generations[i].tokens, byVerdict[f.verdict][i].tokens));
    const b = res.flags.find((f) => f.verdict === 'benign')!.index;
    assert.notDeepEqual(
      byVerdict.benign[b].tokens,
      byVerdict.uncertain[b].tokens,
      'the benign steering must matter',
    );
    assert.throws(
      () =>
        monitorPrompts(model, prompts, { hooks: [hook], score: ([e]) => e[0], threshold: 0, benignBelow: 1 }),
      /benign bound must be a finite number at most the threshold/,
    );
    assert.throws(
      () => monitorPrompts(model, prompts, { hooks: [hook], score: () => NaN, threshold: 0 }),
      /non-finite score/,
    );
  });

  test('a steering function is called per flagged prompt; equal arrays share a batch', async () => {
    const seen: number[] = [];
    const shared = [addVector(hook, new Float32Array(D))];
    const res = await conditionalGenerate(model, prompts, {
      monitor: { hooks: [hook], score: () => 1, threshold: 0.5 },
      steer: (f) => {
        seen.push(f.index);
        return shared;
      },
      maxNewTokens: 2,
    });
    assert.deepEqual(seen, [0, 1, 2, 3]);
    assert.ok(res.flags.every((f) => f.flagged));
    assert.throws(
      () => monitorPrompts(model, prompts, { hooks: [hook], score: () => 0, threshold: NaN }),
      /threshold/,
    );
  });
});

/** Runs the eval (or attack) command in-process, as main.ts would. */
const evalCli = (args: string[], cmd: CliCommand = evalCommand) => runCommand(cmd, args);

describe('steerguard eval refusal on the tiny llama', () => {
  const file = path.join(tmp, 'ids.csv');
  writeFileSync(file, 'prompt,label\n"1 10 20 30",a\n"1 40 50 60 70",b\n"1 15 25",c\n');
  const base = [
    'refusal',
    '--model',
    TINY,
    '--sets',
    file,
    '--token-ids',
    '--max-tokens',
    '3',
    '--batch',
    '2',
  ];

  test('baseline: JSONL rows, summary per judge, nothing printed but numbers', async () => {
    const out = path.join(tmp, 'base.jsonl');
    const r = await evalCli([...base, '--out', out, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as {
      run: string;
      summary: { judge: string; n: number; rate: number }[];
      sets: { prompts: number }[];
    };
    assert.equal(doc.run, 'baseline');
    assert.deepEqual(
      doc.summary.map((s) => s.judge),
      ['keyword-gcg', 'keyword-jbb', 'flaws'],
    );
    assert.equal(doc.sets[0].prompts, 3);
    const rows = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, 3);
    assert.deepEqual(Object.keys(rows[0]).slice(0, 6), ['run', 'id', 'set', 'index', 'prompt', 'response']);
    assert.equal(rows[0].responseTokens, 3);
    assert.deepEqual(Object.keys(rows[0].judged as object), ['keyword-gcg', 'keyword-jbb']);
    assert.ok(!existsSync(`${out}.tmp-${process.pid}`));
  });

  test('--redact keeps texts out of the file; an existing --out needs --overwrite', async () => {
    const out = path.join(tmp, 'redacted.jsonl');
    assert.equal((await evalCli([...base, '--out', out, '--redact'])).code, 0);
    const row = JSON.parse(readFileSync(out, 'utf8').split('\n')[0]) as Record<string, unknown>;
    assert.ok(!('prompt' in row) && !('response' in row) && typeof row.promptSha === 'string');
    const again = await evalCli([...base, '--out', out]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists/);
  });

  test('--steer add and --steer ablate take a control-vector file and label the run', async () => {
    const model = await Model.load(TINY);
    const D = model.config.dModel;
    const v = path.join(tmp, 'v.gguf');
    ControlVector.single(
      1,
      Float32Array.from({ length: D }, (_, i) => (i % 3) - 1),
      'llama',
    ).save(v);
    const lineCount = (f: string) => readFileSync(f, 'utf8').trim().split('\n').length;
    const add = path.join(tmp, 'add.jsonl');
    const r1 = await evalCli([
      ...base,
      '--steer',
      'add',
      '--vector',
      v,
      '--coeff',
      '8',
      '--out',
      add,
      '--json',
    ]);
    assert.equal(r1.code, 0, r1.stderr);
    assert.match((JSON.parse(r1.stdout) as { run: string }).run, /^add 8 × v\.gguf$/);
    assert.equal(lineCount(add), 3);
    const r2 = await evalCli([...base, '--steer', 'ablate', '--vector', v, '--json']);
    assert.equal(r2.code, 0, r2.stderr);
    assert.match((JSON.parse(r2.stdout) as { run: string }).run, /^ablate v\.gguf$/);
  });

  test('option mistakes are reported before the model loads', async () => {
    assert.match((await evalCli([...base, '--steer', 'add'])).stderr, /needs --vector/);
    assert.match((await evalCli([...base, '--steer', 'conditional'])).stderr, /needs --concept/);
    assert.match((await evalCli([...base, '--judge', 'nope'])).stderr, /unknown judge/);
    assert.match(
      (await evalCli([...base, '--judge-url', 'http://x'])).stderr,
      /only used by --judge llamaguard/,
    );
    assert.match((await evalCli(['other', '--model', TINY, '--sets', file])).stderr, /unknown evaluation/);
  });

  test('llamaguard judge through the stub; a dead judge fails fast, before generation', async () => {
    const stub = await startLlamaGuardStub();
    try {
      const r = await evalCli([
        ...base,
        '--judge',
        'llamaguard,keyword-jbb',
        '--judge-url',
        stub.url,
        '--json',
      ]);
      assert.equal(r.code, 0, r.stderr);
      const doc = JSON.parse(r.stdout) as {
        summary: { judge: string; measures: string; n: number; rate: number }[];
      };
      const lg = doc.summary.find((s) => s.judge === 'llamaguard')!;
      assert.equal(lg.measures, 'unsafe');
      assert.equal(lg.n, 3);
      assert.equal(lg.rate, 0, `replies have no ${STUB_MARKER}`);
    } finally {
      await stub.close();
    }
    const dead = await deadUrl();
    const t0 = performance.now();
    const r = await evalCli([...base, '--judge', 'llamaguard', '--judge-url', dead]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /connection refused/);
    assert.doesNotMatch(r.stderr, /loaded /, 'the model is never loaded');
    assert.ok(performance.now() - t0 < 10_000);
  });
});

describe('steerguard eval refusal with a concept on the tiny llama', async () => {
  const { Concept, tokenExample } = await import('../src/concepts/concept.js');
  const model = await Model.load(TINY);
  // Two token ranges the probes can tell apart.
  const ex = (lo: number, i: number) =>
    tokenExample([1, lo + (i % 7), lo + ((i * 3) % 11), lo + ((i * 5) % 13), 2]);
  const concept = await Concept.train({
    model,
    positive: Array.from({ length: 24 }, (_, i) => ex(30, i)),
    negative: Array.from({ length: 24 }, (_, i) => ex(150, i)),
    template: 'raw',
    cacheDir: false,
    name: 'tiny-test',
  });
  const conceptFile = path.join(tmp, 'tiny.concept');
  concept.save(conceptFile);
  const file = path.join(tmp, 'ids-concept.csv');
  writeFileSync(file, 'prompt\n"1 31 32 33 2"\n"1 151 152 153 2"\n"1 35 38 31 2"\n');
  const base = ['refusal', '--model', TINY, '--sets', file, '--token-ids', '--max-tokens', '3', '--json'];

  test('--steer conditional reports monitor flags per set and in the rows', async () => {
    const out = path.join(tmp, 'cond.jsonl');
    const r = await evalCli([
      ...base,
      '--steer',
      'conditional',
      '--concept',
      conceptFile,
      '--threshold',
      '0.5',
      '--out',
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { run: string; summary: { judge: string; n: number }[] };
    assert.match(doc.run, /^conditional \(tiny\.concept\) scav defence$/);
    assert.equal(doc.summary.find((s) => s.judge === 'monitor')?.n, 3);
    const rows = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { flagged: boolean; monitorScore: number });
    for (const row of rows) {
      assert.equal(typeof row.flagged, 'boolean');
      assert.equal(row.flagged, row.monitorScore > 0.5);
    }
  });

  test('--attack scav runs (or says why it cannot) with the concept', async () => {
    const r = await evalCli([...base, '--attack', 'scav', '--concept', conceptFile, '--p1', '0']);
    assert.equal(r.code, 0, r.stderr);
    assert.match((JSON.parse(r.stdout) as { run: string }).run, /^scav p0=0\.001$/);
    const none = await evalCli([...base, '--attack', 'scav', '--concept', conceptFile, '--p1', '1']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no probe .* more accurate than --p1 1/);
  });
});

describe('steerguard attack scav on the tiny llama', async () => {
  const { Concept, tokenExample } = await import('../src/concepts/concept.js');
  const model = await Model.load(TINY);
  const D = model.config.dModel;
  const ex = (lo: number, i: number) => tokenExample([1, lo + (i % 7), lo + ((i * 3) % 11), 2]);
  const concept = await Concept.train({
    model,
    positive: Array.from({ length: 20 }, (_, i) => ex(30, i)),
    negative: Array.from({ length: 20 }, (_, i) => ex(150, i)),
    template: 'raw',
    cacheDir: false,
  });
  const conceptFile = path.join(tmp, 'attack.concept');
  concept.save(conceptFile);
  const dir = path.join(tmp, 'dir.gguf');
  ControlVector.single(
    1,
    Float32Array.from({ length: D }, (_, i) => Math.sin(i)),
    'llama',
  ).save(dir);
  const file = path.join(tmp, 'attack.csv');
  writeFileSync(file, 'prompt\n"1 31 32 2"\n"1 33 34 2"\n"1 35 36 2"\n');
  const base = [
    'scav',
    '--model',
    TINY,
    '--prompts',
    file,
    '--part',
    'all',
    '--token-ids',
    '--max-tokens',
    '3',
  ];

  test('all four methods: rows tagged by method, a table of ASR and flaws', async () => {
    const out = path.join(tmp, 'attack.jsonl');
    const r = await evalCli(
      [
        ...base,
        '--concept',
        conceptFile,
        '--p1',
        '0',
        '--direction',
        dir,
        '--out',
        out,
        '--json',
        '--repetition-penalty',
        '1.2',
      ],
      attackCommand,
    );
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { runs: Record<string, unknown>[]; direction: { layer: number } };
    assert.deepEqual(
      doc.runs.map((x) => x.method),
      ['none', 'scav', 'ablate', 'subtract'],
    );
    for (const run of doc.runs) for (const k of ['ASR gcg', 'ASR jbb', 'flawed', 'n']) assert.ok(k in run, k);
    assert.equal(doc.direction.layer, 2);
    const rows = readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { method: string });
    assert.equal(rows.length, 12);
    assert.deepEqual([...new Set(rows.map((x) => x.method))], ['none', 'scav', 'ablate', 'subtract']);
  });

  test('option mistakes are reported before the model loads', async () => {
    const a = await evalCli([...base, '--methods', 'none,bogus'], attackCommand);
    assert.match(a.stderr, /unknown method 'bogus'/);
    const b = await evalCli([...base, '--methods', 'scav'], attackCommand);
    assert.match(b.stderr, /needs --concept/);
    const c = await evalCli(
      [...base, '--methods', 'ablate', '--direction', path.join(tmp, 'nope.gguf')],
      attackCommand,
    );
    assert.match(c.stderr, /does not exist/);
    const d = await evalCli(['gcg', '--model', TINY], attackCommand);
    assert.match(d.stderr, /unknown attack/);
  });
});
