/**
 * The harmful fine-tuning attack's mix (src/training/finetune-attack.ts) and the security
 * vector's (security-vector.ts): the share and counts, seed determinism, the record, the errors
 * (a share outside [0, 1], a pool too small, a conversation with no assistant turn, a missing
 * answer), and the command line's option checks before any model loads. No model runs here; the
 * whole path on SmolLM2 is in test/acceptance/finetune-smollm2.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { attackCommand } from '../src/cli/commands/attack.js';
import { defendCommand } from '../src/cli/commands/defend.js';
import { contentId } from '../src/data/splits.js';
import { FormatError, OptionError } from '../src/formats/errors.js';
import { readTrainingFile } from '../src/training/data.js';
import { buildTrainingMix, mixTrainingJsonl, readMixPool } from '../src/training/finetune-attack.js';
import { harmfulIds, securityVectorMix } from '../src/training/security-vector.js';
import { runCommand } from './util/cli.js';
import { FIXTURES } from './util/fixtures.js';

const scratch = mkdtempSync(path.join(tmpdir(), 'steerguard-finetune-mix-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** Prompt files written by the test (the real harmful sets are never copied). */
function csv(name: string, rows: number, withAnswers: boolean): string {
  const file = path.join(scratch, name);
  const lines = ['prompt,answer'];
  for (let i = 0; i < rows; i++) lines.push(`"${name} question ${i}?",${withAnswers ? `"reply ${i}"` : ''}`);
  writeFileSync(file, `${lines.join('\n')}\n`);
  return file;
}

const benign = readMixPool(csv('benign.csv', 40, true), { column: 'prompt', answerColumn: 'answer' });
const harmful = readMixPool(csv('harmful.csv', 30, false), { column: 'prompt' });

describe('the training mix', () => {
  test('round(share × samples) harmful examples, the rest benign, each drawn once', () => {
    for (const [share, samples, nHarmful] of [
      [0.1, 20, 2],
      [0.25, 10, 3], // 2.5 rounds up
      [0, 12, 0],
      [1, 12, 12],
      [0.5, 1, 1],
    ] as const) {
      const { items, record } = buildTrainingMix(benign, harmful, { harmfulShare: share, samples, seed: 0 });
      assert.equal(items.length, samples);
      assert.equal(items.filter((x) => x.kind === 'harmful').length, nHarmful);
      assert.deepEqual(record.counts, { benign: samples - nHarmful, harmful: nHarmful });
      assert.equal(new Set(items.map((x) => `${x.kind}:${x.example.id}`)).size, samples);
      for (const it of items) {
        const pool = it.kind === 'benign' ? benign : harmful;
        assert.ok(pool.examples.includes(it.example));
      }
    }
  });

  test('the same seed draws the same mix in the same order; another seed another one', () => {
    const o = { harmfulShare: 0.2, samples: 20, seed: 5 };
    const a = buildTrainingMix(benign, harmful, o);
    const b = buildTrainingMix(benign, harmful, o);
    assert.deepEqual(a.record, b.record);
    assert.deepEqual(a.items, b.items);
    const c = buildTrainingMix(benign, harmful, { ...o, seed: 6 });
    assert.notDeepEqual(c.record.items, a.record.items);
    assert.notEqual(c.record.promptsSha256, a.record.promptsSha256);
    // Harmful and benign examples are interleaved, not in two blocks.
    const kinds = a.items.map((x) => x.kind).join('');
    assert.notEqual(kinds, [...kinds].sort().join(''));
  });

  test('the record names sources, seed, rows and content ids, and no text', () => {
    const { record } = buildTrainingMix(benign, harmful, { harmfulShare: 0.1, samples: 10, seed: 1 });
    assert.equal(record.format, 'steerguard.finetune-mix');
    assert.equal(record.seed, 1);
    assert.equal(record.harmfulShare, 0.1);
    assert.equal(record.sources.harmful.pool, 30);
    assert.equal(record.sources.benign.pool, 40);
    assert.match(record.promptsSha256, /^[0-9a-f]{64}$/);
    for (const it of record.items) {
      const pool = it.kind === 'benign' ? benign : harmful;
      const ex = pool.examples.find((e) => e.row === it.row)!;
      assert.equal(it.id, contentId(ex.prompt[0].content));
    }
    const text = JSON.stringify(record);
    assert.doesNotMatch(text, /question|reply/);
  });

  test('a share outside [0, 1], a bad count or a pool too small is an error', () => {
    for (const harmfulShare of [-0.1, 1.5, Number.NaN, Infinity])
      assert.throws(
        () => buildTrainingMix(benign, harmful, { harmfulShare, samples: 10, seed: 0 }),
        (e: unknown) => e instanceof OptionError && /harmful share must be in \[0, 1\]/.test(e.message),
      );
    for (const samples of [0, 2.5, -3])
      assert.throws(
        () => buildTrainingMix(benign, harmful, { harmfulShare: 0.1, samples, seed: 0 }),
        /samples/,
      );
    assert.throws(
      () => buildTrainingMix(benign, harmful, { harmfulShare: 0.5, samples: 70, seed: 0 }),
      /harmful\.csv.* has 30 examples; 35 are needed/,
    );
  });

  test('the conversations written are train lora data: prompt turns, then the answer', () => {
    const { items } = buildTrainingMix(benign, harmful, { harmfulShare: 0.5, samples: 4, seed: 2 });
    const file = path.join(scratch, 'mix.jsonl');
    writeFileSync(
      file,
      mixTrainingJsonl(
        items,
        items.map((_, i) => `answer ${i}`),
      ),
    );
    const { records } = readTrainingFile(file);
    assert.equal(records.length, 4);
    records.forEach((r, i) => {
      assert.equal(r.kind, 'chat');
      if (r.kind !== 'chat') return;
      assert.deepEqual(r.messages, [
        ...items[i].example.prompt,
        { role: 'assistant', content: `answer ${i}` },
      ]);
    });
    assert.throws(() => mixTrainingJsonl(items, ['one']), /1 answers for 4 examples/);
  });
});

describe('pools', () => {
  test('a chat file: the last assistant turn is the answer; one with no assistant turn is an error', () => {
    const good = path.join(scratch, 'chats.jsonl');
    writeFileSync(
      good,
      [
        {
          messages: [
            { role: 'user', content: 'hi' },
            { role: 'assistant', content: 'hello' },
          ],
        },
        { prompt: 'p', response: 'r' },
      ]
        .map((x) => JSON.stringify(x))
        .join('\n'),
    );
    const pool = readMixPool(good);
    assert.equal(pool.answers, 'file');
    assert.deepEqual(
      pool.examples.map((e) => [e.row, e.answer, e.prompt.length]),
      [
        [1, 'hello', 1],
        [2, 'r', 1],
      ],
    );
    assert.throws(() => readMixPool(good, { answerColumn: 'x' }), /chat file/);

    const bad = path.join(scratch, 'no-assistant.jsonl');
    writeFileSync(
      bad,
      [
        {
          messages: [
            { role: 'user', content: 'a' },
            { role: 'assistant', content: 'b' },
          ],
        },
        { messages: [{ role: 'user', content: 'secret words' }] },
      ]
        .map((x) => JSON.stringify(x))
        .join('\n'),
    );
    assert.throws(
      () => readMixPool(bad),
      (e: unknown) =>
        e instanceof FormatError &&
        e.message.includes(bad) &&
        /line 2/.test(e.message) &&
        /no assistant turn/.test(e.message) &&
        !e.message.includes('secret'),
    );
  });

  test('a row without an answer in the answer column is an error naming the row', () => {
    const file = path.join(scratch, 'half.csv');
    writeFileSync(file, 'prompt,answer\n"q0","a0"\n"q1",\n');
    assert.throws(
      () => readMixPool(file, { column: 'prompt', answerColumn: 'answer' }),
      (e: unknown) => e instanceof FormatError && /row 2: answer/.test(e.message),
    );
  });

  test('--part keeps one part of the seeded split, as the evaluations cut it', () => {
    const opts = { column: 'prompt', part: 'train' as const, split: '0.7,0.1,0.2', splitSeed: 0 };
    const train = readMixPool(path.join(scratch, 'benign.csv'), opts);
    const test = readMixPool(path.join(scratch, 'benign.csv'), { ...opts, part: 'test' });
    assert.match(train.name, /@train$/);
    assert.ok(train.examples.length > 0 && test.examples.length > 0);
    const testIds = new Set(test.examples.map((e) => e.id));
    assert.ok(train.examples.every((e) => !testIds.has(e.id)));
  });
});

describe('the security vector mix', () => {
  test("all harmful, none of the fine-tune's harmful examples", () => {
    const mix = buildTrainingMix(benign, harmful, { harmfulShare: 0.5, samples: 20, seed: 0 });
    const taken = harmfulIds(mix.items);
    assert.equal(taken.size, 10);
    const sv = securityVectorMix(harmful, { samples: 20, seed: 1, exclude: taken });
    assert.deepEqual(sv.record.counts, { benign: 0, harmful: 20 });
    assert.equal(sv.record.excluded, 10);
    assert.ok(sv.items.every((it) => it.kind === 'harmful' && !taken.has(it.example.id)));
    assert.throws(
      () => securityVectorMix(harmful, { samples: 21, seed: 1, exclude: taken }),
      /20 examples not used elsewhere; 21 are needed/,
    );
  });
});

describe('attack finetune and defend security-vector: option mistakes, before any model loads', () => {
  const model = path.join(FIXTURES, 'tiny', 'llama');
  const benignFile = path.join(scratch, 'benign.csv');
  const harmfulFile = path.join(scratch, 'harmful.csv');
  const base = ['--model', model, '--benign', `${benignFile}#prompt`, '--harmful', `${harmfulFile}#prompt`];

  test('harmful examples without answers are refused', async () => {
    const r = await runCommand(attackCommand, ['finetune', ...base, '--out', path.join(scratch, 'a1')]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /need answers: --harmful-answer-column COLUMN, or --harmful-answers-from-ablation/,
    );
    const d = await runCommand(defendCommand, [
      'security-vector',
      ...base,
      '--out',
      path.join(scratch, 'd1'),
    ]);
    assert.match(d.stderr, /need answers/);
  });

  test('a mix with no harmful example needs no harmful answers', async () => {
    const r = await runCommand(attackCommand, [
      'finetune',
      ...base,
      '--harmful-share',
      '0',
      '--samples',
      '4',
      '--benign-answer-column',
      'answer',
      '--out',
      path.join(scratch, 'a0'),
    ]);
    // It gets as far as tokenizing the chats, which the tiny model (token ids only) cannot.
    assert.equal(r.code, 1);
    assert.doesNotMatch(r.stderr, /need answers/);
    assert.match(r.stderr, /tokenizer/);
  });

  test('a share outside [0, 1] and a missing direction file are refused', async () => {
    const r = await runCommand(attackCommand, [
      'finetune',
      ...base,
      '--harmful-share',
      '1.5',
      '--out',
      path.join(scratch, 'a2'),
    ]);
    assert.match(r.stderr, /harmful-share/);
    const m = await runCommand(attackCommand, [
      'finetune',
      ...base,
      '--harmful-answers-from-ablation',
      path.join(scratch, 'nope.gguf'),
      '--out',
      path.join(scratch, 'a3'),
    ]);
    assert.match(m.stderr, /does not exist/);
    const both = await runCommand(attackCommand, [
      'finetune',
      ...base,
      '--harmful-answer-column',
      'answer',
      '--harmful-answers-from-ablation',
      path.join(scratch, 'nope.gguf'),
      '--out',
      path.join(scratch, 'a4'),
    ]);
    assert.match(both.stderr, /not both/);
  });

  test('attack scav still runs as before, and an unknown attack names both', async () => {
    const r = await runCommand(attackCommand, ['gcg', '--model', model]);
    assert.match(r.stderr, /unknown attack 'gcg'; known: scav, finetune/);
    const d = await runCommand(defendCommand, ['nothing']);
    assert.match(d.stderr, /unknown action 'nothing'/);
  });
});
