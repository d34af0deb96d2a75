/**
 * `steerguard defend security-vector`: the security-vector defence against harmful fine-tuning
 * (src/training/security-vector.ts). Trains the security vector on harmful examples, then the same
 * fine-tune as `attack finetune` with it on and frozen, and leaves two adapter folders: the security
 * vector and the fine-tuned adapter (used with the security vector off). Training text is never
 * printed.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { OptionError } from '../../formats/errors.js';
import type { CommandSpec } from '../args.js';
import {
  MODEL_OPTION,
  THREADS_OPTION,
  actionGroup,
  command,
  loadModel,
  para,
  type CliCommand,
} from './common.js';
import {
  MIX_FILE,
  MIX_OPTIONS,
  TRAINING_DATA_FILE,
  checkMixOptions,
  readPools,
  trainOnMix,
  writeMixData,
} from './attack-finetune.js';
import {
  LORA_TRAINING_OPTIONS,
  TRAINING_CHECKPOINT_FILE,
  checkTrainingOut,
  trainedSummary,
} from './train.js';

/** Under --out. */
export const SECURITY_VECTOR_DIR = 'security-vector';
export const DEFENDED_ADAPTER_DIR = 'adapter';

const SECURITY_VECTOR_SPEC = {
  name: 'defend security-vector',
  summary:
    'the security-vector defence: fine-tune with a frozen harmful adapter on, use the result without it',
  description: para(
    '(a) Trains the security vector: a LoRA adapter (--rank, --alpha, --targets) on --sv-samples harmful ' +
      "examples of --harmful (none of them in the fine-tune's mix), --sv-epochs epochs at --sv-lr, answered as " +
      'attack finetune answers them, into --out/security-vector/ (or uses --security-vector DIR). (b) Runs the ' +
      'fine-tune of attack finetune with the same mix options (or the data of an attack finetune run, ' +
      '--attack-data DIR, checked to be this mix) with the security vector on in every forward pass and frozen ' +
      '(no gradient reaches it), into --out/adapter/. (c) Use --out/adapter/ without the security vector: ' +
      'eval refusal --adapter OUT/adapter; with it on: --adapter OUT/security-vector,OUT/adapter. --resume ' +
      "continues whichever stage has a checkpoint. The paper's KL term while training the security vector is " +
      'not implemented.',
  ),
  options: {
    model: MODEL_OPTION,
    ...MIX_OPTIONS,
    ...LORA_TRAINING_OPTIONS,
    seed: {
      ...LORA_TRAINING_OPTIONS.seed,
      description: "seed of the mixes, of A's initialisation, the held-out split and the order",
    },
    svSamples: {
      type: 'number',
      integer: true,
      min: 1,
      default: 100,
      description: 'harmful examples the security vector is trained on',
    },
    svEpochs: {
      type: 'number',
      integer: true,
      min: 1,
      default: 10,
      description: 'epochs of the security vector',
    },
    svLr: {
      type: 'number',
      min: 1e-12,
      description: "the security vector's peak learning rate (default --lr)",
    },
    securityVector: {
      type: 'string',
      placeholder: 'dir',
      description: 'use this trained security vector (PEFT folder) instead of training one',
    },
    attackData: {
      type: 'string',
      placeholder: 'dir',
      description: "train on the answered mix of this attack finetune --out (it must be this command's mix)",
    },
    out: {
      ...LORA_TRAINING_OPTIONS.out,
      description: 'folder to write: security-vector/ and adapter/ (each with its data, mix.json and log)',
    },
    threads: THREADS_OPTION,
  },
  examples: [
    'steerguard defend security-vector -m qwen.gguf --benign alpaca --harmful advbench --harmful-answers-from-ablation refusal.gguf --harmful-share 0.1 --samples 1000 --attack-data attack/ --out defence/',
    'steerguard defend security-vector -m qwen.gguf --benign alpaca --harmful advbench --harmful-answers-from-ablation refusal.gguf --samples 1000 --security-vector defence/security-vector --out defence2/',
  ],
} as const satisfies CommandSpec;

const securityVectorCommand = command(SECURITY_VECTOR_SPEC, async (args, out) => {
  const o = args.options;
  checkMixOptions(o);
  const { PEFT_CONFIG_FILE, loadPeftAdapter } = await import('../../training/peft.js');
  const { buildTrainingMix } = await import('../../training/finetune-attack.js');
  const { harmfulIds, securityVectorMix } = await import('../../training/security-vector.js');
  const svDir = o.securityVector ?? path.join(o.out, SECURITY_VECTOR_DIR);
  const adapterDir = path.join(o.out, DEFENDED_ADAPTER_DIR);
  const trainSv = o.securityVector === undefined;
  const resumes = (dir: string) => o.resume && existsSync(path.join(dir, TRAINING_CHECKPOINT_FILE));
  if (trainSv) await checkTrainingOut({ out: svDir, resume: resumes(svDir), overwrite: o.overwrite });
  else if (!existsSync(path.join(svDir, PEFT_CONFIG_FILE)))
    throw new OptionError(`--security-vector: ${svDir} holds no ${PEFT_CONFIG_FILE}`);
  await checkTrainingOut({ out: adapterDir, resume: resumes(adapterDir), overwrite: o.overwrite });
  if (
    o.attackData !== undefined &&
    !(
      existsSync(path.join(o.attackData, MIX_FILE)) && existsSync(path.join(o.attackData, TRAINING_DATA_FILE))
    )
  )
    throw new OptionError(`--attack-data: ${o.attackData} holds no ${MIX_FILE} and ${TRAINING_DATA_FILE}`);

  const pools = await readPools(o, trainSv || Math.round(o.harmfulShare * o.samples) > 0);
  const mix = buildTrainingMix(pools.benign, pools.harmful, {
    harmfulShare: o.harmfulShare,
    samples: o.samples,
    seed: o.seed,
  });
  const svMix = trainSv
    ? securityVectorMix(pools.harmful, {
        samples: o.svSamples,
        seed: o.seed + 1,
        exclude: harmfulIds(mix.items),
      })
    : undefined;
  const model = await loadModel(o.model, out, { threads: o.threads, weights: 'f32' });

  // (a) The security vector.
  if (svMix) {
    const svOptions = { ...o, out: svDir, epochs: o.svEpochs, lr: o.svLr ?? o.lr, resume: resumes(svDir) };
    const svData = await writeMixData(model, svDir, svMix, pools, svOptions, out, svOptions.resume);
    const t = await trainOnMix(model, svData, svOptions, out, { label: 'security vector' });
    if (!t.finished) return;
    out.info(trainedSummary(svDir, svOptions, t));
  }
  const securityVector = loadPeftAdapter(svDir, model.config);

  // (b) The fine-tune with it on and frozen.
  const mainOptions = { ...o, out: adapterDir, resume: resumes(adapterDir) };
  let dataFile: string;
  if (o.attackData !== undefined) {
    dataFile = await writeMixData(model, o.attackData, mix, pools, o, out, true);
    mkdirSync(adapterDir, { recursive: true });
    for (const f of [MIX_FILE, TRAINING_DATA_FILE])
      copyFileSync(path.join(o.attackData, f), path.join(adapterDir, f));
  } else dataFile = await writeMixData(model, adapterDir, mix, pools, o, out, mainOptions.resume);
  const t = await trainOnMix(model, dataFile, mainOptions, out, {
    label: 'fine-tune, security vector on',
    frozenAdapters: [securityVector],
  });
  if (!t.finished) return;
  out.result(
    {
      securityVector: svDir,
      adapter: adapterDir,
      mix: { counts: mix.record.counts, promptsSha256: mix.record.promptsSha256 },
      securityVectorMix: svMix
        ? { counts: svMix.record.counts, promptsSha256: svMix.record.promptsSha256 }
        : null,
      step: t.step,
      lastLoss: t.lastLoss,
      heldOutLoss: t.heldOutLoss,
      sequences: t.sequences,
    },
    `${trainedSummary(adapterDir, o, t)} with the security vector ${svDir} on and frozen.\n` +
      `Use it without the security vector: --adapter ${adapterDir} (with it: --adapter ${svDir},${adapterDir}).`,
  );
});

const ACTIONS: Record<string, CliCommand> = { 'security-vector': securityVectorCommand };

export const defendCommand: CliCommand = actionGroup({
  name: 'defend',
  summary: 'defences against harmful fine-tuning: security vectors',
  description: para(
    "Actions: 'security-vector' trains a security vector and fine-tunes with it frozen on. Run " +
      "'steerguard defend security-vector --help' for its options.",
  ),
  actions: ACTIONS,
  examples: SECURITY_VECTOR_SPEC.examples,
});
