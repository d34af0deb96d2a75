/**
 * Prompt sets by short name, seeded splits, deduplication and the leakage guard.
 *
 * The shared datasets are read where they lie ($STEERGUARD_DATA, else ../shared/datasets beside
 * the project) and never copied. Harmful sets are data: assertions look at counts, ids and fields,
 * and never put a prompt into a failure message.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { isPromptSetName, knownPromptSets, loadPromptSet, resolveDataDir } from '../src/data/datasets.js';
import {
  LeakageError,
  assignSplit,
  checkLeakage,
  contentId,
  dedupeByText,
  normalizePromptText,
  parseSplit,
  splitItems,
  splitUnit,
} from '../src/data/splits.js';
import { OptionError } from '../src/formats/errors.js';
import { ROOT } from './util/fixtures.js';

const DATA = process.env.STEERGUARD_DATA ?? path.join(ROOT, '..', 'shared', 'datasets');
const haveData = existsSync(path.join(DATA, 'advbench', 'harmful_behaviors.csv'));
const skipData = haveData ? false : `no datasets at ${DATA} (set STEERGUARD_DATA)`;

const tmp = mkdtempSync(path.join(tmpdir(), 'sg-datasets-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The error thrown by `fn`, checked against a type and a pattern without echoing prompt text. */
function thrown<T extends Error>(fn: () => unknown, type: new (...a: never[]) => T, pattern: RegExp): T {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(
    caught instanceof type,
    `expected ${type.name}, got ${caught instanceof Error ? caught.name : String(caught)}`,
  );
  assert.match((caught as Error).message, pattern);
  return caught as T;
}

describe('named prompt sets', { skip: skipData }, () => {
  const expected: [string, number][] = [
    ['advbench', 520],
    ['advbench-strings', 572], // 574 rows, 2 repeats
    ['harmbench', 200],
    ['harmbench:val', 41],
    ['harmbench:test', 159],
    ['harmbench-contextual', 100],
    ['scav-malicious', 100],
    ['scav-malicious:train', 50],
    ['scav-malicious:test', 50],
    ['scav-safe', 100],
    ['scav-safe:test', 50],
    ['xstest-safe', 250],
    ['xstest-unsafe', 200],
    ['xstest-safe:homonyms', 25],
    ['xstest-unsafe:contrast_privacy', 25],
    ['alpaca:val', 6264],
    ['alpaca-seed', 175],
    ['gsm8k', 1319],
    ['truthfulqa', 817],
  ];
  for (const [name, count] of expected) {
    it(`${name} has ${count} prompts`, () => {
      const set = loadPromptSet(name, { dataDir: DATA });
      assert.equal(set.prompts.length, count);
      assert.equal(set.name, name);
      assert.ok(set.prompts.every((p) => /^[0-9a-f]{16}$/.test(p.id) && p.id === contentId(p.text)));
      assert.equal(new Set(set.prompts.map((p) => p.id)).size, count, 'ids are unique after deduplication');
    });
  }

  it('keeps the source fields (SCAV TrainTestFlag, HarmBench category) and marks harmful sets', () => {
    const train = loadPromptSet('scav-malicious:train', { dataDir: DATA });
    assert.ok(
      train.prompts.every((p) => p.fields.TrainTestFlag === 'Train' && p.fields.Label === 'Malicious'),
    );
    assert.equal(train.harmful, true);
    assert.equal(loadPromptSet('scav-safe', { dataDir: DATA }).harmful, false);
    const hb = loadPromptSet('harmbench', { dataDir: DATA });
    assert.ok(hb.prompts.every((p) => p.fields.FunctionalCategory === 'standard'));
    const ctx = loadPromptSet('harmbench-contextual', { dataDir: DATA, limit: 3 });
    assert.ok(
      ctx.prompts.every((p) => p.text.includes(p.fields.ContextString) && p.text.endsWith(p.fields.Behavior)),
    );
  });

  it('the XSTest types partition each half of XSTest', () => {
    for (const name of ['xstest-safe', 'xstest-unsafe']) {
      const all = loadPromptSet(name, { dataDir: DATA });
      const types = [...new Set(all.prompts.map((p) => p.fields.type))];
      const parts = types.map((t) => loadPromptSet(`${name}:${t}`, { dataDir: DATA }));
      assert.ok(parts.every((p, i) => p.prompts.every((q) => q.fields.type === types[i])));
      assert.equal(
        parts.reduce((n, p) => n + p.prompts.length, 0),
        all.prompts.length,
      );
    }
    assert.throws(() => loadPromptSet('xstest-safe:contrast_privacy', { dataDir: DATA }), /has no split/);
  });

  it('the alpaca splits partition the full set', () => {
    const sizes = ['train', 'val', 'test'].map(
      (s) => loadPromptSet(`alpaca:${s}`, { dataDir: DATA }).prompts.length,
    );
    assert.deepEqual(sizes, [18793, 6264, 6266]);
    assert.equal(loadPromptSet('alpaca', { dataDir: DATA, limit: 140 }).prompts.length, 140);
  });

  it('applies --limit after filtering', () => {
    const set = loadPromptSet('xstest-unsafe', { dataDir: DATA, limit: 7 });
    assert.equal(set.prompts.length, 7);
    assert.ok(set.prompts.every((p) => p.fields.label === 'unsafe'));
  });

  it('STEERGUARD_DATA stands in for --data-dir', () => {
    assert.equal(loadPromptSet('advbench', { env: { STEERGUARD_DATA: DATA } }).prompts.length, 520);
  });
});

describe('set errors', () => {
  it('an unknown name lists the known ones', () => {
    const err = thrown(
      () => loadPromptSet('advbenchh', { dataDir: tmp }),
      OptionError,
      /unknown prompt set 'advbenchh'/,
    );
    for (const s of knownPromptSets()) assert.ok(err.message.includes(s.name), s.name);
  });

  it('no data directory and no dataset cache is a clear error', () => {
    const env = { STEERGUARD_CACHE: path.join(tmp, 'no-cache') };
    thrown(
      () => resolveDataDir(undefined, env),
      OptionError,
      /data fetch.*--data-dir DIR or set STEERGUARD_DATA/,
    );
    thrown(() => loadPromptSet('advbench', { env }), OptionError, /--data-dir/);
    thrown(() => resolveDataDir(path.join(tmp, 'nope')), OptionError, /does not exist/);
  });

  it('a data directory without the file names what is missing', () => {
    thrown(
      () => loadPromptSet('xstest-safe', { dataDir: tmp }),
      OptionError,
      /xstest\/xstest_prompts\.csv, which is not in the data directory .*steerguard data fetch xstest/,
    );
  });

  it('a split suffix the set lacks', () => {
    thrown(() => loadPromptSet('advbench:train', { dataDir: tmp }), OptionError, /no predefined splits/);
    thrown(
      () => loadPromptSet('scav-safe:val', { dataDir: tmp }),
      OptionError,
      /scav-safe:train, scav-safe:test/,
    );
  });

  it('recognises names', () => {
    assert.ok(isPromptSetName('alpaca:train'));
    assert.ok(!isPromptSetName('my.csv'));
  });
});

describe('file sets', () => {
  const csv = path.join(tmp, 'benign.csv');
  writeFileSync(csv, 'q,other\nWhat is two plus two?,a\nwhat  is TWO plus two?,b\nName a colour.,c\n');
  const jsonl = path.join(tmp, 'sub', 'p.jsonl');
  mkdirSync(path.dirname(jsonl), { recursive: true });
  writeFileSync(jsonl, '{"text":"one"}\n{"text":"two"}\n');

  it('takes file#column and removes normalised repeats', () => {
    const set = loadPromptSet(`${csv}#q`);
    assert.equal(set.prompts.length, 2);
    assert.equal(set.duplicatesRemoved, 1);
    assert.equal(set.name, 'benign.csv#q');
    assert.equal(set.harmful, undefined);
    assert.equal(loadPromptSet(csv, { column: 'q', dedupe: false }).prompts.length, 3);
  });

  it('guesses the column like loadPromptFile', () => {
    const set = loadPromptSet(jsonl);
    assert.equal(set.column, 'text');
    assert.deepEqual(
      set.prompts.map((p) => p.index),
      [0, 1],
    );
  });

  it('a missing file', () => {
    thrown(() => loadPromptSet(path.join(tmp, 'missing.csv')), OptionError, /does not exist/);
  });
});

describe('splits', () => {
  const items = Array.from({ length: 2000 }, (_, i) => ({ id: contentId(`prompt number ${i}`) }));

  it('parses fractions and refuses bad ones', () => {
    assert.deepEqual(parseSplit('0.7,0.1,0.2'), { train: 0.7, val: 0.1, test: 0.2 });
    assert.deepEqual(parseSplit('1,0,0'), { train: 1, val: 0, test: 0 });
    thrown(() => parseSplit('0.7,0.2'), OptionError, /three/);
    thrown(() => parseSplit('0.7,0.2,0.2'), OptionError, /sum to 1/);
    thrown(() => parseSplit('0,0.5,0.5'), OptionError, /train fraction/);
  });

  it('is deterministic, depends on the seed, and follows the fractions', () => {
    const a = splitItems(items, { seed: 0 });
    const b = splitItems(items, { seed: 0 });
    assert.deepEqual(a, b);
    const c = splitItems(items, { seed: 1 });
    assert.notDeepEqual(a.train, c.train);
    assert.ok(Math.abs(a.train.length / 2000 - 0.7) < 0.04, `train ${a.train.length}`);
    assert.ok(Math.abs(a.val.length / 2000 - 0.1) < 0.03, `val ${a.val.length}`);
    assert.equal(a.train.length + a.val.length + a.test.length, 2000);
    const u = items.map((it) => splitUnit(it.id, 0));
    assert.ok(u.every((x) => x >= 0 && x < 1));
  });

  it('adding prompts moves no other prompt', () => {
    const small = splitItems(items.slice(0, 500), { seed: 3 });
    const big = splitItems(items, { seed: 3 });
    for (const s of ['train', 'val', 'test'] as const) {
      const inBig = new Set(big[s].map((x) => x.id));
      assert.ok(
        small[s].every((x) => inBig.has(x.id)),
        s,
      );
    }
    assert.equal(
      assignSplit(items[0].id, 3),
      small.train.includes(items[0]) ? 'train' : small.val.includes(items[0]) ? 'val' : 'test',
    );
  });

  it('deduplicates on normalised text', () => {
    assert.equal(normalizePromptText('  Hello\tWORLD \n'), 'hello world');
    assert.equal(normalizePromptText('ﬁne'), 'fine');
    const d = dedupeByText([{ text: 'Hello  world' }, { text: 'hello world' }, { text: 'bye' }]);
    assert.equal(d.removed, 1);
    assert.deepEqual(
      d.items.map((x) => x.text),
      ['Hello  world', 'bye'],
    );
    assert.equal(contentId('Hello  world'), contentId('hello world'));
  });

  it('the leakage guard refuses overlap unless allowed', () => {
    const fitted = items.slice(0, 10).map((x) => x.id);
    const err = thrown(
      () => checkLeakage(fitted, items.slice(5, 20), { what: 'probe X' }),
      LeakageError,
      /5 of 15 evaluation prompts were used to fit probe X/,
    );
    assert.equal(err.overlap.length, 5);
    assert.match(err.message, /--allow-overlap/);
    assert.deepEqual(checkLeakage(fitted, items.slice(5, 20), { allow: true }), fitted.slice(5));
    assert.deepEqual(checkLeakage(fitted, items.slice(10, 20)), []);
  });
});
