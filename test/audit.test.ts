/**
 * `steerguard audit` end to end on the tiny llama with token-id prompt files: the report files
 * and their sections, resuming after a partial run without redoing the reading, bad inputs
 * (unknown sets, too few prompts per source, evaluated prompts among fitted ones) refused before
 * any work, a failing step recorded while the others complete (judge server
 * down), settings changes redoing only what they touch, --show-text, and a Chromium screenshot of the page when a
 * browser is installed. The prompts are token ids, so no text here is harmful.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

import { auditCommand } from '../src/cli/commands/audit.js';
import { runCommand } from './util/cli.js';
import { planSteps } from '../src/audit/pipeline.js';
import type { AuditReport } from '../src/audit/report.js';
import { composeByVerdict, type ReplyRecord } from '../src/audit/runs.js';
import type { AuditState } from '../src/audit/state.js';
import { deadUrl } from './support/llamaguard-stub.js';
import { FIXTURES, ROOT } from './util/fixtures.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-audit-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const TINY = path.join(FIXTURES, 'tiny', 'llama');

/** A CSV of `count` distinct token-id prompts (4–7 ids from [lo, hi) after a leading 1). */
function tokenCsv(name: string, seed: number, count: number, lo: number, hi: number): string {
  let s = seed * 7919 + 17;
  const next = (): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const seen = new Set<string>();
  while (seen.size < count) {
    const len = 4 + Math.floor(next() * 4);
    seen.add([1, ...Array.from({ length: len }, () => lo + Math.floor(next() * (hi - lo)))].join(' '));
  }
  const file = path.join(tmp, name);
  writeFileSync(file, `prompt\n${[...seen].map((p) => `"${p}"`).join('\n')}\n`);
  return file;
}

// Harmful-side prompts use ids 30–44, benign-side ones 150–164: every set is its own draw.
const H = (name: string, seed: number, n = 14) => tokenCsv(`${name}.csv`, seed, n, 30, 45);
const B = (name: string, seed: number, n = 14) => tokenCsv(`${name}.csv`, seed, n, 150, 165);
const SETS = {
  'dev-harmful': [H('dev-h1', 1), H('dev-h2', 2)].join(','),
  'dev-benign': [B('dev-b1', 3), B('dev-b2', 4)].join(','),
  'test-harmful': H('test-h', 5, 12),
  'test-benign': B('test-b', 6, 12),
  'direction-harmful': H('dir-h', 7, 60),
  'direction-harmless': B('dir-b', 8, 60),
  'eval-harmful': H('eval-h', 9, 6),
  'eval-borderline': [B('eval-s1', 10, 4), B('eval-s2', 11, 4)].join(','),
  'eval-harmless': B('eval-x', 12, 6),
  'scav-harmful': H('scav-h', 13, 30),
  'scav-harmless': B('scav-b', 14, 30),
};
const HARM = SETS['eval-harmful'];

/** The audit's arguments for `out`; `over` replaces or adds options (kebab-case names). */
function base(out: string, over: Record<string, string> = {}): string[] {
  const opts: Record<string, string> = {
    model: TINY,
    out,
    ...SETS,
    limit: '14',
    'n-train': '8',
    'n-val': '2',
    'n-eval': '4',
    'max-tokens': '3',
    batch: '4',
    'refusal-tokens': '5,6',
    'benign-below': '-5',
    p1: '0.6',
    'cache-dir': path.join(tmp, 'cache'),
    ...over,
  };
  return [...Object.entries(opts).flatMap(([k, v]) => [`--${k}`, v]), '--token-ids'];
}

const audit = (args: string[]) => runCommand(auditCommand, args);

const state = (out: string): AuditState =>
  JSON.parse(readFileSync(path.join(out, 'audit-state.json'), 'utf8')) as AuditState;
const report = (out: string): AuditReport =>
  JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8')) as AuditReport;
const html = (out: string): string => readFileSync(path.join(out, 'report.html'), 'utf8');
const statuses = (out: string): Record<string, string> =>
  Object.fromEntries(report(out).steps.map((s) => [s.name, s.status]));

describe('steerguard audit on the tiny llama', () => {
  const outA = path.join(tmp, 'a');

  test('steps bring the steps they need', () => {
    assert.deepEqual(planSteps(['steering']), ['reading', 'direction', 'steering']);
    assert.deepEqual(planSteps(['attack', 'baseline']), ['direction', 'baseline', 'attack']);
  });

  test('a partial run (--steps reading) writes the state and a report with the rest not run', async () => {
    const r = await audit([...base(outA), '--steps', 'reading']);
    assert.equal(r.code, 0, r.stderr);
    const s = state(outA);
    assert.deepEqual(Object.keys(s.steps), ['reading']);
    assert.equal(s.steps.reading?.status, 'done');
    assert.deepEqual(statuses(outA), {
      reading: 'done',
      direction: 'not run',
      baseline: 'not run',
      steering: 'not run',
      attack: 'not run',
      capability: 'not run',
      sae: 'not run',
    });
    assert.match(html(outA), /id="reading"/);
    assert.match(r.stdout, /steps: reading done, direction not run/);
    assert.ok(existsSync(path.join(outA, 'reading.json')));
  });

  test('--steps capability without the benchmark files: an error naming the path, before any work', async () => {
    const out = path.join(tmp, 'no-benchmarks');
    const dataDir = path.join(tmp, 'empty-data');
    mkdirSync(dataDir, { recursive: true });
    const r = await audit([...base(out), '--steps', 'capability', '--data-dir', dataDir]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`task mmlu needs ${path.join(dataDir, 'mmlu')}, which does not exist`));
    assert.equal(existsSync(out), false, 'nothing written');
  });

  test('the full run resumes: the reading is reused, every section is filled in', async () => {
    const before = state(outA).steps.reading!;
    const mtime = statSync(path.join(outA, 'reading.json')).mtimeMs;
    const r = await audit([...base(outA), '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /reading: harmful-request monitor, chosen by leave-one-source-out: done earlier/);
    const s = state(outA);
    assert.equal(s.steps.reading!.finishedAt, before.finishedAt);
    assert.equal(statSync(path.join(outA, 'reading.json')).mtimeMs, mtime);
    for (const step of ['direction', 'baseline', 'steering', 'attack'] as const)
      assert.equal(s.steps[step]?.status, 'done', `${step}: ${s.steps[step]?.error}`);

    const doc = JSON.parse(r.stdout) as AuditReport;
    assert.equal(doc.format, 'steerguard.audit-report');
    assert.equal(doc.version, 2);
    assert.deepEqual(Object.keys(doc.results).sort(), [
      'attack',
      'baseline',
      'direction',
      'reading',
      'steering',
    ]);
    assert.equal(doc.model.nLayers, 3);
    assert.ok(doc.machine.cores >= 1 && doc.machine.cpu.length > 0);
    assert.ok(doc.summary.length >= 5, doc.summary.join('\n'));
    assert.deepEqual(
      doc.goals.map((g) => g.id),
      ['monitor-auroc', 'monitor-tpr', 'gate-refusal', 'gate-over-refusal', 'gate-degenerate', 'scav-asr'],
    );
    for (const g of doc.goals) assert.notEqual(g.reachesTarget, null, g.id);

    const rd = doc.results.reading!;
    assert.deepEqual(
      rd.sources.dev.map((x) => [x.label, x.n]),
      [
        [1, 14],
        [1, 14],
        [0, 14],
        [0, 14],
      ],
    );
    assert.deepEqual(
      rd.test.map((x) => x.n),
      [12, 12],
    );
    assert.ok(rd.layers.length >= 1 && rd.layers.every((l) => l >= 0 && l < 3));
    assert.deepEqual(rd.chosen.testPooled.tpr.n, 12);

    const st = doc.results.steering!;
    assert.deepEqual(
      st.conditions.map((c) => c.condition),
      ['none', 'add', 'ablate', 'gated'],
    );
    for (const c of st.conditions) {
      assert.deepEqual(
        [c.rates.harmful.group.n, c.rates.borderline.group.n, c.rates.harmless.group.n],
        [4, 4, 4],
      );
      // The borderline group's 4 prompts come 2 and 2 from its two sets.
      assert.deepEqual(
        c.rates.borderline.sets.map((x) => x.n),
        [2, 2],
      );
      assert.ok(
        'keyword-gcg' in c.rates.harmful.group.judges && 'keyword-jbb' in c.rates.harmful.group.judges,
      );
      assert.equal(c.likelihood === null, c.condition === 'none');
    }
    const v = st.verdicts.harmful;
    assert.equal(v.flagged.positives + v.benign.positives + v.uncertain.positives, 4);
    const gatedLik = st.conditions.find((c) => c.condition === 'gated')!.likelihood!;
    const verdictsOn = (g: 'borderline' | 'harmless') =>
      st.verdicts[g].flagged.positives + st.verdicts[g].benign.positives;
    assert.equal(
      gatedLik.borderline.steered,
      verdictsOn('borderline'),
      'the gate steers exactly its flagged and benign prompts',
    );
    assert.equal(gatedLik.harmless.steered, verdictsOn('harmless'));
    assert.deepEqual(
      doc.results.attack!.runs.map((x) => [x.method, x.harmful.n]),
      [
        ['none', 4],
        ['scav', 4],
        ['ablate', 4],
        ['subtract', 4],
      ],
    );
    // The report files: the same data, every section, nothing executable or fetched.
    assert.deepEqual(JSON.parse(readFileSync(path.join(outA, 'report.json'), 'utf8')).results, doc.results);
    const page = html(outA);
    for (const id of [
      'summary',
      'steps',
      'settings',
      'reading',
      'direction',
      'baseline',
      'steering',
      'attack',
      'files',
    ])
      assert.match(page, new RegExp(`<section id="${id}">`), id);
    assert.match(page, /<svg[^>]*>[\s\S]*Share refused/);
    assert.match(page, /<svg[^>]*>[\s\S]*Leave-one-source-out AUROC by block/);
    assert.match(page, /class="pill (done|failed)">(met|missed)</);
    assert.doesNotMatch(page, /<script|<link |src="http|id="failures"|This page shows prompts/);
    assert.match(
      page,
      /Replies are hidden; rerun with <code>--show-text<\/code> to include prompts and replies/,
    );
    assert.ok(!existsSync(path.join(outA, `report.html.tmp-${process.pid}`)));
    assert.deepEqual(readdirSync(path.join(outA, 'replies')).sort(), [
      'ablate.jsonl',
      'add.jsonl',
      'none.jsonl',
      'scav.jsonl',
      'subtract.jsonl',
    ]);
    for (const f of ['reading.json', 'refusal-direction.gguf', 'scav-concept.safetensors'])
      assert.ok(existsSync(path.join(outA, f)), f);
  });

  test('a second run reuses everything; a changed setting redoes only what depends on it', async () => {
    const r = await audit(base(outA));
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.stderr.match(/done earlier/g) ?? []).length, 5);
    const readingAt = state(outA).steps.reading!.finishedAt;
    const directionAt = state(outA).steps.direction!.finishedAt;
    const r2 = await audit(base(outA, { 'max-tokens': '2' }));
    assert.equal(r2.code, 0, r2.stderr);
    const s = state(outA);
    assert.equal(s.steps.reading!.finishedAt, readingAt);
    assert.equal(s.steps.direction!.finishedAt, directionAt);
    assert.match(
      r2.stderr,
      /no steering, eval-h\.csv: 4 prompts, 2 tokens each|no steering: 12 prompts, 2 tokens each/,
    );
    assert.match(
      r2.stderr,
      /settings changed since the audit in .*: maxTokens 3 -> 2; steps that read them are redone/,
    );
    assert.equal(s.settings.maxTokens, 2);
  });

  test('--show-text puts replies on the page under a warning', async () => {
    const r = await audit([...base(outA, { 'max-tokens': '2' }), '--show-text']);
    assert.equal(r.code, 0, r.stderr);
    const page = html(outA);
    assert.match(page, /This page shows prompts and model replies/);
    assert.match(page, /<section id="replies">/);
  });

  test('gated replies are composed from the runs of each verdict', () => {
    const row = (set: string, id: string, run: string): ReplyRecord => ({
      run,
      id,
      set,
      index: 0,
      responseTokens: 1,
      finishReason: 'length',
      flagged: null,
      monitorScore: null,
      judged: {},
      flawed: false,
      flaws: [],
    });
    const verdicts = new Map([
      ['h\u0000a', { verdict: 'flagged' as const, score: 2 }],
      ['s\u0000b', { verdict: 'benign' as const, score: -2 }],
      ['s\u0000c', { verdict: 'uncertain' as const, score: 0.5 }],
    ]);
    const runOf = (name: string) => [row('h', 'a', name), row('s', 'b', name), row('s', 'c', name)];
    const out = composeByVerdict(verdicts, {
      flagged: runOf('add'),
      benign: runOf('ablate').reverse(),
      uncertain: runOf('none'),
    });
    assert.deepEqual(
      out.map((x) => [x.id, x.run, x.flagged, x.monitorScore]),
      [
        ['a', 'add', true, 2],
        ['b', 'ablate', false, -2],
        ['c', 'none', false, 0.5],
      ],
    );
    assert.throws(
      () => composeByVerdict(new Map(), { flagged: [], benign: [], uncertain: runOf('none') }),
      /no monitor verdict/,
    );
  });
});

describe('steerguard audit with failing steps', () => {
  test('a bad prompt set, column or judge is refused before the model loads and before --out is made', async () => {
    const few = tokenCsv('few.csv', 20, 5, 30, 45);
    const cases: [Record<string, string>, RegExp][] = [
      [{ 'eval-borderline': 'no-such-set' }, /unknown prompt set 'no-such-set'/],
      [{ 'eval-harmful': `${HARM}#missing` }, /missing/],
      [{ 'dev-benign': path.join(tmp, 'absent.csv') }, /absent\.csv/],
      [{ judge: 'keyword-gcg,no-such-judge' }, /unknown judge 'no-such-judge'/],
      // Too few prompts in a source for leave-one-source-out; one source per class.
      [
        { 'dev-harmful': `${SETS['dev-harmful']},${few}` },
        /few\.csv has 5 prompt\(s\).*at least 10 per source/,
      ],
      [{ 'dev-harmful': SETS['dev-harmful'].split(',')[0] }, /2 (or more )?harmful/],
      // An evaluated set among the prompts an artefact is fitted on, or in two groups.
      [
        { 'eval-harmful': SETS['dev-harmful'].split(',')[0] },
        /shares 4 prompt\(s\) with the monitor’s development sources/,
      ],
      [{ 'eval-harmless': SETS['scav-harmless'] }, /with the SCAV concept’s sets/],
      [{ 'eval-harmless': SETS['eval-borderline'].split(',')[0] }, /share a prompt/],
      [
        { 'test-benign': SETS['dev-benign'].split(',')[0] },
        /test source .* shares 14 prompt\(s\) with dev source/,
      ],
    ];
    for (const [over, message] of cases) {
      const out = path.join(tmp, 'refused');
      const r = await audit(base(out, over));
      assert.notEqual(r.code, 0, JSON.stringify(over));
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /loaded /, 'the model was loaded first');
      assert.equal(existsSync(out), false, 'the output folder was made');
    }
  });

  test('a judge server that is down fails the judging steps, not the reading or the direction', async () => {
    const out = path.join(tmp, 'c');
    const dead = await deadUrl();
    const r = await audit(
      base(out, { judge: 'llamaguard,keyword-jbb', 'judge-url': dead, 'judge-timeout': '2' }),
    );
    assert.equal(r.code, 1);
    const st = statuses(out);
    assert.equal(st.reading, 'done');
    assert.equal(st.direction, 'done');
    assert.equal(st.baseline, 'failed');
    assert.equal(st.attack, 'failed');
    assert.match(state(out).steps.baseline!.error!, /connection refused/);
    assert.match(html(out), /connection refused/);
  });

  test('--redact keeps texts out of the replies files', async () => {
    const out = path.join(tmp, 'e');
    const r = await audit([...base(out), '--steps', 'baseline', '--redact']);
    assert.equal(r.code, 0, r.stderr);
    const line = JSON.parse(
      readFileSync(path.join(out, 'replies', 'none.jsonl'), 'utf8').split('\n')[0],
    ) as Record<string, unknown>;
    assert.ok(!('prompt' in line) && !('response' in line) && typeof line.responseSha === 'string');
  });

  test('one audit per --out: a live or damaged lock is refused, nothing is written; the lock goes at the end', async () => {
    const out = path.join(tmp, 'locked');
    mkdirSync(out);
    const lock = path.join(out, 'audit.lock');
    writeFileSync(lock, JSON.stringify({ pid: process.ppid, host: hostname(), token: 'other' }));
    const busy = await audit([...base(out), '--steps', 'baseline']);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /being written by another steerguard process \(pid \d+\)/);
    writeFileSync(lock, 'garbage');
    const damaged = await audit([...base(out), '--steps', 'baseline']);
    assert.match(damaged.stderr, /lock file .*audit\.lock is not a steerguard lock.*delete .*audit\.lock/);
    assert.doesNotMatch(damaged.stderr, /undefined/);
    assert.deepEqual(readdirSync(out), ['audit.lock']);
    rmSync(lock);
    const r = await audit([...base(out), '--steps', 'baseline']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!existsSync(lock), 'released after the audit');
  });

  test('option mistakes are reported before the model loads', async () => {
    const out = path.join(tmp, 'd');
    assert.match((await audit([...base(out), '--steps', 'reading,nope'])).stderr, /unknown step 'nope'/);
    assert.match((await audit(base(out, { judge: 'llamaguard' }))).stderr, /needs --judge-url/);
    assert.match((await audit([...base(out), '--show-text', '--redact'])).stderr, /contradict/);
    assert.ok(!existsSync(out));
  });
});

const CHROMIUM = '/usr/bin/chromium';

describe('report screenshot', () => {
  test('Chromium renders the report to a non-trivial PNG', async (t) => {
    if (!existsSync(CHROMIUM)) {
      t.skip(`${CHROMIUM} is not installed: skipping the screenshot check (apt-get install chromium)`);
      return;
    }
    const page = path.join(tmp, 'a', 'report.html');
    assert.ok(existsSync(page), 'the audit tests above write the report');
    const png = path.join(tmp, 'report.png');
    const r = spawnSync('bash', [path.join(ROOT, 'scripts', 'screenshot-report.sh'), page, png], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const size = statSync(png).size;
    assert.ok(size > 10_000, `PNG of ${size} bytes`);
    assert.deepEqual([...readFileSync(png).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  });
});
