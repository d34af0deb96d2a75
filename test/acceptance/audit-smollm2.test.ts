/**
 * `steerguard audit` end to end on the real SmolLM2 GGUF and the real datasets, with the default
 * sources and small counts: every step finishes, the reading is measured on its test sources, the
 * gate composes its replies from the runs of its verdicts, and no text reaches stdout or the page.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import type { AuditReport } from '../../src/audit/report.js';
import { cli } from '../util/cli.js';
import { SHARED, SMOLLM2_GGUF, missingModel } from '../util/fixtures.js';

const DATA = path.join(SHARED, 'datasets');
const skip =
  missingModel(SMOLLM2_GGUF) ??
  (existsSync(path.join(DATA, 'advbench')) ? undefined : `no datasets at ${DATA}`);
const tmp = mkdtempSync(path.join(tmpdir(), 'steerguard-audit-real-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('steerguard audit on SmolLM2-135M', { skip }, () => {
  it(
    'runs every step with the default sources and writes a report without text',
    { timeout: 900_000 },
    () => {
      const out = path.join(tmp, 'audit');
      const r = cli(
        [
          'audit',
          '--model',
          SMOLLM2_GGUF,
          '--data-dir',
          DATA,
          '--out',
          out,
          '--limit',
          '12',
          '--n-train',
          '8',
          '--n-val',
          '4',
          '--n-eval',
          '10',
          '--max-tokens',
          '6',
          '--cache-dir',
          path.join(tmp, 'cache'),
          '--threads',
          '2',
          '--json',
        ],
        { timeoutMs: 880_000 },
      );
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      const doc = JSON.parse(r.stdout) as AuditReport;
      assert.deepEqual(
        doc.steps.map((s) => s.status),
        ['done', 'done', 'done', 'done', 'done', 'not run', 'not run'],
      );
      const rd = doc.results.reading!;
      assert.equal(rd.sources.dev.length, 15);
      assert.equal(rd.sources.test.length, 10);
      assert.ok(
        rd.chosen.testPooled.auroc !== null && rd.chosen.testPooled.auroc > 0.5,
        'better than chance',
      );
      const st = doc.results.steering!;
      const gated = st.conditions.find((c) => c.condition === 'gated')!;
      // 10 prompts per group: HarmBench 10, the five XSTest types 2 each, Alpaca 10.
      assert.deepEqual(
        [gated.rates.harmful.group.n, gated.rates.borderline.group.n, gated.rates.harmless.group.n],
        [10, 10, 10],
      );
      assert.equal(gated.rates.borderline.sets.length, 5);
      assert.deepEqual(
        doc.results.attack!.runs.map((a) => a.harmful.n),
        [10, 10, 10, 10],
      );
      // No prompt or reply text in the report: the replies files hold it, the page only with --show-text.
      const page = readFileSync(path.join(out, 'report.html'), 'utf8');
      assert.match(page, /Replies are hidden/);
      const firstHarmful = JSON.parse(
        readFileSync(path.join(out, 'replies', 'none.jsonl'), 'utf8').split('\n')[0],
      ) as {
        prompt: string;
        response: string;
      };
      for (const text of [firstHarmful.prompt, firstHarmful.response].filter((t) => t.trim().length > 12)) {
        assert.ok(!page.includes(text), 'a prompt or reply is on the page');
        assert.ok(!r.stdout.includes(text) && !r.stderr.includes(text), 'a prompt or reply was printed');
      }
    },
  );

  it(
    'the opt-in capability step reuses the monitor and direction and scores no steering and the gate',
    { timeout: 600_000 },
    () => {
      const out = path.join(tmp, 'audit');
      const r = cli(
        [
          'audit',
          '--model',
          SMOLLM2_GGUF,
          '--data-dir',
          DATA,
          '--out',
          out,
          '--limit',
          '12',
          '--n-train',
          '8',
          '--n-val',
          '4',
          '--n-eval',
          '10',
          '--max-tokens',
          '6',
          '--steps',
          'capability',
          '--capability-limit',
          '2',
          '--cache-dir',
          path.join(tmp, 'cache'),
          '--threads',
          '2',
          '--json',
        ],
        { timeoutMs: 580_000 },
      );
      assert.equal(r.code, 0, r.stderr.slice(-3000));
      assert.match(r.stderr, /\] reading: .*: done earlier .*, reusing it/);
      const doc = JSON.parse(r.stdout) as AuditReport;
      assert.equal(doc.steps.find((s) => s.name === 'capability')?.status, 'done');
      const c = doc.results.capability!;
      assert.deepEqual(
        c.conditions.map((x) => x.condition),
        ['none', 'gated'],
      );
      for (const cond of c.conditions) {
        assert.deepEqual(
          cond.figures.map((f) => `${f.task} ${f.n}`),
          ['mmlu 2', 'gsm8k 2', 'truthfulqa 2', 'truthfulqa 2'],
        );
        assert.ok(existsSync(path.join(out, cond.file)));
      }
      assert.ok(c.conditions[0].figures.every((f) => f.steered === 0));
      // the gate reads every question: each is flagged, ablated or left alone, and counted if steered
      assert.ok(c.conditions[1].figures.every((f) => f.steered >= 0 && f.steered <= f.n));
      assert.equal(c.costs.length, 4);
      for (const d of c.costs)
        assert.ok(Number.isFinite(d.delta) && d.ci[0] <= d.delta && d.delta <= d.ci[1]);
      assert.match(readFileSync(path.join(out, 'report.html'), 'utf8'), /f\. Capability cost of the gate/);
    },
  );
});
