/**
 * `steerguard audit` end to end on the tiny llama with token-id prompt files: the report files
 * and their sections, resuming after a partial run without redoing the concept, bad inputs
 * refused before any work, a failing step recorded while the others complete (judge server
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
import { composeConditional, type ReplyRecord } from '../src/audit/runs.js';
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

const HARM = tokenCsv('harm.csv', 1, 60, 30, 45);
const HARMLESS = tokenCsv('harmless.csv', 2, 60, 150, 165);
const BSAFE = tokenCsv('bsafe.csv', 3, 40, 160, 175);
const BUNSAFE = tokenCsv('bunsafe.csv', 4, 20, 45, 60);

/** The audit's arguments for `out`; `over` replaces or adds options (kebab-case names). */
function base(out: string, over: Record<string, string> = {}): string[] {
  const opts: Record<string, string> = {
    model: TINY,
    out,
    harmful: HARM,
    harmless: HARMLESS,
    'borderline-safe': BSAFE,
    'borderline-unsafe': BUNSAFE,
    limit: '40',
    'n-eval': '4',
    'max-tokens': '3',
    batch: '4',
    coefficients: '0,1',
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
    assert.deepEqual(planSteps(['steering']), ['concept', 'monitor', 'steering']);
    assert.deepEqual(planSteps(['attack', 'baseline']), ['concept', 'baseline', 'attack']);
  });

  test('a partial run (--steps concept) writes the state and a report with the rest not run', async () => {
    const r = await audit([...base(outA), '--steps', 'concept']);
    assert.equal(r.code, 0, r.stderr);
    const s = state(outA);
    assert.deepEqual(Object.keys(s.steps), ['concept']);
    assert.equal(s.steps.concept?.status, 'done');
    assert.deepEqual(statuses(outA), {
      concept: 'done',
      monitor: 'not run',
      baseline: 'not run',
      steering: 'not run',
      attack: 'not run',
    });
    assert.match(html(outA), /id="concept"/);
    assert.match(r.stdout, /steps: concept done, monitor not run/);
  });

  test('the full run resumes: the concept is reused, every section is filled in', async () => {
    const before = state(outA).steps.concept!;
    const mtime = statSync(path.join(outA, 'concept.safetensors')).mtimeMs;
    const r = await audit([...base(outA), '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /concept: safety concept \(per-layer probes\): done earlier/);
    const s = state(outA);
    assert.equal(s.steps.concept!.finishedAt, before.finishedAt);
    for (const step of ['monitor', 'baseline', 'steering', 'attack'] as const)
      assert.equal(s.steps[step]?.status, 'done', `${step}: ${s.steps[step]?.error}`);
    // The monitor step adds the threshold to the concept file; the concept itself is not refitted.
    assert.ok(statSync(path.join(outA, 'concept.safetensors')).mtimeMs >= mtime);

    const doc = JSON.parse(r.stdout) as AuditReport;
    assert.equal(doc.format, 'steerguard.audit-report');
    assert.deepEqual(Object.keys(doc.results).sort(), [
      'attack',
      'baseline',
      'concept',
      'monitor',
      'steering',
    ]);
    assert.equal(doc.model.nLayers, 3);
    assert.ok(doc.machine.cores >= 1 && doc.machine.cpu.length > 0);
    assert.ok(doc.summary.length >= 4, doc.summary.join('\n'));
    assert.deepEqual(
      doc.goals.map((g) => g.id),
      ['probe-accuracy', 'monitor-auroc', 'steering'],
    );
    const st = doc.results.steering!;
    // Coefficients 0 and 1, each always and gated, plus the SCAV defence both ways.
    assert.deepEqual(
      st.points.map((p) => `${p.method}:${p.coefficient}:${p.mode}`),
      [
        'mean-diff:0:unconditional',
        'mean-diff:0:conditional',
        'mean-diff:1:unconditional',
        'mean-diff:1:conditional',
        'scav-defence:null:unconditional',
        'scav-defence:null:conditional',
      ],
    );
    for (const p of st.points) {
      assert.equal(p.harmful.n, 4);
      assert.equal(p.borderlineSafe.n, 4);
      assert.ok('keyword-gcg' in p.harmful.judges && 'keyword-jbb' in p.harmful.judges);
      assert.equal(p.mode === 'conditional', p.harmful.flagged !== null);
    }
    assert.deepEqual(
      doc.results.attack!.runs.map((x) => x.method),
      ['none', 'scav'],
    );
    const m = doc.results.monitor!;
    assert.ok(m.calibrated.achievedFpr <= 0.1 + 1e-9);
    assert.equal(m.atThreshold.borderlineUnsafe.n, 20);
    // The report files: the same data, every section, nothing executable or fetched.
    assert.deepEqual(JSON.parse(readFileSync(path.join(outA, 'report.json'), 'utf8')).results, doc.results);
    const page = html(outA);
    for (const id of [
      'summary',
      'steps',
      'settings',
      'concept',
      'monitor',
      'baseline',
      'steering',
      'attack',
      'files',
    ])
      assert.match(page, new RegExp(`<section id="${id}">`), id);
    assert.match(page, /<svg[^>]*>[\s\S]*Refusal vs over-refusal/);
    assert.doesNotMatch(page, /<script|<link |src="http|id="failures"|This page shows prompts/);
    assert.match(
      page,
      /Replies are hidden; rerun with <code>--show-text<\/code> to include prompts and replies/,
    );
    assert.ok(!existsSync(path.join(outA, `report.html.tmp-${process.pid}`)));
    assert.deepEqual(readdirSync(path.join(outA, 'replies')).sort(), [
      'add-1.harmful.jsonl',
      'add-1.safe.jsonl',
      'baseline.harmful.jsonl',
      'baseline.safe.jsonl',
      'scav-attack.harmful.jsonl',
      'scav-defence.harmful.jsonl',
      'scav-defence.safe.jsonl',
    ]);
  });

  test('a second run reuses everything; a changed setting redoes only what depends on it', async () => {
    const r = await audit(base(outA));
    assert.equal(r.code, 0, r.stderr);
    assert.equal((r.stderr.match(/done earlier/g) ?? []).length, 5);
    const conceptAt = state(outA).steps.concept!.finishedAt;
    const monitorAt = state(outA).steps.monitor!.finishedAt;
    const r2 = await audit(base(outA, { 'max-tokens': '2' }));
    assert.equal(r2.code, 0, r2.stderr);
    const s = state(outA);
    assert.equal(s.steps.concept!.finishedAt, conceptAt);
    assert.equal(s.steps.monitor!.finishedAt, monitorAt);
    assert.match(r2.stderr, /baseline, harm\.csv@test: 4 prompts, 2 tokens each/);
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

  test('conditional replies are composed from the steered and baseline runs by the monitor verdict', () => {
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
    const flags = new Map([
      ['h\u0000a', { flagged: true, score: 0.9 }],
      ['s\u0000b', { flagged: false, score: 0.1 }],
    ]);
    const out = composeConditional(
      flags,
      [row('h', 'a', 'add-4'), row('s', 'b', 'add-4')],
      [row('s', 'b', 'baseline'), row('h', 'a', 'baseline')],
    );
    assert.deepEqual(
      out.map((x) => [x.run, x.flagged, x.monitorScore]),
      [
        ['add-4', true, 0.9],
        ['baseline', false, 0.1],
      ],
    );
  });
});

describe('steerguard audit with failing steps', () => {
  test('a bad prompt set, column or judge is refused before the model loads and before --out is made', async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ 'borderline-safe': 'no-such-set' }, /unknown prompt set 'no-such-set'/],
      [{ harmful: `${HARM}#missing` }, /missing/],
      [{ harmless: path.join(tmp, 'absent.csv') }, /absent\.csv/],
      [{ judge: 'keyword-gcg,no-such-judge' }, /unknown judge 'no-such-judge'/],
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

  test('a judge server that is down fails the judging steps, not the concept or the monitor', async () => {
    const out = path.join(tmp, 'c');
    const dead = await deadUrl();
    const r = await audit(
      base(out, { judge: 'llamaguard,keyword-jbb', 'judge-url': dead, 'judge-timeout': '2' }),
    );
    assert.equal(r.code, 1);
    const st = statuses(out);
    assert.equal(st.concept, 'done');
    assert.equal(st.monitor, 'done');
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
      readFileSync(path.join(out, 'replies', 'baseline.harmful.jsonl'), 'utf8').split('\n')[0],
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
    assert.match((await audit([...base(out), '--steps', 'concept,nope'])).stderr, /unknown step 'nope'/);
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
