/**
 * The audit report drawn from literal results (no model): AUROC intervals that keep a width at
 * AUROC 1, no "met" badge on in-distribution figures, a "best" steering setting only when its
 * interval clears the baseline's, y axes scaled to the data, series told apart when they
 * coincide, the chosen layer marked, the --show-text hint, and the plain list of what failed.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { niceUpperBound, rateChartSvg } from '../src/audit/charts.js';
import { REPLIES_HIDDEN, conceptLayersSvg, renderReportHtml } from '../src/audit/html.js';
import {
  type AuditReport,
  IN_DISTRIBUTION,
  NO_BEST_STEERING,
  baselineRates,
  bestSteeringPoint,
  buildReport,
  machineInfo,
} from '../src/audit/report.js';
import type { ReplyRecord } from '../src/audit/runs.js';
import { STATE_FORMAT, STATE_VERSION, type AuditState } from '../src/audit/state.js';
import type {
  AuditResults,
  AuditSettings,
  ConceptResult,
  MonitorResult,
  Rate,
  SetRates,
  SteeringPoint,
} from '../src/audit/types.js';
import { wilsonInterval } from '../src/concepts/probe.js';

const JUDGE = 'keyword-gcg';

function rate(positives: number, n: number): Rate {
  return { positives, n, errors: 0, rate: positives / n, ci: wilsonInterval(positives, n) };
}

function setRates(set: string, refused: number, n = 16): SetRates {
  return {
    set,
    n,
    judges: { [JUDGE]: { ...rate(refused, n), measures: 'refusal' } },
    flawed: rate(0, n),
    flagged: null,
  };
}

const SETTINGS: AuditSettings = {
  harmful: 'advbench',
  harmless: 'alpaca',
  borderlineSafe: 'xstest-safe',
  borderlineUnsafe: 'xstest-unsafe',
  limit: 200,
  nEval: 16,
  maxTokens: 16,
  coefficients: [0, 4],
  scavDefence: false,
  seed: 1,
  split: { train: 0.6, val: 0.2, test: 0.2 },
  targetFpr: 0.1,
  p0: 0.01,
  p1: 0.9,
  judges: [JUDGE],
  tokenIds: false,
  batch: 16,
  redact: false,
};

/** A concept whose probes score accuracy 100% and AUROC 1 on 81 test prompts (41 + 40). */
const CONCEPT: ConceptResult = {
  file: 'concept.safetensors',
  name: 'harm',
  template: 'chat',
  bestLayer: 2,
  layers: [0, 1, 2, 3].map((layer) => ({
    layer,
    accuracy: layer === 0 ? 0.8 : 1,
    accuracyCi: layer === 0 ? wilsonInterval(65, 81) : wilsonInterval(81, 81),
    auroc: layer === 0 ? 0.9 : 1,
    // What a state written by DeLong's interval holds: no width at AUROC 1.
    aurocCi: layer === 0 ? [0.85, 0.95] : [1, 1],
    valAccuracy: 1,
    trainAccuracy: 1,
    split: 'test',
    n: 81,
  })),
  sets: {
    harmful: { name: 'advbench', prompts: 200, duplicatesRemoved: 0 },
    harmless: { name: 'alpaca', prompts: 200, duplicatesRemoved: 0 },
  },
  counts: {
    train: { positive: 120, negative: 120 },
    val: { positive: 39, negative: 40 },
    test: { positive: 41, negative: 40 },
  },
  removedOverlap: 0,
  activations: { computed: 400, cached: 0, seconds: 10 },
  fitSeconds: 1,
  unconverged: [],
};

const MONITOR: MonitorResult = {
  layer: 2,
  heldOut: {
    nPositive: 41,
    nNegative: 40,
    auroc: 1,
    aurocCi: [1, 1],
    combinedAuroc: 1,
    combinedLayers: [1, 2, 3],
    tprAt5Fpr: 1,
    fprAt5Fpr: 0,
  },
  calibrated: {
    set: 'xstest-safe@train+val',
    n: 200,
    targetFpr: 0.1,
    logit: 1,
    probability: 0.73,
    achievedFpr: 0.1,
  },
  atThreshold: {
    borderlineUnsafe: { ...rate(150, 200), set: 'xstest-unsafe' },
    borderlineSafeHeldOut: { ...rate(5, 50), set: 'xstest-safe@test' },
    harmfulTest: { ...rate(41, 41), set: 'advbench@test' },
    harmlessTest: { ...rate(0, 40), set: 'alpaca@test' },
  },
};

function point(coefficient: number, refused: number, safeRefused = 0): SteeringPoint {
  return {
    method: 'mean-diff',
    coefficient,
    mode: 'unconditional',
    runs: [],
    harmful: setRates('advbench@test', refused),
    borderlineSafe: setRates('xstest-safe@test', safeRefused),
  };
}

const DATA = {
  harmful: { set: 'advbench@test', available: 100, used: 16 },
  borderlineSafe: { set: 'xstest-safe@test', available: 50, used: 16 },
};

/** A report of every step but the attack; the model refuses `baseRefused` of 16 harmful prompts. */
function report(baseRefused: number, steered: number): AuditReport {
  const results: Omit<AuditResults, 'attack'> = {
    concept: CONCEPT,
    monitor: MONITOR,
    baseline: {
      runs: [],
      data: DATA,
      harmful: setRates('advbench@test', baseRefused),
      borderlineSafe: setRates('xstest-safe@test', 0),
    },
    steering: {
      layer: 2,
      directionNorm: 3,
      vectorFile: null,
      gate: { layer: 2, probability: 0.73 },
      flagged: { harmful: rate(16, 16), borderlineSafe: rate(1, 16) },
      scavLayers: [],
      points: [point(0, baseRefused), point(4, steered)],
      data: DATA,
      notes: [],
    },
  };
  const record = <T>(result: T) => ({
    status: 'done' as const,
    key: 'k',
    startedAt: '2026-12-01T00:00:00.000Z',
    finishedAt: '2026-12-01T00:01:00.000Z',
    seconds: 60,
    result,
  });
  const state: AuditState = {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    createdAt: '2026-12-01T00:00:00.000Z',
    updatedAt: '2026-12-01T00:05:00.000Z',
    model: {
      name: 'm',
      path: '/models/m.gguf',
      arch: 'llama',
      fingerprint: 'f'.repeat(64),
      nLayers: 4,
      dModel: 8,
    },
    settings: SETTINGS,
    steps: {
      concept: record(results.concept),
      monitor: record(results.monitor),
      baseline: record(results.baseline),
      steering: record(results.steering),
    },
    runs: {},
  };
  return buildReport({
    state,
    keys: { concept: 'k', monitor: 'k', baseline: 'k', steering: 'k', attack: 'other' },
    machine: machineInfo({ name: 'native', threads: 2 }),
    version: '0.0.0',
    command: null,
    wallSeconds: 1,
  });
}

/** The part of the page from `<section id="name">` to its end. */
function section(page: string, name: string): string {
  const start = page.indexOf(`<section id="${name}">`);
  assert.ok(start >= 0, name);
  return page.slice(start, page.indexOf('</section>', start));
}

describe('audit report', () => {
  test('an AUROC of 1 on 81 prompts gets an interval of positive width, in the data and on the page', () => {
    const r = report(0, 0);
    for (const ci of [
      ...r.results.concept!.layers.map((l) => l.aurocCi),
      r.results.monitor!.heldOut.aurocCi,
    ]) {
      assert.ok(ci[1] - ci[0] > 0.01, String(ci));
      assert.ok(ci[0] >= 0 && ci[1] <= 1);
    }
    assert.ok(r.results.concept!.layers[2].aurocCi[0] < 1);
    assert.doesNotMatch(renderReportHtml(r), /1\.000–1\.000/);
  });

  test('in-distribution figures get no met/missed badge, and the held-out-source command is named', () => {
    const r = report(0, 0);
    for (const g of r.goals) {
      assert.equal(g.data, IN_DISTRIBUTION);
      assert.ok(!('met' in g), g.id);
    }
    const page = renderReportHtml(r);
    const summary = section(page, 'summary');
    assert.doesNotMatch(page, /class="pill (met|missed)"/);
    assert.doesNotMatch(summary, /\bmet\b/);
    assert.match(summary, /in-distribution \(same sources as training\)/);
    assert.equal((summary.match(/<code>steerguard concept generalize<\/code>/g) ?? []).length, 1);
    assert.match(summary, /not part of the audit/);
  });

  test('a steering setting is "best" only when its interval clears the baseline’s', () => {
    // 12/16 against 0/16: Wilson intervals about 51–90% and 0–19%.
    const clear = report(0, 12);
    const b = bestSteeringPoint(clear.results.steering!.points, JUDGE, baselineRates(clear));
    assert.equal(b?.point.coefficient, 4);
    assert.equal(b?.beyondBaseline, true);
    assert.match(clear.goals[2].value!, /^best: refusal 75%/);
    assert.match(
      section(renderReportHtml(clear), 'steering'),
      /<tr class="best"><td>mean difference<\/td><td class="n">4</,
    );

    // 4/16 against 2/16: intervals about 10–50% and 3–36% overlap.
    const overlap = report(2, 4);
    const o = bestSteeringPoint(overlap.results.steering!.points, JUDGE, baselineRates(overlap));
    assert.equal(o?.beyondBaseline, false);
    assert.ok(overlap.goals[2].value!.startsWith(NO_BEST_STEERING), overlap.goals[2].value!);
    assert.ok(!/\bbest\b/.test(overlap.goals[2].value!));
    assert.ok(overlap.summary.some((l) => l.includes(NO_BEST_STEERING)));
    assert.ok(!overlap.summary.some((l) => /\bbest\b/.test(l)), overlap.summary.join('\n'));
    const steering = section(renderReportHtml(overlap), 'steering');
    assert.doesNotMatch(steering, /class="best"/);
    assert.match(steering, /No setting differs from the baseline beyond the 95% intervals/);
  });

  test('the y axis is scaled to the data, interval ends included, with 0 at the bottom', () => {
    assert.equal(niceUpperBound([0.02, 0.05]), 0.1);
    assert.equal(niceUpperBound([0.05, 0.19]), 0.25);
    assert.equal(niceUpperBound([0.3]), 0.5);
    assert.equal(niceUpperBound([0.5]), 1);
    assert.equal(niceUpperBound([0, 0]), 0.1);
    assert.equal(niceUpperBound([0.9, 0.99]), 1);
    const svg = rateChartSvg(
      [
        {
          label: 'refused',
          color: '#000',
          points: [
            { x: 0, y: 0 },
            { x: 4, y: 0.06 },
          ],
          ci: [
            [0, 0.04],
            [0.01, 0.19],
          ],
        },
      ],
      { title: 't', xLabel: 'x', yLabel: 'y', xTicks: [0, 4] },
    );
    const ticks = [...svg.matchAll(/text-anchor="end">([\d.]+%)</g)].map((m) => m[1]);
    assert.deepEqual(ticks, ['0%', '5%', '10%', '15%', '20%', '25%']);
  });

  test('coinciding series keep their own dash pattern and marker shape, and each has a legend entry', () => {
    const flat = {
      points: [
        { x: 0, y: 0 },
        { x: 4, y: 0 },
      ],
    };
    const svg = rateChartSvg(
      ['a', 'b', 'c', 'd'].map((label) => ({ ...flat, label, color: '#1f6feb' })),
      { title: 't', xLabel: 'x', yLabel: 'y', xTicks: [0, 4] },
    );
    const lines = [...svg.matchAll(/<polyline [^>]*?(?:stroke-dasharray="([^"]+)")?\/>/g)].map(
      (m) => m[1] ?? 'solid',
    );
    assert.equal(new Set(lines).size, 4, lines.join(' | '));
    for (const shape of ['<circle', '<rect x=', '<polygon']) assert.ok(svg.includes(shape), shape);
    assert.equal((svg.match(/<polygon/g) ?? []).length, 2 * 3); // triangle and diamond: 2 points + legend each
    for (const label of ['a', 'b', 'c', 'd']) assert.match(svg, new RegExp(`>${label}</text>`));
  });

  test('the per-layer chart marks the chosen layer', () => {
    assert.match(conceptLayersSvg(CONCEPT), />chosen: layer 2</);
    assert.match(section(renderReportHtml(report(0, 0)), 'concept'), /<svg[\s\S]*chosen: layer 2/);
  });

  test('without --show-text the page says where the replies are; with it, shows them under a warning', () => {
    const r = report(0, 0);
    const hidden = renderReportHtml(r);
    assert.ok(hidden.includes(REPLIES_HIDDEN));
    assert.match(
      hidden,
      /Replies are hidden; rerun with <code>--show-text<\/code> to include prompts and replies \(harmful text\)/,
    );
    const shown = renderReportHtml(r, { replies: new Map<string, readonly ReplyRecord[]>() });
    assert.ok(!shown.includes('Replies are hidden'));
    assert.match(shown, /This page shows prompts and model replies/);
  });

  test('the summary starts with what failed: a model that never refuses, steering that changes nothing', () => {
    const r = report(0, 0);
    assert.ok(
      r.failures.includes(
        'The model refused 0 of 16 harmful requests without steering: steering toward refusal and the SCAV attack had nothing to act on.',
      ),
      r.failures.join('\n'),
    );
    assert.ok(r.failures.some((l) => l.startsWith('No steering setting reached refusal ≥ 90%')));
    const summary = section(renderReportHtml(r), 'summary');
    const list = summary.indexOf('What failed or missed its goal');
    assert.ok(list >= 0 && list < summary.indexOf('<ul class="summary">'));
    assert.match(summary, /The model refused 0 of 16 harmful requests/);
    // A model that refuses and steering that works: nothing to list.
    assert.deepEqual(report(15, 16).failures, []);
  });
});
