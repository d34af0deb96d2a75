/**
 * `steerguard train lora`: LoRA fine-tuning from the command line, thin over src/training/train.ts.
 * Writes the adapter in PEFT's layout, a training log, and a checkpoint that `--resume` continues.
 * Training text is never printed.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { Model } from '../../model/model.js';
import type { LoraAdapter } from '../../model/lora.js';
import type { RecordSource, TrainingRecord } from '../../training/data.js';
import { type CommandSpec, type OptionSpec, type OptionValues } from '../args.js';
import type { CliOutput } from '../output.js';
import { formatNumber } from '../output.js';
import { Progress } from '../progress.js';
import {
  type CliCommand,
  MODEL_OPTION,
  THREADS_OPTION,
  actionGroup,
  command,
  loadModel,
  para,
  withInterrupt,
} from './common.js';

/** In --out beside the adapter. */
export const TRAINING_LOG_FILE = 'training-log.json';
export const TRAINING_CHECKPOINT_FILE = 'training-checkpoint.safetensors';

/** The training options of every command that trains an adapter (train lora, attack finetune, defend). */
export const LORA_TRAINING_OPTIONS = {
  targets: {
    type: 'list',
    placeholder: 'q,k,v,o,gate,up,down',
    default: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'],
    description: 'projections to adapt',
  },
  rank: { type: 'number', integer: true, min: 1, default: 8, description: 'LoRA rank r' },
  alpha: { type: 'number', default: 16, description: 'LoRA alpha (the update is scaled by alpha/r)' },
  epochs: { type: 'number', integer: true, min: 1, default: 1, description: 'passes over the data' },
  lr: { type: 'number', min: 1e-12, default: 1e-4, description: 'peak learning rate' },
  batch: {
    type: 'number',
    integer: true,
    min: 1,
    default: 1,
    description: 'sequences per forward/backward call',
  },
  gradAccum: { type: 'number', integer: true, min: 1, default: 1, description: 'calls per optimiser step' },
  warmup: { type: 'number', integer: true, min: 0, default: 0, description: 'steps of linear warm-up' },
  weightDecay: { type: 'number', min: 0, default: 0.01, description: "AdamW's decoupled weight decay" },
  valSplit: {
    type: 'number',
    min: 0,
    max: 0.99,
    default: 0,
    description: 'share of the sequences held out for the validation loss',
  },
  seed: {
    type: 'number',
    integer: true,
    default: 0,
    description: "seed of A's initialisation, the split and the order",
  },
  maxTokens: {
    type: 'number',
    integer: true,
    min: 2,
    description: 'cut each sequence to its first N tokens (one left with no answer token is dropped)',
  },
  checkpointEvery: { type: 'number', integer: true, min: 1, description: 'steps between checkpoints' },
  recompute: {
    type: 'boolean',
    description: "keep one block's activations at a time (less memory, one more forward pass)",
  },
  resume: { type: 'boolean', description: 'continue the run whose checkpoint is in --out' },
  out: {
    type: 'string',
    short: 'o',
    required: true,
    placeholder: 'dir',
    description: 'adapter folder to write',
  },
  overwrite: { type: 'boolean', description: 'replace a finished adapter in --out' },
} as const satisfies Record<string, OptionSpec>;

const LORA_SPEC = {
  name: 'train lora',
  summary: 'fine-tune a LoRA adapter on chat conversations (resumable; PEFT layout)',
  description: para(
    'Trains W + (alpha/r)·B·A on the --targets projections of every layer, the model frozen and loaded in ' +
      'fp32, with AdamW, a linear warm-up over --warmup steps and a cosine decay. --data is JSONL: ' +
      '{"messages": [{"role", "content"}, ...]} conversations, {"prompt", "response"} pairs, or ' +
      '{"tokens": [ids], "answer": [0|1, ...]}. Only the assistant\'s tokens are trained (each turn\'s content ' +
      "and end-of-turn token, found by rendering the model's chat template turn by turn). One optimiser step " +
      'takes --batch sequences per forward/backward call and --grad-accum calls; its loss is the mean over ' +
      'their answer tokens. --val-split holds out that share of the sequences; their loss is reported after ' +
      'every epoch. A checkpoint is written atomically to --out every --checkpoint-every steps (default: ' +
      'each epoch), at the end, and on Ctrl-C; --resume continues from it bit for bit. --out then holds ' +
      'adapter_config.json and adapter_model.safetensors (PEFT: transformers + peft load it) and training-log.json.',
  ),
  options: {
    model: MODEL_OPTION,
    data: { type: 'string', required: true, placeholder: 'file', description: 'training data (JSONL)' },
    ...LORA_TRAINING_OPTIONS,
    gguf: {
      type: 'string',
      placeholder: 'file',
      description: "also write the trained adapter as a llama.cpp GGUF LoRA file (for 'llama-cli --lora')",
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard train lora -m SmolLM2-135M-Instruct/ --data chats.jsonl --rank 8 --alpha 16 --epochs 2 --lr 2e-4 --out my-lora/',
    'steerguard train lora -m qwen.gguf --data pairs.jsonl --targets q,v --batch 4 --grad-accum 4 --warmup 10 --val-split 0.1 --out lora/',
    'steerguard train lora -m qwen.gguf --data pairs.jsonl --targets q,v --batch 4 --grad-accum 4 --warmup 10 --val-split 0.1 --out lora/ --resume',
    'steerguard train lora -m SmolLM2-135M-Instruct.Q4_1.gguf --data chats.jsonl --out my-lora/ --gguf my-lora.gguf',
  ],
} as const satisfies CommandSpec;

/** The parsed values of LORA_TRAINING_OPTIONS. */
export type LoraTrainingValues = OptionValues<typeof LORA_TRAINING_OPTIONS>;

/**
 * Refuses an --out that would be clobbered or a --resume with nothing to resume, before any model
 * loads or any data is generated.
 */
export async function checkTrainingOut(
  o: Pick<LoraTrainingValues, 'out' | 'resume' | 'overwrite'>,
): Promise<void> {
  const { PEFT_CONFIG_FILE } = await import('../../training/peft.js');
  const checkpoint = path.join(o.out, TRAINING_CHECKPOINT_FILE);
  if (!o.resume && existsSync(checkpoint))
    throw new OptionError(
      `${o.out} holds a training checkpoint; pass --resume to continue it, or remove it to start afresh`,
    );
  if (o.resume && !existsSync(checkpoint)) throw new OptionError(`--resume: ${checkpoint} does not exist`);
  if (!o.resume && existsSync(path.join(o.out, PEFT_CONFIG_FILE)) && !o.overwrite)
    throw new OptionError(`${o.out} holds an adapter; remove it or pass --overwrite`);
}

/** What `trainAdapterFolder` did. */
export interface TrainedFolder {
  readonly finished: boolean;
  readonly step: number;
  readonly resumedFrom: number | null;
  readonly lastLoss: number | null;
  readonly heldOutLoss: number | null;
  readonly tokensPerSecond: number | null;
  readonly sequences: { train: number; val: number; dropped: number; truncated: number };
}

/**
 * Tokenizes `records`, trains an adapter on them with the options of LORA_TRAINING_OPTIONS (with
 * `frozenAdapters` on and untouched), and writes --out: the checkpoint as it goes, the training
 * log, and (when the run finished) the adapter in PEFT's layout. Ctrl-C stops after the step and
 * sets exit code 130. `label` names the progress bar; `dataLabel` the data in errors and the log.
 */
export async function trainAdapterFolder(
  model: Model,
  records: readonly TrainingRecord[],
  sources: readonly RecordSource[],
  o: LoraTrainingValues,
  out: CliOutput,
  extra: {
    readonly label: string;
    readonly dataLabel: string;
    readonly frozenAdapters?: readonly LoraAdapter<Float32Array>[];
  },
): Promise<TrainedFolder> {
  const { trainingSequences } = await import('../../training/data.js');
  const { trainLora } = await import('../../training/train.js');
  const { backendKernels } = await import('../../training/kernels.js');
  const { savePeftAdapter } = await import('../../training/peft.js');
  const { writeFileAtomic } = await import('../../formats/files.js');
  const checkpoint = path.join(o.out, TRAINING_CHECKPOINT_FILE);
  const data = trainingSequences(records, sources, {
    tokenizer: () => model.tokenizer,
    maxTokens: o.maxTokens,
    vocabSize: model.config.vocabSize,
  });
  if (data.dropped > 0)
    out.warn(`${data.dropped} sequences have no answer token within --max-tokens; dropped`);
  if (data.sequences.length === 0)
    throw new OptionError(`${extra.dataLabel}: no sequence is left to train on`);
  const tooLong = data.sequences.findIndex((s) => s.tokens.length > model.config.maxContext);
  if (tooLong >= 0)
    throw new OptionError(
      `${extra.dataLabel}: a sequence has ${data.sequences[tooLong].tokens.length} tokens; the model's context is ` +
        `${model.config.maxContext} (use --max-tokens)`,
    );

  mkdirSync(o.out, { recursive: true });
  let progress: Progress | undefined;
  let stopRequested = false;
  const started = performance.now();
  // The training hyper-parameters, passed to the loop and recorded in the log as they were given.
  const hyper = {
    rank: o.rank,
    alpha: o.alpha,
    epochs: o.epochs,
    lr: o.lr,
    batch: o.batch,
    gradAccum: o.gradAccum,
    warmup: o.warmup,
    weightDecay: o.weightDecay,
    valSplit: o.valSplit,
    seed: o.seed,
  };
  const result = await withInterrupt(
    () =>
      trainLora(model.config, model.weights, backendKernels(model.backend), data.sequences, {
        targets: o.targets,
        ...hyper,
        recompute: o.recompute,
        checkpointFile: checkpoint,
        checkpointEvery: o.checkpointEvery,
        resume: o.resume,
        frozenAdapters: extra.frozenAdapters,
        stopAfterStep: () => stopRequested,
        onStep: (s) => {
          progress ??= new Progress({
            total: s.steps,
            initial: s.step - 1,
            label: extra.label,
            unit: 'steps',
            json: out.json,
          });
          progress.update(s.step);
          if (s.step === 1 || s.step % Math.max(1, Math.round(s.steps / 20)) === 0 || s.step === s.steps)
            progress.log(
              `step ${s.step}/${s.steps} (epoch ${s.epoch}): loss ${formatNumber(s.loss)}, lr ${s.lr.toExponential(2)}, ` +
                `${Math.round(s.tokens / s.seconds)} tokens/s`,
            );
        },
        onValidation: (v) =>
          progress?.log(
            `epoch ${v.epoch}: held-out loss ${formatNumber(v.loss)} (${v.answerTokens} answer tokens)`,
          ),
      }),
    () => {
      stopRequested = true;
      out.info('stopping after this step; rerun with --resume to continue');
    },
  );
  progress?.finish();
  if (result.resumedFrom !== undefined) out.info(`resumed from step ${result.resumedFrom}`);
  const steps = result.log.steps;
  const seconds = steps.reduce((a, s) => a + s.seconds, 0);
  const tokens = steps.reduce((a, s) => a + s.tokens, 0);
  const log = {
    model: model.identity.path,
    data: extra.dataLabel,
    options: {
      targets: result.adapter.targets,
      ...hyper,
      maxTokens: o.maxTokens ?? null,
    },
    sequences: {
      train: result.trainSequences,
      val: result.valSequences,
      dropped: data.dropped,
      truncated: data.truncated,
    },
    step: result.step,
    steps: result.steps,
    finished: result.finished,
    trainingSeconds: seconds,
    tokensPerSecond: seconds > 0 ? tokens / seconds : null,
    wallSecondsThisRun: (performance.now() - started) / 1000,
    log: result.log,
  };
  writeFileAtomic(path.join(o.out, TRAINING_LOG_FILE), `${JSON.stringify(log, null, 2)}\n`);
  const report: TrainedFolder = {
    finished: result.finished,
    step: result.step,
    resumedFrom: result.resumedFrom ?? null,
    lastLoss: steps.at(-1)?.loss ?? null,
    heldOutLoss: result.log.validation.at(-1)?.loss ?? null,
    tokensPerSecond: log.tokensPerSecond,
    sequences: log.sequences,
  };
  if (!result.finished) {
    out.warn(`interrupted at step ${result.step} of ${result.steps}; --resume continues from ${checkpoint}`);
    process.exitCode = 130;
    return report;
  }
  savePeftAdapter(o.out, result.adapter, model.config, { baseModel: model.identity.path });
  return report;
}

/** "wrote DIR: rank 8 on q,v, 12 steps, last loss 1.2, held-out loss 1.5, 2 tokens/s". */
export function trainedSummary(dir: string, o: LoraTrainingValues, t: TrainedFolder): string {
  return (
    `wrote ${dir}: rank ${o.rank} on ${o.targets.join(',')}, ${t.step} steps` +
    (t.lastLoss !== null ? `, last loss ${formatNumber(t.lastLoss)}` : '') +
    (t.heldOutLoss !== null ? `, held-out loss ${formatNumber(t.heldOutLoss)}` : '') +
    (t.tokensPerSecond ? `, ${Math.round(t.tokensPerSecond)} tokens/s` : '')
  );
}

const loraCommand = command(LORA_SPEC, async (args, out) => {
  const o = args.options;
  const { readTrainingFile } = await import('../../training/data.js');
  await checkTrainingOut(o);
  if (o.gguf !== undefined && existsSync(o.gguf) && !o.overwrite)
    throw new OptionError(`--gguf ${o.gguf} exists; remove it or pass --overwrite`);
  const { records, sources } = readTrainingFile(o.data);
  const model = await loadModel(o.model, out, { threads: o.threads, weights: 'f32' });
  const t = await trainAdapterFolder(model, records, sources, o, out, {
    label: 'train lora',
    dataLabel: o.data,
  });
  if (!t.finished) return;
  if (o.gguf !== undefined) {
    const { loadPeftAdapter } = await import('../../training/peft.js');
    const { saveGgufLora } = await import('../../training/gguf-lora.js');
    saveGgufLora(o.gguf, loadPeftAdapter(o.out, model.config), model.config);
  }
  out.result(
    {
      out: o.out,
      gguf: o.gguf ?? null,
      step: t.step,
      resumedFrom: t.resumedFrom,
      lastLoss: t.lastLoss,
      heldOutLoss: t.heldOutLoss,
      tokensPerSecond: t.tokensPerSecond,
      sequences: t.sequences,
    },
    trainedSummary(o.out, o, t),
  );
});

const ACTIONS: Record<string, CliCommand> = { lora: loraCommand };

export const trainCommand: CliCommand = actionGroup({
  name: 'train',
  summary: 'fine-tune: LoRA adapters in PEFT layout',
  description: para(
    "Actions: 'lora' trains a LoRA adapter on chat data (resumable). Run 'steerguard train lora --help' for its options.",
  ),
  actions: ACTIONS,
  examples: [LORA_SPEC.examples[0], LORA_SPEC.examples[2]],
});
