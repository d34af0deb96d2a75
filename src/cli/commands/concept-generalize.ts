/**
 * `steerguard concept generalize`: does a harmful-request reading work on sources it never saw?
 * Fits and chooses on development sources by leave-one-source-out validation, reports on test
 * sources used for nothing else (concepts/generalization.ts). Prints counts and figures only.
 */
import { writeFileSync } from 'node:fs';

import { OptionError } from '../../formats/errors.js';
import type { GeneralizationReport, ReadingReport } from '../../concepts/generalization.js';
import { wilsonInterval } from '../../concepts/probe.js';
import type { HeldOutSourceResult } from '../../concepts/sources.js';
import type { CommandSpec } from '../args.js';
import { formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  CHAT_OPTIONS,
  DATA_DIR_OPTION,
  MODEL_OPTION,
  THREADS_OPTION,
  checkOutPath,
  command,
  loadModel,
  para,
  useChat,
} from './common.js';

const SETS = { type: 'list', of: 'string', placeholder: 'set1,set2' } as const;

const GENERALIZE_SPEC = {
  name: 'concept generalize',
  summary: 'held-out-source validation of harmful-request readings: probe, difference of means, PCA',
  description: para(
    'Every reading is fitted with one development source left out and scored on it (leave-one-source-out); ' +
      'the reading, its layers and its threshold (at --fpr false positives on benign prompts) are chosen by the ' +
      'worst held-out source. The choice is then fitted on all development sources and measured on the test ' +
      'sources, which took part in nothing: those are the headline figures. Give several sources of each class, ' +
      "including benign prompts on the same topics as harmful ones (e.g. XSTest's types: xstest-safe:homonyms). " +
      'Prompts are never printed.',
  ),
  options: {
    model: MODEL_OPTION,
    harmful: { ...SETS, required: true, description: 'development sources of harmful requests (2 or more)' },
    benign: { ...SETS, required: true, description: 'development sources of benign requests (2 or more)' },
    testHarmful: { ...SETS, required: true, description: 'test sources of harmful requests' },
    testBenign: { ...SETS, required: true, description: 'test sources of benign requests' },
    dataDir: DATA_DIR_OPTION,
    limit: { type: 'number', integer: true, min: 1, description: 'first N prompts of each source' },
    fpr: {
      type: 'number',
      min: 0.001,
      max: 0.5,
      default: 0.05,
      description: 'false-positive rate on benign prompts that sets the threshold',
    },
    methods: {
      type: 'list',
      of: 'string',
      placeholder: 'probe,mean-diff,pca',
      description: 'readings to compare (default all three)',
    },
    layers: {
      type: 'list',
      of: 'number',
      integer: true,
      min: 0,
      placeholder: 'l1,l2',
      description: 'blocks to consider (default: all)',
    },
    minPerSource: {
      type: 'number',
      integer: true,
      min: 2,
      default: 10,
      description: 'fewest prompts a source may have',
    },
    ...CHAT_OPTIONS,
    cacheDir: {
      type: 'string',
      placeholder: 'dir',
      description: 'activation cache (default: $STEERGUARD_CACHE/activations, else .cache/activations)',
    },
    out: { type: 'string', placeholder: 'report.json', description: 'also write the full report as JSON' },
    saveReading: {
      type: 'string',
      placeholder: 'reading.json',
      description:
        'write the chosen reading (fitted on every development source) as a monitor for eval refusal --reading',
    },
    overwrite: { type: 'boolean', description: 'replace an existing --out file' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard concept generalize -m .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ' +
      '--harmful advbench,scav-malicious,xstest-unsafe:contrast_homonyms --benign alpaca:train,scav-safe,xstest-safe:homonyms ' +
      '--test-harmful harmbench,xstest-unsafe:contrast_privacy --test-benign xstest-safe:privacy_public,alpaca:test --limit 100',
  ],
} as const satisfies CommandSpec;

export const generalizeCommand = command(GENERALIZE_SPEC, async (args, out) => {
  const o = args.options;
  checkOutPath(o.out, o.overwrite);
  checkOutPath(o.saveReading, o.overwrite);
  const { READING_METHODS } = await import('../../concepts/sources.js');
  const methods = o.methods?.map((m) => {
    const known = READING_METHODS.find((k) => k === m);
    if (known === undefined)
      throw new OptionError(`--methods: unknown reading ${m}; use ${READING_METHODS.join(', ')}`);
    return known;
  });
  const { loadPromptSet } = await import('../../data/datasets.js');
  const load = (names: readonly string[]) =>
    names.map((n) => {
      const set = loadPromptSet(n, { dataDir: o.dataDir, limit: o.limit });
      if (set.prompts.length === 0) throw new OptionError(`prompt set ${set.name} is empty`);
      return set;
    });
  const dev = { harmful: load(o.harmful), benign: load(o.benign) };
  const test = { harmful: load(o.testHarmful), benign: load(o.testBenign) };

  const { checkGeneralizationSources, measureGeneralization } =
    await import('../../concepts/generalization.js');
  checkGeneralizationSources(dev, test, o.minPerSource);
  const model = await loadModel(o.model, out, { threads: o.threads });
  const reporter = cliReporter(out);
  const bars = {
    activations: reporter.progress('activations', 'prompts'),
    folds: reporter.progress('folds', 'sources'),
  };
  const report = await measureGeneralization(model, {
    dev,
    test,
    template: useChat(model, o) ? 'chat' : 'raw',
    layers: o.layers,
    cacheDir: o.cacheDir,
    methods,
    targetFpr: o.fpr,
    minPerSource: o.minPerSource,
    onProgress: (stage, done, total) => bars[stage].update(done, total),
  });
  bars.activations.finish();
  bars.folds.finish();
  for (const w of report.validation.warnings) out.warn(w);
  const json = summary(report);
  if (o.out !== undefined) writeFileSync(o.out, JSON.stringify(json, null, 1) + '\n');
  if (o.saveReading !== undefined) {
    const { saveReading } = await import('../../concepts/reading-file.js');
    saveReading(o.saveReading, {
      reading: report.chosen.reading,
      model: { name: model.identity.name, fingerprint: model.identity.fingerprint },
      template: useChat(model, o) ? 'chat' : 'raw',
      fittedIds: [...dev.harmful, ...dev.benign].flatMap((set) => set.prompts.map((p) => p.id)),
    });
    out.info(`wrote the chosen reading to ${o.saveReading}`);
  }
  out.result(json, () => formatReport(report, o.fpr));
});

/** What --json prints and --out writes: every figure, no directions. */
function summary(r: GeneralizationReport) {
  const reading = (x: ReadingReport) => ({
    method: x.dev.method,
    layers: x.dev.layers,
    threshold: x.dev.threshold,
    dev: { worstAuroc: x.dev.worstAuroc, meanAuroc: x.dev.meanAuroc, perSource: x.dev.perSource },
    test: { worstAuroc: x.testWorstAuroc, pooled: x.testPooled, perSource: x.test },
  });
  return {
    chosen: reading(r.chosen),
    byMethod: r.byMethod.map(reading),
    inSplit: r.validation.inSplit,
    devSources: r.validation.sources,
    testSources: r.testSources,
    targetFpr: r.validation.targetFpr,
    layerCurves: r.validation.layerCurves.map((c) => ({
      method: c.method,
      layer: c.layers[0],
      worstAuroc: c.worstAuroc,
      meanAuroc: c.meanAuroc,
    })),
    warnings: r.validation.warnings,
    forwardSeconds: r.forwardSeconds,
  };
}

const f3 = (x: number): string => x.toFixed(3);
const ci = (c: readonly [number, number]): string => `${f3(c[0])}–${f3(c[1])}`;
const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

/**
 * Development rows: AUROC against the other class's out-of-fold prompts and the harmful TPR at
 * the threshold that gives `fpr` on this row's benign side (this source, or all benign sources).
 */
function devTable(rows: readonly HeldOutSourceResult[], fpr: number): string {
  return formatTable(
    ['source', 'class', 'n', 'AUROC', '95% CI', `TPR @${pct(fpr)} FPR`, '95% CI'],
    rows.map((s) => [
      s.source,
      s.label ? 'harmful' : 'benign',
      s.n,
      f3(s.auroc),
      ci(s.aurocCi),
      pct(s.tpr),
      `${pct(s.tprCi[0])}–${pct(s.tprCi[1])}`,
    ]),
    [false, false, true, true, true, true, true],
  );
}

/** Test rows: AUROC, and the share of this source flagged at the development threshold. */
function testTable(rows: readonly HeldOutSourceResult[]): string {
  return formatTable(
    ['source', 'class', 'n', 'AUROC', '95% CI', 'flagged', '95% CI'],
    rows.map((s) => {
      const rate = s.label ? s.tpr : s.fpr;
      const [lo, hi] = wilsonInterval(Math.round(rate * s.n), s.n);
      return [
        s.source,
        s.label ? 'harmful' : 'benign',
        s.n,
        f3(s.auroc),
        ci(s.aurocCi),
        pct(rate),
        `${pct(lo)}–${pct(hi)}`,
      ];
    }),
    [false, false, true, true, true, true, true],
  );
}

function formatReport(r: GeneralizationReport, fpr: number): string {
  const c = r.chosen;
  const lines = [
    `chosen on the development sources (leave-one-source-out): ${c.dev.method} on blocks ${c.dev.layers.join(', ')}; ` +
      `worst held-out source AUROC ${f3(c.dev.worstAuroc)}`,
    '',
    'TEST SOURCES (used for nothing else; the headline). flagged: share above the development threshold',
    testTable(c.test).trimEnd(),
    `pooled: AUROC ${f3(c.testPooled.auroc)} (${ci(c.testPooled.aurocCi)}), TPR ${pct(c.testPooled.tpr)} at FPR ${pct(c.testPooled.fpr)}`,
    '',
    'each reading on the same test sources (its own best layers on the development sources):',
    formatTable(
      [
        'reading',
        'blocks',
        'dev worst AUROC',
        'test worst AUROC',
        'test pooled AUROC',
        'test TPR',
        'test FPR',
      ],
      r.byMethod.map((m) => [
        m.dev.method,
        m.dev.layers.join(','),
        f3(m.dev.worstAuroc),
        f3(m.testWorstAuroc),
        f3(m.testPooled.auroc),
        pct(m.testPooled.tpr),
        pct(m.testPooled.fpr),
      ]),
      [false, false, true, true, true, true, true],
    ).trimEnd(),
    '',
    'development sources, each held out in turn (validation figures: they chose the reading):',
    devTable(c.dev.perSource, fpr).trimEnd(),
    '',
    `a random split pooling the development sources would pick block ${r.validation.inSplit.layer} ` +
      `(probe accuracy ${pct(r.validation.inSplit.accuracy)} in-split; worst held-out source AUROC ` +
      `${f3(r.validation.inSplit.heldOutWorstAuroc)})`,
  ];
  return lines.join('\n');
}
