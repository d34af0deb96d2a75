/**
 * `steerguard direction`: compute the refusal direction (Arditi et al.) and save it as a
 * llama.cpp control vector; `steerguard control-vector`: inspect, check and rewrite control
 * vectors made by llama.cpp, repeng or steerguard.
 *
 * Prompt texts are never printed; the direction file stores the ids of the prompts it was fitted
 * on (content hashes, not texts) so that evaluations can refuse to score on them.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { GgufValue } from '../../formats/gguf.js';
import type { SetPrompt } from '../../data/datasets.js';
import type { Model, Prompt } from '../../model/model.js';
import type { ControlVector } from '../../steering/control-vector.js';
import type { RefusalDirectionResult } from '../../steering/refusal-direction.js';
import { type CliOutput, formatNumber, formatTable } from '../output.js';
import { Progress } from '../progress.js';
import { fittedIdsOf } from '../../eval/steering.js';
import {
  CHAT_OPTIONS,
  COLUMN_OPTION,
  DATA_DIR_OPTION,
  SPLIT_OPTIONS,
  THREADS_OPTION,
  checkOutPath,
  command,
  loadModel,
  para,
  useChat,
} from './common.js';

/** Prompt ids of a fit, kept in the artefact (ids only: hashes of the normalised text). */
const FITTED_IDS_KEY = 'steerguard.fitted_ids';

/** Defaults of `direction compute`, also used when `attack` computes a direction itself. */
export const DIRECTION_DEFAULTS = {
  harmful: 'advbench',
  harmless: 'alpaca',
  nTrain: 128,
  nVal: 32,
  kl: 0.1,
  prune: 0.2,
  induce: 0,
  maxExamined: 32,
  noFilter: false,
  fullReport: false,
} as const;

export const directionCommand = command(
  {
    name: 'direction',
    summary: 'compute the refusal direction of a chat model (or show a direction file)',
    description: para(
      'direction compute: r = mean(harmful) − mean(harmless) of the residual stream at each block input and ' +
        'each post-instruction template position; chooses, among candidates outside the last 20% of layers ' +
        'whose ablation keeps KL on harmless prompts <= 0.1 and whose addition induces refusal, the one whose ' +
        'ablation lowers the refusal score of harmful prompts most (Arditi et al. 2024). Train and validation ' +
        'prompts come from the seeded split (--split, --seed) of --harmful and --harmless; evaluate on the ' +
        "test part. The file is a llama.cpp control vector (r at block l's input = direction.{l-1}) with the " +
        'scores and the fitted prompt ids as metadata. direction info FILE prints what a file holds.',
    ),
    positionals: [
      { name: 'action', description: "'compute' or 'info'" },
      { name: 'file', description: 'direction file (info)', required: false },
    ],
    options: {
      model: {
        type: 'string',
        short: 'm',
        placeholder: 'model',
        description: '.gguf file, HF folder or cached repo id (compute)',
      },
      out: {
        type: 'string',
        short: 'o',
        placeholder: 'file.gguf',
        description: 'where to write the direction (compute)',
      },
      report: {
        type: 'string',
        placeholder: 'file.json',
        description: 'also write every candidate and its scores as JSON',
      },
      harmful: {
        type: 'string',
        default: DIRECTION_DEFAULTS.harmful,
        placeholder: 'set',
        description: 'harmful prompt set (name or file)',
      },
      harmless: {
        type: 'string',
        default: DIRECTION_DEFAULTS.harmless,
        placeholder: 'set',
        description: 'harmless prompt set (name or file)',
      },
      column: COLUMN_OPTION,
      dataDir: DATA_DIR_OPTION,
      ...SPLIT_OPTIONS,
      nTrain: {
        type: 'number',
        integer: true,
        min: 2,
        default: DIRECTION_DEFAULTS.nTrain,
        description: 'training prompts per side',
      },
      nVal: {
        type: 'number',
        integer: true,
        min: 2,
        default: DIRECTION_DEFAULTS.nVal,
        description: 'validation prompts per side',
      },
      layers: {
        type: 'list',
        of: 'number',
        integer: true,
        min: 1,
        description: 'candidate layers (block inputs; default all from 1)',
      },
      positions: {
        type: 'list',
        of: 'number',
        integer: true,
        max: -1,
        description:
          'candidate positions, negative from the end (default: the template tokens after the request)',
      },
      kl: {
        type: 'number',
        min: 0,
        default: 0.1,
        description: 'largest KL on harmless prompts under ablation',
      },
      prune: {
        type: 'number',
        min: 0,
        max: 1,
        default: 0.2,
        description: 'leave out this fraction of last layers',
      },
      induce: {
        type: 'number',
        default: DIRECTION_DEFAULTS.induce,
        description: 'least refusal score that adding r must give harmless prompts (paper: 0)',
      },
      maxExamined: {
        type: 'number',
        integer: true,
        min: 1,
        default: DIRECTION_DEFAULTS.maxExamined,
        description: 'candidates to examine for KL and induction before falling back',
      },
      noFilter: {
        type: 'boolean',
        description: 'keep prompts the model does not refuse (harmful) or does refuse (harmless)',
      },
      fullReport: {
        type: 'boolean',
        description: 'score every candidate, not only until the winner is known (slower)',
      },
      ...CHAT_OPTIONS,
      overwrite: { type: 'boolean', description: 'replace existing output files' },
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard direction compute -m smollm2.gguf --out refusal.gguf --report refusal.json',
      'steerguard direction compute -m smollm2.gguf --n-train 64 --n-val 16 --positions -1,-2 --out r.gguf',
      'steerguard direction info refusal.gguf',
    ],
  },
  async (args, out) => {
    const [action, file] = args.positionals;
    const o = args.options;
    if (action === 'info') {
      if (file === undefined) throw new OptionError('direction info needs a FILE');
      const { ControlVector } = await import('../../steering/control-vector.js');
      const cv = ControlVector.load(file);
      const info = describeVector(cv, file);
      out.result(info, formatVectorInfo);
      return;
    }
    if (action !== 'compute')
      throw new OptionError(`unknown action '${action.slice(0, 40)}'; use compute or info`);
    if (file !== undefined) throw new OptionError('direction compute takes no FILE; use --out');
    if (o.model === undefined) throw new OptionError('direction compute needs --model');
    if (o.out === undefined) throw new OptionError('direction compute needs --out FILE.gguf');
    checkOutPath(o.out, o.overwrite);
    checkOutPath(o.report, o.overwrite);

    const sets = await loadDirectionSets(o);
    const model = await loadModel(o.model, out, { threads: o.threads });
    const report = await computeDirectionFile(model, sets, { ...o, out: o.out }, out);
    out.result(report, formatDirectionReport);
  },
);

export interface DirectionComputeOptions {
  out: string;
  report?: string;
  harmful: string;
  harmless: string;
  column?: string;
  dataDir?: string;
  split: string;
  seed: number;
  nTrain: number;
  nVal: number;
  layers?: number[];
  positions?: number[];
  kl: number;
  prune: number;
  induce: number;
  maxExamined: number;
  noFilter: boolean;
  fullReport: boolean;
  chat: boolean;
  noChat: boolean;
}

export interface DirectionSets {
  readonly harmful: { name: string; train: SetPrompt[]; val: SetPrompt[] };
  readonly harmless: { name: string; train: SetPrompt[]; val: SetPrompt[] };
}

/** Train and validation prompts of both sides, from the seeded split (no model needed). */
export async function loadDirectionSets(
  o: Pick<
    DirectionComputeOptions,
    'harmful' | 'harmless' | 'column' | 'dataDir' | 'split' | 'seed' | 'nTrain' | 'nVal'
  >,
): Promise<DirectionSets> {
  const { loadPromptSet } = await import('../../data/datasets.js');
  const { parseSplit, splitItems } = await import('../../data/splits.js');
  const fractions = parseSplit(o.split);
  if (fractions.val <= 0) throw new OptionError('--split needs a validation fraction above 0');
  const parts = (spec: string) => {
    const set = loadPromptSet(spec, { dataDir: o.dataDir, column: o.column });
    const s = splitItems(set.prompts, { seed: o.seed, fractions });
    const train = s.train.slice(0, o.nTrain);
    const val = s.val.slice(0, o.nVal);
    if (train.length < 2 || val.length < 2)
      throw new OptionError(
        `${set.name}: too few prompts for a train and a validation part (${train.length}, ${val.length})`,
      );
    return { name: set.name, train, val };
  };
  return { harmful: parts(o.harmful), harmless: parts(o.harmless) };
}

/** Computes the refusal direction and writes it (and the JSON report, if asked); returns the report. */
export async function computeDirectionFile(
  model: Model,
  sets: DirectionSets,
  o: DirectionComputeOptions,
  out: CliOutput,
) {
  const { harmful, harmless } = sets;
  const chat = useChat(model, o);
  if (!chat) out.warn('no chat template: the candidates are read at the last token of the raw text');
  const wrap = (t: string): Prompt => (chat ? { messages: [{ role: 'user', content: t }] } : t);
  const { computeRefusalDirection, refusalDirectionToControlVector } =
    await import('../../steering/refusal-direction.js');
  let progress: Progress | undefined;
  let stage = '';
  const start = performance.now();
  const result = computeRefusalDirection(model, {
    harmful: { train: harmful.train.map((p) => wrap(p.text)), val: harmful.val.map((p) => wrap(p.text)) },
    harmless: { train: harmless.train.map((p) => wrap(p.text)), val: harmless.val.map((p) => wrap(p.text)) },
    layers: o.layers,
    positions: o.positions ?? (chat ? undefined : [-1]),
    klThreshold: o.kl,
    pruneLayerFraction: o.prune,
    filterPrompts: !o.noFilter,
    fullReport: o.fullReport,
    inductionThreshold: o.induce,
    maxExamined: o.maxExamined,
    onProgress: (s, done, total) => {
      if (s !== stage) {
        progress?.finish();
        stage = s;
        progress = new Progress({
          total,
          label: `direction: ${s}`,
          unit: s === 'activations' ? 'sets' : 'candidates',
          json: out.json,
          stream: out.stderr,
        });
      }
      progress!.update(done);
    },
  });
  progress?.finish();
  const seconds = (performance.now() - start) / 1000;

  const cv = refusalDirectionToControlVector(result, {
    arch: model.config.arch,
    fingerprint: model.identity.fingerprint,
  });
  const fitted = [...harmful.train, ...harmful.val, ...harmless.train, ...harmless.val].map((p) => p.id);
  const meta = new Map<string, GgufValue>(cv.metadata);
  meta.set(FITTED_IDS_KEY, fitted);
  meta.set('steerguard.refusal_direction.sets', [harmful.name, harmless.name]);
  meta.set('steerguard.refusal_direction.split', `${o.split}@${o.seed}`);
  const { ControlVector } = await import('../../steering/control-vector.js');
  const withMeta = new ControlVector(cv.directions, { modelHint: cv.modelHint, metadata: meta });
  withMeta.save(o.out);
  const report = directionReport(result, model, {
    harmful: harmful.name,
    harmless: harmless.name,
    seconds,
    out: o.out,
  });
  if (o.report !== undefined) writeFileSync(o.report, `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

/** The JSON document of a computed direction: the winner, baseline scores and every candidate. */
function directionReport(
  r: RefusalDirectionResult,
  model: Model,
  extra: { harmful: string; harmless: string; seconds: number; out: string },
) {
  const chosen = r.candidates.find((c) => c.layer === r.layer && c.position === r.position)!;
  return {
    out: extra.out,
    model: path.basename(model.identity.path),
    sets: { harmful: extra.harmful, harmless: extra.harmless },
    chosen: {
      layer: r.layer,
      position: r.position,
      controlVectorLayer: r.layer - 1,
      norm: chosen.norm,
      refusalScore: chosen.refusalScore,
      steeringScore: chosen.steeringScore,
      kl: chosen.kl,
      selectedBy: r.selectedBy,
    },
    baseline: r.baseline,
    counts: r.counts,
    examined: r.examined,
    positions: r.positions,
    refusalTokens: r.refusalTokens,
    candidates: r.candidates,
    seconds: extra.seconds,
  };
}

const num = (x: number | null | undefined) => (x === null || x === undefined ? '-' : formatNumber(x));

function formatDirectionReport(rep: ReturnType<typeof directionReport>): string {
  const c = rep.chosen;
  const best = [...rep.candidates]
    .filter((x) => x.refusalScore !== null)
    .sort((a, b) => a.refusalScore! - b.refusalScore!)
    .slice(0, 10);
  const table = formatTable(
    ['layer', 'pos', '|r|', 'ablated refusal', 'added refusal', 'KL', 'discarded'],
    best.map((x) => [
      x.layer,
      x.position,
      num(x.norm),
      num(x.refusalScore),
      num(x.steeringScore),
      num(x.kl),
      x.discarded.join(','),
    ]),
    [true, true, true, true, true, true, false],
  );
  return (
    `wrote ${rep.out}: refusal direction at the input of block ${c.layer}, position ${c.position} ` +
    `(control vector direction.${c.controlVectorLayer}), chosen by ${c.selectedBy}\n` +
    `refusal score: baseline harmful ${num(rep.baseline.harmfulRefusalScore)}, with ablation ${num(c.refusalScore)}; ` +
    `baseline harmless ${num(rep.baseline.harmlessRefusalScore)}, with addition ${num(c.steeringScore)}; KL ${num(c.kl)}\n` +
    `prompts: ${rep.counts.harmfulTrain}+${rep.counts.harmlessTrain} train, ${rep.counts.harmfulVal}+${rep.counts.harmlessVal} validation; ` +
    `${rep.candidates.length} candidates; ${rep.seconds.toFixed(1)}s\n\nbest candidates by ablated refusal score:\n${table}` +
    (c.selectedBy === 'fallback'
      ? '\nwarning: no candidate passed every filter; the best remaining one was kept (see the report).'
      : '')
  );
}

// ---------------------------------------------------------------------------------------------
// control-vector

function describeVector(cv: ControlVector, file: string) {
  const norms = cv.layers.map((l) => {
    let s = 0;
    for (const x of cv.direction(l)) s += x * x;
    return { layer: l, norm: Math.sqrt(s) };
  });
  const meta: Record<string, unknown> = {};
  for (const [k, v] of cv.metadata) if (k !== FITTED_IDS_KEY) meta[k] = v;
  return {
    file,
    modelHint: cv.modelHint,
    dModel: cv.dModel,
    layers: cv.layers,
    norms,
    fittedPrompts: fittedIdsOf(cv.metadata).length,
    metadata: meta,
  };
}

function formatVectorInfo(i: ReturnType<typeof describeVector>): string {
  const lines = [
    `${i.file}: control vector for '${i.modelHint || '?'}', d_model ${i.dModel}, ${i.layers.length} layer(s)`,
    `added at the output of block(s) ${i.layers.join(', ')} (llama.cpp direction.L = steerguard blocks.L.hook_resid_post)`,
  ];
  if (i.fittedPrompts > 0)
    lines.push(`fitted on ${i.fittedPrompts} prompts (ids stored for the leakage guard)`);
  for (const [k, v] of Object.entries(i.metadata))
    lines.push(`${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
  lines.push(
    formatTable(
      ['layer', 'norm'],
      i.norms.map((n) => [n.layer, formatNumber(n.norm)]),
      [true, true],
    ),
  );
  return lines.join('\n');
}

export const controlVectorCommand = command(
  {
    name: 'control-vector',
    summary: 'inspect, check or rewrite a llama.cpp / repeng control vector',
    description: para(
      'control-vector info FILE [-m MODEL]: layers, norms and metadata, and whether it fits the model. ' +
        'control-vector convert FILE --out OUT [--scale C] [--layers ...]: writes a scaled, negated (--scale -1) or ' +
        'layer-restricted copy, readable by llama.cpp (--control-vector) and repeng (ControlVector.import_gguf). ' +
        'Layer convention: direction.L is added to the output of block L (0-based), i.e. blocks.L.hook_resid_post; ' +
        'llama.cpp never applies a direction to block 0.',
    ),
    positionals: [
      { name: 'action', description: "'info' or 'convert'" },
      { name: 'file', description: 'control vector GGUF' },
    ],
    options: {
      model: {
        type: 'string',
        short: 'm',
        placeholder: 'model',
        description: 'check the vector against this model (info)',
      },
      out: { type: 'string', short: 'o', placeholder: 'file.gguf', description: 'output file (convert)' },
      scale: { type: 'number', default: 1, description: 'multiply every direction (convert)' },
      layers: {
        type: 'list',
        of: 'number',
        integer: true,
        min: 1,
        description: 'keep only these layers (convert)',
      },
      forgetModel: {
        type: 'boolean',
        description:
          'drop the record of the model the vector was computed on, so it can be used on another one on purpose (convert)',
      },
      overwrite: { type: 'boolean', description: 'replace an existing output file' },
      threads: THREADS_OPTION,
    },
    examples: [
      'steerguard control-vector info happy.gguf -m mistral.gguf',
      'steerguard control-vector convert refusal.gguf --scale -1 --out no-refusal.gguf',
      'steerguard control-vector convert repeng.gguf --layers 10,11,12 --out mid.gguf',
      'steerguard control-vector convert refusal.gguf --forget-model --out refusal-any-model.gguf',
    ],
  },
  async (args, out) => {
    const [action, file] = args.positionals;
    const o = args.options;
    const { ControlVector } = await import('../../steering/control-vector.js');
    if (action === 'info') {
      const cv = ControlVector.load(file);
      const info = describeVector(cv, file);
      let fits: string | null = null;
      if (o.model !== undefined) {
        const model = await loadModel(o.model, out, { threads: o.threads });
        cv.checkModel(model.config, { identity: model.identity, file });
        fits = model.config.arch;
        if (cv.modelHint && cv.modelHint !== model.config.arch)
          out.warn(
            `the vector was made for '${cv.modelHint}', the model is '${model.config.arch}' (the shapes fit)`,
          );
      }
      out.result(
        { ...info, fitsModel: fits !== null ? true : null },
        (i) => formatVectorInfo(i) + (fits !== null ? `\nfits ${path.basename(o.model!)}` : ''),
      );
      return;
    }
    if (action !== 'convert')
      throw new OptionError(`unknown action '${action.slice(0, 40)}'; use info or convert`);
    if (o.out === undefined) throw new OptionError('control-vector convert needs --out FILE.gguf');
    checkOutPath(o.out, o.overwrite);
    let cv = ControlVector.load(file);
    if (o.layers !== undefined) cv = cv.restrict(o.layers);
    if (o.scale !== 1) cv = cv.scale(o.scale);
    if (o.forgetModel) cv = cv.forgetModel();
    cv.save(o.out);
    out.result(describeVector(cv, o.out), (i) => `wrote ${o.out}\n${formatVectorInfo(i)}`);
  },
);
