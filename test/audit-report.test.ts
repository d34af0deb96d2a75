/**
 * The audit report drawn from literal results (no model): met/missed badges from the held-out
 * figures with their intervals, the gate called no improvement when its interval overlaps no
 * steering's, missed goals and a model that never refuses listed first, y axes scaled to the
 * data, series told apart when they coincide, the chosen blocks marked, and the --show-text hint.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { barChartSvg, niceUpperBound, rateChartSvg } from '../src/audit/charts.js';
import { REPLIES_HIDDEN, renderReportHtml } from '../src/audit/html.js';
import { type AuditReport, HELD_OUT, buildReport, machineInfo } from '../src/audit/report.js';
import type { ReplyRecord } from '../src/audit/runs.js';
import { STATE_FORMAT, STATE_VERSION, type AuditState } from '../src/audit/state.js';
import type {
  AuditResults,
  AuditSettings,
  CapabilityResult,
  SaeResult,
  Condition,
  GroupedRates,
  Rate,
  ReadingResult,
  SetRates,
  SteeringCondition,
} from '../src/audit/types.js';
import { wilsonInterval } from '../src/concepts/probe.js';

const JUDGE = 'keyword-gcg';

function rate(positives: number, n: number): Rate {
  return { positives, n, errors: 0, rate: positives / n, ci: wilsonInterval(positives, n) };
}

function setRates(set: string, refused: number, n = 40): SetRates {
  return {
    set,
    n,
    judges: { [JUDGE]: { ...rate(refused, n), measures: 'refusal' } },
    flawed: rate(0, n),
    flagged: null,
  };
}

/** Refusals of 40 per group. */
function grouped(harmful: number, borderline: number, harmless: number): GroupedRates {
  const g = (name: string, k: number) => ({ group: setRates(name, k), sets: [setRates(`${name}-set`, k)] });
  return {
    harmful: g('harmful', harmful),
    borderline: g('borderline', borderline),
    harmless: g('harmless', harmless),
  };
}

const SETTINGS: AuditSettings = {
  devHarmful: ['advbench', 'scav-malicious'],
  devBenign: ['alpaca:train', 'scav-safe'],
  testHarmful: ['harmbench'],
  testBenign: ['alpaca:test'],
  limit: 100,
  targetFpr: 0.05,
  directionHarmful: 'advbench',
  directionHarmless: 'alpaca',
  nTrain: 64,
  nVal: 16,
  refusalTokens: null,
  evalSets: { harmful: ['harmbench'], borderline: ['xstest-safe:privacy_public'], harmless: ['alpaca:test'] },
  nEval: 40,
  maxTokens: 40,
  coefficient: 1,
  benignBelow: 0,
  scavHarmful: 'scav-malicious',
  scavHarmless: 'scav-safe',
  p0: 0.001,
  p1: 0.9,
  seed: 0,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  judges: [JUDGE],
  tokenIds: false,
  batch: 16,
  redact: false,
  capabilityLimit: 40,
  sae: null,
  saeFeature: null,
  saeClamp: null,
  saeClampMultiples: [1, 2, 4, 8],
  saeRefusalTokens: 8,
};

const source = (name: string, label: 0 | 1, auroc: number) => ({
  source: name,
  label,
  n: 100,
  auroc,
  aurocCi: [auroc - 0.03, Math.min(1, auroc + 0.02)] as [number, number],
  tpr: 0.8,
  tprCi: wilsonInterval(80, 100),
  fpr: 0.02,
});

function reading(pooledAuroc: number, tpr: number): ReadingResult {
  const pooled = {
    auroc: pooledAuroc,
    aurocCi: [pooledAuroc - 0.03, Math.min(1, pooledAuroc + 0.02)] as [number, number],
    tpr: rate(tpr, 100),
    fpr: rate(1, 100),
  };
  const summary = {
    method: 'probe' as const,
    layers: [14, 15],
    devWorstAuroc: 0.75,
    testWorstAuroc: 0.72,
    testPooled: pooled,
  };
  return {
    file: 'reading.json',
    template: 'chat',
    method: 'probe',
    layers: [14, 15],
    threshold: 0.87,
    targetFpr: 0.05,
    sources: {
      dev: [
        { name: 'advbench', label: 1, n: 100 },
        { name: 'alpaca:train', label: 0, n: 100 },
      ],
      test: [
        { name: 'harmbench', label: 1, n: 100 },
        { name: 'alpaca:test', label: 0, n: 100 },
      ],
    },
    dev: [source('advbench', 1, 0.8), source('alpaca:train', 0, 0.75)],
    test: [source('harmbench', 1, 0.72), source('alpaca:test', 0, 0.93)],
    chosen: summary,
    byMethod: [summary, { ...summary, method: 'mean-diff', layers: [23] }],
    inSplit: { layer: 16, accuracy: 0.9, heldOutWorstAuroc: 0.74 },
    layerCurves: [10, 14, 15, 20].flatMap((layer) => [
      { method: 'probe' as const, layer, worstAuroc: 0.6 + layer / 100 },
      { method: 'mean-diff' as const, layer, worstAuroc: 0.5 + layer / 100 },
    ]),
    warnings: [],
    forwardSeconds: 1,
  };
}

const lik = { n: 40, meanDelta: -0.05, ci: [-0.07, -0.03] as [number, number], steered: 39 };

function condition(c: Condition, rates: GroupedRates): SteeringCondition {
  return {
    condition: c,
    label: c,
    runs: [c],
    rates,
    likelihood: c === 'none' ? null : { borderline: lik, harmless: lik },
  };
}

/**
 * A report of every step but the attack: refusals of 40 harmful / borderline-safe / harmless
 * prompts without steering (`none`) and under the gate (`gated`).
 */
function report(
  none: [number, number, number],
  gated: [number, number, number],
  monitor = reading(0.9, 46),
  capability?: CapabilityResult,
  sae?: SaeResult,
): AuditReport {
  const data = {
    harmful: { sets: [{ set: 'harmbench', used: 40 }], n: 40 },
    borderline: { sets: [{ set: 'xstest-safe:privacy_public', used: 40 }], n: 40 },
    harmless: { sets: [{ set: 'alpaca:test', used: 40 }], n: 40 },
  };
  const verdict = { flagged: rate(36, 40), benign: rate(2, 40), uncertain: rate(2, 40) };
  const results: Omit<AuditResults, 'attack' | 'capability' | 'sae'> = {
    reading: monitor,
    direction: {
      file: 'refusal-direction.gguf',
      sets: { harmful: 'advbench', harmless: 'alpaca' },
      layer: 14,
      position: -4,
      norm: 6.25,
      selectedBy: 'filters',
      baseline: { harmful: 2, harmless: -3 },
      ablatedHarmful: -2,
      addedHarmless: 1,
      kl: 0.05,
      counts: { harmfulTrain: 23, harmlessTrain: 57, harmfulVal: 4, harmlessVal: 16 },
      candidates: 115,
      examined: 3,
      byLayer: [],
    },
    baseline: { runs: ['none'], data, rates: grouped(...none) },
    steering: {
      direction: { layer: 14, norm: 6.25 },
      coefficient: 1,
      gate: { method: 'probe', layers: [14, 15], threshold: 0.87, benignBelow: 0 },
      verdicts: { harmful: verdict, borderline: verdict, harmless: verdict },
      conditions: [
        condition('none', grouped(...none)),
        condition('add', grouped(37, 38, 22)),
        condition('ablate', grouped(4, 16, 3)),
        condition('gated', grouped(...gated)),
      ],
      data,
      likelihoodTokens: 2000,
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
      arch: 'qwen2',
      fingerprint: 'f'.repeat(64),
      nLayers: 24,
      dModel: 8,
    },
    settings: SETTINGS,
    steps: {
      reading: record(results.reading),
      direction: record(results.direction),
      baseline: record(results.baseline),
      steering: record(results.steering),
      ...(capability ? { capability: record(capability) } : {}),
      ...(sae ? { sae: record(sae) } : {}),
    },
    runs: {},
  };
  return buildReport({
    state,
    keys: {
      reading: 'k',
      direction: 'k',
      baseline: 'k',
      steering: 'k',
      attack: 'other',
      capability: 'k',
      sae: 'k',
    },
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

const goal = (r: AuditReport, id: string) => r.goals.find((g) => g.id === id)!;

describe('audit report', () => {
  test('goals are judged on held-out sources: a badge from the point estimate, the interval beside it', () => {
    const r = report([16, 18, 5], [38, 3, 2], reading(0.98, 92));
    for (const g of r.goals) assert.equal(g.data, HELD_OUT);
    assert.equal(goal(r, 'monitor-auroc').reachesTarget, true);
    assert.equal(goal(r, 'monitor-tpr').reachesTarget, true);
    assert.equal(goal(r, 'gate-refusal').reachesTarget, true); // 38/40 = 95%
    assert.equal(goal(r, 'gate-over-refusal').reachesTarget, true); // 3/40 = 7.5%
    assert.equal(goal(r, 'scav-asr').reachesTarget, null, 'the attack did not run');
    assert.match(goal(r, 'gate-refusal').value!, /^95\.0% \(83\.5%–98\.6%\); no steering 40\.0%/);
    const summary = section(renderReportHtml(r), 'summary');
    assert.equal((summary.match(/class="pill done">met</g) ?? []).length, 5);
    assert.match(summary, /class="pill notrun">not measured</);
    assert.deepEqual(r.failures, []);
  });

  test('missed goals are listed first, with their figures', () => {
    const r = report([16, 18, 5], [36, 16, 3]);
    assert.equal(goal(r, 'monitor-auroc').reachesTarget, false);
    assert.equal(goal(r, 'gate-over-refusal').reachesTarget, false);
    assert.ok(
      r.failures.some((l) => /^Missed: monitor AUROC.* is 0\.900/.test(l)),
      r.failures.join('\n'),
    );
    assert.ok(r.failures.some((l) => /^Missed: two-sided gate: over-refusal.* is 40\.0%/.test(l)));
    const summary = section(renderReportHtml(r), 'summary');
    const list = summary.indexOf('What failed or missed its goal');
    assert.ok(list >= 0 && list < summary.indexOf('<ul class="summary">'));
    assert.match(summary, /class="pill failed">missed</);
  });

  test('a gate whose refusal interval overlaps no steering’s is said to be no improvement', () => {
    // 20/40 against 16/40: Wilson intervals about 35–65% and 26–55% overlap.
    const overlap = report([16, 18, 5], [20, 3, 2]);
    assert.ok(
      overlap.failures.some((l) => /not distinguishable from no steering/.test(l)),
      overlap.failures.join('\n'),
    );
    assert.ok(
      overlap.summary.some((l) =>
        /Refusal of harmful requests: 50\.0% .* \(not distinguishable from no steering/.test(l),
      ),
    );
    // 36/40 against 16/40: clear of each other.
    const clear = report([16, 18, 5], [36, 3, 2]);
    assert.ok(!clear.failures.some((l) => /not distinguishable/.test(l)));
    assert.ok(
      clear.summary.some((l) => /Refusal of harmful requests: 90\.0% .* \(beyond no steering/.test(l)),
    );
  });

  test('a model that never refuses is named first among the failures', () => {
    const r = report([0, 0, 0], [0, 0, 0]);
    assert.equal(
      r.failures[0],
      'The model refused 0 of 40 harmful requests without steering: steering toward refusal and the attacks had nothing to act on.',
    );
  });

  test('the reading section: test sources first, every reading compared, the chosen blocks marked', () => {
    const page = section(renderReportHtml(report([16, 18, 5], [36, 3, 2])), 'reading');
    assert.ok(page.indexOf('Test sources (headline)') < page.indexOf('Development sources, each held out'));
    assert.match(page, /<tr class="best"><td>probe<\/td><td>14, 15<\/td>/);
    assert.match(page, /<td>mean-diff<\/td><td>23<\/td>/);
    assert.match(page, /<svg[\s\S]*chosen: 14, 15/);
    assert.match(page, /A random split pooling the development sources would pick block 16/);
  });

  test('the steering section: every condition per group, the verdicts and the likelihood cost', () => {
    const page = section(renderReportHtml(report([16, 18, 5], [36, 3, 2])), 'steering');
    for (const c of ['none', 'add', 'ablate', 'gated'])
      assert.match(page, new RegExp(`<td rowspan="3">${c}</td>`));
    assert.match(page, /Share refused/);
    assert.match(page, /flagged \(added\)/);
    assert.match(page, /-0\.050<br><span class="ci">-0\.070–-0\.030; 39\/40 steered/);
  });

  test('capability: opt-in when not run; when run, both conditions, the paired change and the trade-off', () => {
    const plain = report([16, 18, 5], [36, 3, 2]);
    assert.ok(
      plain.summary.some((l) =>
        /Not run with these settings: attack, capability \(opt-in\), sae \(opt-in\)/.test(l),
      ),
    );
    assert.match(section(renderReportHtml(plain), 'capability'), /Not run: this step is opt-in/);

    const fig = (task: string, metric: string, value: number, steered: number) => ({
      task,
      metric,
      n: 40,
      value,
      ci: [value - 0.1, value + 0.1] as const,
      interval: 'wilson' as const,
      steered,
    });
    const capability: CapabilityResult = {
      tasks: ['mmlu'],
      limit: 40,
      seed: 0,
      maxTokens: 256,
      conditions: [
        {
          condition: 'none',
          label: 'no steering',
          figures: [fig('mmlu', 'accuracy (0-shot)', 0.45, 0)],
          file: 'capability-none.json',
          seconds: 1,
        },
        {
          condition: 'gated',
          label: 'two-sided gate',
          figures: [fig('mmlu', 'accuracy (0-shot)', 0.4, 38)],
          file: 'capability-gated.json',
          seconds: 1,
        },
      ],
      costs: [{ task: 'mmlu', metric: 'accuracy (0-shot)', n: 40, delta: -0.05, ci: [-0.12, 0.02] }],
    };
    const r = report([16, 18, 5], [36, 3, 2], reading(0.9, 46), capability);
    assert.ok(
      r.summary.some((l) =>
        /mmlu accuracy \(0-shot\) 45\.0% → 40\.0% \(no clear change: -5\.0 points, 95% CI -12\.0 to 2\.0\)/.test(
          l,
        ),
      ),
      r.summary.join('\n'),
    );
    const page = section(renderReportHtml(r), 'capability');
    assert.match(page, /38\/40/);
    assert.match(page, /−5\.0<br><span class="ci">−12\.0 to \+2\.0; includes 0/);
    assert.match(page, /The trade-off/);
    // the trade-off row of the gate carries its harmful-refusal rate (36 of 40) beside MMLU
    assert.match(page, /<tr class="best"><td>two-sided gate<\/td><td class="n">90% \(36\/40\)/);
  });

  test('sae: opt-in when not run; when run, its two conditions beside the steering step, the latents and the grid', () => {
    assert.match(
      section(renderReportHtml(report([16, 18, 5], [36, 3, 2])), 'sae'),
      /Not run: this step is opt-in/,
    );
    const gridRate = (k: number) => ({ positives: k, n: 16, rate: k / 16, ci: [0, 1] as const });
    const sae: SaeResult = {
      sae: {
        dir: 'sae-l12',
        hookName: 'blocks.12.hook_resid_post',
        dIn: 896,
        dSae: 7168,
        architecture: 'topk',
        k: 32,
      },
      search: {
        sets: { harmful: 'advbench', harmless: 'alpaca' },
        harmful: { n: 64, refusals: 30 },
        harmless: { n: 64, refusals: 2 },
        refusalTokens: 8,
        byRefusalTokens: [
          {
            feature: 77,
            score: 3.2,
            meanOnRefusal: 3.4,
            meanElsewhere: 0.2,
            freqOnRefusal: 0.6,
            freqElsewhere: 0.05,
            maxOnRefusal: 9.5,
          },
        ],
        byMonitor: [{ feature: 12, correlation: 0.71, freq: 0.4, maxActivation: 5 }],
      },
      feature: 77,
      featureFrom: 'search',
      grid: [
        { value: 9.5, refusal: gridRate(10), overRefusal: gridRate(1), flawed: gridRate(0), objective: 0.56 },
        { value: 19, refusal: gridRate(15), overRefusal: gridRate(9), flawed: gridRate(2), objective: 0.25 },
      ],
      clamp: 9.5,
      clampFrom: 'grid',
      conditions: [
        {
          condition: 'clamp',
          label: 'latent 77 clamped to 9.5, always',
          runs: ['sae-clamp'],
          rates: grouped(30, 25, 10),
        },
        {
          condition: 'gated-clamp',
          label: 'two-sided gate with the clamp',
          runs: ['sae-clamp', 'ablate', 'none'],
          rates: grouped(33, 4, 2),
        },
      ],
      data: {
        harmful: { sets: [{ set: 'harmbench', used: 40 }], n: 40 },
        borderline: { sets: [{ set: 'xstest-safe:privacy_public', used: 40 }], n: 40 },
        harmless: { sets: [{ set: 'alpaca:test', used: 40 }], n: 40 },
      },
    };
    const r = report([16, 18, 5], [36, 3, 2], reading(0.9, 46), undefined, sae);
    assert.ok(
      r.summary.some((l) => /SAE latent 77 .* clamped to 9\.5 .* 82\.5% \(68\.0%–91\.3%\) gated/.test(l)),
      r.summary.join('\n'),
    );
    const page = section(renderReportHtml(r), 'sae');
    assert.match(
      page,
      /<tr class="best"><td>two-sided gate with the clamp<\/td><td class="n">83% \(33\/40\)/,
    );
    assert.match(
      page,
      /<td>gated<\/td><td class="n">90% \(36\/40\)/,
      "the steering step's rows sit beside it",
    );
    assert.match(page, /Clamp grid/);
    assert.match(page, /<tr class="best"><td class="n">9\.50<\/td>/);
    assert.match(page, /correlation with the monitor/);
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

  test('the bar chart draws each bar at its value with its whisker, and a label per series', () => {
    const svg = barChartSvg(
      ['a', 'b'],
      [
        {
          label: 'one',
          color: '#111111',
          values: [0.5, 0.1],
          ci: [
            [0.4, 0.6],
            [0.05, 0.2],
          ],
        },
        { label: 'two', color: '#222222', values: [0.25, NaN] },
      ],
      { title: 't', yLabel: 'y', yMax: 1, hLines: [{ y: 0.95, label: 'goal' }] },
    );
    assert.equal(
      (svg.match(/<rect x="[^"]+" y="[^"]+" width="[^"]+" height="[^"]+" fill="#111111"/g) ?? []).length,
      3,
      'two bars and the legend swatch',
    );
    assert.equal(
      (svg.match(/fill="#222222"/g) ?? []).length,
      2,
      'one bar (NaN leaves a gap) and its legend swatch',
    );
    assert.match(svg, />50</);
    assert.match(svg, />one</);
    assert.match(svg, />goal</);
  });

  test('without --show-text the page says where the replies are; with it, shows them under a warning', () => {
    const r = report([16, 18, 5], [36, 3, 2]);
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
});
