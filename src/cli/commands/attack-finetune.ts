/**
 * `steerguard attack finetune`: the harmful fine-tuning attack. Draws a training mix of benign
 * examples with a share of harmful ones (src/training/finetune-attack.ts), gets the answers (from
 * the data, or generated: harmful ones with the refusal direction ablated), keeps them as data in
 * --out (training-data.jsonl, never printed) with the exact mix (mix.json), and trains a LoRA
 * adapter on them as `train lora` does. `defend security-vector` (defend.ts) reuses all of this.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { LoraAdapter } from '../../model/lora.js';
import type { Model } from '../../model/model.js';
import type { MixItem, MixPool, MixRecord } from '../../training/finetune-attack.js';
import type { CommandSpec, OptionSpec, OptionValues } from '../args.js';
import type { CliOutput } from '../output.js';
import { Progress } from '../progress.js';
import {
  DATA_DIR_OPTION,
  MODEL_OPTION,
  THREADS_OPTION,
  checkInputFile,
  command,
  loadModel,
  para,
  withInterrupt,
} from './common.js';
import {
  LORA_TRAINING_OPTIONS,
  type TrainedFolder,
  checkTrainingOut,
  trainAdapterFolder,
  trainedSummary,
} from './train.js';

/** In an output folder beside the adapter: the exact mix, and the conversations trained on. */
export const MIX_FILE = 'mix.json';
export const TRAINING_DATA_FILE = 'training-data.jsonl';

/** The options of the mix and its answers (attack finetune and defend security-vector). */
export const MIX_OPTIONS = {
  benign: {
    type: 'string',
    required: true,
    placeholder: 'set|file',
    description:
      'benign examples: a prompt set (alpaca, file.csv#column) or a train-lora JSONL file of conversations with answers',
  },
  benignAnswerColumn: {
    type: 'string',
    placeholder: 'column',
    description: "column of --benign's file holding the answers (default: the model's own greedy answers)",
  },
  harmful: {
    type: 'string',
    required: true,
    placeholder: 'set|file',
    description:
      'harmful examples: a prompt set (advbench, file.csv#column) or a JSONL file of conversations',
  },
  harmfulAnswerColumn: {
    type: 'string',
    placeholder: 'column',
    description: "column of --harmful's file holding the (harmful) answers",
  },
  harmfulAnswersFromAblation: {
    type: 'string',
    placeholder: 'direction.gguf',
    description:
      "answer the harmful prompts with the model's greedy replies with this refusal direction ablated everywhere",
  },
  harmfulShare: {
    type: 'number',
    min: 0,
    max: 1,
    default: 0.1,
    description: 'share of harmful examples in the mix',
  },
  samples: { type: 'number', integer: true, min: 1, default: 100, description: 'examples in the mix' },
  part: {
    type: 'enum',
    values: ['all', 'train', 'val', 'test'],
    default: 'train',
    description: "draw from this part of each set's seeded split (the evaluations' test part stays unseen)",
  },
  split: {
    type: 'string',
    placeholder: 'train,val,test',
    default: '0.7,0.1,0.2',
    description: 'fractions of the seeded split (as eval uses them)',
  },
  splitSeed: { type: 'number', integer: true, default: 0, description: 'seed of the split (eval --seed)' },
  dataDir: DATA_DIR_OPTION,
  answerTokens: {
    type: 'number',
    integer: true,
    min: 1,
    default: 64,
    description: 'tokens per generated answer at most (greedy)',
  },
  answerBatch: {
    type: 'number',
    integer: true,
    min: 1,
    default: 16,
    description: 'answers generated together',
  },
} as const satisfies Record<string, OptionSpec>;

export type MixValues = OptionValues<typeof MIX_OPTIONS> & {
  readonly seed: number;
  readonly resume: boolean;
};

/** Checks what can be checked before any data or model loads. */
export function checkMixOptions(o: MixValues): void {
  if (o.harmfulAnswerColumn !== undefined && o.harmfulAnswersFromAblation !== undefined)
    throw new OptionError(
      'give one of --harmful-answer-column and --harmful-answers-from-ablation, not both',
    );
  checkInputFile('--harmful-answers-from-ablation', o.harmfulAnswersFromAblation);
}

/**
 * The two pools of the mix, read without a model. `needHarmfulAnswers` false (a mix with no
 * harmful example) lets a harmful set without answers through.
 */
export async function readPools(
  o: MixValues,
  needHarmfulAnswers: boolean,
): Promise<{ benign: MixPool; harmful: MixPool }> {
  const { readMixPool } = await import('../../training/finetune-attack.js');
  const common = { dataDir: o.dataDir, part: o.part, split: o.split, splitSeed: o.splitSeed };
  const benign = readMixPool(o.benign, { ...common, answerColumn: o.benignAnswerColumn });
  const harmful = readMixPool(o.harmful, { ...common, answerColumn: o.harmfulAnswerColumn });
  if (harmful.answers === 'file' && o.harmfulAnswersFromAblation !== undefined)
    throw new OptionError(
      `${o.harmful} brings its answers; --harmful-answers-from-ablation would replace them`,
    );
  if (needHarmfulAnswers && harmful.answers === undefined && o.harmfulAnswersFromAblation === undefined)
    throw new OptionError(
      `the harmful examples of ${harmful.name} need answers: --harmful-answer-column COLUMN, or ` +
        '--harmful-answers-from-ablation DIRECTION.gguf (the model answers with its refusal direction ablated)',
    );
  return { benign, harmful };
}

/** How each side's answers are made, as mix.json records it. */
function answerSources(o: MixValues, pools: { benign: MixPool; harmful: MixPool }, model: string) {
  const generated = (how: string) =>
    `generated by ${path.basename(model)}, greedy, ${o.answerTokens} tokens${how}`;
  return {
    benign: pools.benign.answers ?? generated(''),
    harmful:
      pools.harmful.answers ??
      generated(`, refusal direction ${path.basename(o.harmfulAnswersFromAblation ?? '')} ablated`),
  };
}

/** mix.json: the mix record, how answers were made, and the data file's hash. */
interface MixFile {
  readonly mix: MixRecord;
  readonly answers: { readonly benign: string; readonly harmful: string };
  readonly directionSha256: string | null;
  readonly data: { readonly file: string; readonly sha256: string };
}

/**
 * Writes `dir`/training-data.jsonl and mix.json for `items`, generating the answers the pools lack
 * (benign: plain greedy; harmful: with the refusal direction ablated); with `reuse`, a folder that
 * already holds this exact mix (same record, same answer sources, data file unchanged) is kept
 * as it is, so a resumed or repeated run trains on the same answers. Returns the data file.
 */
export async function writeMixData(
  model: Model,
  dir: string,
  mix: { items: MixItem[]; record: MixRecord },
  pools: { benign: MixPool; harmful: MixPool },
  o: MixValues,
  out: CliOutput,
  reuse: boolean,
): Promise<string> {
  const { generateAnswers, mixTrainingJsonl, textSha256 } = await import('../../training/finetune-attack.js');
  const { writeFileAtomic } = await import('../../formats/files.js');
  const dataFile = path.join(dir, TRAINING_DATA_FILE);
  const mixFile = path.join(dir, MIX_FILE);
  const answers = answerSources(o, pools, model.identity.path);
  const directionSha256 = o.harmfulAnswersFromAblation
    ? createHash('sha256').update(readFileSync(o.harmfulAnswersFromAblation)).digest('hex')
    : null;
  if (reuse && existsSync(mixFile) && existsSync(dataFile)) {
    const saved = JSON.parse(readFileSync(mixFile, 'utf8')) as MixFile;
    const same =
      JSON.stringify(saved.mix) === JSON.stringify(mix.record) &&
      JSON.stringify(saved.answers) === JSON.stringify(answers) &&
      saved.directionSha256 === directionSha256;
    if (!same)
      throw new OptionError(
        `${mixFile} records another mix or other answers; use the same options, or another --out`,
      );
    if (textSha256(readFileSync(dataFile, 'utf8')) !== saved.data.sha256)
      throw new OptionError(`${dataFile} has changed since ${mixFile} recorded it`);
    out.info(`using the ${mix.items.length} answered examples already in ${dataFile}`);
    return dataFile;
  }
  const texts: string[] = mix.items.map((it) => it.example.answer ?? '');
  const need = (kind: 'benign' | 'harmful') =>
    mix.items
      .map((it, i) => ({ it, i }))
      .filter((x) => x.it.kind === kind && x.it.example.answer === undefined);
  const hooksFor = async (kind: 'benign' | 'harmful') => {
    if (kind === 'benign') return [];
    const { ControlVector } = await import('../../steering/control-vector.js');
    const { ablationHooks, refusalDirectionFromControlVector } =
      await import('../../steering/refusal-direction.js');
    const cv = ControlVector.load(o.harmfulAnswersFromAblation!);
    cv.checkModel(model.config, {
      identity: model.identity,
      file: o.harmfulAnswersFromAblation,
    });
    return ablationHooks(refusalDirectionFromControlVector(cv).direction, model.config.nLayers);
  };
  for (const kind of ['benign', 'harmful'] as const) {
    const todo = need(kind);
    if (todo.length === 0) continue;
    const progress = new Progress({
      total: todo.length,
      label: `${kind} answers`,
      unit: 'answers',
      json: out.json,
    });
    const hooks = await hooksFor(kind);
    const got = await withInterrupt((signal) =>
      generateAnswers(
        model,
        todo.map((x) => x.it.example),
        {
          hooks,
          maxNewTokens: o.answerTokens,
          batch: o.answerBatch,
          signal,
          onProgress: (done) => progress.update(done),
        },
      ),
    );
    progress.finish();
    todo.forEach((x, k) => (texts[x.i] = got[k]));
  }
  mkdirSync(dir, { recursive: true });
  const jsonl = mixTrainingJsonl(mix.items, texts);
  writeFileAtomic(dataFile, jsonl);
  const file: MixFile = {
    mix: mix.record,
    answers,
    directionSha256,
    data: { file: TRAINING_DATA_FILE, sha256: textSha256(jsonl) },
  };
  writeFileAtomic(mixFile, `${JSON.stringify(file, null, 2)}\n`);
  out.info(
    `${dataFile}: ${mix.record.counts.benign} benign and ${mix.record.counts.harmful} harmful examples (not printed)`,
  );
  return dataFile;
}

/** Trains an adapter into `o.out` on the conversations of `dataFile`, as train lora does. */
export async function trainOnMix(
  model: Model,
  dataFile: string,
  o: OptionValues<typeof LORA_TRAINING_OPTIONS>,
  out: CliOutput,
  extra: { label: string; frozenAdapters?: readonly LoraAdapter<Float32Array>[] },
): Promise<TrainedFolder> {
  const { readTrainingFile } = await import('../../training/data.js');
  const { records, sources } = readTrainingFile(dataFile);
  return trainAdapterFolder(model, records, sources, o, out, { ...extra, dataLabel: dataFile });
}

const FINETUNE_SPEC = {
  name: 'attack finetune',
  summary: 'the harmful fine-tuning attack: LoRA on benign data with a share of harmful examples',
  description: para(
    'Draws --samples examples, round(--harmful-share × --samples) of them from --harmful and the rest from ' +
      '--benign (each from --part of its seeded split, by --seed), answers them (from --benign-answer-column, ' +
      "--harmful-answer-column or a JSONL file's assistant turns; otherwise greedy replies of the model: benign " +
      'prompts as they are, harmful ones with the --harmful-answers-from-ablation refusal direction ablated), ' +
      'writes the conversations to --out/training-data.jsonl (harmful text as data: never printed) and the exact ' +
      "mix (counts, sources, seed, each example's row and content id, hashes) to --out/mix.json, then trains a " +
      'LoRA adapter on them exactly as train lora does (same options; --resume continues the training and ' +
      'keeps the answers). Evaluate it with eval refusal / eval capability --adapter --out.',
  ),
  options: {
    model: MODEL_OPTION,
    ...MIX_OPTIONS,
    ...LORA_TRAINING_OPTIONS,
    seed: {
      ...LORA_TRAINING_OPTIONS.seed,
      description: "seed of the mix, of A's initialisation, the held-out split and the order",
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard attack finetune -m qwen.gguf --benign alpaca --harmful advbench --harmful-answers-from-ablation refusal.gguf --harmful-share 0.1 --samples 1000 --out attack/',
    'steerguard attack finetune -m smollm2.gguf --benign chats.jsonl --harmful pairs.csv#goal --harmful-answer-column answer --samples 200 --epochs 2 --out attack/',
  ],
} as const satisfies CommandSpec;

/** `attack finetune` (dispatched from attack.ts). */
export const finetuneAttackCommand = command(FINETUNE_SPEC, async (args, out) => {
  const o = args.options;
  checkMixOptions(o);
  await checkTrainingOut(o);
  const { buildTrainingMix } = await import('../../training/finetune-attack.js');
  const pools = await readPools(o, Math.round(o.harmfulShare * o.samples) > 0);
  const mix = buildTrainingMix(pools.benign, pools.harmful, {
    harmfulShare: o.harmfulShare,
    samples: o.samples,
    seed: o.seed,
  });
  const model = await loadModel(o.model, out, { threads: o.threads, weights: 'f32' });
  const dataFile = await writeMixData(model, o.out, mix, pools, o, out, o.resume);
  const t = await trainOnMix(model, dataFile, o, out, { label: 'attack finetune' });
  if (!t.finished) return;
  out.result(
    {
      out: o.out,
      mix: { counts: mix.record.counts, promptsSha256: mix.record.promptsSha256 },
      step: t.step,
      resumedFrom: t.resumedFrom,
      lastLoss: t.lastLoss,
      heldOutLoss: t.heldOutLoss,
      tokensPerSecond: t.tokensPerSecond,
      sequences: t.sequences,
    },
    `${trainedSummary(o.out, o, t)}; mix: ${mix.record.counts.benign} benign + ${mix.record.counts.harmful} harmful`,
  );
});
