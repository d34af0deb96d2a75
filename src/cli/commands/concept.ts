/**
 * `steerguard concept train|eval|calibrate|show|generalize|token-monitor`: safety concepts (SCAV probes) from the command
 * line, and the hidden `steerguard bench-probes` timing command.
 *
 * Prompt sets are short names (`advbench`, `alpaca:train`, see data/datasets.ts) or files; their
 * text is never printed, only counts and ids. Checks that need no model (sets, output path, split)
 * run before the model loads.
 */
import { writeFileSync } from 'node:fs';
import { basename } from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { Concept, ConceptEvaluation, TrainReport } from '../../concepts/concept.js';
import { type LoadedExamples, checkTokenIds, loadExamples } from '../../eval/prompt-sets.js';
import { generalizeCommand } from './concept-generalize.js';
import { tokenMonitorCommand } from './concept-token-monitor.js';
import { type CommandSpec, type OptionSpec } from '../args.js';
import { type CliOutput, formatNumber, formatTable } from '../output.js';
import { cliReporter } from '../reporter.js';
import {
  CHAT_OPTIONS,
  COLUMN_OPTION,
  type CliCommand,
  actionGroup,
  DATA_DIR_OPTION,
  MODEL_OPTION,
  SPLIT_OPTIONS,
  THREADS_OPTION,
  TOKEN_IDS_OPTION,
  checkOutPath,
  command,
  loadModel,
  para,
  useChat,
} from './common.js';

// ---------------------------------------------------------------------------------------------
// Shared options and helpers (monitor.ts uses them too)

export const CONCEPT_SET_OPTIONS = {
  dataDir: DATA_DIR_OPTION,
  column: COLUMN_OPTION,
  limit: {
    type: 'number',
    integer: true,
    min: 1,
    description: 'first N prompts of each set (before any split)',
  },
  tokenIds: TOKEN_IDS_OPTION,
} as const satisfies Record<string, OptionSpec>;

/** The layers a monitor's score averages (monitor.ts uses them too). */
export const SCORING_OPTIONS = {
  p1: {
    type: 'number',
    min: 0,
    max: 1,
    default: 0.9,
    description: 'layers above this probe accuracy make the score',
  },
  layers: {
    type: 'list',
    of: 'number',
    integer: true,
    min: 0,
    placeholder: 'l1,l2',
    description: 'score these layers instead',
  },
} as const satisfies Record<string, OptionSpec>;

export const CACHE_OPTIONS = {
  cacheDir: {
    type: 'string',
    placeholder: 'dir',
    description: 'activation cache (default: $STEERGUARD_CACHE/activations, else .cache/activations)',
  },
  noCache: { type: 'boolean', description: 'neither read nor write the activation cache' },
  batchTokens: {
    type: 'number',
    integer: true,
    min: 1,
    default: 2048,
    description: 'tokens per forward pass',
  },
} as const satisfies Record<string, OptionSpec>;

const CONCEPT_OPTION = {
  type: 'string',
  short: 'c',
  required: true,
  placeholder: 'file',
  description: 'concept file (from concept train)',
} as const satisfies OptionSpec;

/** The cache setting from --cache-dir / --no-cache. */
export function cacheSetting(o: { cacheDir?: string; noCache: boolean }): string | false | undefined {
  if (o.noCache && o.cacheDir !== undefined)
    throw new OptionError('--cache-dir and --no-cache contradict each other');
  return o.noCache ? false : o.cacheDir;
}

function ci(c: readonly [number, number]): string {
  return `${pct(c[0])}–${pct(c[1])}`;
}

function pct(x: number): string {
  return Number.isFinite(x) ? x.toFixed(3) : '—';
}

/** The per-layer table of a concept. */
export function formatConceptTable(concept: Concept): string {
  const best = concept.bestLayer();
  const split = concept.layers[0].metrics.split;
  const rows = concept.layers.map((p) => [
    `${p.layer}${p.layer === best ? '*' : ''}`,
    pct(p.metrics.accuracy),
    `${pct(p.metrics.accuracyCi[0])}–${pct(p.metrics.accuracyCi[1])}`,
    pct(p.metrics.auroc),
    `${pct(p.metrics.aurocCi[0])}–${pct(p.metrics.aurocCi[1])}`,
    p.metrics.valAccuracy === null ? '—' : pct(p.metrics.valAccuracy),
    pct(p.metrics.trainAccuracy),
    pct(p.metrics.meanDiffAuroc),
    pct(p.metrics.pcaAuroc),
  ]);
  return formatTable(
    [
      'layer',
      `${split} acc`,
      '95% CI',
      'AUROC',
      '95% CI',
      'val acc',
      'train acc',
      'mean-diff AUROC',
      'PCA AUROC',
    ],
    rows,
    [false, true, true, true, true, true, true, true, true],
  );
}

function describeData(concept: Concept): string {
  const ids = concept.data.ids;
  const c = (s: 'train' | 'val' | 'test') => `${ids[s].positive.length}+${ids[s].negative.length}`;
  return (
    `${concept.data.positive} (positive) vs ${concept.data.negative} (negative), seed ${concept.data.seed}: ` +
    `train ${c('train')}, val ${c('val')}, test ${c('test')}` +
    (concept.data.removedOverlap > 0 ? `; ${concept.data.removedOverlap} prompts in both sets left out` : '')
  );
}

// ---------------------------------------------------------------------------------------------
// concept train

const TRAIN_SPEC = {
  name: 'concept train',
  summary: 'fit a per-layer safety concept (SCAV probes) from a positive and a negative prompt set',
  description: para(
    'Splits each set into train/val/test by a hash of each prompt and --seed, reads the last-token ' +
      'residual stream (blocks.L.hook_resid_post) of every prompt at every layer (cached on disk, so a ' +
      'rerun skips the model), fits an L2 logistic-regression probe (C = --logreg-c) plus the mean-difference ' +
      'and PCA directions per layer on the train split, and prints held-out accuracy and AUROC with 95% ' +
      'intervals per layer (* marks the best layer by validation accuracy). Prompt text is never printed.',
  ),
  options: {
    model: MODEL_OPTION,
    positive: {
      type: 'string',
      required: true,
      placeholder: 'set',
      description: 'positive prompts (e.g. advbench): set name or file',
    },
    negative: {
      type: 'string',
      required: true,
      placeholder: 'set',
      description: 'negative prompts (e.g. alpaca)',
    },
    testPositive: {
      type: 'string',
      placeholder: 'set',
      description: 'extra held-out positive set, added to the test split',
    },
    testNegative: {
      type: 'string',
      placeholder: 'set',
      description: 'extra held-out negative set, added to the test split',
    },
    out: {
      type: 'string',
      short: 'o',
      required: true,
      placeholder: 'file',
      description: 'concept file to write (safetensors)',
    },
    name: {
      type: 'string',
      placeholder: 'text',
      description: 'concept name (default: <positive>-vs-<negative>)',
    },
    ...CONCEPT_SET_OPTIONS,
    ...SPLIT_OPTIONS,
    ...CHAT_OPTIONS,
    layers: {
      type: 'list',
      of: 'number',
      integer: true,
      min: 0,
      placeholder: 'l1,l2',
      description: 'layers to fit (default: all)',
    },
    logregC: {
      type: 'number',
      min: 1e-12,
      default: 1,
      description: 'inverse L2 strength of the probes (scikit-learn C)',
    },
    standardize: {
      type: 'boolean',
      description: 'scale features to unit variance before fitting (weights still act on raw activations)',
    },
    ...CACHE_OPTIONS,
    svg: {
      type: 'string',
      placeholder: 'file.svg',
      description: 'also write the per-layer accuracy curve as SVG',
    },
    overwrite: { type: 'boolean', description: 'replace an existing --out file' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard concept train -m .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --positive advbench --negative alpaca --limit 200 --out harmful.concept.safetensors --svg harmful.svg',
    'steerguard concept train -m model.gguf --positive scav-malicious:train --negative scav-safe:train --test-positive scav-malicious:test --test-negative scav-safe:test --split 0.9,0.1,0 --out scav.concept.safetensors',
    'steerguard concept train -m model.gguf --positive mine.csv#goal --negative other.jsonl --column text --out c.safetensors --json',
  ],
} as const satisfies CommandSpec;

const trainCommand = command(TRAIN_SPEC, async (args, out) => {
  const o = args.options;
  const { parseSplit } = await import('../../data/splits.js');
  const split = parseSplit(o.split);
  checkOutPath(o.out, o.overwrite);
  if (o.svg !== undefined) checkOutPath(o.svg, o.overwrite);
  const cacheDir = cacheSetting(o);
  const setOpts = { dataDir: o.dataDir, column: o.column, limit: o.limit, tokenIds: o.tokenIds };
  const pos = loadExamples(o.positive, setOpts);
  const neg = loadExamples(o.negative, setOpts);
  const tpos = o.testPositive !== undefined ? loadExamples(o.testPositive, setOpts) : undefined;
  const tneg = o.testNegative !== undefined ? loadExamples(o.testNegative, setOpts) : undefined;

  const model = await loadModel(o.model, out, { threads: o.threads });
  checkTokenIds(model, [pos, neg, ...(tpos ? [tpos] : []), ...(tneg ? [tneg] : [])]);
  const chat = o.tokenIds ? false : useChat(model, o);
  const { trainConcept } = await import('../../concepts/concept.js');
  const progress = cliReporter(out).progress('activations', 'prompts');
  const { concept, report } = await trainConcept({
    model,
    positive: pos.examples,
    negative: neg.examples,
    testPositive: tpos?.examples,
    testNegative: tneg?.examples,
    name: o.name,
    sets: { positive: pos.name, negative: neg.name, testPositive: tpos?.name, testNegative: tneg?.name },
    template: chat ? 'chat' : 'raw',
    split,
    seed: o.seed,
    C: o.logregC,
    standardize: o.standardize,
    layers: o.layers,
    cacheDir,
    batchTokens: o.batchTokens,
    onProgress: progress.update,
  });
  progress.finish();
  concept.save(o.out);
  if (o.svg !== undefined) {
    const { conceptAccuracySvg } = await import('../../concepts/plot.js');
    writeFileSync(
      o.svg,
      conceptAccuracySvg(concept.layers, { title: `${concept.name} on ${basename(model.identity.path)}` }),
    );
  }
  const unconverged = concept.layers.filter((p) => !p.fit.converged).map((p) => p.layer);
  if (unconverged.length > 0)
    out.warn(`the probe solver did not fully converge at layers ${unconverged.join(', ')}`);
  out.result({ path: o.out, svg: o.svg ?? null, concept: concept.summary(), report }, () =>
    formatTrain(concept, report, o.out, o.svg),
  );
});

function formatTrain(concept: Concept, report: TrainReport, path: string, svg: string | undefined): string {
  const lines = [
    formatConceptTable(concept).trimEnd(),
    '',
    describeData(concept),
    `best layer ${concept.bestLayer()}; template ${concept.template}`,
    `activations: ${report.computed} prompts through the model, ${report.cached} from the cache, ${report.extractSeconds.toFixed(2)}s ` +
      `(forward ${report.forwardSeconds.toFixed(2)}s); probe fits (${concept.layers.length} layers): ${report.fitSeconds.toFixed(2)}s ` +
      `(${report.fitCpuSeconds.toFixed(2)}s CPU)`,
    `wrote ${path}${svg !== undefined ? ` and ${svg}` : ''}`,
  ];
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// concept eval

const PART_OPTIONS = {
  part: {
    type: 'enum',
    values: ['all', 'train', 'val', 'test'],
    default: 'all',
    description:
      "use one part of each set's seeded split (the concept's own --seed and --split unless given)",
  },
  split: {
    type: 'string',
    placeholder: 'train,val,test',
    description: "split fractions for --part (default: the concept's)",
  },
  seed: { type: 'number', integer: true, description: "seed for --part (default: the concept's)" },
  allowOverlap: {
    type: 'boolean',
    description: 'use prompts the concept was fitted on anyway (results are then not results)',
  },
  dropOverlap: {
    type: 'boolean',
    description: 'leave out prompts the concept was fitted on and go on with the rest',
  },
} as const satisfies Record<string, OptionSpec>;

/** --drop-overlap: the sets without the prompts the concept was fitted on, with a note. */
function dropFitted(sets: LoadedExamples[], concept: Concept, out: CliOutput): LoadedExamples[] {
  if (sets.length === 0) return sets;
  const fitted = new Set(concept.fittedIds);
  let dropped = 0;
  const kept = sets.map((s) => {
    const examples = s.examples.filter((e) => !fitted.has(e.id));
    dropped += s.examples.length - examples.length;
    if (examples.length === 0) throw new OptionError(`every prompt of ${s.name} was used to fit the concept`);
    return { ...s, examples };
  });
  if (dropped > 0) out.info(`left out ${dropped} prompts the concept was fitted on (--drop-overlap)`);
  return kept;
}

async function partOf(
  set: LoadedExamples,
  o: { part: 'all' | 'train' | 'val' | 'test'; split?: string; seed?: number },
  concept: Concept,
): Promise<LoadedExamples> {
  if (o.part === 'all') return set;
  const { parseSplit, splitItems } = await import('../../data/splits.js');
  const fractions = o.split !== undefined ? parseSplit(o.split) : concept.data.split;
  const examples = splitItems(set.examples, { seed: o.seed ?? concept.data.seed, fractions })[o.part];
  if (examples.length === 0) throw new OptionError(`set ${set.name} has no prompts in part '${o.part}'`);
  return { name: `${set.name}@${o.part}`, examples, duplicatesRemoved: set.duplicatesRemoved };
}

/** LeakageError with a CLI hint. */
async function withLeakageHint<T>(f: () => Promise<T>): Promise<T> {
  const { LeakageError } = await import('../../data/splits.js');
  try {
    return await f();
  } catch (err) {
    if (err instanceof LeakageError) {
      throw new OptionError(`${err.message}; for the concept's own held-out prompts use --part test`);
    }
    throw err;
  }
}

const EVAL_SPEC = {
  name: 'concept eval',
  summary: "measure a saved concept's probes on labelled prompt sets (with the leakage guard)",
  description: para(
    'Reads the concept at every layer it has on the given sets and prints accuracy and AUROC with 95% ' +
      'intervals per layer, and for the combined score (mean logit of the layers above --p1, or the ' +
      "calibrated threshold's layers). Refuses prompts the concept was fitted or calibrated on unless " +
      '--allow-overlap.',
  ),
  options: {
    concept: CONCEPT_OPTION,
    model: MODEL_OPTION,
    positive: { type: 'string', required: true, placeholder: 'set', description: 'positive prompts' },
    negative: { type: 'string', required: true, placeholder: 'set', description: 'negative prompts' },
    ...CONCEPT_SET_OPTIONS,
    ...PART_OPTIONS,
    p1: {
      type: 'number',
      min: 0,
      max: 1,
      default: 0.9,
      description: 'layers above this probe accuracy make the combined score',
    },
    allowOtherModel: {
      type: 'boolean',
      description: 'accept a model with another fingerprint but the same shape',
    },
    ...CACHE_OPTIONS,
    svg: {
      type: 'string',
      placeholder: 'file.svg',
      description: 'write the per-layer accuracy curve of this evaluation',
    },
    overwrite: { type: 'boolean', description: 'replace an existing --svg file' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard concept eval -c harmful.concept.safetensors -m model.gguf --positive advbench --negative alpaca --limit 200 --part test',
    'steerguard concept eval -c harmful.concept.safetensors -m model.gguf --positive harmbench --negative xstest-safe --json',
  ],
} as const satisfies CommandSpec;

const evalCommand = command(EVAL_SPEC, async (args, out) => {
  const o = args.options;
  const cacheDir = cacheSetting(o);
  if (o.svg !== undefined) checkOutPath(o.svg, o.overwrite);
  const { Concept, evaluateConcept } = await import('../../concepts/concept.js');
  const peek = Concept.load(o.concept);
  const setOpts = { dataDir: o.dataDir, column: o.column, limit: o.limit, tokenIds: o.tokenIds };
  let pos = await partOf(loadExamples(o.positive, setOpts), o, peek);
  let neg = await partOf(loadExamples(o.negative, setOpts), o, peek);
  if (o.dropOverlap) [pos, neg] = dropFitted([pos, neg], peek, out);
  const model = await loadModel(o.model, out, { threads: o.threads });
  const concept = Concept.load(o.concept, model, { allowOtherModel: o.allowOtherModel });
  checkTokenIds(model, [pos, neg]);
  const progress = cliReporter(out).progress('activations', 'prompts');
  const res = await withLeakageHint(() =>
    evaluateConcept(concept, model, pos.examples, neg.examples, {
      allowOverlap: o.allowOverlap,
      p1: o.p1,
      cacheDir,
      batchTokens: o.batchTokens,
      onProgress: progress.update,
    }),
  );
  progress.finish();
  if (res.overlap > 0)
    out.warn(`${res.overlap} evaluation prompts were used to fit the concept (--allow-overlap)`);
  if (o.svg !== undefined) {
    const { conceptAccuracySvg } = await import('../../concepts/plot.js');
    const points = res.layers.map((l) => ({ layer: l.layer, metrics: { ...l, split: 'eval' } }));
    writeFileSync(
      o.svg,
      conceptAccuracySvg(points, { title: `${concept.name}: ${pos.name} vs ${neg.name}` }),
    );
  }
  out.result({ concept: o.concept, positive: pos.name, negative: neg.name, ...res }, () =>
    formatEval(res, pos.name, neg.name),
  );
});

function formatEval(res: ConceptEvaluation, posName: string, negName: string): string {
  const rows = res.layers.map((l) => [
    String(l.layer),
    pct(l.accuracy),
    ci(l.accuracyCi),
    pct(l.auroc),
    ci(l.aurocCi),
  ]);
  const c = res.combined;
  rows.push([
    `combined (${c.scoringLayers.length} layers)`,
    pct(c.accuracy),
    ci(c.accuracyCi),
    pct(c.auroc),
    ci(c.aurocCi),
  ]);
  const lines = [
    formatTable(['layer', 'accuracy', '95% CI', 'AUROC', '95% CI'], rows, [
      false,
      true,
      true,
      true,
      true,
    ]).trimEnd(),
    '',
    `${posName} (${res.nPositive} positive) vs ${negName} (${res.nNegative} negative); ` +
      `${res.computed} prompts through the model, ${res.cached} from the cache`,
  ];
  if (c.atThreshold) {
    lines.push(
      `at the calibrated threshold ${formatNumber(c.atThreshold.threshold)}: TPR ${pct(c.atThreshold.tpr)}, FPR ${pct(c.atThreshold.fpr)}`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// concept calibrate

const CALIBRATE_SPEC = {
  name: 'concept calibrate',
  summary: 'set a monitor threshold on benign prompts for a target false-positive rate',
  description: para(
    'Scores every prompt of --negative (benign) with the concept (mean probe logit over the layers above ' +
      '--p1, or --layers) and stores, in a copy of the concept, the threshold that flags at most ' +
      '--target-fpr of them. With --positive it also reports the true-positive rate there.',
  ),
  options: {
    concept: CONCEPT_OPTION,
    model: MODEL_OPTION,
    negative: {
      type: 'string',
      required: true,
      placeholder: 'set',
      description: 'benign calibration prompts',
    },
    positive: {
      type: 'string',
      placeholder: 'set',
      description: 'harmful prompts, to report the true-positive rate',
    },
    targetFpr: {
      type: 'number',
      min: 0,
      max: 0.999,
      default: 0.05,
      description: 'largest share of benign prompts to flag',
    },
    out: {
      type: 'string',
      short: 'o',
      required: true,
      placeholder: 'file',
      description: 'concept file to write (may be --concept)',
    },
    ...CONCEPT_SET_OPTIONS,
    ...PART_OPTIONS,
    ...SCORING_OPTIONS,
    ...CACHE_OPTIONS,
    overwrite: { type: 'boolean', description: 'replace an existing --out file (other than --concept)' },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard concept calibrate -c harmful.concept.safetensors -m model.gguf --negative alpaca:val --limit 300 --target-fpr 0.05 -o harmful.concept.safetensors',
    'steerguard concept calibrate -c c.safetensors -m model.gguf --negative xstest-safe --positive xstest-unsafe --layers 12 -o c12.safetensors',
  ],
} as const satisfies CommandSpec;

const calibrateCommand = command(CALIBRATE_SPEC, async (args, out) => {
  const o = args.options;
  const cacheDir = cacheSetting(o);
  if (o.out !== o.concept) checkOutPath(o.out, o.overwrite);
  const { Concept } = await import('../../concepts/concept.js');
  const { calibrate } = await import('../../concepts/monitor.js');
  const peek = Concept.load(o.concept);
  const setOpts = { dataDir: o.dataDir, column: o.column, limit: o.limit, tokenIds: o.tokenIds };
  let neg = await partOf(loadExamples(o.negative, setOpts), o, peek);
  let pos = o.positive !== undefined ? await partOf(loadExamples(o.positive, setOpts), o, peek) : undefined;
  if (o.dropOverlap) {
    [neg] = dropFitted([neg], peek, out);
    if (pos) [pos] = dropFitted([pos], peek, out);
  }
  const model = await loadModel(o.model, out, { threads: o.threads });
  const concept = Concept.load(o.concept, model);
  checkTokenIds(model, [neg, ...(pos ? [pos] : [])]);
  const progress = cliReporter(out).progress('activations', 'prompts');
  const calibrated = await withLeakageHint(() =>
    calibrate(concept, model, neg.examples, o.targetFpr, {
      layers: o.layers,
      p1: o.p1,
      positives: pos?.examples,
      setName: neg.name,
      allowOverlap: o.allowOverlap,
      cacheDir,
      batchTokens: o.batchTokens,
      onProgress: progress.update,
    }),
  );
  progress.finish();
  calibrated.save(o.out);
  const t = calibrated.threshold!;
  out.result(
    { path: o.out, threshold: { ...t, ids: undefined, calibrationPrompts: t.ids.length } },
    `threshold ${formatNumber(t.value)} (mean logit over layers ${t.layers.join(',')}): ${pct(t.achievedFpr)} of ${t.n} ` +
      `${t.calibrationSet} prompts flagged (target ${t.targetFpr})` +
      (t.achievedTpr !== null && pos ? `, ${pct(t.achievedTpr)} of ${pos.name} flagged` : '') +
      `\nwrote ${o.out}`,
  );
});

// ---------------------------------------------------------------------------------------------
// concept show

const SHOW_SPEC = {
  name: 'concept show',
  summary: 'print the per-layer metrics and provenance of a concept file (no model needed)',
  options: {
    concept: CONCEPT_OPTION,
    svg: {
      type: 'string',
      placeholder: 'file.svg',
      description: 'write the per-layer accuracy curve as SVG',
    },
    overwrite: { type: 'boolean', description: 'replace an existing --svg file' },
  },
  examples: [
    'steerguard concept show -c harmful.concept.safetensors',
    'steerguard concept show -c harmful.concept.safetensors --svg curve.svg --json',
  ],
} as const satisfies CommandSpec;

const showCommand = command(SHOW_SPEC, async (args, out) => {
  const o = args.options;
  if (o.svg !== undefined) checkOutPath(o.svg, o.overwrite);
  const { Concept } = await import('../../concepts/concept.js');
  const concept = Concept.load(o.concept);
  if (o.svg !== undefined) {
    const { conceptAccuracySvg } = await import('../../concepts/plot.js');
    writeFileSync(
      o.svg,
      conceptAccuracySvg(concept.layers, { title: `${concept.name} on ${basename(concept.model.path)}` }),
    );
  }
  out.result(concept.summary(), () => {
    const t = concept.threshold;
    return [
      `${concept.name}: ${concept.model.name} (${concept.model.arch}, ${concept.model.nLayers} layers, d_model ${concept.model.dModel}, fingerprint ${concept.model.fingerprint.slice(0, 12)})`,
      describeData(concept),
      `probe: logistic regression C=${concept.probe.C}${concept.probe.standardize ? ', standardised' : ''}; template ${concept.template}; best layer ${concept.bestLayer()}`,
      t
        ? `threshold ${formatNumber(t.value)} over layers ${t.layers.join(',')}: FPR ${pct(t.achievedFpr)} on ${t.n} ${t.calibrationSet} prompts (target ${t.targetFpr})`
        : 'no monitor threshold (run concept calibrate)',
      '',
      formatConceptTable(concept).trimEnd(),
    ].join('\n');
  });
});

// ---------------------------------------------------------------------------------------------
// The `concept` command: one word, four actions

const ACTIONS: Readonly<Record<string, CliCommand>> = {
  train: trainCommand,
  eval: evalCommand,
  calibrate: calibrateCommand,
  show: showCommand,
  generalize: generalizeCommand,
  'token-monitor': tokenMonitorCommand,
};

export const conceptCommand: CliCommand = actionGroup({
  name: 'concept',
  summary: 'safety concepts: train per-layer probes, evaluate, calibrate a monitor threshold, show',
  description: para(
    "Actions: 'train' fits a concept from a positive and a negative prompt set; 'eval' measures a saved concept " +
      "on labelled sets (refusing prompts it was fitted on); 'calibrate' stores a monitor threshold for a target " +
      "false-positive rate; 'show' prints a concept file; 'generalize' measures readings on held-out sources; 'token-monitor' reads one along generated replies. Run 'steerguard concept <action> --help' for the " +
      'options of one action; all of them are listed below.',
  ),
  actions: ACTIONS,
  examples: [
    ...TRAIN_SPEC.examples.slice(0, 1),
    ...EVAL_SPEC.examples.slice(0, 1),
    ...CALIBRATE_SPEC.examples.slice(0, 1),
    SHOW_SPEC.examples[0],
  ],
});

// ---------------------------------------------------------------------------------------------
// bench-probes (hidden): how long extraction and the probe fits take

export const benchProbesCommand = command(
  {
    name: 'bench-probes',
    summary: 'time activation extraction and the per-layer probe fits of concept train',
    description: para(
      'With --model: extracts last-token activations of the two sets (through the cache unless --no-cache) ' +
        'and fits all layers on the train split, printing both timings. With --synthetic: fits --layers ' +
        'random [N, D] problems (no model, no data) to time the solver alone.',
    ),
    options: {
      model: {
        type: 'string',
        short: 'm',
        placeholder: 'model',
        description: 'model (omit with --synthetic)',
      },
      positive: { type: 'string', default: 'advbench', placeholder: 'set', description: 'positive set' },
      negative: { type: 'string', default: 'alpaca', placeholder: 'set', description: 'negative set' },
      ...CONCEPT_SET_OPTIONS,
      split: {
        type: 'string',
        placeholder: 'train,val,test',
        default: '0.7,0.1,0.2',
        description: 'split fractions',
      },
      seed: { type: 'number', integer: true, default: 0, description: 'seed of the split' },
      ...CHAT_OPTIONS,
      ...CACHE_OPTIONS,
      synthetic: { type: 'boolean', description: 'time the solver on random data instead' },
      n: {
        type: 'number',
        integer: true,
        min: 2,
        default: 280,
        description: '--synthetic: examples per layer',
      },
      d: { type: 'number', integer: true, min: 1, default: 576, description: '--synthetic: features' },
      syntheticLayers: {
        type: 'number',
        integer: true,
        min: 1,
        default: 30,
        description: '--synthetic: layers',
      },
      noEngine: {
        type: 'boolean',
        description: "compute Gram matrices in JavaScript instead of the engine's Float32 matmul",
      },
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard bench-probes -m .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --positive advbench --negative alpaca --limit 200',
      'steerguard bench-probes --synthetic --n 280 --d 576 --synthetic-layers 30',
    ],
  },
  async (args, out) => {
    const o = args.options;
    const { fitLayers, trainConcept } = await import('../../concepts/concept.js');
    if (o.synthetic) {
      const { loadNativeBackend } = await import('../../engine/native.js');
      const be = o.noEngine ? undefined : loadNativeBackend({ threads: o.threads });
      const matmul = be ? (...a: Parameters<typeof be.matmul>) => be.matmul(...a) : undefined;
      const data = syntheticLayers(o.n, o.d, o.syntheticLayers);
      const splits = Array.from({ length: o.n }, () => 'train' as const);
      const labels = Array.from({ length: o.n }, (_, i) => (i % 2) as 0 | 1);
      const t = performance.now();
      const cpu0 = process.cpuUsage();
      const layers = fitLayers({ layers: data.map((_, l) => l), n: o.n, d: o.d, data }, splits, labels, {
        matmul,
      });
      const fitSeconds = (performance.now() - t) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const fitCpuSeconds = (cpu.user + cpu.system) / 1e6;
      const result = {
        synthetic: { n: o.n, d: o.d, layers: o.syntheticLayers },
        engine: be?.name ?? 'javascript',
        fitSeconds,
        fitCpuSeconds,
        newtonIterations: layers.map((p) => p.fit.iterations),
        maxGradNorm: Math.max(...layers.map((p) => p.fit.gradNorm)),
        converged: layers.every((p) => p.fit.converged),
      };
      out.result(
        result,
        () =>
          `probe fits, ${o.syntheticLayers} layers of [${o.n}, ${o.d}] (${result.engine}): ${fitSeconds.toFixed(3)}s wall, ${fitCpuSeconds.toFixed(3)}s CPU; max |gradient| ${result.maxGradNorm.toExponential(1)}`,
      );
      return;
    }
    if (o.model === undefined) throw new OptionError('--model is required unless --synthetic');
    const { parseSplit } = await import('../../data/splits.js');
    const split = parseSplit(o.split);
    const setOpts = { dataDir: o.dataDir, column: o.column, limit: o.limit, tokenIds: o.tokenIds };
    const pos = loadExamples(o.positive, setOpts);
    const neg = loadExamples(o.negative, setOpts);
    const model = await loadModel(o.model, out, { threads: o.threads });
    const chat = o.tokenIds ? false : useChat(model, o);
    const progress = cliReporter(out).progress('activations', 'prompts');
    const { concept, report } = await trainConcept({
      model,
      positive: pos.examples,
      negative: neg.examples,
      sets: { positive: pos.name, negative: neg.name },
      template: chat ? 'chat' : 'raw',
      split,
      seed: o.seed,
      cacheDir: cacheSetting(o),
      batchTokens: o.batchTokens,
      onProgress: progress.update,
      useEngine: !o.noEngine,
    });
    progress.finish();
    const counts = report.counts;
    const result = {
      model: model.identity.name,
      layers: concept.layers.length,
      train: counts.train,
      computed: report.computed,
      cached: report.cached,
      extractSeconds: report.extractSeconds,
      forwardSeconds: report.forwardSeconds,
      fitSeconds: report.fitSeconds,
      fitCpuSeconds: report.fitCpuSeconds,
      gram: o.noEngine ? 'javascript' : 'engine matmul (float32), float64 gradients',
      newtonIterations: concept.layers.map((p) => p.fit.iterations),
      maxGradNorm: Math.max(...concept.layers.map((p) => p.fit.gradNorm)),
    };
    out.result(result, () =>
      [
        `activation extraction: ${report.extractSeconds.toFixed(2)}s (${report.computed} prompts through the model in ${report.forwardSeconds.toFixed(2)}s, ${report.cached} from the cache)`,
        `probe fits: ${report.fitSeconds.toFixed(3)}s wall, ${report.fitCpuSeconds.toFixed(3)}s CPU for ${concept.layers.length} layers on ${counts.train.positive}+${counts.train.negative} train prompts ` +
          `(Newton iterations ${Math.min(...result.newtonIterations)}–${Math.max(...result.newtonIterations)}, max |gradient| ${result.maxGradNorm.toExponential(1)})`,
      ].join('\n'),
    );
  },
  { hidden: true },
);

/** Deterministic random layers: two Gaussian classes with a few large-variance features. */
function syntheticLayers(n: number, d: number, count: number): Float32Array[] {
  let s = 12345;
  const rand = (): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (s + 0.5) / 2147483648;
  };
  const gauss = (): number => Math.sqrt(-2 * Math.log(rand())) * Math.cos(2 * Math.PI * rand());
  const dir = Array.from({ length: d }, gauss);
  return Array.from({ length: count }, (_, l) => {
    const m = new Float32Array(n * d);
    for (let i = 0; i < n; i++) {
      const y = i % 2 === 1 ? 1 : -1;
      for (let j = 0; j < d; j++) m[i * d + j] = (j < 4 ? 30 : 1) * gauss() + 0.05 * (l + 1) * y * dir[j];
    }
    return m;
  });
}
