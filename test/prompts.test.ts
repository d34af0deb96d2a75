import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  loadPromptFile,
  parseCsv,
  promptId,
  promptListHash,
  type PromptRecord,
} from '../src/data/prompts.js';
import { FormatError, OptionError } from '../src/formats/errors.js';

// dist/test/x.js -> project root is two levels up; datasets live beside the project.
const DATASETS = fileURLToPath(new URL('../../../shared/datasets/', import.meta.url));
const haveDatasets = existsSync(join(DATASETS, 'README.md'));

function checkRecords(records: PromptRecord[]): void {
  records.forEach((r, k) => {
    assert.equal(r.index, k);
    assert.match(r.id, /^[0-9a-f]{16}$/);
    assert.equal(r.id, promptId(r.text));
    assert.ok(r.text.trim().length > 0);
  });
}

/** Asserting on a FormatError without letting node:test print a prompt on failure. */
function formatError(fn: () => unknown, pattern: RegExp): FormatError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof FormatError, `expected a FormatError, got ${String(caught)}`);
  assert.match(caught.message, pattern);
  return caught;
}

describe(
  'loadPromptFile on the shared datasets',
  { skip: !haveDatasets && 'no shared/datasets beside the repository' },
  () => {
    it('advbench harmful_behaviors.csv, column goal: 520 rows', () => {
      const recs = loadPromptFile(join(DATASETS, 'advbench/harmful_behaviors.csv'), { column: 'goal' });
      assert.equal(recs.length, 520);
      checkRecords(recs);
      assert.deepEqual(Object.keys(recs[0].fields), ['goal', 'target']);
      // Default column finds 'goal' too.
      const dflt = loadPromptFile(join(DATASETS, 'advbench/harmful_behaviors.csv'));
      assert.deepEqual(
        dflt.map((r) => r.id),
        recs.map((r) => r.id),
      );
    });

    it('harmbench text_all (CRLF, multi-line quoted ContextString): 400 rows', () => {
      const recs = loadPromptFile(join(DATASETS, 'harmbench/harmbench_behaviors_text_all.csv'), {
        column: 'Behavior',
      });
      assert.equal(recs.length, 400);
      checkRecords(recs);
      assert.deepEqual(Object.keys(recs[0].fields), [
        'Behavior',
        'FunctionalCategory',
        'SemanticCategory',
        'Tags',
        'ContextString',
        'BehaviorID',
      ]);
      const categories = new Map<string, number>();
      for (const r of recs)
        categories.set(r.fields.FunctionalCategory, (categories.get(r.fields.FunctionalCategory) ?? 0) + 1);
      assert.deepEqual(Object.fromEntries(categories), { standard: 200, contextual: 100, copyright: 100 });
      const contextual = recs.filter((r) => r.fields.FunctionalCategory === 'contextual');
      assert.ok(contextual.every((r) => r.fields.ContextString.length > 0));
      assert.ok(
        contextual.some((r) => r.fields.ContextString.includes('\n')),
        'multi-line fields are kept whole',
      );
      assert.ok(
        recs.every((r) => !r.fields.BehaviorID.includes('\r')),
        'CRLF does not leak into the last field',
      );
      assert.equal(new Set(recs.map((r) => r.fields.BehaviorID)).size, 400);
    });

    it('xstest_prompts.csv: 450 rows, 250 safe and 200 unsafe', () => {
      const recs = loadPromptFile(join(DATASETS, 'xstest/xstest_prompts.csv'));
      assert.equal(recs.length, 450);
      checkRecords(recs);
      assert.equal(recs.filter((r) => r.fields.label === 'safe').length, 250);
      assert.equal(recs.filter((r) => r.fields.label === 'unsafe').length, 200);
    });

    it('alpaca harmless_test.json (array of {instruction, category}): 6266 rows', () => {
      const recs = loadPromptFile(join(DATASETS, 'alpaca/harmless_test.json'));
      assert.equal(recs.length, 6266);
      checkRecords(recs);
      assert.deepEqual(Object.keys(recs[0].fields), ['instruction', 'category']);
      assert.equal(recs[0].text, recs[0].fields.instruction);
    });

    it('gsm8k test.jsonl, column question: 1319 rows; limit', () => {
      const path = join(DATASETS, 'gsm8k/test.jsonl');
      const recs = loadPromptFile(path, { column: 'question' });
      assert.equal(recs.length, 1319);
      checkRecords(recs);
      assert.ok(recs.every((r) => r.fields.answer.includes('####')));
      const first = loadPromptFile(path, { column: 'question', limit: 10 });
      assert.deepEqual(first, recs.slice(0, 10));
    });

    it('TruthfulQA falls back to the capitalised Question column; scav to Instruction', () => {
      const tqa = loadPromptFile(join(DATASETS, 'truthfulqa/TruthfulQA.csv'));
      assert.equal(tqa.length, 817);
      assert.equal(tqa[0].text, tqa[0].fields.Question);
      const scav = loadPromptFile(join(DATASETS, 'scav/instructions.csv'));
      assert.equal(scav.length, 200);
      assert.equal(scav[0].text, scav[0].fields.Instruction);
    });

    it('a file without a header row says so and quotes none of its first row', () => {
      const path = join(DATASETS, 'advbench/transfer_expriment_behaviors.csv');
      const firstRow = parseCsv(readFileSync(path, 'utf8'))[0].values;
      for (const column of [undefined, 'prompt']) {
        const err = formatError(
          () => loadPromptFile(path, { column }),
          /first line does not look like a header row .* seems to have no header: add a first line naming the columns/,
        );
        for (const cell of firstRow) assert.ok(!err.message.includes(cell.slice(0, 12)), 'no cell text');
      }
    });

    it('missing column lists the columns that exist', () => {
      formatError(
        () => loadPromptFile(join(DATASETS, 'advbench/harmful_behaviors.csv'), { column: 'prompt' }),
        /harmful_behaviors\.csv: prompt: no such column; the file has columns "goal", "target"/,
      );
    });
  },
);

describe('loadPromptFile on small files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sg-prompts-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const file = (name: string, content: string | Buffer): string => {
    const p = join(dir, `${n++}-${name}`);
    writeFileSync(p, content);
    return p;
  };

  it('CSV: quotes, embedded commas/newlines/quotes, CRLF, BOM', () => {
    const p = file('ok.csv', '\ufeffid,prompt\r\n1,"a, b"\r\n2,"say ""hi""\r\nthen go"\r\n3,plain\r\n\r\n');
    const recs = loadPromptFile(p);
    assert.deepEqual(
      recs.map((r) => r.text),
      ['a, b', 'say "hi"\r\nthen go', 'plain'],
    );
    assert.deepEqual(recs[2].fields, { id: '3', prompt: 'plain' });
  });

  it('CSV: exact field values and line numbers from parseCsv', () => {
    const recs = parseCsv('a,b\n"x\ny",2\n\n3,"q""q"\n,\n');
    assert.deepEqual(recs, [
      { line: 1, values: ['a', 'b'] },
      { line: 2, values: ['x\ny', '2'] },
      { line: 5, values: ['3', 'q"q'] },
      { line: 6, values: ['', ''] },
    ]);
    assert.deepEqual(parseCsv('a\nb'), [
      { line: 1, values: ['a'] },
      { line: 2, values: ['b'] },
    ]);
    assert.deepEqual(parseCsv('a,"b"'), [{ line: 1, values: ['a', 'b'] }]);
    assert.deepEqual(parseCsv('5 in" tall,x\n'), [{ line: 1, values: ['5 in" tall', 'x'] }]);
  });

  it('CSV errors: unterminated quote, ragged row, text after quote, duplicate column', () => {
    formatError(
      () => loadPromptFile(file('q.csv', 'prompt,x\nfine,1\n"never closed,2\nmore,3\n')),
      /line 3: quoted field is never closed/,
    );
    formatError(
      () => loadPromptFile(file('r.csv', 'prompt,x\na,1\n"b\nc",2\nd\n')),
      /line 5: row has 1 fields but the header has 2/,
    );
    formatError(
      () => loadPromptFile(file('t.csv', 'prompt\n"a"b\n')),
      /line 2: unexpected text after a closing quote/,
    );
    formatError(
      () => loadPromptFile(file('d.csv', 'prompt,prompt\na,b\n')),
      /prompt: column name appears twice/,
    );
  });

  it('headerless CSV: the error names no cell, whether or not a column is asked for', () => {
    const secret = 'Explain how the harmful thing is done';
    const body = `${secret},${secret}\nSecond prompt here,again\n`;
    for (const column of [undefined, 'prompt', 'goal']) {
      const err = formatError(
        () => loadPromptFile(file('nh.csv', body), { column }),
        /first line (does not look like a header row|repeats a field)/,
      );
      assert.ok(!err.message.includes('Explain') && !err.message.includes('harmful'), err.field);
    }
    formatError(
      () => loadPromptFile(file('nh1.csv', `${secret}\nSecond prompt here\n`), { column: 'prompt' }),
      /prompt: no such column; the first line does not look like a header row \(its 1 field is not/,
    );
    // Real headers are still listed.
    formatError(
      () => loadPromptFile(file('h2.csv', 'Behavior_ID,goal.v2,\n1,a,x\n'), { column: 'prompt' }),
      /no such column; the file has columns "Behavior_ID", "goal\.v2", ""/,
    );
  });

  it('empty file, header only, empty prompt, invalid UTF-8', () => {
    formatError(() => loadPromptFile(file('e.csv', '')), /file is empty/);
    formatError(() => loadPromptFile(file('ws.json', '  \n')), /file is empty/);
    formatError(() => loadPromptFile(file('h.csv', 'prompt,x\n')), /no data rows/);
    formatError(
      () => loadPromptFile(file('ep.csv', 'prompt,x\na,1\n  ,2\n')),
      /prompt: line 3: prompt text is empty/,
    );
    formatError(
      () => loadPromptFile(file('u.csv', Buffer.from([0x70, 0x0a, 0xff, 0xfe, 0x0a]))),
      /not valid UTF-8/,
    );
    formatError(() => loadPromptFile(join(dir, 'absent.csv')), /absent\.csv: no such file/);
  });

  it('default column: priority order, none, ambiguous case', () => {
    assert.equal(loadPromptFile(file('p.csv', 'text,instruction\nA,B\n'))[0].text, 'B');
    formatError(
      () => loadPromptFile(file('n.csv', 'foo,bar\n1,2\n')),
      /no prompt column found.*"foo", "bar".*--column/,
    );
    formatError(() => loadPromptFile(file('amb.csv', 'PROMPT,Prompt\n1,2\n')), /cannot tell which column/);
    assert.equal(loadPromptFile(file('c.csv', 'foo,bar\n1,2\n'), { column: 'bar' })[0].text, '2');
  });

  it('JSON: array of strings, array of objects, non-string values stringified', () => {
    const s = loadPromptFile(file('s.json', '["one", "two"]'));
    assert.deepEqual(
      s.map((r) => [r.text, r.index, r.fields]),
      [
        ['one', 0, { text: 'one' }],
        ['two', 1, { text: 'two' }],
      ],
    );
    const o = loadPromptFile(file('o.json', '[{"prompt":"p","n":3,"ok":true,"z":null,"tags":["a"]}]'));
    assert.deepEqual(o[0].fields, { prompt: 'p', n: '3', ok: 'true', z: '', tags: '["a"]' });
    formatError(
      () => loadPromptFile(file('num.json', '[{"prompt":5}]')),
      /prompt: item 0: value is not a string/,
    );
    formatError(
      () => loadPromptFile(file('miss.json', '[{"prompt":"a"},{"other":"b"}]')),
      /prompt: item 1 has no such field/,
    );
    formatError(
      () => loadPromptFile(file('obj.json', '{"prompt":"a"}')),
      /expected a JSON array.*found an object/,
    );
    formatError(
      () => loadPromptFile(file('mix.json', '["a", 1]')),
      /item 1: expected a string like the first item, found a number/,
    );
    formatError(() => loadPromptFile(file('empty.json', '[]')), /no data rows/);
  });

  it('bad JSON: position as line and column, never the text itself', () => {
    const err = formatError(
      () => loadPromptFile(file('bad.json', '[\n {"prompt": "secret words"},\n {"prompt": "x",}\n]')),
      /invalid JSON \(at line 3, column \d+/,
    );
    assert.doesNotMatch(err.message, /secret/);
    formatError(() => loadPromptFile(file('trunc.json', '[')), /invalid JSON \(the text ends too early\)/);
    formatError(
      () => loadPromptFile(file('trunc2.json', '[{"prompt": "a"')),
      /invalid JSON \(at line 1, column 16: expected ',' or '}' after property value\)/,
    );
    formatError(
      () => loadPromptFile(file('lines.json', '{"prompt":"a"}\n{"prompt":"b"}\n')),
      /looks like JSON Lines/,
    );
  });

  it('JSONL: objects per line, blank lines skipped, line numbers in errors', () => {
    const recs = loadPromptFile(file('ok.jsonl', '{"question":"a"}\r\n\n{"question":"b"}\n'));
    assert.deepEqual(
      recs.map((r) => r.text),
      ['a', 'b'],
    );
    const err = formatError(
      () => loadPromptFile(file('bad.jsonl', '{"question":"secret"}\n{"question": secret2}\n')),
      /bad\.jsonl: line 2: invalid JSON/,
    );
    assert.doesNotMatch(err.message, /secret/);
    formatError(
      () => loadPromptFile(file('arr.jsonl', '{"question":"a"}\n[1]\n')),
      /line 2: expected an object, found an array/,
    );
  });

  it('format sniffed for unknown extensions; explicit format wins', () => {
    assert.equal(loadPromptFile(file('a.txt', '["x"]'))[0].text, 'x');
    assert.equal(loadPromptFile(file('b.txt', '{"prompt":"x"}\n{"prompt":"y"}'))[1].text, 'y');
    assert.equal(loadPromptFile(file('c.txt', 'prompt\nx\n'))[0].text, 'x');
    assert.equal(loadPromptFile(file('d.data', 'prompt\nx\n'), { format: 'csv' })[0].text, 'x');
  });

  it('limit must be a positive integer', () => {
    const p = file('l.csv', 'prompt\na\nb\nc\n');
    assert.equal(loadPromptFile(p, { limit: 2 }).length, 2);
    assert.equal(loadPromptFile(p, { limit: 99 }).length, 3);
    assert.throws(() => loadPromptFile(p, { limit: 0 }), OptionError);
    assert.throws(() => loadPromptFile(p, { limit: 1.5 }), OptionError);
  });

  it('ids are stable and the list hash depends on order and boundaries', () => {
    assert.equal(promptId('hello'), '2cf24dba5fb0a30e');
    assert.notEqual(promptListHash(['ab', 'c']), promptListHash(['a', 'bc']));
    assert.notEqual(promptListHash(['a', 'b']), promptListHash(['b', 'a']));
    assert.equal(promptListHash(['a', 'b']), promptListHash(['a', 'b']));
  });
});
