/**
 * The steering options every evaluation takes (eval refusal, likelihood, capability, bias): one
 * spec and one consistency check, so that the commands cannot drift apart. They describe a
 * `SteeringSpec` (src/eval/steering.ts).
 */
import { existsSync } from 'node:fs';

import { OptionError } from '../../formats/errors.js';
import type { OptionSpec } from '../args.js';
import { checkInputFile } from './common.js';

/** Steering and attack options (eval refusal, likelihood, capability and bias). */
export const STEERING_OPTIONS = {
  steer: {
    type: 'enum',
    values: ['none', 'add', 'ablate', 'sae-clamp', 'conditional'],
    default: 'none',
    description: 'steering during generation',
  },
  sae: {
    type: 'string',
    placeholder: 'dir',
    description:
      'SAE folder (SAELens layout) for --steer sae-clamp; with --steer conditional, flagged prompts get the clamp instead of --vector',
  },
  feature: {
    type: 'number',
    integer: true,
    min: 0,
    placeholder: 'J',
    description: 'SAE latent clamped (sae features ranks them)',
  },
  clamp: {
    type: 'number',
    placeholder: 'C',
    description:
      "value latent --feature is set to at every position: x' = x + (C - f_J(x)) W_dec[J] (sae steer chooses it)",
  },
  vector: {
    type: 'string',
    placeholder: 'file.gguf',
    description: 'control vector or refusal direction (GGUF) for --steer add/ablate/conditional',
  },
  layer: {
    type: 'number',
    integer: true,
    min: 1,
    description: 'use only the vector of this layer (block output, as in llama.cpp)',
  },
  coeff: { type: 'number', default: 1, description: 'coefficient of --steer add (negative removes)' },
  concept: {
    type: 'string',
    placeholder: 'file',
    description: 'concept file for --steer conditional and --attack scav',
  },
  reading: {
    type: 'string',
    placeholder: 'reading.json',
    description:
      'monitor of --steer conditional: a reading chosen by held-out-source validation (concept generalize --save-reading), instead of --concept',
  },
  threshold: {
    type: 'number',
    description:
      "conditional steering: steer prompts scoring above this; with --concept a probability P(concept) (default: its calibrated threshold, else 0.5), with --reading the reading's standardised score (default: its own)",
  },
  benignBelow: {
    type: 'number',
    description:
      'two-sided gating: prompts scoring below this are clearly benign and get --benign-steer (at most the threshold)',
  },
  benignSteer: {
    type: 'enum',
    values: ['none', 'ablate'],
    default: 'none',
    description: 'steering of clearly benign prompts: ablate removes the --vector direction everywhere',
  },
  monitorLayer: {
    type: 'number',
    integer: true,
    min: 0,
    description: "layer the monitor reads (default: the concept's)",
  },
  attack: {
    type: 'enum',
    values: ['none', 'scav'],
    default: 'none',
    description: 'attack applied while generating',
  },
  p0: {
    type: 'number',
    min: 0,
    max: 1,
    default: 0.001,
    description: 'SCAV: target P(malicious) after the move',
  },
  p1: {
    type: 'number',
    min: 0,
    max: 1,
    default: 0.9,
    description: 'SCAV: only layers whose probe test accuracy is above this',
  },
} as const satisfies Record<string, OptionSpec>;

/** Refuses inconsistent steering options (before any model loads). */
export function checkSteeringOptions(o: {
  steer: string;
  vector?: string;
  layer?: number;
  attack: string;
  concept?: string;
  reading?: string;
  benignBelow?: number;
  benignSteer?: string;
  threshold?: number;
  sae?: string;
  feature?: number;
  clamp?: number;
}): void {
  const benignSteer = o.benignSteer ?? 'none';
  const saeParts = [o.sae, o.feature, o.clamp].filter((v) => v !== undefined).length;
  if (saeParts !== 0 && saeParts !== 3)
    throw new OptionError('SAE clamping needs all of --sae DIR, --feature J and --clamp C');
  if (o.steer === 'sae-clamp' && saeParts === 0)
    throw new OptionError('--steer sae-clamp needs --sae DIR, --feature J and --clamp C');
  if (saeParts === 3 && o.steer !== 'sae-clamp' && o.steer !== 'conditional')
    throw new OptionError('--sae, --feature and --clamp need --steer sae-clamp or conditional');
  if (o.steer === 'sae-clamp' && (o.vector !== undefined || o.layer !== undefined))
    throw new OptionError('--steer sae-clamp takes no --vector or --layer');
  if (o.steer === 'none' && (o.vector !== undefined || o.layer !== undefined))
    throw new OptionError('--vector and --layer need --steer add, ablate or conditional');
  if ((o.steer === 'add' || o.steer === 'ablate') && o.vector === undefined)
    throw new OptionError(`--steer ${o.steer} needs --vector FILE`);
  if (o.attack === 'scav' && o.concept === undefined)
    throw new OptionError('--attack scav needs --concept FILE');
  if (o.steer === 'conditional' && o.concept === undefined && o.reading === undefined)
    throw new OptionError('--steer conditional needs --concept FILE or --reading FILE');
  if (
    o.steer !== 'conditional' &&
    (o.reading !== undefined || o.benignBelow !== undefined || benignSteer !== 'none')
  )
    throw new OptionError('--reading, --benign-below and --benign-steer need --steer conditional');
  if ((o.benignBelow === undefined) !== (benignSteer === 'none'))
    throw new OptionError('two-sided gating needs both --benign-below and --benign-steer');
  if (benignSteer === 'ablate' && o.vector === undefined)
    throw new OptionError('--benign-steer ablate needs --vector FILE (the refusal direction)');
  if (o.concept === undefined && o.reading === undefined && o.threshold !== undefined)
    throw new OptionError('--threshold needs --steer conditional');
  checkInputFile('--vector', o.vector);
  checkInputFile('--concept', o.concept);
  checkInputFile('--reading', o.reading);
  if (o.sae !== undefined && !existsSync(o.sae)) throw new OptionError(`--sae: no such folder: ${o.sae}`);
}
